import GRDB
import Logging
import SnapshotSys
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// containerd's snapshotter contract over the store: one SQLite database for the metadata,
/// one directory per snapshot, overlayfs (or bind) mounts to compose them.
///
/// Every call is one transaction, durable (fsync'd) when it returns, but Prepare with
/// `containerd.io/snapshot.ref` of a layer the store keeps (which commits the remade layer
/// snapshot in a transaction of its own first). A snapshot's directory is made under a
/// temporary name, renamed and made durable before the row naming it can commit: ahead of
/// time by the `DirectoryPool`, or inside the transaction when the pool is empty.
/// Directories of removed snapshots are deleted after the transaction commits and never
/// fail the call.
public final class SnapshotService: StorePart, Sendable {
  let store: Store
  let pool: DirectoryPool
  let importer: LayerImporter
  let collector: ObjectCollector
  /// How snapshots with parents are mounted.
  public let driver: MountDriver
  /// Why: configured, or what probing found.
  public let driverReason: String
  /// Whether active snapshots are volatile unless their label says otherwise (`Volatile`).
  let volatileByDefault: Bool
  /// Active snapshots' size limit unless their label says otherwise (0: none; `WritableLimit`).
  let writableSizeByDefault: Int64
  /// File systems of that size made ahead of time (nil without a default).
  let writablePool: WritablePool?
  /// Where layers come from when containerd's CRI plugin names them on Prepare (none: the
  /// unpacker makes them).
  let remote = FetcherSlot()

  /// A limited snapshot's directory, file system mounted, before its row names it.
  struct ReadyDirectory {
    var id: Int64
    var base: WritableLimit.Base
    /// Made ahead of time by `writablePool`.
    var pooled: Bool
  }

  init(
    store: Store, pool: DirectoryPool, importer: LayerImporter, collector: ObjectCollector, driver: MountDriver, driverReason: String,
    volatileByDefault: Bool = false, writableSizeByDefault: Int64 = 0
  ) {
    self.store = store
    self.volatileByDefault = volatileByDefault
    self.writableSizeByDefault = writableSizeByDefault
    writablePool =
      writableSizeByDefault > 0
      ? WritablePool(
        layout: store.layout, size: writableSizeByDefault, directories: pool, jobs: store.jobs, logger: store.logger) : nil
    self.pool = pool
    self.importer = importer
    self.collector = collector
    self.driver = driver
    self.driverReason = driverReason
  }

  // MARK: - Create

  /// Prepare: an active snapshot on top of the committed `parent` ("" for none).
  public func prepare(key: String, parent: String, labels: [String: String] = [:]) throws(SnapshotError) -> [Mount] {
    try create(.active, key: key, parent: parent, labels: labels)
  }

  /// View: a read-only snapshot of the committed `parent`.
  public func view(key: String, parent: String, labels: [String: String] = [:]) throws(SnapshotError) -> [Mount] {
    try create(.view, key: key, parent: parent, labels: labels)
  }

  /// Whether `remote`'s fetcher made the snapshot `request` names.
  private func fetched(_ request: RemoteLayerRequest) throws(SnapshotError) -> Bool {
    guard let fetcher = remote.fetcher else { return false }
    do {
      try fetcher.fetch(request)
    } catch {
      metrics.fetchFallback(((error as? SnapshotError) ?? SnapshotError(error)).kind)
      logger.warning(
        "fetching a layer failed; containerd unpacks it",
        metadata: ["layer": "\(request.layerDigest)", "image": "\(request.imageRef)", "error": "\(error)"])
      return false
    }
    return try write { db in try importer.layerSnapshot(db, request.chainID, parent: request.parent) }
  }

  private func create(_ kind: SnapshotKind, key: String, parent: String, labels: [String: String]) throws(SnapshotError) -> [Mount] {
    try Validate.key(key, what: "key")
    try Validate.labels(labels, key: key)
    // The daemon's defaults are for containers' writable layers, not for the snapshots
    // containerd's unpacker applies a layer into (they name their target): a labelled
    // snapshot gets what its label says either way.
    let unpacking = labels[LayerImporter.snapshotRef] != nil
    let volatile = kind == .active ? try Volatile.wanted(labels, byDefault: volatileByDefault && !unpacking) : false
    let limit = kind == .active ? try WritableLimit.wanted(labels, byDefault: unpacking ? 0 : writableSizeByDefault) : 0
    let layout = self.layout
    let driver = self.driver
    let images = store.images.available
    // containerd's unpacker names the committed snapshot it is about to make; when that
    // layer was imported already, "already exists" tells it to use ours. Its snapshot, if
    // remade from the stored layer, commits in a transaction of its own (the error below
    // would roll it back).
    if let target = labels[LayerImporter.snapshotRef], try write({ db in try importer.layerSnapshot(db, target, parent: parent) }) {
      throw .exists("target snapshot \(quoted(target)) already exists")
    }
    // A layer of an image CRI pulls: fetched by us (with the image's later layers at once),
    // so containerd neither downloads nor applies it. Any failure falls back to what
    // containerd does without us: an active snapshot it unpacks into.
    if kind == .active, let request = RemoteLayerRequest(labels: labels, parent: parent), try fetched(request) {
      throw .exists("target snapshot \(quoted(request.chainID)) already exists")
    }
    // A limited snapshot's directory with its file system: made ahead of time (the default
    // limit) or now, outside the write transaction (mkfs takes tens of milliseconds, more
    // for a big limit). Given back, or removed, unless a row comes to name it.
    let ready = limit > 0 ? try readyLimited(limit) : nil
    var taken = false
    defer { if let ready, !taken { giveBack(ready) } }
    let (mounts, lowerIDs) = try write { db -> ([Mount], [Int64]) in
      var parentID: Int64?
      if !parent.isEmpty {
        guard let p = try Metadata.find(db, key: parent) else {
          // containerd checks the key first (only on this error path here).
          if try Metadata.find(db, key: key) != nil { throw SnapshotError.exists("snapshot \(quoted(key)) already exists") }
          throw SnapshotError.notFound("parent \(quoted(parent)) of snapshot \(quoted(key)) does not exist")
        }
        guard p.kind == .committed else {
          throw SnapshotError.invalid("parent \(quoted(parent)) of snapshot \(quoted(key)) is not a committed snapshot")
        }
        parentID = p.id
      }
      let pooled = ready == nil ? pool.take() : nil
      let id = ready?.id ?? pooled ?? pool.reserveID()
      defer { if ready == nil { pool.release(id) } }
      // A key taken already fails the insert (UNIQUE), which is the existence check; the
      // untouched pooled directory goes back to the pool.
      do {
        try Store.unique(key) {
          try Metadata.insert(db, id: id, key: key, parent: parentID, kind: kind, now: Clock.nowNanos(), volatile: volatile)
        }
      } catch {
        if pooled != nil { pool.recycle(id) }
        throw error
      }
      try Metadata.insertLabels(db, id: id, labels)
      if volatile { try Volatile.mark(layout, id) }
      let lowers = try parentID.map { try Metadata.parentChain(db, of: $0) } ?? []
      let parentFiles = lowers.first.map { layout.files(id: $0.id, layer: $0.layer) }
      if pooled == nil && ready == nil {
        try DirectoryPool.makeDirectory(layout, id: id, kind: kind, parent: parentFiles)
        try Sys.fsyncDirectory(layout.dir(id))
        try Sys.fsyncDirectory(layout.snapshots)
      } else {
        try Self.adopt(layout, id: id, kind: kind, parent: parentFiles)
      }
      if let ready {
        // Its upper takes the parent's owner, as containerd's overlay snapshotter gives it
        // (a directory given back may have had another's).
        let owner = try parentFiles.map { p throws(SystemError) in try Sys.lstat(p) }
        try Sys.lchown(layout.upper(id, limited: true), uid: owner?.st_uid ?? geteuid(), gid: owner?.st_gid ?? getegid())
        try Metadata.setWritableLimit(db, id: id, limit: limit, base: ready.base)
      }
      let mounts = Self.mounts(
        layout, id: id, kind: kind, lowers: lowers, driver: driver, images: images, volatile: volatile, limited: limit > 0)
      return (mounts, lowers.map(\.id))
    }
    if let ready {
      taken = true
      pool.release(ready.id)
    }
    store.waitForDedup(lowerIDs)
    return mounts
  }

  /// A limited snapshot's directory whose file system has `limit` bytes: made ahead of time
  /// when the pool has one of that size, else made now. Its id stays reserved.
  private func readyLimited(_ limit: Int64) throws(SnapshotError) -> ReadyDirectory {
    if limit == writableSizeByDefault, let made = writablePool?.take() {
      return ReadyDirectory(id: made.id, base: made.base, pooled: true)
    }
    let id = pool.reserveID()
    do {
      return ReadyDirectory(id: id, base: try WritableLimit.makeSnapshotDirectory(layout, id, size: limit), pooled: false)
    } catch {
      pool.release(id)
      throw error
    }
  }

  /// A ready directory no row names: back to the pool it came from, or removed.
  private func giveBack(_ ready: ReadyDirectory) {
    if ready.pooled, let writablePool {
      writablePool.giveBack(id: ready.id, base: ready.base)
      return
    }
    try? WritableLimit.release(layout, ready.id)
    try? Tree.remove(layout.dir(ready.id))
    pool.release(ready.id)
  }

  /// Fits a pooled directory (made for an active snapshot without parent) to this
  /// snapshot: a view has no work dir, and `fs` takes the owner of the parent's `fs`
  /// (made durable then; image layers' roots are normally root's, which needs nothing).
  /// Pooled directories belong to this process's effective user and group.
  private static func adopt(_ layout: Layout, id: Int64, kind: SnapshotKind, parent: String?) throws(SystemError) {
    if kind == .view { try Tree.remove(layout.work(id)) }
    if let parent {
      let owner = try Sys.lstat(parent)
      if owner.st_uid != geteuid() || owner.st_gid != getegid() {
        try Sys.lchown(layout.fs(id), uid: owner.st_uid, gid: owner.st_gid)
        try Sys.fsyncDirectory(layout.fs(id))
      }
    }
  }

  // MARK: - Mounts

  /// The mounts of an active snapshot or a view.
  public func mounts(key: String) throws(SnapshotError) -> [Mount] {
    let layout = self.layout
    let driver = self.driver
    let images = store.images.available
    let (mounts, lowerIDs, volatileID) = try lookup { db -> ([Mount], [Int64], (Int64, Bool)?) in
      let row = try Metadata.get(db, key: key)
      guard row.kind != .committed else {
        throw SnapshotError.precondition("snapshot \(quoted(key)) is committed: only active snapshots and views have mounts")
      }
      let lowers = try row.parentID.map { try Metadata.parentChain(db, of: $0) } ?? []
      let mounts = Self.mounts(
        layout, id: row.id, kind: row.kind, lowers: lowers, driver: driver, images: images, volatile: row.volatile,
        limited: row.limited)
      return (mounts, lowers.map(\.id), row.volatile ? (row.id, row.limited) : nil)
    }
    // Asked again: the snapshot may be mounted again (its container restarted).
    if let (id, limited) = volatileID { try Volatile.readyToMount(layout, id, key: key, limited: limited) }
    store.waitForDedup(lowerIDs)
    return mounts
  }

  /// The mount shapes of containerd's overlay snapshotter: a bind mount of the snapshot's
  /// own dir when it has no parent (rw, or ro for a view), otherwise overlay with
  /// `index=off,metacopy=on`, lower dirs nearest parent first (named through the root's
  /// short alias) and the object directory as a data-only
  /// layer (or the same options for snapfs, with the fuse driver). Unlike containerd's, a
  /// view of one layer is an overlay too: a layer's files are stubs, whose data only an
  /// overlay with the data-only layer shows.
  static func mounts(
    _ layout: Layout, id: Int64, kind: SnapshotKind, lowers: [(id: Int64, layer: Int64?)], driver: MountDriver = .overlay,
    images: Bool = false, volatile: Bool = false, limited: Bool = false
  ) -> [Mount] {
    if lowers.isEmpty {
      return [Mount(type: "bind", source: layout.upper(id, limited: limited), options: [kind == .view ? "ro" : "rw", "rbind"])]
    }
    // metacopy=on: Linux 6.18 follows a stub's redirect into the data-only layer without it
    // only when the stub is in the lowest layer; from any layer above it answers EPERM
    // ("refusing to follow metacopy origin"). With it, a chmod or chown in a container
    // copies up metadata only, as on any overlay with metacopy, and redirect_dir is on.
    var options = ["index=off", "metacopy=on"]
    // Layers in EROFS images are file systems of their own: without xino, a file's st_dev
    // would be its layer's, where containerd's overlay (all layers on one file system)
    // shows the overlay's for every file; xino keeps one st_dev and unique inode numbers
    // (the layer's index in the top bits). snapfs does the same by itself.
    // A limited snapshot's upper is a file system of its own too.
    if images || limited { options.append("xino=on") }
    if kind == .active {
      if volatile { options.append("volatile") }
      options.append("workdir=" + layout.workDir(id, limited: limited))
      options.append("upperdir=" + layout.upper(id, limited: limited))
    }
    // The object directory as a data-only layer: stubs' data (see `ObjectStore`).
    options.append(
      "lowerdir=" + lowers.map { layout.lower(id: $0.id, layer: $0.layer) }.joined(separator: ":") + "::" + layout.aliasObjects)
    return [Mount(type: driver.mountType, source: driver.mountSource, options: options)]
  }

  // MARK: - Commit, remove

  /// Commit: the active snapshot `key` becomes the committed snapshot `name`. Its usage is
  /// computed here, once.
  public func commit(name: String, key: String, labels: [String: String] = [:]) throws(SnapshotError) {
    try Validate.key(name, what: "name")
    try Validate.key(key, what: "key")
    try Validate.labels(labels, key: name)
    // The active snapshot itself has the name (the UNIQUE check below would let it through).
    if name == key { throw .exists("snapshot \(quoted(name)) already exists") }
    let layout = self.layout
    // Usage is computed outside the write transaction: the upper dir is the caller's and
    // does not change during the commit, and other calls keep going meanwhile.
    // One statement: no transaction needed for a consistent answer.
    let found = try lookup(isolated: false) { db in try Metadata.get(db, key: key) }
    guard found.kind == .active else {
      throw .precondition("snapshot \(quoted(key)) is not active: only an active snapshot can be committed")
    }
    if found.volatile && !Volatile.intact(layout, found.id) { throw Volatile.untrusted(key) }
    // A limited snapshot's files are copied out below: not for a name already taken.
    if found.limited, try lookup(isolated: false, { db in try Metadata.find(db, key: name) }) != nil {
      throw .exists("snapshot \(quoted(name)) already exists")
    }
    let usage: SnapshotUsage
    do {
      // A limited snapshot's files leave its own file system: a layer is on the store's.
      if found.limited { try WritableLimit.moveOut(layout, found.id) }
      let u = try Tree.diskUsage(layout.fs(found.id))
      usage = SnapshotUsage(size: u.size, inodes: u.inodes)
    } catch {
      throw .internal("commit of \(quoted(key)): \(error)")
    }
    // Until its files are stubs, no mount of a child may be handed out (another client may
    // see the committed name at once): Prepare, View and Mounts on it wait for this.
    store.deduplicating.update { _ = $0.insert(found.id) }
    defer { store.deduplicating.update { _ = $0.remove(found.id) } }
    try write { db in
      let row = try Metadata.get(db, key: key)
      guard row.kind == .active, row.id == found.id else {
        throw SnapshotError.precondition("snapshot \(quoted(key)) is not active: only an active snapshot can be committed")
      }
      try Store.unique(name) { try Metadata.commit(db, id: row.id, name: name, usage: usage, now: Clock.nowNanos()) }
      try Metadata.setLabels(db, id: row.id, labels)
    }
    if found.volatile { Volatile.unmark(layout, found.id) }
    // Its own file system goes in the background (an ext4 unmount waits for its journal).
    if found.limited {
      jobs.submit(.removeTree(layout.writable(found.id)))
      jobs.submit(.removeTree(layout.writableImage(found.id)))
    }
    // Its files become stubs of shared content objects now, before the caller hears of the
    // commit: no mount can have the new layer as a lower one yet, so none sees them change.
    collector.dedupIfUnmounted(found.id, inodes: usage.inodes)
  }

  /// Remove: deletes the snapshot's row; its directory goes after the commit (back to the
  /// directory pool if nothing was written into it).
  public func remove(key: String) throws(SnapshotError) {
    try Validate.key(key, what: "key")
    let row = try write { db in
      let row = try Metadata.get(db, key: key)
      if try Metadata.hasChildren(db, id: row.id) {
        throw SnapshotError.precondition("cannot remove snapshot \(quoted(key)): it has children")
      }
      try Metadata.delete(db, id: row.id)
      if row.fileBytes != nil { try Metadata.releaseRefs(db, tree: Layout.tree(snapshot: row.id)) }
      return row
    }
    // An imported layer stays in the layer store, ready to be used again, until
    // `collectGarbage` finds no snapshot using it.
    if row.layer == nil { pool.recycle(row.id) }
    if row.volatile { Volatile.unmark(layout, row.id) }
    // Objects only this snapshot held are freed in the background.
    if row.fileBytes != nil { collector.scheduleCollect() }
  }

  // MARK: - Info

  public func stat(key: String) throws(SnapshotError) -> SnapshotInfo {
    try lookup { db in
      let row = try Metadata.get(db, key: key)
      return try Self.info(row, labels: Metadata.labels(db, id: row.id))
    }
  }

  /// What snapshotd keeps about a snapshot beyond containerd's Info.
  public func describe(key: String) throws(SnapshotError) -> SnapshotDetails {
    try Validate.key(key, what: "key")
    let row = try lookup { db in try Metadata.get(db, key: key) }
    let active = row.kind == .active
    var details = SnapshotDetails(
      volatile: active && row.volatile, volatileUntrusted: active && row.volatile && !Volatile.intact(layout, row.id),
      sizeLimit: active ? row.sizeLimit : 0, available: 0)
    if active && row.limited { details.available = (try? WritableLimit.mountedUse(layout, row.id).available) ?? 0 }
    return details
  }

  /// Update: replaces the labels (no field paths, or `labels`) or single labels
  /// (`labels.KEY`; an absent value deletes the label). Other fields are immutable.
  public func update(_ info: SnapshotInfo, fieldPaths: [String]) throws(SnapshotError) -> SnapshotInfo {
    let key = info.name
    try Validate.key(key, what: "name")
    for path in fieldPaths where path != "labels" && !path.hasPrefix("labels.") {
      throw .invalid("cannot update \(quoted(path)) field on snapshot \(quoted(key)): only labels are mutable")
    }
    return try write { db in
      let row = try Metadata.get(db, key: key)
      var labels = try Metadata.labels(db, id: row.id)
      if fieldPaths.isEmpty {
        labels = info.labels
      } else {
        for path in fieldPaths {
          if path == "labels" {
            labels = info.labels
          } else {
            let label = String(path.dropFirst("labels.".count))
            labels[label] = info.labels[label]
          }
        }
      }
      try Validate.labels(labels, key: key)
      let now = Clock.nowNanos()
      try Metadata.touch(db, id: row.id, now: now)
      try Metadata.setLabels(db, id: row.id, labels)
      var updated = row
      updated.updated = now
      return Self.info(updated, labels: labels)
    }
  }

  /// Usage: stored at commit for committed snapshots, measured now for active ones.
  public func usage(key: String) throws(SnapshotError) -> SnapshotUsage {
    let row = try lookup(isolated: false) { db in try Metadata.get(db, key: key) }
    guard row.kind == .active else { return SnapshotUsage(size: row.size, inodes: row.inodes) }
    do {
      if row.limited { return try WritableLimit.usage(layout, row.id, base: row.base) }
      let u = try Tree.diskUsage(layout.files(id: row.id, layer: row.layer))
      return SnapshotUsage(size: u.size, inodes: u.inodes)
    } catch {
      throw .internal("usage of \(quoted(key)): \(error)")
    }
  }

  /// Every snapshot matching any of `filters` (all when empty).
  public func list(filters: [String] = []) throws(SnapshotError) -> [SnapshotInfo] {
    var parsed: [Filter] = []
    for f in filters { parsed.append(try Filter(parsing: f)) }
    let all = try read { db in
      let labels = try Metadata.allLabels(db)
      return try Metadata.all(db).map { Self.info($0, labels: labels[$0.id] ?? [:]) }
    }
    return all.filter { Filter.matchesAny(parsed, $0) }
  }

  static func info(_ row: SnapshotRow, labels: [String: String]) -> SnapshotInfo {
    SnapshotInfo(name: row.key, parent: row.parentKey ?? "", kind: row.kind, created: row.created, updated: row.updated, labels: labels)
  }

  // MARK: - Cleanup

  /// Deletes every directory under `s/` that no snapshot refers to, and waits for pending
  /// removals. Returns the directories it removed.
  @discardableResult
  public func cleanup() throws(SnapshotError) -> [String] {
    jobs.run(.recyclePool)
    jobs.drain()
    // The listing runs inside a write transaction, so no snapshot is being made while we
    // decide what is an orphan; the trees are deleted after it commits (writers do not
    // wait for an `rm -rf`), with no directory being renamed back into the pool meanwhile.
    // No later snapshot can take an orphan's name: ids are never given twice.
    let layout = self.layout
    let orphans = try write { db in
      try pool.excludingRecycling { try Self.orphans(layout) { try Metadata.allIDs(db).union(pool.inUse) } }
    }
    do { try pool.excludingRecycling { try Self.remove(orphans) } } catch { throw SnapshotError(error) }
    return orphans
  }

  /// What `s/` holds for ids outside `keep()`. `keep` is asked after the listing: the pool
  /// reserves an id before it makes its directory, so a directory listed is either kept or
  /// truly orphaned.
  private static func orphans(_ layout: Layout, keep: () throws -> Set<Int64>) throws -> [String] {
    let names = try Sys.listDirectory(layout.snapshots)
    let ids = try keep()
    return names.filter { name in
      guard let id = Layout.id(ofDirectory: name) ?? Layout.id(ofStaging: name) else { return true }
      return !ids.contains(id)
    }.map { layout.snapshots + "/" + $0 }
  }

  /// Removes `paths` (snapshot directories) and whatever is mounted under them.
  private static func remove(_ paths: [String]) throws(SystemError) {
    for path in paths {
      try Sys.detachMounts(under: path)
      try Tree.remove(path)
    }
  }

  /// At start: removes orphan directories and recreates the directory of any active
  /// snapshot or view that lost it (an unclean shutdown on a file system without ordered
  /// metadata). A committed snapshot without its directory is reported, not hidden.
  /// Returns the highest id ever given to a snapshot.
  static func sweep(_ store: Store) throws(SnapshotError) -> Int64 {
    let (layout, images, logger) = (store.layout, store.images, store.logger)
    do {
      let (rows, lastID) = try store.read { db in (try Metadata.all(db), try Metadata.lastID(db)) }
      let removed = try orphans(layout) { Set(rows.map(\.id)) }
      try remove(removed)
      for path in removed { logger.info("removed orphan directory", metadata: ["path": "\(path)"]) }
      let layers = try store.read { db in try Metadata.allLayerIDs(db) }
      for name in try Sys.listDirectory(layout.layers) {
        if let id = Layout.id(ofLayerEntry: name), layers.contains(id) { continue }
        logger.info("removed orphan layer files", metadata: ["path": "\(layout.layers)/\(name)"])
        try images.removeOrphan(name)
      }
      // Layer images a reboot or crash left unmounted, mounted before anything names them.
      try images.mountMissing(
        layers.sorted(), snapshots: rows.filter { $0.kind == .committed && $0.layer == nil }.map(\.id), logger: logger)
      try Sys.detachMounts(under: layout.temporary)  // whatever a crash left mounted there (probes)
      try Tree.remove(layout.temporary)
      try Sys.mkdir(layout.temporary, mode: 0o700)
      let byID = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
      for row in rows where !Sys.exists(layout.files(id: row.id, layer: row.layer)) {
        if row.limited && row.kind == .active && Sys.exists(layout.dir(row.id)) {
          // Its files are in its own file system (rw): only the empty `fs` is missing.
          try Sys.mkdirIfMissing(layout.fs(row.id), mode: Layout.fsMode)
          continue
        }
        if row.kind == .committed {
          logger.error(
            "committed snapshot has lost its directory",
            metadata: ["key": "\(row.key)", "path": "\(layout.files(id: row.id, layer: row.layer))"])
        } else {
          logger.warning("recreating missing directory of snapshot", metadata: ["key": "\(row.key)"])
          let parent = row.parentID.flatMap { byID[$0] }.map { layout.files(id: $0.id, layer: $0.layer) }
          try DirectoryPool.makeDirectory(layout, id: row.id, kind: row.kind, parent: parent)
          try Sys.fsyncDirectory(layout.dir(row.id))
          try Sys.fsyncDirectory(layout.snapshots)
        }
      }
      return lastID
    } catch let e as SnapshotError {
      throw e
    } catch {
      throw .init(.unavailable, "cannot recover snapshot directories under \(layout.root): \(error)")
    }
  }

  /// Number of snapshots (for `info` and tests).
  public func count() throws(SnapshotError) -> Int {
    try read { db in try Metadata.count(db) }
  }
}

/// Argument checks shared by every call; errors name the key.
enum Validate {
  static func key(_ key: String, what: String) throws(SnapshotError) {
    if key.isEmpty { throw .invalid("snapshot \(what) must not be empty") }
    if key.utf8.count > Limits.keyBytes {
      throw .invalid("snapshot \(what) \(quoted(key)) is longer than \(Limits.keyBytes) bytes")
    }
    if key.utf8.contains(0) { throw .invalid("snapshot \(what) \(quoted(key)) contains a NUL byte") }
  }

  static func labels(_ labels: [String: String], key: String) throws(SnapshotError) {
    for (k, v) in labels where k.utf8.count + v.utf8.count > Limits.labelPairBytes {
      let shown = k.utf8.count > 10 ? String(decoding: k.utf8.prefix(10), as: UTF8.self) + "..." : k
      throw .invalid(
        "snapshot \(quoted(key)): label key and value greater than maximum size (\(Limits.labelPairBytes) bytes), key: \(shown)")
    }
  }
}
