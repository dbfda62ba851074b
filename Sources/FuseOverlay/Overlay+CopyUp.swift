import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Copy-up: a lower file, directory or link made to live in the upper dir, with its parents.
extension Overlay {
  func tempName() -> String { Sys.temporaryName("#snapfs") }

  func copyUp(_ node: Node, data: Bool = true) throws(Errno) {
    guard hasUpper else { throw Errno(EROFS) }
    if node.layer == 0 { return }
    // A removed name is not brought back: its lower file stays as it was.
    guard !node.detached, let parent = node.parent else { throw Errno(ENOENT) }
    try copyUp(parent)
    let upperParent = parent.dirs[0].fd
    var parentTimes = stat()
    _ = try Sys.call(fstat(upperParent, &parentTimes))
    let st = try realStat(node)
    let temp = tempName()
    switch st.type {
    case S_IFDIR:
      _ = try Sys.call(mkdirat(work, temp, st.st_mode & 0o7777))
      var fd: Int32 = -1
      do {
        fd = try Sys.call(shim_openat(work, temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0))
        try copyMetadata(from: node.fd, to: fd, st)
        _ = try Sys.call(renameat(work, temp, upperParent, node.name))
      } catch {
        if fd >= 0 { close(fd) }
        try? removeTree(work, temp)
        throw error
      }
      node.dirs.insert(LayerDir(layer: 0, fd: fd), at: 0)
    case S_IFREG:
      guard let lowerParent = parent.dir(layer: node.layer) else { throw Errno(EIO) }
      let src = try Sys.call(shim_openat(lowerParent, node.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0))
      defer { close(src) }
      // A stub's data is its data file's; overlayfs looks that up even when it copies no data
      // (O_TRUNC), and fails the copy-up as the lookup does (ENOENT without the object).
      let stub = node.stub
      let dataFD = try stub.map { (stub) throws(Errno) -> Int32 in try openData(stub, flags: O_RDONLY | O_CLOEXEC) } ?? src
      defer { if dataFD != src { close(dataFD) } }
      let dst = try Sys.call(shim_openat(work, temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600))
      do {
        defer { close(dst) }
        if data {
          try copyData(from: dataFD, to: dst, size: Int(st.st_size))
          // The stub's size, whatever the data file's, as overlayfs sets it.
          if stub != nil { _ = try Sys.call(ftruncate(dst, st.st_size)) }
        }
        try copyMetadata(from: src, to: dst, st)
        _ = try Sys.call(renameat(work, temp, upperParent, node.name))
      } catch {
        unlinkat(work, temp, 0)
        throw error
      }
    case S_IFLNK:
      _ = try Sys.call(symlinkat(try readlink(node), work, temp))
      do { try finishSpecial(temp, st, into: upperParent, node.name) } catch {
        unlinkat(work, temp, 0)
        throw error
      }
    default:
      _ = try Sys.call(mknodat(work, temp, st.st_mode, st.st_rdev))
      do { try finishSpecial(temp, st, into: upperParent, node.name) } catch {
        unlinkat(work, temp, 0)
        throw error
      }
    }
    node.copiedFrom = node.layer
    node.layer = 0
    var upper = stat()
    if fstatat(upperParent, node.name, &upper, AT_SYMLINK_NOFOLLOW) == 0 {
      node.realIno = UInt64(upper.st_ino)
      // A name of a lower hard link is a file of its own now, with its own inode number, as
      // overlayfs without index=on shows it (the other names keep the lower inode's).
      if st.type == S_IFREG && st.st_nlink > 1 { node.ino = inodeNumber(UInt64(upper.st_ino), layer: 0) }
    }
    // What the kernel holds of it changed: a directory is merged now (st_nlink 1), a link's
    // name has another inode.
    if st.type == S_IFDIR || (st.type == S_IFREG && st.st_nlink > 1) { copiedUp?(node) }
    // Copy-up is not a change of the parent, as overlayfs has it.
    restoreTimes(upperParent, parentTimes)
  }

  private func restoreTimes(_ fd: Int32, _ st: stat) {
    var times = [st.st_atim, st.st_mtim]
    futimens(fd, &times)
  }

  /// Owner, times (and xattrs where the kernel has them) of a link or special file made in
  /// the work dir, then into place.
  private func finishSpecial(_ temp: String, _ st: stat, into dirfd: Int32, _ name: String) throws(Errno) {
    _ = try Sys.call(fchownat(work, temp, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW))
    if st.type != S_IFLNK { _ = try Sys.call(fchmodat(work, temp, st.st_mode & 0o7777, 0)) }
    var times = [st.st_atim, st.st_mtim]
    _ = try Sys.call(utimensat(work, temp, &times, AT_SYMLINK_NOFOLLOW))
    _ = try Sys.call(renameat(work, temp, dirfd, name))
  }

  /// Copies a file's `size` bytes with copy_file_range (in the kernel, no buffer of ours). A big
  /// file's second half is copied by a thread of its own at the same time: two streams keep
  /// twice the reads in flight on a cold file (docs/benchmarks.md has the copy-up figures).
  /// Where copy_file_range cannot (another file system), by reading.
  private func copyData(from src: Int32, to dst: Int32, size: Int) throws(Errno) {
    let first = min(size, Self.copyStep)  // tells whether copy_file_range works here at all
    switch Self.copyRange(src, dst, 0..<first) {
    case 0: break
    case EXDEV, EINVAL, EOPNOTSUPP, ENOSYS: return try copyByReading(from: src, to: dst)
    case let e: throw Errno(e)
    }
    guard size - first >= Self.parallelCopyMin else {
      let e = Self.copyRange(src, dst, first..<size)
      if e != 0 { throw Errno(e) }
      return
    }
    let half = first + ((size - first) / 2) & ~(Self.copyStep - 1)
    final class Outcome: @unchecked Sendable { var error: Int32 = 0 }
    let second = Outcome()
    let helper = try? Threads.start { second.error = Self.copyRange(src, dst, half..<size) }
    let e = Self.copyRange(src, dst, first..<(helper == nil ? size : half))
    helper?.join()
    if e != 0 { throw Errno(e) }
    if second.error != 0 { throw Errno(second.error) }
  }

  /// Files at least this big are copied up by two threads.
  static let parallelCopyMin = 32 << 20
  /// The first copy_file_range's size (a small call that shows whether it works between
  /// these files at all), the alignment of the two threads' halves, and the buffer of a copy
  /// by reading.
  static let copyStep = 1 << 20
  /// The most one copy_file_range call is asked for: the kernel copies at most about 2 GiB a
  /// call anyway, and a smaller call returns sooner to an interrupted copy.
  static let copyCallMax = 1 << 30

  /// copy_file_range of `range` (same offsets in both files): 0, or the errno. A file that
  /// ends early ends the copy.
  private static func copyRange(_ src: Int32, _ dst: Int32, _ range: Range<Int>) -> Int32 {
    var offset = range.lowerBound
    while offset < range.upperBound {
      let n = Int(shim_copy_file_range_at(src, Int64(offset), dst, Int64(offset), UInt64(min(range.upperBound - offset, copyCallMax))))
      if n < 0 { return errno }
      if n == 0 { break }
      offset += n
    }
    return 0
  }

  private func copyByReading(from src: Int32, to dst: Int32) throws(Errno) {
    let size = Self.copyStep
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
    defer { buffer.deallocate() }
    var offset: off_t = 0
    while true {
      let n = try Sys.call(pread(src, buffer, size, offset))
      if n == 0 { return }
      var done = 0
      while done < n { done += try Sys.call(pwrite(dst, buffer + done, n - done, offset + off_t(done))) }
      offset += off_t(n)
    }
  }

  /// xattrs (but overlayfs's own: a stub's metacopy and redirect stay behind), owner, mode,
  /// times: descriptor to descriptor.
  private func copyMetadata(from src: Int32, to dst: Int32, _ st: stat) throws(Errno) {
    _ = try Sys.call(fchown(dst, st.st_uid, st.st_gid))
    _ = try Sys.call(fchmod(dst, st.st_mode & 0o7777))  // after chown, which clears set-ID bits
    // After chown too, which removes security.capability (the kernel's own copy-up sets
    // the owner without that: a file capability must survive a copy-up).
    for bytes in try At.xattrNames(src) {
      let name = String(decoding: bytes, as: UTF8.self)
      guard visible(name) != nil else { continue }
      let value = try At.xattrValue(src, name)
      if fsetxattr(dst, name, value, value.count, 0) != 0 && errno != EOPNOTSUPP { throw Errno.current }
    }
    var times = [st.st_atim, st.st_mtim]
    _ = try Sys.call(futimens(dst, &times))
  }
}
