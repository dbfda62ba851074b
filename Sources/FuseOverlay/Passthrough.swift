import CFuseIO
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// FUSE passthrough: the kernel reads and writes an open file's backing file itself, with no
/// request to snapfs and one page cache (the backing file's, so a lower file read through
/// many mounts is cached once), as kernel overlayfs does. Used for every regular file but
/// small lower ones (see below).
///
/// A lower file of at most `cachedReadsMax` bytes is read through the mount's own page cache
/// instead (cached opens, kept across opens: a lower file never changes). Every read through
/// passthrough makes the kernel drop the inode's atime (fs/fuse `fuse_invalidate_atime`,
/// unless the mount is read-only), so the next open's fstat (Python's open, Go's ReadFile,
/// cat) waits for a GETATTR; a read from the page cache does not. A warm read of a small
/// file then waits for the OPEN alone, where passthrough waits for OPEN and GETATTR; a cold
/// one too, since its first open stores its bytes in the page cache (`Opened.store`). The
/// price: each mount caches such a file's pages itself (fuse-overlayfs caches every file so).
///
/// The kernel holds one backing file per inode while passthrough opens exist, and refuses to
/// mix passthrough and cached (request-served) opens of one inode. So a node's opens all use
/// the same backing id until the last closes, and a node with cached opens (a small lower
/// file, or one whose backing file could not be registered) stays cached until they close. A lower file never
/// changes: its backing file and descriptor stay registered while the node lives and serve
/// every open of it, with no system call of ours (up to `retainedLimit` nodes at once; past
/// that, a lower file's are dropped with its last open, as an upper file's). A metacopy stub's
/// lower file is its data file (see `Stub`): every stub of one object, in every mount, reads
/// through that file's page cache, with no request.
///
/// A lower file copied up while it is open through its lower backing file cannot be opened
/// again on that inode: the kernel would not take the upper file as a second backing file,
/// and cached opens of both would mix the two files' pages in one page cache.
/// Such an open is `stale`: the node is split (`Overlay.split`) and the open answered ESTALE,
/// which makes the kernel look the name up again (LOOKUP_REVAL) and open the fresh node.
/// The readers that held the lower file keep reading it, as with fuse-overlayfs; on kernel
/// overlayfs they would see the upper file.
///
/// libfuse 3.14 does not know passthrough; CFuseIO's session hooks negotiate it and mark the
/// open replies.
///
/// On a read-only mount, where the kernel reads by node with no open file (see `FileSystem`),
/// it keeps the descriptor each node's reads go through instead (`readFile`), with the same
/// limit.
final class Passthrough: @unchecked Sendable {
  /// How an open file is served.
  enum IO: Equatable {
    /// By the kernel, through this registered backing file.
    case backing(Int32)
    /// By requests to snapfs.
    case requests
    /// Not at all on this inode: split the node and answer ESTALE.
    case stale

    var backingID: Int32? {
      if case .backing(let id) = self { return id }
      return nil
    }
  }

  /// An open file: its descriptor, how it is served, and whether the descriptor is the
  /// node's own (a lower file's backing descriptor), which its release must not close.
  struct Opened {
    let fd: Int32
    let io: IO
    let shared: Bool
    /// The kernel keeps the inode's page cache at this open (FOPEN_KEEP_CACHE): when every
    /// write goes through it (no passthrough), or the file is a lower one. Otherwise the
    /// pages may predate writes through a backing file, and the open drops them.
    var keepCache = false
    /// A small lower file's first open: its size, for its bytes to be stored in the kernel's
    /// page cache before the reply (FUSE_NOTIFY_STORE), so that even its first read is no
    /// request; then `stored`.
    var store: Int64? = nil
    /// Another open of that file meanwhile: its reply waits for the store (`awaitStore`).
    /// The kernel stores a page only once it can lock it, and a reader's READ holds that lock
    /// until a thread of ours answers: readers during a store could leave every thread waiting.
    var awaitStore = false
  }

  /// The FUSE device (the session's descriptor): backing files are registered on it.
  private let devfd: Int32
  /// The `passthrough` option.
  private let wanted: Bool
  private let mutex = Lock()
  /// Lower files' descriptors kept registered, at most `retainedLimit` (a descriptor each).
  private var retained = 0
  static let retainedLimit = 65536
  /// Whether INIT negotiated it; set once by the init callback, before any open.
  private(set) var enabled = false
  /// Lower files up to this size are read through the page cache (see above); 0: none.
  private let cachedReadsMax: Int64
  /// Signalled when a node's store ends (`Node.storing`).
  private let stores = Condition(())

  init(devfd: Int32, wanted: Bool, cachedReadsMax: Int64) {
    self.devfd = devfd
    self.wanted = wanted
    self.cachedReadsMax = cachedReadsMax
  }

  /// From the init callback: passthrough if wanted and the kernel offers it. Returns whether
  /// it is on (the writeback cache must then be off: the kernel refuses both).
  func negotiate(_ session: UnsafeMutablePointer<fuseio_session>) -> Bool {
    enabled = wanted && fuseio_kernel_offers_passthrough(session) != 0
    // Backing files on ordinary file systems (stack depth 0); layers on another stacked
    // file system get request-served files instead (registration fails).
    if enabled { fuseio_want_passthrough(session, 1) }
    return enabled
  }

  /// Opens `node` (its upper file if `upper`) with `openFile`, or answers its lower file's
  /// kept descriptor. With passthrough on, counts the open unless it is stale; `close`
  /// uncounts it. Caller holds the tree lock, so no copy-up comes in between. `size` is the
  /// size the kernel knows for the file (a stub's own): a small lower file is read cached
  /// only if its data is that long.
  func open(_ node: Node, upper: Bool, size: () -> Int64?, _ openFile: () throws(Errno) -> Int32) throws(Errno) -> Opened {
    guard enabled else { return Opened(fd: try openFile(), io: .requests, shared: false, keepCache: true) }
    if !upper, let reused = mutex.withLock({ reuse(node) }) { return reused }
    let fd = try openFile()
    // Only a lower file's first open gets here (later ones reuse its kept descriptor), so the
    // sizes are looked at once per lower file; an upper file's opens look at none.
    var length: Int64 = -1
    if !upper && cachedReadsMax > 0 {
      var st = stat()
      if fstat(fd, &st) == 0 { length = Int64(st.st_size) }
    }
    let small = length >= 0 && length <= cachedReadsMax && size() == length
    return mutex.withLock {
      if node.passthroughOpens > 0 || node.cachedOpens > 0 {
        // Opens of the other file (lower or upper) are still there.
        guard node.backingUpper == upper else { return Opened(fd: fd, io: .stale, shared: false) }
        if node.passthroughOpens > 0 {
          node.passthroughOpens += 1
          return Opened(fd: fd, io: .backing(node.backingID), shared: false)
        }
        node.cachedOpens += 1
        return Opened(fd: fd, io: .requests, shared: false, keepCache: !upper, awaitStore: node.storing)
      }
      unregister(node)  // a lower file's, from before a copy-up
      node.backingUpper = upper
      let keep = !upper && retained < Self.retainedLimit
      if !small {
        let id = fuseio_backing_open(devfd, fd)
        if id > 0 {
          node.backingID = id
          node.backingOwner = self
          node.passthroughOpens = 1
          if keep { retain(node, fd) }
          return Opened(fd: fd, io: .backing(id), shared: keep)
        }
      }
      // A small lower file, or the backing file was refused: cached. A lower file's
      // descriptor is kept all the same (it serves the reads of every open).
      node.cachedOpens = 1
      if keep { retain(node, fd) }
      let store = small && length > 0 && !node.stored
      if store { (node.storing, node.stored) = (true, true) }
      return Opened(fd: fd, io: .requests, shared: keep, keepCache: !upper, store: store ? length : nil)
    }
  }

  /// Another open of a lower file whose descriptor is kept: passthrough if it is registered,
  /// else cached. Under the mutex.
  private func reuse(_ node: Node) -> Opened? {
    guard node.backingFD >= 0 else { return nil }
    if node.backingID > 0 {
      guard node.cachedOpens == 0 else { return nil }
      node.passthroughOpens += 1
      return Opened(fd: node.backingFD, io: .backing(node.backingID), shared: true)
    }
    guard node.passthroughOpens == 0 else { return nil }
    node.cachedOpens += 1
    return Opened(fd: node.backingFD, io: .requests, shared: true, keepCache: true, awaitStore: node.storing)
  }

  /// The store of the node's first open (`Opened.store`) is over, done or not.
  func stored(_ node: Node) { stores.update { _ in mutex.withLock { node.storing = false } } }

  /// Waits until the node's store is over (`Opened.awaitStore`).
  func awaitStore(_ node: Node) { stores.wait(until: { _ in mutex.withLock { !node.storing } }) { _ in } }

  /// An open of `node` was released. An upper file's backing file is unregistered with its
  /// last open (the next may be for writing, through another descriptor); a retained lower
  /// file's stays.
  func close(_ node: Node, passthrough: Bool) {
    guard enabled else { return }
    mutex.withLock {
      if passthrough {
        node.passthroughOpens -= 1
        if node.passthroughOpens == 0 && node.backingFD < 0 { unregister(node) }
      } else {
        node.cachedOpens -= 1
      }
    }
  }

  /// The descriptor `node`'s reads go through when the kernel reads by node (no open files):
  /// opened by `openFile` at the first read and kept with the node (up to `retainedLimit`
  /// nodes at once; past that, each read opens its own, which the returned handle closes).
  func readFile(_ node: Node, _ openFile: () throws(Errno) -> Int32) throws(Errno) -> FileHandle {
    if let fd = mutex.withLock({ node.backingFD >= 0 ? node.backingFD : nil }) {
      return FileHandle(fd: fd, shared: true)
    }
    let fd = try openFile()
    return mutex.withLock {
      if node.backingFD >= 0 {  // another thread's read was first
        Glibc.close(fd)
        return FileHandle(fd: node.backingFD, shared: true)
      }
      guard retained < Self.retainedLimit else { return FileHandle(fd: fd, shared: false) }
      retain(node, fd)
      return FileHandle(fd: fd, shared: true)
    }
  }

  /// Keeps `fd` as `node`'s own descriptor until the node goes. Under the mutex.
  private func retain(_ node: Node, _ fd: Int32) {
    node.backingFD = fd
    node.backingOwner = self
    retained += 1
  }

  /// A new descriptor of `node`'s lower file if it is registered (see `Overlay.split`).
  func lowerFile(_ node: Node) -> Int32? {
    mutex.withLock {
      guard node.backingFD >= 0 else { return nil }
      let fd = fcntl(node.backingFD, F_DUPFD_CLOEXEC, 0)
      return fd >= 0 ? fd : nil
    }
  }

  /// A node goes away: its registration and descriptor with it.
  func release(_ node: Node) { mutex.withLock { unregister(node) } }

  /// Drops `node`'s registered backing file and descriptor, if any: when it has no opens.
  /// Under the mutex.
  private func unregister(_ node: Node) {
    if node.backingID > 0 { _ = fuseio_backing_close(devfd, node.backingID) }
    if node.backingFD >= 0 {
      Glibc.close(node.backingFD)
      retained -= 1
    }
    node.backingID = 0
    node.backingFD = -1
  }
}

/// An open file's handle for the kernel: the descriptor, whether the kernel does the file's
/// I/O itself (bit 32), and whether the descriptor is the node's own (bit 33).
struct FileHandle {
  let fd: Int32
  let passthrough: Bool
  let shared: Bool
  init(_ opened: Passthrough.Opened) {
    fd = opened.fd
    passthrough = opened.io.backingID != nil
    shared = opened.shared
  }
  /// A descriptor served by requests.
  init(fd: Int32, shared: Bool) {
    self.fd = fd
    passthrough = false
    self.shared = shared
  }
  init(_ fh: UInt64) {
    fd = Int32(truncatingIfNeeded: fh)
    passthrough = fh & (1 << 32) != 0
    shared = fh & (1 << 33) != 0
  }
  var raw: UInt64 { UInt64(UInt32(bitPattern: fd)) | (passthrough ? 1 << 32 : 0) | (shared ? 1 << 33 : 0) }
  /// Closes the descriptor unless it is the node's.
  func close() { if !shared { Glibc.close(fd) } }
}
