import Synchronization
import Unpack

/// What containerd's CRI plugin tells a snapshotter about the layer its unpacker is about
/// to make, as labels on Prepare (with `disable_snapshot_annotations = false`): the image,
/// its manifest, the layer's blob digest, the image's layers from this one up, and the
/// committed snapshot it would make (`containerd.io/snapshot.ref`, its chainID).
public struct RemoteLayerRequest: Sendable, Equatable {
  public static let imageRefLabel = "containerd.io/snapshot/cri.image-ref"
  public static let manifestDigestLabel = "containerd.io/snapshot/cri.manifest-digest"
  public static let layerDigestLabel = "containerd.io/snapshot/cri.layer-digest"
  public static let imageLayersLabel = "containerd.io/snapshot/cri.image-layers"

  /// The image reference as the pull named it (`registry/repository:tag` or `@digest`).
  public var imageRef: String
  public var manifestDigest: Digest
  public var layerDigest: Digest
  /// The image's layer digests from this layer up (containerd may leave later ones out).
  public var imageLayers: [Digest]
  /// The chainID the unpacker will commit this layer as.
  public var chainID: String
  /// The committed snapshot below ("" for a base layer).
  public var parent: String

  public init(imageRef: String, manifestDigest: Digest, layerDigest: Digest, imageLayers: [Digest], chainID: String, parent: String) {
    self.imageRef = imageRef
    self.manifestDigest = manifestDigest
    self.layerDigest = layerDigest
    self.imageLayers = imageLayers
    self.chainID = chainID
    self.parent = parent
  }

  /// The request the labels of a Prepare make, or nil when they do not name a layer.
  public init?(labels: [String: String], parent: String) {
    guard let ref = labels[Self.imageRefLabel], !ref.isEmpty,
      let manifest = labels[Self.manifestDigestLabel].flatMap(Digest.init),
      let layer = labels[Self.layerDigestLabel].flatMap(Digest.init),
      let chainID = labels[LayerImporter.snapshotRef], !chainID.isEmpty
    else { return nil }
    let layers = (labels[Self.imageLayersLabel] ?? "").split(separator: ",").compactMap { Digest(String($0)) }
    self.init(imageRef: ref, manifestDigest: manifest, layerDigest: layer, imageLayers: layers, chainID: chainID, parent: parent)
  }
}

/// Brings layers from where the image lives (a registry) into the store: what makes
/// snapshotd a remote snapshotter. `SnapshotService` asks it on Prepare; snapshotd plugs
/// in snapshotd (`Sources/snapshotd/RegistryFetcher.swift`), on the registry client. The core knows nothing of HTTP.
public protocol LayerFetcher: Sendable {
  /// Makes the committed snapshot `request.chainID` on top of `request.parent` from the
  /// layer's blob, fetched (unless the store has the layer), and starts fetching the
  /// image's later layers. Throws when it cannot; nothing half-made is committed then.
  func fetch(_ request: RemoteLayerRequest) throws

  /// Pulls image `reference` for `platform` ("os/arch[/variant]", "" for this machine's)
  /// into the store: every layer the store lacks fetched and unpacked, several at once,
  /// then the chain committed. Returns the top chainID.
  func pull(_ reference: String, platform: String, progress: ImportProgress) throws(SnapshotError) -> String
}

/// The fetcher a service uses, set once snapshotd has made it (it needs the importer).
final class FetcherSlot: Sendable {
  private let slot = Mutex<(any LayerFetcher)?>(nil)
  var fetcher: (any LayerFetcher)? {
    get { slot.withLock { $0 } }
    set { slot.withLock { $0 = newValue } }
  }
}
