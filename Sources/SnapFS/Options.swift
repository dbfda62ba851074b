/// snapfs's command line, which is fuse-overlayfs's (and so what `mount.fuse3` passes):
///
///     snapfs [SOURCE] TARGET -o lowerdir=A:B:C[,upperdir=U,workdir=W][,OPTION...] [-f] [-d]
///
/// `lowerdir`'s first entry is the topmost layer, as for overlayfs. Mount flags (ro, nosuid,
/// nodev, noexec, ...) go to the kernel; overlayfs options snapfs has no use for (index,
/// xino, redirect_dir, metacopy, volatile) are accepted and ignored so that the same option
/// list mounts either way. Anything else is an error.
public struct Options: Equatable, Sendable {
  public var target = ""
  public var source = "snapfs"
  public var lowers: [String] = []
  public var upper: String?
  public var work: String?
  /// `user.overlay.*` instead of `trusted.overlay.*` for whiteouts' and opaque dirs' xattrs.
  public var userXattr = false
  public var foreground = false
  public var debug = false
  /// Options passed on to libfuse's mount (ro, nosuid, fsname=, ...).
  public var mountOptions: [String] = []
  public var threads = 8
  /// FUSE passthrough of regular files where the kernel offers it (`passthrough=off` turns
  /// it off: every read and write of an open file is then a request, with the writeback cache).
  public var passthrough = true

  public static let usage = "usage: snapfs [SOURCE] TARGET -o lowerdir=A:B[,upperdir=U,workdir=W] [-f] [-d]"

  public init() {}

  public struct Invalid: Error, CustomStringConvertible {
    public let description: String
  }

  public static func parse(_ arguments: [String]) throws(Invalid) -> Options {
    var options = Options()
    var positional: [String] = []
    var i = 0
    while i < arguments.count {
      let arg = arguments[i]
      switch arg {
      case "-f": options.foreground = true
      case "-d", "--debug": options.debug = true; options.foreground = true
      case "-o":
        i += 1
        guard i < arguments.count else { throw Invalid(description: "-o needs a value") }
        try options.apply(arguments[i])
      default:
        if arg.hasPrefix("-o") {
          try options.apply(String(arg.dropFirst(2)))
        } else if arg.hasPrefix("-") {
          throw Invalid(description: "unknown flag \(arg)")
        } else {
          positional.append(arg)
        }
      }
      i += 1
    }
    switch positional.count {
    case 1: options.target = positional[0]
    case 2: options.source = positional[0]; options.target = positional[1]
    default: throw Invalid(description: "expected TARGET or SOURCE TARGET, got \(positional.count) arguments")
    }
    guard !options.lowers.isEmpty else { throw Invalid(description: "lowerdir= is required") }
    guard (options.upper == nil) == (options.work == nil) else {
      throw Invalid(description: "upperdir= and workdir= go together")
    }
    return options
  }

  private mutating func apply(_ list: String) throws(Invalid) {
    for option in list.split(separator: ",", omittingEmptySubsequences: true).map(String.init) {
      let (key, value) = option.firstIndex(of: "=").map { (String(option[..<$0]), String(option[option.index(after: $0)...])) } ?? (option, "")
      switch key {
      case "lowerdir":
        lowers = value.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        if lowers.contains(where: \.isEmpty) { throw Invalid(description: "lowerdir=\(value): empty layer path") }
      case "upperdir": upper = value
      case "workdir": work = value
      case "userxattr": userXattr = true
      case "passthrough":
        switch value {
        case "", "on": passthrough = true
        case "off": passthrough = false
        default: throw Invalid(description: "passthrough=\(value): expected on or off")
        }
      case "threads":
        guard let n = Int(value), n > 0, n <= 256 else { throw Invalid(description: "threads=\(value): expected 1...256") }
        threads = n
      // overlayfs's own knobs: meaningless here, accepted so the same options mount both ways.
      case "index", "xino", "redirect_dir", "metacopy", "volatile", "nfs_export", "uuid", "default_permissions", "allow_other":
        break
      // Generic mount flags and libfuse mount options.
      case "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "sync", "async", "dirsync",
        "noatime", "fsname", "max_read", "blksize":
        mountOptions.append(option)
      // Flags libfuse does not pass on, and our own subtype, which is fixed.
      case "atime", "relatime", "norelatime", "strictatime", "lazytime", "nolazytime", "subtype":
        break
      default:
        throw Invalid(description: "unknown option \(option)")
      }
    }
  }
}
