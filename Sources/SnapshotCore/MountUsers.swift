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
  /// `fuse`: the daemon's mounts are snapfs's, whose processes are then always read (a
  /// lazily unmounted snapfs has no mount left in this namespace but may still hold its
  /// directories); otherwise only while a `fuse.snapfs` mount exists.
  func mountedIDs(fuse: Bool = false) -> Set<Int64>? {
    mountUsers(of: snapshots, aliased: alias + "/s/", fuse: fuse)
  }

  /// Ids of imported layers a mount may be using, as `mountedIDs` finds snapshots'.
  func mountedLayerIDs(fuse: Bool = false) -> Set<Int64>? {
    mountUsers(of: layers, aliased: alias + "/l/", fuse: fuse)
  }

  /// Ids named after `top/` or `aliased` by mounts (and snapfs processes); `top` on its own
  /// device may also be mounted from (bind mounts of directories below it).
  private func mountUsers(of top: String, aliased: String, fuse: Bool) -> Set<Int64>? {
    guard let mounts = try? MountInfo.current(), let st = try? Sys.lstat(top) else { return nil }
    let dev = UInt64(st.st_dev)
    let prefix = top + "/"
    var ids = Set<Int64>()
    // Byte-wise: this runs in every Commit, and String searches by Character cost more
    // than the rest of the call.
    let markers = [Array(prefix.utf8), Array(aliased.utf8)]
    func collect(_ text: String, after marker: [UInt8]) {
      let bytes = Array(text.utf8)
      guard let first = marker.first, bytes.count > marker.count else { return }
      var i = 0
      while i + marker.count <= bytes.count {
        guard bytes[i] == first, bytes[i..<(i + marker.count)].elementsEqual(marker) else {
          i += 1
          continue
        }
        var j = i + marker.count
        var value: Int64 = 0
        while j < bytes.count, j - i - marker.count < 18, bytes[j] >= 0x30, bytes[j] <= 0x39 {
          value = value * 10 + Int64(bytes[j] - 0x30)
          j += 1
        }
        if j > i + marker.count { ids.insert(value) }
        i = j
      }
    }
    func collectPaths(_ text: String) { for m in markers { collect(text, after: m) } }
    // `s/` as a path within its file system (a bind mount's root is one): under the mount
    // point of that device holding it, nearest first.
    var within: String?
    var nearest = -1
    for m in mounts where m.isDevice(dev) {
      let point = m.mountPoint == "/" ? "" : m.mountPoint
      guard point.count > nearest, top.hasPrefix(point + "/") else { continue }
      nearest = point.count
      within = (m.root == "/" ? "" : m.root) + String(top.dropFirst(point.count)) + "/"
    }
    // (A layer image's own mount names its image file, not a user.)
    for m in mounts where m.fsType != "erofs" {
      if let within, m.isDevice(dev) { collect(m.root, after: Array(within.utf8)) }
      for option in m.options + [m.source] + m.superOptions { collectPaths(option) }
    }
    // Processes are looked at only while a snapfs mount exists (`fuse.snapfs`): reading every
    // process's name costs a Commit more than the rest of it.
    if fuse || mounts.contains(where: { $0.fsType == "fuse.snapfs" }) {
      guard let snapfs = try? Sys.processArguments(named: "snapfs") else { return nil }
      for arguments in snapfs { for a in arguments { collectPaths(a) } }
    }
    return ids
  }
}
