#if canImport(Glibc)
  import Glibc
#endif

/// A readers-writer lock (a `pthread_rwlock_t` on the heap): `read` bodies share it, a
/// `write` body holds it alone.
public final class ReadWriteLock: @unchecked Sendable {
  @usableFromInline let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

  public init() { pthread_rwlock_init(lock, nil) }

  deinit {
    pthread_rwlock_destroy(lock)
    lock.deallocate()
  }

  /// Runs `body` holding the lock shared.
  @inlinable @inline(__always)
  public func read<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    pthread_rwlock_rdlock(lock)
    defer { pthread_rwlock_unlock(lock) }
    return try body()
  }

  /// Runs `body` holding the lock alone.
  @inlinable @inline(__always)
  public func write<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    pthread_rwlock_wrlock(lock)
    defer { pthread_rwlock_unlock(lock) }
    return try body()
  }
}
