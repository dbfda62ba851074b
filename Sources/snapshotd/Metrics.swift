import CoreMetrics
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import SnapshotAPI
import SnapshotCore
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// snapshotd's metrics (`--metrics-address`): one Prometheus registry, fed by the store and
/// the API through swift-metrics (`metricsFactory`), and read at each scrape for what is
/// state rather than events (the store's size, snapshots by kind, the process).
final class DaemonMetrics: Sendable {
  let registry = PrometheusCollectorRegistry()

  /// Latency buckets, 50 µs to 10 s: a Stat answers in tens of microseconds, a pull's
  /// layer in seconds.
  static let buckets: [Duration] = [
    .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
    .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
    .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
    .seconds(10),
  ]

  static let help: [String: String] = Instruments.help.merging(RPCMetrics.help) { a, _ in a }.merging([
    "snapshotd_process_resident_memory_bytes": "Resident memory of the snapshotd process.",
    "snapshotd_process_open_fds": "Open file descriptors of the snapshotd process.",
    "snapshotd_process_threads": "Threads of the snapshotd process.",
    "snapshotd_scrape_errors_total": "Scrapes whose store gauges could not be read.",
  ]) { a, _ in a }

  /// A metric's name with its HELP line.
  static func descriptor(_ name: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help[name] ?? "")
  }

  var factory: any MetricsFactory { HelpedFactory(registry: registry) }

  init() {
    // There from the start, so a rate() over it has a series before the first error.
    _ = registry.makeCounter(descriptor: Self.descriptor("snapshotd_scrape_errors_total"))
  }

  /// Sets the gauges read at a scrape, then renders every metric in Prometheus's text format.
  func scrape(_ snapshotter: Snapshotter) -> [UInt8] {
    func gauge(_ name: String, _ labels: [(String, String)] = []) -> Prometheus.Gauge {
      registry.makeGauge(descriptor: Self.descriptor(name), labels: labels)
    }
    do {
      let g = try snapshotter.gauges()
      gauge("snapshotd_store_layers").set(Double(g.usage.layers))
      gauge("snapshotd_store_objects").set(Double(g.usage.objects))
      gauge("snapshotd_store_stored_bytes").set(Double(g.usage.storedBytes))
      gauge("snapshotd_store_logical_bytes").set(Double(g.usage.logicalBytes))
      for (kind, count) in g.snapshots { gauge("snapshotd_snapshots", [("kind", kind.name)]).set(Double(count)) }
    } catch {
      registry.makeCounter(descriptor: Self.descriptor("snapshotd_scrape_errors_total")).increment()
    }
    let process = ProcessFigures.read()
    gauge("snapshotd_process_resident_memory_bytes").set(Double(process.residentBytes))
    gauge("snapshotd_process_open_fds").set(Double(process.openFiles))
    gauge("snapshotd_process_threads").set(Double(process.threads))
    return registry.emitToBuffer()
  }
}

/// The process's own figures, from /proc/self.
struct ProcessFigures {
  var residentBytes: Int64 = 0
  var openFiles = 0
  var threads = 0

  static func read() -> ProcessFigures {
    var figures = ProcessFigures()
    if let statm = try? Sys.readAll("/proc/self/statm") {
      let fields = String(decoding: statm, as: UTF8.self).split(separator: " ")
      if fields.count > 1, let pages = Int64(fields[1]) { figures.residentBytes = pages * Int64(sysconf(Int32(_SC_PAGESIZE))) }
    }
    figures.openFiles = max(0, ((try? Sys.listDirectory("/proc/self/fd"))?.count ?? 1) - 1)  // less the listing's own
    if let status = try? Sys.readAll("/proc/self/status") {
      for line in String(decoding: status, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Threads:") {
        figures.threads = Int(line.dropFirst("Threads:".count).trimmingPrefix(while: \.isWhitespace)) ?? 0
      }
    }
    return figures
  }
}

/// swift-metrics handles from the Prometheus registry, with each metric's HELP line and
/// the latency buckets (`PrometheusMetricsFactory` gives neither a HELP line, which
/// `promtool check metrics` requires).
struct HelpedFactory: MetricsFactory {
  let registry: PrometheusCollectorRegistry

  private func named(_ label: String) -> MetricNameDescriptor { DaemonMetrics.descriptor(label) }

  func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
    registry.makeCounter(descriptor: named(label), labels: dimensions)
  }
  func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
    registry.makeCounter(descriptor: named(label), labels: dimensions)
  }
  func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
    registry.makeGauge(descriptor: named(label), labels: dimensions)
  }
  func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
    registry.makeGauge(descriptor: named(label), labels: dimensions)
  }
  func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
    registry.makeDurationHistogram(descriptor: named(label), labels: dimensions, buckets: DaemonMetrics.buckets)
  }
  // The handles live as long as the daemon.
  func destroyCounter(_ handler: any CounterHandler) {}
  func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
  func destroyRecorder(_ handler: any RecorderHandler) {}
  func destroyMeter(_ handler: any MeterHandler) {}
  func destroyTimer(_ handler: any TimerHandler) {}
}

/// The HTTP endpoint Prometheus scrapes: `GET /metrics` on `host:port` (NIO HTTP/1, one
/// thread; a scrape reads the database for a few milliseconds).
final class MetricsEndpoint: Sendable {
  let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
  let channel: any Channel

  /// Binds `address` ("HOST:PORT"; "[::1]:9090" for IPv6) and serves.
  init(address: String, metrics: DaemonMetrics, snapshotter: Snapshotter, logger: Logger) throws {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
      throw Snapshotd.StartupError(message: "--metrics-address \(address): want HOST:PORT")
    }
    var host = String(address[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    let group = self.group
    do {
      channel = try ServerBootstrap(group: group)
        .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
          channel.pipeline.configureHTTPServerPipeline().flatMap {
            channel.pipeline.addHandler(ScrapeHandler(metrics: metrics, snapshotter: snapshotter))
          }
        }
        .bind(host: host, port: port).wait()
    } catch {
      try? group.syncShutdownGracefully()
      throw Snapshotd.StartupError(message: "cannot serve metrics on \(address): \(error)")
    }
    logger.info("serving metrics", metadata: ["address": "http://\(address)/metrics"])
  }

  func stop() {
    try? channel.close().wait()
    try? group.syncShutdownGracefully()
  }
}

/// Answers `GET /metrics` (and HEAD) with the registry's text; anything else with 404 or 405.
final class ScrapeHandler: ChannelInboundHandler, Sendable {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  let metrics: DaemonMetrics
  let snapshotter: Snapshotter

  init(metrics: DaemonMetrics, snapshotter: Snapshotter) {
    self.metrics = metrics
    self.snapshotter = snapshotter
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    guard case .head(let request) = unwrapInboundIn(data) else { return }
    let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
    let (status, body): (HTTPResponseStatus, [UInt8]) =
      if path != "/metrics" {
        (.notFound, Array("not found: metrics are at /metrics\n".utf8))
      } else if request.method != .GET && request.method != .HEAD {
        (.methodNotAllowed, Array("GET /metrics\n".utf8))
      } else {
        (.ok, metrics.scrape(snapshotter))
      }
    var headers = HTTPHeaders()
    headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
    headers.add(name: "Content-Length", value: "\(body.count)")
    let keepAlive = request.isKeepAlive
    if !keepAlive { headers.add(name: "Connection", value: "close") }
    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
    if request.method != .HEAD {
      context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
    }
    let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
    if !keepAlive {
      let channel = context.channel
      done.whenComplete { _ in channel.close(promise: nil) }
    }
  }
}
