import CArchive
import Foundation
import SnapshotSys

/// An OCI content descriptor.
public struct Descriptor: Codable, Sendable {
  public var mediaType: String
  public var digest: String
  public var size: Int64
  public var platform: Platform?
  public var annotations: [String: String]?
}

public struct Platform: Codable, Sendable {
  public var architecture: String
  public var os: String
  public var variant: String?

  /// This machine's platform, as OCI names it.
  public static var current: Platform {
    var u = utsname()
    uname(&u)
    let machine = withUnsafeBytes(of: u.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    let arch: String
    switch machine {
    case "x86_64": arch = "amd64"
    case "aarch64": arch = "arm64"
    case "i686", "i386": arch = "386"
    default: arch = machine
    }
    return Platform(architecture: arch, os: "linux", variant: nil)
  }
}

/// One layer of an image to import: its blob and the diffID the image config gives it.
public struct ImageLayer: Sendable {
  public var descriptor: Descriptor
  public var compression: Compression
  public var digest: Digest
  public var diffID: Digest
  public var path: String
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`): resolves
/// index → manifest for a platform → config, and checks that the manifest's layers and
/// the config's diffIDs agree. Every blob read is checked against its digest.
public struct ImageLayout: Sendable {
  public let dir: String

  public init(dir: String) { self.dir = dir }

  private struct Index: Codable {
    var manifests: [Descriptor]
  }

  private struct Manifest: Codable {
    var config: Descriptor
    var layers: [Descriptor]
  }

  private struct Config: Codable {
    struct RootFS: Codable {
      var type: String
      var diff_ids: [String]
    }
    var rootfs: RootFS
  }

  static let indexTypes: Set<String> = [
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
  ]

  /// The largest index, manifest or config read: larger blobs can only be layers.
  public static let maxDocument: Int64 = 16 << 20

  public func blobPath(_ digest: Digest) -> String { dir + "/blobs/sha256/" + digest.hex }

  /// The layers, bottom first, of the image for `platform`.
  public func layers(for platform: Platform = .current) throws(LayerError) -> [ImageLayer] {
    let index: Index = try decode(try Data(contentsOf: dir + "/index.json", "index.json"), "index.json")
    var manifest = try pick(index.manifests, platform, "index.json")
    var depth = 0
    while Self.indexTypes.contains(manifest.mediaType) {
      depth += 1
      guard depth < 8 else { throw LayerError(.invalid, "image \(dir): indexes nested too deep") }
      let nested: Index = try decode(try blob(manifest), manifest.digest)
      manifest = try pick(nested.manifests, platform, manifest.digest)
    }
    let m: Manifest = try decode(try blob(manifest), manifest.digest)
    let config: Config = try decode(try blob(m.config), m.config.digest)
    guard config.rootfs.diff_ids.count == m.layers.count else {
      throw LayerError(
        .invalid, "image \(dir): the manifest has \(m.layers.count) layers but the config \(config.rootfs.diff_ids.count) diffIDs")
    }
    var out: [ImageLayer] = []
    for (d, diff) in zip(m.layers, config.rootfs.diff_ids) {
      guard let digest = Digest(d.digest), let diffID = Digest(diff) else {
        throw LayerError(.invalid, "image \(dir): layer \(d.digest): malformed digest or diffID \(diff)")
      }
      guard let compression = Compression(mediaType: d.mediaType) else {
        throw LayerError(.invalid, "image \(dir): layer \(d.digest): unsupported media type \(d.mediaType)")
      }
      out.append(ImageLayer(descriptor: d, compression: compression, digest: digest, diffID: diffID, path: blobPath(digest)))
    }
    return out
  }

  private func pick(_ manifests: [Descriptor], _ platform: Platform, _ from: String) throws(LayerError) -> Descriptor {
    if manifests.count == 1, manifests[0].platform == nil { return manifests[0] }
    if let m = manifests.first(where: { $0.platform?.os == platform.os && $0.platform?.architecture == platform.architecture }) { return m }
    if let m = manifests.first(where: { $0.platform == nil }) { return m }
    throw LayerError(.invalid, "image \(dir): \(from) has no manifest for \(platform.os)/\(platform.architecture)")
  }

  /// A small blob (index, manifest, config), checked against its digest.
  private func blob(_ d: Descriptor) throws(LayerError) -> Data {
    guard let digest = Digest(d.digest) else { throw LayerError(.invalid, "image \(dir): malformed digest \(d.digest)") }
    guard d.size <= Self.maxDocument else { throw LayerError(.invalid, "image \(dir): \(d.digest) is too large for a \(d.mediaType)") }
    let data = try Data(contentsOf: blobPath(digest), d.digest)
    guard Digest.of(data) == digest else { throw LayerError(.invalid, "image \(dir): blob \(d.digest) does not match its digest") }
    return data
  }

  private func decode<T: Decodable>(_ data: Data, _ what: String) throws(LayerError) -> T {
    do {
      return try JSONDecoder().decode(T.self, from: data)
    } catch {
      throw LayerError(.invalid, "image \(dir): \(what) is not valid: \(error)")
    }
  }
}

extension Data {
  fileprivate init(contentsOf path: String, _ what: String) throws(LayerError) {
    // Through FileSource: a regular file only (not a FIFO or /dev/zero), of bounded size.
    do {
      self = Data(try FileSource.readAll(path, limit: 16 << 20))
    } catch {
      throw LayerError(.invalid, "cannot read \(what): \(error.message)")
    }
  }
}

/// OCI archives (the tar `ctr image export` writes): unpacked into a layout directory.
public enum ImageArchive {
  /// Writes the archive's `oci-layout`, `index.json` and `blobs/sha256/<hex>` files into
  /// `dir` (which must exist and be empty), but those named in `skipping` (read in place,
  /// see `blobsInPlace`); nothing else is written, and nothing outside.
  public static func extract(_ path: String, into dir: String, skipping: Set<String> = []) throws(LayerError) {
    guard let a = archive_read_new() else { throw LayerError(.failed, "libarchive: out of memory") }
    defer { archive_read_free(a) }
    archive_read_support_format_tar(a)
    archive_read_support_filter_gzip(a)
    let fd = try FileSource.openRegular(path)
    defer { At.close(fd) }
    guard archive_read_open_fd(a, fd, 1 << 20) == ARCHIVE_OK else { throw failure(a, path) }
    let root: Int32
    do {
      try Sys.mkdir(dir + "/blobs", mode: 0o700)
      try Sys.mkdir(dir + "/blobs/sha256", mode: 0o700)
      root = try At.openDirectory(dir)
    } catch {
      throw LayerError(.failed, "image archive \(path): \(error)")
    }
    defer { At.close(root) }
    var entry: OpaquePointer?
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
    defer { buffer.deallocate() }
    while true {
      let rc = archive_read_next_header(a, &entry)
      if rc == ARCHIVE_EOF { return }
      guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let entry else { throw failure(a, path) }
      guard archive_entry_filetype(entry) == S_IFREG, let p = archive_entry_pathname(entry),
        let name = String(validatingCString: p).map(normalized), wanted(name), !skipping.contains(name)
      else { continue }
      do {
        let fd = try At.open(root, name, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        defer { At.close(fd) }
        var offset: Int64 = 0
        while true {
          let n = archive_read_data(a, buffer.baseAddress, buffer.count)
          if n < 0 { throw failure(a, path) }
          if n == 0 { break }
          try At.write(fd, name, UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: offset)
          offset += Int64(n)
        }
      } catch let e as SystemError {
        throw LayerError(.failed, "image archive \(path): \(name): \(e)", errno: e.errno)
      } catch {
        throw error as! LayerError
      }
    }
  }

  /// The blobs of an uncompressed archive at least `minimum` bytes long, by name
  /// (`blobs/sha256/<hex>`), with where their bytes are in the file: a tar stores a member's
  /// data whole, so a layer can be read where it is instead of copied out first. Headers are
  /// read as POSIX ustar, with pax `path`/`size` records and GNU long names. Anything else
  /// (a compressed archive, another header, a bad checksum, a name twice) answers none, and
  /// everything is extracted. What is read in place is checked against its digest as ever.
  public static func blobsInPlace(_ path: String, minimum: Int64) -> [String: Range<Int64>] {
    guard let fd = try? FileSource.openRegular(path) else { return [:] }
    defer { At.close(fd) }
    let block = 512
    var header = [UInt8](repeating: 0, count: block)
    func read(_ buffer: inout [UInt8], at offset: Int64) -> Bool {
      buffer.withUnsafeMutableBytes { b in (try? At.read(fd, path, into: b, at: offset)) == b.count }
    }
    func string(_ bytes: ArraySlice<UInt8>) -> String {
      String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
    func octal(_ bytes: ArraySlice<UInt8>) -> Int64? {
      var value: Int64 = 0
      var digits = 0
      for c in bytes {
        if c == 0 || c == 0x20 { if digits > 0 { break } else { continue } }
        guard c >= 0x30, c <= 0x37, value < Int64.max >> 3 else { return nil }
        value = value << 3 | Int64(c - 0x30)
        digits += 1
      }
      return digits > 0 ? value : nil
    }
    var found: [String: Range<Int64>] = [:]
    var seen: Set<String> = []
    var position: Int64 = 0
    var nextName: String?  // from a pax record or a GNU long name, for the entry after it
    var nextSize: Int64?
    while true {
      guard read(&header, at: position) else { return [:] }
      if header.allSatisfy({ $0 == 0 }) { return found }
      var sum = 0
      for (i, c) in header.enumerated() { sum += (148..<156).contains(i) ? 0x20 : Int(c) }
      guard let check = octal(header[148..<156]), check == sum, var size = octal(header[124..<136]) else { return [:] }
      let type = header[156]
      let data = position + Int64(block)
      switch type {
      case UInt8(ascii: "x"), UInt8(ascii: "L"):
        guard size <= 1 << 20 else { return [:] }
        var body = [UInt8](repeating: 0, count: Int(size))
        guard read(&body, at: data) else { return [:] }
        if type == UInt8(ascii: "L") {
          nextName = string(body[...])
        } else {
          // Records "LEN key=value\n", LEN counting the whole record: a value may hold
          // newlines, so records are cut by their length, not at newlines.
          var at = 0
          while at < body.count {
            guard let space = body[at...].firstIndex(of: 0x20), let length = Int(String(decoding: body[at..<space], as: UTF8.self)),
              length > space - at, at + length <= body.count, body[at + length - 1] == 0x0A,
              let eq = body[(space + 1)..<(at + length)].firstIndex(of: 0x3D)
            else { return [:] }
            let key = String(decoding: body[(space + 1)..<eq], as: UTF8.self)
            let value = String(decoding: body[(eq + 1)..<(at + length - 1)], as: UTF8.self)
            if key == "path" { nextName = value }
            if key == "size" {
              guard let v = Int64(value), v >= 0 else { return [:] }
              nextSize = v
            }
            at += length
          }
        }
      case UInt8(ascii: "g"), UInt8(ascii: "K"):
        break  // global records; a GNU long link name (no blob is a link)
      case 0, UInt8(ascii: "0")...UInt8(ascii: "7"):
        var name = string(header[0..<100])
        if string(header[257..<262]) == "ustar", case let prefix = string(header[345..<500]), !prefix.isEmpty {
          name = prefix + "/" + name
        }
        name = normalized(nextName ?? name)
        size = nextSize ?? size
        nextName = nil
        nextSize = nil
        // Links, directories and devices have no data; one that claims some is read two
        // ways by tar readers.
        guard type == 0 || type == UInt8(ascii: "0") || type == UInt8(ascii: "7") || size == 0 else { return [:] }
        guard wanted(name) else { break }
        // A name twice: extraction refuses it; here, none in place.
        guard seen.insert(name).inserted else { return [:] }
        if type == 0 || type == UInt8(ascii: "0"), size >= minimum, name.hasPrefix("blobs/") { found[name] = data..<(data + size) }
      default:
        return [:]  // a sparse file, or a type this does not know: its data may not be where it seems
      }
      guard size >= 0, data <= Int64.max - size - Int64(block) else { return [:] }
      position = data + (size + Int64(block) - 1) / Int64(block) * Int64(block)
    }
  }

  private static func normalized(_ name: String) -> String {
    var n = Substring(name)
    while n.hasPrefix("./") { n = n.dropFirst(2) }
    return String(n)
  }

  /// Only the files a layout is made of, with names that cannot leave `dir`.
  private static func wanted(_ name: String) -> Bool {
    if name == "index.json" || name == "oci-layout" { return true }
    guard name.hasPrefix("blobs/sha256/") else { return false }
    return Digest("sha256:" + name.dropFirst("blobs/sha256/".count)) != nil
  }

  private static func failure(_ a: OpaquePointer, _ path: String) -> LayerError {
    let detail = archive_error_string(a).map { String(cString: $0) } ?? "unknown error"
    return LayerError(.invalid, "image archive \(path): \(detail)")
  }
}
