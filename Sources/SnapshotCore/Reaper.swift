import Logging
import SnapshotSys

/// Deletes directories of removed snapshots off the caller's path, one at a time.
/// A failure is logged; `Snapshotter.cleanup()` sweeps whatever is left.
final class Reaper: Sendable {
  private let continuation: AsyncStream<Job>.Continuation

  private enum Job: Sendable {
    case remove(String)
    case drain(CheckedContinuation<Void, Never>)
  }

  init(logger: Logger) {
    let (stream, continuation) = AsyncStream.makeStream(of: Job.self)
    self.continuation = continuation
    Task.detached(priority: .utility) {
      for await job in stream {
        switch job {
        case .remove(let path):
          do { try Tree.remove(path) } catch {
            logger.warning("failed to remove snapshot directory", metadata: ["path": "\(path)", "error": "\(error)"])
          }
        case .drain(let c):
          c.resume()
        }
      }
    }
  }

  deinit { continuation.finish() }

  func remove(_ path: String) { continuation.yield(.remove(path)) }

  /// Returns once every removal queued before the call is done.
  func drain() async {
    await withCheckedContinuation { c in continuation.yield(.drain(c)) }
  }
}
