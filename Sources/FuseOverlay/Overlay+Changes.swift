import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Changing the tree: creating, removing and renaming names (callers hold the tree lock
// for writing).
extension Overlay {
  /// Makes `parent` writable and clears the way for a new `name`: EEXIST if the merged
  /// tree has it, a whiteout for it removed. Answers whether there was one (a directory
  /// made there must be opaque, or the lower one would show through).
  ///
  /// The kernel looked the name up (and holds the directory locked) before it asks to create
  /// it, and every change goes through this mount: lower layers need no second look.
  func prepareCreate(_ parent: Node, _ name: String) throws(Errno) -> Bool {
    try copyUp(parent)
    let upper = parent.dirs[0].fd
    guard let st = try statIfPresent(upper, name) else { return false }
    guard st.isWhiteout else { throw Errno(EEXIST) }
    _ = try Sys.call(unlinkat(upper, name, 0))
    return true
  }

  /// Owner of a new entry: the caller's, the group from a set-group-ID parent. A file's
  /// set-ID bits, which chown clears, are given back (`mode`: as created).
  func chownNew(_ parent: Node, _ name: String, uid: uid_t, gid: gid_t, mode: mode_t? = nil) throws(Errno) {
    var pst = stat()
    _ = try Sys.call(fstat(parent.dirs[0].fd, &pst))
    let inherits = pst.st_mode & S_ISGID != 0
    let group = inherits ? pst.st_gid : gid
    // Made by this process: the owner it got may already be the right one.
    if uid == euid && group == (inherits ? pst.st_gid : egid) { return }
    _ = try Sys.call(fchownat(parent.dirs[0].fd, name, uid, group, AT_SYMLINK_NOFOLLOW))
    if let mode, mode & (S_ISUID | S_ISGID) != 0 {
      _ = try Sys.call(fchmodat(parent.dirs[0].fd, name, mode & 0o7777, 0))
    }
  }

  func markOpaque(_ fd: Int32) throws(Errno) {
    let y: [UInt8] = [UInt8(ascii: "y")]
    _ = try Sys.call(fsetxattr(fd, opaqueName, y, 1, 0))
  }

  /// Whether a layer under the upper one shows `name` in `parent`.
  private func lowerHas(_ parent: Node, _ name: String) throws(Errno) -> Bool {
    for dir in parent.dirs where dir.layer != 0 {
      if let st = try statIfPresent(dir.fd, name) { return !st.isWhiteout }
    }
    return false
  }

  /// Replaces (or makes) `name` in the upper `dirfd` with a whiteout, atomically for a
  /// non-directory.
  func whiteout(_ dirfd: Int32, _ name: String) throws(Errno) {
    let temp = tempName()
    _ = try Sys.call(mknodat(work, temp, S_IFCHR, 0))
    do { _ = try Sys.call(renameat(work, temp, dirfd, name)) } catch {
      unlinkat(work, temp, 0)
      throw error
    }
  }

  /// Removes `name` and everything under it from `dirfd` (an upper or work directory).
  func removeTree(_ dirfd: Int32, _ name: String) throws(Errno) {
    try Tree.remove(dirfd, name, makeAccessible: false) { (_, _, e) in Errno(e) }
  }

  /// Removes everything under the directory `name` of `dirfd`. An upper directory that is
  /// empty in the merged tree holds at most whiteouts.
  private func emptyDirectory(_ dirfd: Int32, _ name: String) throws(Errno) {
    let fd = try Sys.call(shim_openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0))
    defer { close(fd) }
    try Tree.removeContents(fd, makeAccessible: false) { (_, _, e) in Errno(e) }
  }

  /// unlink(2) and rmdir(2) of the merged tree.
  func remove(_ parent: Node, _ name: String, directory: Bool) throws(Errno) {
    guard hasUpper else { throw Errno(EROFS) }
    let node = try resolve(parent, name)
    if directory {
      guard node.isDirectory else { throw Errno(ENOTDIR) }
      guard try entries(node).isEmpty else { throw Errno(ENOTEMPTY) }
    } else if node.isDirectory {
      throw Errno(EISDIR)
    }
    try copyUp(parent)
    try pin(node)
    let upper = parent.dirs[0].fd
    let below = try node.layer != 0 ? true : lowerHas(parent, name)
    if node.layer == 0 {
      if directory {
        try removeTree(upper, name)
        if below { try whiteout(upper, name) }
      } else if below {
        try whiteout(upper, name)
      } else {
        _ = try Sys.call(unlinkat(upper, name, 0))
      }
    } else {
      try whiteout(upper, name)
    }
    nodes.detach(parent, name)
  }

  /// rename(2) of the merged tree. A directory that a lower layer has cannot move (EXDEV,
  /// as overlayfs without redirect_dir): `mv` copies it instead.
  func rename(_ parent: Node, _ name: String, _ newParent: Node, _ newName: String, flags: UInt32) throws(Errno) {
    guard hasUpper else { throw Errno(EROFS) }
    guard flags & ~SHIM_RENAME_NOREPLACE == 0 else { throw Errno(EINVAL) }
    if parent === newParent && name == newName { return }
    let node = try resolve(parent, name)
    if node.isDirectory && (node.layer != 0 || node.isMerged) { throw Errno(EXDEV) }
    var target: Node?
    do { target = try resolve(newParent, newName) } catch  where error.code == ENOENT {}
    var opaque = false
    if let target {
      if target === node { return }
      if flags & SHIM_RENAME_NOREPLACE != 0 { throw Errno(EEXIST) }
      if node.isDirectory {
        guard target.isDirectory else { throw Errno(ENOTDIR) }
        guard try entries(target).isEmpty else { throw Errno(ENOTEMPTY) }
        opaque = target.layer != 0 || target.isMerged
      } else if target.isDirectory {
        throw Errno(EISDIR)
      }
    }
    let below = try node.layer != 0 ? true : lowerHas(parent, name)
    try copyUp(parent)
    try copyUp(newParent)
    try copyUp(node)
    if let target { try pin(target) }
    let from = parent.dirs[0].fd
    let to = newParent.dirs[0].fd
    if let st = try statIfPresent(to, newName) {
      if st.isWhiteout {
        if node.isDirectory {
          _ = try Sys.call(unlinkat(to, newName, 0))
          opaque = true
        }
      } else if st.isDirectory {
        try emptyDirectory(to, newName)
      }
    }
    if opaque { try markOpaque(node.fd) }
    _ = try Sys.call(renameat(from, name, to, newName))
    if below { try whiteout(from, name) }
    nodes.detach(newParent, newName)
    nodes.move(node, from: parent, name, to: newParent, newName)
  }
}
