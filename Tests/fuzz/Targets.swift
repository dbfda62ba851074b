import Foundation
import FuseOverlay
import Logging
import SnapshotCore
import SnapshotSys
import SwiftProtobuf
import Unpack

@testable import Registry
@testable import SnapshotAPI

#if canImport(Glibc)
  import Glibc
#endif

/// The fuzz targets: each takes one input and feeds it to a parser of untrusted input. A
/// thrown error is the parser saying no, which is fine; a trap, a hang or a leak that grows
/// is a finding.
enum FuzzTargets {
  nonisolated(unsafe) static var selected: (@Sendable ([UInt8]) -> Void)?

  static let all: [String: @Sendable ([UInt8]) -> Void] = [
    "h2": h2,
    "grpc": grpc,
    "tar": tar,
    "hosts": hosts,
    "reference": reference,
    "manifest": manifest,
    "dockerconfig": dockerConfig,
    "snapfs-options": snapfsOptions,
    "filter": filter,
  ]

  static let quiet = Logger(label: "snapfuzz") { _ in SwiftLogNoOpLogHandler() }

  /// A scratch directory for this process, on tmpfs where there is one (the unpacker's
  /// syncfs is cheap there), removed at exit.
  static let scratch: String = {
    let base = Sys.exists("/dev/shm") ? "/dev/shm" : "/tmp"
    let dir = "\(base)/snapfuzz-\(getpid())"
    try? Sys.mkdirAll(dir, mode: 0o700)
    atexit { _ = try? Tree.remove("\(Sys.exists("/dev/shm") ? "/dev/shm" : "/tmp")/snapfuzz-\(getpid())") }
    return dir
  }()

  // MARK: HTTP/2 frames, HPACK, the connection's streams and flow control

  /// Routes that answer without a snapshotter: the connection's code is what is fuzzed.
  static let echoRoutes: RPCRoutes = [
    "/f.S/Unary": .unary { [$0] },
    "/f.S/Off": .unaryOffThread { [$0, $0] },
    "/f.S/Fail": .unary { _ in throw RPCStatus(.invalidArgument, "no") },
    "/f.S/Stream": .streaming { call in
      while let m = try call.receive() { try call.send(m) }
    },
  ]

  /// The input is what a client sends on a connection (preface, frames); the connection
  /// serves it to the end and its answers are read and dropped.
  static func h2(_ input: [UInt8]) {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { return }
    let (ours, peer) = (fds[0], fds[1])
    try? Socket.setSendTimeout(ours, seconds: 5)
    let client = try? Threads.start {
      try? Socket.writeAll(peer, input)
      Glibc.shutdown(peer, Int32(SHUT_WR))
      var buffer = [UInt8](repeating: 0, count: 65536)
      while Glibc.read(peer, &buffer, buffer.count) > 0 {}
    }
    try? H2Connection(fd: ours, routes: echoRoutes, logger: quiet).run()
    Glibc.shutdown(ours, Int32(SHUT_RDWR))
    client?.join()
    Glibc.close(ours)
    Glibc.close(peer)
  }

  // MARK: gRPC messages into each route's request conversion

  static let snapshotter: Snapshotter = {
    do {
      // (Directories: a fuzzed Commit must not leave a mount behind the scratch directory.)
      return try Snapshotter(root: scratch + "/grpc", layerFormat: .directory, logger: quiet)
    } catch {
      fatalError("snapfuzz grpc: no snapshotter under \(scratch): \(error)")
    }
  }()

  /// Every unary method of both services, in a fixed order.
  static let unaryRoutes: [(String, @Sendable ([UInt8]) throws -> [[UInt8]])] = {
    let routes = SnapshotsRoutes.make(snapshotter, logger: quiet).merging(StoreRoutes.make(snapshotter, logger: quiet)) { a, _ in a }
    return routes.keys.sorted().compactMap { path in
      switch routes[path]! {
      case .unary(let f), .unaryOffThread(let f): (path, f)
      case .streaming: nil
      }
    }
  }()

  /// The first byte picks the method; the rest is its serialized request.
  static func grpc(_ input: [UInt8]) {
    guard let first = input.first else { return }
    let (_, route) = unaryRoutes[Int(first) % unaryRoutes.count]
    _ = try? route(Array(input.dropFirst()))
  }

  // MARK: tar entries: path and link rules, into a real directory

  static let objects: ObjectStore = {
    do { return try ObjectStore(path: scratch + "/objects") } catch { fatalError("snapfuzz tar: \(error)") }
  }()

  /// The input is an uncompressed layer tar, unpacked for real; nothing may land outside
  /// the layer's directory (checked: the scratch directory holds only what it should). Its
  /// tree is also written as an EROFS image (the writer must take any tree the tar rules
  /// let through).
  static func tar(_ input: [UInt8]) {
    let dir = scratch + "/layer"
    try? Tree.remove(dir)
    try? Sys.mkdir(dir, mode: 0o755)
    let layer = LayerDescription(name: "fuzz", compression: .none, digest: nil, diffID: nil)
    if let (_, tree) = try? Unpacker.read(MemorySource(input), layer, objects: objects) {
      try? tree.materialize(into: dir)
      let image = open(scratch + "/layer.erofs", O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
      if image >= 0 {
        _ = try? ErofsImage.write(tree, to: image, what: "fuzz", buildTime: Sys.now())
        close(image)
      }
    }
    let left = Set((try? Sys.listDirectory(scratch)) ?? [])
    guard left.isSubset(of: ["layer", "layer.erofs", "objects", "grpc"]) else {
      fatalError("a tar wrote outside its layer: \(left.sorted())")
    }
    try? Tree.remove(dir)
  }

  // MARK: configuration and registry formats

  static func text(_ input: [UInt8]) -> String? { String(validating: input, as: UTF8.self) }

  static func hosts(_ input: [UInt8]) {
    guard let t = text(input) else { return }
    _ = try? HostsConfiguration.parse(t, baseDir: "/nonexistent/certs.d/registry")
  }

  /// `REFERENCE\nPLATFORM`.
  static func reference(_ input: [UInt8]) {
    guard let t = text(input) else { return }
    let parts = t.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
    if let r = try? Reference(parsing: parts[0]) {
      _ = r.description
      _ = try? Reference(parsing: r.description)
    }
    if parts.count > 1, let p = try? Platform(parsing: parts[1]) { _ = p.description }
  }

  /// A manifest or index as a registry serves it, then the config it names (the same
  /// bytes): decoded, the platform picked, descriptors and diff_ids checked.
  static func manifest(_ input: [UInt8]) {
    let data = Data(input)
    guard let m = try? JSONDecoder().decode(RawManifest.self, from: data) else { return }
    for platform in [Platform.host, Platform(os: "linux", architecture: "arm", variant: "v7")] {
      _ = selectManifest(m.manifests ?? [], for: platform)
    }
    _ = m.config?.descriptor(defaultType: "application/vnd.oci.image.config.v1+json")
    for l in m.layers ?? [] { _ = l.descriptor(defaultType: "application/vnd.oci.image.layer.v1.tar+gzip") }
    if let c = try? JSONDecoder().decode(RawConfig.self, from: data) {
      for d in c.rootfs?.diff_ids ?? [] { _ = Digest(d) }
    }
  }

  static func dockerConfig(_ input: [UInt8]) {
    guard let c = try? DockerConfig(json: Data(input)) else { return }
    for host in ["docker.io", "registry-1.docker.io", "127.0.0.1:5000", ""] { _ = c.credentials(for: host) }
  }

  /// mount.fuse3's arguments to snapfs, separated by NUL.
  static func snapfsOptions(_ input: [UInt8]) {
    let args = input.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    _ = try? Options.parse(args)
  }

  /// `FILTER\nNAME`: a List filter (regexps included) matched against a snapshot.
  static func filter(_ input: [UInt8]) {
    guard let t = text(input) else { return }
    let parts = t.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
    guard let f = try? Filter(parsing: parts[0]) else { return }
    let name = parts.count > 1 ? parts[1] : "sha256:abc"
    _ = f.matches(SnapshotInfo(name: name, parent: name, kind: .committed, labels: ["a": name, "b" + name: "b"]))
  }
}
