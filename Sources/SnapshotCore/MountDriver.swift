import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// How snapshots with parents are composed: kernel overlayfs, or snapfs (our FUSE overlay
/// file system, mount type `fuse3.snapfs`) where overlayfs cannot be used. Both take the
/// same options; bind mounts (a snapshot without parent, a view of one layer) are the same
/// for both.
public enum MountDriver: String, Sendable, CaseIterable {
  case overlay
  case fuse

  /// The mount type containerd is given for a composed snapshot.
  var mountType: String { self == .overlay ? "overlay" : "fuse3.snapfs" }
  var mountSource: String { self == .overlay ? "overlay" : "snapfs" }

  /// `--driver auto`: overlay if an overlayfs mount with a data-only lower layer (Linux 6.5+,
  /// which stubs need) works on the file system of `root` (with its upper and work dirs
  /// there), else fuse, which implements the same. Answers the choice and why.
  public static func probe(root: String) -> (MountDriver, String) {
    let dir = Layout(root: root).temporary + "/" + Sys.temporaryName("driver-probe")
    defer {
      _ = try? Sys.unmount(dir + "/m", flags: Int32(MNT_DETACH))
      try? Tree.remove(dir)
    }
    do {
      try Sys.mkdirAll(dir, mode: 0o700)
      for sub in ["l1", "l2", "d", "u", "w", "m"] { try Sys.mkdir(dir + "/" + sub, mode: 0o755) }
      try Sys.mount(
        source: "overlay", target: dir + "/m", type: "overlay", flags: 0,
        data: "index=off,metacopy=on,lowerdir=\(dir)/l1:\(dir)/l2::\(dir)/d,upperdir=\(dir)/u,workdir=\(dir)/w")
      return (.overlay, "overlayfs mounts on \(root) with data-only layers")
    } catch {
      return (.fuse, "overlayfs cannot be used on \(root): \(error)")
    }
  }
}
