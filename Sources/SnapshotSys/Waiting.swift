import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

// How blocking work waits (docs/architecture.md, "How we wait"). Blocking I/O runs on
// threads, and a thread that waits for another's result or state waits here: a `Condition`
// (a mutex and a condition variable over some state), and what is built on it. State
// nobody waits for is a `Synchronization.Mutex`. The few other waits (readers-writer locks,
// the background queue's lanes, poll(2) on descriptors, thread joins) are listed there.

/// A mutex with no state of its own, for short critical sections over state kept elsewhere
/// (snapfs's node table, one read of a file at a time). A class, so that arrays of them work.
public final class Lock: @unchecked Sendable {
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

  public init() { pthread_mutex_init(mutex, nil) }

  deinit {
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
  }

  @inline(__always)
  public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body()
  }
}

/// State that threads wait on: a pthread mutex and condition variable over `State`.
/// `update` changes it and wakes the waiters; `wait(until:then:)` blocks until the state
/// is ready, runs its body under the same lock, and wakes the others (the body may have
/// changed what they wait for).
public final class Condition<State>: @unchecked Sendable {
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  private var state: State

  public init(_ state: State) {
    self.state = state
    pthread_mutex_init(mutex, nil)
    var attributes = pthread_condattr_t()
    pthread_condattr_init(&attributes)
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)  // timed waits ignore clock changes
    pthread_cond_init(changed, &attributes)
    pthread_condattr_destroy(&attributes)
  }

  deinit {
    pthread_cond_destroy(changed)
    pthread_mutex_destroy(mutex)
    changed.deallocate()
    mutex.deallocate()
  }

  /// Runs `body` on the state under the lock, waking no one.
  @inline(__always)
  public func withLock<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body(&state)
  }

  /// Changes the state under the lock and wakes every waiter.
  @discardableResult
  public func update<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
    pthread_mutex_lock(mutex)
    defer {
      pthread_cond_broadcast(changed)
      pthread_mutex_unlock(mutex)
    }
    return try body(&state)
  }

  /// Waits until `ready` holds, then runs `body` under the same lock and wakes the others.
  @discardableResult
  public func wait<T>(until ready: (State) -> Bool, then body: (inout State) -> T) -> T {
    pthread_mutex_lock(mutex)
    defer {
      pthread_cond_broadcast(changed)
      pthread_mutex_unlock(mutex)
    }
    while !ready(state) { pthread_cond_wait(changed, mutex) }
    return body(&state)
  }

  /// `wait(until:then:)` for at most `seconds`: nil (and `body` not run) if `ready` did not
  /// hold by then.
  public func wait<T>(until ready: (State) -> Bool, seconds: Double, then body: (inout State) -> T) -> T? {
    var deadline = timespec()
    clock_gettime(CLOCK_MONOTONIC, &deadline)
    let whole = seconds.rounded(.down)
    deadline.tv_sec += Int(min(whole, Double(Int32.max)))
    deadline.tv_nsec += Int((seconds - whole) * 1e9)
    if deadline.tv_nsec >= 1_000_000_000 {
      deadline.tv_sec += 1
      deadline.tv_nsec -= 1_000_000_000
    }
    pthread_mutex_lock(mutex)
    defer {
      pthread_cond_broadcast(changed)
      pthread_mutex_unlock(mutex)
    }
    while !ready(state) {
      if pthread_cond_timedwait(changed, mutex, &deadline) == ETIMEDOUT { return ready(state) ? body(&state) : nil }
    }
    return body(&state)
  }
}

/// A value one thread sets once and others wait for: the result of work on another thread.
public final class Promise<Value: Sendable>: Sendable {
  private let slot = Condition<Value?>(nil)

  public init() {}

  /// Sets the value and wakes the waiters; false (and nothing changed) if it was set before.
  @discardableResult
  public func fulfill(_ value: Value) -> Bool {
    slot.update { v in
      guard v == nil else { return false }
      v = value
      return true
    }
  }

  /// The value, waiting for it.
  public func wait() -> Value { slot.wait(until: { $0 != nil }) { $0! } }

  /// The value, or nil if it is not set within `seconds`.
  public func wait(seconds: Double) -> Value? { slot.wait(until: { $0 != nil }, seconds: seconds) { $0! } }

  /// The value if it is set, without waiting.
  public var value: Value? { slot.withLock { $0 } }
}

extension Threads {
  /// Runs `body` on a new detached thread; the promise gets its result.
  public static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) throws(SystemError) -> Promise<T> {
    let promise = Promise<T>()
    try spawn { promise.fulfill(body()) }
    return promise
  }
}

/// Work done once per key at a time: the first to ask for a key leads (does the work and
/// calls `finish`); those who ask while it runs follow (wait for its value). After
/// `finish` the key is free, and the next ask leads again.
public final class SingleFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
  private let running = Mutex<[Key: Promise<Value>]>([:])

  public init() {}

  /// The promise of the work under `key`, and whether the caller leads it.
  public func join(_ key: Key) -> (promise: Promise<Value>, leads: Bool) {
    running.withLock { r in
      if let p = r[key] { return (p, false) }
      let p = Promise<Value>()
      r[key] = p
      return (p, true)
    }
  }

  /// Ends the led work under `key`: its followers get `value`.
  public func finish(_ key: Key, with value: Value) {
    let p = running.withLock { $0.removeValue(forKey: key) }
    p?.fulfill(value)
  }
}

/// A bounded queue between a producer and a consumer thread. `put` blocks while the queued
/// elements weigh `limit` or more; `take` blocks while it is empty. The producer closes it at
/// the end of its input (with its failure, if it failed); the consumer abandons it when it
/// gives up, dropping what is queued. Then `put` refuses, and `take` returns what is left,
/// then nil, or throws the producer's failure. A producer that must not block a thread (an
/// async task) uses `offer` and `whenRoom` instead of `put`.
public final class BoundedQueue<Element: Sendable, Failure: Error & Sendable>: Sendable {
  private struct State {
    var items = Fifo<Element>()
    var weight = 0
    var closed = false
    var failure: Failure?
    var roomWaiters: [@Sendable () -> Void] = []
  }

  private let state = Condition(State())
  private let limit: Int
  private let weigh: @Sendable (Element) -> Int

  /// `limit` of total `weight` (by default, one per element).
  public init(limit: Int, weight: @escaping @Sendable (Element) -> Int = { _ in 1 }) {
    self.limit = max(1, limit)
    weigh = weight
  }

  /// Adds `element`, waiting first while the queue is full; false if it is closed.
  @discardableResult
  public func put(_ element: Element) -> Bool {
    state.wait(until: { $0.closed || $0.weight < limit }) { s in
      guard !s.closed else { return false }
      s.items.push(element)
      s.weight += weigh(element)
      return true
    }
  }

  public enum Offered: Sendable { case room, full, closed }

  /// Adds `element` without waiting: `.full` when the queue is now at its limit (wait with
  /// `whenRoom` before offering more), `.closed` (and not added) once closed.
  public func offer(_ element: Element) -> Offered {
    state.update { s in
      guard !s.closed else { return .closed }
      s.items.push(element)
      s.weight += weigh(element)
      return s.weight < limit ? .room : .full
    }
  }

  /// Calls `wake` (on some thread) once the queue is below its limit or closed: now if it is.
  public func whenRoom(_ wake: @escaping @Sendable () -> Void) {
    let now = state.withLock { s in
      if s.closed || s.weight < limit { return true }
      s.roomWaiters.append(wake)
      return false
    }
    if now { wake() }
  }

  /// The next element, waiting while the queue is empty and open; nil once it is closed
  /// and empty. Throws the producer's failure once what came before it is taken.
  public func take() throws(Failure) -> Element? {
    let (next, wake) = state.wait(until: { $0.closed || !$0.items.isEmpty }) { s -> (Result<Element?, Failure>, [@Sendable () -> Void]) in
      guard let e = s.items.pop() else { return (s.failure.map { .failure($0) } ?? .success(nil), []) }
      s.weight -= weigh(e)
      guard s.weight < limit, !s.roomWaiters.isEmpty else { return (.success(e), []) }
      defer { s.roomWaiters = [] }
      return (.success(e), s.roomWaiters)
    }
    for w in wake { w() }
    return try next.get()
  }

  /// Ends the stream, with the producer's `failure` if it failed. Only the first call counts.
  public func close(failure: Failure? = nil) {
    let wake = state.update { s -> [@Sendable () -> Void] in
      guard !s.closed else { return [] }
      s.closed = true
      s.failure = failure
      defer { s.roomWaiters = [] }
      return s.roomWaiters
    }
    for w in wake { w() }
  }

  /// Closes it from the consumer's side and drops what is queued.
  public func abandon() {
    close()
    state.update { s in
      s.items.removeAll()
      s.weight = 0
    }
  }

  /// The failure the producer closed it with.
  public var failure: Failure? { state.withLock { $0.failure } }

  /// Whether it is closed (by either side).
  public var isClosed: Bool { state.withLock { $0.closed } }
}
