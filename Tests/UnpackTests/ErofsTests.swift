import Foundation
import SnapshotSys
import Testing
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// The kernel reads every image `ErofsImage` writes as the same tree `materialize` writes
/// on disk: each layer is unpacked both ways, the image mounted (file-backed EROFS), and
/// both listed field by field. `fsck.erofs` (erofs-utils) checks each image too.
@Suite(.enabled(if: getuid() == 0, "needs root: mounts, owners, trusted.* xattrs"))
struct ErofsTests {
  let root: String
  let objects: ObjectStore

  init() throws {
    root = NSTemporaryDirectory() + "erofs-" + UUID().uuidString
    try Sys.mkdirAll(root, mode: 0o755)
    objects = try ObjectStore(path: root + "/o")
  }

  /// Unpacks `tar` both ways and compares what the kernel shows of each: the image with
  /// compact inodes where they fit, and with extended ones only. Returns the compact
  /// image's size.
  @discardableResult
  func check(_ tar: TarWriter, _ name: String) throws -> Int {
    let layer = LayerDescription(name: name, compression: .none, digest: nil, diffID: nil)
    let (_, tree) = try Unpacker.read(MemorySource(tar.finished), layer, objects: objects)
    let dir = root + "/" + name + "-dir"
    try Sys.mkdir(dir, mode: 0o755)
    try tree.materialize(into: dir)
    let want = try listing(dir)
    var sizes: [Int] = []
    for compact in [true, false] {
      let base = root + "/" + name + (compact ? "" : "-extended")
      let image = base + ".erofs"
      let mnt = base + "-mnt"
      try Sys.mkdir(mnt, mode: 0o755)
      let fd = open(image, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
      #expect(fd >= 0)
      let size = try ErofsImage.write(tree, to: fd, what: image, buildTime: Sys.now(), compact: compact)
      close(fd)
      sizes.append(size)
      #expect(size % 4096 == 0)
      let fsck = Process()
      fsck.executableURL = URL(fileURLWithPath: "/usr/bin/fsck.erofs")
      fsck.arguments = [image]
      fsck.standardOutput = FileHandle.nullDevice
      try fsck.run()
      fsck.waitUntilExit()
      #expect(fsck.terminationStatus == 0, "fsck.erofs \(image)")
      try Sys.mount(source: image, target: mnt, type: "erofs", flags: UInt(MS_RDONLY), data: nil)
      defer { try? Sys.unmount(mnt, flags: Int32(MNT_DETACH)) }
      let got = try listing(mnt)
      #expect(want.count == got.count)
      #expect(want.count >= tree.entries - 1, "every entry listed")
      for (w, g) in zip(want, got) where w != g {
        Issue.record("\(name) (compact \(compact)): directory: \(w)\n\(name): image:     \(g)")
      }
      // Read back from the mounted image and written again: the same (how a variant of a
      // layer, or a directory layer converted, becomes an image).
      let again = base + "-again.erofs"
      let mnt2 = base + "-mnt2"
      try Sys.mkdir(mnt2, mode: 0o755)
      let fd2 = open(again, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
      try ErofsImage.write(try LayerTree.load(from: mnt), to: fd2, what: again, buildTime: Sys.now(), compact: compact)
      close(fd2)
      try Sys.mount(source: again, target: mnt2, type: "erofs", flags: UInt(MS_RDONLY), data: nil)
      defer { try? Sys.unmount(mnt2, flags: Int32(MNT_DETACH)) }
      #expect(try listing(mnt2) == got)
    }
    #expect(sizes[0] <= sizes[1], "compact inodes never make an image larger")
    return sizes[0]
  }

  /// One line per entry: what a container could see of it but atime, ctime, inode numbers
  /// (hard-link groups instead) and directory sizes.
  func listing(_ top: String) throws -> [String] {
    var lines: [String] = []
    var groups: [String: String] = [:]
    func visit(_ rel: String) throws {
      let path = rel.isEmpty ? top : top + "/" + rel
      let st = try Sys.lstat(path)
      let type = st.st_mode & S_IFMT
      var fields = ["\(rel.isEmpty ? "/" : rel)", String(st.st_mode, radix: 8), "\(st.st_uid):\(st.st_gid)", "nlink=\(st.st_nlink)"]
      if !rel.isEmpty { fields.append("mtime=\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)") }
      if type != S_IFDIR { fields.append("size=\(st.st_size)") }
      // Content: an inline file's data; a stub reads as zeros both ways.
      if type == S_IFREG { fields.append("content=\(Digest.of(try Data(contentsOf: URL(fileURLWithPath: path))).hex.prefix(16))") }
      if type == S_IFCHR || type == S_IFBLK { fields.append("rdev=\(st.st_rdev)") }
      if type == S_IFLNK { fields.append("target=\(Sys.readLink(path) ?? "?")") }
      for (name, value) in try At.xattrs(path: path) { fields.append("\(name)=\(value.map { String(format: "%02x", $0) }.joined())") }
      if type != S_IFDIR, st.st_nlink > 1 {
        let key = "\(st.st_dev):\(st.st_ino)"
        if groups[key] == nil { groups[key] = rel }
        fields.append("group=\(groups[key]!)")
      }
      lines.append(fields.joined(separator: " "))
      if type == S_IFDIR {
        for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() {
          try visit(rel.isEmpty ? name : rel + "/" + name)
        }
      }
    }
    try visit("")
    return lines
  }

  func owner(_ uid: Int, _ gid: Int) -> [(String, String)] { [("uid", "\(uid)"), ("gid", "\(gid)")] }

  @Test func everyEntryType() throws {
    var tar = TarWriter()
    tar.pax(owner(1000, 2000) + [("SCHILY.xattr.user.dir", "d")])
    tar.entry("etc/", type: 0x35, mode: 0o2775)
    tar.entry("etc/passwd", data: Array("root:x:0:0\n".utf8))
    tar.entry("etc/empty", data: [])
    tar.pax([("SCHILY.xattr.security.capability", "\u{1}\u{0}\u{0}\u{2}\u{0}\u{20}\u{0}\u{0}")])
    tar.entry("usr/bin/ping", mode: 0o4755, data: [UInt8](repeating: 7, count: 70_000))
    tar.entry("usr/bin/ping6", type: 0x31, link: "usr/bin/ping")  // across directories
    tar.entry("lib/ping-too", type: 0x31, link: "usr/bin/ping")
    tar.entry("lib/short", type: 0x32, mode: 0o777, link: "../etc/passwd")
    tar.pax([("linkpath", String(repeating: "t/", count: 2000))])
    tar.entry("lib/long", type: 0x32, mode: 0o777)
    tar.entry("dev/null", type: 0x33, mode: 0o666)
    tar.entry("dev/fifo", type: 0x36, mode: 0o600)
    tar.entry("tmp/", type: 0x35, mode: 0o1777)
    tar.entry("tmp/.wh.gone", data: [])
    tar.entry("var/.wh..wh..opq", data: [])
    tar.entry("var/-dash", data: [1])  // sorts before "." and ".."
    tar.pax([("path", "var/caf\u{e9}")])
    tar.entry("x", data: [2])
    tar.pax([("path", "var/cafe\u{301}")])  // the same name to Swift's String, not on disk
    tar.entry("x", data: [3])
    tar.pax([("path", "long/" + String(repeating: "n", count: 255))])
    tar.entry("x", data: [4])
    tar.entry("big", data: [UInt8](repeating: 1, count: 5 << 20))
    try check(tar, "types")
  }

  /// Files up to `LayerTree.inlineMax` bytes keep their data in the image, beside their
  /// inode (not an object); larger ones are stubs. Hard links, xattrs that leave no room in
  /// the inode's block, and files rewritten by a later entry keep the same rules.
  @Test func smallFilesAreInline() throws {
    let max = LayerTree.inlineMax
    var tar = TarWriter()
    tar.entry("one", data: [1])
    tar.entry("a/at-limit", data: [UInt8](repeating: 2, count: max))
    tar.entry("a/over-limit", data: [UInt8](repeating: 3, count: max + 1))
    tar.entry("b/link", type: 0x31, link: "a/at-limit")
    tar.pax([("SCHILY.xattr.user.big", String(repeating: "x", count: 3600))])
    tar.entry("no-room", data: [UInt8](repeating: 4, count: max))  // its data takes a block of its own
    tar.entry("again", data: [UInt8](repeating: 5, count: 10))
    tar.entry("again", data: [UInt8](repeating: 6, count: 20))
    try check(tar, "inline")
    let layer = LayerDescription(name: "inline", compression: .none, digest: nil, diffID: nil)
    let (unpacked, tree) = try Unpacker.read(MemorySource(tar.finished), layer, objects: objects)
    func node(_ path: String) -> LayerTree.Node? { tree.lookup(path.split(separator: "/").map { Array($0.utf8) }[...]) }
    #expect(node("one")?.data == [1])
    #expect(node("a/at-limit")?.data?.count == max && node("a/at-limit")?.object == nil)
    #expect(node("a/at-limit") === node("b/link"))
    #expect(node("a/over-limit")?.data == nil && node("a/over-limit")?.object != nil)
    #expect(node("again")?.data == [UInt8](repeating: 6, count: 20))
    #expect(unpacked.objects.count == 1, "only the file over the limit is an object")
    #expect(unpacked.fileBytes == Int64(1 + max + max + 1 + max + 10 + 20))
  }

  /// A layer's inline bytes are bounded: past `inlineBudget`, small files are objects.
  @Test func inlineBytesAreBounded() {
    let tree = LayerTree(owner: (0, 0), now: Sys.now())
    #expect(!tree.inline(0) && !tree.inline(LayerTree.inlineMax + 1))
    var taken = 0
    while tree.inline(LayerTree.inlineMax) { taken += LayerTree.inlineMax }
    #expect(taken <= LayerTree.inlineBudget && taken > LayerTree.inlineBudget - LayerTree.inlineMax)
    #expect(tree.inlineBytes == taken)
  }

  @Test func devicesKeepTheirNumbers() throws {
    var tar = TarWriter()
    tar.entry("sda", type: 0x34, mode: 0o660, devMajor: 8, devMinor: 1)
    tar.entry("wide", type: 0x33, mode: 0o600, devMajor: 259, devMinor: 70_000)
    try check(tar, "devices")
  }

  @Test func xattrHeavyEntries() throws {
    var tar = TarWriter()
    var many: [(String, String)] = []
    for i in 0..<11 { many.append(("SCHILY.xattr.user.x\(i)", String(repeating: "v", count: 300 + i))) }
    tar.pax(many)
    tar.entry("file", data: [1, 2, 3])
    tar.pax(many)
    tar.entry("dir/", type: 0x35, mode: 0o755)
    for i in 0..<200 { tar.entry("dir/entry-with-a-long-name-\(i)-" + String(repeating: "z", count: 60), data: []) }
    tar.pax(many.map { ($0.0.replacingOccurrences(of: ".user.", with: ".trusted."), $0.1) })
    tar.entry("link", type: 0x32, mode: 0o777, link: String(repeating: "y", count: 3000))
    try check(tar, "xattrs")
  }

  /// As on disk, where the kernel refuses them: containerd's applier fails such a layer.
  @Test func userXattrsOnASymlinkAreRefused() throws {
    var tar = TarWriter()
    tar.pax([("SCHILY.xattr.user.x", "1")])
    tar.entry("link", type: 0x32, mode: 0o777, link: "target")
    let layer = LayerDescription(name: "symlink-xattr", compression: .none, digest: nil, diffID: nil)
    #expect(throws: LayerError.self) { _ = try Unpacker.read(MemorySource(tar.finished), layer, objects: objects) }
  }

  @Test func aHundredThousandEntryDirectory() throws {
    var tar = TarWriter()
    for i in 0..<100_000 { tar.entry("d/f\(i)", data: []) }
    tar.entry("d/data", data: [9])
    try check(tar, "wide")
  }
  /// Compact inodes where the fields fit, extended where not, side by side in one image:
  /// nanosecond and far-apart mtimes (the epoch 0: a tar's negative mtime is read as 0),
  /// owners past 16 bits. Which entry got which is read from the image (an inode's number
  /// is its byte offset / 32; bit 0 of its first byte: extended).
  @Test func compactAndExtendedInodes() throws {
    var tar = TarWriter()
    tar.pax([("mtime", "1700000000.5")])
    tar.entry("nanoseconds", data: [1])
    tar.pax([("mtime", "-86400")])
    tar.entry("epoch", data: [2])
    tar.pax([("mtime", "\(Int64(1) << 33)")])  // more than 2^32 s after the epoch
    tar.entry("far-future", data: [UInt8](repeating: 3, count: 5000))
    tar.pax(owner(70_000, 5))
    tar.entry("wide-uid", data: [4])
    tar.pax(owner(5, 70_000))
    tar.entry("wide-gid/", type: 0x35, mode: 0o755)
    tar.entry("plain", data: [UInt8](repeating: 5, count: 5000))
    tar.entry("plain-dir/", type: 0x35, mode: 0o700)
    tar.entry("plain-dir/link", type: 0x31, link: "plain")
    try check(tar, "mixed")
    let image = root + "/mixed.erofs"
    #expect(try ErofsImage.hasCompactInodes(image))
    #expect(try !ErofsImage.hasCompactInodes(root + "/mixed-extended.erofs"))
    let bytes = try Data(contentsOf: URL(fileURLWithPath: image))
    let mnt = root + "/mixed-mnt"
    try Sys.mount(source: image, target: mnt, type: "erofs", flags: UInt(MS_RDONLY), data: nil)
    defer { try? Sys.unmount(mnt, flags: Int32(MNT_DETACH)) }
    var extended: [String] = []
    for name in try FileManager.default.contentsOfDirectory(atPath: mnt).sorted() {
      let nid = Int(try Sys.lstat(mnt + "/" + name).st_ino)
      if bytes[nid * 32] & 1 == 1 { extended.append(name) }
    }
    #expect(extended == ["far-future", "nanoseconds", "wide-gid", "wide-uid"])
  }

  /// A stub's record is 96 bytes with compact inodes (the inode, its redirect, the shared
  /// metacopy) against 128 with extended ones (160 with its metacopy inline).
  @Test func stubsAreSmall() throws {
    var tar = TarWriter()
    for i in 0..<2000 { tar.entry("d/file-\(i)", data: Array("contents of file \(i) ".utf8) + [UInt8](repeating: 7, count: 600)) }
    let compact = try check(tar, "stubs")
    let extended = try Data(contentsOf: URL(fileURLWithPath: root + "/stubs-extended.erofs")).count
    let names = 2000 * (12 + 10)
    #expect(compact <= 2048 + 2000 * 96 + names + 3 * 4096, "compact: \(compact) bytes")
    #expect(extended > 2000 * 128, "extended: \(extended) bytes")
  }

  /// Inodes lie in the order a walk visits them (depth first, by name): their numbers
  /// (the kernel's are their byte offsets / 32) grow along `find`'s order.
  @Test func inodesInWalkOrder() throws {
    var tar = TarWriter()
    for d in ["b", "a", "c"] {
      for i in 0..<50 { tar.entry("\(d)/sub\(i % 3)/f\(i)", data: [UInt8](repeating: 1, count: 600 + i)) }
    }
    try check(tar, "order")
    let mnt = root + "/order-mnt"
    try Sys.mount(source: root + "/order.erofs", target: mnt, type: "erofs", flags: UInt(MS_RDONLY), data: nil)
    defer { try? Sys.unmount(mnt, flags: Int32(MNT_DETACH)) }
    var inos: [UInt64] = []
    func visit(_ path: String) throws {
      let st = try Sys.lstat(path)
      inos.append(UInt64(st.st_ino))
      if st.st_mode & S_IFMT == S_IFDIR {
        for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() { try visit(path + "/" + name) }
      }
    }
    try visit(mnt)
    #expect(inos.count == 1 + 3 + 9 + 150)
    #expect(inos == inos.sorted(), "inode numbers along a depth-first walk: \(inos.prefix(20))")
  }
}
