import GRPCCore
import GRPCNIOTransportHTTP2
import SnapshotCore

/// A connection to a snapshotd (or any containerd snapshots service) on a unix socket.
public typealias SnapshotsClient = SnapshotsAPI.Client<HTTP2ClientTransport.Posix>

/// A long-lived client connection; ``close()`` it when done.
public final class SnapshotsConnection: Sendable {
  public let client: SnapshotsClient
  public let store: StoreClient
  private let grpc: GRPCClient<HTTP2ClientTransport.Posix>
  private let connections: Task<Void, any Error>

  public init(socketPath: String) throws {
    grpc = GRPCClient(
      transport: try HTTP2ClientTransport.Posix(
        target: .unixDomainSocket(path: socketPath),
        transportSecurity: .plaintext))
    let grpc = self.grpc
    connections = Task { try await grpc.runConnections() }
    client = SnapshotsAPI.Client(wrapping: grpc)
    store = StoreClient(wrapping: grpc)
  }

  public func close() async {
    grpc.beginGracefulShutdown()
    _ = try? await connections.value
  }
}

/// snapshotd's store service (layer and image import, usage, gc).
public typealias StoreClient = Snapshotd_V1_Store.Client<HTTP2ClientTransport.Posix>

/// Runs `body` with a client connected to the unix socket at `socketPath`; gRPC errors
/// thrown inside come back as ``SnapshotError`` of the matching kind.
public func withSnapshotsClient<T: Sendable>(
  socketPath: String,
  _ body: @Sendable (SnapshotsClient) async throws -> T
) async throws -> T {
  try await withConnection(socketPath: socketPath) { try await body($0.client) }
}

/// ``withSnapshotsClient(socketPath:_:)`` for the store service.
public func withStoreClient<T: Sendable>(
  socketPath: String,
  _ body: @Sendable (StoreClient) async throws -> T
) async throws -> T {
  try await withConnection(socketPath: socketPath) { try await body($0.store) }
}

private func withConnection<T: Sendable>(
  socketPath: String,
  _ body: @Sendable (SnapshotsConnection) async throws -> T
) async throws -> T {
  let connection = try SnapshotsConnection(socketPath: socketPath)
  do {
    let result = try await body(connection)
    await connection.close()
    return result
  } catch let error as RPCError {
    await connection.close()
    throw SnapshotError(error)
  } catch {
    await connection.close()
    throw error
  }
}
