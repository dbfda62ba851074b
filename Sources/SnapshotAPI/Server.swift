import Logging
import SnapshotCore
import SnapshotSys

/// snapshotd's server: containerd's snapshots service and our store service on a unix
/// socket.
public final class SnapshotServer: Sendable {
  public let socketPath: String
  let rpc: RPCServer

  public init(socketPath: String, snapshotter: Snapshotter, logger: Logger) {
    self.socketPath = socketPath
    let routes = SnapshotsRoutes.make(snapshotter, logger: logger).merging(StoreRoutes.make(snapshotter, logger: logger)) { a, _ in a }
    rpc = RPCServer(socketPath: socketPath, routes: routes, logger: logger)
  }

  /// Binds the socket and serves on background threads.
  public func start() throws(SystemError) { try rpc.start() }

  /// Graceful: calls in progress are answered, then every connection closes.
  public func stop() { rpc.stop() }
}
