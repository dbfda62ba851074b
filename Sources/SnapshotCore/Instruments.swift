import CoreMetrics
import Unpack

/// What the store counts and times for an operator: swift-metrics handles made by the
/// factory its owner gives (snapshotd's Prometheus registry, `--metrics-address`), or by
/// no factory at all (tests, snapctl), when they cost nothing.
///
/// Names follow Prometheus's conventions (a `snapshotd_` prefix, `_total`, `_seconds`,
/// `_bytes`); `help` gives each its HELP line. What is read at a scrape rather than counted
/// (the store's size, snapshots by kind) is `Snapshotter.gauges()`.
public struct Instruments: Sendable {
  let factory: any MetricsFactory

  public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) { self.factory = factory }

  /// Where a layer came from: an import (a blob, an image, containerd's ImportLayer) or a
  /// registry (CRI's Prepare, `snapctl pull`).
  public enum Origin: String, Sendable { case `import`, registry }

  /// A layer read into the store: its blob's bytes as read (compressed), its files' bytes,
  /// and how long reading it took.
  func layerUnpacked(_ origin: Origin, read: Int64, files: Int64, since start: ContinuousClock.Instant) {
    let at = [("origin", origin.rawValue)]
    Counter(label: "snapshotd_layers_unpacked_total", dimensions: at, factory: factory).increment()
    Counter(label: "snapshotd_layer_read_bytes_total", dimensions: at, factory: factory).increment(by: read)
    Counter(label: "snapshotd_layer_file_bytes_total", dimensions: at, factory: factory).increment(by: files)
    Timer(label: "snapshotd_layer_unpack_duration_seconds", dimensions: at, factory: factory).recordNanoseconds(
      Self.nanoseconds(since: start))
  }

  /// A layer that failed to unpack.
  func layerFailed(_ origin: Origin, _ kind: SnapshotError.Kind) {
    Counter(
      label: "snapshotd_layer_failures_total", dimensions: [("origin", origin.rawValue), ("reason", kind.rawValue)], factory: factory
    ).increment()
  }

  /// A layer CRI named that we did not fetch, so containerd downloads and applies it.
  func fetchFallback(_ kind: SnapshotError.Kind) {
    Counter(label: "snapshotd_fetch_fallbacks_total", dimensions: [("reason", kind.rawValue)], factory: factory).increment()
  }

  /// Jobs of a background lane queued and not yet done.
  func queued(_ lane: String, _ delta: Int) {
    let meter = Meter(label: "snapshotd_background_queue_depth", dimensions: [("lane", lane)], factory: factory)
    if delta > 0 { meter.increment(by: Double(delta)) } else { meter.decrement(by: Double(-delta)) }
  }

  /// A background job done.
  func jobDone(_ kind: String, since start: ContinuousClock.Instant) {
    Timer(label: "snapshotd_background_job_duration_seconds", dimensions: [("kind", kind)], factory: factory)
      .recordNanoseconds(Self.nanoseconds(since: start))
  }

  /// Nanoseconds from `start` to now.
  public static func nanoseconds(since start: ContinuousClock.Instant) -> Int64 {
    let (seconds, attoseconds) = (ContinuousClock.now - start).components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
  }

  /// A garbage collection and what it freed.
  func collected(layers: Int, objects: Int, bytes: Int64) {
    Counter(label: "snapshotd_gc_runs_total", factory: factory).increment()
    Counter(label: "snapshotd_gc_removed_layers_total", factory: factory).increment(by: layers)
    Counter(label: "snapshotd_gc_removed_objects_total", factory: factory).increment(by: objects)
    Counter(label: "snapshotd_gc_freed_bytes_total", factory: factory).increment(by: bytes)
  }

  /// A check and what it found, by kind.
  func checked(_ findings: [CheckFinding], repair: Bool) {
    Counter(label: "snapshotd_check_runs_total", dimensions: [("repair", "\(repair)")], factory: factory).increment()
    for finding in findings {
      Counter(label: "snapshotd_check_findings_total", dimensions: [("kind", finding.kind.metricName)], factory: factory).increment()
    }
  }

  /// The HELP line of each metric the store records or reports (`Snapshotter.gauges()`).
  public static let help: [String: String] = [
    "snapshotd_layers_unpacked_total": "Layers read into the store, by origin (import or registry).",
    "snapshotd_layer_read_bytes_total": "Bytes of layer blobs read (compressed, as stored or served), by origin.",
    "snapshotd_layer_file_bytes_total": "Bytes of regular files in the layers read, by origin.",
    "snapshotd_layer_unpack_duration_seconds": "Time to read one layer into the store, by origin.",
    "snapshotd_layer_failures_total": "Layers that failed to unpack, by origin and reason.",
    "snapshotd_fetch_fallbacks_total": "Layers CRI named that snapshotd did not fetch (containerd applied them), by reason.",
    "snapshotd_background_queue_depth": "Background jobs queued and not yet done, by lane.",
    "snapshotd_background_job_duration_seconds": "Time a background job ran, by kind.",
    "snapshotd_gc_runs_total": "Garbage collections run.",
    "snapshotd_gc_removed_layers_total": "Layers removed by garbage collection.",
    "snapshotd_gc_removed_objects_total": "Content objects removed by garbage collection.",
    "snapshotd_gc_freed_bytes_total": "Bytes of content objects freed by garbage collection.",
    "snapshotd_check_runs_total": "Store checks run (snapctl check), by whether they repaired.",
    "snapshotd_check_findings_total": "Problems store checks found, by kind.",
    "snapshotd_store_layers": "Layers in the store.",
    "snapshotd_store_objects": "Content objects in the store (each distinct file content once).",
    "snapshotd_store_stored_bytes":
      "Bytes of content objects: what the store keeps on disk for file data (files of up to 512 bytes are inline in their layer's image instead).",
    "snapshotd_store_logical_bytes": "Bytes of files over every layer and committed snapshot, before deduplication.",
    "snapshotd_snapshots": "Snapshots, by kind (active, view, committed).",
  ]
}

/// What `Snapshotter.gauges()` reads at a scrape.
public struct StoreGauges: Sendable {
  public var usage: StoreUsage
  public var snapshots: [SnapshotKind: Int]
}

extension CheckFinding.Kind {
  /// The kind as a label value: its name with underscores.
  var metricName: String { String(rawValue.map { $0 == " " ? "_" : $0 }) }
}
