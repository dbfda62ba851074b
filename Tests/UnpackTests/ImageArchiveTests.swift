import Foundation
import Testing

@testable import SnapshotSys
@testable import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// `ImageArchive.blobsInPlace` against archives GNU tar writes in each of its formats: every
/// blob it finds reads back, through a `FileSource` range, as the bytes that went in; what
/// it cannot vouch for gives no blob at all (then the archive is extracted as before).
@Suite struct ImageArchiveTests {
  /// A directory with an OCI layout's names: two blobs (one with a name long enough for the
  /// formats' long-name records when nested deeper), an index, and a small file.
  final class Tree {
    let dir: String
    let blobs: [String: [UInt8]]
    init() throws {
      var template = Array("/tmp/snapshotd-archive-XXXXXX".utf8CString)
      dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
      try Sys.mkdirAll(dir + "/src/blobs/sha256", mode: 0o755)
      var made: [String: [UInt8]] = [:]
      for (i, size) in [70_000, 1_500].enumerated() {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
        let name = "blobs/sha256/" + Digest.of(bytes).hex
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/src/" + name))
        made[name] = bytes
      }
      blobs = made
      try Data("{}".utf8).write(to: URL(fileURLWithPath: dir + "/src/index.json"))
    }
    deinit { try? SnapshotSys.Tree.remove(dir) }

    /// `tar` with `args` over the layout; the archive's path.
    func archive(_ name: String, _ args: [String]) throws -> String {
      let out = dir + "/" + name
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/bin/tar")
      p.arguments = ["-C", dir + "/src", "-cf", out] + args + ["index.json", "blobs"]
      try p.run()
      p.waitUntilExit()
      #expect(p.terminationStatus == 0)
      return out
    }
  }

  func readBack(_ path: String, _ range: Range<Int64>) throws -> [UInt8] {
    try FileSource.readAll(path, limit: Int64(range.count), range: range)
  }

  @Test(arguments: [["--format=ustar"], ["--format=pax"], ["--format=gnu"], ["--format=pax", "--transform=s|^|./|"]])
  func everyBlobReadsBackInPlace(_ args: [String]) throws {
    let tree = try Tree()
    let path = try tree.archive("a.tar", args)
    let found = ImageArchive.blobsInPlace(path, minimum: 1)
    #expect(Set(found.keys) == Set(tree.blobs.keys), "\(args)")
    for (name, range) in found { #expect(try readBack(path, range) == tree.blobs[name], "\(name) \(args)") }
    // Only what is large enough, and never the index.
    let large = ImageArchive.blobsInPlace(path, minimum: 10_000)
    #expect(Set(large.keys) == Set(tree.blobs.filter { $0.value.count >= 10_000 }.keys))
  }

  @Test func whatCannotBeVouchedForGivesNone() throws {
    let tree = try Tree()
    let plain = try tree.archive("a.tar", ["--format=ustar"])
    #expect(!ImageArchive.blobsInPlace(plain, minimum: 1).isEmpty)
    // Compressed: not a tar header at offset 0.
    let gz = try tree.archive("a.tar.gz", ["--format=ustar", "-z"])
    #expect(ImageArchive.blobsInPlace(gz, minimum: 1).isEmpty)
    // A header past the first whose checksum does not match: index.json's header and its
    // one block of data come first, so the second header starts at 1024.
    var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: plain)))
    #expect(String(decoding: bytes[0..<10], as: UTF8.self) == "index.json")
    bytes[1024 + 5] ^= 0x01
    let bad = tree.dir + "/bad.tar"
    try Data(bytes).write(to: URL(fileURLWithPath: bad))
    #expect(ImageArchive.blobsInPlace(bad, minimum: 1).isEmpty)
    // A pax record whose length does not fit its data.
    let pax = try tree.archive("pax.tar", ["--format=pax", "--pax-option=comment:=x"])
    var paxBytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: pax)))
    #expect(!ImageArchive.blobsInPlace(pax, minimum: 1).isEmpty)
    let record = Array("comment=x".utf8)
    let at = try #require((0..<(paxBytes.count - record.count)).first { Array(paxBytes[$0..<($0 + record.count)]) == record })
    paxBytes[at - 2] = UInt8(ascii: "9")  // "12 comment=x" claims 92 bytes (the header's checksum does not cover it)
    let badPax = tree.dir + "/badpax.tar"
    try Data(paxBytes).write(to: URL(fileURLWithPath: badPax))
    #expect(ImageArchive.blobsInPlace(badPax, minimum: 1).isEmpty)
    // Cut short: a header or the end blocks missing.
    let cut = tree.dir + "/cut.tar"
    try Data(try [UInt8](Data(contentsOf: URL(fileURLWithPath: plain))).prefix(1000)).write(to: URL(fileURLWithPath: cut))
    #expect(ImageArchive.blobsInPlace(cut, minimum: 1).isEmpty)
    // A blob named twice (appended again).
    let twice = try tree.archive("twice.tar", ["--format=ustar"])
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/tar")
    p.arguments = ["-C", tree.dir + "/src", "-rf", twice, "--format=ustar", tree.blobs.keys.sorted()[0]]
    try p.run()
    p.waitUntilExit()
    #expect(p.terminationStatus == 0)
    #expect(ImageArchive.blobsInPlace(twice, minimum: 1).isEmpty)
  }

  @Test func aRangePastTheFilesEndIsAnError() throws {
    let tree = try Tree()
    let path = try tree.archive("a.tar", ["--format=ustar"])
    let size = Int64(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))).count)
    #expect(throws: LayerError.self) { _ = try readBack(path, (size - 10)..<(size + 10)) }
  }
}
