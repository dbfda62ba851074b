import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

extension Layout {
  /// Ids of snapshots whose directories a mount may be using (nil when that cannot be
  /// read): named in the options of a mount of this mount namespace (an overlay's
  /// `upperdir=.../s/<id>/fs`, or a lower layer through the root's alias), under the root
  /// of a bind mount from the snapshots' device, or in the arguments of a running `snapfs`
  /// (a FUSE mount does not show its layers; its process holds them until it exits).
  ///
  /// The store never writes into a directory in this set: overlayfs and snapfs hold its
  /// dentries and inodes, and a file replaced under them leaves the mount an unlinked inode.
  func mountedIDs() -> Set<Int64>? {
    guard let mounts = try? MountInfo.current(), let st = try? Sys.lstat(snapshots) else { return nil }
    let dev = UInt64(st.st_dev)
    let prefix = snapshots + "/"
    let aliased = alias + "/s/"
    var ids = Set<Int64>()
    func collect(_ text: Substring, after marker: String) {
      var rest = text
      while let r = rest.firstRange(of: marker) {
        rest = rest[r.upperBound...]
        let digits = rest.prefix { $0.isASCII && $0.isNumber }
        if let id = Int64(digits) { ids.insert(id) }
      }
    }
    func collectPaths(_ text: String) {
      collect(text[...], after: prefix)
      collect(text[...], after: aliased)
    }
    // `s/` as a path within its file system (a bind mount's root is one): under the mount
    // point of that device holding it, nearest first.
    var within: String?
    var nearest = -1
    for m in mounts where m.isDevice(dev) {
      let point = m.mountPoint == "/" ? "" : m.mountPoint
      guard point.count > nearest, snapshots.hasPrefix(point + "/") else { continue }
      nearest = point.count
      within = (m.root == "/" ? "" : m.root) + String(snapshots.dropFirst(point.count)) + "/"
    }
    for m in mounts {
      if let within, m.isDevice(dev) { collect(m.root[...], after: within) }
      for option in m.options + [m.source] + m.superOptions { collectPaths(option) }
    }
    guard let snapfs = try? Sys.processArguments(named: "snapfs") else { return nil }
    for arguments in snapfs { for a in arguments { collectPaths(a) } }
    return ids
  }
}
