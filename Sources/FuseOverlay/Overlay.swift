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
  let opaqueName: String
  /// `trusted.overlay.metacopy` and `trusted.overlay.redirect` (`user.overlay.*` with
  /// `userxattr`): a lower layer's metacopy file and where its data is.
  let metacopyName: String
  let redirectName: String
  /// Data-only layers, opened O_RDONLY|O_DIRECTORY, in the order they are searched.
  let dataLayers: [Int32]
  /// overlayfs's `metacopy` (see `Options.metacopy`).
  let metacopy: Bool
  /// Mounted `volatile`: opens drop O_SYNC and O_DSYNC, as overlayfs does (ovl_write_iter).
  let volatile: Bool
  /// Whether lower layers' directory redirects are followed (`Options.followsRedirects`).
  let followsRedirects: Bool
  /// The index of the bottom normal layer.
  let bottomLayer: Int
  /// Guards stubs' state (`Stub.blocks`, `Stub.dataLayer`).
  let stubs = Lock()
  let work: Int32
  private let sameDevice: Bool
  /// The *xattrat calls (Linux 6.13) answer here: probed once on the top layer, since an
  /// older kernel says ENOSYS and a seccomp filter that does not know them often EPERM.
  let xattrAt: Bool
  let euid = geteuid(), egid = getegid()

  /// Makes `node` live in the upper dir, with its parents. `data: false` skips copying a
  /// regular file's contents (an open with O_TRUNC). Caller holds the tree lock for writing.
  /// Called with a node whose attributes changed by its copy-up beyond what the request that
  /// copied it up replies (the FUSE layer drops the kernel's cached attributes).
  var copiedUp: ((Node) -> Void)?

  /// Opens the layers; throws a message naming the layer that cannot be used.
  init(_ options: Options) throws(Options.Invalid) {
    volatile = options.volatile
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

  func inodeNumber(_ ino: UInt64, layer: Int) -> UInt64 {
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
  func resolve(_ parent: Node, _ name: String) throws(Errno) -> Node {
    if let node = nodes.peek(parent, name) { return node }
    return try probe(parent, name).0
  }

  /// Where a non-directory is: its layer's directory in its parent, and its name. Files
  /// hold no descriptor of their own (a walk of a big tree would run out), except one
  /// removed while the kernel holds it, which is pinned by an O_PATH descriptor.
  func location(_ node: Node) throws(Errno) -> (dirfd: Int32, name: String) {
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
  func pin(_ node: Node) throws(Errno) {
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
  func shown(_ node: Node, _ real: stat) -> stat {
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

  func isWhiteout(_ dirfd: Int32, _ name: String) throws(Errno) -> Bool {
    try statIfPresent(dirfd, name)?.isWhiteout ?? false
  }
}
