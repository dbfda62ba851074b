import CFuse
import CFuseIO
import CSysShims
import FuseStats
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// One mounted snapfs: the overlay and the state of its FUSE session. libfuse hands every
/// operation the session's userdata (`fuse_req_userdata`), CFuseIO's `fuseio_session`,
/// whose `owner` is this object; `operations()` is the table of the ops, each a method here.
///
/// Read-only mounts (no upper dir, or `ro`) answer OPEN with ENOSYS, libfuse's "no open":
/// from then on the kernel opens and closes files of the mount without a request, keeps
/// their page cache (nothing under a read-only mount changes), and reads by node (`read`
/// with no file handle; FSYNC and LSEEK come without one too). FLUSH is not implemented on
/// any mount: every open snapfs answers asks for none, and the first ENOSYS (the first close
/// on a read-only mount, whose opens are the kernel's own, or the writeback cache's) stops
/// the kernel sending it. So a warm read of a file on a view
/// costs no round trip, where a passthrough open costs an OPEN and, after the read
/// invalidated the inode's atime, a GETATTR; a read-only mount has no atime to invalidate.
/// The price: the mount's page cache is its own, not the layer file's (as with
/// passthrough), so a file read through a view and another mount is cached twice.
final class FileSystem: @unchecked Sendable {
  let overlay: Overlay
  /// CFuseIO's state of the session, and the session's userdata.
  let session: UnsafeMutablePointer<fuseio_session>
  /// Opens and files' descriptors; set once the session's device is open, before the loop.
  private(set) var passthrough: Passthrough!
  /// Set once the process is in the background (its thread would not survive the fork).
  var notifier: Notifier?
  /// libfuse's session, for notifications a request waits for (set with `notifier`).
  var fuseSession: OpaquePointer?
  /// The writeback cache is on (INIT, when passthrough is not).
  private(set) var writeback = false
  /// OPEN is answered ENOSYS (see above).
  let noOpen: Bool
  /// Mounted `volatile`: FSYNC and FSYNCDIR succeed without syncing.
  let volatile: Bool
  /// Serializes reads per open file (per node with `noOpen`), striped wide enough that
  /// unrelated files rarely share a lock: the kernel's readahead sends a file's reads in
  /// order, and served in parallel they reach the layer's file out of order, which defeats
  /// its readahead.
  let readLocks = (0..<1024).map { _ in Lock() }
  /// Listings of directories being read (no OPENDIR: see `Listings`).
  let listings = Listings()
  /// OPENDIR is answered ENOSYS (the kernel offers "no opendir"; set at INIT).
  private(set) var noOpendir = false
  /// The mount's request statistics (set once mounted, before the loop).
  var stats: FuseStats.Recorder?

  init(_ overlay: Overlay, readOnly: Bool, volatile: Bool = false) {
    self.overlay = overlay
    noOpen = readOnly
    self.volatile = volatile
    session = .allocate(capacity: 1)
    session.initialize(to: fuseio_session())
    session.pointee.owner = Unmanaged.passUnretained(self).toOpaque()
    // A copy-up that changes more than its request replies: the kernel asks again.
    overlay.copiedUp = { [unowned self] node in self.notifier?.forgetAttributes(self.kernelID(node)) }
  }

  deinit { session.deallocate() }

  /// The session's device is `devfd`: backing files are registered on it.
  func attach(devfd: Int32, passthrough wanted: Bool, cachedReadsMax: Int64) {
    passthrough = Passthrough(devfd: devfd, wanted: wanted && !noOpen, cachedReadsMax: cachedReadsMax)
  }

  /// The file system a request is for.
  @inline(__always)
  static func of(_ req: fuse_req_t?) -> FileSystem { from(fuse_req_userdata(req)) }

  @inline(__always)
  static func from(_ userdata: UnsafeMutableRawPointer?) -> FileSystem {
    let session = userdata!.assumingMemoryBound(to: fuseio_session.self)
    return Unmanaged<FileSystem>.fromOpaque(session.pointee.owner!).takeUnretainedValue()
  }

  // MARK: - The operations table

  /// The FUSE low-level operations of snapfs: each entry finds its file system and calls
  /// the method of the same name. FLUSH is left out on purpose (see the type's comment).
  static func operations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    ops.`init` = { userdata, conn in FileSystem.from(userdata).initialize(conn) }
    ops.lookup = { req, parent, name in FileSystem.of(req).timed(.lookup) { $0.lookup(req, parent, name) } }
    ops.forget = { req, ino, count in FileSystem.of(req).timed(.forget) { $0.forget(req, ino, count) } }
    ops.forget_multi = { req, count, forgets in FileSystem.of(req).timed(.forget) { $0.forgetMulti(req, count, forgets) } }
    ops.getattr = { req, ino, _ in FileSystem.of(req).timed(.getattr) { $0.getattr(req, ino) } }
    ops.setattr = { req, ino, attr, toSet, fi in FileSystem.of(req).timed(.setattr) { $0.setattr(req, ino, attr, toSet, fi) } }
    ops.readlink = { req, ino in FileSystem.of(req).timed(.readlink) { $0.readlink(req, ino) } }
    ops.mknod = { req, parent, name, mode, rdev in FileSystem.of(req).timed(.mknod) { $0.mknod(req, parent, name, mode, rdev) } }
    ops.mkdir = { req, parent, name, mode in FileSystem.of(req).timed(.mkdir) { $0.mkdir(req, parent, name, mode) } }
    ops.symlink = { req, link, parent, name in FileSystem.of(req).timed(.symlink) { $0.symlink(req, link, parent, name) } }
    ops.link = { req, ino, newParent, newName in FileSystem.of(req).timed(.link) { $0.link(req, ino, newParent, newName) } }
    ops.unlink = { req, parent, name in FileSystem.of(req).timed(.unlink) { $0.unlink(req, parent, name) } }
    ops.rmdir = { req, parent, name in FileSystem.of(req).timed(.rmdir) { $0.rmdir(req, parent, name) } }
    ops.rename = { req, parent, name, newParent, newName, flags in
      FileSystem.of(req).timed(.rename) { $0.rename(req, parent, name, newParent, newName, flags) }
    }
    ops.open = { req, ino, fi in FileSystem.of(req).timed(.open) { $0.open(req, ino, fi) } }
    ops.create = { req, parent, name, mode, fi in FileSystem.of(req).timed(.create) { $0.create(req, parent, name, mode, fi) } }
    ops.read = { req, ino, size, offset, fi in FileSystem.of(req).timed(.read) { $0.read(req, ino, size, offset, fi) } }
    ops.write_buf = { req, _, buffers, offset, fi in FileSystem.of(req).timed(.write) { $0.writeBuf(req, buffers, offset, fi) } }
    ops.release = { req, ino, fi in FileSystem.of(req).timed(.release) { $0.release(req, ino, fi) } }
    ops.fsync = { req, _, datasync, fi in FileSystem.of(req).timed(.fsync) { $0.fsync(req, datasync, fi) } }
    ops.fallocate = { req, _, mode, offset, length, fi in
      FileSystem.of(req).timed(.fallocate) { $0.fallocate(req, mode, offset, length, fi) }
    }
    ops.lseek = { req, ino, offset, whence, fi in FileSystem.of(req).timed(.lseek) { $0.lseek(req, ino, offset, whence, fi) } }
    ops.opendir = { req, ino, fi in FileSystem.of(req).timed(.opendir) { $0.opendir(req, ino, fi) } }
    ops.readdir = { req, ino, size, offset, _ in
      FileSystem.of(req).timed(.readdir) { $0.readDirectory(req, ino, size, offset, plus: false) }
    }
    ops.readdirplus = { req, ino, size, offset, _ in
      FileSystem.of(req).timed(.readdirplus) { $0.readDirectory(req, ino, size, offset, plus: true) }
    }
    ops.fsyncdir = { req, ino, _, _ in FileSystem.of(req).timed(.fsyncdir) { $0.fsyncdir(req, ino) } }
    ops.statfs = { req, _ in FileSystem.of(req).timed(.statfs) { $0.statfs(req) } }
    ops.getxattr = { req, ino, name, size in FileSystem.of(req).timed(.getxattr) { $0.getxattr(req, ino, name, size) } }
    ops.listxattr = { req, ino, size in FileSystem.of(req).timed(.listxattr) { $0.listxattr(req, ino, size) } }
    ops.setxattr = { req, ino, name, value, size, flags in
      FileSystem.of(req).timed(.setxattr) { $0.setxattr(req, ino, name, value, size, flags) }
    }
    ops.removexattr = { req, ino, name in FileSystem.of(req).timed(.removexattr) { $0.removexattr(req, ino, name) } }
    return ops
  }

  /// Runs one operation, counted and timed in the mount's statistics (`FuseStats`) when
  /// it keeps them.
  @inline(__always)
  func timed(_ op: FuseStats.Op, _ body: (FileSystem) -> Void) {
    guard let stats else { return body(self) }
    let start = ContinuousClock.now
    let failures = fuseio_failed_replies()
    body(self)
    let (seconds, attoseconds) = (ContinuousClock.now - start).components
    stats.record(
      op, nanoseconds: UInt64(seconds * 1_000_000_000 + attoseconds / 1_000_000_000), failed: fuseio_failed_replies() != failures)
  }

  // MARK: - Helpers

  @inline(__always)
  func node(_ ino: fuse_ino_t) -> Node {
    if ino == FUSE_ROOT_ID { return overlay.root }
    return Unmanaged<Node>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(ino))!).takeUnretainedValue()
  }

  /// The id the kernel knows `node` by.
  func kernelID(_ node: Node) -> fuse_ino_t { node === overlay.root ? fuse_ino_t(FUSE_ROOT_ID) : node.id }

  /// How long the kernel may trust what it is told. Lower layers never change, and the upper
  /// one changes only through this mount, so names and attributes are cached long; except a
  /// file with several links in the upper dir, whose link count changes through other names.
  private func timeout(_ node: Node, _ st: stat) -> Double {
    if !overlay.hasUpper || node.layer != 0 { return 86400 }
    if st.type == S_IFREG && st.st_nlink > 1 { return 0 }
    return 1
  }

  private var negativeTimeout: Double { overlay.hasUpper ? 1 : 86400 }

  /// The entry the kernel is told for `node` with attributes `st`.
  func entry(_ node: Node, _ st: stat) -> fuse_entry_param {
    var entry = fuse_entry_param()
    entry.attr = st
    entry.ino = node.id
    entry.attr_timeout = timeout(node, st)
    entry.entry_timeout = entry.attr_timeout
    return entry
  }

  /// Looks `name` up in `parent` (counted for the kernel) and replies with its entry. Caller
  /// holds the tree lock.
  private func replyLookup(_ req: fuse_req_t?, _ parent: Node, _ name: String) throws(Errno) {
    let (node, st) = try overlay.lookup(parent, name)
    var e = entry(node, st)
    fuse_reply_entry(req, &e)
  }

  /// Open flags as passed to the layer: with the writeback cache the kernel reads pages it
  /// caches for writing, and handles O_APPEND itself.
  func layerFlags(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> Int32 {
    var flags = fi!.pointee.flags
    if writeback {
      if flags & O_ACCMODE == O_WRONLY { flags = (flags & ~O_ACCMODE) | O_RDWR }
      flags &= ~O_APPEND
    }
    return flags
  }

  /// Replies to OPEN or CREATE (`reply` sends it) for the open file `opened` of `node`,
  /// counted by `passthrough.open` (under the tree lock that opened it). If the reply does not
  /// reach the kernel (the caller was interrupted), no RELEASE will come: the open is undone here.
  func replyOpen(
    _ node: Node, _ opened: Passthrough.Opened, _ fi: UnsafeMutablePointer<fuse_file_info>?,
    _ reply: () -> Int32
  ) -> Bool {
    let handle = FileHandle(opened)
    fi!.pointee.fh = handle.raw
    // Page caches stay across opens where they cannot be stale (see `Opened.keepCache`), and
    // close(2) does not wait for a FLUSH round trip. A passthrough file's page cache is its
    // backing file's: the kernel refuses keep_cache with it.
    snapfs_fi_set(fi, opened.keepCache ? 1 : 0, 0, 1)
    if let backing = opened.io.backingID { fuseio_arm_open(backing) }
    let rc = reply()
    fuseio_disarm()
    if rc != 0 {
      passthrough.close(node, passthrough: handle.passthrough)
      handle.close()
    }
    return rc == 0
  }

  private func replyAttr(_ req: fuse_req_t?, _ node: Node) throws(Errno) {
    var st = try overlay.attributes(node)
    fuse_reply_attr(req, &st, timeout(node, st))
  }

  func context(_ req: fuse_req_t?) -> (uid: uid_t, gid: gid_t) {
    let ctx = fuse_req_ctx(req)!.pointee
    return (ctx.uid, ctx.gid)
  }

  /// Makes `name` in `parent` with `make` (given the upper dir's descriptor), owned by the
  /// caller, and replies with its entry. A directory made over a whiteout is opaque.
  func make(
    _ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, mode: mode_t? = nil,
    directory: Bool = false, _ body: (Int32, String) throws(Errno) -> Void
  ) {
    let p = node(parent)
    let n = fuseName(name)
    let caller = context(req)
    let overlay = self.overlay
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in
        let overWhiteout = try overlay.prepareCreate(p, n)
        let upper = p.dirs[0].fd
        try body(upper, n)
        do throws(Errno) {
          if directory && overWhiteout {
            let fd = try Sys.call(shim_openat(upper, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0))
            defer { close(fd) }
            try overlay.markOpaque(fd)
          }
          try overlay.chownNew(p, n, uid: caller.uid, gid: caller.gid, mode: mode)
          try replyLookup(req, p, n)
        } catch {
          _ = unlinkat(upper, n, directory ? AT_REMOVEDIR : 0)
          throw error
        }
      }
    }
  }

  // MARK: - Operations

  func initialize(_ conn: UnsafeMutablePointer<fuse_conn_info>?) {
    guard let conn else { return }
    let capable = conn.pointee.capable
    var want = conn.pointee.want
    for cap in [FUSE_CAP_SPLICE_WRITE, FUSE_CAP_SPLICE_READ, FUSE_CAP_PARALLEL_DIROPS, FUSE_CAP_ASYNC_DIO] where capable & UInt32(cap) != 0
    {
      want |= UInt32(cap)
    }
    // Passthrough makes the files' reads and writes the kernel's own; without it, the
    // writeback cache batches writes into big requests. The kernel refuses the two together.
    if passthrough.negotiate(session) {
      want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
    } else if overlay.hasUpper && !noOpen && capable & UInt32(FUSE_CAP_WRITEBACK_CACHE) != 0 {
      want |= UInt32(FUSE_CAP_WRITEBACK_CACHE)
      writeback = true
    }
    // readdirplus for every listing, not only the first call of each: otherwise the kernel
    // looks up the rest of a big directory one LOOKUP request per name.
    want &= ~UInt32(FUSE_CAP_READDIRPLUS_AUTO)
    noOpendir = capable & UInt32(FUSE_CAP_NO_OPENDIR_SUPPORT) != 0
    conn.pointee.want = want
    conn.pointee.max_write = 1 << 20
    conn.pointee.max_readahead = 1 << 20
  }

  func lookup(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    let p = node(parent)
    let n = fuseName(name)
    do throws(Errno) {
      try overlay.tree.read { () throws(Errno) in try replyLookup(req, p, n) }
    } catch  where error.code == ENOENT {
      var entry = fuse_entry_param()
      entry.entry_timeout = negativeTimeout
      fuse_reply_entry(req, &entry)
    } catch {
      fuse_reply_err(req, error.code)
    }
  }

  func forget(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ count: UInt64) {
    if ino != FUSE_ROOT_ID { overlay.nodes.forget(node(ino), count) }
    fuse_reply_none(req)
  }

  func forgetMulti(_ req: fuse_req_t?, _ count: Int, _ forgets: UnsafeMutablePointer<fuse_forget_data>?) {
    for i in 0..<count {
      let f = forgets![i]
      if f.ino != FUSE_ROOT_ID { overlay.nodes.forget(node(f.ino), f.nlookup) }
    }
    fuse_reply_none(req)
  }

  func getattr(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
    let n = node(ino)
    reply(req) { () throws(Errno) in try overlay.tree.read { () throws(Errno) in try replyAttr(req, n) } }
  }

  /// The descriptor to change attributes through: the open file's, the directory's own, or
  /// a path to the file (O_PATH descriptors refuse fchmod and futimens): a name in its
  /// directory, not followed, or for a removed file the /proc path of the descriptor that pins
  /// it, a link that must be followed to reach the file.
  private enum Target {
    case fd(Int32)
    case at(Int32, String, follow: Bool)
  }

  func setattr(
    _ req: fuse_req_t?, _ ino: fuse_ino_t, _ attr: UnsafeMutablePointer<stat>?, _ toSet: Int32,
    _ fi: UnsafeMutablePointer<fuse_file_info>?
  ) {
    let n = node(ino)
    let a = attr!.pointee
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in
        // With the writeback cache the kernel also sends ctime-only updates (after an unlink,
        // say): nothing here to change, and no reason to copy up.
        let changes =
          FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID | FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME
        guard toSet & changes != 0 else { return try replyAttr(req, n) }
        try overlay.copyUp(n)
        let target: Target
        if let fi, fi.pointee.fh != 0 {
          target = .fd(FileHandle(fi.pointee.fh).fd)
        } else if n.isDirectory {
          target = .fd(n.fd)
        } else if let loc = overlay.upperLocation(n) {
          target = .at(loc.dirfd, loc.name, follow: false)
        } else {
          target = .at(AT_FDCWD, "/proc/self/fd/\(n.pinned)", follow: true)
        }
        if toSet & FUSE_SET_ATTR_MODE != 0 {
          switch target {
          case .fd(let fd): _ = try Sys.call(fchmod(fd, a.st_mode & 0o7777))
          case .at(let dir, let name, _): _ = try Sys.call(fchmodat(dir, name, a.st_mode & 0o7777, 0))
          }
        }
        if toSet & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) != 0 {
          let uid = toSet & FUSE_SET_ATTR_UID != 0 ? a.st_uid : uid_t.max
          let gid = toSet & FUSE_SET_ATTR_GID != 0 ? a.st_gid : gid_t.max
          switch target {
          case .fd(let fd): _ = try Sys.call(fchown(fd, uid, gid))
          case .at(let dir, let name, let follow): _ = try Sys.call(fchownat(dir, name, uid, gid, follow ? 0 : AT_SYMLINK_NOFOLLOW))
          }
        }
        if toSet & FUSE_SET_ATTR_SIZE != 0 {
          switch target {
          case .fd(let fd): _ = try Sys.call(ftruncate(fd, a.st_size))
          case .at(let dir, let name, let follow):
            let fd = try Sys.call(shim_openat(dir, name, O_WRONLY | (follow ? 0 : O_NOFOLLOW) | O_CLOEXEC, 0))
            defer { close(fd) }
            _ = try Sys.call(ftruncate(fd, a.st_size))
          }
        }
        if toSet & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME) != 0 {
          let omit = timespec(tv_sec: 0, tv_nsec: SHIM_UTIME_OMIT)
          let now = timespec(tv_sec: 0, tv_nsec: SHIM_UTIME_NOW)
          var times = [omit, omit]
          if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { times[0] = now } else if toSet & FUSE_SET_ATTR_ATIME != 0 { times[0] = a.st_atim }
          if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { times[1] = now } else if toSet & FUSE_SET_ATTR_MTIME != 0 { times[1] = a.st_mtim }
          switch target {
          case .fd(let fd): _ = try Sys.call(futimens(fd, &times))
          case .at(let dir, let name, let follow): _ = try Sys.call(utimensat(dir, name, &times, follow ? 0 : AT_SYMLINK_NOFOLLOW))
          }
        }
        try replyAttr(req, n)
      }
    }
  }

  func readlink(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
    let n = node(ino)
    reply(req) { () throws(Errno) in
      fuse_reply_readlink(req, try overlay.tree.read { () throws(Errno) -> [CChar] in try overlay.readlink(n) })
    }
  }
}

@inline(__always)
/// A name the kernel sent (NUL-terminated, never null for the requests that carry one).
func fuseName(_ name: UnsafePointer<CChar>?) -> String { String(cString: name!) }

/// Runs `body`, which replies on success; a thrown errno becomes the reply.
@inline(__always)
func reply(_ req: fuse_req_t?, _ body: () throws(Errno) -> Void) {
  do { try body() } catch { fuse_reply_err(req, error.code) }
}
