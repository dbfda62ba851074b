import CIsal

/// A gzip stream (RFC 1952: one member or several, concatenated) inflated with ISA-L's
/// igzip, which checks each member's CRC-32 and length as it ends.
///
/// Why not libarchive's gzip filter, which is zlib: inflating is what one layer's unpack
/// cannot go faster than, and igzip does it in well under half zlib's time (docs/benchmarks.md,
/// "Layer import"; `scripts/bench-inflate-floor`). Like Go's gzip reader (and so
/// containerd), anything after the last member that is not another member is an error.
///
/// Feed it input with `feed`, then call `inflate` until it returns less than it was given
/// room for: the input is then used up (or waits behind a finished member for `feed`).
/// `finish` at the end of the input says whether the stream was whole.
final class Gunzip {
  enum Failure: Error, Equatable {
    /// The first bytes are not a gzip header.
    case notGzip
    /// A later member's header, a deflate block or a checksum is wrong (igzip's code).
    case corrupt(Int32)
    /// The input ended inside a member, or held none.
    case truncated
  }

  private let state = UnsafeMutablePointer<inflate_state>.allocate(capacity: 1)
  /// The current member's header, parsed by `isal_read_gzip_header` before `isal_inflate`
  /// runs: left to `isal_inflate`, a header split between two pieces of input is parsed
  /// with a header record of its own call's stack, whose flags the next call no longer has
  /// (ISA-L 2.30), and a valid member fails its checksum.
  private let header = UnsafeMutablePointer<isal_gzip_header>.allocate(capacity: 1)
  private var headerRead = false
  /// The current member ended: new input starts the next one.
  private var memberEnded = false
  private var members = 0

  init() {
    isal_inflate_init(state)
    state.pointee.crc_flag = UInt32(ISAL_GZIP)
    isal_gzip_header_init(header)
  }

  deinit {
    state.deallocate()
    header.deallocate()
  }

  /// Hands over the next piece of input, which must stay valid until `inflate` has used it
  /// up. Only call it when the previous piece is used up.
  func feed(_ input: UnsafeRawBufferPointer) {
    precondition(state.pointee.avail_in == 0, "gzip input fed before the last was used")
    guard let base = input.baseAddress, !input.isEmpty else { return }
    state.pointee.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: UInt8.self))
    state.pointee.avail_in = UInt32(input.count)
  }

  /// Inflates into `out`; returns how many bytes it wrote. Fewer than `out.count` means the
  /// input is used up.
  func inflate(into out: UnsafeMutableRawBufferPointer) throws(Failure) -> Int {
    guard let base = out.baseAddress, !out.isEmpty else { return 0 }
    state.pointee.next_out = base.assumingMemoryBound(to: UInt8.self)
    state.pointee.avail_out = UInt32(min(out.count, Int(UInt32.max)))
    let room = Int(state.pointee.avail_out)
    while true {
      if memberEnded {
        guard state.pointee.avail_in > 0 else { break }
        startMember()
      }
      if !headerRead {
        let rc = isal_read_gzip_header(state, header)
        if rc == ISAL_END_INPUT { break }  // the rest of the header comes with more input
        if rc != ISAL_DECOMP_OK { throw members == 0 && rc == ISAL_INVALID_WRAPPER ? .notGzip : .corrupt(rc) }
        headerRead = true
      }
      let before = (state.pointee.avail_in, state.pointee.avail_out)
      let rc = isal_inflate(state)
      if rc < 0 { throw .corrupt(rc) }  // the header is read: a wrapper error is the trailer's
      if state.pointee.block_state == ISAL_BLOCK_FINISH {
        memberEnded = true
        members += 1
        continue
      }
      if state.pointee.avail_out == 0 || state.pointee.avail_in == 0 { break }
      // Neither used input nor wrote: nothing more will come of this input (igzip asks
      // for a dictionary only in zlib streams; a guard, not a case seen).
      if (state.pointee.avail_in, state.pointee.avail_out) == before { throw .corrupt(rc) }
    }
    return room - Int(state.pointee.avail_out)
  }

  /// The input has ended: throws unless it ended just after a member.
  func finish() throws(Failure) {
    if !memberEnded { throw .truncated }
  }

  private func startMember() {
    let input = (state.pointee.next_in, state.pointee.avail_in)
    isal_inflate_reset(state)
    state.pointee.crc_flag = UInt32(ISAL_GZIP)
    (state.pointee.next_in, state.pointee.avail_in) = input
    isal_gzip_header_init(header)
    headerRead = false
    memberEnded = false
  }
}

extension Gunzip.Failure: CustomStringConvertible {
  var description: String {
    switch self {
    case .notGzip: "not a gzip stream"
    case .truncated: "the gzip stream is empty or ends inside a member"
    case .corrupt(let rc):
      switch rc {
      case ISAL_INVALID_WRAPPER: "a gzip member's header is invalid (or data follows the last member)"
      case ISAL_UNSUPPORTED_METHOD: "a gzip member is not deflate-compressed"
      case ISAL_INCORRECT_CHECKSUM: "a gzip member's checksum (of its data or its header) does not match"
      case ISAL_INVALID_BLOCK: "invalid deflate data (an invalid block)"
      case ISAL_INVALID_LOOKBACK: "invalid deflate data (a distance beyond the window)"
      case ISAL_INVALID_SYMBOL: "invalid deflate data (an invalid symbol)"
      default: "invalid deflate data (igzip error \(rc))"
      }
    }
  }
}
