import Foundation
import SnapshotSys
import Testing

@testable import Unpack

/// A minimal ustar writer: enough to build the tars these tests need byte by byte.
struct TarWriter {
  var bytes: [UInt8] = []

  mutating func entry(
    _ name: String, type: UInt8 = 0x30, mode: Int = 0o644, data: [UInt8] = [], link: String = "", mtime: Int = 1_600_000_000,
    devMajor: Int = 0, devMinor: Int = 0
  ) {
    var h = [UInt8](repeating: 0, count: 512)
    func put(_ s: String, _ at: Int, _ width: Int) {
      for (i, b) in s.utf8.prefix(width).enumerated() { h[at + i] = b }
    }
    func octal(_ v: Int, _ at: Int, _ width: Int) {
      let digits = String(v, radix: 8)
      put(String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits, at, width - 1)
    }
    put(name, 0, 100)
    octal(mode, 100, 8)
    octal(0, 108, 8)
    octal(0, 116, 8)
    octal(data.count, 124, 12)
    octal(mtime, 136, 12)
    h[156] = type
    put(link, 157, 100)
    put("ustar\u{0}00", 257, 8)
    octal(devMajor, 329, 8)
    octal(devMinor, 337, 8)
    for i in 148..<156 { h[i] = 0x20 }
    let sum = h.reduce(0) { $0 + Int($1) }
    octal(sum, 148, 7)
    bytes += h + data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
  }

  /// A PAX extended header (type `x`) for the entry that follows.
  mutating func pax(_ records: [(String, String)]) {
    var body: [UInt8] = []
    for (k, v) in records {
      let rest = " \(k)=\(v)\n".utf8.count
      var n = rest + 1
      while String(n).utf8.count + rest > n { n += 1 }
      body += Array("\(n) \(k)=\(v)\n".utf8)
    }
    entry("PaxHeader", type: 0x78, data: body)
  }

  var finished: [UInt8] { bytes + [UInt8](repeating: 0, count: 1024) }
}

typealias BytesSource = MemorySource

/// `text` repeated past `LayerTree.inlineMax` bytes: a file the store keeps as an object
/// (a smaller one is inline in its layer's image).
func stored(_ text: String) -> [UInt8] {
  var out: [UInt8] = []
  while out.count <= LayerTree.inlineMax { out += text.utf8 }
  return out
}

@Suite(.enabled(if: getuid() == 0, "needs root: trusted.* xattrs, owners, /run/sd, mounts"))
struct UnpackerTests {
  let root: String
  let objects: ObjectStore

  init() throws {
    root = NSTemporaryDirectory() + "layerstore-" + UUID().uuidString
    try Sys.mkdirAll(root + "/layer", mode: 0o755)
    objects = try ObjectStore(path: root + "/o")
  }

  func unpack(_ tar: TarWriter, into dir: String = "layer", diffID: Digest? = nil) throws(LayerError) -> UnpackedLayer {
    try Unpacker.unpack(
      BytesSource(tar.finished), LayerDescription(name: "test", compression: .none, digest: nil, diffID: diffID),
      into: root + "/" + dir, objects: objects)
  }

  /// The value of xattr `name` of `path`, nil when it has none.
  func xattr(_ path: String, _ name: String) -> [UInt8]? {
    (try? At.getXattr(path: path, name: name)) ?? nil
  }

  /// Times as containerd's applier sets them: before 1970 or past 2262 is the epoch, and
  /// atime is the later of atime and mtime.
  @Test func timesBoundedAsContainerdBoundsThem() throws {
    var tar = TarWriter()
    tar.pax([("mtime", "-86399.5")])
    tar.entry("old", data: Array("x".utf8))
    tar.pax([("mtime", "99999999999")])
    tar.entry("future")
    tar.pax([("atime", "1700000100.25")])
    tar.entry("atime", mtime: 1_700_000_000)
    tar.pax([("atime", "1000")])
    tar.entry("early-atime", mtime: 1_700_000_000)
    _ = try unpack(tar)
    let st = try ["old", "future", "atime", "early-atime"].map { try Sys.lstat(root + "/layer/" + $0) }
    #expect(st[0].st_mtim.tv_sec == 0 && st[0].st_mtim.tv_nsec == 0)
    #expect(st[1].st_mtim.tv_sec == 0 && st[1].st_mtim.tv_nsec == 0)
    #expect(st[2].st_mtim.tv_sec == 1_700_000_000 && st[2].st_atim.tv_sec == 1_700_000_100 && st[2].st_atim.tv_nsec == 250_000_000)
    #expect(st[3].st_atim.tv_sec == 1_700_000_000)
  }

  /// A hard-link entry's own header applies to the inode it shares (containerd's applier:
  /// the last header wins): its mode, times and xattrs.
  @Test func aHardLinkEntrysHeaderWins() throws {
    var tar = TarWriter()
    tar.entry("a", mode: 0o644, data: stored("shared"), mtime: 1_600_000_000)
    tar.pax([("SCHILY.xattr.user.x", "1")])
    tar.entry("b", type: 0x31, mode: 0o600, link: "a", mtime: 1_700_000_000)
    _ = try unpack(tar)
    let a = try Sys.lstat(root + "/layer/a")
    let b = try Sys.lstat(root + "/layer/b")
    #expect(a.st_ino == b.st_ino && a.st_nlink == 2)
    #expect(a.st_mode & 0o7777 == 0o600 && a.st_mtim.tv_sec == 1_700_000_000)
    #expect(xattr(root + "/layer/a", "user.x") == Array("1".utf8))
    #expect(xattr(root + "/layer/a", ObjectStore.metacopyXattr) == [])  // still a stub
  }

  /// A path written twice (the last entry wins) leaves only the objects the layer's stubs
  /// name: the first content's object is dropped, unless another stub (a hard link kept
  /// by its other name, or another file) still names it.
  @Test func aPathWrittenTwiceNamesOnlyWhatIsLeft() throws {
    var tar = TarWriter()
    tar.entry("twice", data: stored("first"))
    tar.entry("twice", data: stored("second"))
    tar.entry("kept", data: stored("kept by a link"))
    tar.entry("link", type: 0x31, link: "kept")
    tar.entry("kept", data: stored("replaced"))
    tar.entry("gone", data: stored("whited out"))
    tar.entry(".wh.gone")
    let layer = try unpack(tar)
    let sha = { (s: String) in Digest.of(stored(s)).hex }
    #expect(Set(layer.objects.values.map(\.sha256)) == [sha("second"), sha("kept by a link"), sha("replaced")])
    #expect(layer.dropped.count == 2)
    let fd = try At.openFile(root + "/layer/twice")
    defer { At.close(fd) }
    let key = try ObjectStore.stubKey(fd, "twice")
    #expect(key != nil && layer.objects[key!]?.sha256 == sha("second"))
  }

  @Test func filesBecomeStubsOfSharedObjects() throws {
    var tar = TarWriter()
    tar.entry("dir/", type: 0x35, mode: 0o755)
    tar.entry("dir/a", data: stored("same"))
    tar.entry("dir/b", data: stored("same"))
    tar.entry("dir/c", mode: 0o600, data: stored("same"), mtime: 1_700_000_000)
    tar.entry("dir/d", data: stored("other"))
    tar.entry("dir/hard", type: 0x31, link: "dir/d")
    tar.entry("dir/empty")
    let layer = try unpack(tar)
    #expect(layer.entries == 7)
    #expect(layer.fileBytes == Int64(3 * stored("same").count + stored("other").count))
    // Objects are keyed by content alone: a, b and c (another mode and mtime) share one.
    #expect(layer.objects.count == 2)
    #expect(layer.diffID == Digest.of(tar.finished))
    let names = ["a", "b", "c", "d", "hard", "empty"]
    let st = try names.map { try Sys.lstat(root + "/layer/dir/" + $0) }
    // Every entry its own inode with link count 1, but the tar's hard link.
    #expect(Set(st.map(\.st_ino)).count == 5)
    #expect(st[3].st_ino == st[4].st_ino && st[3].st_nlink == 2)
    #expect(st[0].st_nlink == 1 && st[1].st_nlink == 1 && st[2].st_nlink == 1)
    // The tar's metadata on the stub, no data blocks.
    #expect(st[0].st_size == stored("same").count && st[0].st_blocks == 0 && st[0].st_mode & 0o7777 == 0o644)
    #expect(st[2].st_mode & 0o7777 == 0o600 && st[2].st_mtim.tv_sec == 1_700_000_000)
    #expect(st[0].st_mtim.tv_sec == 1_600_000_000)
    // The stubs redirect to the object holding the bytes; an empty file is a plain file.
    let redirect = xattr(root + "/layer/dir/a", ObjectStore.redirectXattr)!
    #expect(xattr(root + "/layer/dir/a", ObjectStore.metacopyXattr) == [])
    #expect(redirect == xattr(root + "/layer/dir/c", ObjectStore.redirectXattr))
    #expect(redirect.count <= 20)  // both xattrs fit in a 256-byte ext4 inode
    let key = ObjectStore.key(redirect: String(decoding: redirect, as: UTF8.self))!
    #expect(layer.objects[key] == ObjectInfo(size: Int64(stored("same").count), sha256: Digest.of(stored("same")).hex))
    #expect(try Sys.readAll(objects.path(of: key)) == stored("same"))
    #expect(xattr(root + "/layer/dir/empty", ObjectStore.metacopyXattr) == nil && st[5].st_size == 0)

    // A second layer with the same content makes no new object.
    try Sys.mkdir(root + "/layer2", mode: 0o755)
    var tar2 = TarWriter()
    tar2.entry("x", mode: 0o755, data: stored("same"))
    let layer2 = try unpack(tar2, into: "layer2")
    #expect(Array(layer2.objects.keys) == [key])
    #expect(try objects.list().count == 2)
  }

  @Test func bigFilesStreamIntoTheirObject() throws {
    var tar = TarWriter()
    let big = (0..<(600 << 10)).map { UInt8(truncatingIfNeeded: $0 * 7) }
    tar.entry("big", data: big)
    tar.entry("big2", data: big)
    let layer = try unpack(tar)
    #expect(layer.objects.count == 1)
    let key = layer.objects.keys.first!
    #expect(try Sys.readAll(objects.path(of: key)) == big)
    #expect(try Sys.lstat(root + "/layer/big2").st_size == Int64(big.count))
    #expect(try objects.hashContent(key) == Digest.of(big).hex)
  }

  @Test func redirectsParseOnlyObjectNames() {
    #expect(ObjectStore.key(redirect: "/3f/0a1b2c3d4e5f6a") == "3f0a1b2c3d4e5f6a")
    #expect(ObjectStore.key(redirect: "/3f/0a1b2c3d4e5f6a.2") == "3f0a1b2c3d4e5f6a.2")
    for bad in [
      "", "/", "/3f", "3f/0a1b2c3d4e5f6a", "/3f/0a1b2c3d4e5f6", "/3F/0a1b2c3d4e5f6a", "/../0a1b2c3d4e5f6a", "/3f/0a1b2c3d4e5f6a.",
      "/3f/x/0a1b2c3d4e5f6a",
    ] {
      #expect(ObjectStore.key(redirect: bad) == nil, "\(bad)")
    }
  }

  @Test(arguments: ["../evil", "/abs", "a/../../evil"])
  func pathsLeavingTheLayerAreRefused(_ name: String) throws {
    var tar = TarWriter()
    tar.entry(name, data: [1])
    #expect { _ = try unpack(tar) } throws: { ($0 as? LayerError)?.message.contains(name) == true }
  }

  @Test func writesThroughSymlinksAreRefused() throws {
    var tar = TarWriter()
    tar.entry("a", type: 0x32, link: root)
    tar.entry("a/file", data: [1])
    #expect { _ = try unpack(tar) } throws: { ($0 as? LayerError)?.message.contains("a/file") == true }
    #expect(!Sys.exists(root + "/file"))
  }

  @Test func whiteoutsBecomeOverlayWhiteouts() throws {
    var tar = TarWriter()
    tar.entry("etc/", type: 0x35, mode: 0o755)
    tar.entry("etc/.wh.gone")
    let layer = try unpack(tar)
    #expect(layer.entries == 2)
    let st = try Sys.lstat(root + "/layer/etc/gone")
    #expect(st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 0)
  }

  /// A gzip layer through the whole unpack (igzip on the reading thread): the digest is
  /// the blob's, the diffID the tar's with the padding after its end, the files its own; a
  /// cut blob and one that is not gzip fail, saying so.
  @Test func gzipLayers() throws {
    var tar = TarWriter()
    let big = (0..<(1_500 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13 >> 3) }
    tar.entry("big", data: big)
    tar.entry("small", data: Array("small".utf8))
    let plain = tar.finished + [UInt8](repeating: 0, count: 4096)  // padding past the end
    let gz = try GunzipTests.gzip(plain)
    let layer = try Unpacker.unpack(
      BytesSource(gz), LayerDescription(name: "gz", compression: .gzip, digest: Digest.of(gz), diffID: Digest.of(plain)),
      into: root + "/layer", objects: objects)
    #expect(layer.digest == Digest.of(gz) && layer.diffID == Digest.of(plain))
    #expect(try Sys.lstat(root + "/layer/big").st_size == Int64(big.count))
    #expect(
      try objects.hashContent(layer.objects.keys.first { try! Sys.readAll(objects.path(of: $0)).count == big.count }!) == Digest.of(big).hex
    )
    for (name, blob, says) in [("cut", Array(gz[0..<(gz.count / 2)]), "truncated gzip"), ("plain", plain, "not gzip-compressed")] {
      try Sys.mkdirAll(root + "/" + name, mode: 0o755)
      #expect {
        _ = try Unpacker.unpack(
          BytesSource(blob), LayerDescription(name: name, compression: .gzip, digest: nil, diffID: nil), into: root + "/" + name,
          objects: objects)
      } throws: { ($0 as? LayerError)?.message.contains(says) == true }
    }
  }

  /// An uncompressed layer, named so or detected: its digest and diffID are the one hash
  /// of the blob, padding after the tar's end included; a wrong digest is refused.
  @Test(arguments: [Compression.none, .detect]) func uncompressedLayers(_ compression: Compression) throws {
    var tar = TarWriter()
    tar.entry("big", data: (0..<(300 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 >> 2) })
    tar.entry("small", data: Array("small".utf8))
    let plain = tar.finished + [UInt8](repeating: 0, count: 4096)
    let dir = root + "/plain-\(compression.rawValue)"
    try Sys.mkdirAll(dir, mode: 0o755)
    let layer = try Unpacker.unpack(
      BytesSource(plain), LayerDescription(name: "plain", compression: compression, digest: Digest.of(plain), diffID: Digest.of(plain)),
      into: dir, objects: objects)
    #expect(layer.digest == Digest.of(plain) && layer.diffID == Digest.of(plain))
    try Sys.mkdirAll(dir + "-wrong", mode: 0o755)
    #expect {
      _ = try Unpacker.unpack(
        BytesSource(plain), LayerDescription(name: "plain", compression: compression, digest: Digest.of([1]), diffID: nil),
        into: dir + "-wrong", objects: objects)
    } throws: { ($0 as? LayerError)?.message.contains("digest mismatch") == true }
  }

  /// Removing many objects at once (two threads, by halves of the directories): exactly
  /// those named go, missing names are skipped, the rest stay.
  @Test func removingObjectsInBulk() throws {
    var keys: [String] = []
    for i in 0..<64 {
      let content = stored("object \(i)")
      var hash = Hasher()
      content.withUnsafeBytes { hash.update($0) }
      let made = try objects.make(hash.finalizeBytes()) { fd throws(SystemError) in
        let written = content.withUnsafeBytes { b in Result { () throws(SystemError) in try At.write(fd, "object", b, at: 0) } }
        try written.get()
      }
      keys.append(made.key)
    }
    #expect(Set(keys.map { $0.first! }).count > 8, "keys in both halves of the directories")
    let gone = keys.enumerated().filter { $0.offset % 3 != 0 }.map(\.element)
    try objects.remove(gone + ["0000000000000000", "ffffffffffffffff"])
    for key in keys { #expect((try objects.size(of: key) != nil) == !gone.contains(key)) }
    #expect(Set(try objects.list()) == Set(keys).subtracting(gone))
    try objects.remove([])
  }

  @Test func diffIDMismatchIsRefused() throws {
    var tar = TarWriter()
    tar.entry("f", data: [1])
    let wrong = Digest.of([UInt8]([9]))
    #expect { _ = try unpack(tar, diffID: wrong) } throws: { ($0 as? LayerError)?.message.contains("diffID mismatch") == true }
  }
}
