import Crypto
import LayerStore

/// SHA-256 over a stream of buffers, ending in an OCI digest.
struct BlobHasher {
  private var state = SHA256()

  mutating func update(_ buffer: UnsafeRawBufferPointer) { state.update(bufferPointer: buffer) }

  func finalize() -> LayerStore.Digest { LayerStore.Digest("sha256:" + hex(state.finalize()))! }
}

/// The OCI digest of `bytes`.
func digest(of bytes: [UInt8]) -> LayerStore.Digest {
  LayerStore.Digest("sha256:" + hex(SHA256.hash(data: bytes)))!
}

func hex(_ bytes: some Sequence<UInt8>) -> String {
  let digits = Array("0123456789abcdef".utf8)
  var out: [UInt8] = []
  for b in bytes {
    out.append(digits[Int(b >> 4)])
    out.append(digits[Int(b & 0xf)])
  }
  return String(decoding: out, as: UTF8.self)
}
