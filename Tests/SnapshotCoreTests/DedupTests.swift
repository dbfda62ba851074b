import SnapshotSys
import Testing

@testable import SnapshotCore

#if canImport(Glibc)
import Glibc
#endif

/// Background deduplication of snapshots committed through Prepare/Commit (containerd's
/// own unpacking path): files become links to content objects, shared with other
/// snapshots, and what `stat` shows stays as written.
@Suite struct DedupTests {
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
    [Int(s.st_mode), Int(s.st_uid), Int(s.st_gid), Int(s.st_size), s.st_mtim.tv_sec, s.st_mtim.tv_nsec, s.st_atim.tv_sec, s.st_atim.tv_nsec]
  }

  /// Prepares `key`, lets `fill` write into its upper dir, commits it as `name`.
  func layer(_ s: Snapshotter, _ name: String, parent: String = "", _ fill: (String) throws -> Void) throws -> String {
    let upper = upperDir(try s.prepare(key: name + "-active", parent: parent))
    try fill(upper)
    try s.commit(name: name, key: name + "-active")
    return upper
  }

  @Test func committedFilesBecomeSharedObjects() throws {
    let tmp = TempRoot()
    let s = try tmp.open()
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
    }
    let before = try ["same1", "d/same2", "d/othermode", "d/othertime", "d/hard", "empty", "xattr", "d", "."].map { try st(a + "/" + $0) }
    s.drain()

    // Same content and metadata: one inode, the object's, whatever the name.
    let same1 = try st(a + "/same1"), same2 = try st(a + "/d/same2"), hard = try st(a + "/d/hard")
    #expect(same1.st_ino == same2.st_ino && same1.st_ino == hard.st_ino)
    #expect(same1.st_nlink == 4)  // same1, d/same2, d/hard and the object
    // Another mode, mtime or xattr is another object.
    let others = try ["d/othermode", "d/othertime", "xattr", "empty"].map { try st(a + "/" + $0).st_ino }
    #expect(Set(others + [same1.st_ino]).count == 5)
    #expect(try st(a + "/d/othermode").st_nlink == 2)
    // What stat shows is unchanged except links and inode; directories keep their times.
    let after = try ["same1", "d/same2", "d/othermode", "d/othertime", "d/hard", "empty", "xattr", "d", "."].map { try st(a + "/" + $0) }
    for (b, n) in zip(before, after) {
      #expect(shown(b) == shown(n))
    }
    let fd = try At.openFile(a + "/xattr")
    defer { At.close(fd) }
    let xattrs = try At.xattrs(fd, "xattr")
    #expect(xattrs.count == 1 && xattrs[0].0 == "user.k" && xattrs[0].1 == [UInt8(ascii: "v")])
    #expect(try st(a + "/sym").st_mode & S_IFMT == S_IFLNK)
    var u = try s.storeUsage()
    #expect(u.objects == 5)
    #expect(u.logicalBytes == 14 * 5)  // five files of 14 bytes (d/hard is same1), one empty
    #expect(u.storedBytes == 14 * 4)

    // A second snapshot (on top of the first) with a file already stored: linked, not stored again.
    let b = try layer(s, "b", parent: "a") { fs in
      try write(fs + "/copy", "shared content", mtime: 1_000_000)
      #expect(link(fs + "/copy", fs + "/copyhard") == 0)
      try write(fs + "/new", "new content", mtime: 1_000_000)
    }
    s.drain()
    // Both names of the hard-linked copy now link the object the first snapshot made.
    #expect(try st(b + "/copy").st_ino == same1.st_ino)
    #expect(try st(b + "/copyhard").st_ino == same1.st_ino)
    u = try s.storeUsage()
    #expect(u.objects == 6 && u.storedBytes == 14 * 4 + 11)

    // Removing a snapshot frees the objects only it used, once it is gone for good.
    try s.remove(key: "b")
    s.drain()
    u = try s.storeUsage()
    #expect(u.objects == 5 && u.storedBytes == 14 * 4)
    #expect(try st(a + "/same1").st_nlink == 4)
    try s.remove(key: "a")
    s.drain()
    u = try s.storeUsage()
    #expect(u.objects == 0 && u.storedBytes == 0 && u.logicalBytes == 0)
    var left = 0
    for sub in try Sys.listDirectory(s.layout.objects) { left += try Sys.listDirectory(s.layout.objects + "/" + sub).count }
    #expect(left == 0)
  }

  @Test func aRestartFinishesWhatACrashInterrupted() throws {
    let tmp = TempRoot()
    do {
      let s = try tmp.open()
      _ = try layer(s, "a") { fs in try write(fs + "/f", "content", mtime: 5) }
      s.drain()
      // A crash after the files were linked, before the references committed.
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
    #expect(try Sys.lstat(s.layout.fs(row!.id) + "/f").st_nlink == 2)
    try s.remove(key: "a")
    s.drain()
    #expect(try s.storeUsage().objects == 0)
  }
}
