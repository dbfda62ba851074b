import CFuse
import CFuseIO
import CSysShims
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

// Requests on directories as a whole: opendir, readdir(plus), fsyncdir; and statfs.
extension FileSystem {
  /// No OPENDIR (ENOSYS): the kernel then opens directories itself and may keep their
  /// listings, which is right here: a directory changes only through this mount, and the
  /// kernel drops its cached listing when it changes one. See `Listings`.
  /// On a kernel without "no opendir" (before Linux 5.1) directories open with a request,
  /// still keeping their listings (readdir needs no handle).
  func opendir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    if noOpendir {
      fuse_reply_err(req, ENOSYS)
    } else {
      snapfs_fi_set(fi, 1, 1, 0)
      fuse_reply_open(req, fi)
    }
  }

  func readDirectory(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, plus: Bool) {
    // Past the last name: the kernel asks once more after a listing ends.
    if offset == off_t.max {
      fuse_reply_buf(req, nil, 0)
      return
    }
    let dir = node(ino)
    let overlay = self.overlay
    var listed = offset == 0 ? nil : listings.find(dir)
    let fresh = listed == nil
    if fresh {
      do {
        listed = Listings.Listing(try overlay.tree.read { () throws(Errno) -> [Overlay.Entry] in try overlay.entries(dir) })
      } catch {
        fuse_reply_err(req, error.code)
        return
      }
    }
    let listing = listed!
    let entries = listing.entries
    let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
    defer { buffer.deallocate() }
    var used = 0
    // Indexes 0 and 1 are "." and ".."; entry i of the listing is index i + 2. An entry's
    // offset is where the next one resumes (see `Listings`).
    var index = offset <= 2 ? max(0, Int(offset)) : listing.index(of: offset) + 2
    overlay.tree.read {
      while index < entries.count + 2 {
        let next =
          switch index {
          case 0: off_t(1)
          case 1: entries.isEmpty ? off_t.max : off_t(2)
          default: listing.offset(after: index - 2)
          }
        var added = 0
        if index < 2 {
          var st = stat()
          st.st_mode = S_IFDIR
          st.st_ino = ino_t(index == 0 ? dir.ino : (dir.parent ?? dir).ino)
          let name = index == 0 ? "." : ".."
          if plus {
            var entry = fuse_entry_param()
            entry.attr = st
            added = fuse_add_direntry_plus(req, buffer + used, size - used, name, &entry, next)
          } else {
            added = fuse_add_direntry(req, buffer + used, size - used, name, &st, next)
          }
          if added > size - used { break }
        } else {
          let e = entries[index - 2]
          if plus {
            var child: Node?
            var plusEntry = fuse_entry_param()
            do throws(Errno) {
              let (node, attr) = try overlay.lookup(dir, e.name)
              child = node
              plusEntry = entry(node, attr)
            } catch  where error.code == ENOENT {
              index += 1  // gone meanwhile
              continue
            } catch {
              // Listed, but its attributes cannot be had now: a plain entry (node id 0), which
              // the kernel looks up itself when it is used, and gets the error then.
              plusEntry.attr.st_ino = ino_t(e.ino)
              plusEntry.attr.st_mode = mode_t(e.type) << 12
            }
            added = fuse_add_direntry_plus(req, buffer + used, size - used, e.name, &plusEntry, next)
            if added > size - used {
              if let child { overlay.nodes.forget(child, 1) }
              break
            }
          } else {
            var st = stat()
            st.st_ino = ino_t(e.ino)
            st.st_mode = mode_t(e.type) << 12
            added = fuse_add_direntry(req, buffer + used, size - used, e.name, &st, next)
            if added > size - used { break }
          }
        }
        used += added
        index += 1
      }
    }
    // Kept only for a listing the reply did not finish (most fit in one).
    if index >= entries.count + 2 {
      if !fresh { listings.finish(dir) }
    } else if fresh {
      listings.keep(dir, listing)
    }
    fuse_reply_buf(req, buffer, used)
  }

  func fsyncdir(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
    let n = node(ino)
    let rc = volatile ? 0 : overlay.tree.read { n.dirs[0].layer == 0 ? Glibc.fsync(n.dirs[0].fd) : 0 }
    fuse_reply_err(req, rc == 0 ? 0 : errno)
  }

  func statfs(_ req: fuse_req_t?) {
    var st = statvfs()
    if fstatvfs(overlay.root.dirs[0].fd, &st) != 0 { fuse_reply_err(req, errno) } else { fuse_reply_statfs(req, &st) }
  }
}
