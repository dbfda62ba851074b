import Synchronization
import Testing
import Unpack

@testable import SnapshotCore

#if canImport(Glibc)
  import Glibc
#endif

private let digestA = Digest("sha256:" + String(repeating: "a", count: 64))!
private let digestB = Digest("sha256:" + String(repeating: "b", count: 64))!
private let digestM = Digest("sha256:" + String(repeating: "c", count: 64))!

/// The labels containerd's CRI plugin puts on a layer's Prepare (image-layers: this one up).
private func criLabels(chainID: String) -> [String: String] {
  [
    "containerd.io/snapshot.ref": chainID,
    "containerd.io/snapshot/cri.image-ref": "registry.test/app:1",
    "containerd.io/snapshot/cri.manifest-digest": digestM.description,
    "containerd.io/snapshot/cri.layer-digest": digestA.description,
    "containerd.io/snapshot/cri.image-layers": "\(digestA),\(digestB)",
  ]
}

/// What a Prepare's labels tell a remote snapshotter; needs no root.
@Suite struct RemoteLayerRequestTests {
  @Test func parsed() throws {
    let r = try #require(RemoteLayerRequest(labels: criLabels(chainID: "sha256:chain"), parent: "p"))
    #expect(r.imageRef == "registry.test/app:1" && r.manifestDigest == digestM && r.layerDigest == digestA)
    #expect(r.imageLayers == [digestA, digestB] && r.chainID == "sha256:chain" && r.parent == "p")
  }

  @Test func incompleteLabelsNameNoLayer() {
    for missing in criLabels(chainID: "x").keys where missing != "containerd.io/snapshot/cri.image-layers" {
      var labels = criLabels(chainID: "x")
      labels[missing] = nil
      #expect(RemoteLayerRequest(labels: labels, parent: "") == nil, "without \(missing)")
    }
    var bad = criLabels(chainID: "x")
    bad["containerd.io/snapshot/cri.layer-digest"] = "sha256:short"
    #expect(RemoteLayerRequest(labels: bad, parent: "") == nil)
  }
}

/// A fetcher that makes the committed snapshot it is asked for (as the registry one does
/// from a blob), or fails; it counts its calls.
final class FakeFetcher: LayerFetcher {
  let snapshotter: Snapshotter
  let fails: Bool
  let calls = Atomic<Int>(0)
  init(_ snapshotter: Snapshotter, fails: Bool) {
    self.snapshotter = snapshotter
    self.fails = fails
  }
  func fetch(_ request: RemoteLayerRequest) throws {
    calls.add(1, ordering: .relaxed)
    if fails { throw SnapshotError(.unavailable, "registry.test is unreachable") }
    _ = try snapshotter.prepare(key: "fetching", parent: request.parent)
    try snapshotter.commit(name: request.chainID, key: "fetching")
  }
  func pull(_ reference: String, platform: String, progress: ImportProgress) throws(SnapshotError) -> String {
    throw SnapshotError(.unavailable, "not in these tests")
  }
}

/// Prepare with CRI's labels: the fetcher's snapshot answers "already exists"; a failed
/// fetch falls back to the active snapshot containerd unpacks into.
@Suite
struct RemoteTests {
  @Test func aFetchedLayerIsAlreadyThere() throws {
    let root = TempRoot()
    let s = try root.open()
    let fetcher = FakeFetcher(s, fails: false)
    s.fetcher = fetcher
    expectError(.alreadyExists, containing: "sha256:chain") {
      _ = try s.prepare(key: "extract-1 sha256:chain", parent: "", labels: criLabels(chainID: "sha256:chain"))
    }
    #expect(fetcher.calls.load(ordering: .relaxed) == 1)
    #expect(try s.stat(key: "sha256:chain").kind == .committed)
    expectError(.notFound, containing: "extract-1") { _ = try s.stat(key: "extract-1 sha256:chain") }
    // Without CRI's labels the fetcher is not asked.
    _ = try s.prepare(key: "plain", parent: "", labels: ["containerd.io/snapshot.ref": "sha256:other"])
    #expect(fetcher.calls.load(ordering: .relaxed) == 1)
  }

  @Test func aFailedFetchFallsBack() throws {
    let root = TempRoot()
    let s = try root.open()
    let fetcher = FakeFetcher(s, fails: true)
    s.fetcher = fetcher
    let mounts = try s.prepare(key: "extract-1 sha256:chain", parent: "", labels: criLabels(chainID: "sha256:chain"))
    #expect(!mounts.isEmpty && fetcher.calls.load(ordering: .relaxed) == 1)
    #expect(try s.stat(key: "extract-1 sha256:chain").kind == .active)
    expectError(.notFound, containing: "sha256:chain") { _ = try s.stat(key: "sha256:chain") }
  }
}
