import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// A layer's entries in memory, as the unpacker reads them from its tar: what becomes the
/// layer's EROFS image (`ErofsImage`), or, where the kernel has no EROFS, a directory of
/// stubs (`materialize`). Regular files are stubs: metadata, size and the key of their
/// object; their data is in the `ObjectStore`. A small file's data is kept in the tree
/// instead (`inlineMax`): the image holds it inline, beside its inode.
///
/// The tree applies a tar's rules as a file system would, so an image and a directory hold
/// the same: a later entry of a path replaces a non-directory, a directory entry updates
/// one, a hard link shares its target's node, and nothing is written through a symlink.
/// Names are bytes: two spellings of one Unicode name are two names, as on disk.
///
/// Memory: about 300 bytes per entry; `maxEntries` bounds a layer.
public final class LayerTree {
  public final class Node {
    /// `S_IFDIR`, `S_IFREG`, `S_IFLNK`, `S_IFCHR`, `S_IFBLK`, `S_IFIFO` or `S_IFSOCK`.
    public let type: mode_t
    public var meta: FileMeta
    /// Regular files: the size, and the key of the object holding the data (nil when empty
    /// or inline).
    public var size: Int64 = 0
    public var object: String?
    /// Regular files: the data itself, for a small file kept inline (`LayerTree.inline`).
    public var data: [UInt8]?
    /// Symlinks: the target.
    public var target: [UInt8] = []
    /// Devices.
    public var major: UInt32 = 0
    public var minor: UInt32 = 0
    /// Directories: entries by name; and whether it hides the layers below (overlayfs's
    /// opaque xattr, from an OCI `.wh..wh..opq`).
    public var children: [[UInt8]: Node] = [:]
    public var opaque = false
    /// Non-directories: how many names it has in the tree.
    public var links = 0

    init(type: mode_t, meta: FileMeta) {
      self.type = type
      self.meta = meta
    }

    public var isDirectory: Bool { type == S_IFDIR }

    /// The xattrs as stored: the entry's own, the stub's, and opaque.
    public var storedXattrs: [(name: String, value: [UInt8])] {
      var out = meta.xattrs
      if let object {
        out.append((ObjectStore.metacopyXattr, []))
        out.append((ObjectStore.redirectXattr, Array(ObjectStore.redirect(of: object).utf8)))
      }
      if opaque { out.append((OverlayXattr.trusted.opaque, Array("y".utf8))) }
      return out
    }
  }

  /// Why a tar entry cannot be placed; the unpacker names the entry.
  public struct Refusal: Error {
    public let reason: String
  }

  public let root: Node
  public private(set) var entries = 1
  /// Entries a layer may hold: a bound on the memory an unpack takes (about 300 MB).
  public static let maxEntries = 1_000_000

  /// Regular files up to this size keep their data in the tree, and the image holds it
  /// inline, in the block of the file's inode, not as an object. A cold read of such a file
  /// then reads no block the walk to it did not (an object costs an ext4 inode and a 4 KiB
  /// block of its own, read apart); what it gives up is sharing those bytes with other
  /// layers: 0.12% of a Debian minbase's file bytes are in files of 512 bytes or less, 12.5%
  /// of its files (docs/benchmarks.md).
  public static let inlineMax = 512
  /// Inline bytes a layer may hold (a bound on the memory they take); later small files
  /// become objects.
  public static let inlineBudget = 32 << 20
  public private(set) var inlineBytes = 0

  /// Whether a regular file of `size` bytes is to be kept inline, counting it if so.
  public func inline(_ size: Int) -> Bool {
    guard size > 0, size <= Self.inlineMax, inlineBytes + size <= Self.inlineBudget else { return false }
    inlineBytes += size
    return true
  }

  /// `owner`, `now`: what directories made for a path (and the root) get.
  let owner: (uid: UInt32, gid: UInt32)
  let now: timespec

  public init(owner: (uid: UInt32, gid: UInt32), now: timespec) {
    self.owner = owner
    self.now = now
    root = Node(type: S_IFDIR, meta: Self.madeDirectory(owner: owner, now: now))
  }

  static func madeDirectory(owner: (uid: UInt32, gid: UInt32), now: timespec) -> FileMeta {
    FileMeta(mode: 0o755, uid: owner.uid, gid: owner.gid, mtime: now, atime: now, xattrs: [])
  }

  /// A new node, counted against `maxEntries`.
  public func node(_ type: mode_t, _ meta: FileMeta) throws(Refusal) -> Node {
    guard entries < Self.maxEntries else { throw Refusal(reason: "the layer has more than \(Self.maxEntries) entries") }
    entries += 1
    return Node(type: type, meta: meta)
  }

  /// The directory at `parts`, making missing ones (0755, `owner`) and calling `made` with
  /// the path of each. A symlink or non-directory on the way is refused.
  public func directory(_ parts: ArraySlice<[UInt8]>, made: (ArraySlice<[UInt8]>) -> Void) throws(Refusal) -> Node {
    var dir = root
    for i in parts.indices {
      if let next = dir.children[parts[i]] {
        guard next.isDirectory else {
          throw Refusal(reason: "\"\(Self.path(parts[...i]))\" is a symlink or not a directory: writing through it is refused")
        }
        dir = next
      } else {
        let next = try node(S_IFDIR, Self.madeDirectory(owner: owner, now: now))
        dir.children[parts[i]] = next
        made(parts[...i])
        dir = next
      }
    }
    return dir
  }

  /// The node at `parts`, not following symlinks (nil: none, or a symlink or file on the
  /// way).
  public func lookup(_ parts: ArraySlice<[UInt8]>) -> Node? {
    var node = root
    for part in parts {
      guard node.isDirectory, let next = node.children[part] else { return nil }
      node = next
    }
    return node
  }

  /// Gives `node` the name `name` in `dir`. A non-directory of that name is replaced
  /// (`removed` gets it when that was its last name); a directory is not.
  public func place(_ node: Node, _ name: [UInt8], in dir: Node, removed: (Node) -> Void) throws(Refusal) {
    if let old = dir.children[name] {
      if old.isDirectory { throw Refusal(reason: "replaces a directory") }
      old.links -= 1
      if old.links == 0 { removed(old) }
    }
    dir.children[name] = node
    node.links += 1
  }

  static func path(_ parts: ArraySlice<[UInt8]>) -> String {
    parts.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
  }

  /// Every node once (hard links once), directories before their entries, entries in
  /// name order (bytes): `visit` gets the node and its path's parts.
  public func walk(_ visit: (Node, [[UInt8]]) throws -> Void) rethrows {
    var seen = Set<ObjectIdentifier>()
    var stack: [(Node, [[UInt8]])] = [(root, [])]
    while let (node, path) = stack.popLast() {
      try visit(node, path)
      for (name, child) in node.children.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }).reversed() {
        if child.links > 1, !seen.insert(ObjectIdentifier(child)).inserted { continue }
        stack.append((child, path + [name]))
      }
    }
  }

  // MARK: - As a directory

  /// Writes the tree into the empty directory `dir`: stubs, directories, symlinks, devices,
  /// whiteouts and hard links, with their metadata; directories' last, after their
  /// contents. Not durable: the caller syncs.
  public func materialize(into dir: String) throws(SystemError) {
    let rootFD = try At.openDirectory(dir)
    defer { At.close(rootFD) }
    let euid = geteuid()
    let egid = getegid()
    func owner(_ m: FileMeta) -> (uid: uid_t, gid: uid_t)? { m.uid != euid || m.gid != egid ? (m.uid, m.gid) : nil }
    var first: [ObjectIdentifier: String] = [:]  // hard-linked nodes: their first path
    var directories: [(String, Node)] = []  // their metadata is set last, deepest first

    func fill(_ fd: Int32, _ path: String, _ node: Node) throws(SystemError) {
      for (nameBytes, child) in node.children.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
        let name = String(decoding: nameBytes, as: UTF8.self)
        let childPath = path.isEmpty ? name : path + "/" + name
        if child.links > 1 {
          if let target = first[ObjectIdentifier(child)] {
            try At.link(rootFD, target, fd, name)
            continue
          }
          first[ObjectIdentifier(child)] = childPath
        }
        let xattrs = child.storedXattrs
        switch child.type {
        case S_IFDIR:
          try At.mkdir(fd, name, mode: 0o700)
          let sub = try At.open(fd, name, flags: O_RDONLY | O_DIRECTORY)
          defer { At.close(sub) }
          directories.append((childPath, child))
          try fill(sub, childPath, child)
        case S_IFREG:
          let file = try At.open(fd, name, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
          defer { At.close(file) }
          if let data = child.data {
            let written = data.withUnsafeBytes { bytes in
              Result { () throws(SystemError) in try At.write(file, childPath, bytes, at: 0) }
            }
            try written.get()
          } else if child.size > 0 {
            try At.truncate(file, childPath, size: child.size)
          }
          try At.setAttributes(
            file, childPath, owner: owner(child.meta), mode: child.meta.mode, xattrs: xattrs, atime: child.meta.atime,
            mtime: child.meta.mtime)
        default:
          if child.type == S_IFLNK {
            try At.symlink(String(decoding: child.target, as: UTF8.self), fd, name)
          } else {
            try At.mknod(fd, name, mode: child.type, major: child.major, minor: child.minor)
          }
          try At.setAttributes(
            fd, name, path: dir + "/" + childPath, owner: owner(child.meta), mode: child.type == S_IFLNK ? nil : child.meta.mode,
            xattrs: xattrs, atime: child.meta.atime, mtime: child.meta.mtime)
        }
      }
    }
    try fill(rootFD, "", root)
    for (path, node) in directories.reversed() {
      let fd = try At.openBeneath(rootFD, path, flags: O_RDONLY | O_DIRECTORY)
      defer { At.close(fd) }
      try At.setAttributes(
        fd, path, owner: owner(node.meta), mode: node.meta.mode, xattrs: node.storedXattrs, atime: node.meta.atime, mtime: node.meta.mtime)
    }
    try At.setAttributes(
      rootFD, dir, owner: owner(root.meta), mode: root.meta.mode, xattrs: root.storedXattrs, atime: root.meta.atime, mtime: root.meta.mtime)
  }

  // MARK: - From a directory

  /// What `load` found of a directory's objects.
  public struct Loaded {
    /// Every object the tree's stubs name, with size and digest (as a layer's references).
    public var objects: [String: ObjectInfo] = [:]
    /// Objects `load` made of files with data (their inodes, given an object's name),
    /// with the file's path: `ObjectStore.disown` undoes each if the directory stays.
    public var adopted: [(key: String, path: String)] = []
    /// Bytes of regular files, hard links once.
    public var fileBytes: Int64 = 0

    public init() {}
  }

  /// Reads a layer directory into a tree, xattrs as they are (overlayfs's too): one of stubs
  /// (`materialize`'s, a mounted image, an older store's), or a committed upper dir. With
  /// `objects`, a regular file with data (no `metacopy` xattr) becomes a stub of its
  /// content, whose object is the file's own inode given an object's name when the store
  /// lacks that content (no copy: the directory is to go); without, it is refused (EINVAL).
  public static func load(from dir: String, objects: ObjectStore?, loaded: inout Loaded) throws(SystemError) -> LayerTree {
    let rootFD = try At.openDirectory(dir)
    defer { At.close(rootFD) }
    let rootStat = try At.fstat(rootFD, dir)
    let tree = LayerTree(owner: (rootStat.st_uid, rootStat.st_gid), now: Sys.now())
    tree.root.meta = FileMeta(stat: rootStat, xattrs: try At.xattrs(rootFD, dir).map { (name: $0.0, value: $0.1) })
    var inodes: [UInt64: Node] = [:]  // hard links: the node of each inode with several names
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { buffer.deallocate() }

    func fill(_ fd: Int32, _ path: String, _ dir: Node) throws(SystemError) {
      let entries: [DirectoryEntry]
      do { entries = try At.entries(fd) } catch { throw SystemError("readdir", path, errno: error.code) }
      for entry in entries {
        let childPath = path + "/" + entry.name
        // (A name that is not UTF-8 comes back from the listing changed and is not found:
        // refused, rather than left out of the image.)
        guard let st = try At.lstat(fd, entry.name) else {
          throw SystemError("load", childPath + ": a name that is not UTF-8, or gone", errno: EINVAL)
        }
        let type = st.st_mode & S_IFMT
        if type != S_IFDIR, st.st_nlink > 1, let node = inodes[UInt64(st.st_ino)] {
          dir.children[Array(entry.name.utf8)] = node
          node.links += 1
          continue
        }
        guard tree.entries < maxEntries else { throw SystemError("load", path + ": more than \(maxEntries) entries", errno: EFBIG) }
        tree.entries += 1
        let node: Node
        switch type {
        case S_IFDIR, S_IFREG:
          let sub = try At.open(fd, entry.name, flags: O_RDONLY | (type == S_IFDIR ? O_DIRECTORY : O_NONBLOCK) | At.noAtime)
          defer { At.close(sub) }
          let xattrs = try At.xattrs(sub, childPath).map { (name: $0.0, value: $0.1) }
          node = Node(type: type, meta: FileMeta(stat: st, xattrs: xattrs))
          if type == S_IFDIR {
            try fill(sub, childPath, node)
          } else {
            node.size = Int64(st.st_size)
            let stub = xattrs.contains(where: { $0.name == ObjectStore.metacopyXattr })
            if !stub, tree.inline(Int(st.st_size)) {
              node.data = try readSmall(sub, childPath, size: Int(st.st_size), buffer)
            } else if st.st_size > 0, !stub {
              guard let objects else { throw SystemError("load", childPath + ": a file with data, not a stub", errno: EINVAL) }
              let sha = try ObjectStore.hash(sub, childPath, buffer)
              var key = try objects.find(sha)
              if key == nil {
                let made = try objects.adopt(inode: sub, childPath, sha: sha)
                if made.new { loaded.adopted.append((made.key, childPath)) }
                key = made.key
              }
              node.object = key!
              loaded.objects[key!] = ObjectInfo(size: Int64(st.st_size), sha256: Digest.hexString(sha))
            } else if let objects, st.st_size > 0, let key = try ObjectStore.stubKey(sub, childPath),
              let info = try objects.info(recovering: key, buffer)
            {
              loaded.objects[key] = info
            }
            loaded.fileBytes += Int64(st.st_size)
          }
        default:
          node = Node(type: type, meta: FileMeta(stat: st, xattrs: try At.xattrs(path: childPath).map { (name: $0.0, value: $0.1) }))
          if type == S_IFLNK {
            guard let target = Sys.readLinkBytes(childPath) else { throw SystemError("readlink", childPath, errno: errno) }
            node.target = target
          } else {
            node.major = UInt32(truncatingIfNeeded: (st.st_rdev >> 8) & 0xfff | ((st.st_rdev >> 32) & ~0xfff))
            node.minor = UInt32(truncatingIfNeeded: (st.st_rdev & 0xff) | ((st.st_rdev >> 12) & ~0xff))
          }
        }
        if type != S_IFDIR {
          node.links = 1
          if st.st_nlink > 1 { inodes[UInt64(st.st_ino)] = node }
        }
        dir.children[Array(entry.name.utf8)] = node
      }
    }
    try fill(rootFD, dir, tree.root)
    return tree
  }

  /// The whole content of a small file (`inlineMax`), which must be `size` bytes.
  static func readSmall(_ fd: Int32, _ path: String, size: Int, _ buffer: UnsafeMutableRawBufferPointer) throws(SystemError)
    -> [UInt8]
  {
    var done = 0
    while done < size {
      let n = try At.read(fd, path, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<size]), at: Int64(done))
      guard n > 0 else { throw SystemError("read", path + ": shorter than its size", errno: EIO) }
      done += n
    }
    return Array(buffer[0..<size])
  }

  /// `load` of a tree of stubs and inline files only.
  public static func load(from dir: String) throws(SystemError) -> LayerTree {
    var loaded = Loaded()
    return try load(from: dir, objects: nil, loaded: &loaded)
  }
}

extension FileMeta {
  init(stat st: stat, xattrs: [(name: String, value: [UInt8])]) {
    self.init(mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid, mtime: st.st_mtim, atime: st.st_atim, xattrs: xattrs)
  }
}
