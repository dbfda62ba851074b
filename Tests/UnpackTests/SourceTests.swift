import Testing

@testable import SnapshotSys
@testable import Unpack

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct SourceTests {
  /// A streamed blob read past its end answers 0 again and again (it trapped once: the
  /// end kept the last chunk's offset).
  @Test func pipeSourceAfterTheEnd() throws {
    let pipe = ChunkPipe(depth: 4)
    for text in ["hello ", "", "world"] {
      let c = pipe.chunk(capacity: max(text.utf8.count, 1))
      Array(text.utf8).withUnsafeBytes { c.fill(copying: $0) }
      pipe.put(c)
    }
    pipe.close()
    let source = PipeSource(pipe)
    var out: [UInt8] = []
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 1)
    defer { buffer.deallocate() }
    while true {
      let n = try source.read(into: buffer)
      if n == 0 { break }
      out += buffer[..<n]
    }
    #expect(String(decoding: out, as: UTF8.self) == "hello world")
    for _ in 0..<3 { #expect(try source.read(into: buffer) == 0) }
  }

  /// Only regular files are read: a FIFO with no writer, a directory or a device is
  /// refused at once (none blocks), and a file past its limit fails.
  @Test func fileSourceRefusesWhatIsNotARegularFile() throws {
    let dir = "/tmp/snapshotd-source-\(getpid())"
    try? Sys.mkdir(dir, mode: 0o700)
    defer { _ = try? Tree.remove(dir) }
    #expect(mkfifo(dir + "/fifo", 0o600) == 0)
    for path in [dir + "/fifo", dir, "/dev/zero", "/dev/null"] {
      #expect(throws: LayerError.self) { try FileSource(path: path) }
    }
    let fd = open(dir + "/file", O_CREAT | O_WRONLY, 0o600)
    #expect(write(fd, "0123456789", 10) == 10)
    close(fd)
    #expect(try FileSource.readAll(dir + "/file", limit: 10).count == 10)
    #expect(throws: LayerError.self) { try FileSource.readAll(dir + "/file", limit: 9) }
    let cancel = Cancellation()
    let source = try FileSource(path: dir + "/file", cancellation: cancel)
    cancel.cancel()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 1)
    defer { buffer.deallocate() }
    #expect(throws: LayerError.self) { try source.read(into: buffer) }
  }
}
