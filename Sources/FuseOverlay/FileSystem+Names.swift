import CFuse
import CFuseIO
import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Requests that make, link, remove and rename names.
extension FileSystem {
  func mknod(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t, _ rdev: dev_t) {
    make(req, parent, name, mode: mode) { (dir, n) throws(Errno) in _ = try Sys.call(mknodat(dir, n, mode, rdev)) }
  }

  func mkdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t) {
    make(req, parent, name, directory: true) { (dir, n) throws(Errno) in _ = try Sys.call(mkdirat(dir, n, mode)) }
  }

  func symlink(_ req: fuse_req_t?, _ link: UnsafePointer<CChar>?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    let target = fuseName(link)
    make(req, parent, name) { (dir, n) throws(Errno) in _ = try Sys.call(symlinkat(target, dir, n)) }
  }

  func link(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ newParent: fuse_ino_t, _ newName: UnsafePointer<CChar>?) {
    let n = node(ino)
    let p = node(newParent)
    let name = fuseName(newName)
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in
        try overlay.link(n, p, name)
        var e: fuse_entry_param
        do throws(Errno) { e = entry(n, try overlay.attributes(n)) } catch {
          overlay.nodes.forget(n, 1)
          throw error
        }
        fuse_reply_entry(req, &e)
      }
    }
  }

  func unlink(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    remove(req, parent, name, directory: false)
  }

  func rmdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    remove(req, parent, name, directory: true)
  }

  private func remove(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, directory: Bool) {
    let p = node(parent)
    let n = fuseName(name)
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in try overlay.remove(p, n, directory: directory) }
      fuse_reply_err(req, 0)
    }
  }

  func rename(
    _ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ newParent: fuse_ino_t,
    _ newName: UnsafePointer<CChar>?, _ flags: UInt32
  ) {
    let p = node(parent)
    let n = fuseName(name)
    let np = node(newParent)
    let nn = fuseName(newName)
    reply(req) { () throws(Errno) in
      try overlay.tree.write { () throws(Errno) in try overlay.rename(p, n, np, nn, flags: flags) }
      fuse_reply_err(req, 0)
    }
  }
}
