import Foundation
import Testing

@testable import Unpack

/// `Hasher`: the SHA extensions' code (`CSha256`) against swift-crypto's
/// (`Hasher(accelerated: false)`) and GNU coreutils' `sha256sum`, alone and paired.
struct HasherTests {
  /// Deterministic bytes that are not periodic.
  static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
      x ^= x << 13
      x ^= x >> 7
      x ^= x << 17
      return UInt8(truncatingIfNeeded: x)
    }
  }

  static func digest(_ data: [UInt8], accelerated: Bool, pieces: [Int] = []) -> String {
    var h = Hasher(accelerated: accelerated)
    var at = 0
    data.withUnsafeBytes { all in
      for p in pieces where at < data.count {
        let n = min(p, data.count - at)
        h.update(UnsafeRawBufferPointer(rebasing: all[at..<(at + n)]))
        at += n
      }
      h.update(UnsafeRawBufferPointer(rebasing: all[at...]))
    }
    return h.finalize().hex
  }

  /// `CSha256`'s CPUID check agrees with the kernel's view of this CPU (/proc/cpuinfo's
  /// flags), so the extensions' code runs where it can and nowhere else.
  @Test func theExtensionsAreUsedWhereTheKernelSeesThem() throws {
    let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
    let flags = Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
    #expect(Hasher.acceleratedHere == (flags.contains("sha_ni") && flags.contains("ssse3") && flags.contains("sse4_1")))
  }

  @Test(.enabled(if: Hasher.acceleratedHere, "needs the x86 SHA extensions")) func everyLengthAroundTheBlockAndPaddingEdges() {
    for n in Array(0...200) + [447, 448, 449, 511, 512, 513, 4095, 4096, 65_537, 1 << 20] {
      let data = Self.bytes(n, seed: UInt64(n))
      let want = Self.digest(data, accelerated: false)
      #expect(Self.digest(data, accelerated: true) == want, "length \(n)")
      #expect(Self.digest(data, accelerated: true, pieces: [1, 63, 2, 64, 65, 7]) == want, "length \(n) in pieces")
    }
  }

  @Test(.enabled(if: Hasher.acceleratedHere, "needs the x86 SHA extensions")) func knownDigests() {
    // FIPS 180-4's examples.
    #expect(Self.digest(Array("abc".utf8), accelerated: true) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    #expect(Self.digest([], accelerated: true) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
    #expect(Self.digest(long, accelerated: true) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
  }

  @Test(.enabled(if: Hasher.acceleratedHere, "needs the x86 SHA extensions")) func agreesWithSha256sum() throws {
    let data = Self.bytes(3_000_017, seed: 42)
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("hasher-\(getpid())")
    try Data(data).write(to: file)
    defer { try? FileManager.default.removeItem(at: file) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    p.arguments = [file.path]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(String(text.prefix(64)) == Self.digest(data, accelerated: true, pieces: [1000, 1 << 16, 5]))
  }

  /// Two streams fed in pieces of unrelated sizes, some paired, some alone, either order.
  @Test(arguments: Hasher.acceleratedHere ? [true, false] : [false]) func pairedStreams(accelerated: Bool) {
    for round in 0..<40 {
      let a = Self.bytes(Int(Self.bytes(3, seed: UInt64(round)).reduce(0) { $0 * 256 + Int($1) } % 300_000), seed: UInt64(round) + 1000)
      let b = Self.bytes(Int(Self.bytes(3, seed: UInt64(round) + 7).reduce(0) { $0 * 256 + Int($1) } % 300_000), seed: UInt64(round) + 2000)
      var ha = Hasher(accelerated: accelerated)
      var hb = Hasher(accelerated: true)
      var (i, j) = (0, 0)
      let sizes = Self.bytes(4096, seed: UInt64(round) + 3000)
      var k = 0
      a.withUnsafeBytes { pa in
        b.withUnsafeBytes { pb in
          while i < a.count || j < b.count {
            let s1 = [0, 1, 63, 64, 65, 200, 4096, 10_000][Int(sizes[k % sizes.count]) % 8]
            let s2 = [0, 1, 63, 64, 65, 200, 4096, 10_000][Int(sizes[(k + 1) % sizes.count]) % 8]
            k += 2
            let n = min(s1, a.count - i)
            let m = min(s2, b.count - j)
            switch sizes[(k + 5) % sizes.count] % 3 {
            case 0:
              ha.update(
                UnsafeRawBufferPointer(rebasing: pa[i..<(i + n)]), pairedWith: &hb, UnsafeRawBufferPointer(rebasing: pb[j..<(j + m)]))
            case 1:
              hb.update(
                UnsafeRawBufferPointer(rebasing: pb[j..<(j + m)]), pairedWith: &ha, UnsafeRawBufferPointer(rebasing: pa[i..<(i + n)]))
            default:
              ha.update(UnsafeRawBufferPointer(rebasing: pa[i..<(i + n)]))
              hb.update(UnsafeRawBufferPointer(rebasing: pb[j..<(j + m)]))
            }
            i += n
            j += m
          }
        }
      }
      #expect(ha.finalize().hex == Self.digest(a, accelerated: false), "round \(round): a")
      #expect(hb.finalize().hex == Self.digest(b, accelerated: false), "round \(round): b")
    }
  }

  @Test func finalizeLeavesTheHasherAsItWas() {
    let data = Self.bytes(1000, seed: 9)
    var h = Hasher()
    data.withUnsafeBytes { h.update(UnsafeRawBufferPointer(rebasing: $0[0..<500])) }
    _ = h.finalize()
    data.withUnsafeBytes { h.update(UnsafeRawBufferPointer(rebasing: $0[500...])) }
    #expect(h.finalize().hex == Self.digest(data, accelerated: false))
  }
}
