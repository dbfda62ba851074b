import Dispatch
import GRPCCore
import Logging
import SnapshotAPI
import SnapshotCore
import SnapshotSys
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Bad requests over the real unix socket and gRPC stack: each gets containerd's gRPC code
/// and a message naming the key, and the server keeps serving.
@Suite
struct SocketTests {
  func expectCode(_ kind: SnapshotError.Kind, naming key: String, _ body: () async throws -> Void) async {
    do {
      try await body()
      Issue.record("expected \(kind) naming \(key)")
    } catch let rpc as RPCError {
      let e = SnapshotError(rpc)
      #expect(e.kind == kind, "\(e.message)")
      #expect(e.message.contains(key), "\(e.message)")
    } catch {
      Issue.record("unexpected error \(error)")
    }
  }

  @Test func badRequestsGetContainerdCodes() async throws {
    try await withTestServer { socket, _ in
      try await withSnapshotsClient(socketPath: socket) { c in
        await expectCode(.invalidArgument, naming: "empty") { _ = try await c.prepare(.with { $0.key = "" }) }
        let long = String(repeating: "x", count: 70_000)
        await expectCode(.invalidArgument, naming: "xxxxxxxx") { _ = try await c.prepare(.with { $0.key = long }) }
        _ = try await c.prepare(.with { $0.key = "active" })
        await expectCode(.invalidArgument, naming: "\"active\"") {
          _ = try await c.prepare(
            .with {
              $0.key = "child"
              $0.parent = "active"
            })
        }
        await expectCode(.notFound, naming: "\"missing\"") {
          _ = try await c.prepare(
            .with {
              $0.key = "child"
              $0.parent = "missing"
            })
        }
        _ = try await c.commit(
          .with {
            $0.name = "base"
            $0.key = "active"
          })
        _ = try await c.view(
          .with {
            $0.key = "view"
            $0.parent = "base"
          })
        await expectCode(.failedPrecondition, naming: "\"view\"") {
          _ = try await c.commit(
            .with {
              $0.name = "n"
              $0.key = "view"
            })
        }
        await expectCode(.failedPrecondition, naming: "\"base\"") { _ = try await c.remove(.with { $0.key = "base" }) }
        await expectCode(.alreadyExists, naming: "\"view\"") {
          _ = try await c.view(
            .with {
              $0.key = "view"
              $0.parent = "base"
            })
        }
        await expectCode(.notFound, naming: "\"nothing\"") { _ = try await c.stat(.with { $0.key = "nothing" }) }
        let big = String(repeating: "v", count: 4096)
        await expectCode(.invalidArgument, naming: "\"labelled\"") {
          _ = try await c.prepare(
            .with {
              $0.key = "labelled"
              $0.labels = ["key": big]
            })
        }
        await expectCode(.invalidArgument, naming: "\"base\"") {
          _ = try await c.update(
            .with {
              $0.info.name = "base"
              $0.updateMask.paths = ["parent"]
            })
        }
        await expectCode(.invalidArgument, naming: "invalid filter") {
          _ = try await c.list(.with { $0.filters = ["kind=="] }) { r in for try await _ in r.messages {} }
        }
        // Still serving, and nothing half-made was kept.
        let info = try await c.stat(.with { $0.key = "base" }).info
        #expect(info.kind == .committed)
        let names = try await c.list(.init()) { r in
          var all: [String] = []
          for try await b in r.messages { all += b.info.map(\.name) }
          return all
        }
        #expect(names.sorted() == ["base", "view"])
      }
    }
  }

  @Test func duplicateKeysRacedFromManyClientsHaveOneWinner() async throws {
    try await withTestServer { socket, _ in
      for round in 0..<3 {
        let key = "race-\(round)"
        let outcomes = try await withThrowingTaskGroup(of: String.self) { group in
          for _ in 0..<12 {
            group.addTask {
              do {
                _ = try await withSnapshotsClient(socketPath: socket) { try await $0.prepare(.with { $0.key = key }) }
                return "ok"
              } catch let e as SnapshotError {
                return e.kind == .alreadyExists && e.message.contains(key) ? "exists" : "other: \(e)"
              }
            }
          }
          return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == "ok" }.count == 1, "\(outcomes)")
        #expect(outcomes.filter { $0 == "exists" }.count == 11, "\(outcomes)")
      }
    }
  }

  /// A Prepare that waits for its layer's download (CRI's labels, a fetcher that blocks)
  /// runs off the connection's thread: a Stat on the same connection is answered meanwhile.
  /// (Calls on one connection used to run one at a time; the Stat would then wait forever.)
  @Test func aPrepareWaitingForItsLayerDoesNotHoldUpTheConnection() async throws {
    try await withTestServer { socket, s in
      let fetcher = BlockingFetcher()
      s.fetcher = fetcher
      _ = try s.prepare(key: "other", parent: "")
      try await withSnapshotsClient(socketPath: socket) { c in
        let labels = [
          "containerd.io/snapshot.ref": "sha256:" + String(repeating: "d", count: 64),
          "containerd.io/snapshot/cri.image-ref": "registry.test/app:1",
          "containerd.io/snapshot/cri.manifest-digest": "sha256:" + String(repeating: "c", count: 64),
          "containerd.io/snapshot/cri.layer-digest": "sha256:" + String(repeating: "a", count: 64),
        ]
        let slow = Task {
          try await c.prepare(
            .with {
              $0.key = "extract-1"
              $0.labels = labels
            })
        }
        await fetcher.waitEntered()
        let stat = Task { try await c.stat(.with { $0.key = "other" }).info.name }
        // Bounded only so that a regression fails instead of hanging the suite.
        let answered = await withTaskGroup(of: String?.self) { group in
          group.addTask { try? await stat.value }
          group.addTask {
            try? await Task.sleep(for: .seconds(30))
            fetcher.release()  // the Stat is answered once the Prepare is done
            return nil
          }
          let first = await group.next()!
          group.cancelAll()
          return first
        }
        fetcher.release()
        #expect(answered == "other", "Stat was not answered while a Prepare waited for its layer")
        // The fetcher fails: Prepare falls back to an active snapshot.
        let mounts = try await slow.value.mounts
        #expect(!mounts.isEmpty)
      }
    }
  }
}

/// A fetcher that blocks until released, then fails (Prepare then falls back).
final class BlockingFetcher: LayerFetcher {
  private let entered = DispatchSemaphore(value: 0)
  private let released = DispatchSemaphore(value: 0)
  /// Waits, without holding one of the few threads async tests share, until `fetch` runs.
  func waitEntered() async {
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
      DispatchQueue.global().async { [entered] in
        entered.wait()
        done.resume()
      }
    }
  }
  func release() { released.signal() }
  func fetch(_ request: RemoteLayerRequest) throws {
    entered.signal()
    released.wait()
    throw SnapshotError(.unavailable, "registry.test is unreachable")
  }
  func pull(_ reference: String, platform: String, progress: ImportProgress) throws(SnapshotError) -> String {
    throw SnapshotError(.unavailable, "not in this test")
  }
}
