import Foundation
import SnapshotSys
import Testing
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// `ObjectStore.absorb`: a tree of plain files becomes stubs of shared objects.
@Suite(.enabled(if: getuid() == 0, "needs root: trusted.* xattrs, owners, /run/sd, mounts"))
struct AbsorbTests {
  let root = NSTemporaryDirectory() + "absorb-" + UUID().uuidString

  func write(_ path: String, _ content: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    _ = content.withCString { Glibc.write(fd, $0, strlen($0)) }
    close(fd)
  }

  /// A file with several names stays as it is (its names could not all change at once under
  /// a mounted layer); others become stubs of shared objects.
  @Test func filesWithSeveralNamesAreLeftAlone() throws {
    defer { try? Tree.remove(root) }
    for d in ["tree", "tmp"] { try Sys.mkdirAll(root + "/" + d, mode: 0o755) }
    let objects = try ObjectStore(path: root + "/o")
    write(root + "/tree/a", "linked data")
    #expect(link(root + "/tree/a", root + "/tree/z") == 0)
    write(root + "/tree/other", "linked data")
    let before = try Sys.lstat(root + "/tree/a")
    let out = try objects.absorb(tree: root + "/tree", scratch: root + "/tmp")
    let a = try Sys.lstat(root + "/tree/a")
    let z = try Sys.lstat(root + "/tree/z")
    let other = try Sys.lstat(root + "/tree/other")
    #expect(a.st_ino == before.st_ino && z.st_ino == before.st_ino && a.st_nlink == 2)
    #expect(other.st_ino != a.st_ino && other.st_nlink == 1 && other.st_blocks == 0)
    #expect(out.objects.count == 1 && out.skipped == 1)
    #expect(out.fileBytes == 22)  // the linked file once, other once
    #expect(try Sys.listDirectory(root + "/tmp").isEmpty)
  }

  /// A file of new content becomes the object without ever having two names (one exchange);
  /// the stub keeps its mode and times. An object a crash left without its digest xattr (it
  /// is set after the exchange) gets it back at the next run.
  @Test func newContentBecomesTheObjectWithoutASecondName() throws {
    defer { try? Tree.remove(root) }
    for d in ["tree", "tmp"] { try Sys.mkdirAll(root + "/" + d, mode: 0o755) }
    let objects = try ObjectStore(path: root + "/o")
    write(root + "/tree/f", "new content")
    #expect(chmod(root + "/tree/f", 0o640) == 0)
    let before = try Sys.lstat(root + "/tree/f")
    let out = try objects.absorb(tree: root + "/tree", scratch: root + "/tmp")
    #expect(out.objects.count == 1 && out.newBytes == 11 && out.skipped == 0)
    let key = try #require(out.objects.keys.first)
    let stub = try Sys.lstat(root + "/tree/f")
    let object = try Sys.lstat(objects.path(of: key))
    #expect(object.st_ino == before.st_ino && object.st_nlink == 1)
    #expect(stub.st_ino != before.st_ino && stub.st_nlink == 1 && stub.st_blocks == 0 && stub.st_size == 11)
    #expect(stub.st_mode == before.st_mode && stub.st_mtim.tv_nsec == before.st_mtim.tv_nsec)
    #expect(try Sys.listDirectory(root + "/tmp").isEmpty)

    try At.removeXattr(path: objects.path(of: key), name: "trusted.snapshotd.sha256")
    #expect(try objects.info(key) == nil)
    let again = try objects.absorb(tree: root + "/tree", scratch: root + "/tmp")
    #expect(again.objects[key]?.sha256 == out.objects[key]?.sha256 && again.skipped == 0)
    #expect(try objects.info(key)?.size == 11)
  }
}
