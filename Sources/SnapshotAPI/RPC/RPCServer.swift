import Logging
import SnapshotSys

/// A gRPC server on a unix socket: one thread accepts, one thread per connection serves
/// (``H2Connection``). `stop()` is graceful: no new connections, calls in progress finish
/// and are answered, then every connection closes.
public final class RPCServer: Sendable {
  public let socketPath: String
  let routes: RPCRoutes
  let logger: Logger
  private let state = Condition(State())
  /// How long a connection's thread waits for a peer that stopped reading (SO_SNDTIMEO):
  /// at most this holds the thread, and a graceful stop, up.
  static let sendTimeout = 60
  /// The pause before accepting again when the process is out of descriptors or memory.
  static let acceptBackoff: useconds_t = 100_000

  private struct State {
    var listener: Int32 = -1
    var connections: Set<Int32> = []
    var stopping = false
    /// The accepting thread and the connections' threads still running.
    var threads = 0
  }

  public init(socketPath: String, routes: RPCRoutes, logger: Logger) {
    self.socketPath = socketPath
    self.routes = routes
    self.logger = logger
  }

  /// Binds the socket and starts accepting.
  public func start() throws(SystemError) {
    let fd = try Socket.listen(unixPath: socketPath)
    state.withLock {
      $0.listener = fd
      $0.threads += 1
    }
    do {
      try Threads.spawn { self.acceptLoop(fd) }
    } catch {
      state.update { $0.threads -= 1 }
      Socket.close(fd)
      throw error
    }
  }

  private func acceptLoop(_ listener: Int32) {
    defer {
      state.update { s in
        s.listener = -1
        Socket.close(listener)
        s.threads -= 1
      }
    }
    while true {
      let fd: Int32
      do {
        fd = try Socket.accept(listener)
      } catch {
        if state.withLock({ $0.stopping }) { return }
        if error.errno == EMFILE || error.errno == ENFILE || error.errno == ENOBUFS || error.errno == ENOMEM {
          logger.error("accept failed", metadata: ["error": "\(error)"])
          usleep(Self.acceptBackoff)
          continue
        }
        if error.errno == ECONNABORTED { continue }
        logger.error("accept failed, no longer serving", metadata: ["error": "\(error)"])
        return
      }
      let accepted = state.withLock { s in
        if s.stopping { return false }
        s.connections.insert(fd)
        s.threads += 1
        return true
      }
      guard accepted else {
        Socket.close(fd)
        return
      }
      try? Socket.setSendTimeout(fd, seconds: Self.sendTimeout)
      do {
        try Threads.spawn { self.serve(fd) }
      } catch {
        logger.error("cannot start a connection thread", metadata: ["error": "\(error)"])
        state.update {
          $0.connections.remove(fd)
          $0.threads -= 1
        }
        Socket.close(fd)
      }
    }
  }

  private func serve(_ fd: Int32) {
    do {
      try H2Connection(fd: fd, routes: routes, logger: logger).run()
    } catch {
      logger.warning("connection refused: no wakeup pipe", metadata: ["error": "\(error)"])
    }
    // Removed and closed under the lock, so stop() never shuts down a reused number.
    state.update { s in
      s.connections.remove(fd)
      Socket.close(fd)
      s.threads -= 1
    }
  }

  /// Stops accepting, lets calls in progress finish, closes every connection, and returns
  /// when all threads are done, or after `deadline` seconds: then the calls still running
  /// are abandoned (the process is about to exit; the store is crash-safe) and their
  /// connections are counted in the result.
  @discardableResult
  public func stop(deadline: Double = .infinity) -> Int {
    // shutdown() wakes accept() and every blocking read; a call being served still writes
    // its response before its thread notices the end of input. A peer that stopped reading
    // holds its thread at most the send timeout.
    state.withLock { s in
      s.stopping = true
      if s.listener >= 0 { Socket.shutdown(s.listener) }
      for fd in s.connections { Socket.shutdownRead(fd) }
    }
    if deadline.isFinite {
      return state.wait(until: { $0.threads == 0 }, seconds: deadline) { _ in 0 } ?? state.withLock { $0.connections.count }
    }
    state.wait(until: { $0.threads == 0 }) { _ in }
    return 0
  }
}

#if canImport(Glibc)
  import Glibc
#endif
