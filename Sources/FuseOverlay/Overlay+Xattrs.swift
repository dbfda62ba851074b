import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Extended attributes as the merged tree shows them: overlayfs's own namespace hidden.
extension Overlay {
  /// overlayfs (since Linux 6.7) escapes its own namespace: what users see as
  /// `trusted.overlay.X` is stored as `trusted.overlay.overlay.X`, and the real
  /// `trusted.overlay.*` (opaque, origin, ...) is hidden. The stored name of a user's.
  func stored(_ name: String) -> String {
    name.hasPrefix(privatePrefix) ? privatePrefix + "overlay." + name.dropFirst(privatePrefix.count) : name
  }

  /// The name users see for a stored one; nil for overlayfs's own.
  func visible(_ name: String) -> String? {
    guard name.hasPrefix(privatePrefix) else { return name }
    let rest = name.dropFirst(privatePrefix.count)
    return rest.hasPrefix("overlay.") ? privatePrefix + rest.dropFirst("overlay.".count) : nil
  }

  /// Runs `call` (an *xattrat(2) call, Linux 6.13) on the node's topmost non-directory: its
  /// name in its layer's directory, not followed. `fallback` gets a path naming the file
  /// instead (O_PATH descriptors refuse the f*xattr calls, and the *xattrat calls with an
  /// empty path, EBADF): its O_PATH descriptor's /proc/self/fd link. That is the way for a
  /// removed file, which only the descriptor that pins it reaches, and where the calls are
  /// missing (`xattrAt`).
  private func xattrCall<T: BinaryInteger>(_ node: Node, _ call: (Int32, String, Int32) -> T, _ fallback: (String) -> T)
    throws(Errno) -> T
  {
    if node.pinned >= 0 { return try Sys.call(fallback("/proc/self/fd/\(node.pinned)")) }
    let (dirfd, name) = try location(node)
    if xattrAt {
      do throws(Errno) { return try Sys.call(call(dirfd, name, AT_SYMLINK_NOFOLLOW)) } catch {
        guard error.code == ENOSYS else { throw error }
      }
    }
    let fd = try Sys.call(shim_openat(dirfd, name, SHIM_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0))
    defer { close(fd) }
    return try Sys.call(fallback("/proc/self/fd/\(fd)"))
  }

  func listXattrs(_ node: Node) throws(Errno) -> [UInt8] {
    let names =
      try node.isDirectory
      ? At.xattrNames(node.fd)
      : At.xattrNames { (list, size) -> Int in
        do throws(Errno) {
          return try xattrCall(
            node, { Int(shim_listxattrat($0, $1, $2, list, UInt(size))) }, { listxattr($0, list, size) })
        } catch {
          errno = error.code  // as a list call answers: -1 and errno (ERANGE is tried again)
          return -1
        }
      }
    var out: [UInt8] = []
    for bytes in names {
      if !bytes.starts(with: privatePrefix.utf8) {
        out += bytes
      } else if let shown = visible(String(decoding: bytes, as: UTF8.self)) {
        out += Array(shown.utf8)
      } else {
        continue
      }
      out.append(0)
    }
    return out
  }

  /// The value of `name` into `buffer` (nil: only its size).
  func getXattr(_ node: Node, _ name: String, into buffer: UnsafeMutableRawPointer?, size: Int) throws(Errno) -> Int {
    let name = stored(name)
    if node.isDirectory { return try Sys.call(fgetxattr(node.fd, name, buffer, size)) }
    return try xattrCall(
      node, { Int(shim_getxattrat($0, $1, $2, name, buffer, UInt(size))) }, { getxattr($0, name, buffer, size) })
  }

  func setXattr(_ node: Node, _ name: String, _ value: UnsafeRawPointer?, size: Int, flags: Int32) throws(Errno) {
    let name = stored(name)
    try copyUp(node)
    if node.isDirectory {
      _ = try Sys.call(fsetxattr(node.fd, name, value, size, flags))
    } else {
      _ = try xattrCall(
        node, { shim_setxattrat($0, $1, $2, name, value, UInt(size), flags) }, { setxattr($0, name, value, size, flags) })
    }
  }

  func removeXattr(_ node: Node, _ name: String) throws(Errno) {
    let name = stored(name)
    try copyUp(node)
    if node.isDirectory {
      _ = try Sys.call(fremovexattr(node.fd, name))
    } else {
      _ = try xattrCall(node, { shim_removexattrat($0, $1, $2, name) }, { removexattr($0, name) })
    }
  }
}
