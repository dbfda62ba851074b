import Dispatch
import Logging
import SnapshotSys
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Snapshot directories made ahead of time, so that Prepare and View only write a row.
///
/// Each directory `s/<id>` (with `fs` and `work`) is made under a temporary name, renamed
/// into place and fsync'd, together with `s/`, before its id is handed out: a snapshot row
/// that commits always names a directory already on disk for good, and the call's only
/// flush is SQLite's. Ids are handed out once; a directory whose id never reaches a
/// committed row is an orphan that `Snapshotter.cleanup()` (and every start) removes.
///
/// A removed snapshot's directory that is still as the pool makes it (nothing written into
/// it) is renamed to a fresh id and joins the pool instead of being deleted: no inode is
/// freed and none allocated, which on ext4 is most of what making a directory costs after
/// many deletions.
final class DirectoryPool: Sendable {
  private let layout: Layout
  private let logger: Logger
  /// Where its work runs: `fillPool` and `recyclePool` jobs (see `fill`, `takeBack`), and
  /// `removeTree` for directories not reused (a big tree takes a while).
  private let jobs: BackgroundQueue
  private let state: Mutex<State>
  /// Held while directories are renamed back into the pool, and by `Snapshotter.cleanup()`
  /// while it lists and removes orphans: a directory is either renamed (and then reserved)
  /// or removed, never emptied by one while the other renames it.
  private let sweeping = Mutex(())
  /// How many ready directories the pool keeps.
  static let depth = 16

  private struct State {
    var nextID: Int64
    var ready: [Int64] = []
    /// Ids handed out or being made, whose directories cleanup must leave alone until the
    /// transaction that uses them is over.
    var reserved: Set<Int64> = []
    var filling = false
    /// Removed snapshots whose directories wait for ``recycle(_:)``, and the batch being
    /// taken back; both count as in use for cleanup.
    var recycling: [Int64] = []
    var batch: [Int64] = []
  }

  /// `start` makes the first directories, once `jobs` runs the pool's jobs.
  init(layout: Layout, firstID: Int64, jobs: BackgroundQueue, logger: Logger) {
    self.layout = layout
    self.jobs = jobs
    self.logger = logger
    state = Mutex(State(nextID: firstID))
  }

  func start() { refill() }

  /// The id of a ready, durable directory, or nil when none is ready (the caller then makes
  /// one itself with ``reserveID()``). Call inside the write transaction that inserts the
  /// row, and ``release(_:)`` the id once it is over.
  func take() -> Int64? {
    let id = state.withLock { s -> Int64? in s.ready.isEmpty ? nil : s.ready.removeFirst() }
    refill()
    return id
  }

  /// A fresh id whose directory the caller makes.
  func reserveID() -> Int64 {
    state.withLock { s in
      let id = s.nextID
      s.nextID += 1
      s.reserved.insert(id)
      return id
    }
  }

  /// The transaction using `id` is over (committed or rolled back).
  func release(_ id: Int64) { _ = state.withLock { $0.reserved.remove(id) } }

  /// Ids whose directories belong to the pool, to a transaction in progress, or to a
  /// removed snapshot the pool is about to take back.
  var inUse: Set<Int64> { state.withLock { $0.reserved.union($0.recycling).union($0.batch) } }

  /// Runs `body` while no directory is being renamed back into the pool.
  func excludingRecycling<T>(_ body: () throws -> T) rethrows -> T {
    try sweeping.withLock { _ in try body() }
  }

  /// Waits for a fill in progress, takes back the removed snapshots' directories that wait
  /// for their batch now, and waits for the deletion of those not reused. From a job on the
  /// upkeep lane (a collection) or outside the queue, never from the pool's or removals'
  /// lane, which it waits for.
  func waitIdle() {
    jobs.run(.recyclePool)
    jobs.waitForRemovals()
  }

  /// Directories are taken back in batches, one flush of `s/` for all of them: a batch waits
  /// this long for more removals.
  static let recycleDelay = 0.05

  /// Takes back the directory of the removed snapshot `old`, in the background: reused under
  /// a fresh id when it is as the pool makes it (``readyForReuse(_:)``), else deleted.
  func recycle(_ old: Int64) {
    let first = state.withLock { s -> Bool in
      s.recycling.append(old)
      return s.recycling.count == 1
    }
    if first { jobs.submit(.recyclePool, after: Self.recycleDelay) }
  }

  /// The batch of ``recycle(_:)``: the `recyclePool` job.
  func takeBack() {
    let batch = state.withLock { s -> [Int64] in
      s.batch = s.recycling
      s.recycling = []
      return s.batch
    }
    defer { state.withLock { $0.batch = [] } }
    guard !batch.isEmpty else { return }
    var reused: [Int64] = []
    let mounted = layout.mountedIDs()
    for old in batch {
      let dir = layout.dir(old)
      let renamed = sweeping.withLock { _ -> Bool in
        guard let mounted, !mounted.contains(old),
          state.withLock({ $0.ready.count + reused.count < 2 * Self.depth }), readyForReuse(old)
        else { return false }
        let id = reserveID()
        do {
          // What the removed snapshot wrote and deleted in fs is gone for good before
          // another snapshot gets the directory (file systems need not order metadata).
          try Sys.fsyncDirectory(layout.fs(old))
          try Sys.rename(dir, layout.dir(id))
          reused.append(id)
          return true
        } catch {
          logger.warning("cannot reuse a snapshot directory", metadata: ["path": "\(dir)", "error": "\(error)"])
          release(id)
          return false
        }
      }
      if renamed { continue }
      jobs.submit(.removeTree(dir))
    }
    guard !reused.isEmpty else { return }
    do {
      // The renames are durable before the ids are handed out, as made directories are.
      try Sys.fsyncDirectory(layout.snapshots)
      state.withLock { $0.ready += reused }
    } catch {
      logger.warning("cannot reuse snapshot directories", metadata: ["error": "\(error)"])
      for id in reused {
        try? Tree.remove(layout.dir(id))
        release(id)
      }
    }
  }

  /// Whether `s/<id>` is what `makeDirectory` makes for an active snapshot
  /// without parent (the `Layout` modes, ours, holding only `fs` (empty, no xattrs) and
  /// `work` (empty but for the empty `work` overlayfs leaves)); that `work/work` is removed.
  func readyForReuse(_ id: Int64) -> Bool {
    let uid = geteuid()
    let gid = getegid()
    func ours(_ path: String, mode: mode_t) throws(SystemError) -> Bool {
      let st = try Sys.lstat(path)
      return st.st_mode & S_IFMT == S_IFDIR && st.st_mode & 0o7777 == mode && st.st_uid == uid && st.st_gid == gid
    }
    do {
      guard try ours(layout.dir(id), mode: Layout.dirMode), try Sys.listDirectory(layout.dir(id)).sorted() == ["fs", "work"],
        try ours(layout.fs(id), mode: Layout.fsMode), try Sys.listDirectory(layout.fs(id)).isEmpty,
        try ours(layout.work(id), mode: Layout.workMode)
      else { return false }
      let fd = try At.openDirectory(layout.fs(id))
      defer { At.close(fd) }
      guard try At.xattrs(fd, layout.fs(id)).isEmpty else { return false }
      switch try Sys.listDirectory(layout.work(id)) {
      case []:
        return true
      case ["work"]:
        let work = try At.openDirectory(layout.work(id))
        defer { At.close(work) }
        try At.unlink(work, "work", directory: true)  // fails unless empty
        return true
      default:
        return false
      }
    } catch {
      return false
    }
  }

  private func refill() {
    let start = state.withLock { s -> Bool in
      if s.filling || s.ready.count >= Self.depth / 2 { return false }
      s.filling = true
      return true
    }
    if start { jobs.submit(.fillPool) }
  }

  /// The `fillPool` job: makes directories until the pool holds `depth`.
  func fill() {
    var made: [Int64] = []
    let want = max(0, Self.depth - state.withLock { $0.ready.count })
    do {
      for _ in 0..<want {
        let id = reserveID()
        try Self.makeDirectory(layout, id: id, kind: .active, parent: nil)
        try Sys.fsyncDirectory(layout.dir(id))
        made.append(id)
      }
      try Sys.fsyncDirectory(layout.snapshots)
    } catch {
      logger.warning("cannot make snapshot directories ahead of time", metadata: ["error": "\(error)"])
      for id in made { try? Tree.remove(layout.dir(id)) }
      made = []
    }
    state.withLock { s in
      s.ready += made
      s.filling = false
    }
  }

  /// Makes `s/<id>` with `fs` (and `work` for an active snapshot) under a temporary name and
  /// renames it into place; the caller makes it durable. `fs` gets the owner of the
  /// parent's `fs`, as containerd's overlay snapshotter does.
  static func makeDirectory(_ layout: Layout, id: Int64, kind: SnapshotKind, parent: String?) throws(SystemError) {
    let staging = layout.staging(id)
    let final = layout.dir(id)
    do {
      if Sys.exists(final) { try Tree.remove(final) }  // an orphan of a rolled back id
      if Sys.exists(staging) { try Tree.remove(staging) }
      // Modes are set explicitly: the process umask is not ours to rely on.
      try Sys.mkdir(staging, mode: Layout.dirMode)
      try Sys.chmod(staging, mode: Layout.dirMode)
      try Sys.mkdir(staging + "/fs", mode: Layout.fsMode)
      try Sys.chmod(staging + "/fs", mode: Layout.fsMode)
      if kind == .active {
        try Sys.mkdir(staging + "/work", mode: Layout.workMode)
        try Sys.chmod(staging + "/work", mode: Layout.workMode)
      }
      if let parent {
        let st = try Sys.lstat(parent)
        try Sys.lchown(staging + "/fs", uid: st.st_uid, gid: st.st_gid)
      }
      try Sys.rename(staging, final)
    } catch {
      try? Tree.remove(staging)
      try? Tree.remove(final)
      throw error
    }
  }
}
