import GRPCCore
import Logging
import SnapshotCore
import SwiftProtobuf

public typealias SnapshotsAPI = Containerd_Services_Snapshots_V1_Snapshots
public typealias PBInfo = Containerd_Services_Snapshots_V1_Info
public typealias PBMount = Containerd_Types_Mount
public typealias PBKind = Containerd_Services_Snapshots_V1_Kind

/// The one mapping from the core's error kinds to gRPC status codes, matching containerd's
/// `errdefs.ToGRPC` so that its client turns them back into the same error kinds; clients
/// (grpc-swift) map a code back through the same table.
extension SnapshotError {
  /// Each kind's code (the same names: containerd's errdefs has one kind per code).
  static func code(_ kind: Kind) -> RPCStatus.Code {
    switch kind {
    case .invalidArgument: .invalidArgument
    case .notFound: .notFound
    case .alreadyExists: .alreadyExists
    case .failedPrecondition: .failedPrecondition
    case .unavailable: .unavailable
    case .cancelled: .cancelled
    case .internal: .internal
    }
  }

  public var status: RPCStatus { RPCStatus(Self.code(kind), message) }

  /// The level every route logs this failure at: the store's own failures (internal, and
  /// unavailable: a full disk) as errors; the answers containerd asks for as a matter of
  /// course (a snapshot not found, one that already exists: every layer of every pull) at
  /// debug; the caller's other mistakes at info.
  public var logLevel: Logger.Level {
    switch kind {
    case .internal, .unavailable: .error
    case .notFound, .alreadyExists: .debug
    case .invalidArgument, .failedPrecondition, .cancelled: .info
    }
  }

  /// The inverse, for clients (grpc-swift): a gRPC error back into a core error kind; a code
  /// of no kind is internal.
  public init(_ error: RPCError) {
    let kind = Kind.allCases.first { Self.code($0).rawValue == error.code.rawValue } ?? .internal
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

  /// The core's view of a client's Info. Times are clamped, not trusted: the store keeps
  /// its own (Update ignores them, as containerd's snapshotters do).
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
  /// A time the core keeps (nanoseconds since the epoch) as a valid protobuf Timestamp:
  /// `nanos` in 0..<1e9 also before 1970.
  init(unixNanos: Int64) {
    let (q, r) = unixNanos.quotientAndRemainder(dividingBy: 1_000_000_000)
    self.init(seconds: r < 0 ? q - 1 : q, nanos: Int32(r < 0 ? r + 1_000_000_000 : r))
  }

  /// Nanoseconds since the epoch, clamped to what an Int64 holds (about years 1678 to
  /// 2262): a client may send any seconds (Go's zero time is -62135596800) and any nanos.
  var unixNanos: Int64 {
    let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if overflow { return seconds < 0 ? .min : .max }
    let (sum, overflow2) = scaled.addingReportingOverflow(Int64(nanos))
    if overflow2 { return nanos < 0 ? .min : .max }
    return sum
  }
}
