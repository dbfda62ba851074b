import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// A metacopy file of a lower layer, which snapshotd's layer store calls a stub: a regular
/// file with overlayfs's xattr `metacopy` whose own inode has the file's metadata (mode,
/// owner, size, times, xattrs, inode number, links) but not its data. The data is another
/// file's: by an absolute `redirect`, the file at that path in the first data-only layer
/// that has it (`lowerdir=A:B::DATA`), looked up at the first open, as overlayfs does
/// ("lazy lowerdata lookup"); or (metacopy=on, without an absolute redirect) the file of the
/// same name, or of the name a relative redirect gives, in a layer below, found at lookup.
///
/// The mount shows the stub's attributes but st_blocks, which is the data file's once it was
/// found and until then, as overlayfs has it, the size rounded up to whole blocks. Opens read
/// the data file (so with passthrough its page cache is shared by every stub of it, in every
/// mount); a copy-up takes the data from it and the metadata from the stub, without
/// overlayfs's own xattrs. The data file is looked up once per node; nothing is done per read.
///
/// A stub whose size is not its data file's (snapshotd's layer store makes none) reads as on
/// overlayfs, to the data file's end, with passthrough; without it, the kernel's page cache
/// ends at the stub's size. A copy-up is cut or padded to the stub's size, as overlayfs's
/// with metacopy=off; with metacopy=on, overlayfs copies the metadata only (it copies the
/// data when the file is opened for writing), and keeps reading the data file until then.
final class Stub: @unchecked Sendable {
  enum Source {
    /// An absolute redirect without its leading "/", to look up in the data-only layers.
    case dataOnly(String)
    /// The data file in a lower normal layer: an O_PATH descriptor, this stub's own.
    case lower(Int32)
  }

  let source: Source
  /// The data file's st_blocks once it was found (at lookup for `.lower`). Under the overlay's
  /// `stubs` mutex.
  var blocks: blkcnt_t?
  /// The data-only layer that has the data file, once it was found (index into
  /// `Overlay.dataLayers`). Under the overlay's `stubs` mutex.
  var dataLayer: Int?

  init(_ source: Source, blocks: blkcnt_t? = nil) {
    self.source = source
    self.blocks = blocks
  }

  deinit {
    if case .lower(let fd) = source { close(fd) }
  }
}

extension Overlay {
  /// Whether the node's topmost file is the upper one.
  func isUpper(_ node: Node) -> Bool { hasUpper && node.layer == 0 }

  /// The node's stub while its topmost file is a lower one (a copy-up leaves a full file,
  /// which is then the node's; a split node goes back to the stub).
  @inline(__always)
  func lowerStub(_ node: Node) -> Stub? {
    guard let stub = node.stub, !isUpper(node) else { return nil }
    return stub
  }

  /// What overlayfs makes of the regular file `name` of the lower `layer` under `parent`,
  /// topmost for its name: nil for a plain file, or the stub whose data is elsewhere. Throws
  /// as overlayfs's lookup of it fails: EINVAL for a malformed redirect, EPERM for a
  /// metacopy file it would not follow (metacopy=off: any but one in the bottom normal layer
  /// with an absolute redirect into the data-only layers), EIO for one whose data it cannot
  /// find (metacopy=on: nothing of its name below it, and no absolute redirect into the
  /// data-only layers).
  ///
  /// Costs one fgetxattr (of `metacopy`) for a plain file, a second one (of `redirect`) for a
  /// metacopy file, as overlayfs's lookup. Without data-only layers, no metacopy file is
  /// followed unless metacopy=on (overlayfs's lookup then refuses it: EPERM), and a bottom
  /// layer's redirect is not even read.
  ///
  /// Not as overlayfs: with metacopy=on, an absolute redirect is looked up in the data-only
  /// layers only, where overlayfs first looks the path up in the normal layers below the
  /// stub (and only if it is not there, in the data-only layers). A layer of an image never
  /// has a file at an object's path, so the two agree on snapshotd's layers; a metacopy file
  /// that overlayfs (metacopy=on) made by renaming a lower file into another directory (its
  /// redirect names the file's old path in a normal layer) is not followed (EIO, or ENOENT
  /// at open with data-only layers).
  func stub(_ parent: Node, _ name: String, layer: Int) throws(Errno) -> Stub? {
    guard let dirfd = parent.dir(layer: layer) else { return nil }
    guard let redirect = try metacopyRedirect(dirfd, name, layer: layer) else { return nil }
    if case .absolute(let path) = redirect, !dataLayers.isEmpty, metacopy || layer == bottomLayer {
      return Stub(.dataOnly(path))
    }
    guard metacopy else { throw Errno(EPERM) }
    // A metacopy chain by name: the data is the first plain file of the name (or the relative
    // redirect's) below, in the layers the parent merges.
    var name = name
    switch redirect {
    case .absolute: throw Errno(EIO)  // (not looked up in the normal layers: see above)
    case .relative(let other): name = other
    case .missing: break
    }
    for dir in parent.dirs where dir.layer > layer {
      guard let st = try statIfPresent(dir.fd, name) else { continue }
      guard st.type == S_IFREG else { break }  // a whiteout or another type ends the chain
      switch try metacopyRedirect(dir.fd, name, layer: dir.layer) {
      case nil:
        let fd = try Sys.call(shim_openat(dir.fd, name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0))
        return Stub(.lower(fd), blocks: st.st_blocks)
      case .absolute(let path)?:
        guard !dataLayers.isEmpty else { throw Errno(EIO) }
        return Stub(.dataOnly(path))
      case .relative(let other)?:
        name = other
      case .missing?:
        break
      }
    }
    throw Errno(EIO)
  }

  /// A metacopy file's redirect, as overlayfs reads it.
  enum Redirect {
    /// None, or not read (a bottom layer's, without data-only layers).
    case missing
    /// An absolute one, without its leading "/".
    case absolute(String)
    /// A name in the same directory.
    case relative(String)

    var isAbsolute: Bool { if case .absolute = self { true } else { false } }
  }

  /// nil if `name` in `dirfd` (a regular file of `layer`) is not a metacopy file, else its
  /// redirect. A `metacopy` value of 1 to 3 bytes is EIO, a redirect that is empty, relative
  /// with a "/", or absolute with an empty component is EINVAL, as overlayfs has them.
  private func metacopyRedirect(_ dirfd: Int32, _ name: String, layer: Int) throws(Errno) -> Redirect? {
    // A descriptor for the f*xattr calls: the file opened for reading (nothing is read), which
    // is cheaper than an O_PATH descriptor's /proc path; that one if it may not be read.
    var fd = shim_openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0)
    var path: String?
    if fd < 0 {
      guard errno == EACCES || errno == EPERM else { throw Errno.current }
      fd = try Sys.call(shim_openat(dirfd, name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0))
      path = "/proc/self/fd/\(fd)"
    }
    defer { close(fd) }
    func get(_ xattr: String, _ buffer: UnsafeMutableRawPointer?, _ size: Int) -> Int {
      if let path { return getxattr(path, xattr, buffer, size) }
      return fgetxattr(fd, xattr, buffer, size)
    }
    // overlayfs takes the value's size only: empty or at least a header (version, length,
    // flags, digest algorithm; the digest matters with verity only).
    let size = get(metacopyName, nil, 0)
    if size < 0 {
      if errno == ENODATA || errno == EOPNOTSUPP { return nil }
      throw Errno.current
    }
    if size > 0 && size < 4 { throw Errno(EIO) }
    // The redirect is not read in the bottom normal layer when there are no data-only
    // layers: no layer is left to look in.
    if dataLayers.isEmpty && layer == bottomLayer { return .missing }
    var value = [UInt8](repeating: 0, count: Int(PATH_MAX))
    var n = get(redirectName, &value, value.count)
    while n < 0 && errno == ERANGE {
      value = [UInt8](repeating: 0, count: try Sys.call(get(redirectName, nil, 0)))
      n = get(redirectName, &value, value.count)
    }
    if n < 0 {
      if errno == ENODATA || errno == EOPNOTSUPP { return .missing }
      throw Errno.current
    }
    // As a C string, which it is to overlayfs.
    let text = value[..<n].prefix { $0 != 0 }
    guard let first = text.first else { throw Errno(EINVAL) }
    if first == UInt8(ascii: "/") {
      let components = text.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
      guard !components.contains(where: \.isEmpty) else { throw Errno(EINVAL) }
      return .absolute(String(decoding: text.dropFirst(), as: UTF8.self))
    }
    guard !text.contains(UInt8(ascii: "/")) else { throw Errno(EINVAL) }
    return .relative(String(decoding: text, as: UTF8.self))
  }

  /// st_blocks as overlayfs shows it for a stub whose attributes are `st`: the data file's
  /// once it was found, else the size in whole blocks of st_blksize.
  func stubBlocks(_ stub: Stub, _ st: stat) -> blkcnt_t {
    if let blocks = stubs.withLock({ stub.blocks }) { return blocks }
    let block = max(Int64(st.st_blksize), 512)
    return blkcnt_t((Int64(st.st_size) + block - 1) / block * block / 512)
  }

  /// Opens a stub's data file with `flags` (for reading). The first open of a data-only
  /// layer's file looks it up in each data-only layer in order, below the layer's root and
  /// through no symlink, as overlayfs: the first that has it as a regular file is the one; a
  /// directory, symlink or special file there is ENOENT, an error of the last layer is the
  /// answer. A failure is not remembered: the next open looks again (an object may arrive).
  func openData(_ stub: Stub, flags: Int32) throws(Errno) -> Int32 {
    let path: String
    switch stub.source {
    case .lower(let fd):
      return try Sys.call(shim_open("/proc/self/fd/\(fd)", flags & ~O_NOFOLLOW, 0))
    case .dataOnly(let p):
      path = p
    }
    if let layer = stubs.withLock({ stub.dataLayer }) {
      return try Sys.call(shim_openat(dataLayers[layer], path, flags | O_NOFOLLOW, 0))
    }
    let resolve = UInt64(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    let how = UInt64(UInt32(bitPattern: SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC))
    var failure = Errno(ENOENT)
    for (index, layer) in dataLayers.enumerated() {
      let found = shim_openat2(layer, path, how, 0, resolve)
      if found < 0 {
        failure = Errno.current
        continue
      }
      var st = stat()
      let isFile = fstat(found, &st) == 0 && st.type == S_IFREG
      close(found)
      guard isFile else {
        failure = Errno(ENOENT)
        continue
      }
      let fd = try Sys.call(shim_openat(layer, path, flags | O_NOFOLLOW, 0))
      stubs.withLock {
        stub.dataLayer = index
        stub.blocks = st.st_blocks
      }
      return fd
    }
    throw failure
  }
}
