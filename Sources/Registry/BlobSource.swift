import NIOCore
import SnapshotSys
import Unpack

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

/// The bounded queue between the downloading task and the reading thread: at most `limit`
/// bytes queued; the task, which must not block its thread, waits for room with a
/// continuation.
final class BlobChannel: Sendable {
  private let queue: BoundedQueue<ByteBuffer, RegistryError>

  init(limit: Int) { queue = BoundedQueue(limit: limit) { $0.readableBytes } }

  var failure: RegistryError? { queue.failure }

  func abandon() { queue.abandon() }

  /// Queues a chunk, then waits while `limit` bytes or more are queued; false once the
  /// reader is gone.
  func put(_ chunk: ByteBuffer) async -> Bool {
    switch queue.offer(chunk) {
    case .closed: return false
    case .room: return true  // one lock per chunk unless the queue is full
    case .full:
      await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in queue.whenRoom { c.resume() } }
      return !queue.isClosed
    }
  }

  func finish(_ error: RegistryError?) { queue.close(failure: error) }

  /// The next chunk (blocking), nil at the end, or the download's failure.
  func take() -> Result<ByteBuffer?, RegistryError> { Result { () throws(RegistryError) in try queue.take() } }
}
