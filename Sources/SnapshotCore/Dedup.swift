import Logging
import SnapshotSys
import Synchronization
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// The object store's upkeep: committed snapshots' files made stubs of shared objects
/// (dedup, in Commit), objects and layers nothing uses collected (in the background), and
/// `check`.
public final class ObjectCollector: StorePart, Sendable {
  let store: Store
  let pool: DirectoryPool
  /// The daemon's mount driver: with snapfs, its processes tell which directories it holds.
  let driver: MountDriver

  init(store: Store, pool: DirectoryPool, driver: MountDriver = .overlay) {
    self.store = store
    self.pool = pool
    self.driver = driver
  }

  /// Deduplicates snapshot `id`, just committed, unless a mount may be using its
  /// directory: an active snapshot committed while still mounted (a running container's)
  /// keeps its files as they are, since a mount must never see its directories change. A
  /// FUSE mount's process may need a moment to exit after its unmount: it is waited for.
  func dedupIfUnmounted(_ id: Int64, inodes: Int64) {
    for attempt in 0..<Self.unmountWaits {
      guard let mounted = layout.mountedIDs(fuse: driver == .fuse) else { break }
      if !mounted.contains(id) {
        if store.images.wants(inodes: inodes) { makeImage(snapshot: id) } else { dedup(id) }
        return
      }
      if attempt + 1 < Self.unmountWaits { usleep(100_000) }
    }
    logger.info("a committed snapshot is still mounted: its files are left as they are, not deduplicated", metadata: ["id": "\(id)"])
  }
  static let unmountWaits = 10

  /// With layer images: the files of snapshot `id`, committed through Prepare/Commit, made
  /// an EROFS image mounted on its `fs`, their data objects shared with every other layer
  /// (dedup and image in one pass: no stub is made on disk; a file whose content is new
  /// becomes the object itself). Only for a directory no mount uses; its references and
  /// file bytes are recorded as dedup records them. A failure leaves the directory.
  func makeImage(snapshot id: Int64) {
    let layout = self.layout
    let started = Clock.nowNanos()
    do {
      try objects.shared { () throws in
        guard let row = try read({ db in try Metadata.find(db, id: id) }), row.kind == .committed, row.layer == nil else { return }
        let dir = layout.fs(id)
        var summary: LayerTree.Loaded?
        if Sys.exists(dir + LayerImages.suffix) {  // done, or a crash cut the last step short
          try store.images.finish(dir, image: dir + LayerImages.suffix)
          logger.debug("deduplicated snapshot", metadata: ["key": "\(row.key)", "image": "\(dir + LayerImages.suffix)"])
          return
        }
        try store.images.convert(dir, objects: objects) { loaded in
          try write { db in
            guard let now = try Metadata.find(db, id: id), now.kind == .committed else {
              throw SnapshotError.notFound("snapshot \(id) was removed")
            }
            let known = try Metadata.refs(db, tree: Layout.tree(snapshot: id))
            try Metadata.addRefs(db, tree: Layout.tree(snapshot: id), loaded.objects.filter { known[$0.key] == nil })
            if now.fileBytes == nil { try Metadata.setFileBytes(db, id: id, loaded.fileBytes) }
          }
          summary = loaded
        }
        // (tests wait for this line)
        logger.debug(
          "deduplicated snapshot",
          metadata: [
            "key": "\(row.key)", "image": "\(dir + LayerImages.suffix)", "objects": "\(summary?.objects.count ?? 0)",
            "bytes": "\(summary?.fileBytes ?? 0)", "new": "\(summary?.adopted.count ?? 0)",
            "seconds": "\(Double(Clock.nowNanos() - started) / 1e9)",
          ])
      }
    } catch {
      if (try? read({ db in try Metadata.find(db, id: id) })) == nil { scheduleCollect(sweep: true) }
      logger.warning(
        "deduplication of a committed snapshot failed; its files stay a directory", metadata: ["id": "\(id)", "error": "\(error)"])
    }
  }

  /// The `toImages` job: what is still a directory becomes an image, one at a time, each
  /// when no mount uses it: imported layers of an earlier version's store (stubs only), and
  /// committed snapshots a mount used at start. Children's mounts wait during each swap
  /// (a rename, a mkdir and a mount; the image is written before).
  func runToImages() {
    guard store.images.available else { return }
    let images = store.images
    let fuse = driver == .fuse
    do {
      let (layers, snapshots) = try read { db in
        (
          try Metadata.allLayerIDs(db).sorted(),
          try Metadata.all(db).filter { $0.kind == .committed && $0.layer == nil && images.wants(inodes: $0.inodes) }.map(\.id)
        )
      }
      for id in snapshots where !Sys.exists(layout.fs(id) + LayerImages.suffix) {
        guard let mounted = layout.mountedIDs(fuse: fuse), !mounted.contains(id) else { continue }
        store.deduplicating.update { _ = $0.insert(id) }
        defer { store.deduplicating.update { _ = $0.remove(id) } }
        guard let still = layout.mountedIDs(fuse: fuse), !still.contains(id) else { continue }
        makeImage(snapshot: id)
      }
      for id in layers where !Sys.exists(images.image(id)) {
        try objects.shared { () throws in
          guard let mounted = layout.mountedLayerIDs(fuse: fuse), !mounted.contains(id), Sys.exists(layout.layer(id)) else { return }
          let guarded = try read { db in try Metadata.snapshots(db, layer: id) }
          store.deduplicating.update { $0.formUnion(guarded) }
          defer { store.deduplicating.update { $0.subtract(guarded) } }
          guard let still = layout.mountedLayerIDs(fuse: fuse), !still.contains(id) else { return }
          try images.convert(layout.layer(id), objects: nil) { _ in }
          logger.info("an imported layer's directory is an image now", metadata: ["layer": "\(id)"])
        }
      }
    } catch {
      logger.warning("making layer directories images failed; retried at the next start", metadata: ["error": "\(error)"])
    }
  }

  /// The `collect` job. Directories of removed snapshots go first, since their links to
  /// objects count: the pool's are taken back now, and their removals waited for.
  func runCollect() {
    pool.waitIdle()
    let sweep = store.collections.collecting()
    do { try collectGarbage(layers: false, sweep: sweep) } catch {
      logger.warning("collecting unreferenced objects failed", metadata: ["error": "\(error)"])
    }
  }

  /// Makes the files of snapshot `id`, committed through Prepare/Commit, stubs of content
  /// objects, as an imported layer's are, and records its references: the same data in
  /// another layer or image is then stored once, while every file keeps its own inode.
  /// Only for a directory no mount uses (see `dedupIfUnmounted`): files are replaced.
  func dedup(_ id: Int64) {
    let layout = self.layout
    let started = Clock.nowNanos()
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
          throw SnapshotError(error)
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
            "seconds": "\(Double(Clock.nowNanos() - started) / 1e9)",
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
        for layer in freed { try store.images.remove(layer) }
        try objects.remove(dead.map(\.key))
        for (_, size) in dead { bytes += size }
        var count = dead.count
        if sweep {
          let known = try read { db in try Metadata.objectKeys(db) }.union(pendingStubKeys())
          let orphans = try objects.list().filter { !known.contains($0) && !ObjectStore.isLegacyKey($0) }
          try objects.remove(orphans)
          count += orphans.count
        }
        return (freed.count, count, bytes)
      } catch {
        throw SnapshotError(error)
      }
    }
  }

  /// Layers, objects, and bytes stored with and without sharing.
  public func storeUsage() throws(SnapshotError) -> StoreUsage {
    try read { db in try Metadata.storeUsage(db) }
  }

  /// Waits for every background task (directory removals, collections).
  public func drain() {
    jobs.run(.recyclePool)
    jobs.drain()
  }
}
