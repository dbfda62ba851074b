import Logging
import SnapshotCore
import SnapshotSys
import Testing

@testable import SnapshotAPI

#if canImport(Glibc)
  import Glibc
#endif

/// The HTTP/2 server against raw, hand-made frames: malformed input gets an error or a
/// closed connection, never a crash, and the server keeps serving. The server serves stub
/// routes (`withStubServer`), not a snapshotter, so the suite runs as any user.
@Suite struct H2Tests {
  static let snapshots = "/containerd.services.snapshots.v1.Snapshots/"

  /// Runs `body` with the socket of an `RPCServer` whose routes stand for the snapshots
  /// service: Stat answers NotFound; Prepare (off the connection's thread, as the real one)
  /// decodes its request and refuses an empty key; List sends `listed` in messages of 100.
  func withStubServer(listing listed: [PBInfo] = [], _ body: (String) async throws -> Void) async throws {
    var template = Array("/tmp/snapshotd-h2-XXXXXX".utf8CString)
    let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    defer { try? Tree.remove(dir) }
    let routes: RPCRoutes = [
      Self.snapshots + "Stat": .unary { _ in throw RPCStatus(.notFound, "snapshot x: not found") },
      Self.snapshots + "Prepare": .unaryOffThread { bytes in
        let r: Containerd_Services_Snapshots_V1_PrepareSnapshotRequest
        do { r = try .init(serializedBytes: bytes) } catch { throw RPCStatus(.invalidArgument, "malformed Prepare request") }
        guard !r.key.isEmpty else { throw RPCStatus(.invalidArgument, "Prepare: no key") }
        return [try Containerd_Services_Snapshots_V1_PrepareSnapshotResponse().serializedBytes()]
      },
      Self.snapshots + "List": .unary { _ in
        try stride(from: 0, to: listed.count, by: 100).map { start in
          try Containerd_Services_Snapshots_V1_ListSnapshotsResponse.with {
            $0.info = Array(listed[start..<min(start + 100, listed.count)])
          }.serializedBytes()
        }
      },
    ]
    let socket = dir + "/s.sock"
    let server = RPCServer(socketPath: socket, routes: routes, logger: Logger(label: "test"))
    try server.start()
    defer { server.stop() }
    try await body(socket)
  }

  /// `n` snapshots named `prefix0`... with one label of `labelBytes` bytes each.
  static func infos(_ n: Int, prefix: String, labelBytes: Int) -> [PBInfo] {
    let label = String(repeating: "l", count: labelBytes)
    return (0..<n).map { i in
      PBInfo.with {
        $0.name = "\(prefix)\(i)"
        $0.labels = ["x": label]
      }
    }
  }

  /// A raw HTTP/2 client: frames in, frames out.
  final class Raw {
    let fd: Int32
    var input: [UInt8] = []
    /// DATA bytes passed over while waiting for another frame.
    var skippedData = 0

    init(_ socket: String) throws { fd = try Socket.connect(unixPath: socket) }
    deinit { Socket.close(fd) }

    func send(_ bytes: [UInt8]) throws { try Socket.writeAll(fd, bytes) }

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    static func frame(_ type: FrameType, _ flags: FrameFlags, _ stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
      frame(type.rawValue, flags, stream, payload)
    }

    /// A frame of any type code, known or not.
    static func frame(_ type: UInt8, _ flags: FrameFlags, _ stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
      let n = payload.count
      return [
        UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags.rawValue,
        UInt8(stream >> 24), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff),
      ] + payload
    }

    /// A header block of literal fields without indexing (names and values under 127 bytes).
    static func headers(_ fields: [(String, String)]) -> [UInt8] {
      var out: [UInt8] = []
      for (n, v) in fields {
        out.append(0)
        out.append(UInt8(n.utf8.count))
        out += Array(n.utf8)
        out.append(UInt8(v.utf8.count))
        out += Array(v.utf8)
      }
      return out
    }

    static func request(_ stream: UInt32, path: String, body: [UInt8], compressed: Bool = false) -> [UInt8] {
      let h = headers([
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
        ("content-type", "application/grpc"), ("te", "trailers"),
      ])
      let n = body.count
      let message = [compressed ? 1 : 0, UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
      return frame(.headers, .endHeaders, stream, h) + frame(.data, .endStream, stream, message)
    }

    /// Reads frames until one of `type` arrives on `stream` (or EOF: nil).
    func next(type: FrameType, stream: UInt32? = nil) throws -> (flags: FrameFlags, payload: [UInt8])? {
      try frame(type: type, stream: stream).map { ($0.flags, $0.payload) }
    }

    /// The next frame of `type` (on `stream`, when given) with its stream; frames of other
    /// types and streams are skipped.
    func frame(type: FrameType, stream: UInt32? = nil) throws -> (stream: UInt32, flags: FrameFlags, payload: [UInt8])? {
      var buf = [UInt8](repeating: 0, count: 65536)
      while true {
        while input.count >= 9 {
          let n = Int(input[0]) << 16 | Int(input[1]) << 8 | Int(input[2])
          guard input.count >= 9 + n else { break }
          let t = input[3]
          let f = input[4]
          let s = UInt32(input[5] & 0x7f) << 24 | UInt32(input[6]) << 16 | UInt32(input[7]) << 8 | UInt32(input[8])
          let p = Array(input[9..<9 + n])
          input.removeFirst(9 + n)
          if t == type.rawValue && (stream == nil || s == stream) { return (s, FrameFlags(rawValue: f), p) }
          if t == FrameType.data.rawValue { skippedData += n }
        }
        let got = try buf.withUnsafeMutableBytes { try Socket.read(fd, into: $0) }
        if got == 0 { return nil }
        input += buf[0..<got]
      }
    }

    /// The error code of a GOAWAY frame's payload.
    static func errorCode(_ goAway: (flags: FrameFlags, payload: [UInt8])) -> ErrorCode? {
      guard goAway.payload.count >= 8 else { return nil }
      let p = goAway.payload
      return ErrorCode(rawValue: UInt32(p[4]) << 24 | UInt32(p[5]) << 16 | UInt32(p[6]) << 8 | UInt32(p[7]))
    }
  }

  /// The server still answers a well-formed Stat.
  func stillServes(_ socket: String) throws {
    let c = try Raw(socket)
    try c.send(
      Raw.preface + Raw.frame(.settings, [], 0, [])
        + Raw.request(1, path: "/containerd.services.snapshots.v1.Snapshots/Stat", body: [0x12, 1, 0x78]))
    let trailers = try #require(try c.next(type: .headers, stream: 1))
    #expect(String(decoding: trailers.payload, as: UTF8.self).contains("grpc-status\u{1}5"))  // NotFound: "x"
  }

  @Test func garbageAndBadFramesCloseTheConnectionOnly() async throws {
    try await withStubServer { socket in
      let junk = try Raw(socket)
      try junk.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
      let goaway = try junk.next(type: .goAway)
      #expect(goaway != nil)
      #expect(try junk.next(type: .data) == nil)  // then closed

      let big = try Raw(socket)
      try big.send(Raw.preface + Raw.frame(.data, [], 1, [UInt8](repeating: 0, count: 20_000)))
      let g = try #require(try big.next(type: .goAway))
      #expect(Raw.errorCode(g) == .frameSizeError)

      let badHeaders = try Raw(socket)
      try badHeaders.send(Raw.preface + Raw.frame(.headers, [.endStream, .endHeaders], 1, [0xff, 0xff, 0xff, 0xff, 0xff]))
      let g2 = try #require(try badHeaders.next(type: .goAway))
      #expect(Raw.errorCode(g2) == .compressionError)

      try stillServes(socket)
    }
  }

  @Test func badCallsGetGRPCErrors() async throws {
    try await withStubServer { socket in
      let c = try Raw(socket)
      try c.send(Raw.preface + Raw.frame(.settings, [], 0, []))
      try c.send(Raw.request(1, path: "/containerd.services.snapshots.v1.Snapshots/Nope", body: []))
      try c.send(Raw.request(3, path: "/containerd.services.snapshots.v1.Snapshots/Prepare", body: [0xff, 0xff, 0xff]))
      try c.send(Raw.request(5, path: "/containerd.services.snapshots.v1.Snapshots/Prepare", body: [0x12, 1, 0x61], compressed: true))
      try c.send(Raw.request(7, path: "/containerd.services.snapshots.v1.Snapshots/Prepare", body: []))
      // Prepare runs off the connection's thread, so answers may come in any order.
      var answers: [UInt32: (flags: FrameFlags, payload: [UInt8])] = [:]
      while answers.count < 4 {
        let f = try #require(try c.frame(type: .headers))
        answers[f.stream] = (f.flags, f.payload)
      }
      for (stream, code) in [(UInt32(1), "12"), (3, "3"), (5, "12"), (7, "3")] {
        let t = try #require(answers[stream])
        let text = String(decoding: t.payload, as: UTF8.self)
        // Literal field: name, then the value's length byte, then the value itself.
        let field = "grpc-status" + String(UnicodeScalar(UInt8(code.utf8.count))) + code
        #expect(text.contains(field), "\(stream): \(text)")
        #expect(t.flags.contains(.endStream))  // trailers-only, stream ended
      }
      // PING is answered.
      try c.send(Raw.frame(.ping, [], 0, [1, 2, 3, 4, 5, 6, 7, 8]))
      let ping = try #require(try c.next(type: .ping))
      #expect(ping.flags == .ack && ping.payload == [1, 2, 3, 4, 5, 6, 7, 8])
      try stillServes(socket)
    }
  }

  @Test func framesOutOfPlaceCloseTheConnection() async throws {
    try await withStubServer { socket in
      let h = Raw.headers([
        (":method", "POST"), (":path", "/containerd.services.snapshots.v1.Snapshots/Stat"),
        ("content-type", "application/grpc"),
      ])
      let cases: [(String, [UInt8], ErrorCode)] = [
        ("DATA on stream 0", Raw.frame(.data, [], 0, [0]), .protocolError),
        ("HEADERS on an even stream", Raw.frame(.headers, .endHeaders, 2, h), .protocolError),
        ("HEADERS with bad padding", Raw.frame(.headers, [.padded, .endHeaders], 1, [200] + h), .protocolError),
        ("a stream reused", Raw.frame(.headers, .endHeaders, 3, h) + Raw.frame(.headers, .endHeaders, 1, h), .protocolError),
        ("PUSH_PROMISE", Raw.frame(.pushPromise, .endHeaders, 1, [0, 0, 0, 2] + h), .protocolError),
        ("CONTINUATION without HEADERS", Raw.frame(.continuation, .endHeaders, 1, h), .protocolError),
        (
          "another frame inside a header block",
          Raw.frame(.headers, [], 1, Array(h.prefix(4))) + Raw.frame(.ping, [], 0, [0, 0, 0, 0, 0, 0, 0, 0]), .protocolError
        ),
        ("SETTINGS of a bad length", Raw.frame(.settings, [], 0, [0, 4, 0, 0, 1]), .frameSizeError),
        ("MAX_FRAME_SIZE too small", Raw.frame(.settings, [], 0, [0, 5, 0, 0, 0, 1]), .protocolError),
        ("INITIAL_WINDOW_SIZE too large", Raw.frame(.settings, [], 0, [0, 4, 0x80, 0, 0, 0]), .flowControlError),
        ("WINDOW_UPDATE of 0", Raw.frame(.windowUpdate, [], 0, [0, 0, 0, 0]), .protocolError),
        ("the connection window overflowing", Raw.frame(.windowUpdate, [], 0, [0x7f, 0xff, 0xff, 0xff]), .flowControlError),
      ]
      for (what, bytes, code) in cases {
        let c = try Raw(socket)
        try c.send(Raw.preface + Raw.frame(.settings, [], 0, []) + bytes)
        let g = try #require(try c.next(type: .goAway), "\(what)")
        #expect(Raw.errorCode(g) == code, "\(what)")
      }

      // PRIORITY frames and frames of unknown types are ignored.
      let c = try Raw(socket)
      try c.send(
        Raw.preface + Raw.frame(.settings, [], 0, []) + Raw.frame(.priority, [], 1, [0, 0, 0, 0, 15])
          + Raw.frame(0xfa, [], 0, [1, 2, 3])
          + Raw.request(1, path: "/containerd.services.snapshots.v1.Snapshots/Stat", body: [0x12, 1, 0x78]))
      let trailers = try #require(try c.next(type: .headers, stream: 1))
      #expect(String(decoding: trailers.payload, as: UTF8.self).contains("grpc-status\u{1}5"))
      try stillServes(socket)
    }
  }

  @Test func largeListRespectsFlowControl() async throws {
    // 1,500 snapshots with 300-byte labels: a List response of about half a megabyte, far
    // over the 64 KiB initial window, so the server must wait for WINDOW_UPDATEs.
    try await withStubServer(listing: Self.infos(1500, prefix: "k", labelBytes: 300)) { socket in
      let names = try await withSnapshotsClient(socketPath: socket) { c in
        try await c.list(.init()) { r in
          var all: [String] = []
          for try await batch in r.messages { all += batch.info.map(\.name) }
          return all
        }
      }
      #expect(names.count == 1500)
      #expect(Set(names).count == 1500)
    }
  }

  @Test func responsesWaitForTheClientsWindow() async throws {
    try await withStubServer(listing: Self.infos(400, prefix: "w", labelBytes: 400)) { socket in
      let c = try Raw(socket)
      // Default settings: a 65,535-byte window, and no WINDOW_UPDATE from us yet.
      try c.send(Raw.preface + Raw.frame(.settings, [], 0, []))
      try c.send(Raw.request(1, path: "/containerd.services.snapshots.v1.Snapshots/List", body: []))
      var received = 0
      while received < 65_535 {
        let d = try #require(try c.next(type: .data, stream: 1))
        received += d.payload.count
      }
      #expect(received == 65_535)
      // The server is blocked on the window: it still answers a PING, and sends nothing
      // more on the stream before it.
      try c.send(Raw.frame(.ping, [], 0, [9, 9, 9, 9, 9, 9, 9, 9]))
      _ = try #require(try c.next(type: .ping))
      #expect(c.skippedData == 0)
      try c.send(Raw.frame(.windowUpdate, [], 0, [0, 0x10, 0, 0]) + Raw.frame(.windowUpdate, [], 1, [0, 0x10, 0, 0]))
      var body: [UInt8] = []
      while true {
        guard let f = try c.next(type: .data, stream: 1) else { break }
        body += f.payload
        if body.count + received > 150_000 { break }
      }
      #expect(received + body.count > 150_000)
    }
  }

  @Test func oversizedRequestsAndHeaderBlocksAreRefused() async throws {
    try await withStubServer { socket in
      // A request declaring 32 MiB is refused on its first DATA frame, with RST_STREAM.
      let c = try Raw(socket)
      let h = Raw.headers([
        (":method", "POST"), (":path", "/containerd.services.snapshots.v1.Snapshots/Prepare"),
        ("content-type", "application/grpc"),
      ])
      try c.send(
        Raw.preface + Raw.frame(.settings, [], 0, []) + Raw.frame(.headers, .endHeaders, 1, h)
          + Raw.frame(.data, [], 1, [0, 2, 0, 0, 0] + [UInt8](repeating: 0, count: 1000)))
      let t = try #require(try c.next(type: .headers, stream: 1))
      #expect(String(decoding: t.payload, as: UTF8.self).contains("grpc-status\u{1}8"))
      #expect(try c.next(type: .rstStream, stream: 1) != nil)

      // END_STREAM on HEADERS whose block ends in a CONTINUATION: answered after it.
      try c.send(Raw.frame(.headers, .endStream, 3, Array(h.prefix(10))) + Raw.frame(.continuation, .endHeaders, 3, Array(h.dropFirst(10))))
      let t3 = try #require(try c.next(type: .headers, stream: 3))
      #expect(String(decoding: t3.payload, as: UTF8.self).contains("grpc-status\u{1}3"))  // empty request: no key

      // A header block that never ends is cut off.
      let d = try Raw(socket)
      try d.send(Raw.preface + Raw.frame(.headers, [], 1, [0]))
      for _ in 0..<10 {
        do { try d.send(Raw.frame(.continuation, [], 1, [UInt8](repeating: 0x40, count: 16_000))) } catch { break }
      }
      // Sends may fail once the server has closed; its GOAWAY is still there to read.
      let g = try #require(try d.next(type: .goAway))
      #expect(Raw.errorCode(g) == .enhanceYourCalm)
      try stillServes(socket)
    }
  }
}
