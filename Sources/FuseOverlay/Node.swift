import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// One layer's directory under a merged directory.
struct LayerDir {
  /// Index into the overlay's layers: 0 is the upper dir when there is one.
  let layer: Int
  /// Opened O_RDONLY|O_DIRECTORY: usable for *at() calls, xattrs and listing.
  let fd: Int32
}

/// What the kernel knows as an inode: one name in the merged tree. Its FUSE node id is
/// the object's address, so a request finds its node without a table lookup.
///
/// Name-space fields (`parent`, `name`, `layer`, `fd`, `dirs`) change only under the
/// overlay's tree lock held for writing; `lookups` and the table entry under the table's
/// mutex.
final class Node: @unchecked Sendable {
  /// The inode number the mount reports: the topmost file's when the node was made, kept
  /// through copy-up so it is stable while the kernel holds the node (and through a split,
  /// see `NodeTable.split`). Set before the node is interned, never after.
  var ino: UInt64
  /// S_IFMT bits. A name's type never changes: replacing it makes a new node.
  let type: mode_t
  var parent: Node?
  var name: String
  /// The layer of the topmost file.
  var layer: Int
  /// Non-directories: -1, or an O_PATH descriptor that keeps the file reachable once its
  /// name is gone. Files otherwise hold no descriptor (a walk of a big tree would run out).
  var pinned: Int32 = -1
  /// Directories only: the directory in each layer that contributes to the merged
  /// listing, topmost first, ending at an opaque one.
  var dirs: [LayerDir]
  /// The inode number of the topmost file itself.
  var realIno: UInt64
  /// An upper file with more than one name: one node for all of them, so that the kernel
  /// has one inode (and one page cache, one size) for the file.
  var linked = false
  /// Removed from the tree (unlinked, or renamed over) while the kernel still holds it.
  var detached = false
  /// The layer a copied-up file came from (for a split, see `Overlay.split`).
  var copiedFrom = 0
  /// A lower regular file that is a metacopy file: where its data is (see `Stub`). Set
  /// before the node is interned; kept through a copy-up for a split, which goes back to it.
  var stub: Stub?
  /// Directories: inode numbers of split children (see `NodeTable.split`) for the node that
  /// next answers the name, as long as the name stays the same upper file: by name, the
  /// inode number shown and the upper file's own. Under the table's mutex.
  var carried: [String: (ino: UInt64, realIno: UInt64)] = [:]
  /// How many times the kernel was told about this node and has not forgotten it.
  var lookups: UInt64 = 0
  /// Open files of this node, by I/O mode (see Passthrough); under Passthrough's mutex.
  var passthroughOpens = 0
  var cachedOpens = 0
  /// The registered backing file while `passthroughOpens > 0` (a lower file's for the node's
  /// life), and whether the open files are the upper file's (else a lower one's, which a
  /// copy-up leaves behind), in either mode.
  var backingID: Int32 = 0
  var backingUpper = false
  /// A lower file's registered descriptor, which serves all its opens (on a read-only
  /// mount, the descriptor its reads go through); else -1.
  var backingFD: Int32 = -1
  /// A small lower file's bytes are being stored in the kernel's page cache (its first open,
  /// see `Passthrough`), or were.
  var storing = false
  var stored = false
  /// Who registered `backingID` or kept `backingFD`: it drops them when the node goes.
  var backingOwner: Passthrough?

  init(ino: UInt64, realIno: UInt64, type: mode_t, parent: Node?, name: String, layer: Int, dirs: [LayerDir]) {
    self.ino = ino
    self.realIno = realIno
    self.type = type
    self.parent = parent
    self.name = name
    self.layer = layer
    self.dirs = dirs
  }

  deinit {
    if backingID > 0 || backingFD >= 0 { backingOwner?.release(self) }
    if type == S_IFDIR {
      for dir in dirs { close(dir.fd) }
    } else if pinned >= 0 {
      close(pinned)
    }
  }

  var isDirectory: Bool { type == S_IFDIR }
  /// A directory's topmost layer, opened O_RDONLY|O_DIRECTORY.
  var fd: Int32 { dirs[0].fd }
  /// A directory with more than one layer in it: overlayfs reports st_nlink 1 for those.
  var isMerged: Bool { dirs.count > 1 }

  /// The FUSE node id.
  var id: UInt64 { UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())) }

  /// This node's directory in `layer`, if it has one.
  func dir(layer: Int) -> Int32? {
    for dir in dirs where dir.layer == layer { return dir.fd }
    return nil
  }
}

/// The nodes the kernel holds, by parent and name, so that a second lookup of a name
/// answers with the same node (and the kernel keeps its caches), and so that a name the
/// kernel still holds needs no probing of the layers. A hard-linked upper file has one
/// node under each of its names.
final class NodeTable: @unchecked Sendable {
  private struct Key: Hashable {
    let parent: Node
    let name: String
    static func == (a: Key, b: Key) -> Bool { a.parent === b.parent && a.name == b.name }
    func hash(into hasher: inout Hasher) {
      hasher.combine(ObjectIdentifier(parent))
      hasher.combine(name)
    }
  }
  private let mutex = Lock()
  private var map: [Key: Node] = [:]
  /// Linked nodes by their upper file's inode number.
  private var linked: [UInt64: Node] = [:]

  private func key(_ parent: Node, _ name: String) -> Key { Key(parent: parent, name: name) }

  /// Counts `node` once more; the first count keeps it alive until the kernel forgets it.
  private func countLocked(_ node: Node) {
    if node.lookups == 0 { _ = Unmanaged.passRetained(node) }
    node.lookups += 1
  }

  /// The node of `name` in `parent` if the kernel holds it, counted once more.
  func find(_ parent: Node, _ name: String) -> Node? {
    mutex.withLock {
      guard let node = map[key(parent, name)] else { return nil }
      countLocked(node)
      return node
    }
  }

  /// The node of `name` in `parent` if the kernel holds it, not counted.
  func peek(_ parent: Node, _ name: String) -> Node? {
    mutex.withLock { map[key(parent, name)] }
  }

  /// Records a fresh node for its parent and name and counts it once; answers the node
  /// another thread recorded meanwhile instead, or the node of the same hard-linked file.
  func intern(_ node: Node) -> Node {
    mutex.withLock {
      let k = key(node.parent!, node.name)
      if let existing = map[k] {
        countLocked(existing)
        return existing
      }
      if let c = node.parent!.carried[node.name], c.realIno == node.realIno { node.ino = c.ino }
      if node.linked {
        if let existing = linked[node.realIno] {
          map[k] = existing
          countLocked(existing)
          return existing
        }
        linked[node.realIno] = node
      }
      map[k] = node
      countLocked(node)
      return node
    }
  }

  /// A new hard link: `node` (an upper file) is also `name` in `parent`; counted once more.
  func addName(_ node: Node, _ parent: Node, _ name: String) {
    mutex.withLock {
      if !node.linked {
        node.linked = true
        linked[node.realIno] = node
      }
      map[key(parent, name)] = node
      node.detached = false
      countLocked(node)
    }
  }

  /// The kernel forgot `n` references: at zero the node leaves the table and is freed once
  /// nothing else (open directories, children) holds it.
  func forget(_ node: Node, _ n: UInt64) {
    let release: Bool = mutex.withLock {
      node.lookups -= min(n, node.lookups)
      guard node.lookups == 0 else { return false }
      if node.linked {
        if linked[node.realIno] === node { linked[node.realIno] = nil }
        for (k, v) in map where v === node { map[k] = nil }
      } else if !node.detached, let parent = node.parent {
        let k = key(parent, node.name)
        if map[k] === node { map[k] = nil }
      }
      return true
    }
    if release { Unmanaged.passUnretained(node).release() }
  }

  /// `name` in `parent` is gone: its node, if the kernel holds it, stays valid for the
  /// kernel's open files but no longer answers lookups under that name. A linked node
  /// keeps its other names.
  func detach(_ parent: Node, _ name: String) {
    mutex.withLock {
      parent.carried[name] = nil
      guard let node = map.removeValue(forKey: key(parent, name)) else { return }
      guard node.linked, let other = map.first(where: { $0.value === node }) else {
        node.detached = true
        return
      }
      if node.parent === parent && node.name == name {
        node.parent = other.key.parent
        node.name = other.key.name
      }
    }
  }

  /// A rename: `name` in `parent` is now `newName` in `newParent`.
  func move(_ node: Node, from parent: Node, _ name: String, to newParent: Node, _ newName: String) {
    mutex.withLock {
      let old = key(parent, name)
      parent.carried[name] = nil
      if map[old] === node { map[old] = nil }
      if node.parent === parent && node.name == name {
        node.parent = newParent
        node.name = newName
      }
      if node.lookups > 0 { map[key(newParent, newName)] = node }
    }
  }

  /// A split: the kernel's inode of `node` (a file copied up while open through its lower
  /// backing file) can no longer be opened, so its names are answered by a fresh node from
  /// the next lookup on, with the same inode number. `node` stays for what the kernel holds,
  /// detached from its names like a removed file (the caller pins it first).
  func split(_ node: Node) {
    mutex.withLock {
      guard node.parent != nil, !node.detached else { return }
      if node.linked, linked[node.realIno] === node { linked[node.realIno] = nil }
      for (k, v) in map where v === node {
        map[k] = nil
        k.parent.carried[k.name] = (node.ino, node.realIno)
      }
      node.detached = true
    }
  }
}
