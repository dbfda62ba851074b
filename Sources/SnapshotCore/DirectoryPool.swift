import Dispatch
import Logging
import SnapshotSys
import Synchronization

/// Snapshot directories made ahead of time, so that Prepare and View only write a row.
///
/// Each directory `s/<id>` (with `fs` and `work`) is made under a temporary name, renamed
/// into place and fsync'd, together with `s/`, before its id is handed out: a snapshot row
/// that commits always names a directory already on disk for good, and the call's only
/// flush is SQLite's. Ids are handed out once; a directory whose id never reaches a
/// committed row is an orphan that `Snapshotter.cleanup()` (and every start) removes.
final class DirectoryPool: Sendable {
  private let layout: Layout
  private let logger: Logger
  private let queue = DispatchQueue(label: "snapshotd.directory-pool", qos: .userInitiated)
  private let state: Mutex<State>
  /// How many ready directories the pool keeps.
  static let depth = 16

  private struct State {
    var nextID: Int64
    var ready: [Int64] = []
    /// Ids handed out or being made, whose directories cleanup must leave alone until the
    /// transaction that uses them is over.
    var reserved: Set<Int64> = []
    var filling = false
  }

  init(layout: Layout, firstID: Int64, logger: Logger) {
    self.layout = layout
    self.logger = logger
    state = Mutex(State(nextID: firstID))
    refill()
  }

  /// The id of a ready, durable directory, or nil when none is ready (the caller then makes
  /// one itself with ``reserveID()``). Call inside the write transaction that inserts the
  /// row, and ``release(_:)`` the id once it is over.
  func take() -> Int64? {
    let id = state.withLock { s -> Int64? in s.ready.isEmpty ? nil : s.ready.removeFirst() }
    refill()
    return id
  }

  /// A fresh id whose directory the caller makes.
  func reserveID() -> Int64 {
    state.withLock { s in
      let id = s.nextID
      s.nextID += 1
      s.reserved.insert(id)
      return id
    }
  }

  /// The transaction using `id` is over (committed or rolled back).
  func release(_ id: Int64) { _ = state.withLock { $0.reserved.remove(id) } }

  /// Ids whose directories belong to the pool or to a transaction in progress.
  var inUse: Set<Int64> { state.withLock { $0.reserved } }

  /// Waits for a fill in progress (tests open a second snapshotter on the same root).
  func waitIdle() { queue.sync {} }

  private func refill() {
    let start = state.withLock { s -> Bool in
      if s.filling || s.ready.count >= Self.depth / 2 { return false }
      s.filling = true
      return true
    }
    guard start else { return }
    queue.async { [self] in
      var made: [Int64] = []
      let want = Self.depth - state.withLock { $0.ready.count }
      do {
        for _ in 0..<want {
          let id = reserveID()
          try Snapshotter.makeDirectory(layout, id: id, kind: .active, parent: nil)
          try Sys.fsyncDirectory(layout.dir(id))
          made.append(id)
        }
        try Sys.fsyncDirectory(layout.snapshots)
      } catch {
        logger.warning("cannot make snapshot directories ahead of time", metadata: ["error": "\(error)"])
        for id in made { try? Tree.remove(layout.dir(id)) }
        made = []
      }
      state.withLock { s in
        s.ready += made
        s.filling = false
      }
    }
  }
}
