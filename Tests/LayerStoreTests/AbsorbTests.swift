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

  func bytes(_ hex: String) -> [UInt8] {
    let u = Array(hex.utf8)
    return stride(from: 0, to: u.count, by: 2).map { UInt8(String(decoding: u[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
  }

  /// A run cut short after the first name of a hard-linked file became a stub (its held link
  /// made) leaves the other name on the old inode; the next run links it to the same stub.
  @Test func anInterruptedRunKeepsHardLinks() throws {
    defer { try? Tree.remove(root) }
    for d in ["tree", "tmp", "held"] { try Sys.mkdirAll(root + "/" + d, mode: 0o755) }
    let objects = try ObjectStore(path: root + "/o")
    write(root + "/tree/a", "linked data")
    #expect(link(root + "/tree/a", root + "/tree/z") == 0)
    write(root + "/tree/other", "linked data")
    let ino = try Sys.lstat(root + "/tree/a").st_ino
    // The first half of a run, by hand: the object, a's stub, its held link, the rename.
    let tree = try At.openDirectory(root + "/tree"), tmp = try At.openDirectory(root + "/tmp")
    let held = try At.openDirectory(root + "/held")
    defer { for fd in [tree, tmp, held] { At.close(fd) } }
    let fd = try At.open(tree, "a", flags: O_RDONLY)
    let key = try objects.adopt(file: fd, tree, "a", sha: bytes(Digest.of(Array("linked data".utf8)).hex)).key
    At.close(fd)
    let stub = try At.open(tmp, "s", flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
    try objects.makeStub(stub, "s", key: key, size: 11)
    At.close(stub)
    try At.link(tmp, "s", held, String(ino))
    try At.rename(tmp, "s", tree, "a")
    #expect(try Sys.lstat(root + "/tree/a").st_ino != Sys.lstat(root + "/tree/z").st_ino)

    let out = try objects.absorb(tree: root + "/tree", scratch: root + "/tmp", held: root + "/held")
    let a = try Sys.lstat(root + "/tree/a"), z = try Sys.lstat(root + "/tree/z"), other = try Sys.lstat(root + "/tree/other")
    #expect(a.st_ino == z.st_ino && a.st_nlink == 2)
    #expect(other.st_ino != a.st_ino && other.st_nlink == 1)
    #expect(Array(out.objects.keys) == [key])
    #expect(out.fileBytes == 22)  // the linked file once, other once
    #expect(!Sys.exists(root + "/held"))
    #expect(try Sys.listDirectory(root + "/tmp").isEmpty)
  }

  /// A held link left by a run that replaced every name (a crash before its cleanup) names an
  /// inode number that may since belong to another file's stub: that stub stays as it is.
  @Test func aHeldLinkOfAFreedInodeLinksNothing() throws {
    defer { try? Tree.remove(root) }
    for d in ["tree", "tmp", "held"] { try Sys.mkdirAll(root + "/" + d, mode: 0o755) }
    let objects = try ObjectStore(path: root + "/o")
    write(root + "/tree/a", "one content")
    write(root + "/tree/b", "another content")
    _ = try objects.absorb(tree: root + "/tree", scratch: root + "/tmp")
    // A held link named by b's (stub) inode number, pointing at a's stub.
    let bIno = try Sys.lstat(root + "/tree/b").st_ino
    #expect(link(root + "/tree/a", root + "/held/\(bIno)") == 0)
    _ = try objects.absorb(tree: root + "/tree", scratch: root + "/tmp", held: root + "/held")
    let a = try Sys.lstat(root + "/tree/a"), b = try Sys.lstat(root + "/tree/b")
    #expect(a.st_ino != b.st_ino && b.st_ino == bIno && b.st_nlink == 1)
    #expect(!Sys.exists(root + "/held"))
  }
}
