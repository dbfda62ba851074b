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
  private let queue: BoundedQueue<Chunk, LayerError>
  /// Given back by the consumer, to be filled again.
  private let spare = Mutex<[Chunk]>([])
  private let depth: Int

  public init(depth: Int = 4) {
    queue = BoundedQueue(limit: depth)
    self.depth = depth
  }

  /// An empty chunk of at least `capacity` bytes to fill and `put`: one the consumer gave
  /// back if one is that large (smaller ones are freed), else a new one.
  public func chunk(capacity: Int) -> Chunk {
    let reused = spare.withLock { spare -> Chunk? in
      while let c = spare.popLast() {
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
    guard !queue.isClosed else { return }
    spare.withLock { if $0.count < depth + 2 { $0.append(chunk) } }
  }

  /// Adds a chunk, waiting while the pipe is full; false if the pipe was closed (the
  /// consumer is gone).
  @discardableResult
  public func put(_ chunk: Chunk) -> Bool { queue.put(chunk) }

  /// The next chunk, or nil once the pipe is closed and empty. Throws the error the
  /// producer closed it with.
  public func take() throws(LayerError) -> Chunk? { try queue.take() }

  /// Ends the stream (with `error`, when the producer failed). Idempotent.
  public func close(error: LayerError? = nil) { queue.close(failure: error) }

  /// Closes from the consumer's side and drops what is queued; a blocked producer wakes
  /// and sees the pipe closed.
  public func abandon() {
    queue.abandon()
    spare.withLock { $0.removeAll() }
  }
}

/// Where a layer blob's bytes come from.
public protocol ByteSource: AnyObject {
  /// Fills up to `buffer.count` bytes; 0 at the end.
  func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int
}

/// A blob in a file a client named. Only a regular file is read: the path is opened
/// without blocking (a FIFO with no writer, or a device, cannot hold the caller) and
/// anything else is refused. A read past `limit` bytes (the size a descriptor gives) fails,
/// and so does a read after `cancellation` is raised (the client left or cancelled).
public final class FileSource: ByteSource {
  let fd: Int32
  let path: String
  let limit: Int64?
  let cancellation: Cancellation?
  /// Bytes `range.lowerBound..<range.upperBound` of the file only (a blob inside an image
  /// archive), read with pread; nil: the whole file.
  let range: Range<Int64>?
  private var done: Int64 = 0

  public init(path: String, limit: Int64? = nil, range: Range<Int64>? = nil, cancellation: Cancellation? = nil)
    throws(LayerError)
  {
    self.path = path
    self.limit = limit
    self.range = range
    self.cancellation = cancellation
    fd = try Self.openRegular(path)
  }

  /// A read-only descriptor of `path`, which must be a regular file: opened without
  /// blocking, then checked with `fstat`.
  public static func openRegular(_ path: String) throws(LayerError) -> Int32 {
    let fd: Int32
    do {
      fd = try At.openNonBlocking(path)
    } catch {
      throw LayerError(.invalid, "cannot open \(path): \(error)")
    }
    let st: stat
    do {
      st = try At.fstat(fd, path)
    } catch {
      At.close(fd)
      throw LayerError(.invalid, "cannot stat \(path): \(error)")
    }
    guard st.st_mode & S_IFMT == S_IFREG else {
      At.close(fd)
      throw LayerError(.invalid, "\(path) is not a regular file (it is \(fileType(st.st_mode)))")
    }
    return fd
  }

  /// A whole small file (an index, a manifest), or its bytes in `range`, refused when larger
  /// than `limit`.
  public static func readAll(_ path: String, limit: Int64, range: Range<Int64>? = nil) throws(LayerError) -> [UInt8] {
    let source = try FileSource(path: path, limit: limit, range: range)
    var out: [UInt8] = []
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    defer { buffer.deallocate() }
    while true {
      let n = try source.read(into: buffer)
      if n == 0 { return out }
      out += buffer[..<n]
    }
  }

  deinit { At.close(fd) }

  static func fileType(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFDIR: "a directory"
    case S_IFIFO: "a FIFO"
    case S_IFCHR: "a character device"
    case S_IFBLK: "a block device"
    case S_IFSOCK: "a socket"
    default: "mode \(String(mode, radix: 8))"
    }
  }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    if cancellation?.isCancelled == true { throw LayerError(.cancelled, "reading \(path): cancelled") }
    let n: Int
    do {
      if let range {
        let left = range.count - Int(done)
        if left <= 0 { return 0 }
        n = try At.read(
          fd, path, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, left)]), at: range.lowerBound + done)
      } else {
        n = try At.read(fd, path, into: buffer)
      }
    } catch {
      // The client's file cannot be read (a /proc file, a bad disk): its input is at fault.
      throw LayerError(.invalid, "reading \(path): \(error)")
    }
    if let range, n == 0 { throw LayerError(.invalid, "\(path) ends inside a blob it holds (\(done) of \(range.count) bytes)") }
    done += Int64(n)
    if let limit, done > limit {
      throw LayerError(.invalid, "\(path) is larger than the \(limit) bytes expected")
    }
    return n
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
    while true {
      if let c = current, offset < c.count {
        let n = min(buffer.count, c.count - offset)
        if n > 0, let dst = buffer.baseAddress { dst.copyMemory(from: c.base + offset, byteCount: n) }
        offset += n
        return n
      }
      if let done = current {
        current = nil
        pipe.recycle(done)
      }
      offset = 0
      // At the end, every later read answers 0 again (take keeps the end visible).
      guard let next = try pipe.take() else { return 0 }
      current = next
    }
  }
}

/// A blob in memory (a test's, a fuzzer's, or bytes read ahead).
public final class MemorySource: ByteSource {
  private let bytes: [UInt8]
  private var offset = 0

  public init(_ bytes: [UInt8]) { self.bytes = bytes }

  public var isEmpty: Bool { offset >= bytes.count }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    let n = min(buffer.count, bytes.count - offset)
    bytes.withUnsafeBytes { b in
      if n > 0, let dst = buffer.baseAddress, let src = b.baseAddress { dst.copyMemory(from: src + offset, byteCount: n) }
    }
    offset += n
    return n
  }
}

/// Bytes already read from a source, given back before the rest of it.
final class PrefixedSource: ByteSource {
  private let prefix: MemorySource
  private let rest: ByteSource

  init(_ prefix: [UInt8], _ rest: ByteSource) {
    self.prefix = MemorySource(prefix)
    self.rest = rest
  }

  func read(into buffer: UnsafeMutableRawBufferPointer) throws(LayerError) -> Int {
    prefix.isEmpty ? try rest.read(into: buffer) : try prefix.read(into: buffer)
  }
}
