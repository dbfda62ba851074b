import Logging
import SnapshotCore
import SnapshotSys
import SwiftProtobuf
import Synchronization
import Unpack

/// snapshotd's `snapshotd.v1.Store` methods: layer and image import into the layer store,
/// its usage, garbage collection and check. Imports and checks run on their own thread
/// while the call's thread feeds them the streamed blob or reports progress.
public enum StoreRoutes {
  static let service = "/snapshotd.v1.Store/"
  /// How often a long call's thread looks whether its client cancelled or left.
  static let cancelPoll = 0.2
  /// The longest path a call may name (PATH_MAX, with its NUL).
  static let maxPath = 4096

  public static func make(_ s: Snapshotter, logger: Logger) -> RPCRoutes {
    [
      service + "ImportLayer": .streaming { call in try importLayer(s, call, logger) },
      service + "ImportImage": .streaming { call in try importImage(s, call, logger) },
      service + "Pull": .streaming { call in try pull(s, call, logger) },
      service + "Usage": .unary { bytes in
        let _: Snapshotd_V1_StoreUsageRequest = try decode(bytes, "Usage")
        let u = try run("Usage", logger) { () throws(SnapshotError) in try s.storeUsage() }
        return [
          try encode(
            Snapshotd_V1_StoreUsageResponse.with {
              $0.layers = u.layers
              $0.objects = u.objects
              $0.storedBytes = u.storedBytes
              $0.logicalBytes = u.logicalBytes
            })
        ]
      },
      service + "Info": .unary { bytes in
        let _: Snapshotd_V1_InfoRequest = try decode(bytes, "Info")
        return [
          try encode(
            Snapshotd_V1_InfoResponse.with {
              $0.driver = s.driver.rawValue
              $0.driverReason = s.driverReason
              $0.root = s.layout.root
            })
        ]
      },
      service + "Describe": .unary { bytes in
        let request: Snapshotd_V1_DescribeRequest = try decode(bytes, "Describe")
        let d = try run("Describe", logger) { () throws(SnapshotError) in try s.describe(key: request.key) }
        return [
          try encode(
            Snapshotd_V1_DescribeResponse.with {
              $0.volatile = d.volatile
              $0.volatileUntrusted = d.volatileUntrusted
              $0.sizeLimit = d.sizeLimit
              $0.available = d.available
            })
        ]
      },
      service + "GC": .unary { bytes in
        let _: Snapshotd_V1_GCRequest = try decode(bytes, "GC")
        let r = try run("GC", logger) { () throws(SnapshotError) in try s.collectGarbage() }
        logger.info("gc", metadata: ["layers": "\(r.layers)", "objects": "\(r.objects)", "bytes": "\(r.bytes)"])
        return [
          try encode(
            Snapshotd_V1_GCResponse.with {
              $0.layers = Int64(r.layers)
              $0.objects = Int64(r.objects)
              $0.bytes = r.bytes
            })
        ]
      },
      service + "Check": .streaming { call in try check(s, call, logger) },
    ]
  }

  private static func run<T>(_ method: String, _ logger: Logger, _ body: () throws(SnapshotError) -> T) throws(RPCStatus) -> T {
    do {
      return try body()
    } catch {
      logger.log(level: error.logLevel, "\(method) failed", metadata: ["error": "\(error.message)"])
      throw error.status
    }
  }

  /// A path names a file on the daemon's host, which the daemon opens as root: accepted
  /// from root, or from the daemon's own user, alone. A member of the socket's group
  /// (`--group`) streams the blob instead, so it reads nothing it could not read itself.
  private static func allowPath(_ call: RPCStream, _ path: String, _ method: String) throws {
    guard path.hasPrefix("/"), !path.utf8.contains(0), path.utf8.count <= maxPath else {
      throw RPCStatus(.invalidArgument, "\(method): the path must be absolute, without NUL, at most \(maxPath) bytes")
    }
    guard let peer = call.peer, peer.uid == 0 || peer.uid == Sys.effectiveUserID else {
      throw RPCStatus(
        .permissionDenied,
        "\(method): a path on the daemon's host is accepted from root only (the caller is uid \(call.peer.map { String($0.uid) } ?? "unknown")); send the blob in the call instead"
      )
    }
  }

  private static func encode(_ m: some Message) throws -> [UInt8] {
    do { return try m.serializedBytes() } catch { throw RPCStatus(.internal, "encoding the response: \(error)") }
  }

  private static func decode<M: Message>(_ bytes: [UInt8]?, _ what: String) throws -> M {
    guard let bytes else { throw RPCStatus(.invalidArgument, "\(what): no request message") }
    do { return try M(serializedBytes: bytes) } catch { throw RPCStatus(.invalidArgument, "malformed \(what) request: \(error)") }
  }

  /// Runs `body` on a new thread; its promise gets the result. The thread gives what the
  /// job freed back to the kernel before it reports.
  private static func runJob<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> Promise<Result<T, SnapshotError>> {
    do {
      return try Threads.run {
        defer { Sys.returnFreedMemory() }  // what the job freed, back to the kernel
        do {
          return .success(try body())
        } catch {
          return .failure(SnapshotError(error))
        }
      }
    } catch {
      throw RPCStatus(.unavailable, "cannot start a thread: \(error)")
    }
  }

  private static func importLayer(_ s: Snapshotter, _ call: RPCStream, _ logger: Logger) throws {
    let first: Snapshotd_V1_ImportLayerRequest = try decode(try call.receive(), "ImportLayer")
    guard case .header(let h) = first.part else { throw RPCStatus(.invalidArgument, "ImportLayer: the first message must be the header") }
    let name = !h.digest.isEmpty ? h.digest : (!h.path.isEmpty ? h.path : "from the client")
    var digest: Digest?
    var diffID: Digest?
    if !h.digest.isEmpty {
      guard let d = Digest(h.digest) else { throw RPCStatus(.invalidArgument, "layer \(name): malformed digest \(h.digest)") }
      digest = d
    }
    if !h.diffID.isEmpty {
      guard let d = Digest(h.diffID) else { throw RPCStatus(.invalidArgument, "layer \(name): malformed diffID \(h.diffID)") }
      diffID = d
    }
    if !h.path.isEmpty { try allowPath(call, h.path, "ImportLayer") }
    let request = LayerImport(mediaType: h.mediaType, digest: digest, diffID: diffID, parent: h.parent, name: name)
    let cancellation = Cancellation()
    // A few messages queued are enough to keep the import busy; each is a client's message
    // (snapctl sends 1 MiB), so a deeper queue only holds more of the blob in memory.
    let pipe = h.path.isEmpty ? ChunkPipe(depth: 4) : nil
    let job = try runJob { () throws -> String in
      let source: ByteSource
      if let pipe {
        source = PipeSource(pipe)
      } else {
        do { source = try FileSource(path: h.path, cancellation: cancellation) } catch let e as LayerError {
          throw SnapshotError(.invalidArgument, e.message)
        }
      }
      return try s.importLayer(source, request)
    }
    if let pipe {
      // Feed the streamed blob until it ends or the import stops taking it.
      do {
        while let m = try call.receive() {
          let part: Snapshotd_V1_ImportLayerRequest = try decode(m, "ImportLayer")
          guard case .data(let bytes) = part.part else { throw RPCStatus(.invalidArgument, "layer \(name): a second header") }
          let chunk = pipe.chunk(capacity: bytes.count)  // one the import has finished with
          bytes.withUnsafeBytes { chunk.fill(copying: $0) }
          if !pipe.put(chunk) { break }
        }
        pipe.close()
      } catch {
        pipe.close(error: LayerError(.invalid, "layer \(name): the client stopped sending: \(error)"))
        _ = job.wait()
        throw error
      }
    } else {
      // The import reads the file itself: stop it if the client cancels or leaves.
      while job.wait(seconds: cancelPoll) == nil {
        if call.isCancelled {
          cancellation.cancel()
          _ = job.wait()
          logger.info("ImportLayer cancelled by the client", metadata: ["layer": "\(name)"])
          throw RPCStatus(.cancelled, "layer \(name): cancelled")
        }
      }
    }
    switch job.wait() {
    case .success(let chainID):
      try call.send(try encode(Snapshotd_V1_ImportLayerResponse.with { $0.chainID = chainID }))
    case .failure(let e):
      logger.log(level: e.logLevel, "ImportLayer failed", metadata: ["layer": "\(name)", "error": "\(e.message)"])
      throw e.status
    }
  }

  private static func importImage(_ s: Snapshotter, _ call: RPCStream, _ logger: Logger) throws {
    let r: Snapshotd_V1_ImportImageRequest = try decode(try call.receive(), "ImportImage")
    guard !r.path.isEmpty else { throw RPCStatus(.invalidArgument, "ImportImage: no path") }
    try allowPath(call, r.path, "ImportImage")
    try streamProgress(call, logger, "ImportImage", of: r.path, cancelOnLeave: true) { progress in
      try s.importImage(r.path, progress: progress)
    }
  }

  private static func pull(_ s: Snapshotter, _ call: RPCStream, _ logger: Logger) throws {
    let r: Snapshotd_V1_PullRequest = try decode(try call.receive(), "Pull")
    guard !r.reference.isEmpty else { throw RPCStatus(.invalidArgument, "Pull: no image reference") }
    try streamProgress(call, logger, "Pull", of: r.reference, cancelOnLeave: false) { progress in
      try s.pull(r.reference, platform: r.platform, progress: progress)
    }
  }

  /// Runs `body` (an image import or pull) on a thread of its own and streams its progress
  /// every 0.2 s; the last message carries the top chainID. A client that leaves stops an
  /// import (`cancelOnLeave`: its files are read no further); a pull finishes or fails
  /// cleanly all the same, as other callers (CRI's Prepares) may wait for its layers.
  private static func streamProgress(
    _ call: RPCStream, _ logger: Logger, _ method: String, of subject: String, cancelOnLeave: Bool,
    _ body: @escaping @Sendable (ImportProgress) throws -> String
  ) throws {
    let progress = ImportProgress()
    let job = try runJob { () throws -> String in try body(progress) }
    func report(_ chainID: String = "") throws {
      try call.send(
        try encode(
          Snapshotd_V1_ImportProgress.with {
            $0.bytesDone = progress.bytesDone
            $0.bytesTotal = progress.bytesTotal
            $0.layersDone = Int32(progress.layersDone)
            $0.layersTotal = Int32(progress.layersTotal)
            $0.chainID = chainID
          }))
    }
    while true {
      guard let result = job.wait(seconds: cancelPoll) else {
        do {
          if call.isCancelled { throw RPCStatus(.cancelled, "\(method) \(subject): cancelled") }
          try report()
        } catch {
          if cancelOnLeave { progress.cancellation.cancel() }
          _ = job.wait()
          logger.info("\(method): the client left", metadata: ["image": "\(subject)", "stopped": "\(cancelOnLeave)"])
          throw error
        }
        continue
      }
      switch result {
      case .success(let chainID):
        logger.info("\(method) done", metadata: ["image": "\(subject)", "chainID": "\(chainID)"])
        try report(chainID)
        return
      case .failure(let e):
        logger.log(level: e.logLevel, "\(method) failed", metadata: ["image": "\(subject)", "error": "\(e.message)"])
        throw e.status
      }
    }
  }

  private static func check(_ s: Snapshotter, _ call: RPCStream, _ logger: Logger) throws {
    let r: Snapshotd_V1_CheckRequest = try decode(try call.receive(), "Check")
    let progress = CheckProgress()
    let job = try runJob { () throws -> [CheckFinding] in try s.check(repair: r.repair, progress: progress) }
    func report(_ findings: [CheckFinding]? = nil) throws {
      try call.send(
        try encode(
          Snapshotd_V1_CheckProgress.with {
            $0.bytesDone = progress.bytesDone
            $0.bytesTotal = progress.bytesTotal
            if let findings {
              $0.findings = findings.map(Snapshotd_V1_CheckFinding.init)
              $0.done = true
            }
          }))
    }
    while true {
      guard let result = job.wait(seconds: cancelPoll) else {
        do { try report() } catch {
          _ = job.wait()  // the client left: the check still finishes (and repairs) cleanly
          throw error
        }
        continue
      }
      switch result {
      case .success(let findings):
        logger.info(
          "checked the store",
          metadata: [
            "repair": "\(r.repair)", "findings": "\(findings.count)", "repaired": "\(findings.filter(\.repaired).count)",
          ])
        try report(findings)
        return
      case .failure(let e):
        logger.log(level: e.logLevel, "Check failed", metadata: ["error": "\(e.message)"])
        throw e.status
      }
    }
  }
}
