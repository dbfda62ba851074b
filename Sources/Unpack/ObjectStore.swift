import SnapshotSys
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// The metadata a tar entry gives a file: what `stat` and `getfattr` show inside a
/// container except link count, inode and ctime. It lives on the file's stub in its layer,
/// never on the object holding the file's data.
public struct FileMeta: Sendable {
  public var mode: UInt32  // permission bits with setuid/setgid/sticky
  public var uid: UInt32
  public var gid: UInt32
  public var mtime: timespec
  public var atime: timespec
  public var xattrs: [(name: String, value: [UInt8])]  // sorted by name

  public init(mode: UInt32, uid: UInt32, gid: UInt32, mtime: timespec, atime: timespec, xattrs: [(name: String, value: [UInt8])]) {
    self.mode = mode
    self.uid = uid
    self.gid = gid
    self.mtime = mtime
    self.atime = atime
    self.xattrs = xattrs
  }
}

/// What the store knows of one object: its size and the SHA-256 of its content (hex).
public struct ObjectInfo: Sendable, Equatable {
  public var size: Int64
  public var sha256: String

  public init(size: Int64, sha256: String) {
    self.size = size
    self.sha256 = sha256
  }
}

/// File data, each distinct content once: `o/<2 hex>/<14 hex>`, the name being the first
/// 8 bytes of the content's SHA-256 (`.N` added in the unlikely case that another content
/// has the same first 8 bytes). The whole digest is the object's `trusted.snapshotd.sha256`
/// xattr and is checked before an object is reused, so a short name never mixes contents.
///
/// Layers do not link objects. Each regular file of a layer is a *stub*: its own inode with
/// the file's metadata and size but no data blocks, and the xattrs
/// `trusted.overlay.metacopy` (empty) and `trusted.overlay.redirect` = `/<2 hex>/<rest>`.
/// Mounted with the object directory as a data-only lower layer (`lowerdir=L2:L1::o`),
/// overlayfs shows the stub's metadata with the object's bytes. Names are short on purpose:
/// both xattrs then fit inside a 256-byte ext4 inode, and a cold open reads no extra block.
/// Empty files need no object: they stay plain files.
///
/// Objects are never written after they are made. They appear whole: written into an
/// unnamed O_TMPFILE, then linked under their name. Reference counts live in the metadata
/// database (SnapshotCore); an object it does not know is a leftover of an import that did
/// not commit. Imports hold the gate shared while they make stubs; garbage collection holds
/// it exclusive, so it never removes an object an import is about to count.
public final class ObjectStore: @unchecked Sendable {
  public let path: String
  private let root: Int32
  /// The store's directory once more, for `startSync` alone: since Linux 5.8 a `syncfs`
  /// reports a writeback error once per open file, so a background sync on `root` would
  /// take the error the `sync` that ends an import must report.
  private let backgroundRoot: Int32
  private let syncing = Atomic<Bool>(false)
  private let dirs: [Int32]
  private let gate = ReadWriteLock()

  /// overlayfs's xattrs that make a stub (the only `trusted.overlay.*` names the store writes).
  public static let metacopyXattr = OverlayXattr.trusted.metacopy
  public static let redirectXattr = OverlayXattr.trusted.redirect
  /// The object's whole content digest (32 bytes).
  static let digestXattr = "trusted.snapshotd.sha256"
  /// Different contents tried under one short name before giving up (8-byte prefixes
  /// shared by two contents are already rare beyond practical stores).
  static let maxAttempts = 16

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
    root = try At.openDirectory(path)
    do {
      backgroundRoot = try At.openDirectory(path)
    } catch {
      for fd in fds { At.close(fd) }
      At.close(root)
      throw error
    }
  }

  /// Makes every object written so far durable: one `syncfs(2)` of the store's file system
  /// per layer (an fsync per object would cost one disk flush each). Each object's writeback
  /// was started when it was made (`At.startWriteback`), so little is left to wait for.
  public func sync() throws(SystemError) {
    try At.syncfs(root, path)
  }

  /// Starts a `syncfs(2)` of the store's file system on a thread of its own, unless one is
  /// running, and returns: called as a large import writes, it spreads the journal commits
  /// (and the data written with them) over the import, so the `sync` that ends a layer
  /// commits the last part only, not the layer's every inode and block at once. Best effort:
  /// durability is still `sync`'s. (The thread only waits, so it may inherit a lowered priority.)
  public func startSync() {
    guard syncing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
    do {
      try Threads.spawn { [self] in
        try? At.syncfs(backgroundRoot, path)  // (its errors stay for `sync` to report)
        syncing.store(false, ordering: .releasing)
      }
    } catch {
      syncing.store(false, ordering: .releasing)
    }
  }

  deinit {
    for fd in dirs { At.close(fd) }
    At.close(root)
    At.close(backgroundRoot)
  }

  // MARK: - Names

  /// The name tried for content with digest `sha` on attempt `attempt`.
  static func candidate(_ sha: [UInt8], attempt: Int) -> String {
    let short = Digest.hexString(sha.prefix(8))
    return attempt == 0 ? short : short + "." + String(attempt)
  }

  /// Whether `key` has the form of an object name (16 hex digits, maybe `.N`).
  public static func isKey(_ key: Substring) -> Bool {
    let parts = key.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
    guard parts[0].utf8.count == 16, parts[0].utf8.allSatisfy(Self.isHex) else { return false }
    return parts.count == 1 || (!parts[1].isEmpty && parts[1].utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 })
  }

  /// Whether `key` names an object of a store made before stubs (64 hex digits, hard-linked
  /// into layers).
  public static func isLegacyKey(_ key: String) -> Bool {
    key.utf8.count == 64 && key.utf8.allSatisfy(Self.isHex)
  }

  private static func isHex(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) }

  private func place(_ key: String) -> (Int32, String) {
    let u = Array(key.utf8)
    func nibble(_ c: UInt8) -> Int { c <= 0x39 ? Int(c - 0x30) : Int(c - 0x61 + 10) }
    return (dirs[nibble(u[0]) << 4 | nibble(u[1])], String(key.dropFirst(2)))
  }

  /// The object's path (for messages, checks and tests).
  public func path(of key: String) -> String { path + "/" + key.prefix(2) + "/" + key.dropFirst(2) }

  /// The redirect a stub of `key` carries: the object's path inside the object directory.
  public static func redirect(of key: String) -> String { "/" + key.prefix(2) + "/" + key.dropFirst(2) }

  /// The key a stub's redirect names, if it names an object.
  public static func key(redirect: String) -> String? {
    let parts = redirect.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    guard parts.count == 3, parts[0].isEmpty, parts[1].count == 2 else { return nil }
    let key = Substring(parts[1]) + Substring(parts[2])
    return isKey(key) ? String(key) : nil
  }

  // MARK: - Objects

  /// The object holding content with digest `sha`, if the store has it.
  public func find(_ sha: [UInt8]) throws(SystemError) -> String? {
    for attempt in 0..<Self.maxAttempts {
      let key = Self.candidate(sha, attempt: attempt)
      guard let value = try At.getXattr(path: path(of: key), name: Self.digestXattr, maxSize: 64) else { return nil }
      if value == sha { return key }
    }
    return nil
  }

  /// Makes the object for content with digest `sha` by writing it under its name with
  /// `write`, unless the store has it: returns its key and whether it is new. The digest xattr
  /// is set once the content is written, so a concurrent import finds the object only
  /// whole (a half-written one under the same name makes it use the next name instead); a
  /// failed write removes the file, and one a crash cuts short is known to no row and
  /// removed at the next start. Cheaper than `makeTemporary` for small files: ext4 puts an
  /// O_TMPFILE on its orphan list and takes it off again, under a lock of the whole file system.
  public func make(_ sha: [UInt8], _ write: (Int32) throws(SystemError) -> Void) throws(SystemError) -> (key: String, new: Bool) {
    try create(sha, mode: 0o444) { (fd, _, n, _) throws(SystemError) in
      try write(fd)
      try At.setXattr(fd, n, name: Self.digestXattr, value: sha)
    }
  }

  /// Creates the object file for content `sha` under the first free name that is not
  /// another content's (O_EXCL) and runs `fill` on it (descriptor, directory, name, key);
  /// a failure removes the file. Stops at a name holding the same content: `new` false.
  private func create(
    _ sha: [UInt8], mode: mode_t, _ fill: (Int32, Int32, String, String) throws(SystemError) -> Void
  ) throws(SystemError) -> (key: String, new: Bool) {
    try name(sha) { (d, n, key) throws(SystemError) in
      let fd = try At.open(d, n, flags: O_WRONLY | O_CREAT | O_EXCL, mode: mode)  // EEXIST: the name is taken
      do throws(SystemError) {
        defer { At.close(fd) }
        try fill(fd, d, n, key)
      } catch {
        try? At.unlink(d, n)
        throw error
      }
    }
  }

  /// An unnamed file to write an object's content into (then `adopt(temporary:sha:)`).
  public func makeTemporary() throws(SystemError) -> Int32 {
    try At.openTemporary(root, path, mode: 0o444)
  }

  /// Makes the content written to `fd` (from `makeTemporary`), whose SHA-256 is `sha`, an
  /// object, unless another import made it meanwhile. Returns its key and whether it is new.
  public func adopt(temporary fd: Int32, sha: [UInt8]) throws(SystemError) -> (key: String, new: Bool) {
    try At.setXattr(fd, "object", name: Self.digestXattr, value: sha)
    At.startWriteback(fd)
    return try name(sha) { (dir, name, _) throws(SystemError) in try At.linkTemporary(fd, dir, name) }
  }

  /// Gives the inode open at `fd` (a file whose own names are about to go with their
  /// directory) the object name for content `sha`, without a copy, unless the store has that
  /// content (then `new` is false and the file is left as it was). Undone by `disown`.
  public func adopt(inode fd: Int32, _ what: String, sha: [UInt8]) throws(SystemError) -> (key: String, new: Bool) {
    try At.setXattr(fd, what, name: Self.digestXattr, value: sha)
    let made = try name(sha) { (dir, name, _) throws(SystemError) in try At.linkTemporary(fd, dir, name) }
    if !made.new { try At.removeXattr(fd, what, name: Self.digestXattr) }
    return made
  }

  /// Undoes `adopt(inode:)`: the object's name goes, and the file (at `path`) loses the
  /// digest xattr.
  public func disown(_ key: String, path filePath: String) {
    try? remove(key)
    if let fd = try? At.openFile(filePath) {
      try? At.removeXattr(fd, filePath, name: Self.digestXattr)
      At.close(fd)
    }
  }

  /// Makes the finished file `name` in `dir` (open as `fd`, with content digest `sha`) an
  /// object without copying it and without giving it a second name, which a container with
  /// the tree mounted would see as a link count of 2 (and a crash could leave for good):
  /// `stub` makes, in the empty file it is given, a stub of the new key; one exchange then
  /// puts the stub under `name` and the file under the object's name. When the store holds
  /// that content already, returns its key with `new` false and leaves the file alone.
  public func adopt(
    file fd: Int32, _ dir: Int32, _ name: String, sha: [UInt8],
    stub: (_ fd: Int32, _ what: String, _ key: String) throws(SystemError) -> Void
  ) throws(SystemError) -> (key: String, new: Bool) {
    let made = try create(sha, mode: 0o600) { (made, d, n, key) throws(SystemError) in
      try stub(made, n, key)
      try At.exchange(dir, name, d, n)
    }
    // After the exchange: a crash before this leaves an object without its digest, which
    // `info(recovering:)` restores from the stub that names it.
    if made.new { try At.setXattr(fd, name, name: Self.digestXattr, value: sha) }
    return made
  }

  /// Size and digest of the object a stub names. An object an interrupted `adopt(file:)`
  /// left without its digest xattr gets it back (its content is the file's, by
  /// construction); nil when the object is missing.
  public func info(recovering key: String, _ buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> ObjectInfo? {
    if let found = try info(key) { return found }
    let (d, n) = place(key)
    guard try At.lstat(d, n) != nil else { return nil }
    let fd = try At.open(d, n, flags: O_RDONLY | At.noAtime)
    defer { At.close(fd) }
    guard try At.getXattr(fd, n, name: Self.digestXattr) == nil else { return nil }
    try At.setXattr(fd, n, name: Self.digestXattr, value: try Self.hash(fd, n, buffer))
    return try info(key)
  }

  /// Runs `claim` (directory, name, key) under the first free name for `sha` that is not
  /// another content's, moving on while it fails with EEXIST; stops at a name holding the
  /// same content (`new` false).
  private func name(
    _ sha: [UInt8], _ claim: (Int32, String, String) throws(SystemError) -> Void
  ) throws(SystemError) -> (key: String, new: Bool) {
    for attempt in 0..<Self.maxAttempts {
      let key = Self.candidate(sha, attempt: attempt)
      let (d, n) = place(key)
      do throws(SystemError) {
        try claim(d, n, key)
        return (key, true)
      } catch  where error.errno == EEXIST {}
      if try At.getXattr(path: path(of: key), name: Self.digestXattr, maxSize: 64) == sha { return (key, false) }
    }
    throw SystemError(
      "openat", "object \(Self.candidate(sha, attempt: 0)): \(Self.maxAttempts) other contents share its name", errno: EEXIST)
  }

  /// Makes the empty regular file `fd` a stub of `key` with `size` bytes (the caller sets
  /// owner, mode, times and the file's own xattrs).
  public func makeStub(_ fd: Int32, _ what: String, key: String, size: Int64) throws(SystemError) {
    try At.truncate(fd, what, size: size)
    try At.setXattr(fd, what, name: Self.metacopyXattr, value: [])
    try At.setXattr(fd, what, name: Self.redirectXattr, value: Array(Self.redirect(of: key).utf8))
  }

  /// The object a file open at `fd` is a stub of; nil when it is not a stub.
  public static func stubKey(_ fd: Int32, _ what: String) throws(SystemError) -> String? {
    guard try At.getXattr(fd, what, name: metacopyXattr) != nil, let value = try At.getXattr(fd, what, name: redirectXattr) else {
      return nil
    }
    return key(redirect: String(decoding: value, as: UTF8.self))
  }

  /// The object's size, or nil when it is missing.
  public func size(of key: String) throws(SystemError) -> Int64? {
    let (d, n) = place(key)
    return try At.lstat(d, n).map { Int64($0.st_size) }
  }

  /// SHA-256 (hex) of the object's content as read now (nil when it is missing): what
  /// `check` compares with the digest recorded for it.
  public func hashContent(_ key: String) throws(SystemError) -> String? {
    let (d, n) = place(key)
    let fd: Int32
    do { fd = try At.open(d, n, flags: O_RDONLY | At.noAtime) } catch  where error.errno == ENOENT { return nil }
    defer { At.close(fd) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { buffer.deallocate() }
    var hash = Hasher()
    while true {
      let got = try At.read(fd, n, into: buffer)
      if got == 0 { return Digest.hexString(hash.finalizeBytes()) }
      hash.update(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
    }
  }

  /// Unlinks the object `key` from the store.
  public func remove(_ key: String) throws(SystemError) {
    let (d, n) = place(key)
    do { try At.unlink(d, n) } catch  where error.errno == ENOENT {}
  }

  /// Removes the objects `keys` (missing ones are skipped), in name order, the store's two
  /// halves of directories on two threads at once: the unlinks are the kernel's CPU work,
  /// and one after another leave a core idle (`find -delete` of the benchmark image's 10,978
  /// objects: 248 ms on one thread, 130 ms on two; docs/benchmarks.md has the commands).
  public func remove(_ keys: [String]) throws(SystemError) {
    let sorted = keys.sorted()
    let split = sorted.firstIndex { $0.utf8.first! >= UInt8(ascii: "8") } ?? sorted.endIndex
    let upper = Array(sorted[split...])
    let other: Promise<Result<Void, SystemError>>? =
      upper.isEmpty || split == 0 ? nil : try? Threads.run { [self] in Result { () throws(SystemError) in try removeEach(upper) } }
    let mine = Result { () throws(SystemError) in try removeEach(other == nil ? sorted : Array(sorted[..<split])) }
    try other?.wait().get()
    try mine.get()
  }

  private func removeEach(_ keys: [String]) throws(SystemError) {
    for key in keys { try remove(key) }
  }

  /// Every name in the store (objects, and objects of a store made before stubs).
  public func list() throws(SystemError) -> [String] {
    var out: [String] = []
    for i in 0..<256 {
      let prefix = Digest.hexString([UInt8(i)])
      for name in try Sys.listDirectory(path + "/" + prefix) { out.append(prefix + name) }
    }
    return out
  }

  /// Runs `body` while no garbage collection runs.
  public func shared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    try gate.read(body)
  }

  /// Runs `body` while no import makes stubs.
  public func exclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    try gate.write(body)
  }
}
