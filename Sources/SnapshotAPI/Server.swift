import Logging
import SnapshotCore
import SnapshotSys

/// snapshotd's server: containerd's snapshots service and our store service on a unix
/// socket.
public final class SnapshotServer: Sendable {
  public let socketPath: String
  let rpc: RPCServer

  /// With `metrics`, every call is counted and timed (`RPCMetrics`).
  public init(socketPath: String, snapshotter: Snapshotter, metrics: RPCMetrics? = nil, logger: Logger) {
    self.socketPath = socketPath
    let routes = SnapshotsRoutes.make(snapshotter, logger: logger).merging(StoreRoutes.make(snapshotter, logger: logger)) { a, _ in a }
    rpc = RPCServer(socketPath: socketPath, routes: metrics?.instrument(routes) ?? routes, logger: logger)
  }

  /// Binds the socket and serves on background threads.
  public func start() throws(SystemError) { try rpc.start() }

  /// Graceful: calls in progress are answered, then every connection closes; after
  /// `deadline` seconds the calls still running are abandoned. Returns how many
  /// connections were abandoned.
  @discardableResult
  public func stop(deadline: Double = .infinity) -> Int { rpc.stop(deadline: deadline) }
}
