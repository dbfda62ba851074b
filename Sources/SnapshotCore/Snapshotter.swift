import GRDB
import Logging
import SnapshotSys
import Unpack

/// The snapshotter: one root's `Store` and the parts that share it, wired together at start.
/// The API (`SnapshotAPI`) calls these methods; each is one of the parts':
/// `SnapshotService` for containerd's calls, `LayerImporter` for imports, `ObjectCollector`
/// for gc, usage and check.
///
/// Opening a root sweeps what a crash left (orphan directories, staging layers, objects no
/// row knows), converts a store of an earlier version, and resumes unfinished dedups.
public final class Snapshotter: Sendable {
  let store: Store
  let pool: DirectoryPool
  let service: SnapshotService
  let importer: LayerImporter
  let collector: ObjectCollector

  public var layout: Layout { store.layout }
  public var driver: MountDriver { service.driver }
  public var driverReason: String { service.driverReason }

  /// Opens (creating when needed) the snapshotter state under `root`; its short alias goes
  /// under `aliasBase` (see `Layout.alias`).
  public init(
    root: String, aliasBase: String = Layout.defaultAliasBase, driver: MountDriver = .overlay,
    driverReason: String = "default", layerFormat: LayerFormat = .auto, metrics: Instruments = Instruments(),
    volatileByDefault: Bool = false, writableSizeByDefault: Int64 = 0, logger: Logger = Logger(label: "snapshotd.core")
  ) throws(SnapshotError) {
    store = try Store(root: root, aliasBase: aliasBase, layerFormat: layerFormat, metrics: metrics, logger: logger)
    let layout = store.layout
    let lastID = try SnapshotService.sweep(store)
    pool = DirectoryPool(layout: layout, firstID: lastID + 1, jobs: store.jobs, logger: logger)
    do {
      try Upgrade.convertIfNeeded(store, names: try store.objects.list())
    } catch let e as SnapshotError {
      throw e
    } catch {
      throw .init(.unavailable, "the object store \(layout.objects) is unusable: \(error)")
    }
    importer = LayerImporter(store: store, pool: pool)
    collector = ObjectCollector(store: store, pool: pool, driver: driver)
    service = SnapshotService(
      store: store, pool: pool, importer: importer, collector: collector, driver: driver, driverReason: driverReason,
      volatileByDefault: volatileByDefault, writableSizeByDefault: writableSizeByDefault)
    // The background queue's jobs, each to the part that owns the work (held weakly: a
    // job queued when the snapshotter goes does nothing).
    store.jobs.attach { [weak pool, weak collector, weak service] job in
      switch job {
      case .fillPool: pool?.fill()
      case .fillWritablePool: service?.writablePool?.fill()
      case .recyclePool: pool?.takeBack()
      case .collect: collector?.runCollect()
      case .toImages: collector?.runToImages()
      case .removeTree: break  // never here: the queue runs removals itself
      }
    }
    pool.start()
    if service.writablePool != nil { store.jobs.submit(.fillWritablePool) }
    // Objects of imports a crash cut short are dropped before an import can reuse them:
    // only what committed was made durable first.
    try collector.collectGarbage(layers: false, sweep: true)
    // Snapshots whose commit a crash cut short before their files were stubs: finished now,
    // before any client can mount them, unless a mount from before the restart uses them.
    let mounted = layout.mountedIDs(fuse: driver == .fuse)
    // With images, every committed snapshot's files big enough and not yet an image (an
    // image or dedup cut short, or an earlier version's store); the rest deduplicated.
    let committed = try store.read { db in try Metadata.all(db).filter { $0.kind == .committed && $0.layer == nil } }
    let pending = Set(try store.read { db in try Metadata.pendingDedup(db) })
    for row in committed where mounted.map({ !$0.contains(row.id) }) ?? false {
      if store.images.wants(inodes: row.inodes) {
        collector.makeImage(snapshot: row.id)  // (one already an image: its mount checked)
      } else if pending.contains(row.id) {
        collector.dedup(row.id)
      }
    }
    // Size-limited writable layers a reboot (or an unmount) left unmounted, mounted again
    // before any client can ask for their mounts.
    let points = Set((try? MountInfo.current())?.map(\.mountPoint) ?? [])
    // A committed snapshot's file system a crash left (its removal runs after the commit).
    for row in committed where row.limited && Sys.exists(layout.writableImage(row.id)) {
      do { try WritableLimit.release(layout, row.id) } catch {
        logger.warning("cannot remove a committed snapshot's writable image", metadata: ["error": "\(error)"])
      }
    }
    for id in try store.read({ db in try Metadata.limitedSnapshots(db) }) {
      do { try WritableLimit.attach(layout, id, mounted: points) } catch {
        logger.error("a size-limited snapshot's file system does not mount (snapctl check)", metadata: ["error": "\(error.message)"])
      }
    }
    // Layers still in directories (an earlier version's store) become images meanwhile.
    store.jobs.submit(.toImages)
  }

  /// Where layers come from when containerd's CRI plugin names them on Prepare.
  public var fetcher: (any LayerFetcher)? {
    get { service.remote.fetcher }
    set { service.remote.fetcher = newValue }
  }

  /// Pulls an image from its registry into the store (`LayerFetcher.pull`).
  public func pull(_ reference: String, platform: String = "", progress: ImportProgress = ImportProgress()) throws(SnapshotError) -> String
  {
    guard let fetcher else { throw SnapshotError(.failedPrecondition, "pulling is turned off (snapshotd --no-fetch)") }
    return try fetcher.pull(reference, platform: platform, progress: progress)
  }

  // MARK: - containerd's calls (SnapshotService)

  public func prepare(key: String, parent: String, labels: [String: String] = [:]) throws(SnapshotError) -> [Mount] {
    try service.prepare(key: key, parent: parent, labels: labels)
  }
  public func view(key: String, parent: String, labels: [String: String] = [:]) throws(SnapshotError) -> [Mount] {
    try service.view(key: key, parent: parent, labels: labels)
  }
  public func mounts(key: String) throws(SnapshotError) -> [Mount] { try service.mounts(key: key) }
  public func commit(name: String, key: String, labels: [String: String] = [:]) throws(SnapshotError) {
    try service.commit(name: name, key: key, labels: labels)
  }
  public func remove(key: String) throws(SnapshotError) { try service.remove(key: key) }
  public func stat(key: String) throws(SnapshotError) -> SnapshotInfo { try service.stat(key: key) }
  public func describe(key: String) throws(SnapshotError) -> SnapshotDetails { try service.describe(key: key) }
  public func update(_ info: SnapshotInfo, fieldPaths: [String]) throws(SnapshotError) -> SnapshotInfo {
    try service.update(info, fieldPaths: fieldPaths)
  }
  public func usage(key: String) throws(SnapshotError) -> SnapshotUsage { try service.usage(key: key) }
  public func list(filters: [String] = []) throws(SnapshotError) -> [SnapshotInfo] { try service.list(filters: filters) }
  @discardableResult
  public func cleanup() throws(SnapshotError) -> [String] { try service.cleanup() }
  public func count() throws(SnapshotError) -> Int { try service.count() }
  static func mounts(_ layout: Layout, id: Int64, kind: SnapshotKind, lowers: [(id: Int64, layer: Int64?)], driver: MountDriver = .overlay)
    -> [Mount]
  {
    SnapshotService.mounts(layout, id: id, kind: kind, lowers: lowers, driver: driver)
  }

  // MARK: - The layer store (LayerImporter, ObjectCollector)

  public func importLayer(_ source: ByteSource, _ request: LayerImport, progress: ImportProgress? = nil) throws(SnapshotError) -> String {
    try importer.importLayer(source, request, progress: progress)
  }
  public func importImage(_ path: String, progress: ImportProgress? = nil) throws(SnapshotError) -> String {
    try importer.importImage(path, progress: progress)
  }
  /// For a `LayerFetcher`: see `LayerImporter.unpackLayer`, `hasLayer`, `snapshotOfLayer`.
  public func unpackLayer(
    _ request: LayerImport, progress: ProgressCounter? = nil, source: () throws -> ByteSource
  ) throws(SnapshotError) -> Bool {
    try importer.unpackLayer(request, progress: progress, source: source)
  }
  public func hasLayer(_ request: LayerImport) throws(SnapshotError) -> Bool { try importer.hasLayer(request) }
  public func snapshotOfLayer(diffID: Digest, parent: String) throws(SnapshotError) -> String {
    try importer.snapshotOfLayer(diffID: diffID, parent: parent)
  }
  @discardableResult
  public func collectGarbage(layers: Bool = true, sweep: Bool = true) throws(SnapshotError) -> (layers: Int, objects: Int, bytes: Int64) {
    let freed = try collector.collectGarbage(layers: layers, sweep: sweep)
    store.metrics.collected(layers: freed.layers, objects: freed.objects, bytes: freed.bytes)
    return freed
  }
  public func storeUsage() throws(SnapshotError) -> StoreUsage { try collector.storeUsage() }
  public func check(repair: Bool = false, progress: CheckProgress? = nil) throws(SnapshotError) -> [CheckFinding] {
    let findings = try collector.check(repair: repair, progress: progress)
    store.metrics.checked(findings, repair: repair)
    return findings
  }
  /// What metrics read at a scrape: the store's usage and its snapshots by kind.
  public func gauges() throws(SnapshotError) -> StoreGauges {
    try store.read { db in StoreGauges(usage: try Metadata.storeUsage(db), snapshots: try Metadata.countByKind(db)) }
  }
  /// Waits for every background task (directory removals, collections).
  public func drain() { collector.drain() }

  // For tests.
  func write<T>(_ body: (Database) throws -> T) throws(SnapshotError) -> T { try store.write(body) }
  func read<T>(_ body: (Database) throws -> T) throws(SnapshotError) -> T { try store.read(body) }
  func writerSynchronous() throws -> Int { try store.writerSynchronous() }
}
