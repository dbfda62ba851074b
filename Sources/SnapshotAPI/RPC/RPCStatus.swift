/// A gRPC status: the code and message sent in the `grpc-status` and `grpc-message`
/// trailers.
public struct RPCStatus: Error, Sendable, Equatable {
  public enum Code: Int, Sendable {
    case ok = 0, cancelled, unknown, invalidArgument, deadlineExceeded, notFound, alreadyExists,
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

/// The methods a server offers: full method path (`/package.Service/Method`) to a handler
/// that takes one serialized request message and returns the serialized response messages
/// (one for a unary call, any number for a server-streaming one). A thrown ``RPCStatus`` is
/// sent as is; any other error as INTERNAL.
public typealias RPCRoutes = [String: @Sendable ([UInt8]) throws -> [[UInt8]]]
