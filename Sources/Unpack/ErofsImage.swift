import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Writes a `LayerTree` as an EROFS image: the layer's metadata in one file, which the
/// kernel mounts read-only (file-backed, no loop device) as the layer's lower directory.
///
/// Why not mkfs.erofs: Debian's erofs-utils (1.5) builds images from a directory on disk,
/// which is the stub tree this replaces; its tar mode came in 1.7. The subset written here
/// is small (the kernel's `Documentation/filesystems/erofs.rst`, `fs/erofs/erofs_fs.h`):
///
/// - 4 KiB blocks; the superblock at 1024; the metadata area from block 0 (nid = byte offset
///   / 32), then data blocks.
/// - Extended (64-byte) inodes only: 32-bit owners, nanosecond mtimes, 32-bit link counts.
/// - Inline xattrs (no shared ones), with the kernel's short name prefixes.
/// - Directories, symlinks and small regular files kept inline (`LayerTree.inlineMax`):
///   their last partial block inline after the inode (`FLAT_INLINE`) when the whole record
///   fits in one block, else plain data blocks.
/// - Stubs: `CHUNK_BASED` with every chunk a hole: the size, no data (their data is the
///   object overlayfs's metacopy redirect names), as composefs writes them.
/// - Devices, FIFOs, sockets, empty files: `FLAT_PLAIN`, no data; devices' number in `i_u`.
///
/// Every inode record (inode, xattrs, inline part) of up to a block starts where it fits in
/// its block, so none crosses one.
public enum ErofsImage {
  static let blockBits = 12
  static let blockSize = 1 << blockBits
  static let superOffset = 1024
  static let magic: UInt32 = 0xE0F5_E1E2
  static let incompatChunkedFile: UInt32 = 0x4
  /// Where the first inode (the root) goes: after the superblock, nid 64.
  static let firstInode = 2048
  static let nullAddress: UInt32 = 0xFFFF_FFFF

  enum Layout: UInt16 {
    case flatPlain = 0
    case flatInline = 2
    case chunkBased = 4
  }

  public struct Unsupported: Error, CustomStringConvertible {
    public let description: String
  }

  /// One inode's plan.
  private struct Inode {
    let node: LayerTree.Node
    let parent: Int  // index of the parent directory's inode
    var xattrs: [UInt8] = []  // the inline xattr body (header and entries), or empty
    var layout = Layout.flatPlain
    var data: [UInt8] = []  // directory blocks or symlink target, unpadded
    var inline = 0  // bytes of `data` stored after the inode
    var chunkBits = 0
    var chunks = 0
    var offset = 0  // of the inode record in the image
    var dataBlock: UInt32 = 0  // first data block of the part not inline
    var nlink: UInt32 = 1
    var record: Int { 64 + xattrs.count + (layout == .chunkBased ? chunks * 4 : inline) }
  }

  /// Writes the image of `tree` to `fd` (an empty file) and returns its size. `fd` is not
  /// synced.
  @discardableResult
  public static func write(_ tree: LayerTree, to fd: Int32, what: String, buildTime: timespec) throws -> Int {
    // Inodes in walk order (the root first: its nid must fit 16 bits); hard links once.
    var inodes: [Inode] = []
    var index: [ObjectIdentifier: Int] = [:]
    var entries: [[(name: [UInt8], child: Int)]] = []  // per inode: directory entries
    var queue: [(LayerTree.Node, Int)] = [(tree.root, 0)]
    var head = 0
    while head < queue.count {
      let (node, parent) = queue[head]
      head += 1
      let me = inodes.count
      index[ObjectIdentifier(node)] = me
      inodes.append(Inode(node: node, parent: parent))
      entries.append([])
      guard node.isDirectory else { continue }
      for (_, child) in node.children.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
        // A hard link is queued once, at its first name.
        if child.links > 1 {
          if index[ObjectIdentifier(child)] != nil { continue }
          index[ObjectIdentifier(child)] = -1
        }
        queue.append((child, me))
      }
    }
    for i in inodes.indices where inodes[i].node.isDirectory {
      entries[i] = inodes[i].node.children.map { ($0.key, index[ObjectIdentifier($0.value)]!) }
    }

    // Sizes: xattrs, data, layouts.
    for i in inodes.indices {
      let node = inodes[i].node
      inodes[i].xattrs = try xattrBody(node.storedXattrs, what: what)
      switch node.type {
      case S_IFDIR:
        inodes[i].nlink = 2 + UInt32(node.children.values.filter(\.isDirectory).count)
      case S_IFREG where node.data != nil:
        inodes[i].data = node.data!
        inodes[i].nlink = UInt32(node.links)
      case S_IFREG where node.size > 0:
        inodes[i].layout = .chunkBased
        let bits = max(blockBits, min(blockBits + 31, 64 - (UInt64(node.size) - 1).leadingZeroBitCount))
        inodes[i].chunkBits = bits
        inodes[i].chunks = Int((UInt64(node.size) + (UInt64(1) << bits) - 1) >> bits)
        inodes[i].nlink = UInt32(node.links)
      case S_IFLNK:
        inodes[i].data = node.target
        inodes[i].nlink = UInt32(node.links)
      default:
        inodes[i].nlink = UInt32(max(node.links, 1))
      }
    }
    // Directory blocks need nids: place inodes first. A directory's size depends only on
    // its names, so its inline tail is known before.
    var dirBlocks: [[[(name: [UInt8], child: Int)]]] = Array(repeating: [], count: inodes.count)
    for i in inodes.indices where inodes[i].node.isDirectory {
      var all = entries[i] + [(Array(".".utf8), i), (Array("..".utf8), inodes[i].parent)]
      all.sort { $0.name.lexicographicallyPrecedes($1.name) }
      var blocks: [[(name: [UInt8], child: Int)]] = [[]]
      var used = 0
      for e in all {
        let cost = 12 + e.name.count
        if used + cost > blockSize {
          blocks.append([])
          used = 0
        }
        blocks[blocks.count - 1].append(e)
        used += cost
      }
      dirBlocks[i] = blocks
      let size = (blocks.count - 1) * blockSize + used
      inodes[i].data = [UInt8](repeating: 0, count: size)  // filled once nids are known
    }
    for i in inodes.indices where !inodes[i].data.isEmpty {
      let tail = inodes[i].data.count % blockSize
      if tail > 0 && 64 + inodes[i].xattrs.count + tail <= blockSize {
        inodes[i].layout = .flatInline
        inodes[i].inline = tail
      }
    }
    // Place the records.
    var offset = firstInode
    for i in inodes.indices {
      let size = inodes[i].record
      if size <= blockSize && offset / blockSize != (offset + size - 1) / blockSize { offset = (offset / blockSize + 1) * blockSize }
      inodes[i].offset = offset
      offset += (size + 31) & ~31
    }
    // Then data blocks.
    var block = UInt32((offset + blockSize - 1) / blockSize)
    for i in inodes.indices where inodes[i].data.count > inodes[i].inline {
      inodes[i].dataBlock = block
      block += UInt32((inodes[i].data.count - inodes[i].inline + blockSize - 1) / blockSize)
    }
    // Directory contents, now that every nid is known.
    for i in inodes.indices where inodes[i].node.isDirectory {
      var data = [UInt8]()
      data.reserveCapacity(inodes[i].data.count)
      for (b, entriesOfBlock) in dirBlocks[i].enumerated() {
        let start = b * blockSize
        var nameOffset = 12 * entriesOfBlock.count
        for e in entriesOfBlock {
          let child = inodes[e.child]
          data.append(le: UInt64(child.offset / 32))
          data.append(le: UInt16(nameOffset))
          data.append(fileType(child.node.type))
          data.append(0)
          nameOffset += e.name.count
        }
        for e in entriesOfBlock { data += e.name }
        if b < dirBlocks[i].count - 1 { data += [UInt8](repeating: 0, count: start + blockSize - data.count) }
      }
      precondition(data.count == inodes[i].data.count)
      inodes[i].data = data
    }

    // Write: the metadata area, then the data blocks, in order.
    var out = Output(fd: fd, what: what)
    var superblock = [UInt8]()
    superblock.append(le: magic)
    superblock.append(le: UInt32(0))  // checksum (no SB_CHKSUM)
    superblock.append(le: UInt32(0))  // feature_compat
    superblock.append(UInt8(blockBits))
    superblock.append(0)  // sb_extslots
    superblock.append(le: UInt16(inodes[0].offset / 32))  // root_nid
    superblock.append(le: UInt64(inodes.count))  // inos
    superblock.append(le: UInt64(max(0, buildTime.tv_sec)))
    superblock.append(le: UInt32(buildTime.tv_nsec))
    superblock.append(le: block)  // blocks
    superblock.append(le: UInt32(0))  // meta_blkaddr
    superblock.append(le: UInt32(0))  // xattr_blkaddr
    superblock += [UInt8](repeating: 0, count: 32)  // uuid, volume_name
    superblock.append(le: inodes.contains { $0.layout == .chunkBased } ? incompatChunkedFile : 0)
    superblock += [UInt8](repeating: 0, count: 128 - superblock.count)
    try out.pad(to: superOffset)
    try out.append(superblock)
    for (i, inode) in inodes.enumerated() {
      try out.pad(to: inode.offset)
      let node = inode.node
      var record = [UInt8]()
      record.reserveCapacity(inode.record)
      let version: UInt16 = 1  // extended
      record.append(le: version | inode.layout.rawValue << 1)
      record.append(le: UInt16(inode.xattrs.isEmpty ? 0 : 1 + (inode.xattrs.count - 12) / 4))
      record.append(le: UInt16(truncatingIfNeeded: node.type | (node.meta.mode & 0o7777)))
      record.append(le: UInt16(0))
      let size: UInt64 =
        switch node.type {
        case S_IFREG: UInt64(node.size)
        case S_IFDIR, S_IFLNK: UInt64(inode.data.count)
        default: 0
        }
      record.append(le: size)
      switch inode.layout {
      case .chunkBased: record.append(le: UInt32(inode.chunkBits - blockBits))
      case _ where node.type == S_IFCHR || node.type == S_IFBLK: record.append(le: encodeDevice(node.major, node.minor))
      default: record.append(le: inode.data.count > inode.inline ? inode.dataBlock : 0)
      }
      record.append(le: UInt32(truncatingIfNeeded: i + 1))  // i_ino
      record.append(le: node.meta.uid)
      record.append(le: node.meta.gid)
      record.append(le: UInt64(bitPattern: Int64(node.meta.mtime.tv_sec)))  // (the kernel reads it back signed)
      record.append(le: UInt32(node.meta.mtime.tv_nsec))
      record.append(le: inode.nlink)
      record += [UInt8](repeating: 0, count: 16)
      record += inode.xattrs
      if inode.layout == .chunkBased {
        for _ in 0..<inode.chunks { record.append(le: nullAddress) }
      } else if inode.inline > 0 {
        record += inode.data[(inode.data.count - inode.inline)...]
      }
      try out.append(record)
    }
    for inode in inodes where inode.data.count > inode.inline {
      try out.pad(to: Int(inode.dataBlock) * blockSize)
      try out.append(inode.data[..<(inode.data.count - inode.inline)])
    }
    try out.pad(to: Int(block) * blockSize)
    try out.flush()
    return Int(block) * blockSize
  }

  /// The inline xattr body: the 12-byte header, then each entry (4-byte aligned).
  private static func xattrBody(_ xattrs: [(name: String, value: [UInt8])], what: String) throws -> [UInt8] {
    guard !xattrs.isEmpty else { return [] }
    var body = [UInt8](repeating: 0, count: 12)
    for (name, value) in xattrs {
      guard let (index, suffix) = prefix(of: name) else {
        throw Unsupported(description: "\(what): the xattr \(name) has a namespace EROFS cannot store")
      }
      guard suffix.count <= 255, value.count <= 65535 else { throw Unsupported(description: "\(what): the xattr \(name) is too long") }
      body.append(UInt8(suffix.count))
      body.append(index)
      body.append(le: UInt16(value.count))
      body += suffix
      body += value
      while body.count % 4 != 0 { body.append(0) }
    }
    guard body.count <= 12 + 4 * 65534 else { throw Unsupported(description: "\(what): xattrs too large") }
    return body
  }

  /// The kernel's short prefix index for an xattr name, and the rest of the name.
  static func prefix(of name: String) -> (UInt8, [UInt8])? {
    let bytes = Array(name.utf8)
    let known: [(String, UInt8)] = [
      ("system.posix_acl_access", 2), ("system.posix_acl_default", 3), ("user.", 1), ("trusted.", 4), ("security.", 6),
    ]
    for (p, index) in known {
      let pb = Array(p.utf8)
      if bytes.count >= pb.count, Array(bytes[..<pb.count]) == pb {
        if index == 2 || index == 3 { return bytes.count == pb.count ? (index, []) : nil }
        return bytes.count > pb.count ? (index, Array(bytes[pb.count...])) : nil
      }
    }
    return nil
  }

  static func fileType(_ type: mode_t) -> UInt8 {
    switch type {
    case S_IFREG: 1
    case S_IFDIR: 2
    case S_IFCHR: 3
    case S_IFBLK: 4
    case S_IFIFO: 5
    case S_IFSOCK: 6
    case S_IFLNK: 7
    default: 0
    }
  }

  /// The kernel's `new_encode_dev`.
  static func encodeDevice(_ major: UInt32, _ minor: UInt32) -> UInt32 {
    (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
  }

  /// Sequential writes through a 1 MiB buffer.
  private struct Output {
    let fd: Int32
    let what: String
    var buffer: [UInt8] = []
    var written = 0
    var position: Int { written + buffer.count }

    init(fd: Int32, what: String) {
      self.fd = fd
      self.what = what
      buffer.reserveCapacity(1 << 20)
    }

    mutating func pad(to offset: Int) throws {
      precondition(offset >= position, "ErofsImage: records out of order")
      try append([UInt8](repeating: 0, count: offset - position))
    }

    mutating func append<C: Collection>(_ bytes: C) throws where C.Element == UInt8 {
      buffer += bytes
      if buffer.count >= 1 << 20 { try flush() }
    }

    mutating func flush() throws {
      guard !buffer.isEmpty else { return }
      let failure = buffer.withUnsafeBytes { b -> SystemError? in
        do throws(SystemError) { try At.write(fd, what, b, at: Int64(written)) } catch { return error }
        return nil
      }
      if let failure { throw failure }
      written += buffer.count
      buffer.removeAll(keepingCapacity: true)
    }
  }
}

extension Array where Element == UInt8 {
  fileprivate mutating func append<T: FixedWidthInteger>(le value: T) {
    Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
  }
}
