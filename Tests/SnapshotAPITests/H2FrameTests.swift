import Testing

@testable import SnapshotAPI

/// The frame layer alone (`H2Frame.swift`), without a socket: each frame type decoded from
/// hand-made bytes, the frames the server sends encoded and decoded back, and the malformed
/// frames refused with the error code the server's GOAWAY then carries. Needs no root.
@Suite struct H2FrameTests {
  /// Decodes `bytes`, which must hold exactly one frame.
  func decode(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> Frame {
    var decoder = FrameDecoder()
    decoder.append(bytes)
    let frame = try #require(try decoder.next(), sourceLocation: sourceLocation)
    #expect(decoder.buffered == 0, sourceLocation: sourceLocation)
    return frame
  }

  /// Decodes all an encoder wrote.
  func decode(_ encoder: FrameEncoder, sourceLocation: SourceLocation = #_sourceLocation) throws -> [Frame] {
    var decoder = FrameDecoder()
    decoder.append(encoder.bytes)
    var frames: [Frame] = []
    while let frame = try decoder.next() { frames.append(frame) }
    #expect(decoder.buffered == 0, sourceLocation: sourceLocation)
    return frames
  }

  /// The code of the connection error `body` throws.
  func code(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> ErrorCode? {
    let error = #expect(throws: ConnectionError.self, sourceLocation: sourceLocation) { try body() }
    return error?.code
  }

  /// The fields of a header block as the server writes them (literal fields without
  /// indexing, new names, no Huffman coding), as "name: value"; nil if it is not one.
  func literalFields(_ block: [UInt8]) -> [String]? {
    var i = 0
    func integer() -> Int? {
      guard i < block.count, block[i] & 0x80 == 0 else { return nil }  // no Huffman coding
      var value = Int(block[i] & 0x7f)
      i += 1
      guard value == 0x7f else { return value }
      var shift = 0
      while i < block.count {
        let b = block[i]
        i += 1
        value += Int(b & 0x7f) << shift
        shift += 7
        if b & 0x80 == 0 { return value }
      }
      return nil
    }
    func string() -> String? {
      guard let n = integer(), i + n <= block.count else { return nil }
      defer { i += n }
      return String(decoding: block[i..<i + n], as: UTF8.self)
    }
    var fields: [String] = []
    while i < block.count {
      guard block[i] == 0 else { return nil }
      i += 1
      guard let name = string(), let value = string() else { return nil }
      fields.append("\(name): \(value)")
    }
    return fields
  }

  @Test func frameHeaderAndLengthLimit() throws {
    var decoder = FrameDecoder()
    #expect(try decoder.next() == nil)
    #expect(decoder.needed == Frame.headerSize)
    // A frame arriving in pieces: nothing until all of it is in.
    let bytes = H2Tests.Raw.frame(.data, .endStream, 0x8000_0005, [1, 2, 3])  // reserved bit set
    decoder.append(Array(bytes[0..<5]))
    #expect(try decoder.next() == nil)
    #expect(decoder.needed == Frame.headerSize)
    decoder.append(Array(bytes[5..<10]))
    #expect(try decoder.next() == nil)
    #expect(decoder.needed == Frame.headerSize + 3)
    decoder.append(Array(bytes[10...]))
    #expect(try decoder.next() == Frame(type: .data, flags: .endStream, stream: 5, payload: [1, 2, 3]))
    #expect(decoder.buffered == 0)

    // Frames of unknown types are decoded, to be ignored.
    let unknown = try decode(H2Tests.Raw.frame(0xfa, [], 0, [9]))
    #expect(unknown.type == nil && unknown.payload == [9])

    // 16,384 payload bytes is the limit; one more is a FRAME_SIZE_ERROR as soon as the
    // header is in, before the payload.
    #expect(try decode(H2Tests.Raw.frame(.data, [], 1, [UInt8](repeating: 7, count: 16_384))).payload.count == 16_384)
    #expect(
      code {
        var d = FrameDecoder()
        d.append(Array(H2Tests.Raw.frame(.data, [], 1, [UInt8](repeating: 7, count: 16_385)).prefix(Frame.headerSize)))
        _ = try d.next()
      } == .frameSizeError)

    // Many frames at once, more than the buffer first holds, come out whole and in order.
    var many = FrameDecoder()
    var sent: [UInt8] = []
    for i in 0..<10 { sent += H2Tests.Raw.frame(.data, [], UInt32(2 * i + 1), [UInt8](repeating: UInt8(i), count: 16_000)) }
    many.append(sent)
    for i in 0..<10 {
      let f = try #require(try many.next())
      #expect(f.stream == UInt32(2 * i + 1) && f.payload.count == 16_000 && f.payload.allSatisfy { $0 == UInt8(i) })
    }
    #expect(try many.next() == nil)
  }

  @Test func connectionPreface() throws {
    var decoder = FrameDecoder()
    decoder.append(Array(FrameDecoder.preface.prefix(20)))
    #expect(try decoder.preface() == false)
    decoder.append(Array(FrameDecoder.preface.dropFirst(20)) + H2Tests.Raw.frame(.settings, [], 0, []))
    #expect(try decoder.preface() == true)
    #expect(try decoder.next() == Frame(type: .settings, flags: [], stream: 0, payload: []))

    #expect(
      code {
        var d = FrameDecoder()
        d.append(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        _ = try d.preface()
      } == .protocolError)
  }

  @Test func dataFrames() throws {
    let plain = try decode(H2Tests.Raw.frame(.data, .endStream, 1, [1, 2, 3]))
    #expect(plain == Frame(type: .data, flags: .endStream, stream: 1, payload: [1, 2, 3]))
    #expect(try plain.unpadded() == [1, 2, 3])
    // PADDED: the pad length, the data, then the padding.
    #expect(try decode(H2Tests.Raw.frame(.data, .padded, 3, [2, 1, 2, 3, 0, 0])).unpadded() == [1, 2, 3])
    // All padding is allowed; padding as long as the payload (pad length included) is not.
    #expect(try decode(H2Tests.Raw.frame(.data, .padded, 3, [3, 0, 0, 0])).unpadded().isEmpty)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.data, .padded, 3, [4, 0, 0, 0])).unpadded() } == .protocolError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.data, .padded, 3, [])).unpadded() } == .protocolError)

    // As the server sends it: no flags (trailers end the stream).
    var e = FrameEncoder()
    e.data(stream: 5, [9, 8, 7])
    #expect(try decode(e) == [Frame(type: .data, flags: [], stream: 5, payload: [9, 8, 7])])
  }

  @Test func headersFrames() throws {
    let block: [UInt8] = [0x82, 0x86, 0x84]  // any fragment: HPACK is not this layer's
    let plain = try decode(H2Tests.Raw.frame(.headers, [.endStream, .endHeaders], 1, block))
    #expect(plain.type == .headers && plain.flags == [.endStream, .endHeaders] && plain.stream == 1)
    #expect(try plain.headerBlockFragment() == block[...])
    // PADDED and PRIORITY: the pad length, 5 bytes of priority fields, the fragment, padding.
    let both = try decode(H2Tests.Raw.frame(.headers, [.padded, .priority, .endHeaders], 3, [2, 0x80, 0, 0, 1, 15] + block + [0, 0]))
    #expect(try both.headerBlockFragment() == block[...])
    #expect(try decode(H2Tests.Raw.frame(.headers, .priority, 3, [0, 0, 0, 1, 15] + block)).headerBlockFragment() == block[...])
    #expect(try decode(H2Tests.Raw.frame(.headers, .priority, 3, [0, 0, 0, 1, 15])).headerBlockFragment().isEmpty)

    // Too short for the priority fields, counted after the padding: FRAME_SIZE_ERROR.
    #expect(code { _ = try decode(H2Tests.Raw.frame(.headers, .priority, 3, [0, 0, 0, 1])).headerBlockFragment() } == .frameSizeError)
    #expect(
      code {
        _ = try decode(H2Tests.Raw.frame(.headers, [.padded, .priority], 3, [2, 0, 0, 0, 1, 0, 0])).headerBlockFragment()
      } == .frameSizeError)
    // Bad padding, checked first: PROTOCOL_ERROR.
    #expect(
      code { _ = try decode(H2Tests.Raw.frame(.headers, [.padded, .priority], 3, [4, 0, 0, 0])).headerBlockFragment() } == .protocolError)

    // As the server sends a block that fits in a frame: one HEADERS frame with END_HEADERS,
    // and END_STREAM when asked for.
    let response = HeaderBlock.literal([(":status", "200"), ("content-type", "application/grpc")])
    let trailers = HeaderBlock.literal([("grpc-status", "0")])
    #expect(literalFields(response) == [":status: 200", "content-type: application/grpc"])
    #expect(
      response == [0, 7] + Array(":status".utf8) + [3] + Array("200".utf8)
        + [0, 12] + Array("content-type".utf8) + [16] + Array("application/grpc".utf8))
    var e = FrameEncoder()
    e.headers(stream: 7, block: response, endStream: false, maxFrameSize: 16_384)
    e.headers(stream: 7, block: trailers, endStream: true, maxFrameSize: 16_384)
    #expect(
      try decode(e) == [
        Frame(type: .headers, flags: .endHeaders, stream: 7, payload: response[...]),
        Frame(type: .headers, flags: [.endHeaders, .endStream], stream: 7, payload: trailers[...]),
      ])
  }

  @Test func priorityFrames() throws {
    // Exclusive, depending on stream 1, weight 16. The server reads no more of it: it
    // ignores PRIORITY frames, whatever their length.
    let f = try decode(H2Tests.Raw.frame(.priority, [], 3, [0x80, 0, 0, 1, 15]))
    #expect(f == Frame(type: .priority, flags: [], stream: 3, payload: [0x80, 0, 0, 1, 15]))
    #expect(try decode(H2Tests.Raw.frame(.priority, [], 3, [])).type == .priority)
  }

  @Test func rstStreamFrames() throws {
    let f = try decode(H2Tests.Raw.frame(.rstStream, [], 5, [0, 0, 0, 8]))
    #expect(f == Frame(type: .rstStream, flags: [], stream: 5, payload: [0, 0, 0, 8]))
    #expect(ErrorCode(rawValue: UInt32(f.payload.last!)) == .cancel)

    var e = FrameEncoder()
    e.rstStream(stream: 5, code: .noError)
    e.rstStream(stream: 7, code: .enhanceYourCalm)
    #expect(
      try decode(e) == [
        Frame(type: .rstStream, flags: [], stream: 5, payload: [0, 0, 0, 0]),
        Frame(type: .rstStream, flags: [], stream: 7, payload: [0, 0, 0, 0xb]),
      ])
  }

  @Test func settingsFrames() throws {
    let payload: [UInt8] = [
      0, 3, 0, 0, 0, 100,  // MAX_CONCURRENT_STREAMS 100
      0, 4, 0x7f, 0xff, 0xff, 0xff,  // INITIAL_WINDOW_SIZE, the largest
      0, 0x99, 1, 2, 3, 4,  // unknown: left out
      0, 5, 0, 0, 0x40, 0,  // MAX_FRAME_SIZE, the smallest
      0, 5, 0, 0xff, 0xff, 0xff,  // MAX_FRAME_SIZE, the largest
      0, 1, 0, 0, 0x10, 0,  // HEADER_TABLE_SIZE 4096
    ]
    let f = try decode(H2Tests.Raw.frame(.settings, [], 0, payload))
    #expect(f.type == .settings && f.flags.isEmpty)
    #expect(
      try f.settings() == [
        Setting(id: .maxConcurrentStreams, value: 100), Setting(id: .initialWindowSize, value: 0x7fff_ffff),
        Setting(id: .maxFrameSize, value: 16_384), Setting(id: .maxFrameSize, value: 16_777_215),
        Setting(id: .headerTableSize, value: 4096),
      ])
    #expect(try decode(H2Tests.Raw.frame(.settings, [], 0, [])).settings().isEmpty)
    let ack = try decode(H2Tests.Raw.frame(.settings, .ack, 0, []))
    #expect(ack.flags.contains(.ack))

    // A length not a multiple of 6: FRAME_SIZE_ERROR.
    #expect(code { _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 4, 0])).settings() } == .frameSizeError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 4, 0, 0, 1])).settings() } == .frameSizeError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 4, 0, 0, 1, 0, 0])).settings() } == .frameSizeError)
    // Values out of range: the first in order decides.
    #expect(code { _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 4, 0x80, 0, 0, 0])).settings() } == .flowControlError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 5, 0, 0, 0x3f, 0xff])).settings() } == .protocolError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 5, 1, 0, 0, 0])).settings() } == .protocolError)
    #expect(
      code {
        _ = try decode(H2Tests.Raw.frame(.settings, [], 0, [0, 5, 0, 0, 0, 1, 0, 4, 0x80, 0, 0, 0])).settings()
      } == .protocolError)

    // As the server sends them.
    let ours = [
      Setting(id: .maxConcurrentStreams, value: 128), Setting(id: .initialWindowSize, value: 16 << 20 + 1024),
      Setting(id: .maxHeaderListSize, value: 16_384),
    ]
    var e = FrameEncoder()
    e.settings(ours)
    e.settingsAck()
    let frames = try decode(e)
    #expect(frames.count == 2)
    #expect(frames.first?.type == .settings && frames.first?.flags == [] && frames.first?.stream == 0)
    #expect(try frames.first?.settings() == ours)
    #expect(frames.last == Frame(type: .settings, flags: .ack, stream: 0, payload: []))
  }

  @Test func pushPromiseFrames() throws {
    // Promising stream 2 with a header block fragment: decoded, and refused by the server
    // (a client cannot push; `framesOutOfPlaceCloseTheConnection`).
    let f = try decode(H2Tests.Raw.frame(.pushPromise, .endHeaders, 1, [0, 0, 0, 2, 0x82]))
    #expect(f == Frame(type: .pushPromise, flags: .endHeaders, stream: 1, payload: [0, 0, 0, 2, 0x82]))
  }

  @Test func pingFrames() throws {
    let f = try decode(H2Tests.Raw.frame(.ping, [], 0, [1, 2, 3, 4, 5, 6, 7, 8]))
    #expect(f == Frame(type: .ping, flags: [], stream: 0, payload: [1, 2, 3, 4, 5, 6, 7, 8]))

    // The answer: the same payload, ACK.
    var e = FrameEncoder()
    e.pingAck(f.payload)
    #expect(try decode(e) == [Frame(type: .ping, flags: .ack, stream: 0, payload: [1, 2, 3, 4, 5, 6, 7, 8])])
  }

  /// Each type's stream and length rules (RFC 9113, section 6), checked before a frame is
  /// acted on.
  @Test func shapes() throws {
    func shape(_ type: FrameType, _ flags: FrameFlags = [], _ stream: UInt32, _ length: Int) -> ErrorCode? {
      guard let f = try? decode(H2Tests.Raw.frame(type, flags, stream, [UInt8](repeating: 0, count: length))) else { return .internalError }
      do { try f.checkShape() } catch { return error.code }
      return nil
    }
    #expect(shape(.ping, [], 0, 8) == nil && shape(.ping, [], 0, 7) == .frameSizeError && shape(.ping, [], 1, 8) == .protocolError)
    #expect(
      shape(.rstStream, [], 1, 4) == nil && shape(.rstStream, [], 1, 5) == .frameSizeError && shape(.rstStream, [], 0, 4) == .protocolError)
    #expect(
      shape(.priority, [], 1, 5) == nil && shape(.priority, [], 1, 4) == .frameSizeError && shape(.priority, [], 0, 5) == .protocolError)
    #expect(shape(.goAway, [], 0, 8) == nil && shape(.goAway, [], 0, 7) == .frameSizeError && shape(.goAway, [], 3, 8) == .protocolError)
    #expect(
      shape(.settings, .ack, 0, 0) == nil && shape(.settings, .ack, 0, 6) == .frameSizeError && shape(.settings, [], 1, 6) == .protocolError
    )
    #expect(shape(.data, [], 0, 1) == .protocolError && shape(.continuation, [], 0, 1) == .protocolError)
    #expect(shape(.windowUpdate, [], 0, 4) == nil && shape(.windowUpdate, [], 0, 3) == .frameSizeError)
  }

  @Test func goAwayFrames() throws {
    // Last stream 7, ENHANCE_YOUR_CALM, debug data.
    let f = try decode(H2Tests.Raw.frame(.goAway, [], 0, [0, 0, 0, 7, 0, 0, 0, 0xb] + Array("calm".utf8)))
    #expect(f.type == .goAway && f.stream == 0 && f.payload.count == 12)
    #expect(H2Tests.Raw.errorCode((f.flags, Array(f.payload))) == .enhanceYourCalm)

    var e = FrameEncoder()
    e.goAway(lastStream: 0x7fff_ffff, code: .frameSizeError)
    #expect(try decode(e) == [Frame(type: .goAway, flags: [], stream: 0, payload: [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 6])])
  }

  @Test func windowUpdateFrames() throws {
    let f = try decode(H2Tests.Raw.frame(.windowUpdate, [], 3, [0, 1, 0, 0]))
    #expect(f.type == .windowUpdate && f.stream == 3)
    #expect(try f.windowIncrement() == 65_536)
    // The reserved bit is not part of the increment.
    #expect(try decode(H2Tests.Raw.frame(.windowUpdate, [], 0, [0x80, 0, 0, 1])).windowIncrement() == 1)
    #expect(try decode(H2Tests.Raw.frame(.windowUpdate, [], 0, [0x7f, 0xff, 0xff, 0xff])).windowIncrement() == 0x7fff_ffff)

    #expect(code { _ = try decode(H2Tests.Raw.frame(.windowUpdate, [], 0, [0, 0, 1])).windowIncrement() } == .frameSizeError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.windowUpdate, [], 0, [0, 0, 0, 1, 0])).windowIncrement() } == .frameSizeError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.windowUpdate, [], 0, [0, 0, 0, 0])).windowIncrement() } == .protocolError)
    #expect(code { _ = try decode(H2Tests.Raw.frame(.windowUpdate, [], 1, [0x80, 0, 0, 0])).windowIncrement() } == .protocolError)

    var e = FrameEncoder()
    e.windowUpdate(stream: 0, increment: UInt32(64 << 20 - 65_535))
    e.windowUpdate(stream: 9, increment: 5)
    let frames = try decode(e)
    #expect(frames.map(\.stream) == [0, 9])
    #expect(try frames.map { try $0.windowIncrement() } == [64 << 20 - 65_535, 5])
  }

  @Test func continuationFrames() throws {
    let f = try decode(H2Tests.Raw.frame(.continuation, .endHeaders, 1, [0x82, 0x86]))
    #expect(f == Frame(type: .continuation, flags: .endHeaders, stream: 1, payload: [0x82, 0x86]))

    // A block larger than a frame: HEADERS (with END_STREAM), then CONTINUATIONs, the last
    // with END_HEADERS.
    let value = String(repeating: "v", count: 40_000)
    let block = HeaderBlock.literal([("grpc-status", "13"), ("grpc-message", value)])
    #expect(literalFields(block) == ["grpc-status: 13", "grpc-message: \(value)"])
    var e = FrameEncoder()
    e.headers(stream: 3, block: block, endStream: true, maxFrameSize: 16_384)
    let frames = try decode(e)
    #expect(frames.map(\.type) == [.headers, .continuation, .continuation])
    #expect(frames.map(\.flags) == [.endStream, [], .endHeaders])
    #expect(frames.map(\.stream) == [3, 3, 3])
    #expect(frames.map(\.payload.count) == [16_384, 16_384, block.count - 32_768])
    #expect(frames.flatMap(\.payload) == block)

    // Under a peer's larger MAX_FRAME_SIZE: one frame (larger than the server itself takes).
    var wide = FrameEncoder()
    wide.headers(stream: 3, block: block, endStream: false, maxFrameSize: 65_536)
    let n = block.count
    #expect(
      wide.bytes == [
        UInt8(n >> 16), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), FrameType.headers.rawValue,
        FrameFlags.endHeaders.rawValue, 0, 0, 0, 3,
      ] + block)
    // An empty block: one empty HEADERS frame.
    var empty = FrameEncoder()
    empty.headers(stream: 5, block: [], endStream: true, maxFrameSize: 16_384)
    #expect(try decode(empty) == [Frame(type: .headers, flags: [.endHeaders, .endStream], stream: 5, payload: [])])
  }
}
