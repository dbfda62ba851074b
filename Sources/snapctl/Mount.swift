import ArgumentParser
import FuseStats
import SnapshotCore
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

extension Mount {
  /// Performs this mount at `target` as containerd's `mount.All` would: `bind`/`rbind`
  /// with `ro` as a bind mount remounted read-only, `fuse3.PROGRAM` by running PROGRAM
  /// (snapfs) as `mount.fuse3` would, anything else (`overlay`) with its options as the
  /// mount data.
  func perform(at target: String) throws(SystemError) {
    if let dot = type.firstIndex(of: "."), ["fuse", "fuse3"].contains(type[..<dot]) {
      let name = String(type[type.index(after: dot)...])
      guard let program = Sys.findProgram(name) else {
        throw SystemError("mount", "\(target): \(name) is not installed (beside this program or on PATH)", errno: ENOENT)
      }
      let status = try Sys.run(program, [source, target, "-o", options.joined(separator: ",")])
      guard status == 0 else { throw SystemError("mount", "\(target): \(program) exited with status \(status)", errno: EIO) }
      return
    }
    var flags: UInt = 0
    var data: [String] = []
    for option in options {
      switch option {
      case "rw": break
      case "bind": flags |= UInt(MS_BIND)
      case "rbind": flags |= UInt(MS_BIND) | UInt(MS_REC)
      default:
        if let flag = Sys.mountFlag(named: option) { flags |= flag } else { data.append(option) }
      }
    }
    let joined = data.joined(separator: ",")
    if flags & UInt(MS_BIND) != 0 {
      try Sys.mount(source: source, target: target, type: "", flags: flags & ~UInt(MS_RDONLY), data: nil)
      if flags & UInt(MS_RDONLY) != 0 {
        try Sys.mount(source: "", target: target, type: "", flags: flags | UInt(MS_REMOUNT), data: nil)
      }
      return
    }
    if joined.utf8.count >= Int(getpagesize()) {
      throw SystemError("mount", target + " (options are \(joined.utf8.count) bytes, more than a page)", errno: E2BIG)
    }
    try Sys.mount(source: source, target: target, type: type, flags: flags, data: joined)
  }
}

/// `snapctl fuse-stats MOUNTPOINT`: a snapfs mount's requests by operation, from the file
/// snapfs keeps (`FuseStats`); no daemon, and no request to the mount itself.
struct FuseStatsCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fuse-stats",
    abstract: "Show a snapfs mount's requests by operation: count, errors, mean and p50/p99 latency.")
  @OptionGroup var client: ClientOptions  // --json; the address is accepted for symmetry (no daemon needed)
  @Argument(help: "A snapfs mount point (or its device, MAJOR:MINOR).") var target: String

  func run() async throws {
    try await reporting {
      let (major, minor) = try device()
      let report: FuseStats.Report
      do { report = try FuseStats.read(major: major, minor: minor) } catch {
        throw Failure("\(target) (\(major):\(minor)) has no snapfs statistics: \(error)", code: 3)
      }
      let used = report.operations.filter { $0.count > 0 }
      if client.json {
        let ops = used.map { f in
          "{\"op\":\"\(f.op.name)\",\"count\":\(f.count),\"errors\":\(f.failures),\"nanoseconds\":\(f.nanoseconds),"
            + "\"buckets\":[\(f.buckets.map(String.init).joined(separator: ","))]}"
        }
        let bounds = FuseStats.bucketBounds.map(String.init).joined(separator: ",")
        print("{\"pid\":\(report.pid),\"bucketMicroseconds\":[\(bounds)],\"operations\":[\(ops.joined(separator: ","))]}")
        return
      }
      func quantile(_ f: FuseStats.Figures, _ q: Double) -> String {
        switch f.quantile(q) {
        case .some(.some(let bound)): "≤\(bound)µs"
        case .some(.none): ">\(FuseStats.bucketBounds.last!)µs"
        case .none: "-"
        }
      }
      print("snapfs pid \(report.pid), device \(major):\(minor)")
      Output.table(
        ["OPERATION", "COUNT", "ERRORS", "MEAN", "P50", "P99"],
        used.map { f in
          [
            f.op.name, "\(f.count)", "\(f.failures)", "\(f.nanoseconds / max(f.count, 1) / 1000)µs", quantile(f, 0.5),
            quantile(f, 0.99),
          ]
        })
    }
  }

  /// The mount's device number: from MAJOR:MINOR, or the mount point in mountinfo (a stat
  /// of a hung mount would hang).
  func device() throws -> (UInt32, UInt32) {
    let parts = target.split(separator: ":")
    if parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) { return (major, minor) }
    let path: String
    do { path = try Sys.realPath(target) } catch { throw Failure("\(target): \(error)", code: 3) }
    let mounts: [MountInfo]
    do { mounts = try MountInfo.current() } catch { throw Failure("cannot read the mount table: \(error)") }
    guard let mount = mounts.last(where: { $0.mountPoint == path }) else { throw Failure("\(target) is not a mount point", code: 3) }
    guard mount.fsType == "fuse.snapfs" else { throw Failure("\(target) is a \(mount.fsType) mount, not snapfs", code: 2) }
    return (mount.major, mount.minor)
  }
}
