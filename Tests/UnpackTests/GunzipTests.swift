import CIsal
import Foundation
import Testing

@testable import Unpack

/// `Gunzip`: streams made by GNU gzip (an independent encoder), fed in pieces of every size.
struct GunzipTests {
  /// `data` compressed by `gzip -c` with extra arguments.
  static func gzip(_ data: [UInt8], _ args: [String] = []) throws -> [UInt8] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/gzip")
    p.arguments = ["-c"] + args
    let input = Pipe()
    let output = Pipe()
    p.standardInput = input
    p.standardOutput = output
    try p.run()
    let writer = Thread {
      input.fileHandleForWriting.write(Data(data))
      try? input.fileHandleForWriting.close()
    }
    writer.start()
    let out = output.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    #expect(p.terminationStatus == 0)
    return [UInt8](out)
  }

  /// Text-like bytes that compress, with some incompressible runs.
  static func sample(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed | 1
    var out = [UInt8]()
    out.reserveCapacity(count)
    while out.count < count {
      x ^= x << 13
      x ^= x >> 7
      x ^= x << 17
      if x % 5 == 0 {
        for _ in 0..<min(64, count - out.count) {
          x ^= x << 13
          x ^= x >> 7
          x ^= x << 17
          out.append(UInt8(truncatingIfNeeded: x))
        }
      } else {
        out.append(contentsOf: Array("line \(x % 1000) of a file\n".utf8).prefix(count - out.count))
      }
    }
    return out
  }

  /// Inflates `stream`, fed in pieces of `piece` bytes, into outputs of `room` bytes.
  static func inflate(_ stream: [UInt8], piece: Int, room: Int) throws(Gunzip.Failure) -> [UInt8] {
    let gz = Gunzip()
    var out = [UInt8]()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: room, alignment: 16)
    defer { buffer.deallocate() }
    let input = UnsafeMutableRawBufferPointer.allocate(byteCount: max(stream.count, 1), alignment: 16)
    defer { input.deallocate() }
    input.copyBytes(from: stream)
    var offset = 0
    while true {
      clobberStack()
      let n = try gz.inflate(into: buffer)
      out.append(contentsOf: buffer[0..<n])
      if n == room { continue }
      if offset == stream.count { break }
      let end = min(offset + piece, stream.count)
      gz.feed(UnsafeRawBufferPointer(rebasing: input[offset..<end]))
      offset = end
    }
    try gz.finish()
    return out
  }

  /// Writes over the stack below the caller, as other calls between two pieces of input do.
  @inline(never)
  static func clobberStack() {
    withUnsafeTemporaryAllocation(byteCount: 16384, alignment: 16) { $0.initializeMemory(as: UInt8.self, repeating: 0xA5) }
  }

  /// CRC-32 (gzip's), bit by bit.
  static func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
      c ^= UInt32(b)
      for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
    }
    return ~c
  }

  /// A member of `data` whose header has every optional field (extra, name, comment and a
  /// header CRC), around GNU gzip's deflate data.
  static func fullHeaderMember(_ data: [UInt8]) throws -> [UInt8] {
    let plain = try gzip(data, ["-n"])  // a 10-byte header without optional fields
    #expect(plain[3] == 0)
    var header: [UInt8] = [0x1F, 0x8B, 8, 2 | 4 | 8 | 16, 1, 2, 3, 4, 0, 3]
    header += [6, 0] + Array("AB".utf8) + [2, 0] + Array("xy".utf8)
    header += Array("layer.tar".utf8) + [0] + Array("a comment".utf8) + [0]
    let hcrc = crc32(header) & 0xFFFF
    header += [UInt8(hcrc & 0xFF), UInt8(hcrc >> 8)]
    return header + plain[10...]
  }

  /// Headers split anywhere between pieces of input, with the stack written over between
  /// calls: ISA-L's own header parsing inside isal_inflate loses the flags then.
  @Test(arguments: [1, 2, 3, 5, 11, 17, 29])
  func headersSplitAnywhere(piece: Int) throws {
    let a = Self.sample(20_000, seed: 8)
    let b = Self.sample(3_000, seed: 9)
    let stream = try Self.fullHeaderMember(a) + Self.fullHeaderMember([]) + Self.fullHeaderMember(b)
    #expect(try Self.inflate(stream, piece: piece, room: 4096) == a + b)
    // The header CRC is checked.
    var bad = try Self.fullHeaderMember(a)
    bad[33] ^= 1
    #expect(throws: Gunzip.Failure.corrupt(ISAL_INCORRECT_CHECKSUM)) { try Self.inflate(bad, piece: piece, room: 4096) }
  }

  @Test(arguments: [(1, 7), (3, 1 << 16), (4096, 100), (1 << 20, 1 << 20)])
  func oneMember(piece: Int, room: Int) throws {
    let data = Self.sample(300_000, seed: 7)
    let stream = try Self.gzip(data)
    #expect(try Self.inflate(stream, piece: piece, room: room) == data)
  }

  /// Several members, as `cat a.gz b.gz` and parallel compressors make; a member may be
  /// empty and may carry a file name in its header.
  @Test(arguments: [1, 5, 997, 1 << 20])
  func concatenatedMembers(piece: Int) throws {
    let a = Self.sample(70_000, seed: 1)
    let b = Self.sample(0, seed: 2)
    let c = Self.sample(40_000, seed: 3)
    let named = FileManager.default.temporaryDirectory.appendingPathComponent("gunzip-" + UUID().uuidString)
    defer { try? FileManager.default.removeItem(at: named) }
    try Data(c).write(to: named)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/gzip")
    p.arguments = ["-k", "-N", "-f", named.path]
    try p.run()
    p.waitUntilExit()
    #expect(p.terminationStatus == 0)
    let cz = [UInt8](try Data(contentsOf: URL(fileURLWithPath: named.path + ".gz")))
    try? FileManager.default.removeItem(atPath: named.path + ".gz")
    let stream = try Self.gzip(a) + Self.gzip(b, ["-1"]) + cz
    #expect(try Self.inflate(stream, piece: piece, room: 65536) == a + b + c)
  }

  @Test func notGzip() throws {
    let tar = Self.sample(10_000, seed: 4)
    #expect(throws: Gunzip.Failure.notGzip) { try Self.inflate(tar, piece: 4096, room: 4096) }
  }

  @Test func emptyAndTruncated() throws {
    #expect(throws: Gunzip.Failure.truncated) { try Self.inflate([], piece: 1, room: 4096) }
    let stream = try Self.gzip(Self.sample(100_000, seed: 5))
    for cut in [1, 9, 10, stream.count / 2, stream.count - 8, stream.count - 1] {
      #expect(throws: Gunzip.Failure.truncated) { try Self.inflate(Array(stream[0..<cut]), piece: 777, room: 4096) }
    }
  }

  /// A flipped bit in the data or the trailer, and bytes after the last member, are errors;
  /// none ends as a short or wrong output.
  @Test func corrupt() throws {
    let data = Self.sample(100_000, seed: 6)
    let stream = try Self.gzip(data)
    var crc = stream
    crc[crc.count - 6] ^= 0x01
    #expect(throws: Gunzip.Failure.corrupt(ISAL_INCORRECT_CHECKSUM)) { try Self.inflate(crc, piece: 4096, room: 4096) }
    var size = stream
    size[size.count - 2] ^= 0x01
    #expect(throws: Gunzip.Failure.self) { try Self.inflate(size, piece: 4096, room: 4096) }
    for at in stride(from: 20, to: stream.count - 8, by: stream.count / 13) {
      var bad = stream
      bad[at] ^= 0x40
      #expect(throws: Gunzip.Failure.self) { try Self.inflate(bad, piece: 4096, room: 4096) }
    }
    for tail: [UInt8] in [[0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Array("trailing".utf8)] {
      #expect(throws: Gunzip.Failure.self) { try Self.inflate(stream + tail, piece: 4096, room: 4096) }
    }
  }
}
