import Dispatch
import Logging
import SnapshotSys
import Synchronization

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

/// Work started on another thread now and waited for later.
final class Background: Sendable {
  private let done = DispatchSemaphore(value: 0)
  private let result = Mutex<SystemError?>(nil)

  static func run(_ body: @escaping @Sendable () throws(SystemError) -> Void) -> Background {
    let b = Background()
    DispatchQueue.global(qos: .userInitiated).async {
      do throws(SystemError) { try body() } catch { b.result.withLock { $0 = error } }
      b.done.signal()
    }
    return b
  }

  /// Waits for the work; its error, if any.
  func wait() -> SystemError? {
    done.wait()
    return result.withLock { $0 }
  }
}
