import SnapshotSys

/// A gRPC status: the code and message sent in the `grpc-status` and `grpc-message`
/// trailers.
public struct RPCStatus: Error, Sendable, Equatable {
  public enum Code: Int, Sendable {
    case ok = 0
    case cancelled, unknown, invalidArgument, deadlineExceeded, notFound, alreadyExists,
      permissionDenied, resourceExhausted, failedPrecondition, aborted, outOfRange, unimplemented,
      `internal`, unavailable, dataLoss, unauthenticated
  }

  public let code: Code
  public let message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }
}

/// A call whose requests or responses are a stream, seen from its handler: requests are
/// read from the connection as the handler asks for them (so flow control holds a fast
/// client back), responses are sent as they are produced.
public protocol RPCStream: AnyObject {
  /// The next request message; nil when the client has finished sending.
  func receive() throws -> [UInt8]?
  /// Sends one response message now.
  func send(_ message: [UInt8]) throws
  /// The client's credentials (SO_PEERCRED); nil if the transport cannot tell.
  var peer: PeerCredentials? { get }
  /// Whether the client has cancelled the call or gone, judged from what it has sent so
  /// far (no wait).
  var isCancelled: Bool { get }
}

/// How a method is served: a unary handler takes the one serialized request message and
/// returns the serialized response messages (any number for a server-streaming method
/// whose responses can wait until the end); a streaming handler runs as soon as the
/// request headers arrive. A thrown ``RPCStatus`` is sent as is; any other error as
/// INTERNAL.
public enum RPCHandler: Sendable {
  case unary(@Sendable ([UInt8]) throws -> [[UInt8]])
  /// A unary call that may wait long (a Prepare that fetches a layer from a registry): it
  /// runs on a thread of its own, so the connection's other calls go on meanwhile.
  case unaryOffThread(@Sendable ([UInt8]) throws -> [[UInt8]])
  case streaming(@Sendable (RPCStream) throws -> Void)
}

/// The methods a server offers, by full method path (`/package.Service/Method`).
public typealias RPCRoutes = [String: RPCHandler]
