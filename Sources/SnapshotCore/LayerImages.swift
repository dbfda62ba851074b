import Logging
import SnapshotSys
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// How new layers are stored (`snapshotd --layer-format`): `auto` is `erofs` where the
/// kernel mounts EROFS image files, else `directory`. Layers stored either way stay usable.
public enum LayerFormat: String, Sendable, CaseIterable {
  case auto
  case erofs
  case directory
}

/// Layers as EROFS images: each layer's metadata is one file, `l/<id>.erofs`
/// (`ErofsImage`), mounted read-only (file-backed, no loop device) on `l/<id>`, where
/// mounts name the layer as they name a layer directory. One mount per layer, shared by
/// every snapshot and mount that uses it: a layer costs the host one inode and one file
/// instead of one per entry, is written with one fsync (an import's: covered by the store's
/// `syncfs` instead), and goes with one unlink.
///
/// Where the kernel has no file-backed EROFS (`available` false), layers are directories of
/// stubs.
///
/// The mounts live as long as their layer: made when it commits (before any snapshot can
/// name it), again at start for any missing (after a reboot or a crash), detached when gc
/// deletes the layer. `check` finds layers whose mount is missing or whose image is, and
/// images and mounts of no layer.
struct LayerImages: Sendable {
  let layout: Layout
  let available: Bool
  /// Whether images may have compact inodes (`ErofsImage`: Linux 6.15+), else extended only.
  let compact: Bool

  static let suffix = ".erofs"
  /// Committed snapshots with fewer entries stay directories (their files stubs, as dedup
  /// makes them): an image saves them little, and would cost a small Commit an fsync and a
  /// mount (`scripts/bench-api` commits empty snapshots).
  static let minimumEntries: Int64 = 64

  /// Whether a committed snapshot of `inodes` entries (its usage) becomes an image.
  func wants(inodes: Int64) -> Bool { available && inodes >= Self.minimumEntries }

  init(layout: Layout, available: Bool, compact: Bool = true) {
    self.layout = layout
    self.available = available
    self.compact = compact
  }

  /// How images can be mounted here: file-backed EROFS (Linux 6.12+ with
  /// CONFIG_EROFS_FS_BACKED_BY_FILE) with compact inodes (6.15+: their own mtimes read
  /// back), or extended ones only, or not at all. Tried with an image of two files of
  /// different mtimes.
  static func probe(_ layout: Layout) -> (available: Bool, compact: Bool, reason: String) {
    let dir = layout.temporary + "/" + Sys.temporaryName("erofs-probe")
    defer {
      _ = try? Sys.unmount(dir + "/m", flags: Int32(MNT_DETACH))
      try? Tree.remove(dir)
    }
    var failure = ""
    for compact in [true, false] {
      do throws(any Error) {
        try Sys.mkdirAll(dir + "/m", mode: 0o755)
        let image = dir + "/probe\(compact)" + suffix
        let tree = LayerTree(owner: (0, 0), now: Sys.now())
        let mtimes = [1_000_000_000, 1_000_086_400]
        for (i, seconds) in mtimes.enumerated() {
          let mtime = timespec(tv_sec: seconds, tv_nsec: 0)
          let file = try tree.node(S_IFREG, FileMeta(mode: 0o644, uid: 0, gid: 0, mtime: mtime, atime: mtime, xattrs: []))
          try tree.place(file, Array("f\(i)".utf8), in: tree.root) { _ in }
        }
        try write(tree, to: image, compact: compact)
        try Sys.mount(source: image, target: dir + "/m", type: "erofs", flags: UInt(MS_RDONLY), data: nil)
        defer { _ = try? Sys.unmount(dir + "/m", flags: Int32(MNT_DETACH)) }
        let read = try mtimes.indices.map { i throws(SystemError) in try Sys.lstat(dir + "/m/f\(i)").st_mtim.tv_sec }
        guard read == mtimes else {
          failure = "mtimes \(mtimes) read back as \(read)"
          continue
        }
        return (true, compact, "file-backed EROFS mounts work" + (compact ? "" : " (extended inodes only: \(failure))"))
      } catch {
        failure = "\(error)"
      }
    }
    return (false, false, "file-backed EROFS cannot be mounted (\(failure)): layers are directories of stubs")
  }

  /// The store's images with compact inodes (`ErofsImage.compactMark`): their mtimes read
  /// wrong on a kernel whose probe says `compact` false (before 6.15).
  static func compactImages(_ layout: Layout) -> [String] {
    var images = ((try? Sys.listDirectory(layout.layers)) ?? []).filter { $0.hasSuffix(suffix) }.map { layout.layers + "/" + $0 }
    for name in (try? Sys.listDirectory(layout.snapshots)) ?? [] where Sys.exists(layout.snapshots + "/" + name + "/fs" + suffix) {
      images.append(layout.snapshots + "/" + name + "/fs" + suffix)
    }
    return images.filter { (try? ErofsImage.hasCompactInodes($0)) == true }
  }

  func image(_ id: Int64) -> String { layout.layer(id) + Self.suffix }

  /// Writes `tree`'s image to `path` and makes it durable (one fsync), unless `sync` is
  /// false: then the caller's `syncfs` of the store covers it (one journal commit less on
  /// an import's critical path).
  func write(_ tree: LayerTree, to path: String, sync: Bool = true) throws {
    try Self.write(tree, to: path, compact: compact, sync: sync)
  }

  private static func write(_ tree: LayerTree, to path: String, compact: Bool, sync: Bool = true) throws {
    let fd = try At.open(AT_FDCWD, path, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
    defer { At.close(fd) }
    try ErofsImage.write(tree, to: fd, what: path, buildTime: Sys.now(), compact: compact)
    if sync { try At.fsync(fd, path) }
  }

  /// Puts a staged image in place as layer `id`'s and mounts it; the caller fsyncs `l/`.
  func install(staged: String, id: Int64) throws(SystemError) {
    try Sys.rename(staged, image(id))
    try Sys.mkdirIfMissing(layout.layer(id), mode: 0o755)
    try mount(id)
  }

  /// Mounts layer `id`'s image on its directory.
  func mount(_ id: Int64) throws(SystemError) {
    try Sys.mount(source: image(id), target: layout.layer(id), type: "erofs", flags: UInt(MS_RDONLY | MS_NODEV | MS_NOSUID), data: nil)
  }

  /// Removes layer `id`'s files, image or directory: the mount detached first (a mount
  /// still using it keeps it until it goes).
  func remove(_ id: Int64) throws(SystemError) {
    let dir = layout.layer(id)
    if Sys.exists(image(id)) {
      do { try Sys.unmount(dir, flags: Int32(MNT_DETACH)) } catch  where error.errno == EINVAL || error.errno == ENOENT {}
      try? Sys.unlink(image(id))
    }
    try Tree.remove(dir)
  }

  /// Removes an entry of `l/` that belongs to no layer (a crash's leftover), detaching a
  /// mount on it first.
  func removeOrphan(_ name: String) throws(SystemError) {
    let path = layout.layers + "/" + name
    do { try Sys.unmount(path, flags: Int32(MNT_DETACH)) } catch  where error.errno == EINVAL || error.errno == ENOENT {}
    try Tree.remove(path)
  }

  // MARK: - Directories made images

  /// Makes the layer directory `dir` (no mount may be using it) an image mounted on it:
  /// `dir` is read into memory (`LayerTree.load`, which with `objects` gives files with
  /// data to the object store), the image written beside it (`dir.erofs`), `record` called
  /// with what was loaded (references to record: the image names those objects), then the
  /// image put in place and mounted over the directory (`finish`). A failure before the image is in place leaves the
  /// directory as it was (adopted objects disowned).
  func convert(_ dir: String, objects: ObjectStore?, record: (LayerTree.Loaded) throws -> Void) throws {
    let image = dir + Self.suffix
    let staged = dir + Self.suffix + ".new"
    var loaded = LayerTree.Loaded()
    do {
      let tree = try LayerTree.load(from: dir, objects: objects, loaded: &loaded)
      try? Sys.unlink(staged)
      try write(tree, to: staged)
      if !loaded.adopted.isEmpty { try objects?.sync() }
      try record(loaded)
    } catch {
      for (key, path) in loaded.adopted { objects?.disown(key, path: path) }
      try? Sys.unlink(staged)
      throw error
    }
    try Sys.rename(staged, image)
    try finish(dir, image: image)
  }

  /// Mounts `image` on `dir` if it is not: after `writeImage`, or at start when a reboot or
  /// a crash left it unmounted. The image is mounted over what `dir` holds (the path shows
  /// the old tree until the mount is made, the image after: never an empty or missing
  /// directory), and the old tree, now hidden, is removed through a descriptor opened before.
  /// No mount may be using the old tree (the callers' rule).
  func finish(_ dir: String, image: String, mounted: Set<String>? = nil) throws {
    let points = try mounted ?? Set(MountInfo.current().map(\.mountPoint))
    guard !points.contains(dir) else { return }
    try Sys.mkdirIfMissing(dir, mode: 0o755)
    let old = try At.openDirectory(dir)
    defer { At.close(old) }
    try Sys.mount(source: image, target: dir, type: "erofs", flags: UInt(MS_RDONLY | MS_NODEV | MS_NOSUID), data: nil)
    try Tree.removeContents(old, makeAccessible: true) { call, name, errno in SystemError(call, dir + "/" + name, errno: errno) }
  }

  /// Layers (by id) whose image is not mounted on their directory, of `ids`.
  func unmounted(_ ids: [Int64]) throws(SystemError) -> [Int64] {
    let points = Set(try MountInfo.current().filter { $0.fsType == "erofs" }.map(\.mountPoint))
    return ids.filter { Sys.exists(image($0)) && !points.contains(layout.layer($0)) }
  }

  /// Mounts every image of `ids` not mounted, and of committed snapshots `snapshots`: at
  /// start, after a reboot or a crash.
  func mountMissing(_ ids: [Int64], snapshots: [Int64], logger: Logger) throws {
    let points = Set(try MountInfo.current().map(\.mountPoint))
    let all = ids.map { (layout.layer($0), image($0)) } + snapshots.map { (layout.fs($0), layout.fs($0) + Self.suffix) }
    for (dir, image) in all where Sys.exists(image) && !points.contains(dir) {
      try finish(dir, image: image, mounted: points)
      logger.info("mounted a layer image", metadata: ["path": "\(dir)"])
    }
  }
}
