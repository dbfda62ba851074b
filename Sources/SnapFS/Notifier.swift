import CFuse

#if canImport(Glibc)
import Glibc
#endif

/// Tells the kernel to forget names (FUSE_NOTIFY_INVAL_ENTRY), from a thread of its own: the
/// kernel takes the directory's lock to do it, which a process waiting for a reply of ours may
/// hold, so a worker thread (perhaps the only one) must not wait for it.
final class Notifier: @unchecked Sendable {
  private let session: OpaquePointer
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  private var queue: [(parent: fuse_ino_t, name: String)] = []
  private var stopping = false
  private var thread = pthread_t()

  init(session: OpaquePointer) {
    self.session = session
    pthread_mutex_init(mutex, nil)
    pthread_cond_init(wake, nil)
    let me = Unmanaged.passRetained(self).toOpaque()
    pthread_create(&thread, nil, { me in
      let notifier = Unmanaged<Notifier>.fromOpaque(me!).takeRetainedValue()
      notifier.run()
      return nil
    }, me)
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
    queue.append((parent, name))
    pthread_cond_signal(wake)
    pthread_mutex_unlock(mutex)
  }

  /// Sends what is queued and ends the thread; before the session goes away.
  func stop() {
    pthread_mutex_lock(mutex)
    stopping = true
    pthread_cond_signal(wake)
    pthread_mutex_unlock(mutex)
    pthread_join(thread, nil)
  }

  private func run() {
    pthread_mutex_lock(mutex)
    while true {
      while queue.isEmpty && !stopping { pthread_cond_wait(wake, mutex) }
      if queue.isEmpty { break }
      let batch = queue
      queue.removeAll()
      pthread_mutex_unlock(mutex)
      for item in batch {
        // ENOENT: the kernel no longer has the name. Nothing else to do about other errors.
        _ = fuse_lowlevel_notify_inval_entry(session, item.parent, item.name, item.name.utf8.count)
      }
      pthread_mutex_lock(mutex)
    }
    pthread_mutex_unlock(mutex)
  }
}
