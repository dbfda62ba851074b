import GRDB
import Logging
import SnapshotSys
import Synchronization
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// What the parts of the snapshotter share: the root's layout, the metadata database and its
/// transactions, the object store, and the background queue of typed jobs
/// (`BackgroundQueue`). What the layers below throw becomes a `SnapshotError` in
/// `SnapshotError.init(_:)` (SnapshotError.swift). The parts are `SnapshotService`
/// (containerd's calls), `LayerImporter` (layers and images into the layer store) and
/// `ObjectCollector` (dedup of committed snapshots, garbage collection, `check`);
/// `Snapshotter` wires them together.
///
/// Lock order, outermost first (a holder of one may take those after it, never before):
///   1. waiting for the background queue (`drain`, `run`, `DirectoryPool.waitIdle`): its
///      jobs take any of the locks below, so it is done holding none of them; an upkeep job
///      may wait for the pool's and the removals' lanes, never the reverse;
///   2. `Inflight` (one import per layer digest): an import takes the gate inside it;
///   3. the object store's gate (`ObjectStore.shared`/`exclusive`): imports and dedup share
///      it, collections and checks hold it alone;
///   4. the SQLite writer (`write`: BEGIN IMMEDIATE); reads (`read`, `lookup`) take no lock
///      a writer waits for;
///   5. the directory pool's locks (`DirectoryPool`), taken inside transactions.
/// `waitForDedup` (children's mounts waiting for a Commit's dedup) is called holding none.
public final class Store: Sendable {
  public let layout: Layout
  private let db: DatabasePool
  /// A read-only connection of its own for the lookups of the API's hot calls (see `lookup`).
  let lookups: DatabaseQueue
  let logger: Logger
  /// What the store counts and times (`Instruments`).
  let metrics: Instruments
  let objects: ObjectStore
  /// The background queue: the directory pool's work, removals, collections.
  let jobs: BackgroundQueue
  /// Collections asked for and not yet run.
  let collections = CollectionRequests()
  /// Snapshots in their Commit whose files are being made stubs: mounts of their children
  /// wait (`waitForDedup`), since a mount must never see its directories change.
  let deduplicating = Condition<Set<Int64>>([])
  /// How layers are stored: EROFS images where the kernel mounts them, else directories.
  let images: LayerImages

  /// Returns once none of `ids` is being deduplicated.
  func waitForDedup(_ ids: [Int64]) {
    deduplicating.wait(until: { set in !ids.contains(where: set.contains) }) { _ in }
  }

  /// How long a connection waits for SQLite's lock (another process, WAL recovery) before
  /// SQLITE_BUSY: as GRDB gives its pool's readers.
  static let busyTimeout: Double = 5

  /// Opens (creating when needed) the root's directories, the object store and the database.
  init(
    root: String, aliasBase: String = Layout.defaultAliasBase, layerFormat: LayerFormat = .auto,
    metrics: Instruments = Instruments(), logger: Logger
  ) throws(SnapshotError) {
    layout = Layout(root: root, aliasBase: aliasBase)
    self.logger = logger
    self.metrics = metrics
    do {
      try Sys.mkdirAll(layout.root, mode: 0o700)
      try Sys.mkdirIfMissing(layout.snapshots, mode: 0o700)
      try Sys.mkdirIfMissing(layout.layers, mode: 0o700)
      try Sys.mkdirIfMissing(layout.temporary, mode: 0o700)
      objects = try ObjectStore(path: layout.objects)
      try layout.makeAlias()
    } catch {
      throw .init(.unavailable, "root directory \(layout.root) is unusable: \(error)")
    }
    var config = Configuration()
    config.label = "snapshotd"
    config.busyMode = .timeout(Self.busyTimeout)
    do {
      db = try DatabasePool(path: layout.database, configuration: config)
      // Every call durable when it returns: the WAL is fsync'd at each commit. (GRDB sets
      // NORMAL, which syncs only at checkpoints, when it opens the pool in WAL mode.)
      try db.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
      try Metadata.migrator().migrate(db)
      var readOnly = Configuration()
      readOnly.readonly = true
      readOnly.label = "snapshotd-lookups"
      readOnly.busyMode = .timeout(Self.busyTimeout)
      lookups = try DatabaseQueue(path: layout.database, configuration: readOnly)
    } catch {
      throw .init(.unavailable, "metadata database \(layout.database) is unusable: \(error)")
    }
    jobs = BackgroundQueue(metrics: metrics, logger: logger)
    var probed = (available: false, compact: false, reason: "")
    if layerFormat != .directory { probed = LayerImages.probe(layout) }
    switch layerFormat {
    case .auto:
      images = LayerImages(layout: layout, available: probed.available, compact: probed.compact)
      logger.info("layer format", metadata: ["format": "\(probed.available ? "erofs" : "directory")", "reason": "\(probed.reason)"])
    case .erofs:
      images = LayerImages(layout: layout, available: true, compact: probed.compact)
    case .directory:
      images = LayerImages(layout: layout, available: false, compact: false)
    }
    // Images written on a newer kernel show wrong mtimes here: refused, never served.
    if layerFormat != .directory, !probed.compact, let image = LayerImages.compactImages(layout).first {
      throw .init(
        .unavailable,
        "\(image) has compact inodes, whose mtimes this kernel cannot read (Linux 6.15+ can; \(probed.reason)): start snapshotd on that kernel"
      )
    }
  }

  /// SQLite's `PRAGMA synchronous` of the connection that writes (2 is FULL).
  func writerSynchronous() throws -> Int {
    try db.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA synchronous") ?? -1 }
  }

  // MARK: - Transactions

  /// A write transaction on the pool's writer, durable when this returns (the WAL is
  /// fsync'd at COMMIT). BEGIN IMMEDIATE and COMMIT are prepared once; GRDB's `write` adds
  /// a savepoint and a schema version check to every call.
  func write<T>(_ body: (Database) throws -> T) throws(SnapshotError) -> T {
    do {
      return try db.writeWithoutTransaction { db in try Self.transaction(db, "BEGIN IMMEDIATE", body) }
    } catch {
      throw SnapshotError(error)
    }
  }

  /// `body` between `begin` and COMMIT, rolled back if it (or COMMIT) throws.
  private static func transaction<T>(_ db: Database, _ begin: String, _ body: (Database) throws -> T) throws -> T {
    try db.cachedStatement(sql: begin).execute()
    do {
      let value = try body(db)
      // SQLite may have rolled back on its own (SQLITE_FULL, an I/O error) under a body that
      // went on: the statements after it then ran outside the transaction. Never COMMIT those.
      guard db.isInsideTransaction else { throw SnapshotError.internal("the transaction was rolled back by SQLite") }
      try db.cachedStatement(sql: "COMMIT").execute()
      return value
    } catch {
      try? db.cachedStatement(sql: "ROLLBACK").execute()
      throw error
    }
  }

  /// A read in a transaction of its own, on one of the pool's readers (reads run in
  /// parallel with each other and with the writer).
  func read<T>(_ body: (Database) throws -> T) throws(SnapshotError) -> T {
    do {
      return try db.read(body)
    } catch {
      throw SnapshotError(error)
    }
  }

  /// A short read for the API's hot calls (stat, mounts, usage, commit's check), on a
  /// connection of its own: a pooled read spends more on GRDB's bookkeeping (taking a reader,
  /// a savepoint, a schema version check) than on the lookup itself (docs/benchmarks.md, "API
  /// latency"). Lookups run one at a time. `isolated: false` spares the transaction for a
  /// body of one statement, which SQLite answers from one snapshot anyway.
  func lookup<T>(isolated: Bool = true, _ body: (Database) throws -> T) throws(SnapshotError) -> T {
    do {
      return try lookups.inDatabase { db in isolated ? try Self.transaction(db, "BEGIN DEFERRED", body) : try body(db) }
    } catch {
      throw SnapshotError(error)
    }
  }

  /// Runs `body`, which writes `key` into the snapshot table's unique key column: a key
  /// another snapshot has is AlreadyExists.
  static func unique(_ key: String, _ body: () throws -> Void) throws {
    do {
      try body()
    } catch let e as DatabaseError where e.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
      throw SnapshotError.exists("snapshot \(quoted(key)) already exists")
    }
  }

}

/// A part of the snapshotter: what it reaches of the `Store` it shares with the others.
protocol StorePart {
  var store: Store { get }
}

extension StorePart {
  var layout: Layout { store.layout }
  var logger: Logger { store.logger }
  var objects: ObjectStore { store.objects }
  var jobs: BackgroundQueue { store.jobs }
  var metrics: Instruments { store.metrics }

  /// Queues a collection of objects no tree references any more (after removes); with
  /// `sweep`, also of objects no row knows and no layer links (what an import or a dedup
  /// made and then did not use).
  func scheduleCollect(sweep: Bool = false) {
    if store.collections.needCollect(sweep: sweep) { jobs.submit(.collect) }
  }
  func write<T>(_ body: (Database) throws -> T) throws(SnapshotError) -> T { try store.write(body) }
  func read<T>(_ body: (Database) throws -> T) throws(SnapshotError) -> T { try store.read(body) }
  func lookup<T>(isolated: Bool = true, _ body: (Database) throws -> T) throws(SnapshotError) -> T {
    try store.lookup(isolated: isolated, body)
  }
}

/// Whether a collection of unreferenced objects is due, and whether it sweeps: removes
/// and imports ask for one; the background queue runs one for any number of asks.
final class CollectionRequests: Sendable {
  private struct State {
    var scheduled = false
    var sweep = false
  }
  private let state = Mutex(State())

  /// True when the caller must schedule a collection (`sweep`: one that also looks for
  /// objects the database does not know).
  func needCollect(sweep: Bool) -> Bool {
    state.withLock { s in
      s.sweep = s.sweep || sweep
      if s.scheduled { return false }
      s.scheduled = true
      return true
    }
  }

  /// Starts the scheduled collection: whether it sweeps.
  func collecting() -> Bool {
    state.withLock { s in
      defer {
        s.scheduled = false
        s.sweep = false
      }
      return s.sweep
    }
  }
}
