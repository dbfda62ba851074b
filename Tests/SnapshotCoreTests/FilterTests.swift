import Testing

@testable import SnapshotCore

@Suite struct FilterTests {
  let committed = SnapshotInfo(
    name: "sha256:abc", parent: "base", kind: .committed,
    labels: ["containerd.io/gc.root": "1", "a.b": "x y", "empty": ""])
  let active = SnapshotInfo(name: "work", parent: "", kind: .active)

  func match(_ filter: String, _ info: SnapshotInfo) throws -> Bool {
    try Filter(parsing: filter).matches(info)
  }

  @Test func kindNameParent() throws {
    #expect(try match("kind==committed", committed))
    #expect(try !match("kind==committed", active))
    #expect(try match("kind!=committed", active))
    #expect(try match("name==sha256:abc", committed))
    #expect(try match("parent==base", committed))
    #expect(try match("parent==base,kind==committed", committed))
    #expect(try !match("parent==base,kind==active", committed))
  }

  @Test func labels() throws {
    #expect(try match("labels.\"containerd.io/gc.root\"", committed))
    #expect(try match("labels.\"containerd.io/gc.root\"==1", committed))
    #expect(try match("labels.a.b==\"x y\"", committed))
    #expect(try match("labels.empty", committed))
    #expect(try !match("labels.missing", committed))
    #expect(try match("labels.missing!=foo", committed))
    #expect(try !match("labels.\"containerd.io/gc.root\"", active))
  }

  @Test func regex() throws {
    #expect(try match("name~=^sha256:", committed))
    #expect(try match("name~=/^sha2.*c$/", committed))
    #expect(try !match("name~=^work$", committed))
  }

  @Test func anyOfSeveral() throws {
    let filters = try ["kind==view", "name==work"].map { try Filter(parsing: $0) }
    #expect(Filter.matchesAny(filters, active))
    #expect(!Filter.matchesAny(filters, committed))
    #expect(Filter.matchesAny([], committed))
    #expect(try match("", committed) && match("  ", active))
  }

  @Test(arguments: ["kind==", "labels.\"unterminated", "name~=(", ",", "kind==a,"])
  func malformed(_ text: String) {
    #expect(throws: SnapshotError.self) { try Filter(parsing: text) }
    do {
      _ = try Filter(parsing: text)
    } catch {
      #expect(error.kind == .invalidArgument)
      #expect(error.message.contains("invalid filter"))
    }
  }
}

extension FilterTests {
  /// containerd's filters use Go's regexp (no backtracking): so must ours. Swift's Regex
  /// spun forever on this one.
  @Test func catastrophicPatternEnds() throws {
    let named = SnapshotInfo(name: String(repeating: "a", count: 3000) + "!", parent: "", kind: .active)
    #expect(try !match("name~=/^(a+)+$/", named))
  }
}
