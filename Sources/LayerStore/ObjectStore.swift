import SnapshotSys

#if canImport(Glibc)
import Glibc
#endif

/// What makes two regular files the same object besides their bytes: everything `stat`
/// and `getfattr` show inside a container except link count, inode and ctime.
public struct FileMeta: Sendable, Equatable {
  public var mode: UInt32  // permission bits with setuid/setgid/sticky
  public var uid: UInt32
  public var gid: UInt32
  public var mtime: timespec
  public var atime: timespec
  public var xattrs: [(name: String, value: [UInt8])]  // sorted by name

  public static func == (a: FileMeta, b: FileMeta) -> Bool {
    a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.mtime.tv_sec == b.mtime.tv_sec
      && a.mtime.tv_nsec == b.mtime.tv_nsec && a.xattrs.elementsEqual(b.xattrs, by: { $0.name == $1.name && $0.value == $1.value })
  }
}

/// Content-addressed regular files, hard-linked into layer directories:
/// `o/<2 hex>/<62 hex>`, the name being SHA-256 over the file's content digest and its
/// `FileMeta`. An object's inode carries that metadata, so every link to it shows exactly
/// what its tar entry said. Objects are never written after they are made.
///
/// Reference counts live in the metadata database (SnapshotCore); this type only puts
/// files in and takes them out. Imports hold the gate shared while they link objects;
/// garbage collection holds it exclusive, so it never removes an object an import is
/// about to count.
public final class ObjectStore: @unchecked Sendable {
  public let path: String
  private let dirs: [Int32]
  private let gate = ReadWriteLock()

  /// Opens (creating) the store at `path` with its 256 fan-out directories.
  public init(path: String) throws(SystemError) {
    self.path = path
    try Sys.mkdirIfMissing(path, mode: 0o700)
    var fds: [Int32] = []
    for i in 0..<256 {
      let sub = path + "/" + Digest.hexString([UInt8(i)])
      try Sys.mkdirIfMissing(sub, mode: 0o700)
      fds.append(try At.openDirectory(sub))
    }
    dirs = fds
  }

  deinit { for fd in dirs { At.close(fd) } }

  /// The key of a file with content digest `content` (32 bytes) and metadata `meta`.
  public static func key(content: [UInt8], meta: FileMeta) -> String {
    var h = Hasher()
    var bytes: [UInt8] = Array("snapshotd object v1\0".utf8) + content
    func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    put(meta.mode)
    put(meta.uid)
    put(meta.gid)
    put(Int64(meta.mtime.tv_sec))
    put(Int64(meta.mtime.tv_nsec))
    put(UInt32(meta.xattrs.count))
    for x in meta.xattrs {
      bytes += Array(x.name.utf8)
      bytes.append(0)
      put(UInt32(x.value.count))
      bytes += x.value
    }
    bytes.withUnsafeBytes { h.update($0) }
    return h.finalize().hex
  }

  private func place(_ key: String) -> (Int32, String) {
    let u = Array(key.utf8)
    func nibble(_ c: UInt8) -> Int { c <= 0x39 ? Int(c - 0x30) : Int(c - 0x61 + 10) }
    return (dirs[nibble(u[0]) << 4 | nibble(u[1])], String(key.dropFirst(2)))
  }

  /// The object's path (for messages and tests).
  public func path(of key: String) -> String { path + "/" + key.prefix(2) + "/" + key.dropFirst(2) }

  /// Links the object `key` as `name` in the directory `dir`. False when there is no such
  /// object (or it has as many links as the file system allows).
  public func link(_ key: String, to dir: Int32, _ name: String) throws(SystemError) -> Bool {
    let (d, n) = place(key)
    do {
      try At.link(d, n, dir, name)
      return true
    } catch where error.errno == ENOENT || error.errno == EMLINK {
      return false
    }
  }

  /// Makes the finished file `name` in `dir` the object `key`. If another import made the
  /// same object meanwhile, `name` is replaced by a link to that one. Returns true when
  /// the object is new.
  public func insert(_ key: String, from dir: Int32, _ name: String) throws(SystemError) -> Bool {
    let (d, n) = place(key)
    do {
      try At.link(dir, name, d, n)
      return true
    } catch where error.errno == EEXIST {}
    try At.unlink(dir, name)
    if try link(key, to: dir, name) { return false }
    throw SystemError("linkat", "object \(key) -> \(name)", errno: ENOENT)
  }

  /// What `absorb` did to a tree.
  public struct Absorbed: Sendable {
    /// The objects the tree links now, with their sizes.
    public var objects: [String: Int64] = [:]
    /// Bytes of the tree's regular files, hard links counted once (as a layer's `fileBytes`).
    public var fileBytes: Int64 = 0
    /// Bytes of objects this call made (the rest were shared with what the store held).
    public var newBytes: Int64 = 0
    /// Files left as they are: they carry overlayfs xattrs, or their object has as many
    /// links as the file system allows.
    public var skipped = 0
  }

  /// Makes every regular file under `path` a link to its object, as an import would have
  /// made it: files whose object exists are replaced by a link to it (through a link made
  /// in `scratch`, a directory on the same file system, renamed over the file), others
  /// become the object themselves. What `stat` shows of each file stays the same except
  /// link count, inode and ctime; directories keep their times. Files with `trusted.overlay.*`
  /// xattrs (copy-up or metacopy state of an old upper dir) are left alone.
  ///
  /// The tree must not change meanwhile (a committed snapshot). Run inside `shared`.
  public func absorb(tree path: String, scratch: String) throws(SystemError) -> Absorbed {
    var out = Absorbed()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { buffer.deallocate() }
    let scratchFD = try At.openDirectory(scratch)
    defer { At.close(scratchFD) }
    // Inode (as the walk found it) → its object, or nil when the file is left alone. Other
    // names of a file need no second hash, and its bytes count once, as in a tar.
    var done: [UInt64: String?] = [:]
    try Tree.walk(path, visit: { (dir, cName, st) throws(SystemError) in
      guard st.st_mode & S_IFMT == S_IFREG else { return }
      let ino = UInt64(st.st_ino)
      let name = String(cString: cName)
      let key: String
      if let seen = done[ino] {
        guard let k = seen else { return }
        key = k  // still linked to the old inode when that was replaced by an existing object
      } else {
        done[ino] = .some(nil)
        out.fileBytes += Int64(st.st_size)
        guard let k = try Self.identify(dir, name, st, buffer) else {
          out.skipped += 1
          return
        }
        key = k
      }
      let (d, n) = place(key)
      var object = try At.lstat(d, n)
      if object == nil {
        do throws(SystemError) {
          try At.link(dir, name, d, n)
          out.newBytes += Int64(st.st_size)
        } catch where error.errno == EEXIST {
          object = try At.lstat(d, n)  // an import made it meanwhile: link to that one
        } catch where error.errno == EMLINK {
          out.skipped += 1
          return
        }
      }
      if let object, object.st_ino != st.st_ino || object.st_dev != st.st_dev {
        let temp = "absorb-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        do throws(SystemError) {
          try At.link(d, n, scratchFD, temp)
        } catch where error.errno == EMLINK {
          out.skipped += 1
          return
        }
        do throws(SystemError) {
          try At.rename(scratchFD, temp, dir, name)
        } catch {
          try? At.unlink(scratchFD, temp)
          throw error
        }
      }
      done[ino] = key
      out.objects[key] = Int64(st.st_size)
    }, leave: { (dir, before) throws(SystemError) in
      // Replacing names (and reading) changed the directory's times; they are part of the layer.
      let now = try At.fstat(dir, path)
      if now.st_mtim.tv_sec != before.st_mtim.tv_sec || now.st_mtim.tv_nsec != before.st_mtim.tv_nsec
        || now.st_atim.tv_sec != before.st_atim.tv_sec || now.st_atim.tv_nsec != before.st_atim.tv_nsec {
        try At.futimes(dir, path, atime: before.st_atim, mtime: before.st_mtim)
      }
    })
    return out
  }

  /// The object key of the regular file `name` in `dir` (with `st` from the walk), or nil
  /// when it carries overlayfs xattrs.
  private static func identify(_ dir: Int32, _ name: String, _ st: stat, _ buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> String? {
    let fd = try At.open(dir, name, flags: O_RDONLY | At.noAtime)
    defer { At.close(fd) }
    let xattrs = try At.xattrs(fd, name)
    if xattrs.contains(where: { $0.0.hasPrefix("trusted.overlay.") }) { return nil }
    var hash = Hasher()
    while true {
      let n = try At.read(fd, name, into: buffer)
      if n == 0 { break }
      hash.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    }
    let meta = FileMeta(mode: UInt32(st.st_mode) & 0o7777, uid: st.st_uid, gid: st.st_gid, mtime: st.st_mtim, atime: st.st_atim,
                        xattrs: xattrs.map { (name: $0.0, value: $0.1) })
    return key(content: hash.finalizeBytes(), meta: meta)
  }

  /// Unlinks the object `key` from the store (links in layers stay valid).
  public func remove(_ key: String) throws(SystemError) {
    let (d, n) = place(key)
    do { try At.unlink(d, n) } catch where error.errno == ENOENT {}
  }

  /// Keys of objects no layer links to (link count 1), whatever the database says: what
  /// a crash between linking and committing left behind.
  public func unlinked() throws(SystemError) -> [String] {
    var out: [String] = []
    for (i, fd) in dirs.enumerated() {
      let prefix = Digest.hexString([UInt8(i)])
      for name in try Sys.listDirectory(path + "/" + prefix) {
        if let st = try At.lstat(fd, name), st.st_nlink == 1 { out.append(prefix + name) }
      }
    }
    return out
  }

  /// Runs `body` while no garbage collection runs.
  public func shared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    gate.lockShared()
    defer { gate.unlock() }
    return try body()
  }

  /// Runs `body` while no import links objects.
  public func exclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    gate.lockExclusive()
    defer { gate.unlock() }
    return try body()
  }
}

/// A `pthread_rwlock_t` on the heap.
final class ReadWriteLock: @unchecked Sendable {
  private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
  init() { pthread_rwlock_init(lock, nil) }
  deinit {
    pthread_rwlock_destroy(lock)
    lock.deallocate()
  }
  func lockShared() { pthread_rwlock_rdlock(lock) }
  func lockExclusive() { pthread_rwlock_wrlock(lock) }
  func unlock() { pthread_rwlock_unlock(lock) }
}
