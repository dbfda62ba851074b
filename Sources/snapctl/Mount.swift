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
