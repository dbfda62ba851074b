#if canImport(Glibc)
import Glibc
#endif

/// An failed system call: which call, on which path, and the errno it returned.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
  public let call: String
  public let path: String
  public let errno: Int32

  public init(_ call: String, _ path: String, errno: Int32) {
    self.call = call
    self.path = path
    self.errno = errno
  }

  public var description: String {
    "\(call) \(path): \(String(cString: strerror(errno))) (errno \(errno))"
  }

  /// Runs `body` and retries it while it fails with EINTR; throws for any other -1 result.
  @inline(__always)
  static func check(_ call: String, _ path: @autoclosure () -> String, _ body: () -> Int32) throws(SystemError) -> Int32 {
    while true {
      let rc = body()
      if rc != -1 { return rc }
      let e = Glibc.errno
      if e == EINTR { continue }
      throw SystemError(call, path(), errno: e)
    }
  }
}
