import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Directories a layer's tar holds entries below without naming them (implicit parents).
///
/// containerd applies a layer through a mount of its parent chain: such a directory, if a
/// lower layer has it, is copied up by overlayfs with that directory's mode (setgid too),
/// owner and xattrs; if none has it, it is made 0755 root. A layer of the store is unpacked
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

  /// Each of `paths` (relative to a layer's root) as the layers `lowers` (directories, the
  /// topmost first) show it merged, overlayfs's way: the topmost layer that has the name
  /// decides; a whiteout, a non-directory or an opaque directory on the way hides what is
  /// below. `made` where no lower layer has a directory there.
  public static func resolve(_ paths: [String], lowers: [String]) throws(SystemError) -> [String: Metadata] {
    var out: [String: Metadata] = [:]
    for path in paths { out[path] = try resolve(path, lowers: lowers) ?? .made }
    return out
  }

  private static func resolve(_ path: String, lowers: [String]) throws(SystemError) -> Metadata? {
    let parts = path.split(separator: "/").map(String.init)
    for layer in lowers {
      var dir = try At.openDirectory(layer)
      var hidesBelow = false
      var found: Metadata?
      var stop = false
      for (i, name) in parts.enumerated() {
        guard let st = try At.lstat(dir, name) else { break }  // not in this layer: look below
        if st.st_mode & S_IFMT != S_IFDIR {
          stop = true  // a whiteout or a file hides the name from the layers below
          break
        }
        let child = try At.open(dir, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        At.close(dir)
        dir = child
        let xattrs = try At.xattrs(dir, name)
        if i == parts.count - 1 {
          var own: [String: [UInt8]] = [:]
          for (x, value) in xattrs where !OverlayXattr.isOverlay(x) { own[x] = value }
          found = Metadata(mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid, xattrs: own)
        } else if xattrs.contains(where: { $0.0 == OverlayXattr.trusted.opaque && $0.1 == Array("y".utf8) }) {
          hidesBelow = true
        }
      }
      At.close(dir)
      if let found { return found }
      if stop || hidesBelow { return nil }
    }
    return nil
  }

  /// Gives the directories of `layer` the metadata `fixes` names.
  public static func apply(_ fixes: [String: Metadata], in layer: String) throws(SystemError) {
    let root = try At.openDirectory(layer)
    defer { At.close(root) }
    for (path, meta) in fixes.sorted(by: { $0.key < $1.key }) {
      let fd = try At.openBeneath(root, path, flags: O_RDONLY | O_DIRECTORY)
      defer { At.close(fd) }
      try At.fchown(fd, path, uid: meta.uid, gid: meta.gid)
      try At.fchmod(fd, path, mode: meta.mode)  // after chown, which may clear setgid
      for (name, _) in try At.xattrs(fd, path) where !OverlayXattr.isOverlay(name) && meta.xattrs[name] == nil {
        try At.removeXattr(fd, path, name: name)
      }
      for (name, value) in meta.xattrs.sorted(by: { $0.key < $1.key }) { try At.setXattr(fd, path, name: name, value: value) }
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
