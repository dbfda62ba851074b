import CSysShims

#if canImport(Glibc)
  import Glibc
#endif

/// One line of `/proc/<pid>/mountinfo` (proc(5)): a mount of the mount namespace.
///
///     36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
///
/// `root`, `mountPoint` and `source` have the kernel's octal escapes (`\040` for a space,
/// `\011`, `\012`, `\134`) decoded; options are as the kernel shows them, split at commas.
public struct MountInfo: Sendable, Equatable {
  public var id: Int
  public var parent: Int
  /// The device of the file system (`st_dev` of its files).
  public var major: UInt32
  public var minor: UInt32
  /// The directory of the file system that is the root of this mount (not "/" for a bind
  /// mount of a subdirectory).
  public var root: String
  public var mountPoint: String
  /// Per-mount options (`rw`, `nosuid`, `relatime`, ...).
  public var options: [String]
  /// Tagged fields (`shared:N`, `master:N`, ...).
  public var optionalFields: [String]
  public var fsType: String
  public var source: String
  /// Per-superblock options (an overlay's `lowerdir=...`).
  public var superOptions: [String]

  public init(
    id: Int, parent: Int, major: UInt32, minor: UInt32, root: String, mountPoint: String, options: [String],
    optionalFields: [String] = [], fsType: String, source: String, superOptions: [String]
  ) {
    self.id = id
    self.parent = parent
    self.major = major
    self.minor = minor
    self.root = root
    self.mountPoint = mountPoint
    self.options = options
    self.optionalFields = optionalFields
    self.fsType = fsType
    self.source = source
    self.superOptions = superOptions
  }

  /// The mounts of this process's mount namespace, in the kernel's order (a parent before
  /// what is mounted on it).
  public static func current() throws(SystemError) -> [MountInfo] {
    parse(try Sys.readAll("/proc/self/mountinfo"))
  }

  /// The mounts in the text of a mountinfo file; a line that does not have the format is
  /// left out.
  public static func parse(_ text: String) -> [MountInfo] { parse(Array(text.utf8)) }

  /// The same, from the file's bytes (split as bytes: a Commit reads this file, and
  /// splitting by Character costs more than the rest of the call).
  public static func parse(_ bytes: [UInt8]) -> [MountInfo] {
    bytes.split(separator: 0x0A).compactMap(MountInfo.init(bytes:))
  }

  /// One line, or nil when it does not have the format.
  init?(bytes line: ArraySlice<UInt8>) {
    let f = line.split(separator: 0x20, omittingEmptySubsequences: false)
    guard f.count >= 10, let separator = f[6...].firstIndex(where: { $0.elementsEqual([0x2D]) }), f.count == separator + 4 else {
      return nil
    }
    let device = f[2].split(separator: 0x3A, omittingEmptySubsequences: false)
    func text(_ b: ArraySlice<UInt8>) -> String { String(decoding: b, as: UTF8.self) }
    guard let id = Int(text(f[0])), let parent = Int(text(f[1])), device.count == 2,
      let major = UInt32(text(device[0])), let minor = UInt32(text(device[1]))
    else { return nil }
    self.init(
      id: id, parent: parent, major: major, minor: minor,
      root: Self.unescape(f[3]), mountPoint: Self.unescape(f[4]), options: Self.split(f[5]),
      optionalFields: f[6..<separator].map(text), fsType: text(f[separator + 1]),
      source: Self.unescape(f[separator + 2]), superOptions: Self.split(f[separator + 3]))
  }

  /// Whether the mount's file system is the device `dev` (a `st_dev`).
  public func isDevice(_ dev: UInt64) -> Bool {
    major == shim_major(UInt(dev)) && minor == shim_minor(UInt(dev))
  }

  private static func split(_ field: ArraySlice<UInt8>) -> [String] {
    field.split(separator: 0x2C).map { String(decoding: $0, as: UTF8.self) }
  }

  /// Decodes the kernel's `\ooo` escapes (three octal digits).
  static func unescape(_ field: Substring) -> String { unescape(Array(field.utf8)[...]) }

  static func unescape(_ field: ArraySlice<UInt8>) -> String {
    let bytes = Array(field)
    guard bytes.contains(UInt8(ascii: "\\")) else { return String(decoding: bytes, as: UTF8.self) }
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = 0
    func octal(_ c: UInt8) -> UInt8? { c >= 0x30 && c <= 0x37 ? c - 0x30 : nil }
    while i < bytes.count {
      if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
        let a = octal(bytes[i + 1]), let b = octal(bytes[i + 2]), let c = octal(bytes[i + 3]), a <= 3
      {
        out.append(a << 6 | b << 3 | c)
        i += 4
      } else {
        out.append(bytes[i])
        i += 1
      }
    }
    return String(decoding: out, as: UTF8.self)
  }
}

extension Sys {
  /// Detaches (`MNT_DETACH`) every mount at or below `path`, deepest first: before a tree
  /// holding mount points (layer images) is removed. A mount still using one keeps it.
  public static func detachMounts(under path: String) throws(SystemError) {
    let points = try MountInfo.current().map(\.mountPoint).filter { $0 == path || $0.hasPrefix(path + "/") }
    for point in points.sorted(by: { $0.count > $1.count }) {
      do { try unmount(point, flags: Int32(MNT_DETACH)) } catch  where error.errno == EINVAL || error.errno == ENOENT {}
    }
  }
}
