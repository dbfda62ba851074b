import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import SnapshotCore

/// The gRPC server of snapshotd on a unix socket, serving the snapshots service.
///
/// Connections and RPC handlers share one event loop: the handlers run on it as their task
/// executor, so a call does not bounce between the I/O thread and the concurrency pool
/// (each bounce is a thread wake-up, which dominated per-call latency). Blocking work (SQLite,
/// fsync, directory walks) runs on the metadata store's own queue, not on this loop.
public struct SnapshotServer: Sendable {
  public let socketPath: String
  let server: GRPCServer<HTTP2ServerTransport.Posix>
  let executor: EventLoopTaskExecutor

  public init(socketPath: String, snapshotter: Snapshotter, logger: Logger) {
    self.socketPath = socketPath
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    executor = EventLoopTaskExecutor(group.next())
    server = GRPCServer(
      transport: .http2NIOPosix(
        address: .unixDomainSocket(path: socketPath),
        transportSecurity: .plaintext,
        eventLoopGroup: group
      ),
      services: [SnapshotsService(snapshotter: snapshotter, logger: logger)]
    )
  }

  /// Serves until ``beginGracefulShutdown()``; returns once in-flight calls are done.
  public func serve() async throws {
    try await withTaskExecutorPreference(executor) {
      try await server.serve()
    }
  }

  /// Waits until the socket is bound (or throws if it could not be).
  public func waitUntilListening() async throws { _ = try await server.listeningAddress }

  public func beginGracefulShutdown() { server.beginGracefulShutdown() }
}

/// A NIO event loop as a Swift concurrency task executor.
final class EventLoopTaskExecutor: TaskExecutor, Sendable {
  let loop: any EventLoop

  init(_ loop: any EventLoop) { self.loop = loop }

  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
  }
}
