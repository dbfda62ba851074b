import CSysShims

#if canImport(Glibc)
  import Glibc
#endif

/// Directory-tree walks done with descriptors and *at() calls, so they never follow a
/// symlink out of the tree and never build a path string per entry.
public enum Tree {
  /// Disk usage of a tree as containerd computes it (continuity `fs.DiskUsage`): the sum
  /// of `st_blocks * 512` and the number of inodes, each hard-linked inode counted once.
  public static func diskUsage(_ path: String) throws(SystemError) -> (size: Int64, inodes: Int64) {
    var seen = Set<InodeKey>()
    var size: Int64 = 0
    try walk(
      path,
      enter: { (_, st) in
        if seen.insert(InodeKey(st)).inserted { size += Int64(st.st_blocks) * 512 }
      },
      visit: { (_, _, st) in
        if seen.insert(InodeKey(st)).inserted { size += Int64(st.st_blocks) * 512 }
      })
    return (size, Int64(seen.count))
  }

  /// Walks the tree at `path` depth first without following symlinks: `enter` gets each
  /// directory (the root first) open, with its `stat` as it was before its entries were
  /// visited; `visit` gets every non-directory entry with its directory's descriptor, its
  /// name and `fstatat`; `leave` gets each directory again once its entries are done.
  public static func walk(
    _ path: String,
    enter: (_ dir: Int32, _ st: stat) throws(SystemError) -> Void = { _, _ in },
    visit: (_ dir: Int32, _ name: UnsafePointer<CChar>, _ st: stat) throws(SystemError) -> Void,
    leave: (_ dir: Int32, _ st: stat) throws(SystemError) -> Void = { _, _ in }
  ) throws(SystemError) {
    let fd = try SystemError.check("open", path) { open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
    var st = stat()
    if fstat(fd, &st) != 0 {
      let e = errno
      close(fd)
      throw SystemError("fstat", path, errno: e)
    }
    try walk(fd, st, path, enter, visit, leave)
  }

  /// Copies the tree at `from` to `to` (which must not exist) as it is: every entry's type,
  /// owner, mode, times and xattrs (all of them: overlayfs's too), hard links as links, a
  /// regular file without data (a layer's stub, or no blocks) as a file of its size without data.
  /// For a layer's files, which are stubs, so the copy costs metadata only.
  public static func copy(from: String, to: String) throws(SystemError) {
    try Sys.mkdir(to, mode: 0o700)
    var links: [UInt64: String] = [:]  // a copied inode with several names: its first copy
    try copyDirectory(from, to, &links)
  }

  private static func copyDirectory(_ from: String, _ to: String, _ links: inout [UInt64: String]) throws(SystemError) {
    let src = try At.openDirectory(from)
    defer { At.close(src) }
    let dst = try At.openDirectory(to)
    defer { At.close(dst) }
    var names: [String] = []
    try forEachEntry(src, from) { (name, _) throws(SystemError) in names.append(String(cString: name)) }
    for name in names {
      guard let st = try At.lstat(src, name) else { continue }
      let source = from + "/" + name
      let target = to + "/" + name
      switch st.st_mode & S_IFMT {
      case S_IFDIR:
        try At.mkdir(dst, name, mode: 0o700)
        try copyDirectory(source, target, &links)
        continue
      case S_IFREG:
        if st.st_nlink > 1, let first = links[UInt64(st.st_ino)] {
          try At.link(AT_FDCWD, first, dst, name)
          continue
        }
        if st.st_nlink > 1 { links[UInt64(st.st_ino)] = target }
        let fd = try At.open(dst, name, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        defer { At.close(fd) }
        // A stub (overlayfs's metacopy xattr) has no data of its own: its size alone. (Not
        // told by st_blocks: xattrs that do not fit in the inode take a block.)
        var isStub = st.st_blocks == 0
        if !isStub { isStub = try At.getXattr(path: source, name: OverlayXattr.trusted.metacopy) != nil }
        if isStub {
          try At.truncate(fd, target, size: Int64(st.st_size))
        } else {
          let input = try At.open(src, name, flags: O_RDONLY | At.noAtime)
          defer { At.close(input) }
          let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
          defer { buffer.deallocate() }
          var offset: Int64 = 0
          while true {
            let n = try At.read(input, source, into: buffer, at: offset)
            if n == 0 { break }
            try At.write(fd, target, UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: offset)
            offset += Int64(n)
          }
        }
      case S_IFLNK:
        guard let value = Sys.readLink(source) else { throw SystemError("readlink", source, errno: EIO) }
        try At.symlink(value, dst, name)
      default:
        try At.mknod(dst, name, mode: st.st_mode & S_IFMT, major: shim_major(UInt(st.st_rdev)), minor: shim_minor(UInt(st.st_rdev)))
      }
      try copyMetadata(st, source, dst, name, target)
    }
    let st = try At.fstat(src, from)
    try copyMetadata(st, from, dst, ".", to)
  }

  /// Owner, mode, xattrs and times of `source` (whose `lstat` is `st`) onto `name` in `dir`.
  private static func copyMetadata(_ st: stat, _ source: String, _ dir: Int32, _ name: String, _ target: String) throws(SystemError) {
    try At.setAttributes(
      dir, name, path: target, owner: (st.st_uid, st.st_gid), mode: st.st_mode & S_IFMT == S_IFLNK ? nil : st.st_mode & 0o7777,
      xattrs: try At.xattrs(path: source), atime: st.st_atim, mtime: st.st_mtim)
  }

  /// Removes `path` and everything under it (`rm -rf`). A missing path is not an error.
  /// Directories without write or search permission are made accessible first.
  public static func remove(_ path: String) throws(SystemError) {
    var st = stat()
    if lstat(path, &st) != 0 {
      if errno == ENOENT { return }
      throw SystemError("lstat", path, errno: errno)
    }
    if (st.st_mode & S_IFMT) != S_IFDIR {
      _ = try SystemError.check("unlink", path) { unlink(path) }
      return
    }
    if (st.st_mode & 0o700) != 0o700 { _ = chmod(path, 0o700) }
    let fd = try SystemError.check("open", path) { open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
    do {
      defer { close(fd) }
      try removeContents(fd, makeAccessible: true) { (call, name, e) in
        SystemError(call, name.isEmpty ? path : path + "/" + name, errno: e)
      }
    }
    _ = try SystemError.check("rmdir", path) { rmdir(path) }
  }

  /// Removes `name` from the directory `dirfd`, and everything under it if it is a
  /// directory; `type` is its `d_type` where known. With `makeAccessible`, directories
  /// without write or search permission for their owner are made accessible first. A
  /// failed call is thrown as `failure(call, name of the entry, errno)` (an empty name: a
  /// directory that could not be read).
  public static func remove<E: Error>(
    _ dirfd: Int32, _ name: String, type: UInt8 = UInt8(DT_UNKNOWN), makeAccessible: Bool,
    failure: (_ call: String, _ name: String, _ errno: Int32) -> E
  ) throws(E) {
    if type != UInt8(DT_DIR) {
      if unlinkat(dirfd, name, 0) == 0 { return }
      if errno != EISDIR { throw failure("unlinkat", name, errno) }
    }
    if makeAccessible {
      var st = stat()
      if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & 0o700) != 0o700 {
        _ = fchmodat(dirfd, name, 0o700, 0)
      }
    }
    let fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    if fd < 0 { throw failure("openat", name, errno) }
    do {
      defer { close(fd) }
      try removeContents(fd, makeAccessible: makeAccessible, failure: failure)
    }
    if unlinkat(dirfd, name, AT_REMOVEDIR) != 0 { throw failure("unlinkat", name, errno) }
  }

  /// Removes everything in the directory open at `fd` (which stays open): each entry as
  /// `remove(_:_:type:makeAccessible:failure:)`, listed first.
  public static func removeContents<E: Error>(
    _ fd: Int32, makeAccessible: Bool, failure: (_ call: String, _ name: String, _ errno: Int32) -> E
  ) throws(E) {
    let entries: [DirectoryEntry]
    do { entries = try At.entries(fd) } catch { throw failure("readdir", "", error.code) }
    for entry in entries {
      try remove(fd, entry.name, type: entry.type, makeAccessible: makeAccessible, failure: failure)
    }
  }

  /// The walk below the directory open at `fd` (which this call closes).
  private static func walk(
    _ fd: Int32, _ st: stat, _ path: String,
    _ enter: (Int32, stat) throws(SystemError) -> Void,
    _ visit: (Int32, UnsafePointer<CChar>, stat) throws(SystemError) -> Void,
    _ leave: (Int32, stat) throws(SystemError) -> Void
  ) throws(SystemError) {
    defer { close(fd) }
    try enter(fd, st)
    try forEachEntry(fd, path) { (name, _) throws(SystemError) in
      var child = stat()
      if fstatat(fd, name, &child, AT_SYMLINK_NOFOLLOW) != 0 {
        throw SystemError("fstatat", path + "/" + String(cString: name), errno: errno)
      }
      if (child.st_mode & S_IFMT) == S_IFDIR {
        let cfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if cfd < 0 { throw SystemError("openat", path + "/" + String(cString: name), errno: errno) }
        try walk(cfd, child, path, enter, visit, leave)
      } else {
        try visit(fd, name, child)
      }
    }
    try leave(fd, st)
  }

  /// `At.readDirectory` over the directory open at `fd` through a duplicate (`fd` stays
  /// open, the caller closes it): calls `body` with each entry's name and `d_type`.
  private static func forEachEntry(
    _ fd: Int32, _ path: String, _ body: (UnsafePointer<CChar>, UInt8) throws(SystemError) -> Void
  ) throws(SystemError) {
    let own = try SystemError.check("dup", path) { dup(fd) }
    try At.readDirectory(consuming: own, failure: { SystemError($0, path, errno: $1) }) { (name, entry) throws(SystemError) in
      try body(name, entry.pointee.d_type)
    }
  }
}

private struct InodeKey: Hashable {
  let dev: UInt64
  let ino: UInt64
  init(_ st: stat) {
    dev = UInt64(st.st_dev)
    ino = UInt64(st.st_ino)
  }
}
