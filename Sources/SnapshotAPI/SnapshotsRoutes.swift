import Logging
import SnapshotCore
import SwiftProtobuf

/// containerd's `containerd.services.snapshots.v1.Snapshots` methods over a ``Snapshotter``:
/// each decodes its request, calls the core, and encodes the response; a ``SnapshotError``
/// becomes its gRPC status in one place (``SnapshotError/status``).
public enum SnapshotsRoutes {
  static let service = "/containerd.services.snapshots.v1.Snapshots/"
  /// Snapshots per List response message: containerd's own server sends 100 a message, and
  /// a message stays far below the 16 MiB its client accepts whatever the labels.
  static let listBatch = 100

  public static func make(_ s: Snapshotter, logger: Logger) -> RPCRoutes {
    func unary<Request: Message, Response: Message>(
      _ method: String, _ type: Request.Type, key: @escaping @Sendable (Request) -> String,
      _ body: @escaping @Sendable (Request) throws -> Response
    ) -> (String, @Sendable ([UInt8]) throws -> [[UInt8]]) {
      (
        service + method,
        { bytes in
          let request: Request
          do {
            request = try Request(serializedBytes: bytes)
          } catch {
            throw RPCStatus(.invalidArgument, "malformed \(method) request: \(error)")
          }
          do {
            return [try body(request).serializedBytes()]
          } catch let e as SnapshotError {
            logger.log(level: e.logLevel, "\(method) failed", metadata: ["key": "\(key(request).prefix(200))", "error": "\(e.message)"])
            throw e.status
          } catch {
            throw RPCStatus(.internal, "\(method): encoding the response: \(error)")
          }
        }
      )
    }

    let routes: [(String, @Sendable ([UInt8]) throws -> [[UInt8]])] = [
      unary("Prepare", Containerd_Services_Snapshots_V1_PrepareSnapshotRequest.self, key: \.key) { r in
        let mounts = try s.prepare(key: r.key, parent: r.parent, labels: r.labels)
        return Containerd_Services_Snapshots_V1_PrepareSnapshotResponse.with { $0.mounts = mounts.map(PBMount.init) }
      },
      unary("View", Containerd_Services_Snapshots_V1_ViewSnapshotRequest.self, key: \.key) { r in
        let mounts = try s.view(key: r.key, parent: r.parent, labels: r.labels)
        return Containerd_Services_Snapshots_V1_ViewSnapshotResponse.with { $0.mounts = mounts.map(PBMount.init) }
      },
      unary("Mounts", Containerd_Services_Snapshots_V1_MountsRequest.self, key: \.key) { r in
        let mounts = try s.mounts(key: r.key)
        return Containerd_Services_Snapshots_V1_MountsResponse.with { $0.mounts = mounts.map(PBMount.init) }
      },
      unary("Commit", Containerd_Services_Snapshots_V1_CommitSnapshotRequest.self, key: \.key) { r in
        try s.commit(name: r.name, key: r.key, labels: r.labels)
        return Google_Protobuf_Empty()
      },
      unary("Remove", Containerd_Services_Snapshots_V1_RemoveSnapshotRequest.self, key: \.key) { r in
        try s.remove(key: r.key)
        return Google_Protobuf_Empty()
      },
      unary("Stat", Containerd_Services_Snapshots_V1_StatSnapshotRequest.self, key: \.key) { r in
        let info = try s.stat(key: r.key)
        return Containerd_Services_Snapshots_V1_StatSnapshotResponse.with { $0.info = PBInfo(info) }
      },
      unary("Update", Containerd_Services_Snapshots_V1_UpdateSnapshotRequest.self, key: \.info.name) { r in
        let info = try s.update(r.info.core, fieldPaths: r.updateMask.paths)
        return Containerd_Services_Snapshots_V1_UpdateSnapshotResponse.with { $0.info = PBInfo(info) }
      },
      unary("Usage", Containerd_Services_Snapshots_V1_UsageRequest.self, key: \.key) { r in
        let usage = try s.usage(key: r.key)
        return Containerd_Services_Snapshots_V1_UsageResponse.with {
          $0.size = usage.size
          $0.inodes = usage.inodes
        }
      },
      unary("Cleanup", Containerd_Services_Snapshots_V1_CleanupRequest.self, key: { _ in "" }) { _ in
        let removed = try s.cleanup()
        if !removed.isEmpty { logger.info("cleanup removed orphan directories", metadata: ["count": "\(removed.count)"]) }
        return Google_Protobuf_Empty()
      },
    ]
    var table = RPCRoutes(uniqueKeysWithValues: routes.map { ($0.0, RPCHandler.unary($0.1)) })
    // A Prepare may wait for a layer's download (CRI's labels): off the connection's thread.
    if case .unary(let prepare) = table[service + "Prepare"] { table[service + "Prepare"] = .unaryOffThread(prepare) }
    // List streams its results in batches of 100, as containerd's service does.
    table[service + "List"] = .unary { bytes in
      let request: Containerd_Services_Snapshots_V1_ListSnapshotsRequest
      do {
        request = try .init(serializedBytes: bytes)
      } catch {
        throw RPCStatus(.invalidArgument, "malformed List request: \(error)")
      }
      let infos: [SnapshotInfo]
      do {
        infos = try s.list(filters: request.filters)
      } catch let e as SnapshotError {
        throw e.status
      }
      var out: [[UInt8]] = []
      var start = 0
      repeat {
        let end = min(start + listBatch, infos.count)
        let batch = Containerd_Services_Snapshots_V1_ListSnapshotsResponse.with { $0.info = infos[start..<end].map(PBInfo.init) }
        do { out.append(try batch.serializedBytes()) } catch { throw RPCStatus(.internal, "List: encoding: \(error)") }
        start = end
      } while start < infos.count
      return out
    }
    return table
  }
}
