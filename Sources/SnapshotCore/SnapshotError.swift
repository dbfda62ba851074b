/// The one error type of the snapshotter. Its ``Kind`` is what containerd's `errdefs`
/// distinguishes; the API layer maps each kind to a gRPC status code in one place.
public struct SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
  public enum Kind: String, Sendable {
    case invalidArgument
    case notFound
    case alreadyExists
    case failedPrecondition
    case unavailable
    /// The client cancelled the call, or left, before it was done.
    case cancelled
    case `internal`
  }

  public let kind: Kind
  public let message: String

  public init(_ kind: Kind, _ message: String) {
    self.kind = kind
    self.message = message
  }

  public var description: String { message }

  static func invalid(_ message: String) -> Self { .init(.invalidArgument, message) }
  static func notFound(_ message: String) -> Self { .init(.notFound, message) }
  static func exists(_ message: String) -> Self { .init(.alreadyExists, message) }
  static func precondition(_ message: String) -> Self { .init(.failedPrecondition, message) }
  static func `internal`(_ message: String) -> Self { .init(.internal, message) }
}
