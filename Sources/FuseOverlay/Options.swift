/// snapfs's command line, which is fuse-overlayfs's (and so what `mount.fuse3` passes):
///
///     snapfs [SOURCE] TARGET -o lowerdir=A:B:C[::D...][,upperdir=U,workdir=W][,OPTION...] [-f] [-d]
///
/// `lowerdir`'s first entry is the topmost layer, as for overlayfs; entries after a `::` are
/// data-only layers (`A:B::D1::D2`, see `Overlay`), as overlayfs has them since Linux 6.5,
/// with its escapes (`\:` is a colon in a path). `metacopy=on|off` is overlayfs's: whether
/// metacopy files in layers above the bottom one are followed. Mount flags (ro, nosuid,
/// nodev, noexec, ...) go to the kernel. `redirect_dir` decides, as overlayfs's does, whether
/// lower layers' renamed directories are followed (snapfs itself makes no redirects, see
/// `followsRedirects`). Overlayfs options snapfs has no use for (index, xino, volatile) are
/// accepted and ignored so that the same option list mounts either way; combinations
/// overlayfs refuses (metacopy=on with userxattr or with a redirect_dir other than on) are
/// refused too. Anything else is an error.
public struct Options: Equatable, Sendable {
  public var target = ""
  public var source = "snapfs"
  /// The normal lower layers, topmost first.
  public var lowers: [String] = []
  /// Data-only lower layers (after `::` in `lowerdir`): never part of the merged tree, only
  /// searched for the data of metacopy files by their absolute redirect, in this order.
  public var dataLowers: [String] = []
  public var upper: String?
  public var work: String?
  /// `user.overlay.*` instead of `trusted.overlay.*` for whiteouts', opaque dirs' and
  /// metacopy files' xattrs.
  public var userXattr = false
  /// overlayfs's `metacopy`: off, a metacopy file is refused (EPERM) unless it is in the
  /// bottom normal layer and redirects into a data-only layer; on, metacopy files of every
  /// layer are followed (see `Overlay`). nil: overlayfs's default on this host (see
  /// `effectiveMetacopy`).
  public var metacopy: Bool?
  public var foreground = false
  /// `volatile`, as overlayfs's: fsync and fsyncdir return at once without syncing (as
  /// fuse-overlayfs's fsync=0), for containers whose writes need not survive a crash.
  public var volatile = false
  public var debug = false
  /// Options passed on to libfuse's mount (ro, nosuid, fsname=, ...).
  public var mountOptions: [String] = []
  public var threads = 8
  /// FUSE passthrough of regular files where the kernel offers it (`passthrough=off` turns
  /// it off: every read and write of an open file is then a request, with the writeback cache).
  public var passthrough = true
  /// `cached_reads_max=BYTES`: lower files up to this size are read through the mount's own
  /// page cache instead of passthrough, so a warm read waits for no GETATTR (see
  /// `Passthrough`); 0 reads every file through passthrough. At most 1 MiB: a file's first
  /// open reads it whole before its reply.
  public var cachedReadsMax: Int64 = 64 << 10
  /// `busy_poll=USEC`: how long a thread that served a request polls for the next one before
  /// it sleeps, while requests come that often (see CFuseIO's `fuseio_read`); 0 never polls.
  public var busyPollMicroseconds = 20

  /// Mounted read-only: `ro` (unless a later `rw` undoes it).
  public var readOnly: Bool { flag("ro", off: "rw") }
  /// `nosuid` and `nodev` (the mount gets them only when asked: see `serve`).
  public var nosuid: Bool { flag("nosuid", off: "suid") }
  public var nodev: Bool { flag("nodev", off: "dev") }

  /// A mount flag given as `on` or `off`: the last one given wins; neither is off.
  private func flag(_ on: String, off: String) -> Bool { mountOptions.last(where: { $0 == on || $0 == off }) == on }

  public static let usage = "usage: snapfs [SOURCE] TARGET -o lowerdir=A:B[::DATA][,upperdir=U,workdir=W] [-f] [-d]"

  /// `redirect_dir=` as given: snapfs creates no redirects; it follows them in lower layers
  /// (`followsRedirects`).
  var redirectDir: String?

  /// `metacopy`, or when not given overlayfs's default: its module parameter (`Y` where the
  /// kernel is built with OVERLAY_FS_METACOPY or booted with overlay.metacopy=Y), off with
  /// userxattr or a redirect_dir other than on, as overlayfs has it.
  /// `moduleDefault` reads the parameter (false when overlayfs is not loaded).
  func effectiveMetacopy(moduleDefault: () -> Bool) -> Bool {
    if let metacopy { return metacopy }
    if userXattr || (redirectDir != nil && redirectDir != "on") { return false }
    return moduleDefault()
  }

  /// Whether lower layers' renamed directories (their `redirect` xattr) are followed, as
  /// overlayfs has it: not with redirect_dir=nofollow; with =off, or none given where the
  /// kernel's default is off, only where the module's `redirect_always_follow` is set
  /// (`alwaysFollow`; Y by default). metacopy=on turns redirects on.
  func followsRedirects(metacopy: Bool, alwaysFollow: () -> Bool) -> Bool {
    switch redirectDir {
    case "nofollow": return false
    case "on", "follow": return true
    default: return metacopy || alwaysFollow()
    }
  }

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
      case "-d", "--debug":
        options.debug = true
        options.foreground = true
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
    case 2:
      options.source = positional[0]
      options.target = positional[1]
    default: throw Invalid(description: "expected TARGET or SOURCE TARGET, got \(positional.count) arguments")
    }
    guard !options.lowers.isEmpty else { throw Invalid(description: "lowerdir= is required") }
    guard (options.upper == nil) == (options.work == nil) else {
      throw Invalid(description: "upperdir= and workdir= go together")
    }
    // As overlayfs: metacopy needs trusted xattrs, and redirects it may create.
    if options.metacopy == true && options.userXattr {
      throw Invalid(description: "conflicting options: userxattr,metacopy=on")
    }
    if options.metacopy == true, let mode = options.redirectDir, mode != "on" {
      throw Invalid(description: "conflicting options: metacopy=on,redirect_dir=\(mode)")
    }
    return options
  }

  private mutating func apply(_ list: String) throws(Invalid) {
    for option in list.split(separator: ",", omittingEmptySubsequences: true).map(String.init) {
      let (key, value) =
        option.firstIndex(of: "=").map { (String(option[..<$0]), String(option[option.index(after: $0)...])) } ?? (option, "")
      switch key {
      case "lowerdir":
        (lowers, dataLowers) = try Self.lowerdir(value)
      case "upperdir": upper = value
      case "workdir": work = value
      case "userxattr": userXattr = true
      case "passthrough":
        switch value {
        case "", "on": passthrough = true
        case "off": passthrough = false
        default: throw Invalid(description: "passthrough=\(value): expected on or off")
        }
      case "cached_reads_max":
        guard let n = Int64(value), n >= 0, n <= 1 << 20 else {
          throw Invalid(description: "cached_reads_max=\(value): expected 0...1048576 (bytes)")
        }
        cachedReadsMax = n
      case "busy_poll":
        guard let n = Int(value), n >= 0, n <= 1000 else {
          throw Invalid(description: "busy_poll=\(value): expected 0...1000 (microseconds)")
        }
        busyPollMicroseconds = n
      case "threads":
        guard let n = Int(value), n > 0, n <= 256 else { throw Invalid(description: "threads=\(value): expected 1...256") }
        threads = n
      case "metacopy":
        switch value {
        case "on": metacopy = true
        case "off": metacopy = false
        default: throw Invalid(description: "metacopy=\(value): expected on or off")
        }
      case "redirect_dir": redirectDir = value
      // overlayfs's own knobs: meaningless here, accepted so the same options mount both ways.
      case "volatile": volatile = true
      case "index", "xino", "nfs_export", "uuid", "default_permissions", "allow_other":
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

  /// overlayfs's `lowerdir=` syntax: normal layers separated by `:`, then data-only layers
  /// each after a `::`; a backslash escapes the next character (a `:` or `\` in a path).
  /// As overlayfs, refuses an empty path, `:::`, trailing colons, and a normal layer after
  /// a data-only one.
  static func lowerdir(_ value: String) throws(Invalid) -> (lowers: [String], data: [String]) {
    func invalid(_ why: String) -> Invalid { Invalid(description: "lowerdir=\(value): \(why)") }
    var pieces: [(path: String, data: Bool)] = []
    var path = String.UnicodeScalarView()
    var escaped = false
    var colons = 0
    var data = false
    for c in value.unicodeScalars {  // scalars: a combining mark must not hide a colon
      if !escaped && c == ":" {
        if colons == 0 {  // the end of a path
          pieces.append((String(path), data))
          path = String.UnicodeScalarView()
        }
        colons += 1
        guard colons <= 2 else { throw invalid("only single ':' or double '::' separators are allowed") }
        continue
      }
      // The separator before a path says its kind: after a `::`, all are data-only.
      if colons == 2 {
        data = true
      } else if colons == 1 && data {
        throw invalid("a normal layer cannot follow a data-only layer")
      }
      colons = 0
      if escaped || c != "\\" {
        path.append(c)
        escaped = false
      } else {
        escaped = true
      }
    }
    if colons > 0 { throw invalid("trailing colons") }
    if escaped { throw invalid("trailing backslash") }
    pieces.append((String(path), data))
    if pieces.contains(where: \.path.isEmpty) { throw invalid("empty layer path") }
    return (pieces.filter { !$0.data }.map(\.path), pieces.filter(\.data).map(\.path))
  }
}
