import SnapshotAPI
import SnapshotCore
import SwiftProtobuf
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The store service over the real unix socket and gRPC stack.
@Suite
struct StoreTests {
  @Test func checkOfAFreshStoreFindsNothing() async throws {
    try await withTestServer { socket, _ in
      for repair in [false, true] {
        let messages = try await withStoreClient(socketPath: socket) { c in
          try await c.check(.with { $0.repair = repair }) { r in
            var all: [Snapshotd_V1_CheckProgress] = []
            for try await p in r.messages { all.append(p) }
            return all
          }
        }
        let last = try #require(messages.last)
        #expect(last.done)
        #expect(last.findings.isEmpty, "\(last.findings.map(\.line))")
        #expect(messages.dropLast().allSatisfy { !$0.done && $0.findings.isEmpty })
      }
    }
  }

  @Test func checkMessagesRoundTrip() throws {
    let p = Snapshotd_V1_CheckProgress.with {
      $0.bytesDone = 3
      $0.bytesTotal = 1 << 40
      $0.findings = [
        .with {
          $0.kind = "orphan object"
          $0.detail = "object x is not used by any layer"
          $0.repairable = true
          $0.repaired = true
        },
        .with {
          $0.kind = "corrupt object"
          $0.detail = "object y no longer has its content"
        },
      ]
      $0.done = true
    }
    let bytes: [UInt8] = try p.serializedBytes()
    // What `protoc --encode=snapshotd.v1.CheckProgress` writes for the same message.
    let protoc: [UInt8] =
      [8, 3, 16, 128, 128, 128, 128, 128, 32, 26, 54, 10, 13] + Array("orphan object".utf8) + [18, 33]
      + Array("object x is not used by any layer".utf8) + [24, 1, 32, 1, 26, 52, 10, 14] + Array("corrupt object".utf8)
      + [18, 34] + Array("object y no longer has its content".utf8) + [32, 1]
    #expect(bytes == protoc)
    #expect(try Snapshotd_V1_CheckProgress(serializedBytes: bytes) == p)
    let json = try p.jsonString()
    #expect(json.contains("\"bytesDone\"") && json.contains("\"repairable\":true"), "\(json)")
    #expect(try Snapshotd_V1_CheckProgress(jsonString: json) == p)
    #expect(try Snapshotd_V1_CheckProgress(jsonString: #"{"bytes_total":"7","done":true}"#).bytesTotal == 7)

    // Pull's request, also written by hand: what `protoc --encode=snapshotd.v1.PullRequest` writes.
    let pull = Snapshotd_V1_PullRequest.with {
      $0.reference = "127.0.0.1:5000/test/busybox:1"
      $0.platform = "linux/arm64/v8"
    }
    let pullBytes: [UInt8] = try pull.serializedBytes()
    #expect(pullBytes == [10, 29] + Array("127.0.0.1:5000/test/busybox:1".utf8) + [18, 14] + Array("linux/arm64/v8".utf8))
    #expect(try Snapshotd_V1_PullRequest(serializedBytes: pullBytes) == pull)
    #expect(try Snapshotd_V1_PullRequest(jsonString: #"{"reference":"r","platform":"p"}"#).platform == "p")
    let request = Snapshotd_V1_CheckRequest.with { $0.repair = true }
    #expect(try Snapshotd_V1_CheckRequest(serializedBytes: try request.serializedBytes() as [UInt8]).repair)
    #expect(
      p.findings.map(\.line) == [
        "orphan object: object x is not used by any layer (repaired)",
        "corrupt object: object y no longer has its content (cannot be repaired)",
      ])
  }
}
