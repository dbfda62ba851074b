import Dispatch
import Logging
import SnapshotSys

/// Deletes directories of removed snapshots off the caller's path, one at a time.
/// A failure is logged; `Snapshotter.cleanup()` sweeps whatever is left.
final class Reaper: Sendable {
  private let queue = DispatchQueue(label: "snapshotd.reaper", qos: .utility)
  private let logger: Logger

  init(logger: Logger) { self.logger = logger }

  func remove(_ path: String) {
    queue.async { [logger] in
      do { try Tree.remove(path) } catch {
        logger.warning("failed to remove snapshot directory", metadata: ["path": "\(path)", "error": "\(error)"])
      }
    }
  }

  /// Returns once every removal queued before the call is done.
  func drain() { queue.sync {} }
}

