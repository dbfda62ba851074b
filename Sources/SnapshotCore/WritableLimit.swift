import Logging
import SnapshotSys
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Size-limited writable layers. An active snapshot with a limit keeps its upper and work
/// dirs in an ext4 file system of that size of its own: a sparse image file
/// (`Layout.writableImage`) mounted through a loop device at `Layout.writable` (`rw/fs`
/// and `rw/work`). Writes past the limit fail with ENOSPC in that container alone, through
/// copy-up, appends, new files, directories and xattrs alike; other snapshots and the host
/// file system see nothing. Usage is the file system's counters (statvfs), not a walk.
///
/// Why an image: this kernel has no ext4 project quota (no QFMT_V2) and no XFS quota; a
/// sized file system per writable layer works wherever loop devices do, as containerd's
/// EROFS and blockfile snapshotters do it. The image is formatted by mkfs.ext4 (e2fsprogs):
/// writing ext4 ourselves would not be worth it.
///
/// Asked for by the label overlaybd's snapshotter reads (`containerd.io/snapshot/disk_quota`,
/// a size like `10G` or bytes; 0 for none), or by default (`snapshotd --writable-size`).
public enum WritableSize {
  /// Bytes from a size as snapshotd's flag and the label take it (`WritableLimit.parse`).
  public static func parse(_ text: String) -> Int64? { WritableLimit.parse(text) }
  public static let minimum = WritableLimit.minimum
  public static let maximum = WritableLimit.maximum
}

enum WritableLimit {
  static let label = "containerd.io/snapshot/disk_quota"
  /// The smallest limit: ext4's own metadata (its journal, inode tables) needs a few MiB.
  static let minimum: Int64 = 16 << 20
  /// The largest: an image is one file, and ext4 (4 KiB blocks) holds files up to 16 TiB.
  static let maximum: Int64 = 15 << 40

  /// Bytes from `10G`, `512Mi`, `1048576` (K, M, G, T with or without `i` or `B`: powers of 1024).
  static func parse(_ text: String) -> Int64? {
    var digits = Substring(text.trimmingPrefix(while: { $0 == " " }))
    var unit: Int64 = 1
    for (suffixes, size) in [
      (["Ti", "TB", "T"], Int64(1) << 40), (["Gi", "GB", "G"], 1 << 30), (["Mi", "MB", "M"], 1 << 20), (["Ki", "KB", "K"], 1 << 10),
    ] {
      if let s = suffixes.first(where: { digits.uppercased().hasSuffix($0.uppercased()) }) {
        digits = digits.dropLast(s.count)
        unit = size
        break
      }
    }
    guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let n = Int64(digits) else { return nil }
    let (bytes, overflow) = n.multipliedReportingOverflow(by: unit)
    return overflow ? nil : bytes
  }

  /// The limit of a snapshot prepared with `labels` (0: none).
  static func wanted(_ labels: [String: String], byDefault: Int64) throws(SnapshotError) -> Int64 {
    guard let value = labels[label] else { return byDefault }
    guard let bytes = parse(value) else { throw .invalid("label \(label)=\(quoted(value)): expected a size like 10G or a number of bytes") }
    guard bytes == 0 || bytes >= minimum else { throw .invalid("label \(label)=\(quoted(value)): the smallest limit is 16M") }
    guard bytes <= maximum else { throw .invalid("label \(label)=\(quoted(value)): the largest limit is 15T") }
    return bytes
  }

  /// The image's size for a limit: the limit, plus room for ext4's own metadata (its
  /// journal, 4 MiB in a small file system and up to 1 GiB in a big one, inode tables, 1.6%
  /// at its default ratio, and bitmaps), so that the container's files get at least the
  /// limit: 1/16 of it plus 8 MiB, at most 1 GiB + 1/32. Blocks never written take no space.
  static func imageSize(_ limit: Int64) -> Int64 {
    limit + min(limit / 16, (1 << 30) + limit / 32) + (8 << 20)
  }

  /// What an empty file system of the image uses: subtracted from statvfs for the usage.
  struct Base: Sendable {
    var bytes: Int64
    var inodes: Int64
  }

  /// Makes the directory of a limited active snapshot `id` (`s/<id>` with `fs` and `work`,
  /// as `DirectoryPool` makes them) with its file system of `size` bytes mounted on `rw`,
  /// durable; removed again if any step fails. Returns what the empty file system uses.
  /// `rw/fs` is this process's: the caller gives it the parent's owner.
  static func makeSnapshotDirectory(_ layout: Layout, _ id: Int64, size: Int64) throws(SnapshotError) -> Base {
    do {
      try DirectoryPool.makeDirectory(layout, id: id, kind: .active, parent: nil)
      let base = try make(image: layout.writableImage(id), at: layout.writable(id), size: size)
      try Sys.fsyncDirectory(layout.dir(id))
      try Sys.fsyncDirectory(layout.snapshots)
      return base
    } catch {
      try? release(layout, id)
      try? Tree.remove(layout.dir(id))
      throw SnapshotError(error)
    }
  }

  /// Makes the image `image` of `size` bytes, formats it, mounts it on `mountPoint` and makes
  /// `fs` and `work` in it. Returns what the empty file system uses.
  static func make(image: String, at mountPoint: String, size: Int64) throws(SnapshotError) -> Base {
    do {
      guard let mkfs = Sys.findProgram("mkfs.ext4") ?? ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].first(where: Sys.exists) else {
        throw SnapshotError(.unavailable, "mkfs.ext4 is not installed (e2fsprogs): size-limited writable layers need it")
      }
      try? Sys.unlink(image)
      let fd = try At.open(AT_FDCWD, image, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
      defer { At.close(fd) }
      try At.truncate(fd, image, size: imageSize(size))
      // Lazy inode tables and journal: a sparse image formats in tens of milliseconds. No
      // blocks reserved for root: a container's root would get more than its limit.
      let status = try Sys.run(mkfs, ["-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", image])
      guard status == 0 else { throw SnapshotError(.internal, "mkfs.ext4 of \(image) exited with status \(status)") }
      try Sys.mkdirIfMissing(mountPoint, mode: 0o700)
      try Sys.mountImage(image, at: mountPoint, type: "ext4")
      try Tree.remove(mountPoint + "/lost+found")
      // Modes set explicitly: the process umask is not ours to rely on (DirectoryPool).
      try Sys.mkdir(mountPoint + "/fs", mode: Layout.fsMode)
      try Sys.chmod(mountPoint + "/fs", mode: Layout.fsMode)
      try Sys.mkdir(mountPoint + "/work", mode: Layout.workMode)
      try Sys.chmod(mountPoint + "/work", mode: Layout.workMode)
      try Sys.fsyncDirectory(mountPoint)
      let use = try Sys.fileSystemUse(mountPoint)
      return Base(bytes: use.bytes, inodes: use.inodes)
    } catch let e as SnapshotError {
      throw e
    } catch {
      throw SnapshotError(.internal, "cannot make the size-limited writable layer \(image): \(error)")
    }
  }

  /// Mounts snapshot `id`'s image again (after a restart or a reboot) unless it is mounted.
  static func attach(_ layout: Layout, _ id: Int64, mounted: Set<String>) throws(SnapshotError) {
    let mountPoint = layout.writable(id)
    guard !mounted.contains(mountPoint) else { return }
    do {
      try Sys.mkdirIfMissing(mountPoint, mode: 0o700)
      try Sys.mountImage(layout.writableImage(id), at: mountPoint, type: "ext4")
    } catch {
      throw SnapshotError(.internal, "cannot mount the writable layer of snapshot \(id) (\(layout.writableImage(id))): \(error)")
    }
  }

  /// The usage of snapshot `id`'s writable layer from its file system's counters.
  static func usage(_ layout: Layout, _ id: Int64, base: Base) throws(SnapshotError) -> SnapshotUsage {
    let use = try mountedUse(layout, id)
    return SnapshotUsage(size: max(0, use.bytes - base.bytes), inodes: max(0, use.inodes - base.inodes))
  }

  /// The counters of snapshot `id`'s own file system; an error when it is not mounted
  /// (statvfs would give the store's file system).
  static func mountedUse(_ layout: Layout, _ id: Int64) throws(SnapshotError) -> (bytes: Int64, inodes: Int64, available: Int64) {
    do {
      guard try Sys.lstat(layout.writable(id)).st_dev != Sys.lstat(layout.dir(id)).st_dev else {
        throw SnapshotError(
          .unavailable, "the file system of size-limited snapshot \(id) is not mounted (snapctl check --repair mounts it)")
      }
      return try Sys.fileSystemUse(layout.writable(id))
    } catch let e as SnapshotError {
      throw e
    } catch {
      throw SnapshotError(error)
    }
  }

  /// Moves snapshot `id`'s files from its image to `fs` on the store's file system (for its
  /// commit), then detaches and deletes the image. Safe to repeat after a crash.
  static func moveOut(_ layout: Layout, _ id: Int64) throws(SystemError) {
    let copy = layout.dir(id) + "/fs.copy"
    try Tree.remove(copy)
    try Tree.copy(from: layout.writable(id) + "/fs", to: copy)
    // `fs` is there at every moment: the copy and the old (empty) `fs` trade places.
    let dir = try At.openDirectory(layout.dir(id))
    defer { At.close(dir) }
    try At.exchange(dir, "fs.copy", dir, "fs")
    try Tree.remove(copy)
    // What the commit acknowledges is on disk before its row says committed (the image,
    // which held it, goes after).
    try At.syncfs(dir, layout.dir(id))
  }

  /// Detaches and deletes snapshot `id`'s image (committed, or gone).
  static func release(_ layout: Layout, _ id: Int64) throws(SystemError) {
    try Sys.detachMounts(under: layout.writable(id))
    try Tree.remove(layout.writable(id))
    try? Sys.unlink(layout.writableImage(id))
  }
}

/// Snapshot directories with a file system of the daemon's default limit made ahead of time
/// (`--writable-size`): `s/<id>` with its `rw` formatted and mounted, its id reserved in the
/// directory pool, so a Prepare with that limit takes one and writes only its row, as an
/// unlimited Prepare takes a pooled directory. A directory no row ever names is an orphan
/// that cleanup and every start remove (its mount detached first).
final class WritablePool: Sendable {
  let layout: Layout
  let size: Int64
  private let directories: DirectoryPool
  private let jobs: BackgroundQueue
  private let logger: Logger
  private let ready = Mutex<[(id: Int64, base: WritableLimit.Base)]>([])
  /// How many ready directories the pool keeps: each costs about 4.4 MiB of disk and a
  /// mount (docs/benchmarks.md).
  static let depth = 4

  init(layout: Layout, size: Int64, directories: DirectoryPool, jobs: BackgroundQueue, logger: Logger) {
    self.layout = layout
    self.size = size
    self.directories = directories
    self.jobs = jobs
    self.logger = logger
  }

  /// A ready directory's id (reserved: release it in the directory pool once the
  /// transaction using it is over) and what its empty file system uses; nil when none is
  /// ready.
  func take() -> (id: Int64, base: WritableLimit.Base)? {
    defer { jobs.submit(.fillWritablePool) }
    return ready.withLock { $0.isEmpty ? nil : $0.removeFirst() }
  }

  /// Takes back a directory `take` gave that no row came to name (its transaction failed).
  func giveBack(id: Int64, base: WritableLimit.Base) { ready.withLock { $0.append((id, base)) } }

  /// The `fillWritablePool` job: makes directories until the pool holds `depth`.
  func fill() {
    while ready.withLock({ $0.count }) < Self.depth {
      let id = directories.reserveID()
      do {
        let base = try WritableLimit.makeSnapshotDirectory(layout, id, size: size)
        ready.withLock { $0.append((id, base)) }
      } catch {
        logger.warning("cannot make a size-limited snapshot directory ahead of time", metadata: ["error": "\(error)"])
        directories.release(id)
        return
      }
    }
  }
}
