import Logging
import NIOCore
import NIOHPACK
import SnapshotSys

/// One HTTP/2 connection carrying gRPC calls (RFC 9113, gRPC over HTTP/2), served on its
/// own thread with blocking reads. Calls are run in the order their requests complete, one
/// at a time: the snapshotter serializes its metadata transactions anyway, and running a
/// call on the thread that read it avoids every thread hand-off on the way (with
/// grpc-swift's general-purpose stack those hand-offs, not the work, dominated latency).
///
/// What it implements: the connection preface, SETTINGS (with ACK), PING (ACK), flow control
/// both ways (WINDOW_UPDATE), HEADERS/CONTINUATION decoded with NIOHPACK, DATA, RST_STREAM
/// and GOAWAY. Responses are HEADERS, DATA and trailers (or a trailers-only error), encoded
/// as literal header fields without indexing.
final class H2Connection {
  let fd: Int32
  let routes: RPCRoutes
  let logger: Logger

  // Receiving.
  private var input = [UInt8](repeating: 0, count: 1 << 16)
  private var inStart = 0
  private var inEnd = 0
  private var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
  private var unacknowledged = 0  // DATA bytes received since our last connection WINDOW_UPDATE
  private var continuing: UInt32?  // stream whose header block is incomplete

  // Sending.
  private var output: [UInt8] = []
  private var peerMaxFrame = 16_384
  private var peerInitialWindow = 65_535
  private var connectionWindow = 65_535

  private var streams: [UInt32: Stream] = [:]
  private var ready: [UInt32] = []
  private var lastStream: UInt32 = 0
  private var peerGoingAway = false

  private var buffered = 0  // request bytes held across all streams

  private struct Stream {
    var block: [UInt8] = []
    var path: String?
    var data: [UInt8] = []
    var sendWindow: Int
    var endStream = false
    var streaming = false  // its handler runs from the request headers on
    var started = false  // response headers sent
  }

  /// Largest request message accepted (bytes): containerd's client sends up to 16 MiB.
  static let maxRequest = 16 << 20
  /// The per-stream receive window we announce: any request we accept fits, prefix included.
  static let streamWindow = maxRequest + 1024
  /// The connection receive window we keep open, the streams a client may have open, the
  /// request bytes one connection may have us hold, and the largest header block.
  static let connectionWindow = 64 << 20
  static let maxStreams = 128
  static let maxBuffered = 64 << 20
  static let maxHeaderList = 16_384

  struct ProtocolError: Error {
    let code: UInt32
    let reason: String
  }

  init(fd: Int32, routes: RPCRoutes, logger: Logger) {
    self.fd = fd
    self.routes = routes
    self.logger = logger
  }

  /// Serves until the peer closes, a GOAWAY, or a protocol error; closes nothing itself.
  func run() {
    do {
      guard try readPreface() else { return }  // a connect-and-close probe
      // SETTINGS: MAX_CONCURRENT_STREAMS (3), INITIAL_WINDOW_SIZE (4); then widen the
      // connection window. What one connection can make us buffer is bounded by these.
      frame(type: 0x4, flags: 0, stream: 0,
            payload: setting(0x3, UInt32(Self.maxStreams)) + setting(0x4, UInt32(Self.streamWindow))
              + setting(0x6, UInt32(Self.maxHeaderList)))
      frame(type: 0x8, flags: 0, stream: 0, payload: be32(UInt32(Self.connectionWindow - 65_535)))
      try flush()
      while let f = try readFrame() {
        try handle(f)
        while !ready.isEmpty {
          let id = ready.removeFirst()
          try respond(id)
        }
        try flush()
        if peerGoingAway && streams.isEmpty { break }
      }
      // End of input (the peer closed, or the server is stopping): say which streams were
      // answered, so a client can retry the others elsewhere.
      frame(type: 0x7, flags: 0, stream: 0, payload: be32(lastStream) + be32(0))
      try? flush()
    } catch let e as ProtocolError {
      logger.warning("closing connection: HTTP/2 protocol error", metadata: ["reason": "\(e.reason)"])
      frame(type: 0x7, flags: 0, stream: 0, payload: be32(lastStream) + be32(e.code))
      try? flush()
    } catch {
      logger.debug("connection closed", metadata: ["error": "\(error)"])
    }
  }

  // MARK: Reading

  private func fill(_ count: Int) throws -> Bool {
    while inEnd - inStart < count {
      if inStart > 0 && inStart == inEnd {
        inStart = 0
        inEnd = 0
      } else if input.count - inStart < count || inEnd == input.count {
        input.replaceSubrange(0..<(inEnd - inStart), with: input[inStart..<inEnd])
        inEnd -= inStart
        inStart = 0
        if input.count < count { input += [UInt8](repeating: 0, count: count - input.count) }
      }
      let n = try input.withUnsafeMutableBytes { raw in
        try Socket.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[inEnd...]))
      }
      if n == 0 { return false }
      inEnd += n
    }
    return true
  }

  private static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

  /// False when the peer closed without sending anything.
  private func readPreface() throws -> Bool {
    guard try fill(24) else {
      if inEnd == inStart { return false }
      throw ProtocolError(code: 1, reason: "closed in the connection preface")
    }
    guard Array(input[inStart..<inStart + 24]) == Self.preface else {
      throw ProtocolError(code: 1, reason: "bad connection preface")
    }
    inStart += 24
    return true
  }

  private struct Frame {
    let type: UInt8
    let flags: UInt8
    let stream: UInt32
    let payload: ArraySlice<UInt8>
  }

  private func readFrame() throws -> Frame? {
    guard try fill(9) else { return nil }
    let b = inStart
    let length = Int(input[b]) << 16 | Int(input[b + 1]) << 8 | Int(input[b + 2])
    guard length <= 16_384 else { throw ProtocolError(code: 6, reason: "frame of \(length) bytes exceeds SETTINGS_MAX_FRAME_SIZE") }
    guard try fill(9 + length) else { return nil }
    let s = inStart
    let f = Frame(
      type: input[s + 3], flags: input[s + 4],
      stream: (UInt32(input[s + 5]) << 24 | UInt32(input[s + 6]) << 16 | UInt32(input[s + 7]) << 8 | UInt32(input[s + 8])) & 0x7fff_ffff,
      payload: input[(s + 9)..<(s + 9 + length)])
    inStart += 9 + length
    return f
  }

  // MARK: Frames

  private func handle(_ f: Frame) throws {
    if let id = continuing, f.type != 0x9 || f.stream != id {
      throw ProtocolError(code: 1, reason: "expected CONTINUATION of stream \(id)")
    }
    switch f.type {
    case 0x0: try data(f)
    case 0x1: try headers(f)
    case 0x3: removeStream(f.stream)
    case 0x4: try settings(f)
    case 0x6:
      if f.flags & 0x1 == 0 { frame(type: 0x6, flags: 0x1, stream: 0, payload: Array(f.payload)) }
    case 0x7: peerGoingAway = true
    case 0x8: try windowUpdate(f)
    case 0x9:
      guard continuing == f.stream else { throw ProtocolError(code: 1, reason: "CONTINUATION without HEADERS") }
      try headerFragment(f.stream, f.payload, endHeaders: f.flags & 0x4 != 0)
    case 0x5: throw ProtocolError(code: 1, reason: "PUSH_PROMISE from a client")
    default: break  // PRIORITY and unknown frame types are ignored
    }
  }

  private func unpadded(_ f: Frame) throws -> ArraySlice<UInt8> {
    var p = f.payload
    if f.flags & 0x8 != 0 {
      guard let pad = p.first, Int(pad) < p.count else { throw ProtocolError(code: 1, reason: "bad padding") }
      p = p.dropFirst().dropLast(Int(pad))
    }
    return p
  }

  private func headers(_ f: Frame) throws {
    guard f.stream != 0, f.stream & 1 == 1 else { throw ProtocolError(code: 1, reason: "HEADERS on stream \(f.stream)") }
    var p = try unpadded(f)
    if f.flags & 0x20 != 0 {  // PRIORITY fields
      guard p.count >= 5 else { throw ProtocolError(code: 6, reason: "HEADERS too short for PRIORITY") }
      p = p.dropFirst(5)
    }
    if streams[f.stream] == nil {
      guard f.stream > lastStream else { throw ProtocolError(code: 1, reason: "stream \(f.stream) reused") }
      lastStream = f.stream
      guard streams.count < Self.maxStreams else { throw ProtocolError(code: 1, reason: "more than \(Self.maxStreams) open streams") }
      streams[f.stream] = Stream(sendWindow: peerInitialWindow)
    }
    if f.flags & 0x1 != 0 { streams[f.stream]?.endStream = true }
    try headerFragment(f.stream, p, endHeaders: f.flags & 0x4 != 0)
  }

  private func headerFragment(_ id: UInt32, _ fragment: ArraySlice<UInt8>, endHeaders: Bool) throws {
    guard let held = streams[id]?.block.count else { throw ProtocolError(code: 1, reason: "header block for closed stream \(id)") }
    guard held + fragment.count <= Self.maxHeaderList * 2 else {
      throw ProtocolError(code: 0xb, reason: "header block of stream \(id) too large")
    }
    streams[id]!.block.append(contentsOf: fragment)
    continuing = endHeaders ? nil : id
    guard endHeaders, var stream = streams[id] else { return }
    var buffer = ByteBuffer(bytes: stream.block)
    let decoded: HPACKHeaders
    do {
      decoded = try decoder.decodeHeaders(from: &buffer)
    } catch {
      throw ProtocolError(code: 9, reason: "header block of stream \(id): \(error)")
    }
    let first = stream.path == nil
    if first { stream.path = decoded.first(name: ":path") }
    stream.block = []
    if first, let path = stream.path, case .streaming = routes[path] { stream.streaming = true }
    streams[id] = stream
    if stream.endStream || (first && stream.streaming) { ready.append(id) }
  }

  private func data(_ f: Frame) throws {
    guard f.stream != 0 else { throw ProtocolError(code: 1, reason: "DATA on stream 0") }
    unacknowledged += f.payload.count
    if unacknowledged >= 1 << 20 {
      frame(type: 0x8, flags: 0, stream: 0, payload: be32(UInt32(unacknowledged)))
      unacknowledged = 0
    }
    let p = try unpadded(f)
    guard let stream = streams[f.stream], !stream.endStream else { return }  // reset or answered
    let held = stream.data.count + p.count
    buffered += p.count
    guard buffered <= Self.maxBuffered else { throw ProtocolError(code: 0xb, reason: "more than \(Self.maxBuffered) bytes of requests held") }
    streams[f.stream]!.data.append(contentsOf: p)  // in place: no copy of what is held
    if held >= 5 {
      let d = streams[f.stream]!.data
      let declared = Int(d[1]) << 24 | Int(d[2]) << 16 | Int(d[3]) << 8 | Int(d[4])
      if declared > Self.maxRequest {
        // Refused at once, before the client has sent it all; RST_STREAM stops the rest.
        buffered -= held
        streams[f.stream] = nil
        errorResponse(f.stream, RPCStatus(.resourceExhausted, "request message of \(declared) bytes exceeds \(Self.maxRequest)"))
        frame(type: 0x3, flags: 0, stream: f.stream, payload: be32(0))
        return
      }
    }
    if f.flags & 0x1 != 0 {
      streams[f.stream]!.endStream = true
      if !streams[f.stream]!.streaming { ready.append(f.stream) }
    }
  }

  private func settings(_ f: Frame) throws {
    guard f.flags & 0x1 == 0 else { return }
    guard f.payload.count % 6 == 0 else { throw ProtocolError(code: 6, reason: "SETTINGS length") }
    var i = f.payload.startIndex
    while i < f.payload.endIndex {
      let id = UInt16(f.payload[i]) << 8 | UInt16(f.payload[i + 1])
      let value = Int(f.payload[i + 2]) << 24 | Int(f.payload[i + 3]) << 16 | Int(f.payload[i + 4]) << 8 | Int(f.payload[i + 5])
      switch id {
      case 0x4:
        guard value <= 0x7fff_ffff else { throw ProtocolError(code: 3, reason: "INITIAL_WINDOW_SIZE") }
        let delta = value - peerInitialWindow
        peerInitialWindow = value
        for key in streams.keys { streams[key]!.sendWindow += delta }
      case 0x5:
        guard (16_384...16_777_215).contains(value) else { throw ProtocolError(code: 1, reason: "MAX_FRAME_SIZE") }
        peerMaxFrame = value
      default: break
      }
      i += 6
    }
    frame(type: 0x4, flags: 0x1, stream: 0, payload: [])
  }

  private func windowUpdate(_ f: Frame) throws {
    guard f.payload.count == 4 else { throw ProtocolError(code: 6, reason: "WINDOW_UPDATE length") }
    let p = f.payload.startIndex
    let inc = Int(f.payload[p] & 0x7f) << 24 | Int(f.payload[p + 1]) << 16 | Int(f.payload[p + 2]) << 8 | Int(f.payload[p + 3])
    guard inc > 0 else { throw ProtocolError(code: 1, reason: "WINDOW_UPDATE of 0") }
    if f.stream == 0 {
      guard connectionWindow + inc <= 0x7fff_ffff else { throw ProtocolError(code: 3, reason: "connection window overflow") }
      connectionWindow += inc
    } else if let w = streams[f.stream]?.sendWindow {
      guard w + inc <= 0x7fff_ffff else { throw ProtocolError(code: 3, reason: "stream window overflow") }
      streams[f.stream]!.sendWindow = w + inc
    }
  }

  private func removeStream(_ id: UInt32) {
    if let s = streams[id] { buffered -= s.data.count }
    streams[id] = nil
    ready.removeAll { $0 == id }
  }

  // MARK: Calls

  private func respond(_ id: UInt32) throws {
    guard let stream = streams[id] else { return }
    if stream.streaming, let path = stream.path, case .streaming(let handler) = routes[path] {
      try respondStreaming(id, handler)
      return
    }
    buffered -= stream.data.count
    streams[id]!.data = []  // counted out; a reset while sending must not count it again
    let result: Result<[[UInt8]], RPCStatus>
    if let path = stream.path, case .unary(let route) = routes[path] {
      switch Self.message(stream.data) {
      case .success(let request):
        do {
          result = .success(try route(request))
        } catch let status as RPCStatus {
          result = .failure(status)
        } catch {
          result = .failure(RPCStatus(.internal, "\(error)"))
        }
      case .failure(let e):
        result = .failure(e)
      }
    } else {
      result = .failure(RPCStatus(.unimplemented, "unknown method \(stream.path ?? "(none)")"))
    }
    switch result {
    case .success(let messages):
      headerFrames(id, [(":status", "200"), ("content-type", "application/grpc")], endStream: false)
      var body: [UInt8] = []
      for m in messages {
        body.append(0)
        body += be32(UInt32(m.count))
        body += m
      }
      guard try send(id, body) else { return }
      headerFrames(id, [("grpc-status", "0")], endStream: true)
    case .failure(let status):
      errorResponse(id, status)
    }
    streams[id] = nil
  }

  private func respondStreaming(_ id: UInt32, _ handler: (RPCStream) throws -> Void) throws {
    let call = StreamCall(connection: self, id: id)
    var status = RPCStatus(.ok, "")
    do {
      try handler(call)
    } catch let s as RPCStatus {
      status = s
    } catch let e as ProtocolError {
      throw e
    } catch let e as StreamGone {
      _ = e
      streams[id] = nil
      return
    } catch {
      status = RPCStatus(.internal, "\(error)")
    }
    guard let stream = streams[id] else { return }
    buffered -= stream.data.count
    if stream.started {
      var trailers = [("grpc-status", String(status.code.rawValue))]
      if status.code != .ok { trailers.append(("grpc-message", Self.percentEncoded(String(status.message.utf8.prefix(1024))!))) }
      headerFrames(id, trailers, endStream: true)
    } else if status.code == .ok {
      headerFrames(id, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")], endStream: true)
    } else {
      errorResponse(id, status)
    }
    if !stream.endStream { frame(type: 0x3, flags: 0, stream: id, payload: be32(0)) }  // the rest is not wanted
    streams[id] = nil
  }

  /// The stream was reset, or the connection closed, while its handler ran.
  struct StreamGone: Error {}

  /// The next whole request message of a streaming call, reading frames as needed.
  fileprivate func receive(_ id: UInt32) throws -> [UInt8]? {
    while true {
      guard let stream = streams[id] else { throw StreamGone() }
      let d = stream.data
      if d.count >= 5 {
        guard d[0] == 0 else { throw RPCStatus(.unimplemented, "compressed messages are not supported") }
        let length = Int(d[1]) << 24 | Int(d[2]) << 16 | Int(d[3]) << 8 | Int(d[4])
        if d.count >= 5 + length {
          let message = Array(d[5..<(5 + length)])
          streams[id]!.data.removeFirst(5 + length)
          buffered -= 5 + length
          // Let the client send as much again on this stream.
          frame(type: 0x8, flags: 0, stream: id, payload: be32(UInt32(5 + length)))
          return message
        }
      }
      if stream.endStream {
        if d.isEmpty { return nil }
        throw RPCStatus(.internal, "truncated gRPC message")
      }
      try flush()
      guard let f = try readFrame() else { throw StreamGone() }
      try handle(f)
    }
  }

  /// Sends one response message of a streaming call now.
  fileprivate func send(_ id: UInt32, message: [UInt8]) throws {
    guard let stream = streams[id] else { throw StreamGone() }
    if !stream.started {
      headerFrames(id, [(":status", "200"), ("content-type", "application/grpc")], endStream: false)
      streams[id]!.started = true
    }
    guard try send(id, [0] + be32(UInt32(message.count)) + message) else { throw StreamGone() }
    try flush()
  }

  /// A trailers-only response carrying `status` (its message cut to 1 KiB).
  private func errorResponse(_ id: UInt32, _ status: RPCStatus) {
    var message = status.message
    if message.utf8.count > 1024 { message = String(decoding: message.utf8.prefix(1024), as: UTF8.self) + "..." }
    headerFrames(
      id,
      [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", String(status.code.rawValue)),
       ("grpc-message", Self.percentEncoded(message))],
      endStream: true)
  }

  /// The one length-prefixed message of a unary request (empty when the body is empty).
  private static func message(_ body: [UInt8]) -> Result<[UInt8], RPCStatus> {
    if body.isEmpty { return .success([]) }
    guard body.count >= 5 else { return .failure(RPCStatus(.internal, "truncated gRPC message")) }
    guard body[0] == 0 else { return .failure(RPCStatus(.unimplemented, "compressed messages are not supported")) }
    let length = Int(body[1]) << 24 | Int(body[2]) << 16 | Int(body[3]) << 8 | Int(body[4])
    guard body.count == 5 + length else {
      return .failure(RPCStatus(.unimplemented, "expected exactly one request message"))
    }
    return .success(Array(body[5...]))
  }

  /// Sends `body` as DATA frames within the peer's flow-control windows, reading frames
  /// while they are exhausted. False if the stream was reset meanwhile.
  private func send(_ id: UInt32, _ body: [UInt8]) throws -> Bool {
    var offset = 0
    while offset < body.count {
      guard let window = streams[id]?.sendWindow else { return false }
      let n = min(body.count - offset, window, connectionWindow, peerMaxFrame)
      if n <= 0 {
        try flush()
        guard let f = try readFrame() else { throw ProtocolError(code: 0, reason: "closed while sending") }
        try handle(f)
        continue
      }
      frame(type: 0x0, flags: 0, stream: id, payload: body[offset..<offset + n])
      streams[id]!.sendWindow -= n
      connectionWindow -= n
      offset += n
    }
    return true
  }

  // MARK: Writing

  private func frame<C: Collection>(type: UInt8, flags: UInt8, stream: UInt32, payload: C) where C.Element == UInt8 {
    let n = payload.count
    output += [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags]
    output += be32(stream)
    output += payload
  }

  /// A header block as HEADERS plus CONTINUATION frames no larger than the peer allows.
  private func headerFrames(_ id: UInt32, _ fields: [(String, String)], endStream: Bool) {
    var block: [UInt8] = []
    for (name, value) in fields {
      block.append(0)  // literal header field without indexing, new name
      Self.string(name, into: &block)
      Self.string(value, into: &block)
    }
    var offset = 0
    var first = true
    repeat {
      let n = min(block.count - offset, peerMaxFrame)
      let last = offset + n == block.count
      let flags: UInt8 = (last ? 0x4 : 0) | (first && endStream ? 0x1 : 0)
      frame(type: first ? 0x1 : 0x9, flags: flags, stream: id, payload: block[offset..<offset + n])
      offset += n
      first = false
    } while offset < block.count
  }

  private static func string(_ s: String, into out: inout [UInt8]) {
    let bytes = Array(s.utf8)
    integer(bytes.count, prefixBits: 7, into: &out)
    out += bytes
  }

  /// HPACK integer (RFC 7541 5.1) with the flag bits of the first byte zero.
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

  /// gRPC's percent-encoding of grpc-message.
  static func percentEncoded(_ s: String) -> String {
    var out = ""
    for b in s.utf8 {
      if b >= 0x20 && b <= 0x7e && b != 0x25 {
        out.unicodeScalars.append(Unicode.Scalar(b))
      } else {
        let hex = Array("0123456789ABCDEF".utf8)
        out += "%" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 0xf)]], as: UTF8.self)
      }
    }
    return out
  }

  private func flush() throws {
    guard !output.isEmpty else { return }
    try Socket.writeAll(fd, output)
    output.removeAll(keepingCapacity: true)
  }

  private func setting(_ id: UInt16, _ value: UInt32) -> [UInt8] {
    [UInt8(id >> 8), UInt8(id & 0xff)] + be32(value)
  }
}

@inline(__always)
func be32(_ v: UInt32) -> [UInt8] {
  [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
}

/// The handler's side of a streaming call on an ``H2Connection``.
private final class StreamCall: RPCStream {
  let connection: H2Connection
  let id: UInt32

  init(connection: H2Connection, id: UInt32) {
    self.connection = connection
    self.id = id
  }

  func receive() throws -> [UInt8]? { try connection.receive(id) }
  func send(_ message: [UInt8]) throws { try connection.send(id, message: message) }
}
