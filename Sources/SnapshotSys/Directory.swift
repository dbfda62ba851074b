import CSysShims

#if canImport(Glibc)
  import Glibc
#endif

/// One entry of a directory, as `readdir(3)` gives it.
public struct DirectoryEntry: Sendable {
  public let name: String
  public let ino: UInt64
  /// `d_type` (`DT_DIR`, `DT_REG`, ..., `DT_UNKNOWN` where the file system does not say).
  public let type: UInt8
}

extension At {
  /// `fdopendir(3)`/`readdir(3)` over the directory open at `fd`, which this call takes over
  /// (and closes): `body` gets each entry but "." and "..", with its name. A failure of
  /// either call is thrown as `failure(call, errno)`.
  public static func readDirectory<E: Error>(
    consuming fd: Int32,
    failure: (_ call: String, _ errno: Int32) -> E,
    _ body: (_ name: UnsafePointer<CChar>, _ entry: UnsafePointer<dirent>) throws(E) -> Void
  ) throws(E) {
    guard let dir = fdopendir(fd) else {
      let e = errno
      Glibc.close(fd)
      throw failure("fdopendir", e)
    }
    defer { closedir(dir) }
    while true {
      errno = 0
      guard let entry = readdir(dir) else {
        if errno != 0 { throw failure("readdir", errno) }
        return
      }
      try withUnsafePointer(to: entry.pointee.d_name) { (p) throws(E) in
        try p.withMemoryRebound(to: CChar.self, capacity: 256) { (name) throws(E) in
          if !isDot(name) { try body(name, entry) }
        }
      }
    }
  }

  /// The entries of the directory `dirfd` but "." and "..", read through a descriptor of
  /// their own (`openat(dirfd, ".")`): listings of one directory in several threads do not
  /// share a file offset.
  public static func entries(_ dirfd: Int32) throws(Errno) -> [DirectoryEntry] {
    let fd = try Sys.call(shim_openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0))
    var out: [DirectoryEntry] = []
    try readDirectory(consuming: fd, failure: { Errno($1) }) { (name, entry) throws(Errno) in
      out.append(DirectoryEntry(name: String(cString: name), ino: UInt64(entry.pointee.d_ino), type: entry.pointee.d_type))
    }
    return out
  }

  @inline(__always)
  static func isDot(_ name: UnsafePointer<CChar>) -> Bool {
    name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0))
  }

  // MARK: - Extended attribute lists

  /// The names `list` (a `listxattr(2)` form, given a buffer and its size) answers, each
  /// name's bytes; ERANGE (the list grew between the two calls) is tried again.
  @inline(__always)
  public static func xattrNames(_ list: (UnsafeMutablePointer<CChar>?, Int) -> Int) throws(Errno) -> [[UInt8]] {
    while true {
      let size = try Sys.call(list(nil, 0))
      if size == 0 { return [] }
      var buffer = [CChar](repeating: 0, count: size)
      let n = list(&buffer, size)
      if n < 0 && errno == ERANGE { continue }
      _ = try Sys.call(n)
      return buffer[..<n].split(separator: 0).map { $0.map { UInt8(bitPattern: $0) } }
    }
  }

  /// `flistxattr(2)`: the names of the open file's extended attributes, as bytes.
  public static func xattrNames(_ fd: Int32) throws(Errno) -> [[UInt8]] {
    try xattrNames { flistxattr(fd, $0, $1) }
  }

  /// `fgetxattr(2)`: the whole value of `name` (ERANGE, a value that grew, tried again).
  public static func xattrValue(_ fd: Int32, _ name: String) throws(Errno) -> [UInt8] {
    while true {
      let size = try Sys.call(fgetxattr(fd, name, nil, 0))
      var value = [UInt8](repeating: 0, count: size)
      let n = fgetxattr(fd, name, &value, size)
      if n < 0 && errno == ERANGE { continue }
      _ = try Sys.call(n)
      return Array(value[..<n])
    }
  }
}
