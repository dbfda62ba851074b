import GRPCCore
import Logging
import SnapshotCore
import SwiftProtobuf

/// containerd's `containerd.services.snapshots.v1.Snapshots` service over a ``Snapshotter``.
/// Each method translates the request, calls the core, and maps a ``SnapshotError`` to
/// its gRPC status in one place (``SnapshotError/rpcError``).
public struct SnapshotsService: SnapshotsAPI.SimpleServiceProtocol {
  let snapshotter: Snapshotter
  let logger: Logger

  public init(snapshotter: Snapshotter, logger: Logger) {
    self.snapshotter = snapshotter
    self.logger = logger
  }

  private func call<T>(_ method: String, _ key: String, _ body: () async throws(SnapshotError) -> T) async throws(RPCError) -> T {
    do {
      return try await body()
    } catch {
      let level: Logger.Level = error.kind == .internal || error.kind == .unavailable ? .error : .debug
      logger.log(level: level, "\(method) failed", metadata: ["key": "\(key.prefix(200))", "error": "\(error.message)"])
      throw error.rpcError
    }
  }

  public func prepare(request: Containerd_Services_Snapshots_V1_PrepareSnapshotRequest, context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_PrepareSnapshotResponse {
    let mounts = try await call("prepare", request.key) { () throws(SnapshotError) in
      try await snapshotter.prepare(key: request.key, parent: request.parent, labels: request.labels)
    }
    return .with { $0.mounts = mounts.map(PBMount.init) }
  }

  public func view(request: Containerd_Services_Snapshots_V1_ViewSnapshotRequest, context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_ViewSnapshotResponse {
    let mounts = try await call("view", request.key) { () throws(SnapshotError) in
      try await snapshotter.view(key: request.key, parent: request.parent, labels: request.labels)
    }
    return .with { $0.mounts = mounts.map(PBMount.init) }
  }

  public func mounts(request: Containerd_Services_Snapshots_V1_MountsRequest, context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_MountsResponse {
    let mounts = try await call("mounts", request.key) { () throws(SnapshotError) in
      try await snapshotter.mounts(key: request.key)
    }
    return .with { $0.mounts = mounts.map(PBMount.init) }
  }

  public func commit(request: Containerd_Services_Snapshots_V1_CommitSnapshotRequest, context: ServerContext) async throws -> Google_Protobuf_Empty {
    try await call("commit", request.key) { () throws(SnapshotError) in
      try await snapshotter.commit(name: request.name, key: request.key, labels: request.labels)
    }
    return .init()
  }

  public func remove(request: Containerd_Services_Snapshots_V1_RemoveSnapshotRequest, context: ServerContext) async throws -> Google_Protobuf_Empty {
    try await call("remove", request.key) { () throws(SnapshotError) in
      try await snapshotter.remove(key: request.key)
    }
    return .init()
  }

  public func stat(request: Containerd_Services_Snapshots_V1_StatSnapshotRequest, context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_StatSnapshotResponse {
    let info = try await call("stat", request.key) { () throws(SnapshotError) in
      try await snapshotter.stat(key: request.key)
    }
    return .with { $0.info = PBInfo(info) }
  }

  public func update(request: Containerd_Services_Snapshots_V1_UpdateSnapshotRequest, context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_UpdateSnapshotResponse {
    let info = try await call("update", request.info.name) { () throws(SnapshotError) in
      try await snapshotter.update(request.info.core, fieldPaths: request.updateMask.paths)
    }
    return .with { $0.info = PBInfo(info) }
  }

  public func list(request: Containerd_Services_Snapshots_V1_ListSnapshotsRequest, response: RPCWriter<Containerd_Services_Snapshots_V1_ListSnapshotsResponse>, context: ServerContext) async throws {
    let infos = try await call("list", "") { () throws(SnapshotError) in
      try await snapshotter.list(filters: request.filters)
    }
    // Batches, as containerd's service does, to keep each message small.
    var start = 0
    repeat {
      let end = min(start + 100, infos.count)
      try await response.write(.with { $0.info = infos[start..<end].map(PBInfo.init) })
      start = end
    } while start < infos.count
  }

  public func usage(request: Containerd_Services_Snapshots_V1_UsageRequest, context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_UsageResponse {
    let usage = try await call("usage", request.key) { () throws(SnapshotError) in
      try await snapshotter.usage(key: request.key)
    }
    return .with {
      $0.size = usage.size
      $0.inodes = usage.inodes
    }
  }

  public func cleanup(request: Containerd_Services_Snapshots_V1_CleanupRequest, context: ServerContext) async throws -> Google_Protobuf_Empty {
    let removed = try await call("cleanup", "") { () throws(SnapshotError) in
      try await snapshotter.cleanup()
    }
    if !removed.isEmpty { logger.info("cleanup removed orphan directories", metadata: ["count": "\(removed.count)"]) }
    return .init()
  }
}
