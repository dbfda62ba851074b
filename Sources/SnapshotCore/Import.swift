import GRDB
import Logging
import SnapshotSys
import Synchronization
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// A layer blob to import.
public struct LayerImport: Sendable {
  public var mediaType: String
  public var digest: Digest?
  public var diffID: Digest?
  /// The chainID of the layer below ("" for a base layer).
  public var parent: String
  /// How messages name the layer (its digest, or the blob's path).
  public var name: String

  public init(mediaType: String, digest: Digest?, diffID: Digest?, parent: String, name: String) {
    self.mediaType = mediaType
    self.digest = digest
    self.diffID = diffID
    self.parent = parent
    self.name = name
  }
}

/// Progress of an import, read from another thread.
public final class ImportProgress: Sendable {
  private let counters = Mutex<[ProgressCounter]>([])
  private let done = Atomic<Int>(0)
  private let total = Atomic<Int>(0)
  private let totalBytes = Atomic<Int64>(0)
  /// Raised when the client that asked for the work leaves: reads of its files stop.
  public let cancellation = Cancellation()

  public init() {}

  public func start(layers: Int, bytes: Int64) {
    total.store(layers, ordering: .relaxed)
    totalBytes.store(bytes, ordering: .relaxed)
  }

  public func counter() -> ProgressCounter {
    let c = ProgressCounter()
    counters.withLock { $0.append(c) }
    return c
  }

  public func layerDone() { done.add(1, ordering: .relaxed) }

  public var bytesDone: Int64 { counters.withLock { $0.reduce(0) { $0 + $1.bytes } } }
  public var bytesTotal: Int64 { totalBytes.load(ordering: .relaxed) }
  public var layersDone: Int { done.load(ordering: .relaxed) }
  public var layersTotal: Int { total.load(ordering: .relaxed) }
}

/// Imports of the same layer running at once: the second waits for the first.
struct Inflight: Sendable {
  private let running = SingleFlight<String, Void>()

  /// Runs `body` unless an import under `key` runs; then waits for that one and returns
  /// false so the caller looks again.
  func run(_ key: String?, _ body: () throws(SnapshotError) -> Void) throws(SnapshotError) -> Bool {
    guard let key else {
      try body()
      return true
    }
    let (other, leads) = running.join(key)
    guard leads else {
      other.wait()
      return false
    }
    defer { running.finish(key, with: ()) }
    try body()
    return true
  }
}

/// A layer read (its objects durable, its entries in memory), not yet committed.
/// A source that counts the bytes read from it (a layer's blob, for metrics).
final class CountingSource: ByteSource {
  let source: ByteSource
  private(set) var count: Int64 = 0
  init(_ source: ByteSource) { self.source = source }
  func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    let n = try source.read(into: buffer)
    count += Int64(n)
    return n
  }
}

struct StagedLayer: @unchecked Sendable {  // the tree goes from the thread that read it to the one that commits it
  var tree: LayerTree
  var unpacked: UnpackedLayer
  /// The layer's files already written under `l/` (`write`), by the thread that read it:
  /// possible when the tree needs nothing of its parent's (no implicit directories).
  var written: String?
}

/// Layers and images into the layer store: each layer unpacked once (stubs of shared
/// objects), committed as the snapshot named by its chainID; and containerd's
/// remote-snapshotter answer (`layerSnapshot`) for layers the store keeps.
public final class LayerImporter: StorePart, Sendable {
  let store: Store
  let pool: DirectoryPool
  let inflight = Inflight()

  /// The label containerd's unpacker names the committed snapshot it is about to make with.
  static let snapshotRef = "containerd.io/snapshot.ref"

  init(store: Store, pool: DirectoryPool) {
    self.store = store
    self.pool = pool
  }

  /// Imports one layer blob as the committed snapshot named by its chainID, on top of
  /// `parent`, and returns the chainID. A layer whose chainID exists returns at once; a
  /// layer whose diffID is already unpacked (in another chain) is not unpacked again; two
  /// imports of the same layer at once unpack it once.
  public func importLayer(_ source: ByteSource, _ request: LayerImport, progress: ImportProgress? = nil) throws(SnapshotError) -> String {
    guard let compression = Compression(mediaType: request.mediaType) else {
      throw .invalid("layer \(request.name): unsupported media type \(quoted(request.mediaType))")
    }
    let parent = try parentChainID(request.parent, layer: request.name)
    progress?.start(layers: 1, bytes: 0)
    while true {
      // Under the gate, as every use of a stored layer (gc deletes unused ones under it).
      if let chainID = try objects.shared({ () throws(SnapshotError) in try existing(parent: parent, request) }) { return chainID }
      var result: String?
      let ran = try inflight.run(request.diffID?.hex ?? request.digest?.hex) { () throws(SnapshotError) in
        try objects.shared { () throws(SnapshotError) in
          if let chainID = try existing(parent: parent, request) {
            result = chainID
            return
          }
          let layer = LayerDescription(name: request.name, compression: compression, digest: request.digest, diffID: request.diffID)
          let staged = try stage(source, layer, .import, progress: progress?.counter())
          result = try commitLayer(parent: parent, staged)
        }
      }
      progress?.layerDone()
      if ran, let result { return result }
    }
  }

  /// Unpacks a layer into the store without a snapshot of it: a later `importLayer`, or a
  /// Prepare naming its chainID, makes the snapshot on top of its parent without unpacking.
  /// A pull does this for an image's layers all at once, before containerd asks for them
  /// one by one. Returns false when the store has the layer (by diffID or blob digest);
  /// `source` is then not called (nothing is downloaded). Two calls for one layer at once
  /// unpack it once.
  public func unpackLayer(
    _ request: LayerImport, progress: ProgressCounter? = nil, source: () throws -> ByteSource
  ) throws(SnapshotError) -> Bool {
    guard let compression = Compression(mediaType: request.mediaType) else {
      throw .invalid("layer \(request.name): unsupported media type \(quoted(request.mediaType))")
    }
    func known() throws(SnapshotError) -> Bool { try hasLayer(request) }
    while true {
      if try known() { return false }
      var unpacked = false
      let ran = try inflight.run(request.diffID?.hex ?? request.digest?.hex) { () throws(SnapshotError) in
        try objects.shared { () throws(SnapshotError) in
          if try known() { return }
          let blob: ByteSource
          do { blob = try source() } catch { throw SnapshotError(error) }
          let layer = LayerDescription(name: request.name, compression: compression, digest: request.digest, diffID: request.diffID)
          _ = try commitLayer(parent: nil, try stage(blob, layer, .registry, progress: progress), snapshots: false)
          unpacked = true
        }
      }
      if ran { return unpacked }
    }
  }

  /// Whether the store has the layer `request` names (by diffID or blob digest).
  public func hasLayer(_ request: LayerImport) throws(SnapshotError) -> Bool {
    try read { db in
      if let d = request.diffID, try Metadata.layerVariant(db, diffID: d.description) != nil { return true }
      if let d = request.digest, try Metadata.layer(db, digest: d.description) != nil { return true }
      return false
    }
  }

  /// The committed snapshot of a layer the store has (`unpackLayer`) on top of `parent`
  /// ("" for none): its chainID. Throws not found when the layer is not in the store.
  public func snapshotOfLayer(diffID: Digest, parent: String) throws(SnapshotError) -> String {
    let parent = try parentChainID(parent, layer: diffID.description)
    return try objects.shared { () throws(SnapshotError) in try commitKnown(parent: parent, diffID: diffID) }
  }

  /// Imports an OCI image (layout directory or archive): every layer not yet present is
  /// unpacked, all at once, each into its own directory; then the chain is committed in
  /// order. Returns the top chainID.
  public func importImage(_ path: String, progress: ImportProgress? = nil) throws(SnapshotError) -> String {
    var layoutDir = path
    var temporary: String?
    // An archive's layers too large to be anything else are read where they are in it;
    // the rest of the archive is written out as a layout.
    var inPlace: [String: Range<Int64>] = [:]
    defer { if let temporary { try? Tree.remove(temporary) } }
    if !isDirectory(path) {
      let dir = layout.temporary + "/" + Sys.temporaryName("image")
      do { try Sys.mkdir(dir, mode: 0o700) } catch { throw SnapshotError(error) }
      temporary = dir
      inPlace = ImageArchive.blobsInPlace(path, minimum: ImageLayout.maxDocument + 1)
      do { try ImageArchive.extract(path, into: dir, skipping: Set(inPlace.keys)) } catch { throw SnapshotError(error) }
      layoutDir = dir
    }
    let layers: [ImageLayer]
    do { layers = try ImageLayout(dir: layoutDir).layers() } catch { throw SnapshotError(error) }
    guard !layers.isEmpty else { throw .invalid("image \(path) has no layers") }
    progress?.start(layers: layers.count, bytes: layers.reduce(0) { $0 + $1.descriptor.size })

    var chain: [Digest] = []
    for l in layers { chain.append(Digest.chainID(parent: chain.last, diffID: l.diffID)) }
    return try objects.shared { () throws(SnapshotError) -> String in
      // Layers still missing, unpacked concurrently.
      let present = try read { db in try chain.map { try Metadata.find(db, key: $0.description) != nil } }
      let known = try read { db in try layers.map { try Metadata.layerVariant(db, diffID: $0.diffID.description) != nil } }
      let inPlace = inPlace
      var running: [Int: Promise<Result<StagedLayer, SnapshotError>>] = [:]
      let missing = layers.indices.filter { !present[$0] && !known[$0] }
      // The largest blob to unpack takes longest: the others yield the cores to it.
      let largest = missing.max { layers[$0].descriptor.size < layers[$1].descriptor.size }
      for i in missing {
        let l = layers[i]
        let counter = progress?.counter()
        do {
          running[i] = try Threads.run { [self] in
            defer { progress?.layerDone() }
            do {
              let source =
                if let range = inPlace["blobs/sha256/" + l.digest.hex] {
                  try FileSource(path: path, limit: l.descriptor.size, range: range, cancellation: progress?.cancellation)
                } else {
                  try FileSource(path: l.path, limit: l.descriptor.size, cancellation: progress?.cancellation)
                }
              let desc = LayerDescription(name: l.digest.description, compression: l.compression, digest: l.digest, diffID: l.diffID)
              func unpack() throws(SnapshotError) -> StagedLayer {
                var s = try stage(source, desc, .import, progress: counter)
                // Written here, while other layers still unpack, unless the chain decides
                // its implicit directories: the commits in order are then short.
                if s.unpacked.implicitDirectories.isEmpty {
                  s.written = try write(s.tree)
                  // Its nodes are freed here, beside other layers' work, not in the commits.
                  s.tree = LayerTree(owner: (0, 0), now: Sys.now())
                }
                return s
              }
              // (stage's reader thread ends with it, and the syncfs threads the object store
              // starts, which may outlive it lowered, only wait on the disk; nothing here
              // starts a pool's worker)
              if i == largest { return .success(try unpack()) }
              return .success(try Threads.withLowerPriority { () throws(SnapshotError) in try unpack() })
            } catch {
              return .failure(SnapshotError(error))
            }
          }
        } catch {
          let failed = Promise<Result<StagedLayer, SnapshotError>>()
          failed.fulfill(.failure(SnapshotError(error)))
          running[i] = failed
        }
      }
      var staged: [Int: Result<StagedLayer, SnapshotError>] = [:]
      for (i, p) in running { staged[i] = p.wait() }
      // What a failure leaves uncommitted is not left in `l/`.
      var uncommitted = Set(staged.keys)
      defer {
        for i in uncommitted { if case .success(let s) = staged[i], let written = s.written { try? Tree.remove(written) } }
      }
      let failures = staged.values.compactMap { if case .failure(let e) = $0 { e } else { nil } }
      if let first = failures.first { throw first }
      // Every layer not present staged with its files written: one transaction for all.
      let ready = staged.compactMapValues { if case .success(let s) = $0, s.written != nil { s } else { nil } }
      // (`known` layers, unpacked for another chain, take the per-layer path.)
      if !ready.isEmpty && ready.count == missing.count && !layers.indices.contains(where: { !present[$0] && known[$0] }) {
        uncommitted = []  // commitChain's own: committed, or removed when it fails
        for i in layers.indices where present[i] { progress?.layerDone() }
        return try commitChain(chain, staged: ready)
      }
      // Commit in order; each layer's chainID snapshot on top of the previous one.
      var parent: String?
      for (i, l) in layers.enumerated() {
        if present[i] {
          parent = chain[i].description
          progress?.layerDone()
          continue
        }
        if case .success(let s) = staged[i] {
          uncommitted.remove(i)  // commitLayer's own: committed, or removed when it fails
          parent = try commitLayer(parent: parent, s)
        } else {
          parent = try commitKnown(parent: parent, diffID: l.diffID)
          progress?.layerDone()
        }
      }
      return parent!
    }
  }

  private func isDirectory(_ path: String) -> Bool {
    guard let st = try? Sys.lstat(path) else { return false }
    return st.st_mode & S_IFMT == S_IFDIR
  }

  /// The parent as given ("" for none), which must be a committed snapshot.
  private func parentChainID(_ parent: String, layer: String) throws(SnapshotError) -> String? {
    if parent.isEmpty { return nil }
    try Validate.key(parent, what: "parent")
    let row = try read { db in try Metadata.find(db, key: parent) }
    guard let row else { throw .notFound("layer \(layer): parent \(quoted(parent)) does not exist") }
    guard row.kind == .committed else { throw .invalid("layer \(layer): parent \(quoted(parent)) is not a committed snapshot") }
    return parent
  }

  /// The chainID of the layer if it needs no unpacking: its snapshot exists, or its
  /// layer does (then its snapshot is made now).
  private func existing(parent: String?, _ request: LayerImport) throws(SnapshotError) -> String? {
    var diffID = request.diffID
    if diffID == nil, let digest = request.digest {
      // (a layer's copy for a chain is keyed `<diffID>+<signature>`)
      diffID = try read { db in
        try Metadata.layer(db, digest: digest.description).flatMap { Digest(String($0.diffID.prefix { $0 != "+" })) }
      }
    }
    guard let diffID else { return nil }
    let chainID = Digest.chainID(parent: parent.flatMap(Digest.init), diffID: diffID).description
    if try read({ db in try Metadata.find(db, key: chainID) }) != nil { return chainID }
    guard try read({ db in try Metadata.layerVariant(db, diffID: diffID.description) }) != nil else { return nil }
    return try commitKnown(parent: parent, diffID: diffID)
  }

  /// Reads a layer: its objects into the store, its entries into memory.
  private func stage(
    _ source: ByteSource, _ layer: LayerDescription, _ origin: Instruments.Origin, progress: ProgressCounter?
  ) throws(SnapshotError) -> StagedLayer {
    let start = ContinuousClock.now
    let counted = CountingSource(source)
    do {
      let (unpacked, tree) = try Unpacker.read(counted, layer, objects: objects, progress: progress)
      metrics.layerUnpacked(origin, read: counted.count, files: unpacked.fileBytes, since: start)
      return StagedLayer(tree: tree, unpacked: unpacked)
    } catch {
      logger.warning("layer import failed", metadata: ["layer": "\(layer.name)", "error": "\(error)"])
      let failure = SnapshotError(error)
      metrics.layerFailed(origin, failure.kind)
      throw failure
    }
  }

  /// Writes a staged layer's files under `l/`: its EROFS image, or its directory of stubs
  /// where the kernel has no EROFS; durable when this returns, with the objects the read
  /// made (one `syncfs`, which the image's writing overlaps). Returns the path. (The sync is
  /// not in the commit's transaction: a busy disk would hold the store's writer that long.)
  private func write(_ tree: LayerTree) throws(SnapshotError) -> String {
    let staging = layout.layers + "/new-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    do {
      if store.images.available {
        objects.startSync()  // the layer's last objects go to disk while its image is made
        try store.images.write(tree, to: staging + LayerImages.suffix, sync: false)
        try objects.sync()  // the objects and the image: one file system, the root's
        return staging + LayerImages.suffix
      }
      try Sys.mkdir(staging, mode: 0o755)
      try tree.materialize(into: staging)
      try objects.sync()  // (`l/` and `o/` are one file system: the root's)
      return staging
    } catch {
      try? Tree.remove(staging)
      try? Tree.remove(staging + LayerImages.suffix)
      logger.warning("writing a layer's files failed", metadata: ["error": "\(error)"])
      throw SnapshotError(error)
    }
  }

  /// Commits a staged layer as the snapshot named by its chainID on top of `parent`: the
  /// layer row, its directory renamed into place, its object references and the snapshot,
  /// in one transaction. Returns the chainID. With `snapshots` false, only the layer is
  /// committed (no snapshot names it yet) and the result is "".
  /// Implicit parent directories take the metadata of `parent`'s (`chainLayer`).
  private func commitLayer(parent: String?, _ s: StagedLayer, snapshots: Bool = true) throws(SnapshotError) -> String {
    let layout = self.layout
    let images = store.images
    let diffID = s.unpacked.diffID
    let key: String
    do { key = try chainLayer(s.tree, diffID: diffID, implicit: s.unpacked.implicitDirectories, parent: parent) } catch {
      if let written = s.written { try? Tree.remove(written) }
      throw SnapshotError(error)
    }
    let staging: String
    if let written = s.written { staging = written } else { staging = try write(s.tree) }
    var installed: Int64?
    do {
      let top = try write { db -> String in
        let chainID = Digest.chainID(parent: parent.flatMap(Digest.init), diffID: diffID).description
        let (layerID, new) = try insertLayer(db, key: key, s, staging: staging)
        if new {
          installed = layerID
          try Sys.fsyncDirectory(layout.layers)
        }
        if snapshots, try Metadata.find(db, key: chainID) == nil {
          try insertLayerSnapshot(
            db, chainID: chainID, parent: parent, layer: layerID, size: s.unpacked.fileBytes, inodes: Int64(s.unpacked.entries))
        }
        return snapshots ? chainID : ""
      }
      // The files of a layer another import committed first.
      if installed == nil { jobs.submit(.removeTree(staging)) }
      // Objects made for a path the tar wrote again, if nothing else uses them.
      if !s.unpacked.dropped.isEmpty { scheduleCollect(sweep: true) }
      return top
    } catch {
      if let installed { try? images.remove(installed) }
      try? Tree.remove(staging)
      throw SnapshotError(error)
    }
  }

  /// In a write transaction: layer `key`'s row, its files (`staging`) put in place and its
  /// object references, unless another import committed the layer first. Returns its id and
  /// whether this call made it (the caller fsyncs `l/` before the transaction commits).
  private func insertLayer(_ db: Database, key: String, _ s: StagedLayer, staging: String) throws -> (id: Int64, new: Bool) {
    if let id = try Metadata.layer(db, diffID: key) { return (id, false) }
    let id = try Metadata.insertLayer(
      db, diffID: key, digest: s.unpacked.digest.description, size: s.unpacked.fileBytes, entries: s.unpacked.entries,
      implicitDirectories: s.unpacked.implicitDirectories, now: Clock.nowNanos())
    // Mounted (an image) before the row commits: no snapshot can name the layer before.
    if staging.hasSuffix(LayerImages.suffix) {
      try store.images.install(staged: staging, id: id)
    } else {
      try Sys.rename(staging, layout.layer(id))
    }
    try Metadata.addRefs(db, tree: Layout.tree(layer: id), s.unpacked.objects)
    return (id, true)
  }

  /// Commits an image's staged layers (`staged`, by index in `chain`; the others' snapshots
  /// exist) in one transaction, each as `commitLayer` commits it (layer row, files in
  /// place, references, the chainID's snapshot), with one fsync of `l/` and one of the
  /// database for them all. Only for layers whose files are written, durable (`write`: no
  /// implicit directories to decide on the chain). Returns the top chainID.
  private func commitChain(_ chain: [Digest], staged: [Int: StagedLayer]) throws(SnapshotError) -> String {
    let layout = self.layout
    let images = store.images
    var installed: [Int64] = []
    var leftover: [String] = []  // the files of layers another import committed first
    do {
      let top = try write { db -> String in
        var parent: String?
        for (i, link) in chain.enumerated() {
          let chainID = link.description
          if let s = staged[i], let staging = s.written {
            let (layerID, new) = try insertLayer(db, key: s.unpacked.diffID.description, s, staging: staging)
            if new { installed.append(layerID) } else { leftover.append(staging) }
            if try Metadata.find(db, key: chainID) == nil {
              try insertLayerSnapshot(
                db, chainID: chainID, parent: parent, layer: layerID, size: s.unpacked.fileBytes, inodes: Int64(s.unpacked.entries))
            }
          }
          parent = chainID
        }
        if !installed.isEmpty { try Sys.fsyncDirectory(layout.layers) }
        return parent!
      }
      for path in leftover { jobs.submit(.removeTree(path)) }
      if staged.values.contains(where: { !$0.unpacked.dropped.isEmpty }) { scheduleCollect(sweep: true) }
      logger.info("image layers committed in one transaction", metadata: ["top": "\(top)", "layers": "\(installed.count)"])
      return top
    } catch {
      for id in installed { try? images.remove(id) }
      for s in staged.values { if let written = s.written { try? Tree.remove(written) } }
      throw SnapshotError(error)
    }
  }

  /// The key (diff_id) of the layer `tree` as the chain on `parent` needs it, its
  /// implicit directories given the metadata of `parent`'s (see `ImplicitDirectories`):
  /// its diffID, or `<diffID>+<signature>` when they take any from `parent`'s layers.
  private func chainLayer(_ tree: LayerTree, diffID: Digest, implicit: [String], parent: String?) throws(SnapshotError) -> String {
    guard !implicit.isEmpty else { return diffID.description }
    let (fixes, key) = try implicitFixes(diffID: diffID, implicit, parent: parent)
    ImplicitDirectories.apply(fixes, in: tree)
    return key
  }

  /// What the implicit directories of layer `diffID` take on the chain on `parent`, and the
  /// key of the layer that has it.
  private func implicitFixes(diffID: Digest, _ implicit: [String], parent: String?) throws(SnapshotError) -> (
    [String: ImplicitDirectories.Metadata], String
  ) {
    let layout = self.layout
    let lowers = try read { db -> [String] in
      guard let parent, let row = try Metadata.find(db, key: parent) else { return [] }
      return try Metadata.parentChain(db, of: row.id).map { layout.files(id: $0.id, layer: $0.layer) }
    }
    do {
      let fixes = try ImplicitDirectories.resolve(implicit, lowers: lowers)
      return (fixes, ImplicitDirectories.signature(fixes).map { diffID.description + "+" + $0 } ?? diffID.description)
    } catch {
      throw SnapshotError(error)
    }
  }

  /// The snapshot of an already unpacked layer on top of `parent`. A layer whose implicit
  /// directories need other metadata on this chain than the store's copies have is copied
  /// first (its files are stubs: metadata only).
  private func commitKnown(parent: String?, diffID: Digest) throws(SnapshotError) -> String {
    let chainID = Digest.chainID(parent: parent.flatMap(Digest.init), diffID: diffID).description
    if try read({ db in try Metadata.find(db, key: chainID) }) != nil { return chainID }
    guard var known = try read({ db in try Metadata.layerVariant(db, diffID: diffID.description) }) else {
      throw .notFound("layer \(diffID) is not unpacked")
    }
    if !known.implicit.isEmpty {
      let key = try implicitFixes(diffID: diffID, known.implicit, parent: parent).1
      if let id = try read({ db in try Metadata.layer(db, diffID: key) }) {
        known.id = id
      } else {
        let (objects, size, entries) = try read { db in
          let (size, entries) = try Metadata.layerSize(db, known.id)
          return (try Metadata.refs(db, tree: Layout.tree(layer: known.id)), size, entries)
        }
        let tree: LayerTree
        do { tree = try LayerTree.load(from: layout.layer(known.id)) } catch { throw SnapshotError(error) }
        let unpacked = UnpackedLayer(
          digest: known.digest.flatMap(Digest.init) ?? diffID, diffID: diffID, entries: Int(entries), fileBytes: size,
          objects: objects, implicitDirectories: known.implicit)
        return try commitLayer(parent: parent, StagedLayer(tree: tree, unpacked: unpacked))
      }
    }
    try write { db in
      if try Metadata.find(db, key: chainID) != nil { return }
      let (size, entries) = try Metadata.layerSize(db, known.id)
      try insertLayerSnapshot(db, chainID: chainID, parent: parent, layer: known.id, size: size, inodes: entries)
    }
    return chainID
  }

  /// Whether the committed snapshot `chainID` on top of `parent` exists, or can be made
  /// (now) from a layer the store keeps: what containerd's unpacker asks with the
  /// `containerd.io/snapshot.ref` label before it unpacks a layer itself.
  func layerSnapshot(_ db: Database, _ chainID: String, parent: String) throws -> Bool {
    if let t = try Metadata.find(db, key: chainID) {
      return t.kind == .committed && (t.parentKey ?? "") == parent
    }
    guard let c = try Metadata.chain(db, chainID), (c.parent ?? "") == parent else { return false }
    let (size, entries) = try Metadata.layerSize(db, c.layer)
    try insertLayerSnapshot(db, chainID: chainID, parent: c.parent, layer: c.layer, size: size, inodes: entries)
    return true
  }

  private func insertLayerSnapshot(_ db: Database, chainID: String, parent: String?, layer: Int64, size: Int64, inodes: Int64) throws {
    var parentID: Int64?
    if let parent {
      guard let p = try Metadata.find(db, key: parent), p.kind == .committed else {
        throw SnapshotError.notFound("parent \(quoted(parent)) of layer \(chainID) does not exist")
      }
      parentID = p.id
    }
    let id = pool.reserveID()
    defer { pool.release(id) }
    try Metadata.insertSnapshot(db, id: id, key: chainID, parent: parentID, layer: layer, size: size, inodes: inodes, now: Clock.nowNanos())
    try Metadata.recordChain(db, chainID: chainID, parent: parent, layer: layer)
    // containerd's unpacker finds layers a snapshotter already has by this label.
    try Metadata.insertLabels(db, id: id, [Self.snapshotRef: chainID])
  }
}
