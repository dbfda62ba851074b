import CSysShims

#if canImport(Glibc)
  import Glibc
#endif

/// Descriptor-relative system calls (`*at(2)`, `f*(2)`), for building trees that untrusted
/// input names: every call is relative to a directory descriptor, none follows a symlink
/// in its last component, and `openBeneath` confines whole paths with `openat2(2)`.
/// Errors name the call and the path relative to the descriptor.
public enum At {
  /// `O_PATH`: a descriptor that only names a file (for *at calls), opened without access.
  public static let pathOnly: Int32 = SHIM_O_PATH
  /// `O_NOATIME`: reading does not change the file's access time (owner or root only).
  public static let noAtime: Int32 = SHIM_O_NOATIME

  /// `openat2(2)` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: opens
  /// `path` under `dirfd` only if no component is a symlink and none leaves `dirfd`
  /// (ELOOP when a component is a symlink, EXDEV when `..` would escape).
  public static func openBeneath(_ dirfd: Int32, _ path: String, flags: Int32, mode: mode_t = 0) throws(SystemError) -> Int32 {
    let resolve = UInt64(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    return try SystemError.check("openat2", path) {
      shim_openat2(dirfd, path, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), UInt64(mode), resolve)
    }
  }

  /// `openat(2)` with O_NOFOLLOW | O_CLOEXEC added.
  public static func open(_ dirfd: Int32, _ name: String, flags: Int32, mode: mode_t = 0) throws(SystemError) -> Int32 {
    try SystemError.check("openat", name) { shim_openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode) }
  }

  /// `open(2)` read-only of a file by path.
  public static func openFile(_ path: String) throws(SystemError) -> Int32 {
    try SystemError.check("open", path) { shim_open(path, O_RDONLY | O_CLOEXEC, 0) }
  }

  /// `open(2)` read-only with O_NONBLOCK, of a path a client named: a FIFO with no writer
  /// or a device cannot block the caller. Check what it is (`fstat`) before reading.
  public static func openNonBlocking(_ path: String) throws(SystemError) -> Int32 {
    try SystemError.check("open", path) { shim_open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0) }
  }

  /// `open(2)` of a directory by absolute path (O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC).
  public static func openDirectory(_ path: String) throws(SystemError) -> Int32 {
    try SystemError.check("open", path) { shim_open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0) }
  }

  public static func mkdir(_ dirfd: Int32, _ name: String, mode: mode_t) throws(SystemError) {
    _ = try SystemError.check("mkdirat", name) { mkdirat(dirfd, name, mode) }
  }

  public static func mknod(_ dirfd: Int32, _ name: String, mode: mode_t, major: UInt32 = 0, minor: UInt32 = 0) throws(SystemError) {
    _ = try SystemError.check("mknodat", name) { mknodat(dirfd, name, mode, shim_makedev(major, minor)) }
  }

  public static func symlink(_ target: String, _ dirfd: Int32, _ name: String) throws(SystemError) {
    _ = try SystemError.check("symlinkat", name) { symlinkat(target, dirfd, name) }
  }

  /// `linkat(2)` without following a symlink at `from`.
  public static func link(_ fromDir: Int32, _ from: String, _ toDir: Int32, _ to: String) throws(SystemError) {
    _ = try SystemError.check("linkat", "\(from) -> \(to)") { linkat(fromDir, from, toDir, to, 0) }
  }

  public static func unlink(_ dirfd: Int32, _ name: String, directory: Bool = false) throws(SystemError) {
    _ = try SystemError.check("unlinkat", name) { unlinkat(dirfd, name, directory ? AT_REMOVEDIR : 0) }
  }

  public static func rename(_ fromDir: Int32, _ from: String, _ toDir: Int32, _ to: String) throws(SystemError) {
    _ = try SystemError.check("renameat", "\(from) -> \(to)") { renameat(fromDir, from, toDir, to) }
  }

  /// Swaps the files named `a` and `b` in one step (`renameat2(2)` with `RENAME_EXCHANGE`):
  /// each name always names a file, and no file gains a name meanwhile.
  public static func exchange(_ aDir: Int32, _ a: String, _ bDir: Int32, _ b: String) throws(SystemError) {
    _ = try SystemError.check("renameat2", "\(a) <-> \(b)") { shim_rename_exchange(aDir, a, bDir, b) }
  }

  /// `fstatat(2)` without following a symlink; nil when nothing is there.
  public static func lstat(_ dirfd: Int32, _ name: String) throws(SystemError) -> stat? {
    var st = stat()
    if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
    if errno == ENOENT { return nil }
    throw SystemError("fstatat", name, errno: errno)
  }

  public static func fstat(_ fd: Int32, _ what: String) throws(SystemError) -> stat {
    var st = stat()
    _ = try SystemError.check("fstat", what) { Glibc.fstat(fd, &st) }
    return st
  }

  /// `fchownat(2)` of the entry itself (AT_SYMLINK_NOFOLLOW).
  public static func lchown(_ dirfd: Int32, _ name: String, uid: uid_t, gid: gid_t) throws(SystemError) {
    _ = try SystemError.check("fchownat", name) { fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) }
  }

  public static func fchown(_ fd: Int32, _ what: String, uid: uid_t, gid: gid_t) throws(SystemError) {
    _ = try SystemError.check("fchown", what) { Glibc.fchown(fd, uid, gid) }
  }

  /// `fchmodat(2)` (follows a symlink: call it on what is not one).
  public static func chmod(_ dirfd: Int32, _ name: String, mode: mode_t) throws(SystemError) {
    _ = try SystemError.check("fchmodat", name) { fchmodat(dirfd, name, mode, 0) }
  }

  public static func fchmod(_ fd: Int32, _ what: String, mode: mode_t) throws(SystemError) {
    _ = try SystemError.check("fchmod", what) { Glibc.fchmod(fd, mode) }
  }

  /// `utimensat(2)` of the entry itself: access and modification times in nanoseconds.
  public static func setTimes(_ dirfd: Int32, _ name: String, atime: timespec, mtime: timespec) throws(SystemError) {
    var times = (atime, mtime)
    _ = try SystemError.check("utimensat", name) {
      withUnsafePointer(to: &times) {
        $0.withMemoryRebound(to: timespec.self, capacity: 2) { utimensat(dirfd, name, $0, AT_SYMLINK_NOFOLLOW) }
      }
    }
  }

  public static func futimes(_ fd: Int32, _ what: String, atime: timespec, mtime: timespec) throws(SystemError) {
    var times = (atime, mtime)
    _ = try SystemError.check("futimens", what) {
      withUnsafePointer(to: &times) { $0.withMemoryRebound(to: timespec.self, capacity: 2) { futimens(fd, $0) } }
    }
  }

  /// `openat(2)` with O_TMPFILE: an unnamed regular file (read-write, `mode`) on the file
  /// system of the directory `dirfd`, gone on close unless `linkTemporary` names it.
  public static func openTemporary(_ dirfd: Int32, _ what: String, mode: mode_t) throws(SystemError) -> Int32 {
    try SystemError.check("openat(O_TMPFILE)", what) { shim_openat(dirfd, ".", SHIM_O_TMPFILE | O_RDWR | O_CLOEXEC, mode) }
  }

  /// `linkat(2)` of an open file (made by `openTemporary`) as `name` in `dirfd`, through its
  /// /proc/self/fd link (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH). EEXIST when taken.
  public static func linkTemporary(_ fd: Int32, _ dirfd: Int32, _ name: String) throws(SystemError) {
    _ = try SystemError.check("linkat", name) { linkat(AT_FDCWD, "/proc/self/fd/\(fd)", dirfd, name, AT_SYMLINK_FOLLOW) }
  }

  /// `lgetxattr(2)` by path: the value (up to `maxSize` bytes), or nil when the file or the
  /// attribute does not exist.
  public static func getXattr(path: String, name: String, maxSize: Int = 256) throws(SystemError) -> [UInt8]? {
    var buffer = [UInt8](repeating: 0, count: maxSize)
    let n = lgetxattr(path, name, &buffer, buffer.count)
    if n >= 0 { return Array(buffer[0..<n]) }
    if errno == ENOENT || errno == ENODATA { return nil }
    throw SystemError("lgetxattr", "\(path) \(name)", errno: errno)
  }

  /// `fgetxattr(2)`: the value (up to `maxSize` bytes), or nil when the attribute does not exist.
  public static func getXattr(_ fd: Int32, _ what: String, name: String, maxSize: Int = 256) throws(SystemError) -> [UInt8]? {
    var buffer = [UInt8](repeating: 0, count: maxSize)
    let n = fgetxattr(fd, name, &buffer, buffer.count)
    if n >= 0 { return Array(buffer[0..<n]) }
    if errno == ENODATA { return nil }
    throw SystemError("fgetxattr", "\(what) \(name)", errno: errno)
  }

  /// `fsetxattr(2)`.
  public static func setXattr(_ fd: Int32, _ what: String, name: String, value: [UInt8]) throws(SystemError) {
    _ = try SystemError.check("fsetxattr", "\(what) \(name)") { fsetxattr(fd, name, value, value.count, 0) }
  }

  /// `lsetxattr(2)` by path (for symlinks and special files, which have no descriptor of
  /// their own to set xattrs through).
  public static func setXattr(path: String, name: String, value: [UInt8]) throws(SystemError) {
    _ = try SystemError.check("lsetxattr", "\(path) \(name)") { lsetxattr(path, name, value, value.count, 0) }
  }

  /// `lremovexattr(2)` by path.
  public static func removeXattr(path: String, name: String) throws(SystemError) {
    _ = try SystemError.check("lremovexattr", "\(path) \(name)") { lremovexattr(path, name) }
  }

  /// Owner, mode, xattrs and times of the open file `fd`, in the one order that keeps them
  /// all: chown clears the set-ID bits and removes `security.capability` (the kernel's
  /// killpriv), so the owner goes first, then the mode, then the xattrs, then the times.
  /// `owner` nil leaves the owner as it is.
  public static func setAttributes(
    _ fd: Int32, _ what: String, owner: (uid: uid_t, gid: gid_t)?, mode: mode_t, xattrs: [(String, [UInt8])],
    atime: timespec, mtime: timespec
  ) throws(SystemError) {
    if let owner { try fchown(fd, what, uid: owner.uid, gid: owner.gid) }
    try fchmod(fd, what, mode: mode)
    for (name, value) in xattrs { try setXattr(fd, what, name: name, value: value) }
    try futimes(fd, what, atime: atime, mtime: mtime)
  }

  /// The same for the entry `name` in `dirfd`, not following a symlink (whose mode is not
  /// set: `mode` nil); `path` names it for the xattrs, which have no *at form.
  public static func setAttributes(
    _ dirfd: Int32, _ name: String, path: String, owner: (uid: uid_t, gid: gid_t)?, mode: mode_t?, xattrs: [(String, [UInt8])],
    atime: timespec, mtime: timespec
  ) throws(SystemError) {
    if let owner { try lchown(dirfd, name, uid: owner.uid, gid: owner.gid) }
    if let mode { try chmod(dirfd, name, mode: mode) }
    for (x, value) in xattrs { try setXattr(path: path, name: x, value: value) }
    try setTimes(dirfd, name, atime: atime, mtime: mtime)
  }

  /// `fremovexattr(2)`.
  public static func removeXattr(_ fd: Int32, _ what: String, name: String) throws(SystemError) {
    _ = try SystemError.check("fremovexattr", "\(what) \(name)") { fremovexattr(fd, name) }
  }

  /// `llistxattr(2)` + `lgetxattr(2)` by path, not following a symlink (for symlinks and
  /// special files): every extended attribute, sorted by name.
  public static func xattrs(path: String) throws(SystemError) -> [(String, [UInt8])] {
    let names: [[UInt8]]
    do { names = try xattrNames { llistxattr(path, $0, $1) } } catch { throw SystemError("llistxattr", path, errno: error.code) }
    var out: [(String, [UInt8])] = []
    for bytes in names {
      let name = String(decoding: bytes, as: UTF8.self)
      guard let value = try getXattr(path: path, name: name, maxSize: 65536) else { continue }
      out.append((name, value))
    }
    return out.sorted { $0.0 < $1.0 }
  }

  /// `flistxattr(2)` + `fgetxattr(2)`: every extended attribute of the open file, sorted by
  /// name.
  public static func xattrs(_ fd: Int32, _ what: String) throws(SystemError) -> [(String, [UInt8])] {
    let names: [[UInt8]]
    do { names = try xattrNames(fd) } catch { throw SystemError("flistxattr", what, errno: error.code) }
    var out: [(String, [UInt8])] = []
    for bytes in names {
      let name = String(decoding: bytes, as: UTF8.self)
      do { out.append((name, try xattrValue(fd, name))) } catch { throw SystemError("fgetxattr", "\(what) \(name)", errno: error.code) }
    }
    return out.sorted { $0.0 < $1.0 }
  }

  /// `pwrite(2)` of all of `buffer` at `offset`.
  public static func write(_ fd: Int32, _ what: String, _ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(SystemError) {
    var done = 0
    while done < buffer.count {
      done += try SystemError.check("pwrite", what) {
        pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
      }
    }
  }

  /// `read(2)`: up to `buffer.count` bytes; 0 at the end.
  public static func read(_ fd: Int32, _ what: String, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
    try SystemError.check("read", what) { Glibc.read(fd, buffer.baseAddress, buffer.count) }
  }

  /// `pread(2)`: up to `buffer.count` bytes at `offset`; 0 at the end.
  public static func read(_ fd: Int32, _ what: String, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SystemError)
    -> Int
  {
    try SystemError.check("pread", what) { pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
  }

  public static func truncate(_ fd: Int32, _ what: String, size: Int64) throws(SystemError) {
    _ = try SystemError.check("ftruncate", what) { ftruncate(fd, off_t(size)) }
  }

  /// `syncfs(2)`: flushes the whole file system holding `fd`.
  public static func syncfs(_ fd: Int32, _ what: String) throws(SystemError) {
    _ = try SystemError.check("syncfs", what) { shim_syncfs(fd) }
  }

  /// `sync_file_range(SYNC_FILE_RANGE_WRITE)` of the whole file: starts writing its dirty
  /// pages back without waiting (a later fsync or syncfs then finds little left to do).
  /// Advice: an error is ignored.
  public static func startWriteback(_ fd: Int32) {
    _ = shim_start_writeback(fd)
  }

  public static func fsync(_ fd: Int32, _ what: String) throws(SystemError) {
    _ = try SystemError.check("fsync", what) { Glibc.fsync(fd) }
  }

  public static func close(_ fd: Int32) {
    _ = Glibc.close(fd)
  }
}
