import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SnapshotCore

/// The gRPC server of snapshotd on a unix socket, serving the snapshots service.
public struct SnapshotServer: Sendable {
  public let socketPath: String
  let server: GRPCServer<HTTP2ServerTransport.Posix>

  public init(socketPath: String, snapshotter: Snapshotter, logger: Logger) {
    self.socketPath = socketPath
    server = GRPCServer(
      transport: .http2NIOPosix(
        address: .unixDomainSocket(path: socketPath),
        transportSecurity: .plaintext
      ),
      services: [SnapshotsService(snapshotter: snapshotter, logger: logger)]
    )
  }

  /// Serves until ``beginGracefulShutdown()``; returns once in-flight calls are done.
  public func serve() async throws { try await server.serve() }

  /// Waits until the socket is bound (or throws if it could not be).
  public func waitUntilListening() async throws { _ = try await server.listeningAddress }

  public func beginGracefulShutdown() { server.beginGracefulShutdown() }
}
