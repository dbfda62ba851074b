import SnapshotSys

/// The kind of a snapshot, with containerd's numbering (`snapshots.proto` `Kind`).
public enum SnapshotKind: Int, Sendable, CaseIterable {
  case view = 1
  case active = 2
  case committed = 3

  /// The name containerd's filters and CLI use (`kind==committed`).
  public var name: String {
    switch self {
    case .view: "view"
    case .active: "active"
    case .committed: "committed"
    }
  }
}

/// What Stat, List and Update return for a snapshot.
public struct SnapshotInfo: Sendable, Equatable {
  public var name: String
  public var parent: String
  public var kind: SnapshotKind
  /// Nanoseconds since the Unix epoch.
  public var created: Int64
  public var updated: Int64
  public var labels: [String: String]

  public init(name: String, parent: String = "", kind: SnapshotKind, created: Int64 = 0, updated: Int64 = 0, labels: [String: String] = [:])
  {
    self.name = name
    self.parent = parent
    self.kind = kind
    self.created = created
    self.updated = updated
    self.labels = labels
  }
}

/// Bytes and inodes a snapshot's own directory takes on disk.
public struct SnapshotUsage: Sendable, Equatable {
  public var size: Int64
  public var inodes: Int64
  public init(size: Int64, inodes: Int64) {
    self.size = size
    self.inodes = inodes
  }
}

/// A mount in containerd's shape (`types/mount.proto`).
public struct Mount: Sendable, Equatable {
  public var type: String
  public var source: String
  public var target: String
  public var options: [String]

  public init(type: String, source: String, target: String = "", options: [String]) {
    self.type = type
    self.source = source
    self.target = target
    self.options = options
  }
}

/// Limits containerd applies, and ours.
public enum Limits {
  /// containerd's `labels.Validate`: key plus value at most 4096 bytes.
  public static let labelPairBytes = 4096
  /// Longest key or name accepted (bytes). containerd stores keys as bolt bucket names;
  /// we cap them so that every error message and row stays reasonable.
  public static let keyBytes = 4096
}

enum Clock {
  static func nowNanos() -> Int64 {
    let ts = Sys.now()
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
  }
}

#if canImport(Glibc)
  import Glibc
#endif

/// What the layer store holds: imported layers, content objects, the bytes of regular
/// files stored (each object once) and the bytes the same files would take unshared.
public struct StoreUsage: Sendable, Equatable, Codable {
  public var layers: Int64
  public var objects: Int64
  public var storedBytes: Int64
  public var logicalBytes: Int64

  public init(layers: Int64, objects: Int64, storedBytes: Int64, logicalBytes: Int64) {
    self.layers = layers
    self.objects = objects
    self.storedBytes = storedBytes
    self.logicalBytes = logicalBytes
  }
}

/// What snapshotd keeps about a snapshot beyond containerd's Info (`snapctl stat`, `usage`).
public struct SnapshotDetails: Sendable, Equatable {
  /// Its writable layer is mounted volatile (`Volatile`).
  public var volatile: Bool
  /// Volatile, and the host restarted since it was prepared: not to be trusted.
  public var volatileUntrusted: Bool
  /// Its writable layer's size limit in bytes (0: none; `WritableLimit`).
  public var sizeLimit: Int64
  /// Bytes its writable file system has left, for a limited active snapshot.
  public var available: Int64

  public init(volatile: Bool, volatileUntrusted: Bool, sizeLimit: Int64, available: Int64) {
    self.volatile = volatile
    self.volatileUntrusted = volatileUntrusted
    self.sizeLimit = sizeLimit
    self.available = available
  }
}
