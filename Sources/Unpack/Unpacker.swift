import CArchive
import SnapshotSys
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A layer to unpack: how errors name it, how it is compressed, and the digests it must
/// have (nil: not checked).
public struct LayerDescription: Sendable {
  public var name: String
  public var compression: Compression
  public var digest: Digest?
  public var diffID: Digest?

  public init(name: String, compression: Compression, digest: Digest?, diffID: Digest?) {
    self.name = name
    self.compression = compression
    self.digest = digest
    self.diffID = diffID
  }
}

/// What an unpacked layer holds.
public struct UnpackedLayer: Sendable {
  /// Digest of the blob as read (compressed) and of the tar stream (the diffID).
  public var digest: Digest
  public var diffID: Digest
  public var entries: Int
  /// Bytes of regular files as the tar has them (each entry counted).
  public var fileBytes: Int64
  /// The objects the layer's stubs name, each once.
  public var objects: [String: ObjectInfo]
  /// Objects a stub named until a later entry of the same path replaced it: unless
  /// something else uses them, orphans to collect.
  public var dropped: Set<String> = []
  /// Directories the tar holds entries below without an entry of their own, sorted: made
  /// 0755 root, as containerd makes a parent no layer has; where a lower layer has one,
  /// they take its metadata (`ImplicitDirectories`), which depends on the chain.
  public var implicitDirectories: [String] = []

  public init(
    digest: Digest, diffID: Digest, entries: Int, fileBytes: Int64, objects: [String: ObjectInfo], dropped: Set<String> = [],
    implicitDirectories: [String] = []
  ) {
    self.digest = digest
    self.diffID = diffID
    self.entries = entries
    self.fileBytes = fileBytes
    self.objects = objects
    self.dropped = dropped
    self.implicitDirectories = implicitDirectories
  }
}

/// Bytes of the blob read so far, for progress reports from another thread.
public final class ProgressCounter: Sendable {
  private let value = Atomic<Int64>(0)
  public init() {}
  public var bytes: Int64 { value.load(ordering: .relaxed) }
  func add(_ n: Int) { value.add(Int64(n), ordering: .relaxed) }
}

/// Unpacks layer tarballs into directories that overlayfs can use as lower layers.
///
/// Two threads per layer: one reads the blob, hashes it (the digest) and decompresses it
/// (gzip with igzip, zstd with libarchive); the caller's thread parses the tar with
/// libarchive, hashes the tar stream (the diffID) and each file, both at once
/// (`Hasher.update(_:pairedWith:_:)`), writes new content as objects and the entries into a
/// `LayerTree`. The reading thread is the less busy one then (`perf record` of the benchmark's
/// big layer: inflate and the blob's hash against file and tar hashes, libarchive and ext4),
/// and an import takes a seventh less CPU than with the tar hashed apart by the reader.
/// Regular files become stubs of content objects (`ObjectStore`), small
/// ones keep their data in the tree (`LayerTree.inlineMax`); OCI whiteouts become overlayfs
/// whiteouts and opaque directories.
///
/// Nothing is written but objects: the tree applies the tar's path rules (`LayerTree`), so
/// `..`, absolute paths, and writes through symlinks (even ones pointing inside the layer)
/// are refused, as are hard links leaving the layer and `*.overlay.*` xattrs. The objects are
/// made durable with one `syncfs(2)` once the layer's files are written too (by `unpack`,
/// or by the caller of `read`); large ones' writeback starts as each is made, and every
/// 64 MiB of new objects starts a `syncfs` beside the unpack (`ObjectStore.startSync`), so
/// the one that ends a large layer has little left to commit.
public enum Unpacker {
  /// Reads a layer: its files' data into `objects` (not yet durable: the caller writes the
  /// layer's files, then calls `objects.sync()`), its entries into a tree in memory, which
  /// becomes the layer's image (`ErofsImage`) or directory (`LayerTree.materialize`).
  public static func read(
    _ source: ByteSource, _ layer: LayerDescription, objects: ObjectStore, progress: ProgressCounter? = nil
  ) throws(LayerError) -> (UnpackedLayer, LayerTree) {
    let pipe = ChunkPipe(depth: BlobReader.depth)
    let reader = BlobReader(source: source, layer: layer, pipe: pipe, progress: progress)
    let finished: Promise<Void>
    do {
      finished = try Threads.run { reader.run() }
    } catch {
      throw LayerError(.failed, "layer \(layer.name): cannot start a thread: \(error)")
    }
    let extracted: Result<Extractor.Totals, LayerError>
    let x = Extractor(layer: layer, objects: objects)
    do {
      extracted = .success(try x.extract(from: pipe))
    } catch {
      extracted = .failure(error)
    }
    if case .failure = extracted { pipe.abandon() }
    finished.wait()
    // A failure reading or decompressing explains a tar error that follows from it.
    if let e = reader.error { throw e }
    let totals = try extracted.get()
    let diffID = x.tarHash.finalize()
    // (An uncompressed blob is its tar stream: the extractor hashed the same bytes.)
    let digest = reader.compression == .none ? diffID : reader.compressedHash.finalize()
    if let want = layer.digest, want != digest {
      throw LayerError(.invalid, "layer \(layer.name): digest mismatch: the blob is \(digest), expected \(want)")
    }
    if let want = layer.diffID, want != diffID {
      throw LayerError(.invalid, "layer \(layer.name): diffID mismatch: the uncompressed tar is \(diffID), expected \(want)")
    }
    let unpacked = UnpackedLayer(
      digest: digest, diffID: diffID, entries: totals.entries, fileBytes: totals.fileBytes, objects: totals.objects,
      dropped: totals.dropped, implicitDirectories: totals.implicit.sorted())
    return (unpacked, x.tree)
  }

  /// Reads a layer and writes its entries into the empty directory `dir` (stubs), durable
  /// when this returns: the layer store's form where the kernel has no EROFS.
  public static func unpack(
    _ source: ByteSource, _ layer: LayerDescription, into dir: String, objects: ObjectStore,
    progress: ProgressCounter? = nil
  ) throws(LayerError) -> UnpackedLayer {
    let (unpacked, tree) = try read(source, layer, objects: objects, progress: progress)
    do {
      try tree.materialize(into: dir)
      let fd = try At.openDirectory(dir)
      defer { At.close(fd) }
      try At.syncfs(fd, dir)
      try objects.sync()  // (the same file system, unless a caller put them apart)
    } catch {
      throw LayerError(.failed, "layer \(layer.name): \(error)", errno: error.errno)
    }
    return unpacked
  }
}

// MARK: - Reading and decompressing

/// The blob side of an unpack, on its own thread: read, hash, decompress, hand on.
final class BlobReader: @unchecked Sendable {
  private(set) var source: ByteSource
  let layer: LayerDescription
  /// The layer's compression; `.detect` is replaced by what the blob's first bytes say.
  private(set) var compression: Compression
  let pipe: ChunkPipe
  let progress: ProgressCounter?
  var compressedHash = Hasher()
  var error: LayerError?
  private let input = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)

  /// What one unpack holds between its two threads: `depth` chunks of `chunkSize` queued,
  /// plus the one being filled and the one being parsed (the pipe recycles them): 6 MiB
  /// whatever the layer's size.
  static let chunkSize = 1 << 20
  static let depth = 4

  init(source: ByteSource, layer: LayerDescription, pipe: ChunkPipe, progress: ProgressCounter?) {
    self.source = source
    self.layer = layer
    self.pipe = pipe
    self.progress = progress
    compression = layer.compression
  }

  deinit { input.deallocate() }

  func run() {
    do {
      if compression == .detect { compression = try detect() }
      switch compression {
      case .none, .detect: try copy()
      case .gzip: try gunzip()
      case .zstd: try inflate()
      }
      pipe.close()
    } catch {
      self.error = error
      pipe.close(error: error)
    }
  }

  /// The compression the blob's first bytes show; they are read again (and hashed once)
  /// through a source that gives them back first.
  private func detect() throws(LayerError) -> Compression {
    var head: [UInt8] = []
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 1)
    defer { buffer.deallocate() }
    while head.count < 4 {
      let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(4 - head.count)]))
      if n == 0 { break }
      head += buffer[0..<n]
    }
    source = PrefixedSource(head, source)
    if head.starts(with: [0x1f, 0x8b]) { return .gzip }
    if head.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
    return .none
  }

  /// Reads the next piece of the blob into `input` and hashes it.
  func readBlob() throws(LayerError) -> Int {
    let n = try source.read(into: input)
    if n > 0 {
      compressedHash.update(UnsafeRawBufferPointer(rebasing: input[0..<n]))
      progress?.add(n)
    }
    return n
  }

  /// An uncompressed tar: read and hand on (the extractor's tar hash is the digest).
  private func copy() throws(LayerError) {
    while true {
      let chunk = pipe.chunk(capacity: Self.chunkSize)
      while chunk.count < chunk.capacity {
        let n = try source.read(into: UnsafeMutableRawBufferPointer(start: chunk.base + chunk.count, count: chunk.capacity - chunk.count))
        if n == 0 { break }
        progress?.add(n)
        chunk.count += n
      }
      if chunk.count == 0 { return }
      if !pipe.put(chunk) { return }  // the extractor gave up
    }
  }

  /// A gzip-compressed tar, inflated with igzip (`Gunzip`).
  private func gunzip() throws(LayerError) {
    let gz = Gunzip()
    var ended = false
    while true {
      let chunk = pipe.chunk(capacity: Self.chunkSize)
      while chunk.count < chunk.capacity {
        let room = chunk.capacity - chunk.count
        let n = try gzip { () throws(Gunzip.Failure) in
          try gz.inflate(into: UnsafeMutableRawBufferPointer(start: chunk.base + chunk.count, count: room))
        }
        chunk.count += n
        if n == room || ended { break }
        // The input is used up.
        let read = try readBlob()
        if read == 0 {
          ended = true
          try gzip { () throws(Gunzip.Failure) in try gz.finish() }
        } else {
          gz.feed(UnsafeRawBufferPointer(rebasing: input[0..<read]))
        }
      }
      if chunk.count == 0 { return }
      if !pipe.put(chunk) { return }
    }
  }

  /// Runs a `Gunzip` step, naming the layer in its failure.
  private func gzip<T>(_ step: () throws(Gunzip.Failure) -> T) throws(LayerError) -> T {
    do {
      return try step()
    } catch .notGzip {
      throw LayerError(.invalid, "layer \(layer.name): the blob is not gzip-compressed, as its media type says")
    } catch {
      throw LayerError(.invalid, "layer \(layer.name): corrupt or truncated gzip stream: \(error)")
    }
  }

  /// A zstd-compressed tar: libarchive's raw format with its zstd filter.
  private func inflate() throws(LayerError) {
    guard let a = archive_read_new() else { throw LayerError(.failed, "layer \(layer.name): libarchive: out of memory") }
    defer { archive_read_free(a) }
    archive_read_support_filter_zstd(a)
    archive_read_support_format_raw(a)
    let me = Unmanaged.passUnretained(self).toOpaque()
    let opened = archive_read_open(
      a, me, nil,
      { _, ctx, out in
        let reader = Unmanaged<BlobReader>.fromOpaque(ctx!).takeUnretainedValue()
        do throws(LayerError) {
          let n = try reader.readBlob()
          out!.pointee = UnsafeRawPointer(reader.input.baseAddress!)
          return n
        } catch {
          reader.error = error
          return -1
        }
      }, nil)
    var entry: OpaquePointer?
    guard opened == ARCHIVE_OK, archive_read_next_header(a, &entry) == ARCHIVE_OK else { throw failure(a, "cannot read the blob") }
    guard archive_filter_code(a, 0) == ARCHIVE_FILTER_ZSTD else {
      throw LayerError(.invalid, "layer \(layer.name): the blob is not \(compression.rawValue)-compressed, as its media type says")
    }
    while true {
      let chunk = pipe.chunk(capacity: Self.chunkSize)
      while chunk.count < chunk.capacity {
        let n = archive_read_data(a, chunk.base + chunk.count, chunk.capacity - chunk.count)
        if n < 0 { throw failure(a, "corrupt or truncated \(compression.rawValue) stream") }
        if n == 0 { break }
        chunk.count += n
      }
      if chunk.count == 0 { return }
      if !pipe.put(chunk) { return }
    }
  }

  private func failure(_ a: OpaquePointer, _ what: String) -> LayerError {
    if let error { return error }
    let detail = archive_error_string(a).map { String(cString: $0) } ?? "unknown error"
    return LayerError(.invalid, "layer \(layer.name): \(what): \(detail)")
  }
}

// MARK: - Extracting

/// The tar side of an unpack: parses entries, writes regular files' data into the object
/// store and the entries into a `LayerTree`.
final class Extractor {
  struct Totals {
    var entries = 0
    var fileBytes: Int64 = 0
    var objects: [String: ObjectInfo] = [:]
    /// Objects a stub named before a later entry replaced it (a tar may repeat a path):
    /// none of the layer's stubs names them now, and one this import made is an orphan.
    var dropped: Set<String> = []
    var implicit: Set<String> = []
  }

  let layer: LayerDescription
  let objects: ObjectStore
  let tree: LayerTree
  /// The tar stream's hash, the diffID: each chunk's bytes are hashed beside the file data
  /// the extractor hashes (`hashFile`), the rest before the chunk goes back to the pipe.
  private(set) var tarHash = Hasher()
  /// What of the current chunk the tar hash has not taken yet.
  private var unhashed = UnsafeRawBufferPointer(start: nil, count: 0)
  private var totals = Totals()
  private var stubsNaming: [String: Int] = [:]  // how many stub nodes (not names) name each object
  private var pipe: ChunkPipe?
  private var current: Chunk?
  private var pipeError: LayerError?
  private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Extractor.smallFile, alignment: 16)

  /// Files up to this size are hashed before anything is written, so a file whose object
  /// exists costs no write.
  static let smallFile = 256 << 10

  /// New object bytes written between two `ObjectStore.startSync` calls.
  static let syncEvery: Int64 = 64 << 20
  private var written: Int64 = 0

  init(layer: LayerDescription, objects: ObjectStore) {
    self.layer = layer
    self.objects = objects
    tree = LayerTree(owner: (geteuid(), getegid()), now: Sys.now())
  }

  deinit { scratch.deallocate() }

  func extract(from pipe: ChunkPipe) throws(LayerError) -> Totals {
    self.pipe = pipe
    guard let a = archive_read_new() else { throw LayerError(.failed, "layer \(layer.name): libarchive: out of memory") }
    defer { archive_read_free(a) }
    archive_read_support_format_tar(a)
    let me = Unmanaged.passUnretained(self).toOpaque()
    guard
      archive_read_open(
        a, me, nil,
        { _, ctx, out in
          let x = Unmanaged<Extractor>.fromOpaque(ctx!).takeUnretainedValue()
          do throws(LayerError) {
            // libarchive is done with the previous chunk when it asks for the next one.
            x.finishChunk()
            guard let chunk = try x.pipe!.take() else { return 0 }
            x.current = chunk
            x.unhashed = chunk.bytes
            out!.pointee = UnsafeRawPointer(chunk.base)
            return chunk.count
          } catch {
            x.pipeError = error
            return -1
          }
        }, nil) == ARCHIVE_OK
    else { throw tarFailure(a, entry: nil) }

    var entry: OpaquePointer?
    while true {
      let rc = archive_read_next_header(a, &entry)
      if rc == ARCHIVE_EOF { break }
      guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let entry else { throw tarFailure(a, entry: nil) }
      totals.entries += 1
      try self.entry(a, entry)
    }
    // The tar's end-of-archive blocks may be followed by padding, which the diffID covers.
    finishChunk()
    while let c = try pipe.take() {
      tarHash.update(c.bytes)
      pipe.recycle(c)
    }
    totals.dropped.subtract(totals.objects.keys)
    return totals
  }

  /// Hashes what is left of the current chunk into the tar hash and gives the chunk back.
  private func finishChunk() {
    tarHash.update(unhashed)
    unhashed = UnsafeRawBufferPointer(start: nil, count: 0)
    if let done = current {
      current = nil
      pipe!.recycle(done)
    }
  }

  /// Hashes file data into `hash`, paired with as much of the tar stream's next bytes.
  private func hashFile(_ hash: inout Hasher, _ data: UnsafeRawBufferPointer) {
    let n = min(data.count, unhashed.count)
    hash.update(UnsafeRawBufferPointer(rebasing: data[0..<n]), pairedWith: &tarHash, UnsafeRawBufferPointer(rebasing: unhashed[0..<n]))
    unhashed = UnsafeRawBufferPointer(rebasing: unhashed[n...])
    if n < data.count { hash.update(UnsafeRawBufferPointer(rebasing: data[n...])) }
  }

  private func tarFailure(_ a: OpaquePointer, entry: String?) -> LayerError {
    if let pipeError { return pipeError }
    let detail = archive_error_string(a).map { String(cString: $0) } ?? "unknown error"
    let at = entry.map { " at entry \"\($0)\"" } ?? ""
    return LayerError(.invalid, "layer \(layer.name): malformed tar\(at): \(detail)")
  }

  private func fail(_ path: String, _ reason: String) -> LayerError {
    LayerError(.invalid, "layer \(layer.name): entry \"\(path)\": \(reason)")
  }

  private func fail(_ path: String, _ error: SystemError) -> LayerError {
    LayerError(.failed, "layer \(layer.name): entry \"\(path)\": \(error)", errno: error.errno)
  }

  /// The entry's path as components (bytes), refusing absolute paths and `..`.
  private func components(_ raw: String) throws(LayerError) -> [[UInt8]] {
    if raw.hasPrefix("/") { throw fail(raw, "absolute path") }
    var parts: [[UInt8]] = []
    for part in raw.utf8.split(separator: 0x2F, omittingEmptySubsequences: true) {
      if part.elementsEqual([0x2E]) { continue }
      if part.elementsEqual([0x2E, 0x2E]) { throw fail(raw, "path contains \"..\"") }
      guard part.count <= 255 else { throw fail(raw, "a name longer than 255 bytes") }
      parts.append(Array(part))
    }
    return parts
  }

  private static func string(_ p: UnsafePointer<CChar>?) -> String? {
    guard let p else { return nil }
    return String(validatingCString: p)
  }

  private func directory(_ parts: ArraySlice<[UInt8]>, _ raw: String) throws(LayerError) -> LayerTree.Node {
    do {
      return try tree.directory(parts) { made in totals.implicit.insert(LayerTree.path(made)) }
    } catch {
      throw fail(raw, error.reason)
    }
  }

  /// Gives `node` its name, replacing a non-directory of that name (the last entry wins).
  private func place(_ node: LayerTree.Node, _ name: [UInt8], in dir: LayerTree.Node, _ raw: String) throws(LayerError) {
    do {
      try tree.place(node, name, in: dir) { old in
        // The last name of a stub takes its object with it, unless other stubs name it.
        guard let key = old.object, let left = stubsNaming[key] else { return }
        if left > 1 {
          stubsNaming[key] = left - 1
        } else {
          stubsNaming[key] = nil
          totals.objects[key] = nil
          totals.dropped.insert(key)
        }
      }
    } catch {
      throw fail(raw, error.reason)
    }
  }

  private func node(_ type: mode_t, _ meta: FileMeta, _ raw: String) throws(LayerError) -> LayerTree.Node {
    do { return try tree.node(type, meta) } catch { throw fail(raw, error.reason) }
  }

  private func entry(_ a: OpaquePointer, _ e: OpaquePointer) throws(LayerError) {
    guard let raw = Self.string(archive_entry_pathname(e)) else {
      throw LayerError(.invalid, "layer \(layer.name): an entry's name is missing or not UTF-8")
    }
    let parts = try components(raw)
    let meta = try self.meta(e, raw)
    let type = archive_entry_filetype(e)
    if type != S_IFREG && type != S_IFDIR && archive_entry_hardlink(e) == nil,
      let x = meta.xattrs.first(where: { $0.name.hasPrefix("user.") })
    {
      throw fail(raw, "the xattr \(x.name) on a symlink or special file, where the kernel refuses user.* xattrs")
    }

    guard let name = parts.last else {  // the layer's root directory itself
      guard type == S_IFDIR else { throw fail(raw, "the root of the layer must be a directory") }
      tree.root.meta = meta
      return
    }
    let parent = try directory(parts.dropLast(), raw)

    // OCI whiteouts.
    let wh = Array(".wh.".utf8)
    if name.starts(with: wh) {
      if name.elementsEqual(".wh..wh..opq".utf8) {
        parent.opaque = true
      } else if name.starts(with: ".wh..wh.".utf8) {
        // Other AUFS metadata (.wh..wh.plnk, ...): nothing overlayfs uses.
      } else {
        let hidden = Array(name.dropFirst(wh.count))
        if hidden.isEmpty { throw fail(raw, "whiteout of nothing") }
        // As mknod(S_IFCHR, 0) makes it: mode 0, our owner, now.
        let now = tree.now
        let whiteout = try node(S_IFCHR, FileMeta(mode: 0, uid: geteuid(), gid: getegid(), mtime: now, atime: now, xattrs: []), raw)
        try place(whiteout, hidden, in: parent, raw)
      }
      return
    }

    if let target = Self.string(archive_entry_hardlink(e)) {
      let outside = fail(raw, "hard link to \"\(target)\", which is not in the layer")
      guard let targetParts = try? components(target), !targetParts.isEmpty, let node = tree.lookup(targetParts[...]) else { throw outside }
      guard !node.isDirectory else { throw fail(raw, "hard link to a directory") }
      if node === parent.children[name] { return }
      try place(node, name, in: parent, raw)
      // The link entry's own header (owner, mode, xattrs, times) applies to the inode it
      // shares, as containerd's applier applies it: the last header wins. (A symlink's
      // mode stays.)
      node.meta =
        node.type == S_IFLNK
        ? FileMeta(mode: node.meta.mode, uid: meta.uid, gid: meta.gid, mtime: meta.mtime, atime: meta.atime, xattrs: meta.xattrs) : meta
      return
    }
    switch type {
    case S_IFDIR:
      if let existing = parent.children[name] {
        guard existing.isDirectory else { throw fail(raw, "a directory replaces an entry that is not one") }
        existing.meta = meta
      } else {
        try place(try node(S_IFDIR, meta, raw), name, in: parent, raw)
      }
      totals.implicit.remove(LayerTree.path(parts[...]))
    case S_IFREG:
      try regularFile(a, e, parent, name, raw, meta)
    case S_IFLNK:
      guard let target = Self.string(archive_entry_symlink(e)) else { throw fail(raw, "symlink target missing or not UTF-8") }
      var m = meta
      m.mode = 0o777
      let link = try node(S_IFLNK, m, raw)
      link.target = Array(target.utf8)
      guard !link.target.isEmpty, link.target.count < 4096 else { throw fail(raw, "symlink target empty or too long") }
      try place(link, name, in: parent, raw)
    case S_IFCHR, S_IFBLK, S_IFIFO:
      let device = try node(type, meta, raw)
      device.major = UInt32(truncatingIfNeeded: archive_entry_rdevmajor(e))
      device.minor = UInt32(truncatingIfNeeded: archive_entry_rdevminor(e))
      try place(device, name, in: parent, raw)
    default:
      break  // sockets and other types a tar cannot meaningfully restore
    }
  }

  /// The entry's metadata, refusing xattrs that would change how overlayfs reads the layer
  /// or that a layer cannot store.
  private func meta(_ e: OpaquePointer, _ raw: String) throws(LayerError) -> FileMeta {
    var xattrs: [(name: String, value: [UInt8])] = []
    if archive_entry_xattr_reset(e) > 0 {
      var name: UnsafePointer<CChar>?
      var value: UnsafeRawPointer?
      var size = 0
      while archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK {
        guard let n = Self.string(name) else { throw fail(raw, "xattr name not UTF-8") }
        if OverlayXattr.isOverlay(n) {
          throw fail(raw, "sets the overlayfs xattr \(n)")
        }
        guard ErofsImage.prefix(of: n) != nil else { throw fail(raw, "the xattr \(n) is in no namespace a layer can store") }
        guard size <= 65535 else { throw fail(raw, "the xattr \(n) is larger than 64 KiB") }
        let v = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
        xattrs.removeAll { $0.name == n }
        xattrs.append((n, v))
      }
      xattrs.sort { $0.name < $1.name }
    }
    // As containerd's applier (archive/tar.go): atime is the later of atime and mtime, and
    // a time before the epoch or past what Go's time.Duration reaches (2262) is the epoch.
    func bounded(_ t: timespec) -> timespec { t.tv_sec < 0 || t.tv_sec > 9_223_372_035 ? timespec(tv_sec: 0, tv_nsec: 0) : t }
    let tarMtime = timespec(tv_sec: archive_entry_mtime(e), tv_nsec: Int(archive_entry_mtime_nsec(e)))
    var tarAtime = tarMtime
    if archive_entry_atime_is_set(e) != 0 {
      let a = timespec(tv_sec: archive_entry_atime(e), tv_nsec: Int(archive_entry_atime_nsec(e)))
      if (a.tv_sec, a.tv_nsec) > (tarMtime.tv_sec, tarMtime.tv_nsec) { tarAtime = a }
    }
    let mtime = bounded(tarMtime)
    let atime = bounded(tarAtime)
    let uid = archive_entry_uid(e)
    let gid = archive_entry_gid(e)
    guard uid >= 0, uid < Int64(UInt32.max), gid >= 0, gid < Int64(UInt32.max) else { throw fail(raw, "owner out of range") }
    return FileMeta(
      mode: UInt32(archive_entry_perm(e)) & 0o7777, uid: UInt32(uid), gid: UInt32(gid), mtime: mtime, atime: atime, xattrs: xattrs)
  }

  /// A regular file: its data into the object store (unless the store has that content),
  /// then its stub in the tree.
  private func regularFile(
    _ a: OpaquePointer, _ e: OpaquePointer, _ parent: LayerTree.Node, _ name: [UInt8], _ raw: String, _ meta: FileMeta
  )
    throws(LayerError)
  {
    let size = archive_entry_size(e)
    guard size >= 0 else { throw fail(raw, "negative size") }
    if let existing = parent.children[name], existing.isDirectory { throw fail(raw, "replaces a directory") }
    totals.fileBytes += size
    var object: (key: String, sha: [UInt8], new: Bool)?
    var inline: [UInt8]?
    if size > 0 && size <= Int64(Self.smallFile) {
      // Read and hash first: content the store has costs no write.
      var filled = 0
      try readData(a, raw) { (offset, block) throws(LayerError) in
        let end = Int(offset) + block.count
        guard end <= Int(size) else { throw fail(raw, "data beyond the entry's size") }
        if Int(offset) > filled { memset(scratch.baseAddress! + filled, 0, Int(offset) - filled) }
        scratch.baseAddress!.advanced(by: Int(offset)).copyMemory(from: block.baseAddress!, byteCount: block.count)
        filled = max(filled, end)
      }
      if Int(size) > filled { memset(scratch.baseAddress! + filled, 0, Int(size) - filled) }
      let content = UnsafeRawBufferPointer(rebasing: scratch[0..<Int(size)])
      if tree.inline(Int(size)) {
        inline = Array(content)
      } else {
        object = try storeSmall(content, raw)
      }
    } else if size > 0 {
      let fd: Int32
      do { fd = try objects.makeTemporary() } catch { throw fail(raw, error) }
      defer { At.close(fd) }
      var hash = Hasher()
      var hashed: Int64 = 0
      try readData(a, raw) { (offset, block) throws(LayerError) in
        guard offset >= hashed, offset + Int64(block.count) <= size else { throw fail(raw, "data out of order or beyond the entry's size") }
        hash.updateZeros(offset - hashed)
        hashFile(&hash, block)
        do throws(SystemError) { try At.write(fd, raw, block, at: offset) } catch { throw fail(raw, error) }
        hashed = offset + Int64(block.count)
      }
      do {
        if hashed < size {  // a sparse file ending in a hole
          hash.updateZeros(size - hashed)
          try At.truncate(fd, raw, size: size)
        }
        let sha = hash.finalizeBytes()
        let made = try objects.adopt(temporary: fd, sha: sha)
        object = (made.key, sha, made.new)
      } catch {
        throw fail(raw, error)
      }
    } else {
      try readData(a, raw) { (_, _) throws(LayerError) in throw fail(raw, "data beyond the entry's size") }
    }
    // The stub: the entry's own node, metadata and size; its data is the object's, or its own.
    let stub = try node(S_IFREG, meta, raw)
    stub.size = size
    stub.data = inline
    try place(stub, name, in: parent, raw)
    if let object {
      if object.new {
        written += size
        if written >= Self.syncEvery {
          objects.startSync()
          written = 0
        }
      }
      stub.object = object.key
      totals.objects[object.key] = ObjectInfo(size: size, sha256: Digest.hexString(object.sha))
      stubsNaming[object.key, default: 0] += 1
    }
  }

  /// A small file's content as an object: hashed first, so content the store has costs no
  /// write (`make` finds it by name: no lookup of its own before, which would cost new
  /// content, most of an import's, a second walk of the object's directory).
  private func storeSmall(_ content: UnsafeRawBufferPointer, _ raw: String) throws(LayerError) -> (key: String, sha: [UInt8], new: Bool) {
    var hash = Hasher()
    hashFile(&hash, content)
    let sha = hash.finalizeBytes()
    do {
      let made = try objects.make(sha) { (fd) throws(SystemError) in try At.write(fd, raw, content, at: 0) }
      return (made.key, sha, made.new)
    } catch {
      throw fail(raw, error)
    }
  }

  /// Calls `body` with each block of the entry's data and its offset (sparse files skip
  /// holes).
  private func readData(_ a: OpaquePointer, _ raw: String, _ body: (Int64, UnsafeRawBufferPointer) throws(LayerError) -> Void)
    throws(LayerError)
  {
    var buffer: UnsafeRawPointer?
    var size = 0
    var offset: Int64 = 0
    while true {
      let rc = archive_read_data_block(a, &buffer, &size, &offset)
      if rc == ARCHIVE_EOF { return }
      guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN else { throw tarFailure(a, entry: raw) }
      if size > 0 { try body(offset, UnsafeRawBufferPointer(start: buffer, count: size)) }
    }
  }
}
