import CSysShims
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A flag one thread raises to ask work on another to stop at its next check (a client
/// that cancelled its call, or left).
public final class Cancellation: Sendable {
  private let flag = Atomic<Bool>(false)
  public init() {}
  public func cancel() { flag.store(true, ordering: .relaxed) }
  public var isCancelled: Bool { flag.load(ordering: .relaxed) }
}

/// POSIX threads (`pthread_create(3)`), for blocking loops: per-connection loops, and
/// snapfs's notifier.
public enum Threads {
  private final class Box {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
  }

  /// A started thread, to join or detach once.
  public struct Handle: Sendable {
    let thread: pthread_t

    /// `pthread_join(3)`: waits for the thread to end.
    public func join() { pthread_join(thread, nil) }

    /// `pthread_detach(3)`: its resources go when it ends.
    public func detach() { pthread_detach(thread) }
  }

  /// Starts `body` on a new joinable thread.
  public static func start(_ body: @escaping @Sendable () -> Void) throws(SystemError) -> Handle {
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
      &thread, nil,
      { arg in
        let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        box.body()
        return nil
      }, box)
    if rc != 0 {
      Unmanaged<Box>.fromOpaque(box).release()
      throw SystemError("pthread_create", "", errno: rc)
    }
    return Handle(thread: thread)
  }

  /// Runs `body` with the calling thread's scheduling priority lowered (nice 10 more, at
  /// most 19), then puts it back: for work beside the work a caller waits for longest, so
  /// that work keeps its core. Linux keeps nice per thread and a thread inherits its
  /// creator's, so threads `body` starts run lowered too: `body` must not start threads that
  /// outlive it (a dispatch or task pool's worker would keep the lowered priority). Best
  /// effort: a failure leaves the priority as it was (putting it back needs CAP_SYS_NICE).
  public static func withLowerPriority<T>(_ body: () throws -> T) rethrows -> T {
    var before: Int32 = 0
    guard shim_thread_nice_get(&before) == 0, shim_thread_nice_set(min(before + 10, 19)) == 0 else { return try body() }
    defer { _ = shim_thread_nice_set(before) }
    return try body()
  }

  /// Starts `body` on a new detached thread.
  public static func spawn(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
    try start(body).detach()
  }
}
