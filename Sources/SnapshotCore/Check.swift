import GRDB
import SnapshotSys
import Synchronization
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// One thing `check` found wrong with the store.
public struct CheckFinding: Sendable, Equatable, CustomStringConvertible {
  public enum Kind: String, Sendable {
    /// A stub whose object is gone: the file cannot be read (overlayfs answers ENOENT).
    case missingObject = "missing object"
    /// A stub whose size is not its object's.
    case sizeMismatch = "size mismatch"
    /// An object whose content no longer has its digest.
    case corruptObject = "corrupt object"
    /// A tree's recorded references differ from what its stubs name.
    case references = "references"
    /// An object's reference count differs from its references.
    case referenceCount = "reference count"
    /// An object nothing references, or a row for an object no stub names.
    case orphanObject = "orphan object"
    /// A layer directory without a row, or a row without its directory.
    case orphanLayer = "orphan layer"
    /// A layer image not mounted on its layer's directory (mounts of it would show an empty
    /// layer), or a mount of no layer.
    case layerMount = "layer mount"
    /// A volatile active snapshot the host restarted under: its upper may have lost
    /// acknowledged writes (`Volatile`). Mounts and Commit refuse it; remove it.
    case untrustedVolatile = "untrusted volatile snapshot"
    /// A size-limited active snapshot whose file system is not mounted (its mounts would
    /// fail), or a writable file system mounted for no such snapshot (a leak).
    case writableMount = "writable layer mount"
  }

  public var kind: Kind
  public var detail: String
  /// Whether `check --repair` can fix it (references, counts, orphans), and whether it did.
  public var repairable: Bool
  public var repaired = false

  public var description: String {
    let state = repaired ? "repaired" : repairable ? "repairable with --repair" : "cannot be repaired"
    return "\(kind.rawValue): \(detail) (\(state))"
  }
}

/// Progress of a check's hashing, read from another thread.
public final class CheckProgress: Sendable {
  private let done = Atomic<Int64>(0)
  private let total = Atomic<Int64>(0)
  public init() {}
  public var bytesDone: Int64 { done.load(ordering: .relaxed) }
  public var bytesTotal: Int64 { total.load(ordering: .relaxed) }
  func start(_ bytes: Int64) { total.store(bytes, ordering: .relaxed) }
  func add(_ bytes: Int64) { done.add(bytes, ordering: .relaxed) }
}

extension ObjectCollector {
  /// Walks the store and reports what is wrong, changing nothing unless `repair`: stubs
  /// whose object is missing or has another size, objects whose content does not match
  /// their digest (every object is hashed), references and counts that disagree with the
  /// stubs, and orphans. With `repair`, references and counts are set from the stubs and
  /// orphan objects removed; the rest is reported as beyond repair.
  ///
  /// The walk runs while no import, deduplication or collection changes the store (the
  /// object store's gate, exclusive); the hashing only keeps collections away.
  public func check(repair: Bool = false, progress: CheckProgress? = nil) throws(SnapshotError) -> [CheckFinding] {
    // Work already queued (removals, collections) first: what it will fix is no finding.
    drain()
    let layout = self.layout
    var findings: [CheckFinding] = []
    var used: [String: Int64] = [:]  // object → size, over every tree
    try objects.exclusive { () throws(SnapshotError) in
      do {
        let (trees, recorded, rows, layerIDs) = try read { db in
          (try Metadata.trees(db), try Metadata.allRefs(db), try Metadata.allObjects(db), try Metadata.allLayerIDs(db))
        }
        // A layer whose image is gone shows an empty directory: every mount of it an empty layer.
        for id in layerIDs.sorted() where !Sys.exists(store.images.image(id)) && Sys.exists(layout.layer(id)) {
          guard try Sys.listDirectory(layout.layer(id)).isEmpty, try read({ db in try Metadata.layerSize(db, id).1 }) > 1 else {
            continue
          }
          findings.append(
            .init(
              kind: .orphanLayer, detail: "layer \(id) has neither its image nor its files (\(layout.layer(id)) is empty)",
              repairable: false))
        }
        for (id, key) in try read({ db in try Metadata.volatileSnapshots(db) }) where !Volatile.intact(layout, id) {
          findings.append(
            .init(
              kind: .untrustedVolatile,
              detail: "snapshot \(quoted(key)) was mounted volatile and the host restarted since; remove it", repairable: false))
        }
        let limited = Set(try read({ db in try Metadata.limitedSnapshots(db) }))
        let mountPoints = Set(try MountInfo.current().map(\.mountPoint))
        for id in limited.sorted() where !mountPoints.contains(layout.writable(id)) {
          findings.append(
            .init(
              kind: .writableMount, detail: "the file system of size-limited snapshot \(id) is not mounted on \(layout.writable(id))",
              repairable: true))
          if repair {
            try WritableLimit.attach(layout, id, mounted: mountPoints)
            findings[findings.count - 1].repaired = true
          }
        }
        let prefix = layout.snapshots + "/"
        for point in mountPoints.sorted() where point.hasPrefix(prefix) && point.hasSuffix("/rw") {
          // (Directories made ahead of time for the default limit are the pool's.)
          guard let id = Int64(point.dropFirst(prefix.count).dropLast(3)), !limited.contains(id), !pool.inUse.contains(id) else {
            continue
          }
          findings.append(.init(kind: .writableMount, detail: "\(point) is mounted for no size-limited snapshot", repairable: true))
          if repair {
            try Sys.detachMounts(under: point)
            findings[findings.count - 1].repaired = true
          }
        }
        let unmounted = try store.images.unmounted(layerIDs.sorted())
        for id in unmounted {
          findings.append(
            .init(kind: .layerMount, detail: "the image of layer \(id) is not mounted on \(layout.layer(id))", repairable: true))
        }
        if repair {
          for id in unmounted {
            try store.images.mount(id)
            if let i = findings.firstIndex(where: { $0.kind == .layerMount && $0.detail.contains("layer \(id) ") }) {
              findings[i].repaired = true
            }
          }
        }
        // Committed snapshots' images the same way (their directory, unmounted, is empty).
        let points = Set(try MountInfo.current().map(\.mountPoint))
        for id in trees.compactMap(\.snapshot).sorted()
        where Sys.exists(layout.fs(id) + LayerImages.suffix) && !points.contains(layout.fs(id)) {
          findings.append(
            .init(kind: .layerMount, detail: "the image of snapshot \(id) is not mounted on \(layout.fs(id))", repairable: true))
          // (Mounted before the walk below, which would otherwise find no stubs in it.)
          if repair {
            try store.images.finish(layout.fs(id), image: layout.fs(id) + LayerImages.suffix, mounted: points)
            findings[findings.count - 1].repaired = true
          }
        }
        var found: [String: [String: ObjectInfo]] = [:]
        for t in trees {
          let path = t.layer.map(layout.layer) ?? layout.fs(t.snapshot!)
          guard Sys.exists(path) else {
            // Removed since the list was read (removes do not wait for the gate) is no finding.
            let still = try read { db in try Metadata.trees(db) }.contains { $0.tree == t.tree }
            if still { findings.append(.init(kind: .orphanLayer, detail: "\(t.tree): directory \(path) is missing", repairable: false)) }
            continue
          }
          var stubs: [String: ObjectInfo] = [:]
          try Tree.walk(
            path,
            visit: { (dir, cName, st) throws(SystemError) in
              guard st.st_mode & S_IFMT == S_IFREG, st.st_size > 0 else { return }
              let name = String(cString: cName)
              let fd = try At.open(dir, name, flags: O_RDONLY | At.noAtime)
              defer { At.close(fd) }
              guard let key = try ObjectStore.stubKey(fd, name) else { return }
              guard let size = try objects.size(of: key) else {
                findings.append(
                  .init(
                    kind: .missingObject,
                    detail: "a stub in \(t.tree) (\(name), \(st.st_size) bytes) names object \(key), which is missing", repairable: false))
                stubs[key] = rows[key]?.info ?? ObjectInfo(size: Int64(st.st_size), sha256: "")
                return
              }
              if size != Int64(st.st_size) {
                findings.append(
                  .init(
                    kind: .sizeMismatch, detail: "a stub in \(t.tree) (\(name)) has \(st.st_size) bytes, its object \(key) \(size)",
                    repairable: false))
              }
              if let row = rows[key] {
                stubs[key] = row.info
              } else {
                stubs[key] = try objects.info(key) ?? ObjectInfo(size: size, sha256: "")
              }
              used[key] = size
            })
          found[t.tree] = stubs
          let want = recorded[t.tree] ?? []
          let have = Set(stubs.keys)
          if want != have {
            findings.append(
              .init(
                kind: .references,
                detail:
                  "\(t.tree): \(want.subtracting(have).count) recorded references its stubs do not use, \(have.subtracting(want).count) used but not recorded",
                repairable: true))
          }
        }
        let treeNames = Set(trees.map(\.tree))
        let stale = recorded.keys.filter { !treeNames.contains($0) }.sorted()
        for tree in stale {
          findings.append(
            .init(kind: .references, detail: "\(tree) no longer exists but holds \(recorded[tree]!.count) references", repairable: true))
        }
        // Counts as the references (once repaired, as the stubs) give them.
        var counts: [String: Int64] = [:]
        for (tree, keys) in recorded where treeNames.contains(tree) && found[tree] == nil { for k in keys { counts[k, default: 0] += 1 } }
        for (_, stubs) in found { for k in stubs.keys { counts[k, default: 0] += 1 } }
        var recordedCounts: [String: Int64] = [:]
        for (_, keys) in recorded { for k in keys { recordedCounts[k, default: 0] += 1 } }
        for (key, row) in rows.sorted(by: { $0.key < $1.key }) where row.refs != recordedCounts[key, default: 0] {
          findings.append(
            .init(
              kind: .referenceCount, detail: "object \(key) counts \(row.refs) references, \(recordedCounts[key, default: 0]) are recorded",
              repairable: true))
        }
        // Orphans: objects on disk no stub names, rows of objects neither on disk nor named.
        // Stubs of snapshots whose deduplication is unfinished name objects too.
        for key in try pendingStubKeys() where used[key] == nil { used[key] = try objects.size(of: key) }
        let onDisk = try objects.list()
        var orphans: [String] = []
        // An object whose count went to 0 waits for the collection a remove queued: no finding.
        for key in onDisk where used[key] == nil && (rows[key].map { $0.refs > 0 } ?? true) {
          orphans.append(key)
          findings.append(.init(kind: .orphanObject, detail: "object \(key) is not used by any layer", repairable: true))
        }
        let disk = Set(onDisk)
        let named = Set(found.values.flatMap(\.keys))
        for key in rows.keys.sorted() where !named.contains(key) && !disk.contains(key) {
          findings.append(.init(kind: .orphanObject, detail: "object \(key) is recorded but neither stored nor used", repairable: true))
        }
        for name in try Sys.listDirectory(layout.layers) where !name.hasPrefix("new-") {  // (imports staging)
          if let id = Layout.id(ofLayerEntry: name), layerIDs.contains(id) { continue }
          findings.append(.init(kind: .orphanLayer, detail: "\(layout.layers)/\(name) belongs to no layer", repairable: true))
        }
        if repair && findings.contains(where: \.repairable) {
          try write { db in
            for (tree, stubs) in found { try Metadata.replaceRefs(db, tree: tree, stubs) }
            try Metadata.dropRefs(db, trees: stale)
            try Metadata.recountRefs(db)
            try Metadata.deleteUnreferencedObjects(db)
          }
          for key in orphans { try objects.remove(key) }
          for name in try Sys.listDirectory(layout.layers) where !name.hasPrefix("new-") {
            if let id = Layout.id(ofLayerEntry: name), layerIDs.contains(id) { continue }
            try store.images.removeOrphan(name)
          }
          for i in findings.indices where findings[i].repairable { findings[i].repaired = true }
        }
      } catch let e as SnapshotError {
        throw e
      } catch {
        throw SnapshotError(error)
      }
    }
    // Every object in use, hashed against its recorded digest.
    let digests = try read { db in try Metadata.allObjects(db) }
    progress?.start(used.values.reduce(0, +))
    try objects.shared { () throws(SnapshotError) in
      for (key, size) in used.sorted(by: { $0.key < $1.key }) {
        var want = digests[key]?.info.sha256 ?? ""
        if want.isEmpty, let info = try? objects.info(key) { want = info.sha256 }
        let hex: String?
        do { hex = try objects.hashContent(key) } catch { throw SnapshotError(error) }
        progress?.add(size)
        guard let hex else { continue }  // removed meanwhile: reported by the walk if a stub needs it
        if hex != want {
          findings.append(
            .init(
              kind: .corruptObject,
              detail: "object \(key) no longer has its content: sha256 \(hex), recorded \(want.isEmpty ? "nothing" : want)",
              repairable: false))
        }
      }
    }
    return findings
  }
}
