import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Request counts, failures and latencies of one snapfs mount, by operation.
///
/// snapfs is one process per mount, so it cannot share the daemon's metrics registry. It
/// keeps its figures in a small file it maps and updates in place: a relaxed atomic add per
/// request, no system call, no thread, no socket. Anyone may read the file at any time,
/// even while the mount hangs and its process could not answer a question
/// (`snapctl fuse-stats MOUNTPOINT`). The file is named by the mount's device number, as
/// stat(2) and /proc/self/mountinfo give it (`/run/snapfs/stats/MAJOR:MINOR`), written
/// when the mount is made and removed when snapfs ends; a snapfs killed outright leaves
/// it, and the next mount with that number replaces it.
///
/// The file: a header of 8 little-endian 64-bit words (magic, version, operations,
/// buckets, the pid of snapfs, 3 reserved), then per operation (`Op`'s order): count,
/// failures, total nanoseconds, and a count per latency bucket (`bucketBounds`, then one
/// for slower).
public enum FuseStats {
  public static let directory = "/run/snapfs/stats"
  static let magic: UInt64 = 0x5453_5346_5041_4E53  // "SNAPFSST", little-endian
  static let version: UInt64 = 1
  static let headerWords = 8

  /// Upper bounds of the latency buckets, in microseconds; a last bucket holds the slower.
  public static let bucketBounds: [UInt64] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000]
  static var wordsPerOp: Int { 3 + bucketBounds.count + 1 }
  static var size: Int { (headerWords + Op.allCases.count * wordsPerOp) * 8 }

  /// The operations snapfs serves, as FUSE names them.
  public enum Op: Int, CaseIterable, Sendable {
    case lookup, forget, getattr, setattr, readlink, mknod, mkdir, symlink, link, unlink, rmdir, rename, open, create,
      read, write, release, fsync, fallocate, lseek, opendir, readdir, readdirplus, fsyncdir, statfs, getxattr, listxattr,
      setxattr, removexattr

    public var name: String { "\(self)".uppercased() }
  }

  /// The file for the mount whose device is `major:minor`.
  public static func path(major: UInt32, minor: UInt32) -> String { "\(directory)/\(major):\(minor)" }

  /// One operation's figures.
  public struct Figures: Sendable, Equatable {
    public var op: Op
    public var count: UInt64
    public var failures: UInt64
    public var nanoseconds: UInt64
    /// Requests per latency bucket (`bucketBounds`, then the slower).
    public var buckets: [UInt64]

    /// The bound of the bucket holding the `q` quantile, in microseconds (nil: the slowest
    /// bucket, over the last bound).
    public func quantile(_ q: Double) -> UInt64?? {
      guard count > 0 else { return nil }
      let rank = UInt64((Double(count) * q).rounded(.up))
      var seen: UInt64 = 0
      for (i, n) in buckets.enumerated() {
        seen += n
        if seen >= max(rank, 1) { return .some(i < bucketBounds.count ? bucketBounds[i] : nil) }
      }
      return .some(nil)
    }
  }

  /// What a mount's file holds now.
  public struct Report: Sendable {
    public var pid: Int32
    public var operations: [Figures]
  }

  /// Reads the file of the mount `major:minor`.
  public static func read(major: UInt32, minor: UInt32) throws(SystemError) -> Report {
    let file = path(major: major, minor: minor)
    let fd = try At.openFile(file)
    defer { close(fd) }
    guard try At.fstat(fd, file).st_size >= size else { throw SystemError("read", file, errno: EINVAL) }
    let base = try Sys.mapShared(fd, size, writable: false)
    defer { munmap(base, size) }
    let words = base.assumingMemoryBound(to: UInt64.self)
    guard words[0] == magic, words[1] == version, words[2] == UInt64(Op.allCases.count),
      words[3] == UInt64(bucketBounds.count + 1)
    else { throw SystemError("read", file, errno: EINVAL) }
    let operations = Op.allCases.map { op in
      let at = words + headerWords + op.rawValue * wordsPerOp
      let load = { (i: Int) in shim_load_relaxed(at + i) }
      return Figures(
        op: op, count: load(0), failures: load(1), nanoseconds: load(2), buckets: (0...bucketBounds.count).map { load(3 + $0) })
    }
    return Report(pid: Int32(truncatingIfNeeded: words[4]), operations: operations)
  }

  /// snapfs's side: the mapped file, updated per request.
  public final class Recorder: @unchecked Sendable {  // counters are updated atomically
    let path: String
    let words: UnsafeMutablePointer<UInt64>

    /// Creates (or replaces) the file of the mount `major:minor`, zeroed.
    public init(major: UInt32, minor: UInt32) throws(SystemError) {
      path = FuseStats.path(major: major, minor: minor)
      try Sys.mkdirAll(directory, mode: 0o755)
      let dir = try At.openDirectory(directory)
      defer { close(dir) }
      let fd = try At.open(dir, "\(major):\(minor)", flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o644)
      defer { close(fd) }
      try At.truncate(fd, path, size: Int64(size))
      words = try Sys.mapShared(fd, size, writable: true).assumingMemoryBound(to: UInt64.self)
      words[2] = UInt64(Op.allCases.count)
      words[3] = UInt64(bucketBounds.count + 1)
      words[4] = UInt64(getpid())
      words[1] = version
      words[0] = magic
    }

    /// Counts one request of `op` that took `nanoseconds`.
    @inline(__always)
    public func record(_ op: Op, nanoseconds: UInt64, failed: Bool) {
      let at = words + headerWords + op.rawValue * wordsPerOp
      shim_add_relaxed(at, 1)
      if failed { shim_add_relaxed(at + 1, 1) }
      shim_add_relaxed(at + 2, nanoseconds)
      let micros = nanoseconds / 1000
      var bucket = 0
      while bucket < bucketBounds.count && micros > bucketBounds[bucket] { bucket += 1 }
      shim_add_relaxed(at + 3 + bucket, 1)
    }

    /// Removes the file (the mount is gone).
    public func remove() { try? Sys.unlink(path) }
  }
}
