import CSha256
import Crypto

/// A content digest in OCI form, `sha256:<64 lowercase hex>` (the only algorithm OCI
/// images use in practice and the only one we accept).
public struct Digest: Hashable, Sendable, CustomStringConvertible {
  /// The 64 lowercase hex characters.
  public let hex: String

  public init?(_ string: String) {
    guard string.hasPrefix("sha256:") else { return nil }
    let hex = string.dropFirst(7)
    guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else { return nil }
    self.hex = String(hex)
  }

  init(bytes: some Sequence<UInt8>) {
    hex = Self.hexString(bytes)
  }

  public var description: String { "sha256:" + hex }

  /// The OCI chain ID of a layer with `diffID` on top of the chain `parent`:
  /// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
  public static func chainID(parent: Digest?, diffID: Digest) -> Digest {
    guard let parent else { return diffID }
    return Digest(bytes: SHA256.hash(data: Array("\(parent) \(diffID)".utf8)))
  }

  /// The digest of `bytes`.
  public static func of(_ bytes: some Sequence<UInt8>) -> Digest {
    Digest(bytes: SHA256.hash(data: Array(bytes)))
  }

  static func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(64)
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 0xf)])
    }
    return String(decoding: out, as: UTF8.self)
  }
}

/// SHA-256 over a stream of buffers: the x86 SHA extensions where the CPU has them
/// (`CSha256`), else swift-crypto's. With the extensions two hashers can be fed at once
/// (`update(_:pairedWith:_:)`), which costs little more than feeding one: an unpack hashes
/// the tar stream and the files in it so.
public struct Hasher {
  private var accelerated: Sha256Blocks?
  private var portable: SHA256?  // only where `accelerated` is nil

  /// Whether this CPU has the SHA extensions.
  public static let acceleratedHere = csha256_accelerated() != 0

  /// `accelerated` false uses swift-crypto's whatever the CPU (for tests); true uses the
  /// extensions where this CPU has them.
  public init(accelerated: Bool = Hasher.acceleratedHere) {
    if accelerated && Self.acceleratedHere {
      self.accelerated = Sha256Blocks()
    } else {
      portable = SHA256()
    }
  }

  public mutating func update(_ buffer: UnsafeRawBufferPointer) {
    if accelerated != nil {
      accelerated!.update(buffer)
    } else {
      portable!.update(bufferPointer: buffer)
    }
  }

  /// Feeds `buffer` to this hasher and `otherBuffer` to `other`, both streams at once where
  /// both hashers use the extensions (the blocks the two have in common, interleaved).
  public mutating func update(_ buffer: UnsafeRawBufferPointer, pairedWith other: inout Hasher, _ otherBuffer: UnsafeRawBufferPointer) {
    guard accelerated != nil, other.accelerated != nil else {
      update(buffer)
      other.update(otherBuffer)
      return
    }
    Sha256Blocks.update(&accelerated!, buffer, &other.accelerated!, otherBuffer)
  }

  /// Feeds `count` zero bytes (holes of sparse files).
  mutating func updateZeros(_ count: Int64) {
    var left = count
    while left > 0 {
      let n = Int(min(left, Int64(Self.zeros.count)))
      Self.zeros.withUnsafeBytes { update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
      left -= Int64(n)
    }
  }

  public func finalize() -> Digest { Digest(bytes: finalizeBytes()) }

  /// The raw 32 bytes.
  func finalizeBytes() -> [UInt8] {
    if let accelerated { return accelerated.finalize() }
    return Array(portable!.finalize())
  }

  private static let zeros = [UInt8](repeating: 0, count: 65_536)
}

/// SHA-256 (FIPS 180-4) over `CSha256`'s block functions: the state, the bytes of a block
/// not yet full, and the length.
struct Sha256Blocks {
  private var h: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19
  )
  private var block: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
  private var buffered = 0
  private var length: UInt64 = 0

  mutating func update(_ data: UnsafeRawBufferPointer) {
    let rest = head(data)
    tail(rest)
  }

  /// Both streams: the blocks they have in common at once, the rest one by one.
  static func update(_ a: inout Sha256Blocks, _ da: UnsafeRawBufferPointer, _ b: inout Sha256Blocks, _ db: UnsafeRawBufferPointer) {
    var ra = a.head(da)
    var rb = b.head(db)
    let blocks = min(ra.count, rb.count) / 64
    if blocks > 0 {
      withUnsafeMutableBytes(of: &a.h) { ha in
        withUnsafeMutableBytes(of: &b.h) { hb in
          csha256_blocks2(
            ha.baseAddress!.assumingMemoryBound(to: UInt32.self), ra.baseAddress!.assumingMemoryBound(to: UInt8.self),
            hb.baseAddress!.assumingMemoryBound(to: UInt32.self), rb.baseAddress!.assumingMemoryBound(to: UInt8.self), blocks)
        }
      }
      ra = UnsafeRawBufferPointer(rebasing: ra[(blocks * 64)...])
      rb = UnsafeRawBufferPointer(rebasing: rb[(blocks * 64)...])
    }
    a.tail(ra)
    b.tail(rb)
  }

  /// Counts `data` and completes the partial block from it: what is left of `data`, empty
  /// or starting at a block boundary.
  private mutating func head(_ data: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
    length &+= UInt64(data.count)
    guard buffered > 0, !data.isEmpty else { return data }
    let n = min(64 - buffered, data.count)
    withUnsafeMutableBytes(of: &block) { $0.baseAddress!.advanced(by: buffered).copyMemory(from: data.baseAddress!, byteCount: n) }
    buffered += n
    if buffered == 64 {
      compressBlock()
      buffered = 0
    }
    return UnsafeRawBufferPointer(rebasing: data[n...])
  }

  /// Hashes the whole blocks of `data` (at a block boundary) and keeps the rest.
  private mutating func tail(_ data: UnsafeRawBufferPointer) {
    guard !data.isEmpty else { return }
    let blocks = data.count / 64
    if blocks > 0 {
      withUnsafeMutableBytes(of: &h) {
        csha256_blocks($0.baseAddress!.assumingMemoryBound(to: UInt32.self), data.baseAddress!.assumingMemoryBound(to: UInt8.self), blocks)
      }
    }
    let left = data.count - blocks * 64
    if left > 0 {
      withUnsafeMutableBytes(of: &block) { $0.baseAddress!.copyMemory(from: data.baseAddress! + blocks * 64, byteCount: left) }
      buffered = left
    }
  }

  private mutating func compressBlock() {
    withUnsafeMutableBytes(of: &h) { hp in
      withUnsafeBytes(of: &block) { bp in
        csha256_blocks(hp.baseAddress!.assumingMemoryBound(to: UInt32.self), bp.baseAddress!.assumingMemoryBound(to: UInt8.self), 1)
      }
    }
  }

  /// The digest: the padding (0x80, zeros, the length in bits, big-endian) hashed on a copy.
  func finalize() -> [UInt8] {
    var copy = self
    let bits = length &* 8
    var pad = [UInt8](repeating: 0, count: 72)
    pad[0] = 0x80
    let padLength = (buffered < 56 ? 56 : 120) - buffered
    for i in 0..<8 { pad[padLength + i] = UInt8(truncatingIfNeeded: bits >> (56 - 8 * UInt64(i))) }
    pad.withUnsafeBytes { copy.update(UnsafeRawBufferPointer(rebasing: $0[0..<(padLength + 8)])) }
    var out: [UInt8] = []
    out.reserveCapacity(32)
    withUnsafeBytes(of: &copy.h) { words in
      for w in words.bindMemory(to: UInt32.self) {
        for shift in [24, 16, 8, 0] as [UInt32] { out.append(UInt8(truncatingIfNeeded: w >> shift)) }
      }
    }
    return out
  }
}
