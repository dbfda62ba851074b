import GRPCCore
import SnapshotCore
import SwiftProtobuf

public typealias SnapshotsAPI = Containerd_Services_Snapshots_V1_Snapshots
public typealias PBInfo = Containerd_Services_Snapshots_V1_Info
public typealias PBMount = Containerd_Types_Mount
public typealias PBKind = Containerd_Services_Snapshots_V1_Kind

/// The one mapping from the core's error kinds to gRPC status codes, matching containerd's
/// `errdefs.ToGRPC` so that its client turns them back into the same error kinds.
extension SnapshotError {
  public var status: RPCStatus {
    let code: RPCStatus.Code =
      switch kind {
      case .invalidArgument: .invalidArgument
      case .notFound: .notFound
      case .alreadyExists: .alreadyExists
      case .failedPrecondition: .failedPrecondition
      case .unavailable: .unavailable
      case .internal: .internal
      }
    return RPCStatus(code, message)
  }

  /// The inverse, for clients (grpc-swift): a gRPC error back into a core error kind.
  public init(_ error: RPCError) {
    let kind: Kind =
      switch error.code {
      case .invalidArgument: .invalidArgument
      case .notFound: .notFound
      case .alreadyExists: .alreadyExists
      case .failedPrecondition: .failedPrecondition
      case .unavailable: .unavailable
      default: .internal
      }
    self.init(kind, error.message)
  }
}

extension PBMount {
  public init(_ m: SnapshotCore.Mount) {
    self.init()
    type = m.type
    source = m.source
    target = m.target
    options = m.options
  }

  public var core: SnapshotCore.Mount {
    SnapshotCore.Mount(type: type, source: source, target: target, options: options)
  }
}

extension PBInfo {
  public init(_ i: SnapshotInfo) {
    self.init()
    name = i.name
    parent = i.parent
    kind = PBKind(rawValue: i.kind.rawValue) ?? .unknown
    createdAt = .init(unixNanos: i.created)
    updatedAt = .init(unixNanos: i.updated)
    labels = i.labels
  }

  public var core: SnapshotInfo {
    SnapshotInfo(
      name: name, parent: parent, kind: SnapshotKind(rawValue: kind.rawValue) ?? .active,
      created: createdAt.unixNanos, updated: updatedAt.unixNanos, labels: labels)
  }
}

extension Snapshotd_V1_CheckFinding {
  public init(_ f: CheckFinding) {
    self.init()
    kind = f.kind.rawValue
    detail = f.detail
    repairable = f.repairable
    repaired = f.repaired
  }

  /// As the core's `CheckFinding.description`: `KIND: DETAIL (state)`.
  public var line: String {
    let state = repaired ? "repaired" : repairable ? "repairable with --repair" : "cannot be repaired"
    return "\(kind): \(detail) (\(state))"
  }
}

extension Google_Protobuf_Timestamp {
  init(unixNanos: Int64) {
    self.init(seconds: unixNanos / 1_000_000_000, nanos: Int32(unixNanos % 1_000_000_000))
  }

  var unixNanos: Int64 { seconds * 1_000_000_000 + Int64(nanos) }
}
