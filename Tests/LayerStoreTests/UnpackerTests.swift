import Foundation
import LayerStore
import SnapshotSys
import Testing

/// A minimal ustar writer: enough to build the tars these tests need byte by byte.
struct TarWriter {
  var bytes: [UInt8] = []

  mutating func entry(_ name: String, type: UInt8 = 0x30, mode: Int = 0o644, data: [UInt8] = [], link: String = "", mtime: Int = 1_600_000_000) {
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
    for i in 148..<156 { h[i] = 0x20 }
    let sum = h.reduce(0) { $0 + Int($1) }
    octal(sum, 148, 7)
    bytes += h + data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
  }

  var finished: [UInt8] { bytes + [UInt8](repeating: 0, count: 1024) }
}

/// A blob source over bytes in memory.
final class BytesSource: ByteSource {
  let bytes: [UInt8]
  var offset = 0
  init(_ bytes: [UInt8]) { self.bytes = bytes }
  func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    let n = min(buffer.count, bytes.count - offset)
    bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
    offset += n
    return n
  }
}

@Suite struct UnpackerTests {
  let root: String
  let objects: ObjectStore

  init() throws {
    root = NSTemporaryDirectory() + "layerstore-" + UUID().uuidString
    try Sys.mkdirAll(root + "/layer", mode: 0o755)
    objects = try ObjectStore(path: root + "/o")
  }

  func unpack(_ tar: TarWriter, into dir: String = "layer", diffID: Digest? = nil) throws(LayerError) -> UnpackedLayer {
    try Unpacker.unpack(BytesSource(tar.finished), LayerDescription(name: "test", compression: .none, digest: nil, diffID: diffID),
                        into: root + "/" + dir, objects: objects)
  }

  @Test func filesAreUnpackedAndDeduplicated() throws {
    var tar = TarWriter()
    tar.entry("dir/", type: 0x35, mode: 0o755)
    tar.entry("dir/a", data: Array("same".utf8))
    tar.entry("dir/b", data: Array("same".utf8))
    tar.entry("dir/c", mode: 0o600, data: Array("same".utf8))
    let layer = try unpack(tar)
    #expect(layer.entries == 4)
    #expect(layer.fileBytes == 12)
    #expect(layer.objects.count == 2)  // a and b share; c differs by mode
    #expect(layer.diffID == Digest.of(tar.finished))
    let a = try Sys.lstat(root + "/layer/dir/a"), b = try Sys.lstat(root + "/layer/dir/b"), c = try Sys.lstat(root + "/layer/dir/c")
    #expect(a.st_ino == b.st_ino)
    #expect(a.st_ino != c.st_ino)
    #expect(a.st_mtim.tv_sec == 1_600_000_000)
    #expect(try String(contentsOfFile: root + "/layer/dir/c", encoding: .utf8) == "same")
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

  @Test func diffIDMismatchIsRefused() throws {
    var tar = TarWriter()
    tar.entry("f", data: [1])
    let wrong = Digest.of([UInt8]([9]))
    #expect { _ = try unpack(tar, diffID: wrong) } throws: { ($0 as? LayerError)?.message.contains("diffID mismatch") == true }
  }
}
