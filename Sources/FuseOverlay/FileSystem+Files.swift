import CFuse
import CFuseIO
import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Requests on open files: open, create, read, write, release, fsync, fallocate, lseek.
extension FileSystem {
  func open(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    // No open on a read-only mount: the kernel stops sending OPEN and RELEASE, and reads by
    // node (see the type's comment).
    if noOpen {
      fuse_reply_err(req, ENOSYS)
      return
    }
    let n = node(ino)
    let passthrough = self.passthrough!
    reply(req) { () throws(Errno) in
      let opened = try overlay.open(n, flags: layerFlags(fi)) { (upper, openFile) throws(Errno) in
        try passthrough.open(n, upper: upper, size: { overlay.ownSize(n) }, openFile)
      }
      if opened.io == .stale {
        // The kernel retries the open once with a fresh lookup, which finds the split's new
        // node; other processes' cached entries for the name are dropped too.
        FileHandle(opened).close()
        if let gone = try overlay.split(n, lower: passthrough.lowerFile(n)) {
          notifier?.forget(parent: kernelID(gone.parent), name: gone.name)
        }
        throw Errno(ESTALE)
      }
      // A small lower file's first open: its bytes into the page cache first (one pread of
      // ours instead of a READ round trip at its first read). If that fails, READ serves.
      // Other opens of the file meanwhile wait for it (see `Passthrough.Opened.awaitStore`).
      if let size = opened.store {
        if let session = fuseSession { _ = snapfs_notify_store(session, kernelID(n), opened.fd, Int(size)) }
        passthrough.stored(n)
      } else if opened.awaitStore {
        passthrough.awaitStore(n)
      }
      _ = replyOpen(n, opened, fi) { fuse_reply_open(req, fi) }
    }
  }

  func create(
    _ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t,
    _ fi: UnsafeMutablePointer<fuse_file_info>?
  ) {
    let p = node(parent)
    let n = fuseName(name)
    let caller = context(req)
    let passthrough = self.passthrough!
    reply(req) { () throws(Errno) in
      let flags = layerFlags(fi)
      try overlay.tree.write { () throws(Errno) in
        _ = try overlay.prepareCreate(p, n)
        let upper = p.dirs[0].fd
        let fd = try Sys.call(shim_openat(upper, n, flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, UInt32(mode)))
        do throws(Errno) {
          try overlay.chownNew(p, n, uid: caller.uid, gid: caller.gid, mode: mode)
          let (child, st) = try overlay.lookup(p, n)
          var e = entry(child, st)
          let opened = try passthrough.open(child, upper: true, size: { nil }) { fd }
          if opened.io == .stale {  // a node of a name that was not there: cannot be, but undo and retry
            overlay.nodes.forget(child, 1)
            throw Errno(ESTALE)
          }
          if !replyOpen(child, opened, fi, { fuse_reply_create(req, &e, fi) }) { overlay.nodes.forget(child, 1) }
        } catch {
          close(fd)
          unlinkat(upper, n, 0)
          throw error
        }
      }
    }
  }

  func read(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    // One read of a file at a time (see `readLocks`).
    guard noOpen else {
      let fd = FileHandle(fi!.pointee.fh).fd
      return readLocks[Int(fd) & (readLocks.count - 1)].withLock { _ = snapfs_reply_fd(req, fd, size, offset) }
    }
    let n = node(ino)
    readLocks[Int(truncatingIfNeeded: n.id >> 4) & (readLocks.count - 1)].withLock {
      do throws(Errno) {
        let file = try nodeFile(n)
        _ = snapfs_reply_fd(req, file.fd, size, offset)
        file.close()
      } catch {
        fuse_reply_err(req, error.code)
      }
    }
  }

  /// No open file (a read-only mount): the node's file, kept open for its reads (a stub's
  /// object). Its open is not one the kernel asked for, so a failure is a read error: EIO
  /// for a stub whose object is missing (the open succeeded, unlike overlayfs's, which
  /// fails with ENOENT).
  private func nodeFile(_ n: Node) throws(Errno) -> FileHandle {
    // The kept descriptor first: the tree lock only for the open (nothing under a read-only
    // mount is copied up or split).
    let overlay = self.overlay
    do {
      return try passthrough.readFile(n) { () throws(Errno) -> Int32 in
        try overlay.open(n, flags: O_RDONLY) { (_, openFile) throws(Errno) -> Int32 in try openFile() }
      }
    } catch  where error.code == ENOENT {
      throw Errno(EIO)
    }
  }

  func writeBuf(
    _ req: fuse_req_t?, _ buffers: UnsafeMutablePointer<fuse_bufvec>?, _ offset: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?
  ) {
    let n = snapfs_write_buf(FileHandle(fi!.pointee.fh).fd, buffers, offset)
    if n < 0 { fuse_reply_err(req, Int32(-n)) } else { fuse_reply_write(req, n) }
  }

  func release(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    let handle = FileHandle(fi!.pointee.fh)
    passthrough.close(node(ino), passthrough: handle.passthrough)
    handle.close()
    fuse_reply_err(req, 0)
  }

  func fsync(_ req: fuse_req_t?, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    // A read-only mount has nothing to write back (overlayfs: 0 for a lower file); a
    // volatile one does not (overlayfs: ovl_should_sync).
    if noOpen || volatile {
      fuse_reply_err(req, 0)
      return
    }
    let fd = FileHandle(fi!.pointee.fh).fd
    fuse_reply_err(req, (datasync != 0 ? fdatasync(fd) : Glibc.fsync(fd)) == 0 ? 0 : errno)
  }

  func fallocate(_ req: fuse_req_t?, _ mode: Int32, _ offset: off_t, _ length: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    if noOpen {  // no file open for writing can exist on a read-only mount
      fuse_reply_err(req, EBADF)
      return
    }
    fuse_reply_err(req, shim_fallocate(FileHandle(fi!.pointee.fh).fd, mode, Int64(offset), Int64(length)) == 0 ? 0 : errno)
  }

  func lseek(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ offset: off_t, _ whence: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    // SEEK_DATA and SEEK_HOLE: answered by the file in its layer (the node's on a read-only
    // mount), so holes show as overlayfs shows them.
    let file: FileHandle
    if noOpen {
      do throws(Errno) { file = try nodeFile(node(ino)) } catch {
        fuse_reply_err(req, error.code)
        return
      }
    } else {
      file = FileHandle(fi!.pointee.fh)
    }
    let r = Glibc.lseek(file.fd, offset, whence)
    let e = errno
    if noOpen { file.close() }
    if r < 0 { fuse_reply_err(req, e) } else { fuse_reply_lseek(req, r) }
  }
}
