import GRDB
import SnapshotSys
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// The one error type of the snapshotter. Its ``Kind`` is what containerd's `errdefs`
/// distinguishes; the API layer maps each kind to a gRPC status code in one place.
public struct SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
  public enum Kind: String, Sendable, CaseIterable {
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

extension SnapshotError {
  /// The one conversion of what the layers below the core throw (system calls, the layer
  /// store, the database) into the snapshotter's kinds: a full file system is Unavailable,
  /// a layer's bad content InvalidArgument, anything else Internal. The registry's errors
  /// are converted where the core meets the registry (snapshotd's `RegistryFetcher`); the kinds become gRPC codes
  /// in `SnapshotAPI/Convert.swift`.
  public init(_ error: any Error) {
    func failed(_ errno: Int32?, _ message: String) -> SnapshotError {
      errno == ENOSPC || errno == EDQUOT ? .init(.unavailable, "no space left: \(message)") : .internal(message)
    }
    switch error {
    case let e as SnapshotError: self = e
    case let e as SystemError: self = failed(e.errno, "\(e)")
    case let e as LayerError:
      switch e.kind {
      case .invalid: self = .invalid(e.message)
      case .cancelled: self = .init(.cancelled, e.message)
      case .failed: self = failed(e.errno, e.message)
      }
    case let e as DatabaseError where e.resultCode == .SQLITE_FULL:
      self = .init(.unavailable, "no space left for the metadata database: \(e.message ?? "")")
    default: self = .internal("\(error)")
    }
  }
}
