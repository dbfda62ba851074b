import CSysShims

#if canImport(Glibc)
  import Glibc
#endif

/// Thin wrappers around the system calls the snapshotter uses. Each call is wrapped
/// once here; errors come back as ``SystemError`` naming the call and the path, EINTR is
/// retried where the call may return it.
public enum Sys {
  /// `clock_gettime(CLOCK_REALTIME)`.
  public static func now() -> timespec {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts
  }

  /// `mkdir(2)`.
  public static func mkdir(_ path: String, mode: mode_t) throws(SystemError) {
    _ = try SystemError.check("mkdir", path) { Glibc.mkdir(path, mode) }
  }

  /// `mkdir(2)` that treats an existing directory as success.
  public static func mkdirIfMissing(_ path: String, mode: mode_t) throws(SystemError) {
    do { try mkdir(path, mode: mode) } catch  where error.errno == EEXIST {}
  }

  /// `mkdir -p`: creates every missing component of `path`.
  public static func mkdirAll(_ path: String, mode: mode_t) throws(SystemError) {
    var prefix = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
      prefix += "/" + part
      try mkdirIfMissing(prefix, mode: mode)
    }
  }

  /// `rename(2)`.
  public static func rename(_ from: String, _ to: String) throws(SystemError) {
    _ = try SystemError.check("rename", "\(from) -> \(to)") { Glibc.rename(from, to) }
  }

  /// `lchown(2)`.
  public static func lchown(_ path: String, uid: uid_t, gid: gid_t) throws(SystemError) {
    _ = try SystemError.check("lchown", path) { Glibc.lchown(path, uid, gid) }
  }

  /// `chmod(2)`.
  public static func chmod(_ path: String, mode: mode_t) throws(SystemError) {
    _ = try SystemError.check("chmod", path) { Glibc.chmod(path, mode) }
  }

  /// `lstat(2)`.
  public static func lstat(_ path: String) throws(SystemError) -> stat {
    var st = stat()
    _ = try SystemError.check("lstat", path) { Glibc.lstat(path, &st) }
    return st
  }

  /// Whether `lstat(2)` finds anything at `path`.
  public static func exists(_ path: String) -> Bool {
    var st = stat()
    return Glibc.lstat(path, &st) == 0
  }

  /// `unlink(2)`.
  public static func unlink(_ path: String) throws(SystemError) {
    _ = try SystemError.check("unlink", path) { Glibc.unlink(path) }
  }

  /// `open(2)` read-only of a directory, then `fsync(2)`: makes entries created, renamed or
  /// removed in `path` durable.
  public static func fsyncDirectory(_ path: String) throws(SystemError) {
    let fd = try SystemError.check("open", path) { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
    defer { close(fd) }
    _ = try SystemError.check("fsync", path) { Glibc.fsync(fd) }
  }

  /// `open(2)` + `lockf(3)` F_TLOCK (an exclusive fcntl record lock). Returns the descriptor
  /// that holds the lock for as long as it stays open; throws EAGAIN/EACCES when another
  /// process holds it.
  public static func lockFile(_ path: String) throws(SystemError) -> Int32 {
    let fd = try SystemError.check("open", path) { Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
    if Glibc.lockf(fd, F_TLOCK, 0) != 0 {
      let e = errno
      close(fd)
      throw SystemError("lockf", path, errno: e)
    }
    return fd
  }

  /// A whole file (a /proc file, whose size stat does not tell).
  public static func readAll(_ path: String) throws(SystemError) -> [UInt8] {
    let fd = try SystemError.check("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = try SystemError.check("read", path) { read(fd, &buffer, buffer.count) }
      if n == 0 { return out }
      out += buffer[..<n]
    }
  }

  /// The arguments of every running process whose `comm` is `name` (processes that exit
  /// while they are read are left out).
  public static func processArguments(named name: String) throws(SystemError) -> [[String]] {
    var out: [[String]] = []
    for pid in try listDirectory("/proc") where pid.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
      guard let comm = try? readAll("/proc/" + pid + "/comm"), comm.split(separator: 0x0A).first.map(Array.init) == Array(name.utf8),
        let cmdline = try? readAll("/proc/" + pid + "/cmdline")
      else { continue }
      out.append(cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) })
    }
    return out
  }

  /// Names in a directory (`readdir(3)`), without "." and "..".
  public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
    let fd = try SystemError.check("open", path) { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
    var names: [String] = []
    try At.readDirectory(consuming: fd, failure: { SystemError($0, path, errno: $1) }) { (name, _) throws(SystemError) in
      names.append(String(cString: name))
    }
    return names
  }

  /// `mount(2)`.
  public static func mount(source: String, target: String, type: String, flags: UInt, data: String?) throws(SystemError) {
    _ = try SystemError.check("mount", target) {
      if let data {
        return data.withCString { Glibc.mount(source, target, type, flags, $0) }
      }
      return Glibc.mount(source, target, type, flags, nil)
    }
  }

  /// Mounts the file system in the image file `image` (ext4) at `target` through a loop
  /// device of its own, which detaches itself when the mount goes (LO_FLAGS_AUTOCLEAR).
  public static func mountImage(_ image: String, at target: String, type: String, data: String? = nil) throws(SystemError) {
    let fd = try SystemError.check("open", image) { shim_open(image, O_RDWR | O_CLOEXEC, 0) }
    defer { Glibc.close(fd) }
    var index: Int32 = 0
    let device = shim_loop_attach(fd, &index)
    guard device >= 0 else { throw SystemError("loop attach", image, errno: -device) }
    defer { Glibc.close(device) }  // the mount holds the device from here on
    try mount(source: "/dev/loop\(index)", target: target, type: type, flags: 0, data: data)
  }

  /// `statvfs(3)`: (bytes in use, inodes in use, bytes free for unprivileged users) of the
  /// file system holding `path`.
  public static func fileSystemUse(_ path: String) throws(SystemError) -> (bytes: Int64, inodes: Int64, available: Int64) {
    var st = statvfs()
    _ = try SystemError.check("statvfs", path) { statvfs(path, &st) }
    // Clamped: some file systems (FUSE, NFS) report counters past Int64.
    let block = Int64(clamping: st.f_frsize)
    func n(_ v: UInt) -> Int64 { Int64(clamping: v) }
    return (
      (n(st.f_blocks) &- n(st.f_bfree)).multipliedReportingOverflow(by: block).partialValue,
      n(st.f_files) &- n(st.f_ffree), n(st.f_bavail).multipliedReportingOverflow(by: block).partialValue
    )
  }

  /// `umount2(2)`.
  public static func unmount(_ target: String, flags: Int32 = 0) throws(SystemError) {
    _ = try SystemError.check("umount2", target) { Glibc.umount2(target, flags) }
  }
}

extension Sys {
  /// Whether a live process accepts connections on the unix socket at `path`.
  public static func unixSocketIsLive(_ path: String) -> Bool {
    guard let fd = try? Socket.connect(unixPath: path) else { return false }
    Socket.close(fd)
    return true
  }

  /// `geteuid(2)`.
  public static var effectiveUserID: UInt32 { geteuid() }

  /// `umask(2)`: sets the mask and returns the previous one.
  @discardableResult
  public static func setUmask(_ mask: mode_t) -> mode_t { umask(mask) }

  /// `getgrnam_r(3)`, or a numeric gid.
  public static func groupID(_ name: String) -> gid_t? {
    if let n = UInt32(name) { return n }
    var grp = group()
    var result: UnsafeMutablePointer<group>?
    var buf = [CChar](repeating: 0, count: 16384)
    guard getgrnam_r(name, &grp, &buf, buf.count, &result) == 0, result != nil else { return nil }
    return grp.gr_gid
  }
}

extension Sys {
  /// Runs the program at `path` with `arguments`, standard streams inherited, and waits
  /// for it: its exit status (128 + the signal if a signal ended it).
  public static func run(_ path: String, _ arguments: [String]) throws(SystemError) -> Int32 {
    var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, nil, nil, &argv, environ)
    guard rc == 0 else { throw SystemError("posix_spawn", path, errno: rc) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
      guard errno == EINTR else { throw SystemError("waitpid", path, errno: errno) }
    }
    // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
  }

  /// The program `name`: beside the running executable if it is there (snapctl finds the
  /// snapfs it was built with), else the first on PATH.
  public static func findProgram(_ name: String) -> String? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    if n > 0 {
      let exe = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
      let candidate = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/" + name
      if access(candidate, X_OK) == 0 { return candidate }
    }
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 {
      return "\(dir)/\(name)"
    }
    return nil
  }

  /// `malloc_trim(3)`: gives the memory free in malloc's arenas back to the kernel. glibc
  /// keeps what a thread frees in that thread's arena and returns it only from an arena's top.
  public static func returnFreedMemory() { _ = shim_malloc_trim() }

  /// `mmap(2)` of `size` bytes of private anonymous memory (rounded up to pages), or nil.
  public static func mapMemory(_ size: Int) -> (base: UnsafeMutableRawPointer, size: Int)? {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let rounded = (max(size, 1) + page - 1) / page * page
    guard let p = mmap(nil, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      p != UnsafeMutableRawPointer(bitPattern: -1)
    else { return nil }
    return (p, rounded)
  }

  /// `mmap(2)` of the first `size` bytes of the file `fd`, shared: what is written there is
  /// the file's, and other processes mapping it see it.
  public static func mapShared(_ fd: Int32, _ size: Int, writable: Bool) throws(SystemError) -> UnsafeMutableRawPointer {
    guard let p = mmap(nil, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0),
      p != UnsafeMutableRawPointer(bitPattern: -1)
    else { throw SystemError("mmap", "", errno: errno) }
    return p
  }

  /// `munmap(2)` of what `mapMemory` mapped.
  public static func unmapMemory(_ base: UnsafeMutableRawPointer, _ size: Int) { munmap(base, size) }

  /// `readlink(2)`: the target of the symlink `path`, or nil when it is not one (or missing).
  public static func readLink(_ path: String) -> String? {
    readLinkBytes(path).map { String(decoding: $0, as: UTF8.self) }
  }

  /// `readlink(2)`: the target's bytes as they are (nil: not a symlink, or an error in errno).
  public static func readLinkBytes(_ path: String) -> [UInt8]? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink(path, &buffer, buffer.count - 1)
    guard n >= 0 else { return nil }
    return buffer[0..<n].map { UInt8(bitPattern: $0) }
  }
}

extension Sys {
  /// The flag of a per-mount option (`ro`, `nosuid`, `noatime`, ...), nil for any other.
  public static func mountFlag(named name: String) -> UInt? { perMountFlags.first { $0.name == name }?.flag }

  /// The per-mount flags `mount(2)` takes, by their names in mountinfo.
  private static let perMountFlags: [(name: String, flag: UInt)] = [
    ("ro", UInt(MS_RDONLY)), ("nosuid", UInt(MS_NOSUID)), ("nodev", UInt(MS_NODEV)), ("noexec", UInt(MS_NOEXEC)),
    ("noatime", UInt(MS_NOATIME)), ("nodiratime", UInt(MS_NODIRATIME)), ("relatime", UInt(MS_RELATIME)),
    ("nosymfollow", 256),  // MS_NOSYMFOLLOW, Linux 5.10
  ]

  /// `realpath(3)`: the absolute path without symlinks, `.` or `..`.
  public static func realPath(_ path: String) throws(SystemError) -> String {
    guard let resolved = realpath(path, nil) else { throw SystemError("realpath", path, errno: errno) }
    defer { free(resolved) }
    return String(cString: resolved)
  }

  /// Gives the topmost mount on `path` (absolute and resolved, as mountinfo names it) the
  /// `nosuid` and `nodev` flags asked, keeping its other per-mount flags: a bind remount,
  /// which leaves the file system itself alone. Nothing here looks at the mount's own files,
  /// so a FUSE daemon may call it before it serves (resolve the path before mounting: a
  /// lookup in the new mount would wait for the daemon). Nothing is done when the flags are
  /// already so.
  public static func setMountFlags(_ path: String, nosuid: Bool, nodev: Bool) throws(SystemError) {
    guard let mount = try MountInfo.current().last(where: { $0.mountPoint == path }) else {
      throw SystemError("mountinfo", path, errno: EINVAL)
    }
    var flags: UInt = 0
    for (name, flag) in perMountFlags where mount.options.contains(name) { flags |= flag }
    var wanted = flags & ~UInt(MS_NOSUID | MS_NODEV)
    if nosuid { wanted |= UInt(MS_NOSUID) }
    if nodev { wanted |= UInt(MS_NODEV) }
    guard wanted != flags else { return }
    try Sys.mount(source: "none", target: path, type: "", flags: UInt(MS_REMOUNT | MS_BIND) | wanted, data: nil)
  }
}
