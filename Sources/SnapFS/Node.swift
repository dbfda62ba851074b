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
  /// through copy-up so it is stable while the kernel holds the node.
  let ino: UInt64
  /// S_IFMT bits. A name's type never changes: replacing it makes a new node.
  let type: mode_t
  var parent: Node?
  var name: String
  /// The layer of the topmost file.
  var layer: Int
  /// The topmost file: O_PATH for non-directories, O_RDONLY|O_DIRECTORY for directories
  /// (then the same descriptor as `dirs[0].fd`).
  var fd: Int32
  /// Directories only: the directory in each layer that contributes to the merged
  /// listing, topmost first, ending at an opaque one.
  var dirs: [LayerDir]
  /// Removed from the tree (unlinked, or renamed over) while the kernel still holds it.
  var detached = false
  /// How many times the kernel was told about this node and has not forgotten it.
  var lookups: UInt64 = 0

  init(ino: UInt64, type: mode_t, parent: Node?, name: String, layer: Int, fd: Int32, dirs: [LayerDir]) {
    self.ino = ino
    self.type = type
    self.parent = parent
    self.name = name
    self.layer = layer
    self.fd = fd
    self.dirs = dirs
  }

  deinit {
    if type == S_IFDIR {
      for dir in dirs { close(dir.fd) }
    } else {
      close(fd)
    }
  }

  var isDirectory: Bool { type == S_IFDIR }
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
/// kernel still holds needs no probing of the layers.
final class NodeTable: @unchecked Sendable {
  private struct Key: Hashable {
    let parent: ObjectIdentifier
    let name: String
  }
  private let mutex = Mutex()
  private var map: [Key: Node] = [:]

  /// The node of `name` in `parent` if the kernel holds it, counted once more.
  func find(_ parent: Node, _ name: String) -> Node? {
    mutex.with {
      guard let node = map[Key(parent: ObjectIdentifier(parent), name: name)] else { return nil }
      node.lookups += 1
      return node
    }
  }

  /// Records a fresh node for its parent and name and counts it once; answers the node
  /// another thread recorded meanwhile instead, if any.
  func intern(_ node: Node) -> Node {
    mutex.with {
      let key = Key(parent: ObjectIdentifier(node.parent!), name: node.name)
      if let existing = map[key] {
        existing.lookups += 1
        return existing
      }
      map[key] = node
      node.lookups = 1
      _ = Unmanaged.passRetained(node)
      return node
    }
  }

  /// Counts a node the kernel already holds once more (a hard link's reply, the root).
  func count(_ node: Node) {
    mutex.with {
      if node.lookups == 0 { _ = Unmanaged.passRetained(node) }
      node.lookups += 1
    }
  }

  /// The kernel forgot `n` references: at zero the node leaves the table and is freed once
  /// nothing else (open directories, children) holds it.
  func forget(_ node: Node, _ n: UInt64) {
    let release: Bool = mutex.with {
      node.lookups -= min(n, node.lookups)
      guard node.lookups == 0 else { return false }
      if !node.detached, let parent = node.parent {
        let key = Key(parent: ObjectIdentifier(parent), name: node.name)
        if map[key] === node { map[key] = nil }
      }
      return true
    }
    if release { Unmanaged.passUnretained(node).release() }
  }

  /// `name` in `parent` is gone: its node, if the kernel holds it, stays valid for the
  /// kernel's open files but no longer answers lookups.
  func detach(_ parent: Node, _ name: String) {
    mutex.with {
      let key = Key(parent: ObjectIdentifier(parent), name: name)
      if let node = map.removeValue(forKey: key) { node.detached = true }
    }
  }

  /// A rename: `node` is now `name` in `parent`.
  func move(_ node: Node, to parent: Node, _ name: String) {
    mutex.with {
      if let old = node.parent {
        let key = Key(parent: ObjectIdentifier(old), name: node.name)
        if map[key] === node { map[key] = nil }
      }
      node.parent = parent
      node.name = name
      if node.lookups > 0 && !node.detached {
        map[Key(parent: ObjectIdentifier(parent), name: name)] = node
      }
    }
  }
}
