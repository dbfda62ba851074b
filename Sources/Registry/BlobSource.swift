import Dispatch
import LayerStore
import NIOCore
import SnapshotSys
import Synchronization

/// A blob download as a `ByteSource`, the input of `LayerImporter.importLayer`: a task
/// iterates the `BlobStream` and queues its chunks, at most `limit` bytes ahead of the
/// reader (the task waits, without blocking a thread, until the reader has taken some);
/// `read` blocks its thread (the importer's) until bytes arrive.
///
/// A failure of the download (digest mismatch, truncation, auth, ...) is thrown by `read`
/// as a `LayerError` before the end of the blob is reported, so the import fails without
/// committing; `failure` keeps the `RegistryError` itself. Dropping the source (an import
/// that stops early) cancels the download. One thread reads it at a time.
public final class BlobSource: ByteSource, @unchecked Sendable {
  private let channel: BlobChannel
  private let task: Task<Void, Never>
  private var current: ByteBuffer?

  /// Bytes handed to the reader so far.
  public private(set) var bytesRead: Int64 = 0

  init(_ stream: BlobStream, limit: Int) {
    let channel = BlobChannel(limit: max(limit, 64 << 10))
    self.channel = channel
    // The task holds the channel, not the source: dropping the source abandons the channel.
    task = Task {
      var iterator = stream.makeAsyncIterator()
      var failure: RegistryError?
      do {
        while let chunk = try await iterator.next() {
          guard await channel.put(chunk) else { return }
        }
      } catch let e as RegistryError {
        failure = e
      } catch {
        failure = RegistryError(
          .unreachable, registry: stream.reference.registry, repository: stream.reference.repository,
          object: stream.descriptor.digest.description, "\(error)")
      }
      channel.finish(failure)
    }
  }

  deinit {
    abandon()
  }

  /// The download's failure, once it failed.
  public var failure: RegistryError? { channel.failure }

  /// Stops the download; `read` then reports the end.
  func abandon() {
    channel.abandon()
    task.cancel()
  }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    while true {
      if var c = current, c.readableBytes > 0 {
        let n = min(buffer.count, c.readableBytes)
        c.withUnsafeReadableBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        c.moveReaderIndex(forwardBy: n)
        current = c.readableBytes > 0 ? c : nil
        bytesRead += Int64(n)
        return n
      }
      current = nil
      switch channel.take() {
      case .success(let c?):
        current = c
      case .success(nil):
        return 0
      case .failure(let e):
        throw LayerError(e.kind == .digestMismatch || e.kind == .badManifest ? .invalid : .failed, e.description)
      }
    }
  }
}

/// The bounded queue between the downloading task and the reading thread.
final class BlobChannel: Sendable {
  private struct State {
    var queue = Fifo<ByteBuffer>()
    var queued = 0
    var done = false
    var error: RegistryError?
    var abandoned = false
    var producer: CheckedContinuation<Void, Never>?
  }

  private let state = Mutex(State())
  private let arrived = DispatchSemaphore(value: 0)
  private let limit: Int

  init(limit: Int) { self.limit = limit }

  var failure: RegistryError? { state.withLock { $0.error } }

  func abandon() {
    let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
      s.abandoned = true
      s.queue.removeAll()
      s.queued = 0
      defer { s.producer = nil }
      return s.producer
    }
    waiter?.resume()
  }

  /// Queues a chunk, then waits while `limit` bytes or more are queued; false once the
  /// reader is gone.
  func put(_ chunk: ByteBuffer) async -> Bool {
    enum Queued { case gone, below, full }
    let queued = state.withLock { s -> Queued in
      if s.abandoned { return .gone }
      s.queue.push(chunk)
      s.queued += chunk.readableBytes
      return s.queued < limit ? .below : .full
    }
    if queued == .gone { return false }
    arrived.signal()
    guard queued == .full else { return true }  // one lock per chunk unless the queue is full
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let wait = state.withLock { s -> Bool in
        if s.queued < limit || s.abandoned { return false }
        s.producer = c
        return true
      }
      if !wait { c.resume() }
    }
    return state.withLock { !$0.abandoned }
  }

  func finish(_ error: RegistryError?) {
    state.withLock { s in
      s.done = true
      s.error = error
    }
    arrived.signal()
  }

  /// The next chunk (blocking), nil at the end, or the download's failure.
  func take() -> Result<ByteBuffer?, RegistryError> {
    while true {
      enum Next {
        case chunk(ByteBuffer, CheckedContinuation<Void, Never>?)
        case end
        case failed(RegistryError)
        case wait
      }
      let next = state.withLock { s -> Next in
        if let c = s.queue.pop() {
          s.queued -= c.readableBytes
          var wake: CheckedContinuation<Void, Never>?
          if s.queued < limit {
            wake = s.producer
            s.producer = nil
          }
          return .chunk(c, wake)
        }
        if s.done { return s.error.map { .failed($0) } ?? .end }
        if s.abandoned { return .end }
        return .wait
      }
      switch next {
      case .chunk(let c, let wake):
        wake?.resume()
        return .success(c)
      case .end:
        return .success(nil)
      case .failed(let e):
        return .failure(e)
      case .wait:
        arrived.wait()
      }
    }
  }
}
