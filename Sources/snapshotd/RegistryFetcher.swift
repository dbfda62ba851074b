import Logging
import Registry
import SnapshotCore
import SnapshotSys
import Synchronization
import Unpack

/// snapshotd as a remote snapshotter: the layers containerd's CRI plugin names on Prepare
/// come from their registry (`RegistryClient`), the asked one and the image's later ones
/// at once (at most `concurrency` downloads), each streamed download → digest check →
/// decompress → unpack into the store with dedup, without a copy of the blob. A layer the
/// store has (by diffID or blob digest, from any import or pull) is not downloaded; two
/// pulls of one image at once download each layer once.
final class RegistryFetcher: LayerFetcher {
  let client: RegistryClient
  /// The store the layers go into; weak, since the snapshotter holds this fetcher.
  private weak let snapshotter: Snapshotter?
  let logger: Logger
  /// Download slots free (at most `concurrency` at once).
  private let slots: Condition<Int>
  /// Downloads under way, by blob digest: a second request for one waits for it.
  private let jobs = SingleFlight<Digest, Result<Void, any Error>>()
  /// Images resolved lately, by manifest digest (containerd asks once per layer), at most
  /// `resolvedKept` (then forgotten all at once: a pull takes a few at a time).
  private let images = Mutex<[Digest: ResolvedImage]>([:])

  static let resolvedKept = 32

  /// The store, or a failure once it is closed (a fetch still running at shutdown).
  private func store() throws(SnapshotError) -> Snapshotter {
    guard let snapshotter else { throw SnapshotError(.unavailable, "the store is closed") }
    return snapshotter
  }

  init(client: RegistryClient, store: Snapshotter, concurrency: Int = 4, logger: Logger) {
    self.client = client
    snapshotter = store
    self.logger = logger
    slots = Condition(max(1, concurrency))
  }

  func fetch(_ request: RemoteLayerRequest) throws {
    let image = try resolve(request)
    // By digest and chainID: an image may hold one blob twice (empty layers).
    let chainIDs = image.chainIDs
    guard
      let i = image.layers.indices.first(where: {
        image.layers[$0].digest == request.layerDigest && chainIDs[$0].description == request.chainID
      })
    else {
      throw FetchError(
        "image \(request.imageRef)@\(request.manifestDigest) has no layer \(request.layerDigest) with chainID \(request.chainID)")
    }
    // This layer and the later ones containerd listed, all under way before waiting.
    let listed = Set(request.imageLayers)
    let asked = try start(image, i)
    for j in (i + 1)..<image.layers.count where listed.contains(image.layers[j].digest) {
      _ = try start(image, j)
    }
    try asked.wait().get()
    _ = try store().snapshotOfLayer(diffID: image.layers[i].diffID, parent: request.parent)
  }

  func pull(_ reference: String, platform: String, progress: ImportProgress) throws(SnapshotError) -> String {
    do {
      let ref = try Reference(parsing: reference)
      let wanted = platform.isEmpty ? Platform.host : try Platform(parsing: platform)
      let image = try Self.blocking { [client] in try await client.resolve(ref, platform: wanted) }
      progress.start(layers: image.layers.count, bytes: image.layers.reduce(0) { $0 + $1.size })
      let jobs = try image.layers.indices.map { try start(image, $0, progress: progress.counter()) }
      for job in jobs {
        try job.wait().get()
        progress.layerDone()
      }
      var parent = ""
      for layer in image.layers { parent = try store().snapshotOfLayer(diffID: layer.diffID, parent: parent) }
      logger.info("pulled image", metadata: ["image": "\(reference)", "chainID": "\(parent)"])
      return parent
    } catch {
      throw SnapshotError(pulling: error)
    }
  }

  /// The image as its manifest (by digest) describes it.
  private func resolve(_ request: RemoteLayerRequest) throws -> ResolvedImage {
    if let image = images.withLock({ $0[request.manifestDigest] }) { return image }
    let reference = try Reference(parsing: request.imageRef).with(digest: request.manifestDigest)
    let image = try Self.blocking { [client] in try await client.resolve(reference) }
    images.withLock {
      if $0.count >= Self.resolvedKept { $0.removeAll() }
      $0[request.manifestDigest] = image
    }
    return image
  }

  /// The download of layer `i` of `image`: under way already, or started now.
  private func start(_ image: ResolvedImage, _ i: Int, progress: ProgressCounter? = nil) throws -> Promise<Result<Void, any Error>> {
    let layer = image.layers[i]
    let (job, leads) = jobs.join(layer.digest)
    guard leads else { return job }
    // A layer the store has needs no thread (every Prepare starts the image's later layers).
    let present: Result<Bool, any Error> = Result { try store().hasLayer(Self.request(image, layer)) }
    if case .success(false) = present {
      do {
        try Threads.spawn { [self] in
          jobs.finish(layer.digest, with: Result { try unpack(image, layer, progress: progress) })
        }
      } catch {
        jobs.finish(layer.digest, with: .failure(error))
      }
    } else {
      jobs.finish(layer.digest, with: present.map { _ in () })
    }
    return job
  }

  /// Downloads and unpacks one layer (on a thread of its own, once a slot is free).
  private func unpack(_ image: ResolvedImage, _ layer: RemoteLayer, progress: ProgressCounter?) throws {
    let request = Self.request(image, layer)
    slots.wait(until: { $0 > 0 }) { $0 -= 1 }
    defer { slots.update { $0 += 1 } }
    var source: BlobSource?
    do {
      let unpacked = try store().unpackLayer(request, progress: progress) { [client] in
        // The importer checks the blob's digest (`request.digest`) as it hashes it anyway.
        let blob = client.blobSource(image.reference, layer.blob, verifyDigest: false)
        source = blob
        return blob
      }
      if unpacked {
        logger.info("layer fetched", metadata: ["layer": "\(request.name)", "bytes": "\(source?.bytesRead ?? 0)"])
      }
    } catch {
      // The registry's own error says more than the importer's view of a cut stream; a
      // blob the importer refuses is the registry's bad data, not the caller's mistake.
      if let failure = source?.failure { throw failure }
      if error.kind == .invalidArgument {
        throw SnapshotError(.failedPrecondition, "\(error.message) (as \(image.reference.registry) served it)")
      }
      throw error
    }
  }

  /// The import of `layer` of `image`, named for messages by registry, repository and digest.
  static func request(_ image: ResolvedImage, _ layer: RemoteLayer) -> LayerImport {
    let name = "\(image.reference.registry)/\(image.reference.repository)@\(layer.digest)"
    return LayerImport(mediaType: layer.mediaType, digest: layer.digest, diffID: layer.diffID, parent: "", name: name)
  }

  /// Runs async `body` from a thread that may block (a call's thread), and waits for it.
  static func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let result = Promise<Result<T, any Error>>()
    Task {
      do {
        result.fulfill(.success(try await body()))
      } catch {
        result.fulfill(.failure(error))
      }
    }
    return try result.wait().get()
  }
}

/// A request the fetcher cannot serve (containerd then unpacks the layer itself).
struct FetchError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

extension SnapshotError {
  /// The one conversion of the registry's errors (and of what else a pull runs into) into
  /// the snapshotter's kinds, the message kept whole.
  init(pulling error: any Error) {
    switch error {
    case let e as RegistryError:
      switch e.kind {
      case .invalid: self.init(.invalidArgument, "\(e)")
      case .notFound: self.init(.notFound, "\(e)")
      // Content that cannot be used as served: containerd's content store answers a digest
      // mismatch with FAILED_PRECONDITION too.
      case .unauthorized, .badManifest, .digestMismatch: self.init(.failedPrecondition, "\(e)")
      // The registry, or the way to it, failed: a later try may succeed.
      case .unreachable, .server, .truncated: self.init(.unavailable, "\(e)")
      }
    // An image that does not hold what containerd named.
    case let e as FetchError: self.init(.failedPrecondition, e.description)
    default: self.init(error)
    }
  }
}
