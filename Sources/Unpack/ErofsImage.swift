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
/// - 4 KiB blocks; the superblock at 1024, overlayfs's shared xattrs right after it; then
///   inode records from 2048 (nid = byte offset / 32) in the order a walk visits them
///   (depth first, by name), each large directory's or symlink's data blocks right after
///   the block that holds its inode: a cold `find` or `tar` reads the image forwards.
/// - Compact (32-byte) inodes where the entry's fields fit (owners and link counts under
///   65536, sizes under 4 GiB, an mtime of whole seconds within 2^32 s of the image's
///   epoch); else extended (64-byte) ones. Linux 6.15+ reads a compact inode's own mtime
///   (older kernels show the image's epoch: `LayerImages.probe` checks which, and the
///   volume name `compactMark` says an image has them); `compact` false writes extended
///   inodes only. (Not the 48-bit layout flag, which would keep older kernels out: 6.18
///   calls it experimental and warns at every mount.)
/// - Xattrs inline, with the kernel's short name prefixes; an overlayfs xattr that many
///   entries carry alike (a stub's empty metacopy) shared: 4 bytes per entry.
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
  /// The volume name of an image with compact inodes (whose mtimes need Linux 6.15+).
  public static let compactMark = Array("compact-mtimes".utf8)
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
    var xattrs: [UInt8] = []  // the xattr body (header, shared ids, inline entries), or empty
    var layout = Layout.flatPlain
    var compact = false  // a 32-byte inode, else 64
    var data: [UInt8] = []  // directory blocks or symlink target, unpadded
    var inline = 0  // bytes of `data` stored after the inode
    var chunkBits = 0
    var chunks = 0
    var offset = 0  // of the inode record in the image
    var dataBlock: UInt32 = 0  // first data block of the part not inline
    var nlink: UInt32 = 1
    var inodeSize: Int { compact ? 32 : 64 }
    var record: Int { inodeSize + xattrs.count + (layout == .chunkBased ? chunks * 4 : inline) }
    var dataBlocks: Int { (data.count - inline + blockSize - 1) / blockSize }
  }

  /// Writes the image of `tree` to `fd` (an empty file) and returns its size. `fd` is not
  /// synced. `compact`: 32-byte inodes where an entry's fields fit them (the image then
  /// needs Linux 6.15+, `LayerImages.probe`); else extended inodes only.
  @discardableResult
  public static func write(_ tree: LayerTree, to fd: Int32, what: String, buildTime: timespec, compact: Bool = true) throws -> Int {
    // Inodes in the order a walk visits them (find, tar, cp -a: depth first, by name), so a
    // cold walk reads the image forwards; the root first (its nid must fit 16 bits). A
    // hard link is placed once, at its first name in that order.
    var inodes: [Inode] = []
    var index: [ObjectIdentifier: Int] = [:]
    var stack: [(LayerTree.Node, Int)] = [(tree.root, 0)]
    while let (node, parent) = stack.popLast() {
      if index[ObjectIdentifier(node)] != nil { continue }  // a hard link's later name
      index[ObjectIdentifier(node)] = inodes.count
      inodes.append(Inode(node: node, parent: parent))
      guard node.isDirectory else { continue }
      let me = inodes.count - 1
      for (_, child) in node.children.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }).reversed() {
        stack.append((child, me))
      }
    }

    // Xattrs: overlayfs's that many entries carry alike (a stub's empty metacopy) are
    // stored once, in the shared area right after the superblock; the rest inline.
    let stored = inodes.map(\.node.storedXattrs)
    let shared = sharedXattrs(stored)
    // Sizes: xattrs, data, layouts.
    for i in inodes.indices {
      let node = inodes[i].node
      inodes[i].xattrs = try xattrBody(stored[i], shared: shared.ids, what: what)
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
      var all = inodes[i].node.children.map { ($0.key, index[ObjectIdentifier($0.value)]!) }
      all += [(Array(".".utf8), i), (Array("..".utf8), inodes[i].parent)]
      all.sort { $0.0.lexicographicallyPrecedes($1.0) }
      var blocks: [[(name: [UInt8], child: Int)]] = [[]]
      var used = 0
      for e in all {
        let cost = 12 + e.0.count
        if used + cost > blockSize {
          blocks.append([])
          used = 0
        }
        blocks[blocks.count - 1].append((e.0, e.1))
        used += cost
      }
      dirBlocks[i] = blocks
      let size = (blocks.count - 1) * blockSize + used
      inodes[i].data = [UInt8](repeating: 0, count: size)  // filled once nids are known
    }
    // Compact inodes: 16-bit owners and link counts, 32-bit sizes, and an mtime of whole
    // seconds after the image's epoch (the earliest such mtime).
    let epoch = inodes.lazy.map(\.node.meta.mtime).filter { $0.tv_nsec == 0 }.map(\.tv_sec).min() ?? buildTime.tv_sec
    for i in inodes.indices where compact {
      let node = inodes[i].node
      let mtime = node.meta.mtime
      let size = node.type == S_IFREG ? Int(node.size) : inodes[i].data.count
      inodes[i].compact =
        node.meta.uid <= 0xFFFF && node.meta.gid <= 0xFFFF && inodes[i].nlink <= 0xFFFF && size <= Int(UInt32.max)
        && mtime.tv_nsec == 0 && mtime.tv_sec >= epoch && UInt64(mtime.tv_sec - epoch) <= UInt64(UInt32.max)
    }
    let anyCompact = inodes.contains(where: \.compact)
    for i in inodes.indices where !inodes[i].data.isEmpty {
      let tail = inodes[i].data.count % blockSize
      if tail > 0 && inodes[i].inodeSize + inodes[i].xattrs.count + tail <= blockSize {
        inodes[i].layout = .flatInline
        inodes[i].inline = tail
      }
    }
    // Place the records in order, none of up to a block crossing one; data blocks (large
    // directories, long symlink targets) go right after the block that holds their inode.
    var offset = firstInode
    var pending: [Int] = []
    func placePending() {
      offset = (offset + blockSize - 1) / blockSize * blockSize
      for p in pending {
        inodes[p].dataBlock = UInt32(offset / blockSize)
        offset += inodes[p].dataBlocks * blockSize
      }
      pending.removeAll()
    }
    for i in inodes.indices {
      let size = inodes[i].record
      if size <= blockSize && offset / blockSize != (offset + size - 1) / blockSize { placePending() }
      inodes[i].offset = offset
      offset += (size + 31) & ~31
      if inodes[i].data.count > inodes[i].inline { pending.append(i) }
    }
    placePending()
    let blocks = UInt32(offset / blockSize)
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

    // Write in offset order: records, and data blocks where they were placed.
    var out = Output(fd: fd, what: what)
    var superblock = [UInt8]()
    superblock.append(le: magic)
    superblock.append(le: UInt32(0))  // checksum (no SB_CHKSUM)
    superblock.append(le: UInt32(0))  // feature_compat
    superblock.append(UInt8(blockBits))
    superblock.append(0)  // sb_extslots
    superblock.append(le: UInt16(inodes[0].offset / 32))  // root_nid
    superblock.append(le: UInt64(inodes.count))  // inos
    if anyCompact {
      superblock.append(le: UInt64(bitPattern: Int64(epoch)))  // epoch: compact inodes' mtime base
      superblock.append(le: UInt32(0))  // fixed_nsec
    } else {
      superblock.append(le: UInt64(max(0, buildTime.tv_sec)))
      superblock.append(le: UInt32(buildTime.tv_nsec))
    }
    superblock.append(le: blocks)  // blocks
    superblock.append(le: UInt32(0))  // meta_blkaddr
    superblock.append(le: UInt32(0))  // xattr_blkaddr: shared xattrs are in block 0
    superblock += [UInt8](repeating: 0, count: 16)  // uuid
    var volume = anyCompact ? compactMark : []
    volume += [UInt8](repeating: 0, count: 16 - volume.count)
    superblock += volume  // volume_name
    let incompat: UInt32 = inodes.contains { $0.layout == .chunkBased } ? incompatChunkedFile : 0
    superblock.append(le: incompat)
    superblock += [UInt8](repeating: 0, count: 128 - superblock.count)
    try out.pad(to: superOffset)
    try out.append(superblock)
    try out.append(shared.area)
    var dataOrder = inodes.indices.filter { inodes[$0].data.count > inodes[$0].inline }.makeIterator()
    var nextData = dataOrder.next()
    func writeData(before limit: Int) throws {
      while let d = nextData, Int(inodes[d].dataBlock) * blockSize < limit {
        try out.pad(to: Int(inodes[d].dataBlock) * blockSize)
        try out.append(inodes[d].data[..<(inodes[d].data.count - inodes[d].inline)])
        nextData = dataOrder.next()
      }
    }
    for (i, inode) in inodes.enumerated() {
      try writeData(before: inode.offset)
      try out.pad(to: inode.offset)
      try out.append(record(inode, ino: UInt32(truncatingIfNeeded: i + 1), epoch: epoch))
    }
    try writeData(before: Int.max)
    try out.pad(to: Int(blocks) * blockSize)
    try out.flush()
    return Int(blocks) * blockSize
  }

  /// Whether the image at `path` has compact inodes (its volume name is `compactMark`).
  public static func hasCompactInodes(_ path: String) throws(SystemError) -> Bool {
    let fd = try At.openFile(path)
    defer { At.close(fd) }
    var name = [UInt8](repeating: 0, count: 16)
    let n = try name.withUnsafeMutableBytes { b in
      Result { () throws(SystemError) in try At.read(fd, path, into: b, at: Int64(superOffset + 64)) }
    }.get()
    return n == 16 && Array(name[..<compactMark.count]) == compactMark && name[compactMark.count...].allSatisfy { $0 == 0 }
  }

  /// An inode's record: the inode, its xattrs, then its chunk map or inline data.
  private static func record(_ inode: Inode, ino: UInt32, epoch: Int) -> [UInt8] {
    let node = inode.node
    var record = [UInt8]()
    record.reserveCapacity(inode.record)
    let size: UInt64 =
      switch node.type {
      case S_IFREG: UInt64(node.size)
      case S_IFDIR, S_IFLNK: UInt64(inode.data.count)
      default: 0
      }
    let u: UInt32 =
      switch inode.layout {
      case .chunkBased: UInt32(inode.chunkBits - blockBits)
      case _ where node.type == S_IFCHR || node.type == S_IFBLK: encodeDevice(node.major, node.minor)
      default: inode.data.count > inode.inline ? inode.dataBlock : 0
      }
    let version: UInt16 = inode.compact ? 0 : 1
    record.append(le: version | inode.layout.rawValue << 1)
    record.append(le: UInt16(inode.xattrs.isEmpty ? 0 : 1 + (inode.xattrs.count - 12) / 4))
    record.append(le: UInt16(truncatingIfNeeded: node.type | (node.meta.mode & 0o7777)))
    if inode.compact {
      record.append(le: UInt16(inode.nlink))  // i_nb (no NLINK_1 bit)
      record.append(le: UInt32(size))
      record.append(le: UInt32(node.meta.mtime.tv_sec - epoch))
      record.append(le: u)
      record.append(le: ino)
      record.append(le: UInt16(node.meta.uid))
      record.append(le: UInt16(node.meta.gid))
      record.append(le: UInt32(0))
    } else {
      record.append(le: UInt16(0))
      record.append(le: size)
      record.append(le: u)
      record.append(le: ino)
      record.append(le: node.meta.uid)
      record.append(le: node.meta.gid)
      record.append(le: UInt64(bitPattern: Int64(node.meta.mtime.tv_sec)))  // (the kernel reads it back signed)
      record.append(le: UInt32(node.meta.mtime.tv_nsec))
      record.append(le: inode.nlink)
      record += [UInt8](repeating: 0, count: 16)
    }
    record += inode.xattrs
    if inode.layout == .chunkBased {
      for _ in 0..<inode.chunks { record.append(le: nullAddress) }
    } else if inode.inline > 0 {
      record += inode.data[(inode.data.count - inode.inline)...]
    }
    return record
  }

  /// Shared xattrs: overlayfs's own (`trusted.overlay.*`, which a container never lists)
  /// that two or more entries carry with the same value, most used first, as many as fit
  /// between the superblock and the root inode. Returns their entries (`area`, written right
  /// after the superblock) and each one's id (its offset / 4, `xattr_blkaddr` being 0).
  private static func sharedXattrs(_ all: [[(name: String, value: [UInt8])]]) -> (area: [UInt8], ids: [XattrKey: UInt32]) {
    var counts: [XattrKey: Int] = [:]
    for xattrs in all {
      for (name, value) in xattrs where name.hasPrefix(OverlayXattr.trusted.prefix) {
        counts[XattrKey(name: name, value: value), default: 0] += 1
      }
    }
    let candidates = counts.filter { $0.value >= 2 }.sorted { a, b in
      if a.value != b.value { return a.value > b.value }
      if a.key.name != b.key.name { return a.key.name < b.key.name }
      return a.key.value.lexicographicallyPrecedes(b.key.value)
    }
    var area: [UInt8] = []
    var ids: [XattrKey: UInt32] = [:]
    let start = superOffset + 128
    for (key, _) in candidates {
      guard let (index, suffix) = prefix(of: key.name), start + area.count + 4 + suffix.count + key.value.count <= firstInode else {
        continue
      }
      let entry = xattrEntry(index, suffix, key.value)
      guard start + area.count + entry.count <= firstInode else { continue }
      ids[key] = UInt32((start + area.count) / 4)
      area += entry
    }
    return (area, ids)
  }

  struct XattrKey: Hashable {
    let name: String
    let value: [UInt8]
  }

  /// One xattr entry (4-byte aligned).
  private static func xattrEntry(_ index: UInt8, _ suffix: [UInt8], _ value: [UInt8]) -> [UInt8] {
    var entry: [UInt8] = [UInt8(suffix.count), index]
    entry.append(le: UInt16(value.count))
    entry += suffix
    entry += value
    while entry.count % 4 != 0 { entry.append(0) }
    return entry
  }

  /// The xattr body: the 12-byte header, the ids of shared ones, then each inline entry.
  private static func xattrBody(
    _ xattrs: [(name: String, value: [UInt8])], shared: [XattrKey: UInt32], what: String
  ) throws -> [UInt8] {
    guard !xattrs.isEmpty else { return [] }
    var ids: [UInt32] = []
    var entries: [UInt8] = []
    for (name, value) in xattrs {
      if let id = shared[XattrKey(name: name, value: value)] {
        ids.append(id)
        continue
      }
      guard let (index, suffix) = prefix(of: name) else {
        throw Unsupported(description: "\(what): the xattr \(name) has a namespace EROFS cannot store")
      }
      guard suffix.count <= 255, value.count <= 65535 else { throw Unsupported(description: "\(what): the xattr \(name) is too long") }
      entries += xattrEntry(index, suffix, value)
    }
    var body = [UInt8](repeating: 0, count: 12)
    body[4] = UInt8(ids.count)  // h_shared_count
    for id in ids { body.append(le: id) }
    body += entries
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
