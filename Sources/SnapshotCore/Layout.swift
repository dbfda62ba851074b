import SnapshotSys
import Unpack

#if canImport(Glibc)
  import Glibc
#endif

/// Where things live under the root directory. Directory names are short on purpose:
/// an overlay `lowerdir=` option for a 128-layer chain must fit in one page (mounts name
/// the root by a short `alias`).
///
///     ROOT/metadata.db      SQLite (WAL) metadata
///     ROOT/lock             locked (lockf) by the running daemon
///     ROOT/s/<id>/fs        a snapshot's files (overlay upper dir, or a lower layer)
///     ROOT/s/<id>/work      overlay work dir of an active snapshot
///     ROOT/s/new-<id>       a snapshot directory being made (then renamed to <id> and fsync'd)
///     ROOT/l/<id>           an imported layer (one per diffID), shared by every chain holding it:
///                           its regular files are stubs of objects (see `ObjectStore`); the
///                           mount point of its image, or a directory (`LayerImages`)
///     ROOT/l/<id>.erofs     the layer's EROFS image
///     ROOT/l/new-<n>[.erofs] a layer being committed
///     ROOT/o/<xx>/<14 hex>  file data, once per content; a data-only layer of every overlay
///     ROOT/tmp/             image archives being read, stubs being made
///
/// Directories are made ahead of time (`DirectoryPool`): `s/<id>` may exist before the
/// snapshot <id> does.
public struct Layout: Sendable {
  public let root: String
  /// A short path to the root, `/run/sd/<6 hex of the root's SHA-256>`, a symlink made at
  /// start, by which mounts name their lower layers and the object directory. A 128-layer
  /// chain's `lowerdir=` must fit in a page: containerd's own way of shortening a longer one
  /// (paths relative to their common directory, split on ":") cannot handle the `::` before
  /// the data-only layer, and roots can be long.
  public let alias: String
  /// The directory of the aliases: `defaultAliasBase` for the daemon; a test that runs as
  /// any user gives one of its own.
  public let aliasBase: String
  public static let defaultAliasBase = "/run/sd"

  public init(root: String, aliasBase: String = Layout.defaultAliasBase) {
    var r = root
    while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
    self.root = r
    self.aliasBase = aliasBase
    alias = aliasBase + "/" + Digest.of(Array(r.utf8)).hex.prefix(6)
  }

  /// Modes of a snapshot's directory, its `fs` and its `work` as they are made.
  static let dirMode: mode_t = 0o700, fsMode: mode_t = 0o755, workMode: mode_t = 0o711

  public var database: String { root + "/metadata.db" }
  public var lockFile: String { root + "/lock" }
  public var snapshots: String { root + "/s" }
  public func dir(_ id: Int64) -> String { snapshots + "/" + String(id) }
  public func fs(_ id: Int64) -> String { dir(id) + "/fs" }
  public func work(_ id: Int64) -> String { dir(id) + "/work" }
  public func staging(_ id: Int64) -> String { snapshots + "/new-" + String(id) }
  public var layers: String { root + "/l" }
  public func layer(_ id: Int64) -> String { layers + "/" + String(id) }
  public var objects: String { root + "/o" }
  public var temporary: String { root + "/tmp" }

  /// The directory holding a snapshot's files: its layer's, or its own.
  func files(id: Int64, layer: Int64?) -> String { layer.map { self.layer($0) } ?? fs(id) }

  /// The same directory as mounts name it, through `alias`.
  func lower(id: Int64, layer: Int64?) -> String {
    layer.map { alias + "/l/" + String($0) } ?? alias + "/s/" + String(id) + "/fs"
  }

  /// A size-limited active snapshot's file system (`WritableLimit`): its mount point,
  /// holding `fs` (the upper dir) and `work`, and its image file.
  func writable(_ id: Int64) -> String { dir(id) + "/rw" }
  func writableImage(_ id: Int64) -> String { dir(id) + "/rw.img" }
  /// An active snapshot's upper and work dirs: in its own file system when it is limited.
  func upper(_ id: Int64, limited: Bool) -> String { limited ? writable(id) + "/fs" : fs(id) }
  func workDir(_ id: Int64, limited: Bool) -> String { limited ? writable(id) + "/work" : work(id) }

  /// Marks of the volatile snapshots prepared since the host started (`Volatile`): beside
  /// the alias in /run, which a restart empties.
  var volatileMarks: String { alias + ".volatile" }
  func volatileMark(_ id: Int64) -> String { volatileMarks + "/" + String(id) }
  /// What a volatile overlayfs mount leaves in its work dir: while it holds `volatile`,
  /// the kernel refuses to mount that work dir again.
  func volatileIncompat(_ id: Int64, limited: Bool) -> String { workDir(id, limited: limited) + "/work/incompat" }

  /// The object directory as mounts name it.
  var aliasObjects: String { alias + "/o" }

  /// Makes `alias` name the root, replacing what it named unless that is another root that
  /// still exists (two roots whose digests share 6 hex digits: 1 in 16 million).
  func makeAlias() throws(SystemError) {
    if let other = Sys.readLink(alias), other != root, Sys.exists(other + "/metadata.db") {
      throw SystemError(
        "symlink", "\(alias) names the root \(other) already; roots whose SHA-256 begin alike cannot be used at once", errno: EEXIST)
    }
    try Sys.mkdirAll(aliasBase, mode: 0o755)
    let dir = try At.openDirectory(aliasBase)
    defer { At.close(dir) }
    let name = String(alias.dropFirst(aliasBase.count + 1))
    let temp = Sys.temporaryName(name + ".new")
    try? At.unlink(dir, temp)
    try At.symlink(root, dir, temp)
    try At.rename(dir, temp, dir, name)
  }

  /// Names of trees in the object reference table.
  static func tree(layer: Int64) -> String { "l/" + String(layer) }
  static func tree(snapshot: Int64) -> String { "s/" + String(snapshot) }

  /// The id of a staging directory name (`new-<id>`), if it is one.
  public static func id(ofStaging name: String) -> Int64? {
    name.hasPrefix("new-") ? id(ofDirectory: String(name.dropFirst(4))) : nil
  }

  /// The layer id an entry of `layers` belongs to: its directory `<id>` or its image
  /// `<id>.erofs` (nil for staging and anything else).
  public static func id(ofLayerEntry name: String) -> Int64? {
    id(ofDirectory: name.hasSuffix(LayerImages.suffix) ? String(name.dropLast(LayerImages.suffix.count)) : name)
  }

  /// The snapshot id a directory name in `snapshots` stands for, if it is one.
  public static func id(ofDirectory name: String) -> Int64? {
    guard let first = name.utf8.first, first >= 0x30, first <= 0x39 else { return nil }
    return Int64(name)
  }
}
