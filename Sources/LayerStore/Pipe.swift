import Dispatch
import SnapshotSys
import Synchronization

/// A bounded queue of byte chunks between two threads: `put` blocks while it is full, `take`
/// while it is empty. Either side can `close` it (the producer at the end of its input, the
/// consumer when it gives up); after that `put` drops its chunk and `take` returns what is
/// left, then nil.
public final class ChunkPipe: Sendable {
  private let state: Mutex<State>
  private let slots: DispatchSemaphore
  private let items = DispatchSemaphore(value: 0)

  private struct State {
    var chunks: [Chunk] = []
    var head = 0
    var closed = false
    var error: LayerError?
  }

  public init(depth: Int = 8) {
    state = Mutex(State())
    slots = DispatchSemaphore(value: depth)
  }

  /// Adds a chunk; false if the pipe was closed (the consumer is gone).
  @discardableResult
  public func put(_ chunk: Chunk) -> Bool {
    slots.wait()
    let ok = state.withLock { s -> Bool in
      if s.closed { return false }
      s.chunks.append(chunk)
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
      if s.head < s.chunks.count {
        let c = s.chunks[s.head]
        s.head += 1
        if s.head == s.chunks.count {
          s.chunks.removeAll(keepingCapacity: true)
          s.head = 0
        }
        return .success(c)
      }
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
      let n = s.chunks.count - s.head
      s.chunks.removeAll()
      s.head = 0
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
public final class PipeSource: ByteSource {
  let pipe: ChunkPipe
  private var current: Chunk?
  private var offset = 0

  public init(_ pipe: ChunkPipe) { self.pipe = pipe }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    while offset == (current?.count ?? 0) {
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
