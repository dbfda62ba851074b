import Dispatch
import Logging
import SnapshotSys
import Synchronization

/// The store's one queue of work done off the callers' path, as typed jobs. A failure is
/// logged: `SnapshotService.cleanup()` sweeps directories left behind, and a later
/// collection finds what an earlier one left.
///
/// Three lanes, each running one job at a time in the order given:
/// - the pool's jobs (`fillPool`, `recyclePool`) ahead of the rest, since a Prepare may be
///   making its own directory for want of one;
/// - removals (`removeTree`), which the queue runs itself;
/// - the upkeep (`collect`), which may take seconds.
/// An upkeep job may wait for the other two lanes (a collection takes removed snapshots'
/// directories back and waits for their removal first, since their links to objects
/// count), never the reverse, and nothing waits for any lane while it holds a lock a job
/// takes (`Store`'s lock order).
///
/// The parts that own the work attach its handler (`attach`) before any job is queued.
final class BackgroundQueue: Sendable {
  enum Job: Sendable {
    /// Make the directory pool's next directories (`DirectoryPool.fill`).
    case fillPool
    /// Make the next pooled writable file systems (`WritablePool.fill`).
    case fillWritablePool
    /// Take removed snapshots' directories back into the pool, or delete them
    /// (`DirectoryPool.takeBack`).
    case recyclePool
    /// Delete a tree: a removed snapshot's directory, an import's leftover staging dir.
    case removeTree(String)
    /// Delete objects nothing references (`ObjectCollector.runCollect`).
    case collect
    /// Make layer directories images (`ObjectCollector.runToImages`).
    case toImages

    /// The lane that runs it, by name (as metrics name it).
    var lane: String {
      switch self {
      case .fillPool, .recyclePool, .fillWritablePool: "pool"
      case .removeTree: "removals"
      case .collect, .toImages: "upkeep"
      }
    }

    /// Its kind, as metrics name it.
    var name: String {
      switch self {
      case .fillPool: "fill_pool"
      case .fillWritablePool: "fill_writable_pool"
      case .recyclePool: "recycle_pool"
      case .removeTree: "remove_tree"
      case .collect: "collect"
      case .toImages: "to_images"
      }
    }
  }

  private let pool = DispatchQueue(label: "snapshotd.background.pool", qos: .userInitiated)
  private let removals = DispatchQueue(label: "snapshotd.background.removals", qos: .utility)
  private let upkeep = DispatchQueue(label: "snapshotd.background", qos: .utility)
  private let logger: Logger
  private let metrics: Instruments
  private let handler = Mutex<(@Sendable (Job) -> Void)?>(nil)

  init(metrics: Instruments = Instruments(), logger: Logger) {
    self.metrics = metrics
    self.logger = logger
  }

  /// Sets what runs the jobs other than `removeTree` (the queue's own).
  func attach(_ handler: @escaping @Sendable (Job) -> Void) { self.handler.withLock { $0 = handler } }

  /// Queues `job`, to run after `delay` seconds (at once when 0).
  func submit(_ job: Job, after delay: Double = 0) {
    let lane = self.lane(job)
    metrics.queued(job.lane, 1)
    if delay > 0 {
      lane.asyncAfter(deadline: .now() + delay) { [self] in perform(job) }
    } else {
      lane.async { [self] in perform(job) }
    }
  }

  /// Runs `job` on its lane now and waits for it (never from a job of the same lane).
  func run(_ job: Job) {
    metrics.queued(job.lane, 1)
    lane(job).sync { perform(job) }
  }

  /// Returns once every removal queued before the call is done. Not from a removal.
  func waitForRemovals() { removals.sync {} }

  /// Returns once every job queued before the call is done (delayed ones not yet queued
  /// aside). Not from a job.
  func drain() {
    pool.sync {}
    removals.sync {}
    upkeep.sync {}
  }

  private func lane(_ job: Job) -> DispatchQueue {
    switch job.lane {
    case "pool": pool
    case "removals": removals
    default: upkeep
    }
  }

  private func perform(_ job: Job) {
    let start = ContinuousClock.now
    defer {
      metrics.queued(job.lane, -1)
      metrics.jobDone(job.name, since: start)
    }
    if case .removeTree(let path) = job {
      guard Sys.exists(path) else { return }
      do {
        try Sys.detachMounts(under: path)  // a committed snapshot's image
        try Tree.remove(path)
      } catch {
        logger.warning("failed to remove a directory", metadata: ["path": "\(path)", "error": "\(error)"])
      }
      return
    }
    guard let handler = handler.withLock({ $0 }) else {
      logger.error("background job with no handler attached", metadata: ["job": "\(job)"])
      return
    }
    handler(job)
  }
}
