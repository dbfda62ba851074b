#if canImport(Glibc)
import Glibc
#endif

/// Detached POSIX threads (`pthread_create(3)`), for blocking per-connection loops.
public enum Threads {
  private final class Box {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
  }

  /// Starts `body` on a new detached thread.
  public static func spawn(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
      let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
      box.body()
      return nil
    }, box)
    if rc != 0 {
      Unmanaged<Box>.fromOpaque(box).release()
      throw SystemError("pthread_create", "", errno: rc)
    }
    pthread_detach(thread)
  }
}
