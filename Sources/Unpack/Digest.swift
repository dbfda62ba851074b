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

/// SHA-256 over a stream of buffers.
public struct Hasher {
  private var state = SHA256()

  public init() {}

  public mutating func update(_ buffer: UnsafeRawBufferPointer) {
    state.update(bufferPointer: buffer)
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

  public func finalize() -> Digest { Digest(bytes: state.finalize()) }

  /// The raw 32 bytes.
  func finalizeBytes() -> [UInt8] { Array(state.finalize()) }

  private static let zeros = [UInt8](repeating: 0, count: 65_536)
}
