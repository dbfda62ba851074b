import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

extension ObjectStore {
  /// What `absorb` did to a tree.
  public struct Absorbed: Sendable {
    /// The objects the tree's stubs name now, each once.
    public var objects: [String: ObjectInfo] = [:]
    /// Bytes of the tree's regular files, hard links counted once (as a layer's `fileBytes`).
    public var fileBytes: Int64 = 0
    /// Bytes of objects this call made (the rest were shared with what the store held).
    public var newBytes: Int64 = 0
    /// Files left as they are: they carry overlayfs xattrs of their own (copy-up state).
    public var skipped = 0
  }

  /// Makes every regular file under `path` a stub of its object, as an import would have
  /// made it. A file whose content the store lacks becomes the object itself (no copy): a
  /// stub with the file's owner, mode, times, xattrs and size is exchanged with it in one
  /// step. Other files' stubs are made in `scratch` (a directory on the same file system)
  /// and renamed over the name.
  /// What `stat` shows of each name stays the same but for inode and ctime; directories
  /// keep their times.
  ///
  /// A file with several names is left as it is (its data not shared): its names cannot all
  /// be replaced at once, and a container with the layer mounted could meanwhile see them as
  /// different files. With `separateLinks` (a store made before stubs, which hard-linked
  /// equal files together and whose trees cannot tell those links from a tar's, converted
  /// before anything is mounted) each name gets a stub of its own instead. Files that are
  /// stubs already (an interrupted run) are counted as they are; files with other
  /// `trusted.overlay.*` xattrs are left alone.
  ///
  /// The tree must not change meanwhile (a committed snapshot). Run inside `shared`; the
  /// result is durable when this returns.
  public func absorb(tree path: String, scratch: String, separateLinks: Bool = false) throws(SystemError) -> Absorbed {
    var out = Absorbed()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { buffer.deallocate() }
    let scratchFD = try At.openDirectory(scratch)
    defer { At.close(scratchFD) }
    var counted = Set<UInt64>()  // inodes with several names, each inode's bytes once
    var changed = false  // a name replaced or an object made
    try Tree.walk(
      path,
      visit: { (dir, cName, st) throws(SystemError) in
        guard st.st_mode & S_IFMT == S_IFREG else { return }
        let name = String(cString: cName)
        if st.st_nlink > 1 && !separateLinks {
          if counted.insert(UInt64(st.st_ino)).inserted {
            out.fileBytes += Int64(st.st_size)
            out.skipped += 1
          }
          return
        }
        let fd = try At.open(dir, name, flags: O_RDONLY | At.noAtime)
        defer { At.close(fd) }
        let xattrs = try At.xattrs(fd, name).filter { $0.0 != Self.digestXattr }
        if xattrs.contains(where: { $0.0 == Self.metacopyXattr }) {
          changed = true  // an interrupted run's stub: its object may not be durable yet
          if let key = try Self.stubKey(fd, name), let info = try info(recovering: key, buffer) {
            out.objects[key] = info
            out.fileBytes += Int64(st.st_size)
          } else {
            out.skipped += 1
          }
          return
        }
        if xattrs.contains(where: { $0.0.hasPrefix(OverlayXattr.trusted.prefix) }) {
          out.skipped += 1
          return
        }
        out.fileBytes += Int64(st.st_size)
        // Gives the empty file `stub` the file's owner, mode, times and xattrs, and makes it a
        // stub of `key` (nil: an empty file, its own stub).
        func fill(_ stub: Int32, _ what: String, key: String?) throws(SystemError) {
          if let key { try makeStub(stub, what, key: key, size: Int64(st.st_size)) }
          try At.setAttributes(
            stub, what, owner: (st.st_uid, st.st_gid), mode: st.st_mode & 0o7777, xattrs: xattrs, atime: st.st_atim, mtime: st.st_mtim)
        }
        var key: String?
        if st.st_size > 0 {
          let sha = try Self.hash(fd, name, buffer)
          var found = try find(sha)
          if found == nil {
            changed = true
            let made = try adopt(file: fd, dir, name, sha: sha) { (stub, what, key) throws(SystemError) in
              try fill(stub, what, key: key)
            }
            if made.new {
              out.objects[made.key] = ObjectInfo(size: Int64(st.st_size), sha256: Digest.hexString(sha))
              out.newBytes += Int64(st.st_size)
              return  // the stub is in place
            }
            found = made.key
          }
          key = found
          out.objects[found!] = ObjectInfo(size: Int64(st.st_size), sha256: Digest.hexString(sha))
        } else if st.st_nlink == 1 {
          return  // an empty file is its own stub
        }
        changed = true
        let temp = Sys.temporaryName("absorb")
        let stub = try At.open(scratchFD, temp, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        do throws(SystemError) {
          defer { At.close(stub) }
          try fill(stub, temp, key: key)
        } catch {
          try? At.unlink(scratchFD, temp)
          throw error
        }
        try replace(scratchFD, temp, dir, name)
      },
      leave: { (dir, before) throws(SystemError) in
        // Replacing names (and reading) changed the directory's times; they are part of the layer.
        let now = try At.fstat(dir, path)
        if now.st_mtim.tv_sec != before.st_mtim.tv_sec || now.st_mtim.tv_nsec != before.st_mtim.tv_nsec
          || now.st_atim.tv_sec != before.st_atim.tv_sec || now.st_atim.tv_nsec != before.st_atim.tv_nsec
        {
          try At.futimes(dir, path, atime: before.st_atim, mtime: before.st_mtim)
        }
      })
    // Durable before the references are recorded; nothing to sync if nothing was replaced.
    if changed { try At.syncfs(scratchFD, scratch) }
    return out
  }

  /// Renames `temp` in `scratch` over `name` in `dir`, or removes it if that fails.
  private func replace(_ scratch: Int32, _ temp: String, _ dir: Int32, _ name: String) throws(SystemError) {
    do throws(SystemError) {
      try At.rename(scratch, temp, dir, name)
    } catch {
      try? At.unlink(scratch, temp)
      throw error
    }
  }

  /// Size and digest of an object in the store (the digest as its xattr records it).
  public func info(_ key: String) throws(SystemError) -> ObjectInfo? {
    guard let value = try At.getXattr(path: path(of: key), name: Self.digestXattr, maxSize: 64), value.count == 32,
      let size = try size(of: key)
    else { return nil }
    return ObjectInfo(size: size, sha256: Digest.hexString(value))
  }

  /// SHA-256 of what the file open at `fd` holds, read from the start.
  static func hash(_ fd: Int32, _ what: String, _ buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> [UInt8] {
    var hash = Hasher()
    var offset: Int64 = 0
    while true {
      let n = try At.read(fd, what, into: buffer, at: offset)
      if n == 0 { return hash.finalizeBytes() }
      hash.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
      offset += Int64(n)
    }
  }
}
