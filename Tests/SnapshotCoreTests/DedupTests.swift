import SnapshotSys
import Testing
import Unpack

@testable import SnapshotCore

#if canImport(Glibc)
  import Glibc
#endif

/// Deduplication of snapshots committed through Prepare/Commit (containerd's own unpacking
/// path), done in Commit: files become stubs of content objects, shared with other
/// snapshots, and what `stat` shows stays as written, inode identity included.
@Suite(.enabled(if: getuid() == 0, "needs root: trusted.* xattrs, owners, /run/sd, mounts"))
struct DedupTests {
  /// Writes a file with `content`, `mode` and mtime `mtime` seconds (atime one more).
  func write(_ path: String, _ content: String, mode: mode_t = 0o644, mtime: Int) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    #expect(fd >= 0)
    _ = content.withCString { Glibc.write(fd, $0, strlen($0)) }
    #expect(fchmod(fd, mode) == 0)
    var times = [timespec(tv_sec: mtime + 1, tv_nsec: 7), timespec(tv_sec: mtime, tv_nsec: 123_456_789)]
    #expect(futimens(fd, &times) == 0)
    close(fd)
  }

  func setTimes(_ path: String, mtime: Int) {
    var times = [timespec(tv_sec: mtime, tv_nsec: 5), timespec(tv_sec: mtime, tv_nsec: 5)]
    #expect(utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0)
  }

  func st(_ path: String) throws -> stat { try Sys.lstat(path) }

  /// What `stat` shows that must survive deduplication.
  func shown(_ s: stat) -> [Int] {
    [
      Int(s.st_mode), Int(s.st_uid), Int(s.st_gid), Int(s.st_size), s.st_mtim.tv_sec, s.st_mtim.tv_nsec, s.st_atim.tv_sec,
      s.st_atim.tv_nsec,
    ]
  }

  /// Prepares `key`, lets `fill` write into its upper dir, commits it as `name`.
  func layer(_ s: Snapshotter, _ name: String, parent: String = "", _ fill: (String) throws -> Void) throws -> String {
    let upper = upperDir(try s.prepare(key: name + "-active", parent: parent))
    try fill(upper)
    try s.commit(name: name, key: name + "-active")
    return upper
  }

  /// The object a stub names, nil when `path` is not a stub.
  func object(_ path: String) throws -> String? {
    let fd = try At.openFile(path)
    defer { At.close(fd) }
    return try ObjectStore.stubKey(fd, path)
  }

  @Test func committedFilesBecomeStubsOfSharedObjects() throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let names = ["same1", "d/same2", "d/othermode", "d/othertime", "d/hard", "empty", "xattr", "d", "."]
    var before: [stat] = []
    let a = try layer(s, "a") { fs in
      try write(fs + "/same1", "shared content", mtime: 1_000_000)
      #expect(mkdir(fs + "/d", 0o755) == 0)
      try write(fs + "/d/same2", "shared content", mtime: 1_000_000)
      try write(fs + "/d/othermode", "shared content", mode: 0o4755, mtime: 1_000_000)
      try write(fs + "/d/othertime", "shared content", mtime: 1_000_001)
      #expect(link(fs + "/same1", fs + "/d/hard") == 0)
      try write(fs + "/empty", "", mtime: 1_000_000)
      #expect(symlink("same1", fs + "/sym") == 0)
      try write(fs + "/xattr", "shared content", mtime: 1_000_000)
      try At.setXattr(path: fs + "/xattr", name: "user.k", value: [UInt8(ascii: "v")])
      setTimes(fs + "/d", mtime: 2_000_000)
      setTimes(fs, mtime: 2_000_001)
      before = try names.map { try st(fs + "/" + $0) }
    }
    // Done when Commit returns: nothing waits in the background.

    // Every file is a stub of the one object holding the content; each keeps its own
    // inode, and only the hard link written shares one (left as it is: its names could not
    // all change at once under a mounted layer).
    let after = try names.map { try st(a + "/" + $0) }
    let key = try object(a + "/d/same2")
    #expect(key != nil)
    for name in ["d/othermode", "d/othertime", "xattr"] { #expect(try object(a + "/" + name) == key) }
    #expect(try object(a + "/same1") == nil && object(a + "/d/hard") == nil)
    #expect(try object(a + "/empty") == nil)
    #expect(Set(after[0...6].map(\.st_ino)).count == 6)
    #expect(after[0].st_ino == after[4].st_ino && after[0].st_nlink == 2)
    #expect(after[1].st_nlink == 1 && after[2].st_nlink == 1)
    // What stat shows is unchanged except inode; directories keep their mtimes. (Their
    // atime is the commit's: it reads them to count the usage, as containerd's does.)
    for (b, n) in zip(before, after) {
      #expect(b.st_mode & S_IFMT == S_IFDIR ? shown(b)[0..<6] == shown(n)[0..<6] : shown(b) == shown(n))
      #expect(b.st_nlink == n.st_nlink)
    }
    #expect(after[1].st_blocks == 0)
    let fd = try At.openFile(a + "/xattr")
    defer { At.close(fd) }
    let xattrs = try At.xattrs(fd, "xattr").filter { !$0.0.hasPrefix("trusted.overlay.") }
    #expect(xattrs.count == 1 && xattrs[0].0 == "user.k" && xattrs[0].1 == [UInt8(ascii: "v")])
    #expect(try st(a + "/sym").st_mode & S_IFMT == S_IFLNK)
    #expect(try Sys.readAll(s.layout.objects + ObjectStore.redirect(of: key!)) == Array("shared content".utf8))
    var u = try s.storeUsage()
    #expect(u.objects == 1)
    #expect(u.logicalBytes == 14 * 5)  // five files of 14 bytes (d/hard is same1), one empty
    #expect(u.storedBytes == 14)  // (same1 keeps its own data)

    // A second snapshot (on top of the first) with content already stored: not stored again.
    let b = try layer(s, "b", parent: "a") { fs in
      try write(fs + "/copy", "shared content", mtime: 1_000_000)
      #expect(link(fs + "/copy", fs + "/copyhard") == 0)
      try write(fs + "/new", "new content", mtime: 1_000_000)
    }
    s.drain()
    #expect(try object(b + "/new") != nil && object(b + "/copy") == nil)
    #expect(try st(b + "/copy").st_ino == st(b + "/copyhard").st_ino)
    u = try s.storeUsage()
    #expect(u.objects == 2 && u.storedBytes == 14 + 11)
    #expect(try s.check().isEmpty)

    // Removing a snapshot frees the objects only it used, once it is gone for good.
    try s.remove(key: "b")
    s.drain()
    u = try s.storeUsage()
    #expect(u.objects == 1 && u.storedBytes == 14)
    try s.remove(key: "a")
    s.drain()
    u = try s.storeUsage()
    #expect(u.objects == 0 && u.storedBytes == 0 && u.logicalBytes == 0)
    var left = 0
    for sub in try Sys.listDirectory(s.layout.objects) { left += try Sys.listDirectory(s.layout.objects + "/" + sub).count }
    #expect(left == 0)
  }

  /// Enough empty files that a commit becomes an image (`LayerImages.minimumEntries`).
  func filler(_ fs: String) throws {
    #expect(mkdir(fs + "/many", 0o755) == 0)
    for i in 0..<LayerImages.minimumEntries { try write(fs + "/many/\(i)", "", mtime: 1_000_000) }
  }

  /// A small commit stays a directory of stubs: an image would cost it an fsync and a mount.
  @Test func smallCommitsStayDirectories() throws {
    let tmp = TempRoot()
    let s = try tmp.open(.erofs)
    let a = try layer(s, "a") { fs in try write(fs + "/f", "content", mtime: 1_000_000) }
    #expect(try !MountInfo.current().contains { $0.mountPoint == a })
    #expect(try object(a + "/f") != nil)
  }

  /// With layer images: Commit makes the snapshot's files an EROFS image mounted on its
  /// directory, every file (hard links too) a stub of a shared object, what stat shows
  /// unchanged but inode numbers, ctime and atime (EROFS keeps none of its own).
  @Test func committedFilesBecomeAnImage() throws {
    let tmp = TempRoot()
    let s = try tmp.open(.erofs)
    let names = ["same1", "d/same2", "d/othermode", "d/hard", "empty", "xattr", "d"]
    var before: [stat] = []
    // Past LayerTree.inlineMax: objects (a small file is inline in the image, "small").
    let shared = String(repeating: "shared content ", count: 40)
    let other = String(repeating: "other content ", count: 40)
    let a = try layer(s, "a") { fs in
      try write(fs + "/same1", shared, mtime: 1_000_000)
      #expect(mkdir(fs + "/d", 0o755) == 0)
      try write(fs + "/d/same2", shared, mtime: 1_000_000)
      try write(fs + "/d/othermode", shared, mode: 0o4755, mtime: 1_000_000)
      #expect(link(fs + "/same1", fs + "/d/hard") == 0)
      try write(fs + "/empty", "", mtime: 1_000_000)
      #expect(symlink("same1", fs + "/sym") == 0)
      try write(fs + "/xattr", other, mtime: 1_000_000)
      try At.setXattr(path: fs + "/xattr", name: "user.k", value: [UInt8(ascii: "v")])
      try write(fs + "/small", "tiny", mtime: 1_000_000)
      try filler(fs)
      setTimes(fs + "/d", mtime: 2_000_000)
      before = try names.map { try st(fs + "/" + $0) }
    }
    #expect(try MountInfo.current().contains { $0.mountPoint == a && $0.fsType == "erofs" })
    #expect(!Sys.exists(a + ".old"))
    let after = try names.map { try st(a + "/" + $0) }
    for (b, n) in zip(before, after) {
      // (A directory's size is its file system's: ext4 allocates 4 KiB, EROFS what it uses.)
      #expect(
        b.st_mode & S_IFMT == S_IFDIR
          ? shown(b)[0..<3] + shown(b)[4..<6] == shown(n)[0..<3] + shown(n)[4..<6] : shown(b)[0..<6] == shown(n)[0..<6])
      #expect(b.st_nlink == n.st_nlink)
    }
    #expect(after[0].st_ino == after[3].st_ino && after[0].st_nlink == 2)
    let key = try object(a + "/d/same2")
    #expect(try key != nil && object(a + "/same1") == key && object(a + "/d/hard") == key)
    #expect(try object(a + "/empty") == nil)
    let fd = try At.openFile(a + "/xattr")
    defer { At.close(fd) }
    #expect(try At.xattrs(fd, "xattr").contains { $0.0 == "user.k" && $0.1 == [UInt8(ascii: "v")] })
    var u = try s.storeUsage()
    #expect(u.objects == 2 && u.storedBytes == shared.utf8.count + other.utf8.count)
    #expect(try s.check().isEmpty)
    // Read through a child's overlay: the objects' bytes.
    let m = try s.view(key: "v", parent: "a")
    let target = tmp.path + "/v"
    try Sys.mkdir(target, mode: 0o755)
    try Sys.mount(source: "overlay", target: target, type: "overlay", flags: 0, data: m[0].options.joined(separator: ","))
    #expect(try Sys.readAll(target + "/d/hard") == Array(shared.utf8))
    #expect(try Sys.readAll(target + "/small") == Array("tiny".utf8) && object(a + "/small") == nil)
    #expect(try Sys.lstat(target + "/same1").st_dev == Sys.lstat(target + "/d").st_dev)  // xino: one st_dev
    try Sys.unmount(target)
    try s.remove(key: "v")
    // Removed: its mount and image go, then the objects only it used.
    try s.remove(key: "a")
    s.drain()
    u = try s.storeUsage()
    #expect(u.objects == 0 && u.storedBytes == 0)
    #expect(try !MountInfo.current().contains { $0.mountPoint.hasPrefix(tmp.path + "/") })
  }

  /// A name that is not UTF-8 cannot be listed faithfully: such a commit stays a directory,
  /// every file kept; a time before 1970 survives an image.
  @Test func oddNamesAndTimesInACommit() throws {
    let tmp = TempRoot()
    let s = try tmp.open(.erofs)
    let a = try layer(s, "a") { fs in
      try filler(fs)
      let fd = open(fs + "/caf\u{e9}", O_WRONLY | O_CREAT, 0o644)
      close(fd)
      #expect(rename(fs + "/caf\u{e9}", fs + "/" + String(decoding: [0x6C, 0x61, 0x74, 0x69, 0x6E], as: UTF8.self)) == 0)
      var bytes: [CChar] = (fs + "/x").utf8CString.dropLast().map { $0 } + [CChar(bitPattern: 0xE9), 0]
      let raw = open(&bytes, O_WRONLY | O_CREAT, 0o644)
      #expect(raw >= 0)
      close(raw)
    }
    #expect(try !MountInfo.current().contains { $0.mountPoint == a })
    #expect(try Sys.listDirectory(a).count == 3)
    let b = try layer(s, "b") { fs in
      try filler(fs)
      try write(fs + "/old", "before 1970", mtime: -86_400)
    }
    #expect(try MountInfo.current().contains { $0.mountPoint == b })
    #expect(try st(b + "/old").st_mtim.tv_sec == -86_400)
  }

  /// A store whose layers are directories (an earlier version's, or `--layer-format
  /// directory`) becomes one of images when opened with images: committed snapshots at
  /// start, the rest in the background; what stat shows stays.
  @Test func directoriesBecomeImagesAtStart() throws {
    let tmp = TempRoot()
    var before: stat?
    do {
      let s = try tmp.open(.directory)
      _ = try layer(s, "a") { fs in
        try write(fs + "/f", "content", mtime: 1_000_000)
        #expect(link(fs + "/f", fs + "/g") == 0)
        try filler(fs)
        before = try st(fs + "/f")
      }
      s.drain()
    }
    let s = try tmp.open(.erofs)
    s.drain()
    let fs = s.layout.fs(try s.read { db in try Metadata.find(db, key: "a")!.id })
    #expect(try MountInfo.current().contains { $0.mountPoint == fs && $0.fsType == "erofs" })
    let now = try st(fs + "/f")
    #expect(shown(before!)[0..<6] == shown(now)[0..<6] && now.st_nlink == 2)
    #expect(try s.check().isEmpty)
  }

  /// A file capability (as Debian's ping has) and setuid survive becoming a stub: the
  /// kernel removes security.capability on chown, so the stub is chowned first.
  @Test func capabilitiesAndSetuidSurviveTheDedup() throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    // cap_net_raw+ep, VFS_CAP_REVISION_2: magic_etc, then permitted/inheritable pairs.
    let capability: [UInt8] = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    let a = try layer(s, "caps") { fs in
      try write(fs + "/ping", "a ping binary", mode: 0o4755, mtime: 1_000_000)
      #expect(chown(fs + "/ping", 1000, 1000) == 0)
      #expect(chmod(fs + "/ping", 0o4755) == 0)
      try At.setXattr(path: fs + "/ping", name: "security.capability", value: capability)
    }
    let before = try st(a + "/ping")
    s.drain()
    #expect(try object(a + "/ping") != nil)
    let after = try st(a + "/ping")
    #expect(after.st_mode == before.st_mode && after.st_uid == 1000 && after.st_gid == 1000)
    #expect(try At.getXattr(path: a + "/ping", name: "security.capability") == capability)
  }

  /// An active snapshot committed while a mount still uses its directory (a running
  /// container's, here a bind mount as for a snapshot without parent) keeps its files: the
  /// mount must not see them replaced.
  @Test func aStillMountedSnapshotKeepsItsFiles() throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let fs = upperDir(try s.prepare(key: "busy-active", parent: ""))
    try write(fs + "/f", "content of a running container", mtime: 5)
    let target = tmp.path + "/mnt"
    try Sys.mkdir(target, mode: 0o755)
    try Sys.mount(source: fs, target: target, type: "none", flags: UInt(MS_BIND), data: nil)
    defer { try? Sys.unmount(target, flags: Int32(MNT_DETACH)) }
    let before = try st(target + "/f")
    try s.commit(name: "busy", key: "busy-active")
    let after = try st(target + "/f")
    #expect(after.st_ino == before.st_ino && after.st_nlink == 1)
    #expect(try object(fs + "/f") == nil)
    #expect(try s.storeUsage().objects == 0)
    #expect(try s.check().isEmpty)
  }

  @Test func aRestartFinishesWhatACrashInterrupted() throws {
    let tmp = TempRoot()
    do {
      let s = try tmp.open()
      _ = try layer(s, "a") { fs in try write(fs + "/f", "content", mtime: 5) }
      s.drain()
      // A crash after the files became stubs, before the references committed.
      try s.write { db in
        try db.execute(sql: "UPDATE snapshot SET file_bytes = NULL; DELETE FROM object_ref; DELETE FROM object")
      }
      #expect(try s.storeUsage().objects == 0)
    }
    let s = try tmp.open()
    s.drain()
    #expect(try s.storeUsage().objects == 1)
    let row = try s.read { db in try Metadata.find(db, key: "a") }
    #expect(row?.fileBytes == 7)
    #expect(try object(s.layout.fs(row!.id) + "/f") != nil)
    #expect(try s.check().isEmpty)
    try s.remove(key: "a")
    s.drain()
    #expect(try s.storeUsage().objects == 0)
  }

  @Test func checkReportsDamageAndRepairsWhatItCan() throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let a = try layer(s, "a") { fs in
      try write(fs + "/one", "first content", mtime: 5)
      try write(fs + "/two", "second content", mtime: 5)
      try write(fs + "/three", "third content", mtime: 5)
    }
    s.drain()
    #expect(try s.check().isEmpty)
    // Damage of every kind: a missing object, a corrupt one, an orphan, wrong counts.
    let missing = try object(a + "/one")!
    let corrupt = try object(a + "/two")!
    try Sys.unlink(s.layout.objects + ObjectStore.redirect(of: missing))
    let fd = open(s.layout.objects + ObjectStore.redirect(of: corrupt), O_WRONLY)
    #expect(fd >= 0 && pwrite(fd, "X", 1, 0) == 1)
    close(fd)
    let orphan = s.layout.objects + "/00/00000000000000"
    #expect(creat(orphan, 0o444) >= 0)
    try s.write { db in try db.execute(sql: "UPDATE object SET refs = 7 WHERE key = ?", arguments: [corrupt]) }
    let found = try s.check()
    let kinds = Set(found.map(\.kind))
    #expect(kinds == [.missingObject, .corruptObject, .orphanObject, .referenceCount], "\(found)")
    #expect(Sys.exists(orphan))  // a check changes nothing
    let repaired = try s.check(repair: true)
    let unrepaired = repaired.filter { $0.repairable && !$0.repaired }
    #expect(unrepaired.isEmpty)
    #expect(!Sys.exists(orphan))
    let left = try s.check()
    #expect(Set(left.map(\.kind)) == [.missingObject, .corruptObject], "\(left)")
    let repairable = left.filter { $0.repairable }
    #expect(repairable.isEmpty)
  }
}
