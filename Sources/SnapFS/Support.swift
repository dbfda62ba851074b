import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// A plain mutex for short critical sections (the node table).
final class Mutex: @unchecked Sendable {
  private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  init() { pthread_mutex_init(lock, nil) }
  deinit {
    pthread_mutex_destroy(lock)
    lock.deallocate()
  }
  @inline(__always) func with<T>(_ body: () -> T) -> T {
    pthread_mutex_lock(lock)
    defer { pthread_mutex_unlock(lock) }
    return body()
  }
}

/// Waiting for a condition that other threads change: `wait(until:)` blocks until `ready`
/// holds, `change` runs a change and wakes the waiters. For rare, short waits.
final class Condition: @unchecked Sendable {
  private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  init() {
    pthread_mutex_init(lock, nil)
    pthread_cond_init(cond, nil)
  }
  deinit {
    pthread_cond_destroy(cond)
    pthread_mutex_destroy(lock)
    cond.deallocate()
    lock.deallocate()
  }
  func wait(until ready: () -> Bool) {
    pthread_mutex_lock(lock)
    while !ready() { pthread_cond_wait(cond, lock) }
    pthread_mutex_unlock(lock)
  }
  func change(_ body: () -> Void) {
    pthread_mutex_lock(lock)
    body()
    pthread_cond_broadcast(cond)
    pthread_mutex_unlock(lock)
  }
}

extension stat {
  var type: mode_t { st_mode & S_IFMT }
  var isDirectory: Bool { type == S_IFDIR }
  /// A whiteout: a character device 0/0.
  var isWhiteout: Bool { type == S_IFCHR && st_rdev == 0 }
}

/// fstatat that answers nil for a name that is not there.
@inline(__always)
func statIfPresent(_ dirfd: Int32, _ name: String) throws(Errno) -> stat? {
  var st = stat()
  if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
  let e = errno
  if e == ENOENT || e == ENOTDIR { return nil }
  throw Errno(e)
}
