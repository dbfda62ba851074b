import ArgumentParser
import Dispatch
import Logging
import Registry
import ServiceLifecycle
import SnapshotAPI
import SnapshotCore
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

@main
struct Snapshotd: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapshotd",
    abstract: "A layered filesystem snapshotter for containerd, served on a unix socket.")

  @Option(help: "Directory holding the metadata database and the snapshot directories.")
  var root: String = "/var/lib/snapshotd"

  @Option(help: "Unix socket to serve the containerd snapshots API on.")
  var address: String = "/run/snapshotd/snapshotd.sock"

  @Option(help: "Group allowed to use the socket (mode 0660); without it the socket is root's only (0600).")
  var group: String?

  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  var logLevel: Logger.Level = .info

  @Option(
    help:
      "How to compose layers: overlay (kernel overlayfs), fuse (snapfs, mount type fuse3.snapfs), or auto (overlay if it mounts on the root's file system, else fuse)."
  )
  var driver: DriverChoice = .auto

  @Option(
    help:
      "How new layers are stored: erofs (one EROFS image per layer, mounted file-backed), directory (a directory of stubs per layer), or auto (erofs where the kernel mounts image files)."
  )
  var layerFormat: LayerFormat = .auto

  @Option(
    help:
      "Registry hosts, configured as containerd's: DIR/<host>/hosts.toml (mirrors, server, ca, client, skip_verify, capabilities)."
  )
  var registryConfigPath: String = HostsConfiguration.defaultConfigPath

  @Option(
    help:
      "Docker's config.json, whose `auths` hold registry credentials (default: $DOCKER_CONFIG/config.json, else $HOME/.docker/config.json)."
  )
  var dockerConfig: String?

  @Option(help: "Layers fetched from registries at once when containerd's CRI plugin names an image's layers on Prepare.")
  var fetchConcurrency: Int = 4

  @Flag(help: "Do not fetch layers CRI names: containerd downloads and unpacks every layer itself.")
  var noFetch = false

  @Option(
    help:
      "Seconds a stop (SIGTERM) waits for calls in progress; then they are abandoned and the daemon exits (the store recovers at the next start)."
  )
  var stopTimeout: Double = 20

  @Option(
    help:
      "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9337); off without it."
  )
  var metricsAddress: String?

  @Flag(
    help:
      "Make active snapshots volatile: overlayfs's volatile (no sync; snapfs skips fsync), for throwaway containers. A snapshot's label containerd.io/snapshot/overlay.volatile=true or =false overrides it."
  )
  var volatile = false

  @Option(
    help:
      "Limit each active snapshot's writes to SIZE (e.g. 10G; 0 = unlimited) with a file system of its own; the label containerd.io/snapshot/disk_quota overrides it per snapshot."
  )
  var writableSize: String = "0"

  enum DriverChoice: String, ExpressibleByArgument, CaseIterable {
    case overlay, fuse, auto
  }

  func validate() throws {
    guard root.hasPrefix("/") else { throw ValidationError("--root must be an absolute path, got \(root)") }
    guard !address.isEmpty else { throw ValidationError("--address must not be empty") }
    if let group, Sys.groupID(group) == nil { throw ValidationError("--group \(group): no such group") }
    guard (1...64).contains(fetchConcurrency) else { throw ValidationError("--fetch-concurrency must be 1 to 64, got \(fetchConcurrency)") }
    guard let size = WritableSize.parse(writableSize), size == 0 || (WritableSize.minimum...WritableSize.maximum).contains(size) else {
      throw ValidationError("--writable-size must be 0 or a size from 16M to 15T (like 10G), got \(writableSize)")
    }
    guard stopTimeout >= 0, stopTimeout.isFinite else {
      throw ValidationError("--stop-timeout must be 0 or more seconds, got \(stopTimeout)")
    }
  }

  func run() async throws {
    let level = logLevel
    LoggingSystem.bootstrap { label in
      var h = StreamLogHandler.standardError(label: label)
      h.logLevel = level
      return h
    }
    let logger = Logger(label: "snapshotd")
    do {
      try await serve(logger: logger)
    } catch let error as SnapshotError {
      logger.critical("\(error.message)")
      throw ExitCode(2)
    } catch let error as StartupError {
      logger.critical("\(error.message)")
      throw ExitCode(2)
    }
  }

  struct StartupError: Error { let message: String }

  func serve(logger: Logger) async throws {
    // One daemon per root: the lock is held for the life of the process.
    try? Sys.mkdirAll(root, mode: 0o700)
    let lock: Int32
    do {
      lock = try Sys.lockFile(Layout(root: root).lockFile)
    } catch  where error.errno == EAGAIN || error.errno == EACCES {
      throw StartupError(message: "root \(root) is in use by another snapshotd")
    } catch {
      throw StartupError(message: "root \(root) is unusable: \(error)")
    }
    defer { close(lock) }

    let (chosen, reason): (MountDriver, String) =
      switch driver {
      case .overlay: (.overlay, "--driver overlay")
      case .fuse: (.fuse, "--driver fuse")
      case .auto: MountDriver.probe(root: root)
      }
    logger.info("mount driver", metadata: ["driver": "\(chosen.rawValue)", "reason": "\(reason)"])
    if chosen == .fuse && Sys.findProgram("snapfs") == nil {
      logger.warning("snapfs is not installed beside snapshotd or on PATH: fuse3.snapfs mounts will fail")
    }
    let metrics = metricsAddress.map { _ in DaemonMetrics() }
    let snapshotter = try Snapshotter(
      root: root, driver: chosen, driverReason: reason, layerFormat: layerFormat,
      metrics: metrics.map { Instruments(factory: $0.factory) } ?? Instruments(), volatileByDefault: volatile,
      writableSizeByDefault: WritableSize.parse(writableSize) ?? 0, logger: logger)
    try prepareSocket()
    let endpoint = try metrics.map {
      try MetricsEndpoint(address: metricsAddress!, metrics: $0, snapshotter: snapshotter, logger: logger)
    }
    defer { endpoint?.stop() }

    // The socket is created with mode 0600 (0660 with --group): no moment where others can connect.
    let old = Sys.setUmask(group == nil ? 0o177 : 0o117)
    let server = SnapshotServer(
      socketPath: address, snapshotter: snapshotter, metrics: metrics.map { RPCMetrics(factory: $0.factory) }, logger: logger)
    let service = ServerService(
      server: server, group: group.flatMap(Sys.groupID), logger: logger, restoreUmask: old, stopTimeout: stopTimeout)
    let group = ServiceGroup(
      configuration: .init(
        services: [.init(service: service)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    let count = try snapshotter.count()
    logger.info("snapshotd starting", metadata: ["root": "\(root)", "address": "\(address)", "snapshots": "\(count)"])
    // The registry client last, right before serving: once made, it must be shut down
    // (awaited) whatever happens next.
    var registry: RegistryClient?
    if !noFetch {
      var configuration = RegistryConfiguration()
      configuration.hosts = HostsConfiguration(configPath: registryConfigPath)
      if let dockerConfig { configuration.dockerConfigPath = dockerConfig }
      let client = RegistryClient(configuration: configuration)
      snapshotter.fetcher = RegistryFetcher(client: client, store: snapshotter, concurrency: fetchConcurrency, logger: logger)
      registry = client
    }
    let served: Result<Void, any Error>
    do {
      try await group.run()
      served = .success(())
    } catch {
      served = .failure(error)
    }
    try? await registry?.shutdown()
    try served.get()
    try? Sys.unlink(address)
    logger.info("snapshotd stopped")
  }

  /// Makes the socket's directory; replaces a stale socket file, refuses a live one.
  func prepareSocket() throws {
    let dir = String(address[..<(address.lastIndex(of: "/") ?? address.startIndex)])
    if !dir.isEmpty {
      do { try Sys.mkdirAll(dir, mode: 0o711) } catch {
        throw StartupError(message: "cannot create socket directory: \(error)")
      }
    }
    guard Sys.exists(address) else { return }
    if Sys.unixSocketIsLive(address) {
      throw StartupError(message: "socket \(address) is in use by a running daemon")
    }
    do { try Sys.unlink(address) } catch {
      throw StartupError(message: "cannot replace stale socket \(address): \(error)")
    }
  }
}

/// The server as a service-lifecycle service: serves until a shutdown signal, then stops
/// gracefully (calls in progress are answered, for at most the stop timeout).
struct ServerService: Service {
  let server: SnapshotServer
  let group: gid_t?
  let logger: Logger
  let restoreUmask: mode_t
  let stopTimeout: Double

  func run() async throws {
    do {
      try server.start()
      Sys.setUmask(restoreUmask)
    } catch {
      Sys.setUmask(restoreUmask)
      throw Snapshotd.StartupError(message: "cannot listen on \(server.socketPath): \(error)")
    }
    if let group {
      try Sys.lchown(server.socketPath, uid: uid_t.max, gid: group)  // owner unchanged
    }
    logger.info("serving", metadata: ["address": "\(server.socketPath)"])
    try? await gracefulShutdown()
    logger.info("shutting down")
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
      DispatchQueue.global().async {
        let abandoned = server.stop(deadline: stopTimeout)
        if abandoned > 0 {
          logger.warning(
            "stop: calls still running after the stop timeout are abandoned",
            metadata: ["connections": "\(abandoned)", "timeout": "\(stopTimeout)s"])
        }
        done.resume()
      }
    }
  }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension LayerFormat: ExpressibleByArgument {}
