import Foundation
import LayerStore
import SnapshotSys
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `ObjectStore.absorb`: a tree of plain files becomes stubs of shared objects.
@Suite struct AbsorbTests {
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
    let a = try Sys.lstat(root + "/tree/a"), z = try Sys.lstat(root + "/tree/z"), other = try Sys.lstat(root + "/tree/other")
    #expect(a.st_ino == before.st_ino && z.st_ino == before.st_ino && a.st_nlink == 2)
    #expect(other.st_ino != a.st_ino && other.st_nlink == 1 && other.st_blocks == 0)
    #expect(out.objects.count == 1 && out.skipped == 1)
    #expect(out.fileBytes == 22)  // the linked file once, other once
    #expect(try Sys.listDirectory(root + "/tmp").isEmpty)
  }
}
