import CSysShims

#if canImport(Glibc)
  import Glibc
#endif

/// Unix stream sockets with blocking I/O, for the RPC server's thread-per-connection loop.
public enum Socket {
  /// `socket(2)` + `bind(2)` + `listen(2)` on a unix socket path.
  public static func listen(unixPath path: String, backlog: Int32 = 128) throws(SystemError) -> Int32 {
    let fd = try SystemError.check("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    do {
      var addr = try address(path)
      _ = try SystemError.check("bind", path) {
        withUnsafePointer(to: &addr) {
          $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
      }
      _ = try SystemError.check("listen", path) { Glibc.listen(fd, backlog) }
    } catch {
      Glibc.close(fd)
      throw error
    }
    return fd
  }

  /// `socket(2)` + `connect(2)` to a unix socket path.
  public static func connect(unixPath path: String) throws(SystemError) -> Int32 {
    let fd = try SystemError.check("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    do {
      var addr = try address(path)
      _ = try SystemError.check("connect", path) {
        withUnsafePointer(to: &addr) {
          $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
      }
    } catch {
      Glibc.close(fd)
      throw error
    }
    return fd
  }

  private static func address(_ path: String) throws(SystemError) -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw SystemError("bind", path, errno: ENAMETOOLONG) }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      raw.copyBytes(from: bytes)
      raw[bytes.count] = 0
    }
    return addr
  }

  /// `accept(2)`. (Glibc's module does not export accept4; the daemon never execs, so
  /// close-on-exec does not matter here.)
  public static func accept(_ fd: Int32) throws(SystemError) -> Int32 {
    try SystemError.check("accept", "listener") { Glibc.accept(fd, nil, nil) }
  }

  /// `read(2)` into `buffer`; 0 at end of stream.
  public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
    while true {
      let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
      if n >= 0 { return n }
      if errno == EINTR { continue }
      throw SystemError("read", "socket", errno: errno)
    }
  }

  /// `send(2)` with MSG_NOSIGNAL until every byte is written: a peer that went away is an
  /// EPIPE error, not a SIGPIPE.
  public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(SystemError) {
    var offset = 0
    while offset < bytes.count {
      let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
      if n < 0 {
        if errno == EINTR { continue }
        throw SystemError("write", "socket", errno: errno)
      }
      offset += n
    }
  }

  /// `shutdown(2)`: wakes a thread blocked reading or accepting on `fd`.
  public static func shutdown(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

  /// `close(2)`.
  public static func close(_ fd: Int32) { _ = Glibc.close(fd) }
}

extension Socket {
  /// `shutdown(2)` SHUT_RD: blocked and later reads return end of stream; writes still work.
  public static func shutdownRead(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_RD)) }
}

extension Socket {
  /// `setsockopt(2)` SO_SNDTIMEO: a send blocked longer than `seconds` fails with EAGAIN,
  /// so a peer that stops reading cannot hold a thread forever.
  public static func setSendTimeout(_ fd: Int32, seconds: Int) throws(SystemError) {
    var tv = timeval(tv_sec: seconds, tv_usec: 0)
    _ = try SystemError.check("setsockopt", "SO_SNDTIMEO") {
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
  }
}

/// A pipe one thread writes to wake another that waits in `Socket.waitReadable`: how a
/// call finished on another thread gets the connection's reading thread to answer it.
public final class Wakeup: Sendable {
  private let readEnd: Int32
  private let writeEnd: Int32

  public init() throws(SystemError) {
    var fds: [Int32] = [-1, -1]
    _ = try SystemError.check("pipe2", "wakeup") { shim_pipe_nonblocking(&fds) }
    readEnd = fds[0]
    writeEnd = fds[1]
  }

  deinit {
    close(readEnd)
    close(writeEnd)
  }

  /// Wakes the waiter (a full pipe already does).
  public func signal() {
    var byte: UInt8 = 1
    _ = write(writeEnd, &byte, 1)
  }

  /// Empties the pipe: the wakes so far are seen.
  public func drain() {
    var bytes = [UInt8](repeating: 0, count: 64)
    while read(readEnd, &bytes, bytes.count) > 0 {}
  }

  /// Blocks until signalled (a wake not drained yet counts).
  public func wait() {
    var fds = [pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)]
    while poll(&fds, 1, -1) < 0 && errno == EINTR {}
  }

  fileprivate var fd: Int32 { readEnd }
}

/// Who is at the other end of a unix socket, as the kernel saw it at connect time.
public struct PeerCredentials: Sendable, Equatable {
  public var pid: Int32
  public var uid: UInt32
  public var gid: UInt32
}

extension Socket {
  /// `getsockopt(SO_PEERCRED)`.
  public static func peerCredentials(_ fd: Int32) throws(SystemError) -> PeerCredentials {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    _ = try SystemError.check("getsockopt(SO_PEERCRED)", "socket") { shim_peer_credentials(fd, &pid, &uid, &gid) }
    return PeerCredentials(pid: pid, uid: uid, gid: gid)
  }

  /// `poll(2)` with no wait: whether `fd` has input (or an end of input) to read now.
  public static func hasInput(_ fd: Int32) -> Bool {
    var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
    while true {
      let n = poll(&fds, 1, 0)
      if n < 0 && errno == EINTR { continue }
      return n > 0
    }
  }

  /// `poll(2)` until `fd` is readable (true) or `wakeup` is signalled (false).
  public static func waitReadable(_ fd: Int32, or wakeup: Wakeup) throws(SystemError) -> Bool {
    var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)]
    while true {
      let n = poll(&fds, 2, -1)
      if n < 0 {
        if errno == EINTR { continue }
        throw SystemError("poll", "socket", errno: errno)
      }
      if fds[0].revents != 0 { return true }
      if fds[1].revents != 0 { return false }
    }
  }
}
