import SnapshotSys
import Testing
import Unpack

@testable import SnapshotCore

#if canImport(Glibc)
  import Glibc
#endif

/// A fresh snapshotter on a temporary root under /tmp, removed afterwards with its alias
/// symlink and whatever is mounted under it (layer images). As root the alias is under
/// /run/sd, as the daemon's; as any other user under the temporary directory. Tests that set
/// trusted.* xattrs (stubs), owners, or mount (a bind mount, EROFS layer images) run only as
/// root (`Root.needed`); the rest run as any user.
final class TempRoot {
  let path: String
  let aliasBase: String
  init() {
    var template = Array("/tmp/snapshotd-test-XXXXXX".utf8CString)
    path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    aliasBase = getuid() == 0 ? Layout.defaultAliasBase : path + "/alias"
  }
  deinit {
    try? Sys.unlink(Layout(root: path + "/root", aliasBase: aliasBase).alias)
    try? Sys.detachMounts(under: path)  // layer images
    try? Tree.remove(path)
  }
  /// Layers as directories unless `format` says otherwise: most suites check the stubs on disk.
  func open(_ format: LayerFormat = .directory) throws -> Snapshotter {
    try Snapshotter(root: path + "/root", aliasBase: aliasBase, layerFormat: format)
  }
}

/// The condition of tests that need root: trusted.* xattrs, owners, mounts.
enum Root {
  static let needed = ConditionTrait.enabled(if: getuid() == 0, "needs root: trusted.* xattrs, owners, mounts")
}

func expectError(_ kind: SnapshotError.Kind, containing text: String, _ body: () throws -> Void) {
  do {
    try body()
    Issue.record("expected \(kind) error mentioning \(text)")
  } catch let e as SnapshotError {
    #expect(e.kind == kind, "\(e.message)")
    #expect(e.message.contains(text), "\(e.message)")
  } catch {
    Issue.record("unexpected error \(error)")
  }
}

/// The upper dir of an active snapshot's mounts (the bind source when it has no parent).
func upperDir(_ mounts: [Mount]) -> String {
  if mounts[0].type == "bind" { return mounts[0].source }
  return String(mounts[0].options.first { $0.hasPrefix("upperdir=") }!.dropFirst("upperdir=".count))
}

@Suite
struct SnapshotterTests {
  @Test func prepareCommitChain() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let m0 = try s.prepare(key: "a-active", parent: "")
    #expect(m0.count == 1 && m0[0].type == "bind" && m0[0].options == ["rw", "rbind"])
    let aFS = m0[0].source
    #expect(aFS.hasPrefix(s.layout.snapshots + "/") && aFS.hasSuffix("/fs") && Sys.exists(aFS))
    try s.commit(name: "a", key: "a-active", labels: ["l": "1"])
    let a = try s.stat(key: "a")
    #expect(a.kind == .committed && a.parent == "" && a.labels == ["l": "1"])
    expectError(.notFound, containing: "a-active") { _ = try s.stat(key: "a-active") }

    // A view of one layer is a read-only overlay of that layer and the objects (its files
    // may be stubs, whose data a bind mount would not show).
    let objects = s.layout.alias + "/o"
    // Mounts name lower layers through the root's short alias, a symlink to the root.
    let aLower = s.layout.alias + aFS.dropFirst(s.layout.root.count)
    #expect(
      try s.view(key: "v", parent: "a") == [
        Mount(type: "overlay", source: "overlay", options: ["index=off", "metacopy=on", "lowerdir=\(aLower)::\(objects)"])
      ])

    let mb = try s.prepare(key: "b-active", parent: "a")
    #expect(mb.count == 1 && mb[0].type == "overlay")
    let bUpper = s.layout.alias + mb[0].options.first { $0.hasPrefix("upperdir=") }!.dropFirst("upperdir=".count + s.layout.root.count)
    try s.commit(name: "b", key: "b-active")
    let m = try s.prepare(key: "c", parent: "b")
    #expect(m.count == 1 && m[0].type == "overlay" && m[0].source == "overlay")
    let opts = m[0].options
    #expect(
      opts.count == 5 && opts[0] == "index=off" && opts[1] == "metacopy=on" && opts[2].hasPrefix("workdir=")
        && opts[3].hasPrefix("upperdir="))
    #expect(opts[4] == "lowerdir=\(bUpper):\(aLower)::\(objects)")
    let upper = String(opts[3].dropFirst("upperdir=".count))
    let work = String(opts[2].dropFirst("workdir=".count))
    #expect(Sys.exists(upper) && Sys.exists(work))
    #expect(try s.mounts(key: "c") == m)
    let view2 = try s.view(key: "v2", parent: "b")
    #expect(
      view2 == [
        Mount(type: "overlay", source: "overlay", options: ["index=off", "metacopy=on", "lowerdir=\(bUpper):\(aLower)::\(objects)"])
      ])
    #expect(try s.stat(key: "c").parent == "b")
  }

  @Test func errorsNameTheKey() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    expectError(.invalidArgument, containing: "must not be empty") { _ = try s.prepare(key: "", parent: "") }
    let long = String(repeating: "k", count: Limits.keyBytes + 1)
    expectError(.invalidArgument, containing: "longer than") { _ = try s.prepare(key: long, parent: "") }
    expectError(.notFound, containing: "\"nope\"") { _ = try s.prepare(key: "x", parent: "nope") }
    _ = try s.prepare(key: "act", parent: "")
    expectError(.alreadyExists, containing: "\"act\"") { _ = try s.prepare(key: "act", parent: "") }
    expectError(.invalidArgument, containing: "not a committed") { _ = try s.prepare(key: "x", parent: "act") }
    try s.commit(name: "base", key: "act")
    _ = try s.view(key: "view", parent: "base")
    expectError(.failedPrecondition, containing: "\"view\"") { try s.commit(name: "n", key: "view") }
    expectError(.failedPrecondition, containing: "children") { try s.remove(key: "base") }
    expectError(.failedPrecondition, containing: "committed") { _ = try s.mounts(key: "base") }
    _ = try s.prepare(key: "act2", parent: "")
    expectError(.alreadyExists, containing: "\"base\"") { try s.commit(name: "base", key: "act2") }
    let big = ["k": String(repeating: "v", count: Limits.labelPairBytes)]
    expectError(.invalidArgument, containing: "\"lab\"") { _ = try s.prepare(key: "lab", parent: "", labels: big) }
    expectError(.notFound, containing: "\"gone\"") { try s.remove(key: "gone") }
    // Failed calls leave nothing behind.
    #expect(try s.count() == 3)
    #expect(try s.cleanup().isEmpty)
  }

  @Test func deepChainOptionsFitInAPage() {
    // 128 lower layers with 7-digit ids under a 100-byte root: the overlay data must stay
    // under a page for mount(2) (containerd's own shortening cannot handle the data-only `::`).
    let layout = Layout(root: "/var/lib/" + String(repeating: "r", count: 91))
    let parents = (0..<128).map { (id: Int64(9_000_000 + $0), layer: Int64?.none) }
    let m = Snapshotter.mounts(layout, id: 9_999_999, kind: .active, lowers: parents)
    #expect(m[0].options.joined(separator: ",").utf8.count < 4096)
    #expect(m[0].options.last!.hasSuffix("::" + layout.alias + "/o"))
  }

  @Test func anAliasNamingAnotherLiveRootIsNotTaken() throws {
    let tmp = TempRoot()
    let other = TempRoot()
    _ = try tmp.open()
    let layout = Layout(root: tmp.path + "/root", aliasBase: tmp.aliasBase)
    #expect(Sys.readLink(layout.alias) == layout.root)
    // As if another root's digest began with the same 6 hex digits and held the alias.
    try Sys.mkdirAll(other.path + "/root", mode: 0o700)
    #expect(creat(other.path + "/root/metadata.db", 0o600) >= 0)
    try Sys.unlink(layout.alias)
    #expect(symlink(other.path + "/root", layout.alias) == 0)
    expectError(.unavailable, containing: "names the root") { _ = try tmp.open() }
    // A stale alias (its root gone) is replaced.
    try Tree.remove(other.path + "/root")
    _ = try tmp.open()
    #expect(Sys.readLink(layout.alias) == layout.root)
  }

  /// Images with compact inodes are marked, and found at start (where a kernel before 6.15
  /// would show their mtimes wrong, the store refuses them): in l/ and in s/<id>/.
  @Test func compactImagesAreFound() throws {
    let tmp = TempRoot()
    let layout = Layout(root: tmp.path + "/root", aliasBase: tmp.aliasBase)
    try Sys.mkdirAll(layout.layers, mode: 0o700)
    try Sys.mkdirAll(layout.snapshots + "/5", mode: 0o700)
    func tree() throws -> LayerTree {
      let tree = LayerTree(owner: (0, 0), now: Sys.now())
      let mtime = timespec(tv_sec: 1_000_000_000, tv_nsec: 0)
      let file = try tree.node(S_IFREG, FileMeta(mode: 0o644, uid: 0, gid: 0, mtime: mtime, atime: mtime, xattrs: []))
      try tree.place(file, Array("f".utf8), in: tree.root) { _ in }
      return tree
    }
    try LayerImages(layout: layout, available: true, compact: true).write(try tree(), to: layout.layers + "/1.erofs")
    try LayerImages(layout: layout, available: true, compact: false).write(try tree(), to: layout.layers + "/2.erofs")
    try LayerImages(layout: layout, available: true, compact: true).write(try tree(), to: layout.snapshots + "/5/fs.erofs")
    #expect(LayerImages.compactImages(layout).sorted() == [layout.layers + "/1.erofs", layout.snapshots + "/5/fs.erofs"])
  }

  @Test func everyTransactionIsFlushed() throws {
    let tmp = TempRoot()
    #expect(try tmp.open().writerSynchronous() == 2)
  }

  @Test func updateLabels() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    _ = try s.prepare(key: "k", parent: "", labels: ["a": "1", "b": "2"])
    let before = try s.stat(key: "k")
    var info = SnapshotInfo(name: "k", kind: .active, labels: ["b": "20", "c": "3"])
    var out = try s.update(info, fieldPaths: ["labels.b"])
    #expect(out.labels == ["a": "1", "b": "20"])
    out = try s.update(info, fieldPaths: ["labels.a"])
    #expect(out.labels == ["b": "20"])
    out = try s.update(info, fieldPaths: [])
    #expect(out.labels == ["b": "20", "c": "3"])
    #expect(out.updated >= before.updated && out.created == before.created)
    #expect(try s.stat(key: "k") == out)
    info.labels = [:]
    expectError(.invalidArgument, containing: "\"name\"") { _ = try s.update(info, fieldPaths: ["name"]) }
    expectError(.notFound, containing: "\"zz\"") { _ = try s.update(SnapshotInfo(name: "zz", kind: .active), fieldPaths: []) }
  }

  @Test func listWithFilters() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    _ = try s.prepare(key: "a1", parent: "")
    try s.commit(name: "a", key: "a1", labels: ["tier": "base"])
    _ = try s.prepare(key: "b", parent: "a", labels: ["tier": "app"])
    _ = try s.view(key: "v", parent: "a")
    #expect(try s.list().map(\.name).sorted() == ["a", "b", "v"])
    #expect(try s.list(filters: ["kind==committed"]).map(\.name) == ["a"])
    #expect(try s.list(filters: ["parent==a"]).map(\.name).sorted() == ["b", "v"])
    #expect(try s.list(filters: ["labels.tier==app", "kind==view"]).map(\.name).sorted() == ["b", "v"])
    expectError(.invalidArgument, containing: "invalid filter") { _ = try s.list(filters: ["kind=="]) }
  }

  @Test func usageAndRemove() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let fs = try s.prepare(key: "a1", parent: "")[0].source
    let file = fs + "/data"
    let fd = open(file, O_WRONLY | O_CREAT, 0o644)
    let chunk = [UInt8](repeating: 7, count: 65536)
    _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    let live = try s.usage(key: "a1")
    #expect(live.inodes == 2 && live.size >= 65536)
    try s.commit(name: "a", key: "a1")
    #expect(try s.usage(key: "a") == live)
    try s.remove(key: "a")
    expectError(.notFound, containing: "\"a\"") { _ = try s.usage(key: "a") }
    _ = try s.cleanup()
    #expect(!Sys.exists(fs))
  }

  @Test func reopenRecoversAndSweepsOrphans() async throws {
    let tmp = TempRoot()
    var s = try tmp.open()
    _ = try s.prepare(key: "a1", parent: "")
    try s.commit(name: "a", key: "a1")
    let bUpper = upperDir(try s.prepare(key: "b", parent: "a"))
    let layout = s.layout
    s.pool.waitIdle()
    // What a crash can leave: a half-made directory, an orphan, an active snapshot's
    // directory lost.
    try Sys.mkdir(layout.staging(900), mode: 0o700)
    try Sys.mkdir(layout.dir(942), mode: 0o700)
    try Tree.remove(String(bUpper.dropLast(3)))
    s = try tmp.open()
    s.pool.waitIdle()
    #expect(!Sys.exists(layout.staging(900)) && !Sys.exists(layout.dir(942)))
    #expect(Sys.exists(bUpper) && Sys.exists(String(bUpper.dropLast(3)) + "/work"))
    #expect(try s.list().count == 2)
    #expect(try s.mounts(key: "b")[0].options.contains("upperdir=\(bUpper)"))
    // Ids are never reused, across restarts too: a removed snapshot's directory name
    // does not come back.
    let c = try s.prepare(key: "c", parent: "")[0].source
    try s.remove(key: "c")
    s.pool.waitIdle()
    s = try tmp.open()
    s.pool.waitIdle()
    let d = try s.prepare(key: "d", parent: "")[0].source
    #expect(d != c && Sys.exists(d))
    #expect(try s.list().count == 3)
    // Cleanup keeps the directories made ahead of time and every snapshot's.
    #expect(try s.cleanup().isEmpty)
    #expect(Sys.exists(d) && Sys.exists(bUpper))
  }

  /// The directory of a removed snapshot nothing was written into comes back from the pool
  /// under a fresh id; one with files, another mode, or an xattr is deleted.
  @Test func untouchedDirectoriesOfRemovedSnapshotsAreReused() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    // The mtime of a snapshot's own directory (s/<id>), which a rename keeps and nothing
    // written into fs or work changes.
    let mark = timespec(tv_sec: 1_000_000_000, tv_nsec: 0)
    func prepareMarked(_ key: String) throws -> String {
      let fs = try s.prepare(key: key, parent: "")[0].source
      let snapshots = try At.openDirectory(s.layout.snapshots)
      defer { At.close(snapshots) }
      try At.setTimes(snapshots, String(fs.split(separator: "/").dropLast().last!), atime: mark, mtime: mark)
      return fs
    }
    /// The fs dirs of 40 new snapshots whose directory carries the mark.
    func marked(_ round: String) throws -> [String] {
      try (0..<40).map { try s.prepare(key: "\(round)-\($0)", parent: "")[0].source }
        .filter { try Sys.lstat(String($0.dropLast(3))).st_mtim.tv_sec == mark.tv_sec }
    }
    let a = try prepareMarked("a")
    try Sys.mkdir(String(a.dropLast(3)) + "/work/work", mode: 0)  // what overlayfs leaves
    try s.remove(key: "a")
    s.pool.waitIdle()
    #expect(!Sys.exists(a))
    let reused = try marked("r1")
    #expect(reused.count == 1 && reused.first != a)
    if let r = reused.first {
      #expect(try Sys.listDirectory(r).isEmpty)
      #expect(try Sys.listDirectory(String(r.dropLast(3)) + "/work").isEmpty)
      #expect(try Sys.lstat(r).st_mode & 0o7777 == 0o755)
    }
    // Written into: deleted, never handed out again.
    let b = try prepareMarked("b")
    let c = try prepareMarked("c")
    let d = try prepareMarked("d")
    try Sys.mkdir(b + "/file", mode: 0o755)
    try Sys.chmod(c, mode: 0o700)
    try At.setXattr(path: d, name: "user.x", value: [1])
    for key in ["b", "c", "d"] { try s.remove(key: key) }
    s.pool.waitIdle()
    #expect(!Sys.exists(b) && !Sys.exists(c) && !Sys.exists(d))
    #expect(try marked("r2").isEmpty)
    #expect(try s.cleanup().isEmpty)
    // A Prepare of a key that exists leaves no orphan directory behind: the pool takes back
    // the one it had handed out.
    expectError(.alreadyExists, containing: "r2-0") { _ = try s.prepare(key: "r2-0", parent: "") }
    expectError(.alreadyExists, containing: "r2-1") { _ = try s.prepare(key: "r2-1", parent: "missing") }
    #expect(try s.cleanup().isEmpty)
    expectError(.alreadyExists, containing: "r2-2") { try s.commit(name: "r2-2", key: "r2-2") }
  }

  /// A removed snapshot whose directory is still mounted (a bind of its fs here) is deleted,
  /// never handed to another snapshot. Mounting needs root.
  @Test(.enabled(if: geteuid() == 0, "mounting needs root")) func mountedDirectoriesAreNotReused() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let fs = try s.prepare(key: "a", parent: "")[0].source
    let target = tmp.path + "/mnt"
    try Sys.mkdir(target, mode: 0o755)
    try Sys.mount(source: fs, target: target, type: "none", flags: UInt(MS_BIND), data: nil)
    defer { try? Sys.unmount(target, flags: Int32(MNT_DETACH)) }
    let id = Int64(fs.split(separator: "/").dropLast().last!)!
    #expect(s.layout.mountedIDs()?.contains(id) == true)
    let mark = timespec(tv_sec: 1_000_000_000, tv_nsec: 0)  // kept by a rename, not by a new directory
    let snapshots = try At.openDirectory(s.layout.snapshots)
    try At.setTimes(snapshots, String(id), atime: mark, mtime: mark)
    At.close(snapshots)
    try s.remove(key: "a")
    s.pool.waitIdle()
    #expect(!Sys.exists(fs))
    let handedOut = try (0..<40).map {
      try Sys.lstat(String(try s.prepare(key: "n\($0)", parent: "")[0].source.dropLast(3))).st_mtim.tv_sec
    }
    #expect(!handedOut.contains(mark.tv_sec))
  }

  @Test func concurrentDuplicatePrepareHasOneWinner() async throws {
    let tmp = TempRoot()
    let s = try tmp.open()
    let results = await withTaskGroup(of: Bool.self) { group in
      for _ in 0..<16 {
        group.addTask { (try? s.prepare(key: "same", parent: "")) != nil }
      }
      return await group.reduce(into: [Bool]()) { $0.append($1) }
    }
    #expect(results.filter { $0 }.count == 1)
    #expect(try s.count() == 1)
  }
}
