import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// The merged tree: overlayfs's semantics over directory descriptors, one per layer.
///
/// Layers are indexed top to bottom; with an upper dir it is layer 0 and the only one ever
/// written. A name resolves to the topmost layer that has it, unless a layer above holds a
/// whiteout (a character device 0/0) for it; directories merge down to the first opaque
/// one (xattr `trusted.overlay.opaque` = "y", or `user.overlay.opaque`). Changing a lower
/// file copies it up first: the file (or directory, or link) is built in the work dir with
/// its data, owner, mode, xattrs and times, then renamed into the upper dir, whose parents
/// are copied up the same way. Deleting a name a lower layer has leaves a whiteout.
///
/// Data-only lower layers (`lowerdir=A:B::DATA`) are not part of the merged tree: they only
/// hold the data of metacopy files ("stubs", see `Stub`), which a lower layer's regular file
/// with the xattr `trusted.overlay.metacopy` (`user.overlay.metacopy` with `userxattr`) is.
///
/// Not as overlayfs: snapfs makes no redirects and no metacopy files of its own (a copy-up
/// copies the data, a lower directory cannot be renamed: EXDEV), as overlayfs with
/// redirect_dir=off and metacopy=off; with metacopy=on overlayfs also has redirect_dir=on,
/// and renames such directories. An upper metacopy file (which overlayfs with metacopy=on
/// makes on chmod, chown, ... of a lower file) is read as a plain file.
final class Overlay: @unchecked Sendable {
  let hasUpper: Bool
  let root: Node
  let nodes = NodeTable()
  /// Over the overlay's name space: lookups, reads and listings share it, anything that
  /// changes a layer takes it alone.
  let tree = ReadWriteLock()
  /// The xattr namespace overlayfs keeps for itself (see `stored(_:)`).
  let privatePrefix: String
  /// `trusted.overlay.opaque`, or `user.overlay.opaque` with `userxattr`: as the kernel,
  /// only the mount's own namespace marks a directory opaque.
  private let opaqueName: String
  /// `trusted.overlay.metacopy` and `trusted.overlay.redirect` (`user.overlay.*` with
  /// `userxattr`): a lower layer's metacopy file and where its data is.
  let metacopyName: String
  let redirectName: String
  /// Data-only layers, opened O_RDONLY|O_DIRECTORY, in the order they are searched.
  let dataLayers: [Int32]
  /// overlayfs's `metacopy` (see `Options.metacopy`).
  let metacopy: Bool
  /// Whether lower layers' directory redirects are followed (`Options.followsRedirects`).
  let followsRedirects: Bool
  /// The index of the bottom normal layer.
  let bottomLayer: Int
  /// Guards stubs' state (`Stub.blocks`, `Stub.dataLayer`).
  let stubs = Lock()
  private let work: Int32
  private let sameDevice: Bool
  /// The *xattrat calls (Linux 6.13) answer here: probed once on the top layer, since an
  /// older kernel says ENOSYS and a seccomp filter that does not know them often EPERM.
  private let xattrAt: Bool
  private let euid = geteuid(), egid = getegid()

  /// Opens the layers; throws a message naming the layer that cannot be used.
  init(_ options: Options) throws(Options.Invalid) {
    var paths: [String] = []
    if let upper = options.upper { paths.append(upper) }
    paths += options.lowers
    var dirs: [LayerDir] = []
    var devices = Set<UInt64>()
    for (index, path) in paths.enumerated() {
      let fd = shim_open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
      guard fd >= 0 else {
        let what = index == 0 && options.upper != nil ? "upperdir" : "lowerdir"
        throw Options.Invalid(description: "\(what) \(path): \(String(cString: strerror(errno)))")
      }
      var st = stat()
      fstat(fd, &st)
      devices.insert(UInt64(st.st_dev))
      dirs.append(LayerDir(layer: index, fd: fd))
    }
    var data: [Int32] = []
    for path in options.dataLowers {
      let fd = shim_open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
      guard fd >= 0 else { throw Options.Invalid(description: "lowerdir \(path): \(String(cString: strerror(errno)))") }
      data.append(fd)
    }
    dataLayers = data
    bottomLayer = paths.count - 1
    metacopy = options.effectiveMetacopy {
      (try? String(contentsOfProcFile: "/sys/module/overlay/parameters/metacopy")) == "Y"
    }
    followsRedirects = options.followsRedirects(metacopy: metacopy) {
      (try? String(contentsOfProcFile: "/sys/module/overlay/parameters/redirect_always_follow")) != "N"
    }
    if let work = options.work {
      let fd = shim_open(work, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
      guard fd >= 0 else { throw Options.Invalid(description: "workdir \(work): \(String(cString: strerror(errno)))") }
      var upper = stat()
      var st = stat()
      fstat(dirs[0].fd, &upper)
      fstat(fd, &st)
      guard upper.st_dev == st.st_dev else {
        throw Options.Invalid(description: "workdir \(work) and upperdir \(options.upper!) must be on the same file system")
      }
      self.work = fd
    } else {
      work = -1
    }
    hasUpper = options.upper != nil
    sameDevice = devices.count == 1
    let probe = shim_getxattrat(dirs[0].fd, "", SHIM_AT_EMPTY_PATH, "user.snapfs-probe", nil, 0)
    xattrAt = probe >= 0 || (errno != ENOSYS && errno != EPERM)
    let xattrs = options.userXattr ? OverlayXattr.user : OverlayXattr.trusted
    privatePrefix = xattrs.prefix
    opaqueName = xattrs.opaque
    metacopyName = xattrs.metacopy
    redirectName = xattrs.redirect
    var st = stat()
    fstat(dirs[0].fd, &st)
    root = Node(ino: UInt64(st.st_ino), realIno: UInt64(st.st_ino), type: S_IFDIR, parent: nil, name: "", layer: 0, dirs: dirs)
    if hasUpper { try? cleanWork() }
  }

  /// Leftovers of an interrupted copy-up or whiteout in the work dir.
  private func cleanWork() throws(Errno) {
    for entry in try At.entries(work) where entry.name.hasPrefix("#snapfs") {
      try removeTree(work, entry.name)
    }
  }

  // MARK: - Resolution

  private func inodeNumber(_ ino: UInt64, layer: Int) -> UInt64 {
    sameDevice ? ino : ino ^ (UInt64(layer) << 56)
  }

  private func isOpaque(_ fd: Int32) -> Bool {
    var value: UInt8 = 0
    return fgetxattr(fd, opaqueName, &value, 1) == 1 && value == UInt8(ascii: "y")
  }

  /// Looks `name` up in `parent`'s layers and builds its node (not yet counted), with the
  /// topmost file's stat.
  func probe(_ parent: Node, _ name: String) throws(Errno) -> (Node, stat) {
    var top: (layer: Int, st: stat)?
    var dirs: [LayerDir] = []
    for dir in parent.dirs {
      guard let st = try statIfPresent(dir.fd, name) else { continue }
      if st.isWhiteout { break }
      if top == nil {
        top = (dir.layer, st)
        if !st.isDirectory { break }
      } else if !st.isDirectory {
        break  // a file under a directory: hidden
      }
      let sub: Int32
      do { sub = try Sys.call(shim_openat(dir.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)) } catch {
        for d in dirs { close(d.fd) }
        throw error
      }
      dirs.append(LayerDir(layer: dir.layer, fd: sub))
      // Opaque hides what is below; the parent's last layer has nothing below.
      if dir.layer != parent.dirs.last!.layer && isOpaque(sub) { break }
      // A directory overlayfs renamed (redirect_dir): the layers below have it under the
      // name its redirect gives, as overlayfs follows it.
      // An absolute redirect reaches layers the parent does not have (up to the bottom one).
      if followsRedirects, dir.layer != bottomLayer, let target = try directoryRedirect(sub),
        target.isAbsolute || dir.layer != parent.dirs.last!.layer
      {
        do { try followRedirect(target, parent: parent, below: dir.layer, into: &dirs) } catch {
          for d in dirs { close(d.fd) }
          throw error
        }
        break
      }
    }
    guard let top else { throw Errno(ENOENT) }
    let node = Node(
      ino: inodeNumber(UInt64(top.st.st_ino), layer: top.layer), realIno: UInt64(top.st.st_ino),
      type: top.st.type, parent: parent, name: name, layer: top.layer, dirs: dirs)
    node.linked = hasUpper && top.layer == 0 && !top.st.isDirectory && top.st.st_nlink > 1
    if top.st.type == S_IFREG && !(hasUpper && top.layer == 0) {
      node.stub = try stub(parent, name, layer: top.layer)
    }
    return (node, top.st)
  }

  /// A directory's redirect (overlayfs's `redirect` xattr on a renamed directory), nil
  /// when it has none. Relative: a name in the same parent; absolute: a path from the root.
  private func directoryRedirect(_ fd: Int32) throws(Errno) -> Redirect? {
    var value = [UInt8](repeating: 0, count: Int(PATH_MAX))
    let n = fgetxattr(fd, redirectName, &value, value.count)
    if n < 0 {
      if errno == ENODATA || errno == EOPNOTSUPP { return nil }
      throw Errno.current
    }
    let text = value[..<n].prefix { $0 != 0 }
    guard let first = text.first else { throw Errno(EINVAL) }
    if first == UInt8(ascii: "/") {
      let parts = text.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
      guard !parts.contains(where: { $0.isEmpty || $0.elementsEqual("..".utf8) || $0.elementsEqual(".".utf8) }) else {
        throw Errno(EINVAL)
      }
      return .absolute(String(decoding: text.dropFirst(), as: UTF8.self))
    }
    guard !text.contains(UInt8(ascii: "/")), !text.elementsEqual("..".utf8), !text.elementsEqual(".".utf8) else {
      throw Errno(EINVAL)
    }
    return .relative(String(decoding: text, as: UTF8.self))
  }

  /// Appends to `dirs` the directories of the layers below `layer` that a renamed
  /// directory's redirect `target` names: by name in `parent`'s layers, or by path from each
  /// layer's root. As overlayfs: a whiteout or a non-directory on the way ends the lookup, an
  /// opaque directory (or ancestor) ends it below its layer, and a redirect found on the way
  /// is followed in turn.
  private func followRedirect(_ target: Redirect, parent: Node, below layer: Int, into dirs: inout [LayerDir])
    throws(Errno)
  {
    var target = target
    var layers = (target.isAbsolute ? root.dirs : parent.dirs).filter { $0.layer > layer }
    while !layers.isEmpty {
      let dir = layers.removeFirst()
      var stopsBelow = false
      var found: Int32 = -1
      switch target {
      case .relative(let name):
        guard let st = try statIfPresent(dir.fd, name) else { continue }
        guard st.isDirectory, !st.isWhiteout else { return }
        found = try Sys.call(shim_openat(dir.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0))
      case .absolute(let path):
        var at = dir.fd
        var missing = false
        for part in path.split(separator: "/").map(String.init) {
          let st: stat?
          do { st = try statIfPresent(at, part) } catch {
            if at != dir.fd { close(at) }
            throw error
          }
          if st == nil { missing = true }
          guard let st else { break }
          guard st.isDirectory, !st.isWhiteout else {
            if at != dir.fd { close(at) }
            return
          }
          let next = shim_openat(at, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
          let e = errno
          if at != dir.fd { close(at) }
          guard next >= 0 else { throw Errno(e) }
          at = next
          if isOpaque(at) { stopsBelow = true }
        }
        if missing {
          if at != dir.fd { close(at) }
          if stopsBelow { return }
          continue
        }
        found = at
      case .missing:
        return
      }
      dirs.append(LayerDir(layer: dir.layer, fd: found))
      if stopsBelow || isOpaque(found) { return }
      if let next = try directoryRedirect(found) {
        // A redirect from a lower layer in turn. A relative one names a directory of the
        // same parent: known here only if that is `parent` (the lookup was by name).
        switch (target, next) {
        case (_, .absolute):
          target = next
          layers = root.dirs.filter { $0.layer > dir.layer }
        case (.relative, .relative):
          target = next
          layers = parent.dirs.filter { $0.layer > dir.layer }
        case (.absolute(let path), .relative(let name)):
          // A sibling of where the path led, as overlayfs joins them.
          let up = path.split(separator: "/").dropLast().joined(separator: "/")
          target = .absolute(up.isEmpty ? name : up + "/" + name)
          layers = root.dirs.filter { $0.layer > dir.layer }
        default: return
        }
      }
    }
  }

  /// The node for `name` in `parent` and its attributes, counted once for the kernel (and
  /// not, if this throws). A fresh node's attributes are the stat its probe took. Caller
  /// holds the tree lock.
  func lookup(_ parent: Node, _ name: String) throws(Errno) -> (Node, stat) {
    var node = nodes.find(parent, name)
    if node == nil {
      let (fresh, st) = try probe(parent, name)
      node = nodes.intern(fresh)
      if node === fresh { return (fresh, shown(fresh, st)) }
    }
    do { return (node!, try attributes(node!)) } catch {
      nodes.forget(node!, 1)
      throw error
    }
  }

  /// The node for `name` without counting it for the kernel: the table's if it has one.
  private func resolve(_ parent: Node, _ name: String) throws(Errno) -> Node {
    if let node = nodes.peek(parent, name) { return node }
    return try probe(parent, name).0
  }

  /// Where a non-directory is: its layer's directory in its parent, and its name. Files
  /// hold no descriptor of their own (a walk of a big tree would run out), except one
  /// removed while the kernel holds it, which is pinned by an O_PATH descriptor.
  private func location(_ node: Node) throws(Errno) -> (dirfd: Int32, name: String) {
    if node.isDirectory { return (node.fd, "") }
    if node.pinned >= 0 { return (node.pinned, "") }
    guard let parent = node.parent, let dirfd = parent.dir(layer: node.layer) else { throw Errno(ESTALE) }
    return (dirfd, node.name)
  }

  /// The topmost file's own stat.
  func realStat(_ node: Node) throws(Errno) -> stat {
    var st = stat()
    let (dirfd, name) = try location(node)
    _ = try Sys.call(fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW | (name.isEmpty ? SHIM_AT_EMPTY_PATH : 0)))
    return st
  }

  /// Keeps a non-directory reachable by descriptor before its name goes away, for the
  /// kernel's open files and attribute calls.
  private func pin(_ node: Node) throws(Errno) {
    guard !node.isDirectory, node.pinned < 0 else { return }
    let (dirfd, name) = try location(node)
    node.pinned = try Sys.call(shim_openat(dirfd, name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0))
  }

  /// A link's target.
  func readlink(_ node: Node) throws(Errno) -> [CChar] {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let (dirfd, name) = try location(node)
    let n = try Sys.call(readlinkat(dirfd, name, &buffer, buffer.count - 1))
    buffer[n] = 0
    return buffer
  }

  /// Attributes as the mount shows them.
  func attributes(_ node: Node) throws(Errno) -> stat { shown(node, try realStat(node)) }

  /// The topmost file's stat as the mount shows it: the node's inode number, link count 1
  /// for a merged directory, and a stub's st_blocks (see `Stub`), as overlayfs.
  private func shown(_ node: Node, _ real: stat) -> stat {
    var st = real
    st.st_ino = ino_t(node.ino)
    if node.isMerged { st.st_nlink = 1 }
    if let stub = lowerStub(node) { st.st_blocks = stubBlocks(stub, real) }
    return st
  }

  // MARK: - Listing

  struct Entry {
    let name: String
    let ino: UInt64
    let type: UInt8
  }

  /// The merged listing of a directory: each name from its topmost layer, whiteouts and
  /// what they hide left out. Caller holds the tree lock.
  func entries(_ node: Node) throws(Errno) -> [Entry] {
    let merged = node.isMerged  // one layer: its names are unique, no set needed
    var seen = Set<String>()
    var out: [Entry] = []
    for dir in node.dirs {
      for e in try At.entries(dir.fd) where !merged || seen.insert(e.name).inserted {
        if e.type == UInt8(DT_CHR), try isWhiteout(dir.fd, e.name) { continue }
        out.append(Entry(name: e.name, ino: inodeNumber(e.ino, layer: dir.layer), type: e.type))
      }
    }
    return out
  }

  private func isWhiteout(_ dirfd: Int32, _ name: String) throws(Errno) -> Bool {
    try statIfPresent(dirfd, name)?.isWhiteout ?? false
  }

  // MARK: - Copy-up

  private func tempName() -> String { Sys.temporaryName("#snapfs") }

  /// Makes `node` live in the upper dir, with its parents. `data: false` skips copying a
  /// regular file's contents (an open with O_TRUNC). Caller holds the tree lock for writing.
  /// Called with a node whose attributes changed by its copy-up beyond what the request that
  /// copied it up replies (the FUSE layer drops the kernel's cached attributes).
  var copiedUp: ((Node) -> Void)?

  func copyUp(_ node: Node, data: Bool = true) throws(Errno) {
    guard hasUpper else { throw Errno(EROFS) }
    if node.layer == 0 { return }
    // A removed name is not brought back: its lower file stays as it was.
    guard !node.detached, let parent = node.parent else { throw Errno(ENOENT) }
    try copyUp(parent)
    let upperParent = parent.dirs[0].fd
    var parentTimes = stat()
    _ = try Sys.call(fstat(upperParent, &parentTimes))
    let st = try realStat(node)
    let temp = tempName()
    switch st.type {
    case S_IFDIR:
      _ = try Sys.call(mkdirat(work, temp, st.st_mode & 0o7777))
      var fd: Int32 = -1
      do {
        fd = try Sys.call(shim_openat(work, temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0))
        try copyMetadata(from: node.fd, to: fd, st)
        _ = try Sys.call(renameat(work, temp, upperParent, node.name))
      } catch {
        if fd >= 0 { close(fd) }
        try? removeTree(work, temp)
        throw error
      }
      node.dirs.insert(LayerDir(layer: 0, fd: fd), at: 0)
    case S_IFREG:
      guard let lowerParent = parent.dir(layer: node.layer) else { throw Errno(EIO) }
      let src = try Sys.call(shim_openat(lowerParent, node.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0))
      defer { close(src) }
      // A stub's data is its data file's; overlayfs looks that up even when it copies no data
      // (O_TRUNC), and fails the copy-up as the lookup does (ENOENT without the object).
      let stub = node.stub
      let dataFD = try stub.map { (stub) throws(Errno) -> Int32 in try openData(stub, flags: O_RDONLY | O_CLOEXEC) } ?? src
      defer { if dataFD != src { close(dataFD) } }
      let dst = try Sys.call(shim_openat(work, temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600))
      do {
        defer { close(dst) }
        if data {
          try copyData(from: dataFD, to: dst, size: Int(st.st_size))
          // The stub's size, whatever the data file's, as overlayfs sets it.
          if stub != nil { _ = try Sys.call(ftruncate(dst, st.st_size)) }
        }
        try copyMetadata(from: src, to: dst, st)
        _ = try Sys.call(renameat(work, temp, upperParent, node.name))
      } catch {
        unlinkat(work, temp, 0)
        throw error
      }
    case S_IFLNK:
      _ = try Sys.call(symlinkat(try readlink(node), work, temp))
      do { try finishSpecial(temp, st, into: upperParent, node.name) } catch {
        unlinkat(work, temp, 0)
        throw error
      }
    default:
      _ = try Sys.call(mknodat(work, temp, st.st_mode, st.st_rdev))
      do { try finishSpecial(temp, st, into: upperParent, node.name) } catch {
        unlinkat(work, temp, 0)
        throw error
      }
    }
    node.copiedFrom = node.layer
    node.layer = 0
    var upper = stat()
    if fstatat(upperParent, node.name, &upper, AT_SYMLINK_NOFOLLOW) == 0 {
      node.realIno = UInt64(upper.st_ino)
      // A name of a lower hard link is a file of its own now, with its own inode number, as
      // overlayfs without index=on shows it (the other names keep the lower inode's).
      if st.type == S_IFREG && st.st_nlink > 1 { node.ino = inodeNumber(UInt64(upper.st_ino), layer: 0) }
    }
    // What the kernel holds of it changed: a directory is merged now (st_nlink 1), a link's
    // name has another inode.
    if st.type == S_IFDIR || (st.type == S_IFREG && st.st_nlink > 1) { copiedUp?(node) }
    // Copy-up is not a change of the parent, as overlayfs has it.
    restoreTimes(upperParent, parentTimes)
  }

  private func restoreTimes(_ fd: Int32, _ st: stat) {
    var times = [st.st_atim, st.st_mtim]
    futimens(fd, &times)
  }

  /// Owner, times (and xattrs where the kernel has them) of a link or special file made in
  /// the work dir, then into place.
  private func finishSpecial(_ temp: String, _ st: stat, into dirfd: Int32, _ name: String) throws(Errno) {
    _ = try Sys.call(fchownat(work, temp, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW))
    if st.type != S_IFLNK { _ = try Sys.call(fchmodat(work, temp, st.st_mode & 0o7777, 0)) }
    var times = [st.st_atim, st.st_mtim]
    _ = try Sys.call(utimensat(work, temp, &times, AT_SYMLINK_NOFOLLOW))
    _ = try Sys.call(renameat(work, temp, dirfd, name))
  }

  /// Copies a file's `size` bytes with copy_file_range (in the kernel, no buffer of ours). A big
  /// file's second half is copied by a thread of its own at the same time: two streams keep
  /// twice the reads in flight on a cold file (a 256 MiB copy-up, cold, 0.205 s against 0.227 s
  /// median of 5 here). Where copy_file_range cannot (another file system), by reading.
  private func copyData(from src: Int32, to dst: Int32, size: Int) throws(Errno) {
    let first = min(size, 1 << 20)  // tells whether copy_file_range works here at all
    switch Self.copyRange(src, dst, 0..<first) {
    case 0: break
    case EXDEV, EINVAL, EOPNOTSUPP, ENOSYS: return try copyByReading(from: src, to: dst)
    case let e: throw Errno(e)
    }
    guard size - first >= Self.parallelCopyMin else {
      let e = Self.copyRange(src, dst, first..<size)
      if e != 0 { throw Errno(e) }
      return
    }
    let half = first + ((size - first) / 2) & ~((1 << 20) - 1)
    final class Outcome: @unchecked Sendable { var error: Int32 = 0 }
    let second = Outcome()
    let helper = try? Threads.start { second.error = Self.copyRange(src, dst, half..<size) }
    let e = Self.copyRange(src, dst, first..<(helper == nil ? size : half))
    helper?.join()
    if e != 0 { throw Errno(e) }
    if second.error != 0 { throw Errno(second.error) }
  }

  /// Files at least this big are copied up by two threads.
  static let parallelCopyMin = 32 << 20

  /// copy_file_range of `range` (same offsets in both files): 0, or the errno. A file that
  /// ends early ends the copy.
  private static func copyRange(_ src: Int32, _ dst: Int32, _ range: Range<Int>) -> Int32 {
    var offset = range.lowerBound
    while offset < range.upperBound {
      let n = Int(shim_copy_file_range_at(src, Int64(offset), dst, Int64(offset), UInt64(min(range.upperBound - offset, 1 << 30))))
      if n < 0 { return errno }
      if n == 0 { break }
      offset += n
    }
    return 0
  }

  private func copyByReading(from src: Int32, to dst: Int32) throws(Errno) {
    let size = 1 << 20
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
    defer { buffer.deallocate() }
    var offset: off_t = 0
    while true {
      let n = try Sys.call(pread(src, buffer, size, offset))
      if n == 0 { return }
      var done = 0
      while done < n { done += try Sys.call(pwrite(dst, buffer + done, n - done, offset + off_t(done))) }
      offset += off_t(n)
    }
  }

  /// xattrs (but overlayfs's own: a stub's metacopy and redirect stay behind), owner, mode,
  /// times: descriptor to descriptor.
  private func copyMetadata(from src: Int32, to dst: Int32, _ st: stat) throws(Errno) {
    _ = try Sys.call(fchown(dst, st.st_uid, st.st_gid))
    _ = try Sys.call(fchmod(dst, st.st_mode & 0o7777))  // after chown, which clears set-ID bits
    // After chown too, which removes security.capability (the kernel's own copy-up sets
    // the owner without that: a file capability must survive a copy-up).
    for bytes in try At.xattrNames(src) {
      let name = String(decoding: bytes, as: UTF8.self)
      guard visible(name) != nil else { continue }
      let value = try At.xattrValue(src, name)
      if fsetxattr(dst, name, value, value.count, 0) != 0 && errno != EOPNOTSUPP { throw Errno.current }
    }
    var times = [st.st_atim, st.st_mtim]
    _ = try Sys.call(futimens(dst, &times))
  }

  // MARK: - xattrs

  /// overlayfs (since Linux 6.7) escapes its own namespace: what users see as
  /// `trusted.overlay.X` is stored as `trusted.overlay.overlay.X`, and the real
  /// `trusted.overlay.*` (opaque, origin, ...) is hidden. The stored name of a user's.
  private func stored(_ name: String) -> String {
    name.hasPrefix(privatePrefix) ? privatePrefix + "overlay." + name.dropFirst(privatePrefix.count) : name
  }

  /// The name users see for a stored one; nil for overlayfs's own.
  private func visible(_ name: String) -> String? {
    guard name.hasPrefix(privatePrefix) else { return name }
    let rest = name.dropFirst(privatePrefix.count)
    return rest.hasPrefix("overlay.") ? privatePrefix + rest.dropFirst("overlay.".count) : nil
  }

  /// Runs `call` (an *xattrat(2) call, Linux 6.13) on the node's topmost non-directory: its
  /// name in its layer's directory, not followed. `fallback` gets a path naming the file
  /// instead (O_PATH descriptors refuse the f*xattr calls, and the *xattrat calls with an
  /// empty path, EBADF): its O_PATH descriptor's /proc/self/fd link. That is the way for a
  /// removed file, which only the descriptor that pins it reaches, and where the calls are
  /// missing (`xattrAt`).
  private func xattrCall<T: BinaryInteger>(_ node: Node, _ call: (Int32, String, Int32) -> T, _ fallback: (String) -> T)
    throws(Errno) -> T
  {
    if node.pinned >= 0 { return try Sys.call(fallback("/proc/self/fd/\(node.pinned)")) }
    let (dirfd, name) = try location(node)
    if xattrAt {
      do throws(Errno) { return try Sys.call(call(dirfd, name, AT_SYMLINK_NOFOLLOW)) } catch {
        guard error.code == ENOSYS else { throw error }
      }
    }
    let fd = try Sys.call(shim_openat(dirfd, name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0))
    defer { close(fd) }
    return try Sys.call(fallback("/proc/self/fd/\(fd)"))
  }

  func listXattrs(_ node: Node) throws(Errno) -> [UInt8] {
    let names =
      try node.isDirectory
      ? At.xattrNames(node.fd)
      : At.xattrNames { (list, size) -> Int in
        do throws(Errno) {
          return try xattrCall(
            node, { Int(shim_listxattrat($0, $1, $2, list, UInt(size))) }, { listxattr($0, list, size) })
        } catch {
          errno = error.code  // as a list call answers: -1 and errno (ERANGE is tried again)
          return -1
        }
      }
    var out: [UInt8] = []
    for bytes in names {
      if !bytes.starts(with: privatePrefix.utf8) {
        out += bytes
      } else if let shown = visible(String(decoding: bytes, as: UTF8.self)) {
        out += Array(shown.utf8)
      } else {
        continue
      }
      out.append(0)
    }
    return out
  }

  /// The value of `name` into `buffer` (nil: only its size).
  func getXattr(_ node: Node, _ name: String, into buffer: UnsafeMutableRawPointer?, size: Int) throws(Errno) -> Int {
    let name = stored(name)
    if node.isDirectory { return try Sys.call(fgetxattr(node.fd, name, buffer, size)) }
    return try xattrCall(
      node, { Int(shim_getxattrat($0, $1, $2, name, buffer, UInt(size))) }, { getxattr($0, name, buffer, size) })
  }

  func setXattr(_ node: Node, _ name: String, _ value: UnsafeRawPointer?, size: Int, flags: Int32) throws(Errno) {
    let name = stored(name)
    try copyUp(node)
    if node.isDirectory {
      _ = try Sys.call(fsetxattr(node.fd, name, value, size, flags))
    } else {
      _ = try xattrCall(
        node, { shim_setxattrat($0, $1, $2, name, value, UInt(size), flags) }, { setxattr($0, name, value, size, flags) })
    }
  }

  func removeXattr(_ node: Node, _ name: String) throws(Errno) {
    let name = stored(name)
    try copyUp(node)
    if node.isDirectory {
      _ = try Sys.call(fremovexattr(node.fd, name))
    } else {
      _ = try xattrCall(node, { shim_removexattrat($0, $1, $2, name) }, { removexattr($0, name) })
    }
  }

  // MARK: - Changing the tree (callers hold the tree lock for writing)

  /// Makes `parent` writable and clears the way for a new `name`: EEXIST if the merged
  /// tree has it, a whiteout for it removed. Answers whether there was one (a directory
  /// made there must be opaque, or the lower one would show through).
  ///
  /// The kernel looked the name up (and holds the directory locked) before it asks to create
  /// it, and every change goes through this mount: lower layers need no second look.
  func prepareCreate(_ parent: Node, _ name: String) throws(Errno) -> Bool {
    try copyUp(parent)
    let upper = parent.dirs[0].fd
    guard let st = try statIfPresent(upper, name) else { return false }
    guard st.isWhiteout else { throw Errno(EEXIST) }
    _ = try Sys.call(unlinkat(upper, name, 0))
    return true
  }

  /// Owner of a new entry: the caller's, the group from a set-group-ID parent. A file's
  /// set-ID bits, which chown clears, are given back (`mode`: as created).
  func chownNew(_ parent: Node, _ name: String, uid: uid_t, gid: gid_t, mode: mode_t? = nil) throws(Errno) {
    var pst = stat()
    _ = try Sys.call(fstat(parent.dirs[0].fd, &pst))
    let inherits = pst.st_mode & S_ISGID != 0
    let group = inherits ? pst.st_gid : gid
    // Made by this process: the owner it got may already be the right one.
    if uid == euid && group == (inherits ? pst.st_gid : egid) { return }
    _ = try Sys.call(fchownat(parent.dirs[0].fd, name, uid, group, AT_SYMLINK_NOFOLLOW))
    if let mode, mode & (S_ISUID | S_ISGID) != 0 {
      _ = try Sys.call(fchmodat(parent.dirs[0].fd, name, mode & 0o7777, 0))
    }
  }

  func markOpaque(_ fd: Int32) throws(Errno) {
    let y: [UInt8] = [UInt8(ascii: "y")]
    _ = try Sys.call(fsetxattr(fd, opaqueName, y, 1, 0))
  }

  /// Whether a layer under the upper one shows `name` in `parent`.
  private func lowerHas(_ parent: Node, _ name: String) throws(Errno) -> Bool {
    for dir in parent.dirs where dir.layer != 0 {
      if let st = try statIfPresent(dir.fd, name) { return !st.isWhiteout }
    }
    return false
  }

  /// Replaces (or makes) `name` in the upper `dirfd` with a whiteout, atomically for a
  /// non-directory.
  private func whiteout(_ dirfd: Int32, _ name: String) throws(Errno) {
    let temp = tempName()
    _ = try Sys.call(mknodat(work, temp, S_IFCHR, 0))
    do { _ = try Sys.call(renameat(work, temp, dirfd, name)) } catch {
      unlinkat(work, temp, 0)
      throw error
    }
  }

  /// Removes `name` and everything under it from `dirfd` (an upper or work directory).
  private func removeTree(_ dirfd: Int32, _ name: String) throws(Errno) {
    try Tree.remove(dirfd, name, makeAccessible: false) { (_, _, e) in Errno(e) }
  }

  /// Removes everything under the directory `name` of `dirfd`. An upper directory that is
  /// empty in the merged tree holds at most whiteouts.
  private func emptyDirectory(_ dirfd: Int32, _ name: String) throws(Errno) {
    let fd = try Sys.call(shim_openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0))
    defer { close(fd) }
    try Tree.removeContents(fd, makeAccessible: false) { (_, _, e) in Errno(e) }
  }

  /// unlink(2) and rmdir(2) of the merged tree.
  func remove(_ parent: Node, _ name: String, directory: Bool) throws(Errno) {
    guard hasUpper else { throw Errno(EROFS) }
    let node = try resolve(parent, name)
    if directory {
      guard node.isDirectory else { throw Errno(ENOTDIR) }
      guard try entries(node).isEmpty else { throw Errno(ENOTEMPTY) }
    } else if node.isDirectory {
      throw Errno(EISDIR)
    }
    try copyUp(parent)
    try pin(node)
    let upper = parent.dirs[0].fd
    let below = try node.layer != 0 ? true : lowerHas(parent, name)
    if node.layer == 0 {
      if directory {
        try removeTree(upper, name)
        if below { try whiteout(upper, name) }
      } else if below {
        try whiteout(upper, name)
      } else {
        _ = try Sys.call(unlinkat(upper, name, 0))
      }
    } else {
      try whiteout(upper, name)
    }
    nodes.detach(parent, name)
  }

  /// rename(2) of the merged tree. A directory that a lower layer has cannot move (EXDEV,
  /// as overlayfs without redirect_dir): `mv` copies it instead.
  func rename(_ parent: Node, _ name: String, _ newParent: Node, _ newName: String, flags: UInt32) throws(Errno) {
    guard hasUpper else { throw Errno(EROFS) }
    guard flags & ~SHIM_RENAME_NOREPLACE == 0 else { throw Errno(EINVAL) }
    if parent === newParent && name == newName { return }
    let node = try resolve(parent, name)
    if node.isDirectory && (node.layer != 0 || node.isMerged) { throw Errno(EXDEV) }
    var target: Node?
    do { target = try resolve(newParent, newName) } catch  where error.code == ENOENT {}
    var opaque = false
    if let target {
      if target === node { return }
      if flags & SHIM_RENAME_NOREPLACE != 0 { throw Errno(EEXIST) }
      if node.isDirectory {
        guard target.isDirectory else { throw Errno(ENOTDIR) }
        guard try entries(target).isEmpty else { throw Errno(ENOTEMPTY) }
        opaque = target.layer != 0 || target.isMerged
      } else if target.isDirectory {
        throw Errno(EISDIR)
      }
    }
    let below = try node.layer != 0 ? true : lowerHas(parent, name)
    try copyUp(parent)
    try copyUp(newParent)
    try copyUp(node)
    if let target { try pin(target) }
    let from = parent.dirs[0].fd
    let to = newParent.dirs[0].fd
    if let st = try statIfPresent(to, newName) {
      if st.isWhiteout {
        if node.isDirectory {
          _ = try Sys.call(unlinkat(to, newName, 0))
          opaque = true
        }
      } else if st.isDirectory {
        try emptyDirectory(to, newName)
      }
    }
    if opaque { try markOpaque(node.fd) }
    _ = try Sys.call(renameat(from, name, to, newName))
    if below { try whiteout(from, name) }
    nodes.detach(newParent, newName)
    nodes.move(node, from: parent, name, to: newParent, newName)
  }

  // MARK: - Open files

  /// Opens the node's topmost file with `flags`, copying it up first when the open may
  /// write: `attach` gets whether the open is of the upper file and a function that opens it,
  /// and runs under the tree lock (so no copy-up comes between the open and what `attach`
  /// decides). Takes the tree lock itself.
  func open<T>(_ node: Node, flags: Int32, _ attach: (_ upper: Bool, _ openFile: () throws(Errno) -> Int32) throws(Errno) -> T)
    throws(Errno) -> T
  {
    let writes = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
    let clean = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_NOFOLLOW | O_CLOEXEC
    if writes {
      return try tree.write { () throws(Errno) -> T in
        try copyUp(node, data: flags & O_TRUNC == 0)
        return try attach(true) { () throws(Errno) -> Int32 in try openTopmost(node, clean) }
      }
    }
    // For reading, the layer's file plainly: a lower file's descriptor is kept and serves
    // every later open's reads (an O_DIRECT one would fail their unaligned preads), and a
    // passthrough open's own flags are the kernel's, not this descriptor's.
    return try tree.read { () throws(Errno) -> T in
      try attach(hasUpper && node.layer == 0) { () throws(Errno) -> Int32 in
        try openTopmost(node, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
      }
    }
  }

  /// The size of the node's topmost file itself (a stub's own, not its data file's); nil if
  /// it cannot be had. Caller holds the tree lock.
  func ownSize(_ node: Node) -> Int64? {
    guard node.pinned < 0, let (dirfd, name) = try? location(node) else { return nil }
    var st = stat()
    return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? Int64(st.st_size) : nil
  }

  /// Splits `node`, whose kernel inode can no longer be opened (see `Passthrough`): off its
  /// names, which a fresh node answers from the next lookup on, and pinned to the file its
  /// open files read: `lower`, a descriptor of the lower file it was copied up from (the node
  /// takes it), else the upper file. Returns the parent and name for the kernel to forget, or
  /// nil if it was off its name already. Takes the tree lock.
  func split(_ node: Node, lower: Int32?) throws(Errno) -> (parent: Node, name: String)? {
    try tree.write { () throws(Errno) -> (parent: Node, name: String)? in
      guard !node.detached, let parent = node.parent, node.pinned < 0 else {
        if let lower { close(lower) }
        return nil
      }
      nodes.split(node)
      if var lower {
        // As a removed lower file: its readers' attributes, no copy-up, no opens for writing.
        // A stub's readers read its data file (`openTopmost`), but its attributes are the
        // stub's: it is pinned instead (if it cannot be, the data file's attributes show).
        if node.stub != nil, let dirfd = parent.dir(layer: node.copiedFrom) {
          let stub = shim_openat(dirfd, node.name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0)
          if stub >= 0 {
            close(lower)
            lower = stub
          }
        }
        var st = stat()
        if fstat(lower, &st) == 0 { node.realIno = UInt64(st.st_ino) }
        node.pinned = lower
        node.layer = node.copiedFrom
      } else {
        try pin(node)
      }
      return (parent, node.name)
    }
  }

  private func openTopmost(_ node: Node, _ flags: Int32) throws(Errno) -> Int32 {
    // A stub (only ever opened for reading: writing copies it up): its data file.
    if let stub = lowerStub(node) { return try openData(stub, flags: flags) }
    // A removed name: reopen the file through the descriptor that pins it.
    if node.pinned >= 0 { return try Sys.call(shim_open("/proc/self/fd/\(node.pinned)", flags & ~O_NOFOLLOW, 0)) }
    let (dirfd, name) = try location(node)
    let fd = try Sys.call(shim_openat(dirfd, name, flags, 0))
    // A lower file replaced under its name since its lookup: the layer store turns a
    // committed layer's files into stubs of the same metadata (renamed over each name) while
    // it may be mounted. The name's file is then a stub, whose own bytes are no data: its
    // data file is opened instead, as overlayfs keeps reading the file it looked up.
    var st = stat()
    guard !isUpper(node), node.type == S_IFREG, let parent = node.parent, fstat(fd, &st) == 0,
      UInt64(st.st_ino) != node.realIno
    else { return fd }
    let fresh: Stub?
    do { fresh = try stub(parent, name, layer: node.layer) } catch {
      close(fd)
      throw error
    }
    guard let fresh else { return fd }
    close(fd)
    return try openData(fresh, flags: flags)
  }

  /// link(2): `node` (copied up first, as overlayfs does) is also `name` in `parent`.
  func link(_ node: Node, _ parent: Node, _ name: String) throws(Errno) {
    try copyUp(node)
    _ = try prepareCreate(parent, name)
    let (dirfd, from) = try location(node)
    _ = try Sys.call(linkat(dirfd, from, parent.dirs[0].fd, name, from.isEmpty ? SHIM_AT_EMPTY_PATH : 0))
    nodes.addName(node, parent, name)
  }

  /// The upper directory and name through which to change `node`'s attributes.
  func upperLocation(_ node: Node) -> (dirfd: Int32, name: String)? {
    guard let parent = node.parent, !node.detached else { return nil }
    return (parent.dirs[0].fd, node.name)
  }
}
