import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

extension stat {
  var type: mode_t { st_mode & S_IFMT }
  var isDirectory: Bool { type == S_IFDIR }
  /// A whiteout: a character device 0/0.
  var isWhiteout: Bool { type == S_IFCHR && st_rdev == 0 }
}

/// fstatat that answers nil for a name that is not there.
@inline(__always)
func statIfPresent(_ dirfd: Int32, _ name: String) throws(Errno) -> stat? {
  var st = stat()
  if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
  let e = errno
  if e == ENOENT || e == ENOTDIR { return nil }
  throw Errno(e)
}
