import CFuse
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Tells the kernel to forget names (FUSE_NOTIFY_INVAL_ENTRY) and attributes
/// (FUSE_NOTIFY_INVAL_INODE), from a thread of its own: the
/// kernel takes the directory's lock to do it, which a process waiting for a reply of ours may
/// hold, so a worker thread (perhaps the only one) must not wait for it.
final class Notifier: @unchecked Sendable {
  private let session: OpaquePointer
  private enum Item {
    case entry(parent: fuse_ino_t, name: String)
    case attributes(fuse_ino_t)
  }
  private struct State {
    var queue: [Item] = []
    var stopping = false
    var finished = false
  }
  private let state = Condition(State())
  private var thread: Threads.Handle?

  init(session: OpaquePointer) {
    self.session = session
    // The thread holds the notifier until it ends.
    thread = try? Threads.start { self.run() }
  }

  /// Queues: the kernel drops its entry for `name` in the directory `parent` (a kernel node id).
  func forget(parent: fuse_ino_t, name: String) {
    state.update { $0.queue.append(.entry(parent: parent, name: name)) }
  }

  /// Queues: the kernel drops the attributes it caches of the inode `ino`.
  func forgetAttributes(_ ino: fuse_ino_t) {
    state.update { $0.queue.append(.attributes(ino)) }
  }

  /// Ends the thread, dropping what is queued; after the unmount, before the session goes
  /// away. Answers false if the thread is still inside a notification after two seconds (the
  /// kernel waits for a directory lock that a process waiting for a reply holds): then the
  /// session must not be destroyed, and the process's exit ends the connection.
  func stop() -> Bool {
    state.update { s in
      s.stopping = true
      s.queue.removeAll()
    }
    let done = state.wait(until: { $0.finished }, seconds: 2) { _ in true } ?? false
    if done { thread?.join() } else { thread?.detach() }
    return done
  }

  private func run() {
    while let batch = state.wait(
      until: { !$0.queue.isEmpty || $0.stopping },
      then: { s -> [Item]? in
        if s.stopping { return nil }
        defer { s.queue.removeAll() }
        return s.queue
      })
    {
      for item in batch {
        // ENOENT: the kernel no longer has the name. Nothing else to do about other errors.
        switch item {
        case .entry(let parent, let name): _ = fuse_lowlevel_notify_inval_entry(session, parent, name, name.utf8.count)
        case .attributes(let ino): _ = fuse_lowlevel_notify_inval_inode(session, ino, -1, 0)  // attributes only
        }
      }
    }
    state.update { $0.finished = true }
  }
}
