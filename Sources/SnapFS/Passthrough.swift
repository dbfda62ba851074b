import CFuseIO

#if canImport(Glibc)
import Glibc
#endif

/// FUSE passthrough: the kernel reads and writes an open file's backing file itself, with no
/// request to snapfs and one page cache (the backing file's), as kernel overlayfs does. Used
/// for upper files, whose backing file is the node's file for the node's whole life.
///
/// The kernel holds one backing file per inode while passthrough opens exist, and refuses to
/// mix passthrough and cached (request-served) opens of one inode. So a node's opens all use
/// the same backing id until the last closes, and a node with cached opens (a lower file
/// opened for reading, then copied up while still open) stays cached until they close. Lower
/// files are served by requests: their node's file changes at copy-up, which the kernel's
/// backing file could not follow while they are open.
///
/// libfuse 3.14 does not know passthrough; CFuseIO's session hooks negotiate it and mark the
/// open replies.
final class Passthrough: @unchecked Sendable {
  /// The FUSE device (the session's descriptor): backing files are registered on it.
  private let devfd: Int32
  /// The `passthrough` option.
  private let wanted: Bool
  private let mutex = Mutex()
  /// Whether INIT negotiated it; set once by the init callback, before any open.
  private(set) var enabled = false

  init(devfd: Int32, wanted: Bool) {
    self.devfd = devfd
    self.wanted = wanted
  }

  /// From the init callback: passthrough if wanted, the mount has an upper dir and the kernel
  /// offers it. Returns whether it is on (the writeback cache must then be off: the kernel
  /// refuses both).
  func negotiate(hasUpper: Bool) -> Bool {
    enabled = wanted && hasUpper && fuseio_kernel_offers_passthrough() != 0
    // Backing files on ordinary file systems (stack depth 0); an upper dir on another
    // stacked file system gets request-served files instead (registration fails).
    if enabled { fuseio_want_passthrough(1) }
    return enabled
  }

  /// How the open file `fd` of `node` is served: a backing id to hand the kernel, or nil for
  /// requests. With passthrough on, counts the open either way; `close` uncounts it.
  func open(_ node: Node, _ fd: Int32, upper: Bool) -> Int32? {
    guard enabled else { return nil }
    return mutex.with {
      if enabled && upper && node.cachedOpens == 0 {
        if node.passthroughOpens > 0 {
          node.passthroughOpens += 1
          return node.backingID
        }
        let id = fuseio_backing_open(devfd, fd)
        if id > 0 {
          node.backingID = id
          node.passthroughOpens = 1
          return id
        }
      }
      node.cachedOpens += 1
      return nil
    }
  }

  /// An open of `node` was released.
  func close(_ node: Node, passthrough: Bool) {
    guard enabled else { return }
    mutex.with {
      if passthrough {
        node.passthroughOpens -= 1
        if node.passthroughOpens == 0 {
          _ = fuseio_backing_close(devfd, node.backingID)
          node.backingID = 0
        }
      } else {
        node.cachedOpens -= 1
      }
    }
  }
}

/// An open file's handle for the kernel: the descriptor, and whether the kernel does the
/// file's I/O itself (bit 32).
struct FileHandle {
  let fd: Int32
  let passthrough: Bool
  init(fd: Int32, passthrough: Bool) { self.fd = fd; self.passthrough = passthrough }
  init(_ fh: UInt64) { fd = Int32(truncatingIfNeeded: fh); passthrough = fh & (1 << 32) != 0 }
  var raw: UInt64 { UInt64(UInt32(bitPattern: fd)) | (passthrough ? 1 << 32 : 0) }
}
