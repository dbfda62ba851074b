import LayerStore
import Logging
import SnapshotSys
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Committed snapshots waiting for their files to become stubs of content objects, and whether a
/// collection of unreferenced objects is due. Commits add to it; the background queue takes
/// them in batches a moment after the last commit, so a burst of commits costs the callers
/// nothing and the background one pass.
final class BackgroundWork: Sendable {
  private struct State {
    var pending: Set<Int64> = []
    var dedupScheduled = false
    var collectScheduled = false
    var collectSweep = false
  }
  private let state = Mutex(State())

  /// Adds snapshots; true when the caller must schedule a run.
  func add(_ ids: [Int64]) -> Bool {
    state.withLock { s in
      s.pending.formUnion(ids)
      if s.dedupScheduled || s.pending.isEmpty { return false }
      s.dedupScheduled = true
      return true
    }
  }

  /// The snapshots waiting, oldest first; the next `add` schedules a new run.
  func take() -> [Int64] {
    state.withLock { s in
      s.dedupScheduled = false
      defer { s.pending.removeAll() }
      return s.pending.sorted()
    }
  }

  /// True when the caller must schedule a collection (`sweep`: one that also looks for
  /// objects the database does not know).
  func needCollect(sweep: Bool) -> Bool {
    state.withLock { s in
      s.collectSweep = s.collectSweep || sweep
      if s.collectScheduled { return false }
      s.collectScheduled = true
      return true
    }
  }

  /// Starts the scheduled collection: whether it sweeps.
  func collecting() -> Bool {
    state.withLock { s in
      defer {
        s.collectScheduled = false
        s.collectSweep = false
      }
      return s.collectSweep
    }
  }
}

/// The object store's upkeep: committed snapshots' files made stubs of shared objects in the
/// background (dedup), objects and layers nothing uses collected, and `check`.
public final class ObjectCollector: StorePart, Sendable {
  let store: Store
  let pool: DirectoryPool
  let waiting = BackgroundWork()

  init(store: Store, pool: DirectoryPool) {
    self.store = store
    self.pool = pool
  }

  /// How long after a commit its snapshot is deduplicated (commits arriving meanwhile join).
  static let dedupDelay = 0.5

  /// Queues committed snapshots for deduplication in the background.
  func scheduleDedup(_ ids: [Int64]) {
    if waiting.add(ids) { jobs.submit(.dedup, after: Self.dedupDelay) }
  }

  /// Queues a collection of objects no tree references any more (after removes); with
  /// `sweep`, also of objects no row knows and no layer links.
  func scheduleCollect(sweep: Bool = false) {
    if waiting.needCollect(sweep: sweep) { jobs.submit(.collect) }
  }

  /// The `dedup` job.
  func runDedup() {
    for id in waiting.take() { dedup(id) }
  }

  /// The `collect` job. Directories of removed snapshots go first, since their links to
  /// objects count: the pool's are taken back now, and their removals waited for.
  func runCollect() {
    pool.waitIdle()
    let sweep = waiting.collecting()
    do { try collectGarbage(layers: false, sweep: sweep) } catch {
      logger.warning("collecting unreferenced objects failed", metadata: ["error": "\(error)"])
    }
  }

  /// Makes the files of snapshot `id`, committed through Prepare/Commit, stubs of content
  /// objects, as an imported layer's are, and records its references: the same data in
  /// another layer or image is then stored once, while every file keeps its own inode.
  /// Runs on the background queue only.
  func dedup(_ id: Int64) {
    let layout = self.layout
    do {
      try objects.shared { () throws(SnapshotError) in
        guard let row = try read({ db in try Metadata.find(db, id: id) }), row.kind == .committed, row.layer == nil,
          row.fileBytes == nil
        else { return }
        let absorbed: ObjectStore.Absorbed
        do {
          absorbed = try objects.absorb(tree: layout.fs(id), scratch: layout.temporary)
        } catch {
          // Removed meanwhile: its directory went (or is going) with it; objects made from
          // its files before that need a sweep.
          if try read({ db in try Metadata.find(db, id: id) }) == nil {
            scheduleCollect(sweep: true)
            return
          }
          throw Store.mapError(error)
        }
        // A tree without objects needs no row change (a restart looks at it again, cheaply).
        if absorbed.objects.isEmpty { return }
        let recorded = try write { db -> Bool in
          guard let now = try Metadata.find(db, id: id), now.kind == .committed, now.fileBytes == nil else { return false }
          try Metadata.addRefs(db, tree: Layout.tree(snapshot: id), absorbed.objects)
          try Metadata.setFileBytes(db, id: id, absorbed.fileBytes)
          return true
        }
        // Removed meanwhile: objects made from its files go once its directory has.
        if !recorded && absorbed.newBytes > 0 { scheduleCollect(sweep: true) }
        logger.debug(
          "deduplicated snapshot",
          metadata: [
            "key": "\(row.key)", "objects": "\(absorbed.objects.count)", "bytes": "\(absorbed.fileBytes)",
            "new": "\(absorbed.newBytes)", "skipped": "\(absorbed.skipped)",
          ])
      }
    } catch {
      logger.warning(
        "deduplication of a committed snapshot failed; retried at the next start",
        metadata: ["id": "\(id)", "error": "\(error)"])
    }
  }

  /// Objects named by stubs of committed snapshots whose deduplication has not recorded its
  /// references yet (cut short by a crash or an error): sweeps and checks keep them.
  func pendingStubKeys() throws -> Set<String> {
    var keys = Set<String>()
    for id in try read({ db in try Metadata.pendingDedup(db) }) where Sys.exists(layout.fs(id)) {
      try Tree.walk(
        layout.fs(id),
        visit: { (dir, cName, st) throws(SystemError) in
          guard st.st_mode & S_IFMT == S_IFREG, st.st_size > 0 else { return }
          let name = String(cString: cName)
          let fd = try At.open(dir, name, flags: O_RDONLY | At.noAtime)
          defer { At.close(fd) }
          if let key = try ObjectStore.stubKey(fd, name) { keys.insert(key) }
        })
    }
    return keys
  }

  // MARK: - Objects

  /// Deletes imported layers no snapshot uses (with `layers`), then content objects
  /// nothing references any more, and (with `sweep`, which lists the whole store) objects
  /// the database does not know: made by an import that failed or never committed. Returns how many layers and objects, and the objects' bytes.
  @discardableResult
  public func collectGarbage(layers: Bool = true, sweep: Bool = true) throws(SnapshotError) -> (layers: Int, objects: Int, bytes: Int64) {
    let layout = self.layout
    return try objects.exclusive { () throws(SnapshotError) -> (Int, Int, Int64) in
      let freed =
        !layers
        ? []
        : try write { db -> [Int64] in
          let unused = try Metadata.unusedLayers(db)
          for layer in unused {
            try Metadata.releaseRefs(db, tree: Layout.tree(layer: layer))
            try Metadata.deleteLayer(db, layer)
          }
          return unused
        }
      let dead = try write { db in try Metadata.takeUnreferenced(db) }
      var bytes: Int64 = 0
      do {
        for layer in freed { try Tree.remove(layout.layer(layer)) }
        for (key, size) in dead {
          try objects.remove(key)
          bytes += size
        }
        var count = dead.count
        if sweep {
          let known = try read { db in try Metadata.objectKeys(db) }.union(pendingStubKeys())
          for key in try objects.list() where !known.contains(key) && !ObjectStore.isLegacyKey(key) {
            try objects.remove(key)
            count += 1
          }
        }
        return (freed.count, count, bytes)
      } catch {
        throw Store.mapError(error)
      }
    }
  }

  /// Layers, objects, and bytes stored with and without sharing.
  public func storeUsage() throws(SnapshotError) -> StoreUsage {
    try read { db in try Metadata.storeUsage(db) }
  }

  /// Runs the deduplication waiting for its delay now, and waits for every background task
  /// (directory removals, deduplication, collections).
  public func drain() {
    jobs.run(.recyclePool)
    jobs.run(.dedup)
    jobs.drain()
  }
}
