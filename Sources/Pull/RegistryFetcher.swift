import Dispatch
import LayerStore
import Logging
import Registry
import SnapshotCore
import SnapshotSys
import Synchronization

/// snapshotd as a remote snapshotter: the layers containerd's CRI plugin names on Prepare
/// come from their registry (`RegistryClient`), the asked one and the image's later ones
/// at once (at most `concurrency` downloads), each streamed download → digest check →
/// decompress → unpack into the store with dedup, without a copy of the blob. A layer the
/// store has (by diffID or blob digest, from any import or pull) is not downloaded; two
/// pulls of one image at once download each layer once.
public final class RegistryFetcher: LayerFetcher {
  let client: RegistryClient
  let importer: LayerImporter
  let logger: Logger
  private let slots: DispatchSemaphore
  /// Downloads under way, by blob digest: a second request for one waits for it.
  private let jobs = Mutex<[Digest: Job]>([:])
  /// Images resolved lately, by manifest digest (containerd asks once per layer).
  private let images = Mutex<[Digest: ResolvedImage]>([:])

  public init(client: RegistryClient, importer: LayerImporter, concurrency: Int = 4, logger: Logger) {
    self.client = client
    self.importer = importer
    self.logger = logger
    slots = DispatchSemaphore(value: max(1, concurrency))
  }

  public func fetch(_ request: RemoteLayerRequest) throws {
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
    try asked.wait()
    _ = try importer.snapshotOfLayer(diffID: image.layers[i].diffID, parent: request.parent)
  }

  public func pull(_ reference: String, platform: String, progress: ImportProgress) throws(SnapshotError) -> String {
    do {
      let ref = try Reference(parsing: reference)
      let wanted = platform.isEmpty ? Platform.host : try Platform(parsing: platform)
      let image = try Self.blocking { [client] in try await client.resolve(ref, platform: wanted) }
      progress.start(layers: image.layers.count, bytes: image.layers.reduce(0) { $0 + $1.size })
      let jobs = try image.layers.indices.map { try start(image, $0, progress: progress.counter()) }
      for job in jobs {
        try job.wait()
        progress.layerDone()
      }
      var parent = ""
      for layer in image.layers { parent = try importer.snapshotOfLayer(diffID: layer.diffID, parent: parent) }
      logger.info("pulled image", metadata: ["image": "\(reference)", "chainID": "\(parent)"])
      return parent
    } catch {
      throw Self.mapError(error)
    }
  }

  /// The core's error for what a pull ran into: the registry's named by kind, the message
  /// kept whole.
  static func mapError(_ error: any Error) -> SnapshotError {
    switch error {
    case let e as SnapshotError: return e
    case let e as RegistryError:
      switch e.kind {
      case .invalid: return SnapshotError(.invalidArgument, "\(e)")
      case .notFound: return SnapshotError(.notFound, "\(e)")
      // Content that cannot be used as served: containerd's content store answers a digest
      // mismatch with FAILED_PRECONDITION too.
      case .unauthorized, .badManifest, .digestMismatch: return SnapshotError(.failedPrecondition, "\(e)")
      // The registry, or the way to it, failed: a later try may succeed.
      case .unreachable, .server, .truncated: return SnapshotError(.unavailable, "\(e)")
      }
    default: return SnapshotError(.internal, "\(error)")
    }
  }

  /// The image as its manifest (by digest) describes it.
  private func resolve(_ request: RemoteLayerRequest) throws -> ResolvedImage {
    if let image = images.withLock({ $0[request.manifestDigest] }) { return image }
    let reference = try Reference(parsing: request.imageRef).with(digest: request.manifestDigest)
    let image = try Self.blocking { [client] in try await client.resolve(reference) }
    images.withLock {
      if $0.count >= 32 { $0.removeAll() }
      $0[request.manifestDigest] = image
    }
    return image
  }

  /// The download of layer `i` of `image`: under way already, or started now.
  private func start(_ image: ResolvedImage, _ i: Int, progress: ProgressCounter? = nil) throws -> Job {
    let layer = image.layers[i]
    if let running = jobs.withLock({ $0[layer.digest] }) { return running }
    // A layer the store has needs no thread (every Prepare starts the image's later layers).
    if try importer.hasLayer(Self.request(image, layer)) {
      let done = Job()
      done.finish(.success(()))
      return done
    }
    let (job, isNew) = jobs.withLock { jobs -> (Job, Bool) in
      if let job = jobs[layer.digest] { return (job, false) }
      let job = Job()
      jobs[layer.digest] = job
      return (job, true)
    }
    guard isNew else { return job }
    do {
      try Threads.spawn { [self] in
        let result = Result<Void, any Error> { try unpack(image, layer, progress: progress) }
        jobs.withLock { $0[layer.digest] = nil }
        job.finish(result)
      }
    } catch {
      jobs.withLock { $0[layer.digest] = nil }
      job.finish(.failure(error))
    }
    return job
  }

  /// Downloads and unpacks one layer (on a thread of its own, once a slot is free).
  private func unpack(_ image: ResolvedImage, _ layer: RemoteLayer, progress: ProgressCounter?) throws {
    let request = Self.request(image, layer)
    slots.wait()
    defer { slots.signal() }
    var source: BlobSource?
    do {
      let unpacked = try importer.unpackLayer(request, progress: progress) { [client] in
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
    let result = Mutex<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
      do {
        let value = try await body()
        result.withLock { $0 = .success(value) }
      } catch {
        result.withLock { $0 = .failure(error) }
      }
      done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
  }
}

/// One layer's download and unpack, waited for by every request that needs it.
final class Job: Sendable {
  private let group = DispatchGroup()
  private let result = Mutex<Result<Void, any Error>?>(nil)

  init() { group.enter() }

  func finish(_ outcome: Result<Void, any Error>) {
    result.withLock { $0 = outcome }
    group.leave()
  }

  func wait() throws {
    group.wait()
    try result.withLock { $0! }.get()
  }
}

/// A request the fetcher cannot serve (containerd then unpacks the layer itself).
struct FetchError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}
