import Logging
import NIOCore
import NIOHPACK
import SnapshotSys
import Synchronization

/// One HTTP/2 connection carrying gRPC calls (RFC 9113, gRPC over HTTP/2), served on its
/// own thread with blocking reads. Calls are run in the order their requests complete, one
/// at a time: the snapshotter serializes its metadata transactions anyway, and running a
/// call on the thread that read it avoids every thread hand-off on the way (with
/// grpc-swift's general-purpose stack those hand-offs, not the work, dominated latency).
/// The exception is a route marked `unaryOffThread` (a Prepare that may wait for a
/// download): it runs on a thread of its own and posts its result to `mailbox`, whose
/// wakeup ends the connection thread's wait for input; that thread alone reads and writes
/// the socket.
///
/// What it implements: the connection preface, SETTINGS (with ACK), PING (ACK), flow control
/// both ways (WINDOW_UPDATE), HEADERS/CONTINUATION decoded with NIOHPACK, DATA, RST_STREAM
/// and GOAWAY. Responses are HEADERS, DATA and trailers (or a trailers-only error), encoded
/// as literal header fields without indexing. Frames are decoded and encoded by
/// ``FrameDecoder`` and ``FrameEncoder``; this class keeps the streams, the calls and the
/// flow-control windows.
final class H2Connection {
  let fd: Int32
  let routes: RPCRoutes
  let logger: Logger
  /// The client, as the kernel saw it connect (nil if it cannot tell).
  let peer: PeerCredentials?

  // Receiving.
  private var frames = FrameDecoder()
  private var hpack = HPACKDecoder(allocator: ByteBufferAllocator())
  private var unacknowledged = 0  // DATA bytes received since our last connection WINDOW_UPDATE
  private var continuing: UInt32?  // stream whose header block is incomplete

  // Sending.
  private var output = FrameEncoder()
  private var peerMaxFrame = FrameDecoder.maxFrameSize
  private var peerInitialWindow = H2Connection.defaultWindow
  private var connectionWindow = H2Connection.defaultWindow

  private var streams: [UInt32: Stream] = [:]
  private var ready: [UInt32] = []
  private var lastStream: UInt32 = 0
  private var peerGoingAway = false

  private var buffered = 0  // request bytes held across all streams

  // Calls running on threads of their own.
  private let mailbox: Mailbox
  private var working = 0  // how many
  private var wakeable = false  // run()'s loop is waiting for input: a wakeup ends the wait

  /// Results of calls run off the connection's thread, with the wakeup that tells it.
  final class Mailbox: Sendable {
    let wakeup: Wakeup
    private let results = Mutex<[(UInt32, Result<[[UInt8]], RPCStatus>)]>([])
    init() throws { wakeup = try Wakeup() }
    func post(_ id: UInt32, _ result: Result<[[UInt8]], RPCStatus>) {
      results.withLock { $0.append((id, result)) }
      wakeup.signal()
    }
    /// What was posted. `drain` (after a wake-up) empties the pipe too; without it, a frame
    /// costs no read(2), and a signal left in the pipe wakes the next wait, which drains it.
    func take(drain: Bool) -> [(UInt32, Result<[[UInt8]], RPCStatus>)] {
      if drain { wakeup.drain() }
      return results.withLock { r in
        defer { r.removeAll() }
        return r
      }
    }
  }
  /// Ends `fill`'s wait when a call run elsewhere finished.
  private struct Woken: Error {}

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
  /// Every flow-control window's size until SETTINGS or WINDOW_UPDATE change it.
  static let defaultWindow = 65_535
  /// Received DATA bytes given back to the client's connection window at once: one
  /// WINDOW_UPDATE per MiB rather than one per frame.
  static let windowUpdateBatch = 1 << 20
  /// The longest `grpc-message` sent (bytes, before percent-encoding): a status message
  /// quoting a client's input must not make a huge trailer.
  static let maxStatusMessage = 1024

  init(fd: Int32, routes: RPCRoutes, logger: Logger) throws {
    self.fd = fd
    self.routes = routes
    self.logger = logger
    peer = try? Socket.peerCredentials(fd)
    mailbox = try Mailbox()
  }

  /// Serves until the peer closes, a GOAWAY, or a protocol error; closes nothing itself.
  func run() {
    do {
      guard try readPreface() else { return }  // a connect-and-close probe
      // Our SETTINGS, then widen the connection window. What one connection can make us
      // buffer is bounded by these.
      output.settings([
        Setting(id: .maxConcurrentStreams, value: UInt32(Self.maxStreams)),
        Setting(id: .initialWindowSize, value: UInt32(Self.streamWindow)),
        Setting(id: .maxHeaderListSize, value: UInt32(Self.maxHeaderList)),
      ])
      output.windowUpdate(stream: 0, increment: UInt32(Self.connectionWindow - Self.defaultWindow))
      try flush()
      while true {
        var frame: Frame?
        var woken = false
        do {
          wakeable = working > 0
          defer { wakeable = false }
          frame = try readFrame()
        } catch is Woken {
          woken = true
        }
        if !woken {
          guard let f = frame else { break }
          try handle(f)
        }
        // Answering may read frames (waiting for a send window) that complete more requests.
        repeat {
          while !ready.isEmpty { try respond(ready.removeFirst()) }
          if working > 0 { try deliver(drain: woken) }
          woken = false
        } while !ready.isEmpty
        try flush()
        if peerGoingAway && streams.isEmpty { break }
      }
      // Calls still running elsewhere are answered first: a peer that stopped sending may
      // still read (and a stopping server lets calls in progress finish).
      while working > 0 {
        mailbox.wakeup.wait()
        try deliver(drain: true)
        try flush()
      }
      // End of input (the peer closed, or the server is stopping): say which streams were
      // answered, so a client can retry the others elsewhere.
      output.goAway(lastStream: lastStream, code: .noError)
      try? flush()
    } catch let e as ConnectionError {
      logger.warning("closing connection: HTTP/2 protocol error", metadata: ["reason": "\(e.reason)"])
      output.goAway(lastStream: lastStream, code: e.code)
      try? flush()
    } catch {
      logger.debug("connection closed", metadata: ["error": "\(error)"])
    }
  }

  // MARK: Reading

  /// Reads until `count` bytes are buffered; false at the end of input.
  private func fill(_ count: Int) throws -> Bool {
    try frames.fill(count) { space in
      if wakeable, try !Socket.waitReadable(fd, or: mailbox.wakeup) { throw Woken() }
      return try Socket.read(fd, into: space)
    }
  }

  /// False when the peer closed without sending anything.
  private func readPreface() throws -> Bool {
    while try !frames.preface() {
      guard try fill(FrameDecoder.preface.count) else {
        if frames.buffered == 0 { return false }
        throw ConnectionError(.protocolError, "closed in the connection preface")
      }
    }
    return true
  }

  /// The next frame; nil at the end of input.
  private func readFrame() throws -> Frame? {
    while true {
      if let frame = try frames.next() { return frame }
      guard try fill(frames.needed) else { return nil }
    }
  }

  // MARK: Frames

  private func handle(_ f: Frame) throws {
    if let id = continuing, f.type != .continuation || f.stream != id {
      throw ConnectionError(.protocolError, "expected CONTINUATION of stream \(id)")
    }
    try f.checkShape()
    switch f.type {
    case .data: try data(f)
    case .headers: try headers(f)
    case .rstStream: removeStream(f.stream)
    case .settings: try settings(f)
    case .ping:
      if !f.flags.contains(.ack) { output.pingAck(f.payload) }
    case .goAway: peerGoingAway = true
    case .windowUpdate: try windowUpdate(f)
    case .continuation:
      guard continuing == f.stream else { throw ConnectionError(.protocolError, "CONTINUATION without HEADERS") }
      try headerFragment(f.stream, f.payload, endHeaders: f.flags.contains(.endHeaders))
    case .pushPromise: throw ConnectionError(.protocolError, "PUSH_PROMISE from a client")
    case .priority, nil: break  // PRIORITY and unknown frame types are ignored
    }
  }

  private func headers(_ f: Frame) throws {
    guard f.stream != 0, f.stream & 1 == 1 else { throw ConnectionError(.protocolError, "HEADERS on stream \(f.stream)") }
    let fragment = try f.headerBlockFragment()
    if let open = streams[f.stream], open.endStream {
      // Its request is complete (its call may be running elsewhere): nothing more may come.
      throw ConnectionError(.streamClosed, "HEADERS on half-closed stream \(f.stream)")
    }
    if streams[f.stream] == nil {
      guard f.stream > lastStream else { throw ConnectionError(.protocolError, "stream \(f.stream) reused") }
      lastStream = f.stream
      guard streams.count < Self.maxStreams else { throw ConnectionError(.protocolError, "more than \(Self.maxStreams) open streams") }
      streams[f.stream] = Stream(sendWindow: peerInitialWindow)
    }
    if f.flags.contains(.endStream) { streams[f.stream]?.endStream = true }
    try headerFragment(f.stream, fragment, endHeaders: f.flags.contains(.endHeaders))
  }

  private func headerFragment(_ id: UInt32, _ fragment: ArraySlice<UInt8>, endHeaders: Bool) throws {
    guard let held = streams[id]?.block.count else { throw ConnectionError(.protocolError, "header block for closed stream \(id)") }
    guard held + fragment.count <= Self.maxHeaderList * 2 else {
      throw ConnectionError(.enhanceYourCalm, "header block of stream \(id) too large")
    }
    streams[id]!.block.append(contentsOf: fragment)
    continuing = endHeaders ? nil : id
    guard endHeaders, var stream = streams[id] else { return }
    var buffer = ByteBuffer(bytes: stream.block)
    let decoded: HPACKHeaders
    do {
      decoded = try hpack.decodeHeaders(from: &buffer)
    } catch {
      throw ConnectionError(.compressionError, "header block of stream \(id): \(error)")
    }
    let first = stream.path == nil
    if first { stream.path = decoded.first(name: ":path") }
    stream.block = []
    if first, let path = stream.path, case .streaming = routes[path] { stream.streaming = true }
    streams[id] = stream
    if stream.endStream || (first && stream.streaming) { ready.append(id) }
  }

  private func data(_ f: Frame) throws {
    guard f.stream != 0 else { throw ConnectionError(.protocolError, "DATA on stream 0") }
    unacknowledged += f.payload.count  // padding included
    if unacknowledged >= Self.windowUpdateBatch {
      output.windowUpdate(stream: 0, increment: UInt32(unacknowledged))
      unacknowledged = 0
    }
    let p = try f.unpadded()
    guard let stream = streams[f.stream], !stream.endStream else { return }  // reset or answered
    let held = stream.data.count + p.count
    buffered += p.count
    guard buffered <= Self.maxBuffered else {
      throw ConnectionError(.enhanceYourCalm, "more than \(Self.maxBuffered) bytes of requests held")
    }
    streams[f.stream]!.data.append(contentsOf: p)  // in place: no copy of what is held
    if held >= 5 {
      let d = streams[f.stream]!.data
      let declared = Int(d[1]) << 24 | Int(d[2]) << 16 | Int(d[3]) << 8 | Int(d[4])
      if declared > Self.maxRequest {
        // Refused at once, before the client has sent it all; RST_STREAM stops the rest.
        buffered -= held
        streams[f.stream] = nil
        errorResponse(f.stream, RPCStatus(.resourceExhausted, "request message of \(declared) bytes exceeds \(Self.maxRequest)"))
        output.rstStream(stream: f.stream, code: .noError)
        return
      }
    }
    if f.flags.contains(.endStream) {
      streams[f.stream]!.endStream = true
      if !streams[f.stream]!.streaming { ready.append(f.stream) }
    }
  }

  private func settings(_ f: Frame) throws {
    guard !f.flags.contains(.ack) else { return }
    for setting in try f.settings() {
      switch setting.id {
      case .initialWindowSize:
        let value = Int(setting.value)
        let delta = value - peerInitialWindow
        peerInitialWindow = value
        for key in streams.keys { streams[key]!.sendWindow += delta }
      case .maxFrameSize:
        peerMaxFrame = Int(setting.value)
      default: break
      }
    }
    output.settingsAck()
  }

  private func windowUpdate(_ f: Frame) throws {
    let inc = try f.windowIncrement()
    if f.stream == 0 {
      guard connectionWindow + inc <= 0x7fff_ffff else { throw ConnectionError(.flowControlError, "connection window overflow") }
      connectionWindow += inc
    } else if let w = streams[f.stream]?.sendWindow {
      guard w + inc <= 0x7fff_ffff else { throw ConnectionError(.flowControlError, "stream window overflow") }
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
    switch stream.path.flatMap({ routes[$0] }) {
    case .unary(let route):
      try answer(id, Self.run(route, stream.data))
    case .unaryOffThread(let route):
      // Reset streams leave their calls running: bounded all the same.
      guard working < Self.maxStreams else {
        try answer(id, .failure(RPCStatus(.resourceExhausted, "more than \(Self.maxStreams) calls running")))
        return
      }
      let body = stream.data
      let mailbox = self.mailbox
      working += 1
      do {
        try Threads.spawn { mailbox.post(id, Self.run(route, body)) }
      } catch {
        working -= 1
        try answer(id, .failure(RPCStatus(.internal, "no thread for the call: \(error)")))
      }
    default:
      try answer(id, .failure(RPCStatus(.unimplemented, "unknown method \(stream.path ?? "(none)")")))
    }
  }

  /// Runs a unary route on a request body (a length-prefixed message).
  private static func run(_ route: @Sendable ([UInt8]) throws -> [[UInt8]], _ body: [UInt8]) -> Result<[[UInt8]], RPCStatus> {
    switch message(body) {
    case .success(let request):
      do {
        return .success(try route(request))
      } catch let status as RPCStatus {
        return .failure(status)
      } catch {
        return .failure(RPCStatus(.internal, "\(error)"))
      }
    case .failure(let e):
      return .failure(e)
    }
  }

  /// Answers the calls run elsewhere that finished (those whose streams are still open).
  private func deliver(drain: Bool) throws {
    for (id, result) in mailbox.take(drain: drain) {
      working -= 1
      if streams[id] != nil { try answer(id, result) }
    }
  }

  /// Sends a unary call's response: its messages and OK, or its error status.
  private func answer(_ id: UInt32, _ result: Result<[[UInt8]], RPCStatus>) throws {
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
    } catch let e as ConnectionError {
      throw e
    } catch is StreamGone {
      streams[id] = nil
      return
    } catch {
      status = RPCStatus(.internal, "\(error)")
    }
    guard let stream = streams[id] else { return }
    buffered -= stream.data.count
    if stream.started {
      var trailers = [("grpc-status", String(status.code.rawValue))]
      if status.code != .ok { trailers.append(("grpc-message", Self.message(of: status))) }
      headerFrames(id, trailers, endStream: true)
    } else if status.code == .ok {
      headerFrames(id, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")], endStream: true)
    } else {
      errorResponse(id, status)
    }
    if !stream.endStream { output.rstStream(stream: id, code: .noError) }  // the rest is not wanted
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
          output.windowUpdate(stream: id, increment: UInt32(5 + length))
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

  /// Whether a streaming call's client reset its stream or closed the connection: reads the
  /// frames already there, without waiting for more.
  fileprivate func cancelled(_ id: UInt32) -> Bool {
    do {
      while streams[id] != nil, Socket.hasInput(fd) {
        guard let f = try readFrame() else { return true }  // the client closed
        try handle(f)
      }
      try flush()
    } catch {
      return true
    }
    return streams[id] == nil
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
    headerFrames(
      id,
      [
        (":status", "200"), ("content-type", "application/grpc"), ("grpc-status", String(status.code.rawValue)),
        ("grpc-message", Self.message(of: status)),
      ],
      endStream: true)
  }

  /// The `grpc-message` value of `status`: its message cut to 1 KiB (at a character
  /// boundary, then "..."), percent-encoded.
  private static func message(of status: RPCStatus) -> String {
    var message = status.message
    if message.utf8.count > maxStatusMessage {
      message = String(decoding: message.utf8.prefix(maxStatusMessage), as: UTF8.self) + "..."
    }
    return percentEncoded(message)
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
        guard let f = try readFrame() else { throw ConnectionError(.noError, "closed while sending") }
        try handle(f)
        continue
      }
      output.data(stream: id, body[offset..<offset + n])
      streams[id]!.sendWindow -= n
      connectionWindow -= n
      offset += n
    }
    return true
  }

  // MARK: Writing

  /// A header block as HEADERS plus CONTINUATION frames no larger than the peer allows.
  private func headerFrames(_ id: UInt32, _ fields: [(String, String)], endStream: Bool) {
    output.headers(stream: id, block: HeaderBlock.literal(fields), endStream: endStream, maxFrameSize: peerMaxFrame)
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
    try Socket.writeAll(fd, output.bytes)
    output.removeAll()
  }
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
  var peer: PeerCredentials? { connection.peer }
  var isCancelled: Bool { connection.cancelled(id) }
}
