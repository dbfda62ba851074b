import GRDB
import Logging
import SnapshotSys
import Unpack

/// Stores made before stubs (snapshotd up to the hard-linked object store): every regular
/// file of a layer was a hard link to an object `o/<2 hex>/<62 hex>` that carried the
/// file's metadata, so distinct files of an image (and of different images) shared one
/// inode inside containers. They are converted at start, before anything is served: each
/// layer and deduplicated snapshot becomes a tree of stubs (each name its own stub: such a
/// tree cannot tell a tar's hard links from the store's), the old objects' data becomes
/// objects under short names (linked, not copied), the references are recorded anew, and
/// the old objects go. Each step can be repeated, so a conversion cut short by a crash
/// finishes at the next start.
enum Upgrade {
  /// Converts the store if it holds old objects. Refuses (with what to do) while mounts made
  /// by the earlier version use it: their overlays have no data-only layer, and would show
  /// the stubs' holes.
  static func convertIfNeeded(_ store: Store, names: [String]) throws(SnapshotError) {
    let (layout, objects, logger) = (store.layout, store.objects, store.logger)
    let legacy = names.filter(ObjectStore.isLegacyKey)
    let legacyRows = try store.read { db in try Metadata.legacyObjectCount(db) }
    guard !legacy.isEmpty || legacyRows > 0 else { return }
    let inUse = oldMounts(layout)
    if !inUse.isEmpty {
      throw .init(
        .unavailable,
        """
        the store at \(layout.root) was made by an earlier snapshotd (hard-linked objects) and must be \
        converted, but \(inUse.count) mount(s) made by that version still use it (first: \(inUse[0])); \
        stop the containers using them (or drain the node), then start snapshotd again to convert it; \
        or remove \(layout.root) to start with an empty store
        """)
    }
    logger.notice(
      "converting a store made by an earlier snapshotd: layers become stubs of objects",
      metadata: [
        "root": "\(layout.root)", "old objects": "\(legacy.count)",
      ])
    do {
      let trees = try store.read { db in try Metadata.trees(db) }
      for t in trees {
        let path = t.layer.map(layout.layer) ?? layout.fs(t.snapshot!)
        guard Sys.exists(path) else { continue }
        let absorbed = try objects.shared { () throws(SystemError) in
          try objects.absorb(tree: path, scratch: layout.temporary, separateLinks: true)
        }
        try store.write { db in try Metadata.replaceRefs(db, tree: t.tree, absorbed.objects) }
        logger.info("converted", metadata: ["tree": "\(t.tree)", "objects": "\(absorbed.objects.count)"])
      }
      try store.write { db in
        try Metadata.deleteLegacyObjects(db)
        try Metadata.recountRefs(db)
      }
      for key in legacy { try objects.remove(key) }
    } catch {
      throw .init(.unavailable, "converting the store at \(layout.root) failed (it resumes at the next start): \(error)")
    }
    logger.notice("store converted", metadata: ["root": "\(layout.root)"])
  }

  /// Overlay and snapfs mounts of this mount namespace whose layers are under the store
  /// but that have no data-only layer of its objects.
  static func oldMounts(_ layout: Layout) -> [String] {
    guard let mounts = try? MountInfo.current() else { return [] }
    var out: [String] = []
    for m in mounts {
      let text = ([m.source] + m.options + m.superOptions).joined(separator: ",")
      guard text.contains("lowerdir=" + layout.root + "/") || text.contains(":" + layout.root + "/") else { continue }
      if !text.contains("::") { out.append(m.mountPoint) }
    }
    return out
  }
}
