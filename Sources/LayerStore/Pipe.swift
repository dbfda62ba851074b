import Dispatch
import SnapshotSys
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A buffer handed from one thread to another through a `ChunkPipe`.
///
/// Its memory is mapped for it alone (`mmap`), not taken from malloc, and unmapped when it
/// is freed. A chunk is filled on one thread and freed on another; from glibc's malloc, 1 MiB
/// blocks freed that way piled up in the filling thread's arena (one import of a 3 GiB file
/// of zeros peaked at 390 MiB RSS, and 130 MiB of arena stayed after it), and the first such
/// block freed raised malloc's mmap threshold for the whole process.
public final class Chunk: @unchecked Sendable {
  let base: UnsafeMutableRawPointer
  public let capacity: Int
  var count = 0
  private let mapped: Int

  public init(capacity: Int) {
    guard let m = Sys.mapMemory(capacity) else {
      fatalError("cannot map \(capacity) bytes for a chunk: \(String(cString: strerror(errno)))")  // as allocation failures do
    }
    base = m.base
    self.capacity = capacity
    mapped = m.size
  }

  deinit { Sys.unmapMemory(base, mapped) }

  var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

  /// Replaces the content with a copy of `bytes`, which must fit.
  public func fill(copying bytes: UnsafeRawBufferPointer) {
    precondition(bytes.count <= capacity, "\(bytes.count) bytes do not fit a chunk of \(capacity)")
    if let b = bytes.baseAddress { base.copyMemory(from: b, byteCount: bytes.count) }
    count = bytes.count
  }
}

/// A bounded queue of byte chunks between two threads: `put` blocks while it is full, `take`
/// while it is empty. Either side can `close` it (the producer at the end of its input, the
/// consumer when it gives up); after that `put` drops its chunk and `take` returns what is
/// left, then nil.
///
/// Chunks go round: the consumer hands each one it has finished with back (`recycle`), and
/// the producer fills those again (`chunk(capacity:)`) before it maps new ones. So a stream
/// of any length uses at most `depth + 2` chunks (the queued ones, the one being filled, the
/// one being read), mapped once, instead of one new buffer per chunk.
public final class ChunkPipe: Sendable {
  private let state: Mutex<State>
  private let slots: DispatchSemaphore
  private let items = DispatchSemaphore(value: 0)
  private let depth: Int

  private struct State {
    var chunks = Fifo<Chunk>()
    var spare: [Chunk] = []  // given back by the consumer, to be filled again
    var closed = false
    var error: LayerError?
  }

  public init(depth: Int = 4) {
    state = Mutex(State())
    slots = DispatchSemaphore(value: depth)
    self.depth = depth
  }

  /// An empty chunk of at least `capacity` bytes to fill and `put`: one the consumer gave
  /// back if one is that large (smaller ones are freed), else a new one.
  public func chunk(capacity: Int) -> Chunk {
    let reused = state.withLock { s -> Chunk? in
      while let c = s.spare.popLast() {
        if c.capacity >= capacity { return c }
      }
      return nil
    }
    guard let reused else { return Chunk(capacity: capacity) }
    reused.count = 0
    return reused
  }

  /// Gives back a chunk taken from the pipe, once nothing reads it any more, for the
  /// producer to fill again (none after the pipe closed: the producer is done).
  public func recycle(_ chunk: Chunk) {
    state.withLock { s in
      if !s.closed && s.spare.count < depth + 2 { s.spare.append(chunk) }
    }
  }

  /// Adds a chunk; false if the pipe was closed (the consumer is gone).
  @discardableResult
  public func put(_ chunk: Chunk) -> Bool {
    slots.wait()
    let ok = state.withLock { s -> Bool in
      if s.closed { return false }
      s.chunks.push(chunk)
      return true
    }
    if ok { items.signal() } else { slots.signal() }
    return ok
  }

  /// The next chunk, or nil once the pipe is closed and empty. Throws the error the
  /// producer closed it with.
  public func take() throws(LayerError) -> Chunk? {
    items.wait()
    let r = state.withLock { s -> Result<Chunk?, LayerError> in
      if let c = s.chunks.pop() { return .success(c) }
      if let e = s.error { return .failure(e) }
      return .success(nil)
    }
    switch r {
    case .success(let c):
      if c != nil { slots.signal() } else { items.signal() }  // keep the end visible to later takes
      return c
    case .failure(let e):
      items.signal()
      throw e
    }
  }

  /// Ends the stream (with `error`, when the producer failed). Idempotent.
  public func close(error: LayerError? = nil) {
    let first = state.withLock { s -> Bool in
      if s.closed { return false }
      s.closed = true
      s.error = error
      return true
    }
    if first {
      items.signal()
      slots.signal()  // a producer blocked on a full pipe wakes and sees it closed
    }
  }

  /// Closes from the consumer's side and drops what is queued; a blocked producer wakes
  /// (by `close`) and sees the pipe closed.
  public func abandon() {
    close()
    let dropped = state.withLock { s -> Int in
      let n = s.chunks.count
      s.chunks.removeAll()
      s.spare.removeAll()
      return n
    }
    // Give back the dropped chunks' slots: libdispatch traps when a semaphore is freed
    // below its initial value.
    for _ in 0..<dropped { slots.signal() }
  }
}

/// Where a layer blob's bytes come from.
public protocol ByteSource: AnyObject {
  /// Fills up to `buffer.count` bytes; 0 at the end.
  func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int
}

/// A blob in a file.
public final class FileSource: ByteSource {
  let fd: Int32
  let path: String

  public init(path: String) throws(LayerError) {
    self.path = path
    do {
      fd = try At.openFile(path)
    } catch {
      throw LayerError(.invalid, "cannot open layer blob \(path): \(error)")
    }
  }

  deinit { At.close(fd) }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    do {
      return try At.read(fd, path, into: buffer)
    } catch {
      throw LayerError(.failed, "reading layer blob: \(error)")
    }
  }
}

/// A blob arriving in chunks from another thread (a client streaming it over the socket).
/// Dropped, it abandons the pipe: when an import stops before the end of the blob (a corrupt
/// one), the producer's next `put` returns false instead of waiting forever on a full pipe.
public final class PipeSource: ByteSource {
  let pipe: ChunkPipe
  private var current: Chunk?
  private var offset = 0

  public init(_ pipe: ChunkPipe) { self.pipe = pipe }

  deinit { pipe.abandon() }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    while offset == (current?.count ?? 0) {
      if let done = current {
        current = nil
        pipe.recycle(done)
      }
      guard let next = try pipe.take() else { return 0 }
      current = next
      offset = 0
    }
    let c = current!
    let n = min(buffer.count, c.count - offset)
    buffer.baseAddress!.copyMemory(from: c.base + offset, byteCount: n)
    offset += n
    return n
  }
}
