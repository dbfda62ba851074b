// HTTP/2 framing (RFC 9113, sections 4 and 6): the codes frames carry, decoding frames out of
// the bytes received, checking the payloads of the frames the server reads, and encoding the
// frames it sends. Nothing here knows streams, calls or flow-control windows: that is
// H2Connection's part.

/// Frame types (RFC 9113, section 6). Frames of any other type are ignored.
enum FrameType: UInt8, Sendable {
  case data = 0x0
  case headers = 0x1
  case priority = 0x2
  case rstStream = 0x3
  case settings = 0x4
  case pushPromise = 0x5
  case ping = 0x6
  case goAway = 0x7
  case windowUpdate = 0x8
  case continuation = 0x9
}

/// Frame flags (RFC 9113, section 6). A bit means different things on different frame types:
/// 0x1 is END_STREAM on DATA and HEADERS, ACK on SETTINGS and PING.
struct FrameFlags: OptionSet, Sendable {
  let rawValue: UInt8

  init(rawValue: UInt8) { self.rawValue = rawValue }

  /// DATA, HEADERS: the sender's last frame on the stream.
  static let endStream = FrameFlags(rawValue: 0x1)
  /// SETTINGS, PING: the frame acknowledges the peer's.
  static let ack = FrameFlags(rawValue: 0x1)
  /// HEADERS, CONTINUATION: the header block ends with this frame.
  static let endHeaders = FrameFlags(rawValue: 0x4)
  /// DATA, HEADERS: the payload starts with a pad length and ends with that much padding.
  static let padded = FrameFlags(rawValue: 0x8)
  /// HEADERS: the (deprecated) priority fields follow the pad length.
  static let priority = FrameFlags(rawValue: 0x20)
}

/// Error codes of RST_STREAM and GOAWAY (RFC 9113, section 7).
enum ErrorCode: UInt32, Sendable {
  case noError = 0x0
  case protocolError = 0x1
  case internalError = 0x2
  case flowControlError = 0x3
  case settingsTimeout = 0x4
  case streamClosed = 0x5
  case frameSizeError = 0x6
  case refusedStream = 0x7
  case cancel = 0x8
  case compressionError = 0x9
  case connectError = 0xa
  case enhanceYourCalm = 0xb
  case inadequateSecurity = 0xc
  case http11Required = 0xd
}

/// SETTINGS parameters (RFC 9113, section 6.5.2). Others are ignored.
enum SettingID: UInt16, Sendable {
  case headerTableSize = 0x1
  case enablePush = 0x2
  case maxConcurrentStreams = 0x3
  case initialWindowSize = 0x4
  case maxFrameSize = 0x5
  case maxHeaderListSize = 0x6
}

/// One parameter of a SETTINGS frame.
struct Setting: Equatable, Sendable {
  let id: SettingID
  let value: UInt32
}

/// A connection error (RFC 9113, section 5.4.1): the connection ends with a GOAWAY carrying
/// `code`; `reason` is only logged.
struct ConnectionError: Error, Equatable {
  let code: ErrorCode
  let reason: String

  init(_ code: ErrorCode, _ reason: String) {
    self.code = code
    self.reason = reason
  }
}

/// One frame as received: its header's fields and its payload (RFC 9113, section 4.1).
struct Frame: Equatable {
  /// Bytes of the header before every payload.
  static let headerSize = 9

  /// Nil for a type this implementation does not know (to be ignored).
  let type: FrameType?
  let flags: FrameFlags
  /// The stream identifier, its reserved bit cleared.
  let stream: UInt32
  let payload: ArraySlice<UInt8>
}

// MARK: Decoding

/// Takes frames out of the bytes received on a connection. Bytes are read straight into its
/// buffer (``fill(_:read:)``) or appended (``append(_:)``); ``next()`` returns each frame
/// once all of it is in.
struct FrameDecoder {
  /// The largest frame payload accepted: SETTINGS_MAX_FRAME_SIZE's initial value, which the
  /// server never raises.
  static let maxFrameSize = 16_384
  /// The client connection preface (RFC 9113, section 3.4) that comes before its SETTINGS.
  static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

  private var buffer = [UInt8](repeating: 0, count: 1 << 16)
  private var start = 0
  private var end = 0

  /// Bytes received and not yet taken.
  var buffered: Int { end - start }

  /// Bytes that must be buffered for ``next()`` to return a frame: a header, then, once the
  /// header is in, the whole frame.
  var needed: Int {
    guard buffered >= Frame.headerSize else { return Frame.headerSize }
    return Frame.headerSize + payloadLength
  }

  private var payloadLength: Int {
    Int(buffer[start]) << 16 | Int(buffer[start + 1]) << 8 | Int(buffer[start + 2])
  }

  /// Calls `read` with the free space after the buffered bytes until at least `count` bytes
  /// are buffered; `read` returns how many bytes it put there, 0 at the end of input (then
  /// false).
  mutating func fill(_ count: Int, read: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows -> Bool {
    while end - start < count {
      if start > 0 && start == end {
        start = 0
        end = 0
      } else if buffer.count - start < count || end == buffer.count {
        buffer.replaceSubrange(0..<(end - start), with: buffer[start..<end])
        end -= start
        start = 0
        if buffer.count < count { buffer += [UInt8](repeating: 0, count: count - buffer.count) }
      }
      let free = end
      let n = try buffer.withUnsafeMutableBytes { raw in
        try read(UnsafeMutableRawBufferPointer(rebasing: raw[free...]))
      }
      if n == 0 { return false }
      end += n
    }
    return true
  }

  /// Buffers `bytes` as if they had been read.
  mutating func append(_ bytes: [UInt8]) {
    var rest = bytes[...]
    _ = fill(buffered + bytes.count) { space in
      let n = min(space.count, rest.count)
      space.copyBytes(from: rest.prefix(n))
      rest = rest.dropFirst(n)
      return n
    }
  }

  /// Takes the client connection preface: false while fewer bytes than it has are buffered.
  mutating func preface() throws(ConnectionError) -> Bool {
    guard buffered >= Self.preface.count else { return false }
    guard buffer[start..<start + Self.preface.count].elementsEqual(Self.preface) else {
      throw ConnectionError(.protocolError, "bad connection preface")
    }
    start += Self.preface.count
    return true
  }

  /// Takes the next frame: nil until all of it is buffered. A frame longer than
  /// ``maxFrameSize`` is a FRAME_SIZE_ERROR as soon as its header is in.
  mutating func next() throws(ConnectionError) -> Frame? {
    guard buffered >= Frame.headerSize else { return nil }
    let length = payloadLength
    guard length <= Self.maxFrameSize else {
      throw ConnectionError(.frameSizeError, "frame of \(length) bytes exceeds SETTINGS_MAX_FRAME_SIZE")
    }
    guard buffered >= Frame.headerSize + length else { return nil }
    let s = start
    let payload = s + Frame.headerSize
    let frame = Frame(
      type: FrameType(rawValue: buffer[s + 3]),
      flags: FrameFlags(rawValue: buffer[s + 4]),
      stream: buffer.uint32(at: s + 5) & 0x7fff_ffff,
      payload: buffer[payload..<(payload + length)])
    start = payload + length
    return frame
  }
}

extension Frame {
  /// Checks what RFC 9113 (section 6) fixes of each frame type's shape: the stream it may
  /// be sent on (PROTOCOL_ERROR) and its length (FRAME_SIZE_ERROR). Unknown types pass.
  func checkShape() throws(ConnectionError) {
    guard let type else { return }
    var name: String { "\(type)".uppercased() }  // for the errors only: not built per frame
    switch type {
    case .data, .headers, .priority, .rstStream, .continuation:
      guard stream != 0 else { throw ConnectionError(.protocolError, "\(name) on stream 0") }
    case .settings, .ping, .goAway:
      guard stream == 0 else { throw ConnectionError(.protocolError, "\(name) on stream \(stream)") }
    case .pushPromise, .windowUpdate: break
    }
    let sizeOK: Bool
    switch type {
    case .priority: sizeOK = payload.count == 5
    case .rstStream, .windowUpdate: sizeOK = payload.count == 4
    case .ping: sizeOK = payload.count == 8
    case .goAway: sizeOK = payload.count >= 8
    case .settings: sizeOK = flags.contains(.ack) ? payload.isEmpty : payload.count % 6 == 0
    case .data, .headers, .pushPromise, .continuation: sizeOK = true
    }
    guard sizeOK else { throw ConnectionError(.frameSizeError, "\(name) of \(payload.count) bytes") }
  }

  /// A DATA or HEADERS payload without its pad length and padding (RFC 9113, sections 6.1
  /// and 6.2): the payload itself unless the frame is PADDED.
  func unpadded() throws(ConnectionError) -> ArraySlice<UInt8> {
    var p = payload
    if flags.contains(.padded) {
      guard let pad = p.first, Int(pad) < p.count else { throw ConnectionError(.protocolError, "bad padding") }
      p = p.dropFirst().dropLast(Int(pad))
    }
    return p
  }

  /// A HEADERS frame's header block fragment: the payload without padding and without the
  /// priority fields (RFC 9113, section 6.2).
  func headerBlockFragment() throws(ConnectionError) -> ArraySlice<UInt8> {
    var p = try unpadded()
    if flags.contains(.priority) {
      guard p.count >= 5 else { throw ConnectionError(.frameSizeError, "HEADERS too short for PRIORITY") }
      p = p.dropFirst(5)
    }
    return p
  }

  /// The parameters of a SETTINGS frame that is not an ACK, in order, those of unknown
  /// identifiers left out (RFC 9113, section 6.5). Checks the length, and the values of
  /// INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE.
  func settings() throws(ConnectionError) -> [Setting] {
    guard payload.count % 6 == 0 else { throw ConnectionError(.frameSizeError, "SETTINGS length") }
    var settings: [Setting] = []
    var i = payload.startIndex
    while i < payload.endIndex {
      let raw = UInt16(payload[i]) << 8 | UInt16(payload[i + 1])
      let value = payload.uint32(at: i + 2)
      i += 6
      guard let id = SettingID(rawValue: raw) else { continue }
      switch id {
      case .initialWindowSize:
        guard value <= 0x7fff_ffff else { throw ConnectionError(.flowControlError, "INITIAL_WINDOW_SIZE") }
      case .maxFrameSize:
        guard (16_384...16_777_215).contains(value) else { throw ConnectionError(.protocolError, "MAX_FRAME_SIZE") }
      default:
        break
      }
      settings.append(Setting(id: id, value: value))
    }
    return settings
  }

  /// A WINDOW_UPDATE frame's increment, its reserved bit cleared (RFC 9113, section 6.9).
  func windowIncrement() throws(ConnectionError) -> Int {
    guard payload.count == 4 else { throw ConnectionError(.frameSizeError, "WINDOW_UPDATE length") }
    let increment = Int(payload.uint32(at: payload.startIndex) & 0x7fff_ffff)
    guard increment > 0 else { throw ConnectionError(.protocolError, "WINDOW_UPDATE of 0") }
    return increment
  }
}

extension RandomAccessCollection where Element == UInt8, Index == Int {
  /// The big-endian 32-bit number in the four bytes from `i`.
  fileprivate func uint32(at i: Int) -> UInt32 {
    UInt32(self[i]) << 24 | UInt32(self[i + 1]) << 16 | UInt32(self[i + 2]) << 8 | UInt32(self[i + 3])
  }
}

// MARK: Encoding

/// Builds the bytes of the frames the server sends, appended in order to ``bytes``.
struct FrameEncoder {
  private(set) var bytes: [UInt8] = []

  var isEmpty: Bool { bytes.isEmpty }

  /// Forgets what was encoded (once it is sent), keeping the capacity.
  mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

  /// Any frame: the 9-byte header, then `payload`.
  mutating func frame(_ type: FrameType, flags: FrameFlags = [], stream: UInt32, payload: some Collection<UInt8>) {
    let n = payload.count
    bytes += [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type.rawValue, flags.rawValue]
    bytes += be32(stream)
    bytes += payload
  }

  /// DATA, without END_STREAM (a response ends with trailers).
  mutating func data(stream: UInt32, _ payload: ArraySlice<UInt8>) {
    frame(.data, stream: stream, payload: payload)
  }

  /// A header block as a HEADERS frame and as many CONTINUATION frames as needed for none
  /// to carry more than `maxFrameSize` bytes; END_STREAM is on the HEADERS frame.
  mutating func headers(stream: UInt32, block: [UInt8], endStream: Bool, maxFrameSize: Int) {
    var offset = 0
    var first = true
    repeat {
      let n = min(block.count - offset, maxFrameSize)
      var flags: FrameFlags = []
      if offset + n == block.count { flags.insert(.endHeaders) }
      if first && endStream { flags.insert(.endStream) }
      frame(first ? .headers : .continuation, flags: flags, stream: stream, payload: block[offset..<offset + n])
      offset += n
      first = false
    } while offset < block.count
  }

  mutating func rstStream(stream: UInt32, code: ErrorCode) {
    frame(.rstStream, stream: stream, payload: be32(code.rawValue))
  }

  mutating func settings(_ settings: [Setting]) {
    var payload: [UInt8] = []
    for s in settings {
      payload += [UInt8(s.id.rawValue >> 8), UInt8(s.id.rawValue & 0xff)] + be32(s.value)
    }
    frame(.settings, stream: 0, payload: payload)
  }

  mutating func settingsAck() {
    frame(.settings, flags: .ack, stream: 0, payload: [])
  }

  /// The answer to a PING: its payload sent back.
  mutating func pingAck(_ payload: ArraySlice<UInt8>) {
    frame(.ping, flags: .ack, stream: 0, payload: payload)
  }

  /// GOAWAY without debug data.
  mutating func goAway(lastStream: UInt32, code: ErrorCode) {
    frame(.goAway, stream: 0, payload: be32(lastStream) + be32(code.rawValue))
  }

  /// WINDOW_UPDATE of a stream's window, or of the connection's on stream 0.
  mutating func windowUpdate(stream: UInt32, increment: UInt32) {
    frame(.windowUpdate, stream: stream, payload: be32(increment))
  }
}

/// The header blocks the server sends: literal header fields without indexing, with new
/// names, without Huffman coding (RFC 7541, section 6.2.2), which leave the peer's dynamic
/// table alone.
enum HeaderBlock {
  static func literal(_ fields: [(String, String)]) -> [UInt8] {
    var block: [UInt8] = []
    for (name, value) in fields {
      block.append(0)  // literal header field without indexing, new name
      string(name, into: &block)
      string(value, into: &block)
    }
    return block
  }

  private static func string(_ s: String, into out: inout [UInt8]) {
    let bytes = Array(s.utf8)
    integer(bytes.count, prefixBits: 7, into: &out)
    out += bytes
  }

  /// HPACK integer (RFC 7541, section 5.1) with the flag bits of the first byte zero.
  private static func integer(_ value: Int, prefixBits: Int, into out: inout [UInt8]) {
    let max = (1 << prefixBits) - 1
    if value < max {
      out.append(UInt8(value))
      return
    }
    out.append(UInt8(max))
    var rest = value - max
    while rest >= 128 {
      out.append(UInt8(rest & 0x7f | 0x80))
      rest >>= 7
    }
    out.append(UInt8(rest))
  }
}

/// A 32-bit number as four big-endian bytes.
@inline(__always)
func be32(_ v: UInt32) -> [UInt8] {
  [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
}
