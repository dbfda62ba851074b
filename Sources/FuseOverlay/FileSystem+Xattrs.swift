import CFuse
import CFuseIO
import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Extended attribute requests.
extension FileSystem {
  func getxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ size: Int) {
    let n = node(ino)
    let key = fuseName(name)
    reply(req) { () throws(Errno) in
      try overlay.tree.read { () throws(Errno) in
        if size == 0 {
          fuse_reply_xattr(req, try overlay.getXattr(n, key, into: nil, size: 0))
          return
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        let count = try overlay.getXattr(n, key, into: buffer, size: size)
        fuse_reply_buf(req, buffer, count)
      }
    }
  }

  func listxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int) {
    let n = node(ino)
    reply(req) { () throws(Errno) in
      let names = try overlay.tree.read { () throws(Errno) -> [UInt8] in try overlay.listXattrs(n) }
      if size == 0 {
        fuse_reply_xattr(req, names.count)
        return
      }
      guard names.count <= size else { throw Errno(ERANGE) }
      names.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), names.count) }
    }
  }

  func setxattr(
    _ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ value: UnsafePointer<CChar>?, _ size: Int,
    _ flags: Int32
  ) {
    let n = node(ino)
    let key = fuseName(name)
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in try overlay.setXattr(n, key, value, size: size, flags: flags) }
      fuse_reply_err(req, 0)
    }
  }

  func removexattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    let n = node(ino)
    let key = fuseName(name)
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in try overlay.removeXattr(n, key) }
      fuse_reply_err(req, 0)
    }
  }
}
