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
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  private enum Item {
    case entry(parent: fuse_ino_t, name: String)
    case attributes(fuse_ino_t)
  }
  private var queue: [Item] = []
  private var stopping = false
  private var finished = false
  private var thread: Threads.Handle?

  init(session: OpaquePointer) {
    self.session = session
    pthread_mutex_init(mutex, nil)
    pthread_cond_init(wake, nil)
    // The thread holds the notifier until it ends.
    thread = try? Threads.start { self.run() }
  }

  deinit {
    pthread_cond_destroy(wake)
    pthread_mutex_destroy(mutex)
    wake.deallocate()
    mutex.deallocate()
  }

  /// Queues: the kernel drops its entry for `name` in the directory `parent` (a kernel node id).
  func forget(parent: fuse_ino_t, name: String) {
    pthread_mutex_lock(mutex)
    queue.append(.entry(parent: parent, name: name))
    pthread_cond_signal(wake)
    pthread_mutex_unlock(mutex)
  }

  /// Queues: the kernel drops the attributes it caches of the inode `ino`.
  func forgetAttributes(_ ino: fuse_ino_t) {
    pthread_mutex_lock(mutex)
    queue.append(.attributes(ino))
    pthread_cond_signal(wake)
    pthread_mutex_unlock(mutex)
  }

  /// Ends the thread, dropping what is queued; after the unmount, before the session goes
  /// away. Answers false if the thread is still inside a notification after two seconds (the
  /// kernel waits for a directory lock that a process waiting for a reply holds): then the
  /// session must not be destroyed, and the process's exit ends the connection.
  func stop() -> Bool {
    pthread_mutex_lock(mutex)
    stopping = true
    queue.removeAll()
    pthread_cond_broadcast(wake)
    var deadline = timespec()
    clock_gettime(CLOCK_REALTIME, &deadline)
    deadline.tv_sec += 2
    while !finished && pthread_cond_timedwait(wake, mutex, &deadline) == 0 {}
    let done = finished
    pthread_mutex_unlock(mutex)
    if done { thread?.join() } else { thread?.detach() }
    return done
  }

  private func run() {
    pthread_mutex_lock(mutex)
    while true {
      while queue.isEmpty && !stopping { pthread_cond_wait(wake, mutex) }
      if stopping { break }
      let batch = queue
      queue.removeAll()
      pthread_mutex_unlock(mutex)
      for item in batch {
        // ENOENT: the kernel no longer has the name. Nothing else to do about other errors.
        switch item {
        case .entry(let parent, let name): _ = fuse_lowlevel_notify_inval_entry(session, parent, name, name.utf8.count)
        case .attributes(let ino): _ = fuse_lowlevel_notify_inval_inode(session, ino, -1, 0)  // attributes only
        }
      }
      pthread_mutex_lock(mutex)
    }
    finished = true
    pthread_cond_broadcast(wake)
    pthread_mutex_unlock(mutex)
  }
}
