#if canImport(Glibc)
  import Glibc
#endif

/// A failed system call's errno alone: a value, not a message. What the calls below fail
/// with at first, and what a FUSE reply carries; failures are common on hot paths (a name
/// missing from a layer) and must not allocate.
public struct Errno: Error, Equatable, Sendable {
  public let code: Int32

  @inlinable
  public init(_ code: Int32) { self.code = code }

  /// The calling thread's errno now.
  @inlinable
  public static var current: Errno { Errno(Glibc.errno) }
}

extension Sys {
  /// `rc`, the result of a system call that fails with a negative result and sets errno,
  /// when it is not negative; else throws that errno. Of whatever integer type the call
  /// returns (`ssize_t` results are not cut to 32 bits).
  @inlinable @inline(__always)
  public static func call<R: BinaryInteger>(_ rc: R) throws(Errno) -> R {
    if rc < 0 { throw Errno.current }
    return rc
  }

  /// Runs `body`, a system call as for `call(_:)`, again while it fails with EINTR: its
  /// result, or throws its errno.
  @inlinable @inline(__always)
  public static func retrying<R: BinaryInteger>(_ body: () -> R) throws(Errno) -> R {
    while true {
      let rc = body()
      if rc >= 0 { return rc }
      let e = Glibc.errno
      if e != EINTR { throw Errno(e) }
    }
  }
}

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

  /// `Sys.retrying(body)` (EINTR retried), its errno thrown as a `SystemError` of `call`
  /// on `path`.
  @inline(__always)
  static func check<R: BinaryInteger>(_ call: String, _ path: @autoclosure () -> String, _ body: () -> R) throws(SystemError) -> R {
    do { return try Sys.retrying(body) } catch { throw SystemError(call, path(), errno: error.code) }
  }
}
