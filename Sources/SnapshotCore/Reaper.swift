import Dispatch
import Logging
import SnapshotSys

/// Work done off the callers' path, one task at a time on a utility queue: deleting
/// directories of removed snapshots, deduplicating committed snapshots, collecting
/// objects nothing references. A failure is logged; `Snapshotter.cleanup()` sweeps
/// directories left behind, and a restart retries deduplication.
final class Reaper: Sendable {
  private let queue = DispatchQueue(label: "snapshotd.background", qos: .utility)
  private let logger: Logger

  init(logger: Logger) { self.logger = logger }

  func remove(_ path: String) {
    queue.async { [logger] in
      do { try Tree.remove(path) } catch {
        logger.warning("failed to remove snapshot directory", metadata: ["path": "\(path)", "error": "\(error)"])
      }
    }
  }

  /// Runs `body` on the queue after `delay` seconds (at once when 0).
  func run(after delay: Double = 0, _ body: @escaping @Sendable () -> Void) {
    if delay > 0 {
      queue.asyncAfter(deadline: .now() + delay, execute: body)
    } else {
      queue.async(execute: body)
    }
  }

  /// Runs `body` on the queue and waits for it.
  func sync(_ body: () -> Void) { queue.sync(execute: body) }

  /// Returns once every task queued before the call is done.
  func drain() { queue.sync {} }
}
