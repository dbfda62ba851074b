import GRDB
import Unpack

/// A snapshot row as stored: the integer id names its directory (`s/<id>`).
struct SnapshotRow: Sendable {
  var id: Int64
  var key: String
  var parentID: Int64?
  var parentKey: String?
  var kind: SnapshotKind
  var created: Int64
  var updated: Int64
  var size: Int64
  var inodes: Int64
  /// The shared layer directory (`l/<layer>`) an imported snapshot uses instead of `s/<id>/fs`.
  var layer: Int64?
  /// Bytes of a committed snapshot's regular files once its files are content objects
  /// (dedup of snapshots committed through Prepare/Commit, in Commit); nil before.
  var fileBytes: Int64?
  /// An active snapshot mounted `volatile` (`Volatile`).
  var volatile: Bool
  /// An active snapshot's size limit in bytes (0: none), and what its empty file system
  /// uses (`WritableLimit`).
  var sizeLimit: Int64
  var base: WritableLimit.Base
  var limited: Bool { sizeLimit > 0 }

  /// From a row of `Metadata.selectColumns`, by position (names are matched without case
  /// on every access, which shows on the hot path).
  init(row: Row) throws(SnapshotError) {
    id = row[0]
    key = row[1]
    parentID = row[2]
    parentKey = row[3]
    let k: Int = row[4]
    guard let kind = SnapshotKind(rawValue: k) else { throw .internal("snapshot \(key): unknown kind \(k) in database") }
    self.kind = kind
    created = row[5]
    updated = row[6]
    size = row[7]
    inodes = row[8]
    layer = row[9]
    fileBytes = row[10]
    volatile = row[11]
    sizeLimit = row[12]
    base = WritableLimit.Base(bytes: row[13], inodes: row[14])
  }
}

/// The SQLite schema and every query the snapshotter runs. Functions take the
/// `Database` of a transaction the caller opened; none opens its own.
enum Metadata {
  static func migrator() -> DatabaseMigrator {
    var m = DatabaseMigrator()
    m.registerMigration("v1") { db in
      try db.execute(
        sql: """
          CREATE TABLE snapshot (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            parent INTEGER REFERENCES snapshot(id),
            kind INTEGER NOT NULL,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            size INTEGER NOT NULL DEFAULT 0,
            inodes INTEGER NOT NULL DEFAULT 0
          );
          CREATE INDEX snapshot_parent ON snapshot(parent);
          CREATE TABLE label (
            snapshot INTEGER NOT NULL REFERENCES snapshot(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (snapshot, key)
          ) WITHOUT ROWID;
          """)
    }
    // Imported layers: one directory per diffID (`l/<id>`), shared by every chain holding
    // it; content objects (`o/..`) reference-counted by the trees (`l/<id>`, `s/<id>`)
    // that link them.
    m.registerMigration("v2") { db in
      try db.execute(
        sql: """
          CREATE TABLE layer (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            diff_id TEXT NOT NULL UNIQUE,
            digest TEXT,
            size INTEGER NOT NULL,
            entries INTEGER NOT NULL,
            created INTEGER NOT NULL
          );
          CREATE INDEX layer_digest ON layer(digest);
          ALTER TABLE snapshot ADD COLUMN layer INTEGER REFERENCES layer(id);
          CREATE INDEX snapshot_layer ON snapshot(layer);
          CREATE TABLE object (
            key TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            refs INTEGER NOT NULL
          ) WITHOUT ROWID;
          CREATE TABLE chain (
            chain_id TEXT PRIMARY KEY,
            parent TEXT,
            layer INTEGER NOT NULL REFERENCES layer(id)
          ) WITHOUT ROWID;
          CREATE INDEX chain_layer ON chain(layer);
          CREATE TABLE object_ref (
            tree TEXT NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (tree, key)
          ) WITHOUT ROWID;
          """)
    }
    // Snapshots committed through Prepare/Commit, deduplicated in Commit: their
    // trees (`s/<id>`) reference objects too.
    m.registerMigration("v3") { db in
      try db.execute(sql: "ALTER TABLE snapshot ADD COLUMN file_bytes INTEGER")
    }
    // Objects are file data only, keyed by a short name (see `ObjectStore`), with their
    // whole content digest; layers hold stubs that redirect to them.
    m.registerMigration("v4") { db in
      try db.execute(sql: "ALTER TABLE object ADD COLUMN sha256 TEXT")
    }
    // A layer's implicit parent directories (newline-separated; see `ImplicitDirectories`).
    // A copy of a layer whose implicit directories took a chain's lower metadata has the
    // diff_id `<diffID>+<signature>`.
    m.registerMigration("v5") { db in
      try db.execute(sql: "ALTER TABLE layer ADD COLUMN implicit_dirs TEXT")
    }
    // Active snapshots mounted `volatile` (see `Volatile`), and size-limited ones with
    // what their empty file system uses (see `WritableLimit`).
    m.registerMigration("v6") { db in
      try db.execute(
        sql: """
          ALTER TABLE snapshot ADD COLUMN volatile INTEGER NOT NULL DEFAULT 0;
          ALTER TABLE snapshot ADD COLUMN size_limit INTEGER NOT NULL DEFAULT 0;
          ALTER TABLE snapshot ADD COLUMN base_bytes INTEGER NOT NULL DEFAULT 0;
          ALTER TABLE snapshot ADD COLUMN base_inodes INTEGER NOT NULL DEFAULT 0;
          """)
    }
    return m
  }

  /// The columns `SnapshotRow` reads, in its order.
  private static let selectColumns = """
    SELECT s.id, s.key, s.parent, p.key AS parent_key, s.kind, s.created, s.updated, s.size, s.inodes, s.layer, s.file_bytes, s.volatile,
      s.size_limit, s.base_bytes, s.base_inodes
    FROM snapshot s LEFT JOIN snapshot p ON p.id = s.parent
    """

  static func find(_ db: Database, key: String) throws -> SnapshotRow? {
    guard let row = try Row.fetchOne(db.cachedStatement(sql: selectColumns + " WHERE s.key = ?"), arguments: [key]) else { return nil }
    return try SnapshotRow(row: row)
  }

  static func find(_ db: Database, id: Int64) throws -> SnapshotRow? {
    guard let row = try Row.fetchOne(db.cachedStatement(sql: selectColumns + " WHERE s.id = ?"), arguments: [id]) else { return nil }
    return try SnapshotRow(row: row)
  }

  static func get(_ db: Database, key: String) throws -> SnapshotRow {
    guard let row = try find(db, key: key) else { throw SnapshotError.notFound("snapshot \(quoted(key)) does not exist") }
    return row
  }

  /// Ids of the snapshots of an imported layer.
  static func snapshots(_ db: Database, layer: Int64) throws -> [Int64] {
    try Int64.fetchAll(db.cachedStatement(sql: "SELECT id FROM snapshot WHERE layer = ?"), arguments: [layer])
  }

  static func all(_ db: Database) throws -> [SnapshotRow] {
    try Row.fetchAll(db, sql: selectColumns + " ORDER BY s.id").map { row throws(SnapshotError) in try SnapshotRow(row: row) }
  }

  static func allIDs(_ db: Database) throws -> Set<Int64> {
    Set(try Int64.fetchAll(db, sql: "SELECT id FROM snapshot"))
  }

  /// The parent chain of `id` (ids and layers), nearest parent first.
  static func parentChain(_ db: Database, of id: Int64) throws -> [(id: Int64, layer: Int64?)] {
    try Row.fetchAll(
      db.cachedStatement(
        sql: """
          WITH RECURSIVE chain(id, parent, layer, depth) AS (
            SELECT id, parent, layer, 0 FROM snapshot WHERE id = ?
            UNION ALL
            SELECT s.id, s.parent, s.layer, c.depth + 1 FROM snapshot s JOIN chain c ON s.id = c.parent
          )
          SELECT id, layer FROM chain ORDER BY depth
          """), arguments: [id]
    ).map { ($0[0], $0[1]) }
  }

  static func hasChildren(_ db: Database, id: Int64) throws -> Bool {
    try Bool.fetchOne(db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM snapshot WHERE parent = ?)"), arguments: [id]) ?? false
  }

  static func insert(_ db: Database, id: Int64, key: String, parent: Int64?, kind: SnapshotKind, now: Int64, volatile: Bool = false)
    throws
  {
    try db.cachedStatement(sql: "INSERT INTO snapshot (id, key, parent, kind, created, updated, volatile) VALUES (?, ?, ?, ?, ?, ?, ?)")
      .execute(arguments: [id, key, parent, kind.rawValue, now, now, volatile])
  }

  /// Records snapshot `id`'s size limit and what its empty file system uses.
  static func setWritableLimit(_ db: Database, id: Int64, limit: Int64, base: WritableLimit.Base) throws {
    try db.execute(
      sql: "UPDATE snapshot SET size_limit = ?, base_bytes = ?, base_inodes = ? WHERE id = ?",
      arguments: [limit, base.bytes, base.inodes, id])
  }

  /// The size-limited active snapshots' ids.
  static func limitedSnapshots(_ db: Database) throws -> [Int64] {
    try Int64.fetchAll(db, sql: "SELECT id FROM snapshot WHERE size_limit > 0 AND kind = ?", arguments: [SnapshotKind.active.rawValue])
  }

  /// The volatile active snapshots: id and key.
  static func volatileSnapshots(_ db: Database) throws -> [(id: Int64, key: String)] {
    try Row.fetchAll(db, sql: "SELECT id, key FROM snapshot WHERE volatile = 1 AND kind = ?", arguments: [SnapshotKind.active.rawValue])
      .map { ($0[0], $0[1]) }
  }

  /// The highest id any snapshot ever had (AUTOINCREMENT remembers removed ones).
  static func lastID(_ db: Database) throws -> Int64 {
    let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'snapshot'") ?? 0
    let max = try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM snapshot") ?? 0
    return Swift.max(seq, max)
  }

  static func commit(_ db: Database, id: Int64, name: String, usage: SnapshotUsage, now: Int64) throws {
    try db.cachedStatement(sql: "UPDATE snapshot SET key = ?, kind = ?, created = ?, updated = ?, size = ?, inodes = ? WHERE id = ?")
      .execute(arguments: [name, SnapshotKind.committed.rawValue, now, now, usage.size, usage.inodes, id])
  }

  static func touch(_ db: Database, id: Int64, now: Int64) throws {
    try db.cachedStatement(sql: "UPDATE snapshot SET updated = ? WHERE id = ?").execute(arguments: [now, id])
  }

  static func delete(_ db: Database, id: Int64) throws {
    try db.cachedStatement(sql: "DELETE FROM snapshot WHERE id = ?").execute(arguments: [id])
  }

  static func labels(_ db: Database, id: Int64) throws -> [String: String] {
    var out: [String: String] = [:]
    for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT key, value FROM label WHERE snapshot = ?"), arguments: [id]) {
      out[row[0]] = row[1] as String
    }
    return out
  }

  static func allLabels(_ db: Database) throws -> [Int64: [String: String]] {
    var out: [Int64: [String: String]] = [:]
    for row in try Row.fetchAll(db, sql: "SELECT snapshot, key, value FROM label") {
      out[row[0], default: [:]][row[1]] = row[2] as String
    }
    return out
  }

  static func setLabels(_ db: Database, id: Int64, _ labels: [String: String]) throws {
    try db.cachedStatement(sql: "DELETE FROM label WHERE snapshot = ?").execute(arguments: [id])
    try insertLabels(db, id: id, labels)
  }

  /// Labels of a snapshot that has none yet.
  static func insertLabels(_ db: Database, id: Int64, _ labels: [String: String]) throws {
    for (k, v) in labels {
      try db.cachedStatement(sql: "INSERT INTO label (snapshot, key, value) VALUES (?, ?, ?)").execute(arguments: [id, k, v])
    }
  }

  // MARK: Layers and objects

  static func layer(_ db: Database, diffID: String) throws -> Int64? {
    try Int64.fetchOne(db.cachedStatement(sql: "SELECT id FROM layer WHERE diff_id = ?"), arguments: [diffID])
  }

  /// A layer of `diffID`, its copies for chains (`<diffID>+<signature>`) too: its id,
  /// diff_id, implicit directories and blob digest, the plain one first.
  static func layerVariant(_ db: Database, diffID: String) throws -> (id: Int64, key: String, implicit: [String], digest: String?)? {
    try Row.fetchOne(
      db.cachedStatement(
        sql:
          "SELECT id, diff_id, implicit_dirs, digest FROM layer WHERE diff_id = ? OR diff_id LIKE ? ORDER BY length(diff_id), id LIMIT 1"),
      arguments: [diffID, diffID + "+%"]
    ).map { ($0[0], $0[1], (($0[2] as String?) ?? "").split(separator: "\n").map(String.init), $0[3]) }
  }

  static func layer(_ db: Database, digest: String) throws -> (id: Int64, diffID: String)? {
    try Row.fetchOne(db.cachedStatement(sql: "SELECT id, diff_id FROM layer WHERE digest = ?"), arguments: [digest]).map { ($0[0], $0[1]) }
  }

  static func insertLayer(
    _ db: Database, diffID: String, digest: String?, size: Int64, entries: Int, implicitDirectories: [String] = [], now: Int64
  ) throws -> Int64 {
    try db.cachedStatement(sql: "INSERT INTO layer (diff_id, digest, size, entries, created, implicit_dirs) VALUES (?, ?, ?, ?, ?, ?)")
      .execute(arguments: [
        diffID, digest, size, entries, now, implicitDirectories.isEmpty ? nil : implicitDirectories.joined(separator: "\n"),
      ])
    return db.lastInsertedRowID
  }

  static func insertSnapshot(_ db: Database, id: Int64, key: String, parent: Int64?, layer: Int64, size: Int64, inodes: Int64, now: Int64)
    throws
  {
    try db.cachedStatement(
      sql: "INSERT INTO snapshot (id, key, parent, kind, created, updated, size, inodes, layer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    .execute(arguments: [id, key, parent, SnapshotKind.committed.rawValue, now, now, size, inodes, layer])
  }

  /// Remembers that `chainID` is `layer` on top of the chain `parent`, so the snapshot can
  /// be made again after it is removed, as long as the layer is kept.
  static func recordChain(_ db: Database, chainID: String, parent: String?, layer: Int64) throws {
    try db.cachedStatement(sql: "INSERT OR IGNORE INTO chain (chain_id, parent, layer) VALUES (?, ?, ?)").execute(arguments: [
      chainID, parent, layer,
    ])
  }

  static func chain(_ db: Database, _ chainID: String) throws -> (parent: String?, layer: Int64)? {
    try Row.fetchOne(db.cachedStatement(sql: "SELECT parent, layer FROM chain WHERE chain_id = ?"), arguments: [chainID]).map {
      ($0[0], $0[1])
    }
  }

  static func layerSize(_ db: Database, _ layer: Int64) throws -> (size: Int64, entries: Int64) {
    let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT size, entries FROM layer WHERE id = ?"), arguments: [layer])
    return (row?[0] ?? 0, row?[1] ?? 0)
  }

  /// Layers no snapshot uses.
  static func unusedLayers(_ db: Database) throws -> [Int64] {
    try Int64.fetchAll(db, sql: "SELECT id FROM layer l WHERE NOT EXISTS (SELECT 1 FROM snapshot s WHERE s.layer = l.id)")
  }

  static func deleteLayer(_ db: Database, _ layer: Int64) throws {
    try db.cachedStatement(sql: "DELETE FROM chain WHERE layer = ?").execute(arguments: [layer])
    try db.cachedStatement(sql: "DELETE FROM layer WHERE id = ?").execute(arguments: [layer])
  }

  static func allLayerIDs(_ db: Database) throws -> Set<Int64> {
    Set(try Int64.fetchAll(db, sql: "SELECT id FROM layer"))
  }

  /// Counts one more reference from `tree` to each object.
  static func addRefs(_ db: Database, tree: String, _ objects: [String: ObjectInfo]) throws {
    let upsert = try db.cachedStatement(
      sql: """
        INSERT INTO object (key, size, refs, sha256) VALUES (?, ?, 1, ?)
        ON CONFLICT (key) DO UPDATE SET refs = refs + 1, sha256 = excluded.sha256
        """)
    let ref = try db.cachedStatement(sql: "INSERT INTO object_ref (tree, key) VALUES (?, ?)")
    for (key, info) in objects {
      try upsert.execute(arguments: [key, info.size, info.sha256])
      try ref.execute(arguments: [tree, key])
    }
  }

  /// Every object row: key → (size, digest, reference count).
  static func allObjects(_ db: Database) throws -> [String: (info: ObjectInfo, refs: Int64)] {
    var out: [String: (info: ObjectInfo, refs: Int64)] = [:]
    for row in try Row.fetchAll(db, sql: "SELECT key, size, COALESCE(sha256, ''), refs FROM object") {
      out[row[0]] = (ObjectInfo(size: row[1], sha256: row[2]), row[3])
    }
    return out
  }

  /// Every tree's references: tree → keys.
  /// The objects a tree references, with their size and digest.
  static func refs(_ db: Database, tree: String) throws -> [String: ObjectInfo] {
    var out: [String: ObjectInfo] = [:]
    for row in try Row.fetchAll(
      db, sql: "SELECT o.key, o.size, o.sha256 FROM object_ref r JOIN object o ON o.key = r.key WHERE r.tree = ?", arguments: [tree])
    {
      out[row[0]] = ObjectInfo(size: row[1], sha256: (row[2] as String?) ?? "")
    }
    return out
  }

  static func allRefs(_ db: Database) throws -> [String: Set<String>] {
    var out: [String: Set<String>] = [:]
    for row in try Row.fetchAll(db, sql: "SELECT tree, key FROM object_ref") {
      out[row[0], default: []].insert(row[1])
    }
    return out
  }

  /// Trees whose references are recorded: imported layers and deduplicated snapshots.
  static func trees(_ db: Database) throws -> [(tree: String, layer: Int64?, snapshot: Int64?)] {
    var out: [(tree: String, layer: Int64?, snapshot: Int64?)] = []
    for id in try Int64.fetchAll(db, sql: "SELECT id FROM layer ORDER BY id") { out.append((Layout.tree(layer: id), id, nil)) }
    for id in try Int64.fetchAll(db, sql: "SELECT id FROM snapshot WHERE layer IS NULL AND file_bytes IS NOT NULL ORDER BY id") {
      out.append((Layout.tree(snapshot: id), nil, id))
    }
    return out
  }

  /// Replaces the references of `tree` with `objects` and sets every object's count from
  /// the references (what `check --repair` and the conversion of old stores do).
  static func replaceRefs(_ db: Database, tree: String, _ objects: [String: ObjectInfo]) throws {
    try releaseRefs(db, tree: tree)
    try addRefs(db, tree: tree, objects)
  }

  /// Sets every object's reference count to the number of trees referencing it.
  static func recountRefs(_ db: Database) throws {
    try db.execute(sql: "UPDATE object SET refs = (SELECT COUNT(*) FROM object_ref r WHERE r.key = object.key)")
  }

  /// Deletes the rows of objects no tree references (after `recountRefs`).
  static func deleteUnreferencedObjects(_ db: Database) throws {
    try db.execute(sql: "DELETE FROM object WHERE refs <= 0")
  }

  /// Rows of objects named the way stores before stubs named them (64 hex: the SHA-256
  /// alone; see `Upgrade`).
  static func legacyObjectCount(_ db: Database) throws -> Int {
    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM object WHERE length(key) = 64") ?? 0
  }

  /// Deletes the rows and references of objects named the way stores before stubs named them.
  static func deleteLegacyObjects(_ db: Database) throws {
    try db.execute(sql: "DELETE FROM object_ref WHERE length(key) = 64")
    try db.execute(sql: "DELETE FROM object WHERE length(key) = 64")
  }

  /// Drops references of trees that no longer exist.
  static func dropRefs(_ db: Database, trees: [String]) throws {
    for tree in trees { try releaseRefs(db, tree: tree) }
  }

  /// Drops every reference `tree` holds.
  static func releaseRefs(_ db: Database, tree: String) throws {
    try db.cachedStatement(sql: "UPDATE object SET refs = refs - 1 WHERE key IN (SELECT key FROM object_ref WHERE tree = ?)").execute(
      arguments: [tree])
    try db.cachedStatement(sql: "DELETE FROM object_ref WHERE tree = ?").execute(arguments: [tree])
  }

  /// Removes the rows of objects nothing references and returns them.
  static func takeUnreferenced(_ db: Database) throws -> [(key: String, size: Int64)] {
    let rows = try Row.fetchAll(db, sql: "SELECT key, size FROM object WHERE refs <= 0").map { ($0[0] as String, $0[1] as Int64) }
    try db.execute(sql: "DELETE FROM object WHERE refs <= 0")
    return rows
  }

  /// Committed snapshots of their own (not imported layers) whose files are not objects yet.
  static func pendingDedup(_ db: Database) throws -> [Int64] {
    try Int64.fetchAll(
      db, sql: "SELECT id FROM snapshot WHERE kind = ? AND layer IS NULL AND file_bytes IS NULL ORDER BY id",
      arguments: [SnapshotKind.committed.rawValue])
  }

  static func setFileBytes(_ db: Database, id: Int64, _ bytes: Int64) throws {
    try db.cachedStatement(sql: "UPDATE snapshot SET file_bytes = ? WHERE id = ?").execute(arguments: [bytes, id])
  }

  static func objectKeys(_ db: Database) throws -> Set<String> {
    Set(try String.fetchAll(db, sql: "SELECT key FROM object"))
  }

  static func storeUsage(_ db: Database) throws -> StoreUsage {
    let row = try Row.fetchOne(
      db,
      sql: """
        SELECT (SELECT COUNT(*) FROM layer), (SELECT COUNT(*) FROM object),
               (SELECT COALESCE(SUM(size), 0) FROM object),
               (SELECT COALESCE(SUM(size), 0) FROM layer) + (SELECT COALESCE(SUM(file_bytes), 0) FROM snapshot)
        """)!
    return StoreUsage(layers: row[0], objects: row[1], storedBytes: row[2], logicalBytes: row[3])
  }

  static func countByKind(_ db: Database) throws -> [SnapshotKind: Int] {
    var counts = Dictionary(uniqueKeysWithValues: SnapshotKind.allCases.map { ($0, 0) })
    for row in try Row.fetchAll(db, sql: "SELECT kind, COUNT(*) FROM snapshot GROUP BY kind") {
      if let kind = SnapshotKind(rawValue: row[0]) { counts[kind] = row[1] }
    }
    return counts
  }

  static func count(_ db: Database) throws -> Int {
    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM snapshot") ?? 0
  }
}

/// A key as it appears in error messages: quoted, and cut short when huge.
func quoted(_ key: String) -> String {
  let utf8 = key.utf8
  if utf8.count <= 200 { return "\"\(key)\"" }
  return "\"\(String(decoding: utf8.prefix(200), as: UTF8.self))...\" (\(utf8.count) bytes)"
}
