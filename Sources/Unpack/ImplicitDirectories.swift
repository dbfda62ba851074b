import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Directories a layer's tar holds entries below without naming them (implicit parents).
///
/// containerd applies a layer to an overlay's upper dir and makes such a directory with the
/// metadata of the same directory in the lower dirs (`archive.mkparent`): mode (setgid too),
/// owner and xattrs; if none has it, 0755 root. A layer of the store is unpacked
/// once and shared, so the unpacker makes them 0755 root and lists them; a chain whose
/// lower layers have any of them gets its own copy of the layer with their metadata
/// (`LayerImporter`), named by the `signature` of what it changed.
public enum ImplicitDirectories {
  /// What an implicit directory takes from below.
  public struct Metadata: Sendable, Equatable {
    public var mode: mode_t
    public var uid: uid_t
    public var gid: gid_t
    public var xattrs: [String: [UInt8]]

    /// A directory no lower layer has, as containerd makes it (`MkdirAll(0755)`).
    public static let made = Metadata(mode: 0o755, uid: 0, gid: 0, xattrs: [:])
  }

  /// Each of `paths` (relative to a layer's root) as containerd's applier finds it in the
  /// layers `lowers` (directories, the topmost first) when it makes a missing parent
  /// (`archive.mkparent` with the overlay's lower dirs as parents): the first layer that has
  /// the name decides; a directory gives its mode, owner and xattrs but `trusted.*`; anything
  /// else (a whiteout, a file) gives `made`, as does no layer having it. Symlinks on the way
  /// are not followed out of a layer (they count as not a directory).
  public static func resolve(_ paths: [String], lowers: [String]) throws(SystemError) -> [String: Metadata] {
    var out: [String: Metadata] = [:]
    for path in paths { out[path] = try resolve(path, lowers: lowers) ?? .made }
    return out
  }

  private static func resolve(_ path: String, lowers: [String]) throws(SystemError) -> Metadata? {
    for layer in lowers {
      let root = try At.openDirectory(layer)
      defer { At.close(root) }
      let fd: Int32
      do { fd = try At.openBeneath(root, path, flags: O_RDONLY | O_DIRECTORY) } catch {
        if error.errno == ENOENT { continue }  // not in this layer: the next one down
        if error.errno == ENOTDIR || error.errno == ELOOP || error.errno == EXDEV { return nil }
        throw error
      }
      defer { At.close(fd) }
      let st = try At.fstat(fd, path)
      var own: [String: [UInt8]] = [:]
      for (x, value) in try At.xattrs(fd, path) where !x.hasPrefix("trusted.") { own[x] = value }
      return Metadata(mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid, xattrs: own)
    }
    return nil
  }

  /// Gives the directories of a layer in memory the metadata `fixes` names (overlayfs's
  /// xattrs stay).
  public static func apply(_ fixes: [String: Metadata], in tree: LayerTree) {
    for (path, meta) in fixes {
      let parts = path.utf8.split(separator: 0x2F).map { Array($0) }
      guard let node = tree.lookup(parts[...]), node.isDirectory else { continue }
      node.meta.uid = meta.uid
      node.meta.gid = meta.gid
      node.meta.mode = meta.mode
      node.meta.xattrs =
        (node.meta.xattrs.filter { OverlayXattr.isOverlay($0.name) } + meta.xattrs.map { (name: $0.key, value: $0.value) })
        .sorted { $0.name < $1.name }
    }
  }

  /// A short name for what `fixes` changes, nil when every directory is as the unpacker
  /// made it (the shared layer serves).
  public static func signature(_ fixes: [String: Metadata]) -> String? {
    let changed = fixes.filter { $0.value != .made }.sorted { $0.key < $1.key }
    guard !changed.isEmpty else { return nil }
    var text: [UInt8] = []
    for (path, m) in changed {
      text += Array("\(path)\u{0}\(m.mode) \(m.uid) \(m.gid)\u{0}".utf8)
      for (name, value) in m.xattrs.sorted(by: { $0.key < $1.key }) { text += Array(name.utf8) + [0] + value + [0] }
      text.append(0x0A)
    }
    return String(Digest.of(text).hex.prefix(16))
  }
}
