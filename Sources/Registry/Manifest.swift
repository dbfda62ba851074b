import Foundation
import Unpack

/// The manifest media types resolved: OCI's and Docker's schema 2.
public enum ManifestMediaType {
  public static let ociIndex = "application/vnd.oci.image.index.v1+json"
  public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
  public static let dockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
  public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
  static let dockerSchema1 = "application/vnd.docker.distribution.manifest.v1+json"
  static let dockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"

  /// What a manifest request accepts, as containerd sends it.
  static let accept = [dockerManifest, dockerList, ociManifest, ociIndex, "*/*"].joined(separator: ", ")

  static func isIndex(_ t: String) -> Bool { t == ociIndex || t == dockerList }
  static func isManifest(_ t: String) -> Bool { t == ociManifest || t == dockerManifest }
}

/// A content descriptor: what a manifest says of a blob or of another manifest.
public struct Descriptor: Hashable, Sendable {
  public var mediaType: String
  public var digest: Digest
  public var size: Int64

  public init(mediaType: String, digest: Digest, size: Int64) {
    self.mediaType = mediaType
    self.digest = digest
    self.size = size
  }
}

/// A layer of a resolved image: its blob and the digest of its uncompressed tar.
public struct RemoteLayer: Hashable, Sendable {
  public var blob: Descriptor
  public var diffID: Digest

  public var digest: Digest { blob.digest }
  public var size: Int64 { blob.size }
  public var mediaType: String { blob.mediaType }
}

/// An image reference resolved to one platform's manifest, its config and its layers.
public struct ResolvedImage: Sendable {
  /// The reference as given, normalized.
  public var reference: Reference
  /// The manifest for the platform (the one its layers come from).
  public var manifest: Descriptor
  /// The index the reference named, when it named one.
  public var index: Descriptor?
  public var config: Descriptor
  /// The platform the config declares.
  public var platform: Platform
  /// Bottom layer first.
  public var layers: [RemoteLayer]

  /// The chainIDs of the layers, bottom first (the snapshot names of the layer store).
  public var chainIDs: [Digest] {
    var out: [Digest] = []
    for l in layers { out.append(Digest.chainID(parent: out.last, diffID: l.diffID)) }
    return out
  }
}

/// The JSON shapes read, decoded leniently (unknown fields ignored).
struct RawDescriptor: Decodable {
  struct RawPlatform: Decodable {
    var os: String?
    var architecture: String?
    var variant: String?
  }
  var mediaType: String?
  var digest: String
  var size: Int64
  var platform: RawPlatform?
}

struct RawManifest: Decodable {
  var schemaVersion: Int?
  var mediaType: String?
  var config: RawDescriptor?
  var layers: [RawDescriptor]?
  var manifests: [RawDescriptor]?
}

struct RawConfig: Decodable {
  struct RootFS: Decodable {
    var type: String?
    var diff_ids: [String]?
  }
  var os: String?
  var architecture: String?
  var variant: String?
  var rootfs: RootFS?
}

extension RawDescriptor {
  func descriptor(defaultType: String) -> Descriptor? {
    guard let d = Digest(digest), size >= 0 else { return nil }
    return Descriptor(mediaType: mediaType ?? defaultType, digest: d, size: size)
  }
}

/// Picks the index entry for `platform`: the first manifest whose platform matches, with
/// an entry without a variant chosen over others only when nothing better matches.
func selectManifest(_ entries: [RawDescriptor], for platform: Platform) -> RawDescriptor? {
  let candidates = entries.filter { e in
    guard let p = e.platform else { return false }
    let t = e.mediaType ?? ManifestMediaType.ociManifest
    return ManifestMediaType.isManifest(t) && platform.matches(os: p.os, architecture: p.architecture, variant: p.variant)
  }
  if platform.variant == nil, let plain = candidates.first(where: { $0.platform?.variant == nil }) { return plain }
  return candidates.first
}
