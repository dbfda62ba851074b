import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Open files: which layer's file a descriptor is, and hard links.
extension Overlay {
  /// Opens the node's topmost file with `flags`, copying it up first when the open may
  /// write: `attach` gets whether the open is of the upper file and a function that opens it,
  /// and runs under the tree lock (so no copy-up comes between the open and what `attach`
  /// decides). Takes the tree lock itself.
  func open<T>(_ node: Node, flags: Int32, _ attach: (_ upper: Bool, _ openFile: () throws(Errno) -> Int32) throws(Errno) -> T)
    throws(Errno) -> T
  {
    let writes = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
    let clean = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | (volatile ? O_SYNC | O_DSYNC : 0))) | O_NOFOLLOW | O_CLOEXEC
    if writes {
      return try tree.write { () throws(Errno) -> T in
        try copyUp(node, data: flags & O_TRUNC == 0)
        return try attach(true) { () throws(Errno) -> Int32 in try openTopmost(node, clean) }
      }
    }
    // For reading, the layer's file plainly: a lower file's descriptor is kept and serves
    // every later open's reads (an O_DIRECT one would fail their unaligned preads), and a
    // passthrough open's own flags are the kernel's, not this descriptor's.
    return try tree.read { () throws(Errno) -> T in
      try attach(hasUpper && node.layer == 0) { () throws(Errno) -> Int32 in
        try openTopmost(node, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
      }
    }
  }

  /// The size of the node's topmost file itself (a stub's own, not its data file's); nil if
  /// it cannot be had. Caller holds the tree lock.
  func ownSize(_ node: Node) -> Int64? {
    guard node.pinned < 0, let (dirfd, name) = try? location(node) else { return nil }
    var st = stat()
    return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? Int64(st.st_size) : nil
  }

  /// Splits `node`, whose kernel inode can no longer be opened (see `Passthrough`): off its
  /// names, which a fresh node answers from the next lookup on, and pinned to the file its
  /// open files read: `lower`, a descriptor of the lower file it was copied up from (the node
  /// takes it), else the upper file. Returns the parent and name for the kernel to forget, or
  /// nil if it was off its name already. Takes the tree lock.
  func split(_ node: Node, lower: Int32?) throws(Errno) -> (parent: Node, name: String)? {
    try tree.write { () throws(Errno) -> (parent: Node, name: String)? in
      guard !node.detached, let parent = node.parent, node.pinned < 0 else {
        if let lower { close(lower) }
        return nil
      }
      nodes.split(node)
      if var lower {
        // As a removed lower file: its readers' attributes, no copy-up, no opens for writing.
        // A stub's readers read its data file (`openTopmost`), but its attributes are the
        // stub's: it is pinned instead (if it cannot be, the data file's attributes show).
        if node.stub != nil, let dirfd = parent.dir(layer: node.copiedFrom) {
          let stub = shim_openat(dirfd, node.name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0)
          if stub >= 0 {
            close(lower)
            lower = stub
          }
        }
        var st = stat()
        if fstat(lower, &st) == 0 { node.realIno = UInt64(st.st_ino) }
        node.pinned = lower
        node.layer = node.copiedFrom
      } else {
        try pin(node)
      }
      return (parent, node.name)
    }
  }

  private func openTopmost(_ node: Node, _ flags: Int32) throws(Errno) -> Int32 {
    // A stub (only ever opened for reading: writing copies it up): its data file.
    if let stub = lowerStub(node) { return try openData(stub, flags: flags) }
    // A removed name: reopen the file through the descriptor that pins it.
    if node.pinned >= 0 { return try Sys.call(shim_open("/proc/self/fd/\(node.pinned)", flags & ~O_NOFOLLOW, 0)) }
    let (dirfd, name) = try location(node)
    let fd = try Sys.call(shim_openat(dirfd, name, flags, 0))
    // A lower file replaced under its name since its lookup: the layer store turns a
    // committed layer's files into stubs of the same metadata (renamed over each name) while
    // it may be mounted. The name's file is then a stub, whose own bytes are no data: its
    // data file is opened instead, as overlayfs keeps reading the file it looked up.
    var st = stat()
    guard !isUpper(node), node.type == S_IFREG, let parent = node.parent, fstat(fd, &st) == 0,
      UInt64(st.st_ino) != node.realIno
    else { return fd }
    let fresh: Stub?
    do { fresh = try stub(parent, name, layer: node.layer) } catch {
      close(fd)
      throw error
    }
    guard let fresh else { return fd }
    close(fd)
    return try openData(fresh, flags: flags)
  }

  /// link(2): `node` (copied up first, as overlayfs does) is also `name` in `parent`.
  func link(_ node: Node, _ parent: Node, _ name: String) throws(Errno) {
    try copyUp(node)
    _ = try prepareCreate(parent, name)
    let (dirfd, from) = try location(node)
    _ = try Sys.call(linkat(dirfd, from, parent.dirs[0].fd, name, from.isEmpty ? SHIM_AT_EMPTY_PATH : 0))
    nodes.addName(node, parent, name)
  }

  /// The upper directory and name through which to change `node`'s attributes.
  func upperLocation(_ node: Node) -> (dirfd: Int32, name: String)? {
    guard let parent = node.parent, !node.detached else { return nil }
    return (parent.dirs[0].fd, node.name)
  }
}
