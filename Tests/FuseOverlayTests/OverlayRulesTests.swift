import CSysShims
import Foundation
import SnapshotSys
import Testing

@testable import FuseOverlay

#if canImport(Glibc)
  import Glibc
#endif

/// snapfs's command line, as mount.fuse3 and containerd hand it over.
@Suite struct OptionsTests {
  @Test func positionalArguments() throws {
    let both = try Options.parse(["snapfs", "/m", "-o", "lowerdir=/l"])
    #expect(both.source == "snapfs" && both.target == "/m")
    let target = try Options.parse(["-o", "lowerdir=/l", "/m"])
    #expect(target.source == "snapfs" && target.target == "/m")
    #expect(throws: Options.Invalid.self) { try Options.parse(["-o", "lowerdir=/l"]) }
    #expect(throws: Options.Invalid.self) { try Options.parse(["a", "b", "c", "-o", "lowerdir=/l"]) }
  }

  @Test func optionListsAccumulate() throws {
    // mount.fuse3 passes several -o, and -oX is the same as -o X.
    let o = try Options.parse(["-olowerdir=/l2:/l1", "-o", "upperdir=/u", "-o", "workdir=/w,ro,nosuid", "/m"])
    #expect(o.lowers == ["/l2", "/l1"])
    #expect(o.upper == "/u" && o.work == "/w")
    #expect(o.mountOptions == ["ro", "nosuid"])
  }

  @Test func mountFlagsGoToTheKernelAndOverlayKnobsAreIgnored() throws {
    let o = try Options.parse([
      "-o", "lowerdir=/l,index=off,xino=off,volatile,nfs_export=off,relatime,lazytime,dev,suid,noexec,fsname=x", "/m",
    ])
    #expect(o.mountOptions == ["dev", "suid", "noexec", "fsname=x"])
  }

  @Test func readOnlyIsTheLastOfRoAndRw() throws {
    #expect(try Options.parse(["-o", "lowerdir=/l,ro", "/m"]).readOnly)
    #expect(try !Options.parse(["-o", "lowerdir=/l,ro,rw", "/m"]).readOnly)
    #expect(try Options.parse(["-o", "lowerdir=/l,rw,ro", "/m"]).readOnly)
    #expect(try !Options.parse(["-o", "lowerdir=/l", "/m"]).readOnly)
  }

  @Test func ownOptions() throws {
    let o = try Options.parse(["-o", "lowerdir=/l,threads=3,passthrough=off,userxattr", "-d", "/m"])
    #expect(o.threads == 3 && !o.passthrough && o.userXattr)
    #expect(o.debug && o.foreground)  // -d stays in the foreground
    #expect(try Options.parse(["-o", "lowerdir=/l", "/m"]).passthrough)
    #expect(try Options.parse(["-o", "lowerdir=/l", "/m"]).cachedReadsMax == 65536)
    #expect(try Options.parse(["-o", "lowerdir=/l,cached_reads_max=0", "/m"]).cachedReadsMax == 0)
    #expect(try Options.parse(["-o", "lowerdir=/l", "/m"]).busyPollMicroseconds == 20)
    #expect(try Options.parse(["-o", "lowerdir=/l,busy_poll=0", "/m"]).busyPollMicroseconds == 0)
  }

  @Test func refused() {
    for bad in [
      ["-o", "lowerdir=/l,bogus", "/m"],  // unknown option
      ["-o", "lowerdir=/l,threads=0", "/m"],
      ["-o", "lowerdir=/l,threads=257", "/m"],
      ["-o", "lowerdir=/l,passthrough=maybe", "/m"],
      ["-o", "lowerdir=/l,cached_reads_max=-1", "/m"],
      ["-o", "lowerdir=/l,cached_reads_max=64k", "/m"],
      ["-o", "lowerdir=/l,cached_reads_max=1048577", "/m"],
      ["-o", "lowerdir=/l,busy_poll=1001", "/m"],
      ["-o", "lowerdir=/l,upperdir=/u", "/m"],  // no workdir
      ["-o", "lowerdir=/l,workdir=/w", "/m"],  // no upperdir
      ["-o", "upperdir=/u,workdir=/w", "/m"],  // no lowerdir
      ["-x", "-o", "lowerdir=/l", "/m"],  // unknown flag
      ["/m", "-o"],  // -o without a value
    ] {
      #expect(throws: Options.Invalid.self, "\(bad)") { try Options.parse(bad) }
    }
  }
}

/// The table of nodes the kernel holds: one node per name, counted per lookup, and the
/// hard-link, removal, rename and split rules.
@Suite struct NodeTableTests {
  let root = Node(ino: 1, realIno: 1, type: S_IFDIR, parent: nil, name: "", layer: 0, dirs: [])

  func file(_ name: String, ino: UInt64, parent: Node? = nil, linked: Bool = false) -> Node {
    let node = Node(ino: ino, realIno: ino, type: S_IFREG, parent: parent ?? root, name: name, layer: 0, dirs: [])
    node.linked = linked
    return node
  }

  @Test func oneNodePerNameCountedPerLookup() {
    let table = NodeTable()
    let a = table.intern(file("a", ino: 10))
    // A second probe of the same name (another thread's): the first node, counted again.
    let again = table.intern(file("a", ino: 10))
    #expect(again === a && a.lookups == 2)
    #expect(table.find(root, "a") === a && a.lookups == 3)
    #expect(table.peek(root, "a") === a && a.lookups == 3)  // peek does not count
    table.forget(a, 2)
    #expect(table.peek(root, "a") === a && a.lookups == 1)
    table.forget(a, 5)  // more than held: to zero, and gone
    #expect(table.peek(root, "a") == nil && a.lookups == 0)
  }

  @Test func hardLinkedUpperFileIsOneNode() {
    let table = NodeTable()
    let a = table.intern(file("a", ino: 20, linked: true))
    let b = table.intern(file("b", ino: 20, linked: true))
    #expect(a === b && a.lookups == 2)
    #expect(table.peek(root, "b") === a)
    // Removing one name leaves the node under the other.
    table.detach(root, "a")
    #expect(table.peek(root, "a") == nil && table.peek(root, "b") === a && !a.detached)
    #expect(a.name == "b")
    table.forget(a, 2)
  }

  @Test func addNameMakesAFileLinked() {
    let table = NodeTable()
    let a = table.intern(file("a", ino: 30))
    table.addName(a, root, "b")
    #expect(a.linked && a.lookups == 2 && table.peek(root, "b") === a)
    table.forget(a, 2)
    #expect(table.peek(root, "a") == nil && table.peek(root, "b") == nil)
  }

  @Test func removedNameDetaches() {
    let table = NodeTable()
    let a = table.intern(file("a", ino: 40))
    table.detach(root, "a")
    #expect(a.detached && table.peek(root, "a") == nil)
    // A new file under the name is a new node.
    let fresh = table.intern(file("a", ino: 41))
    #expect(fresh !== a)
    table.forget(a, 1)
    #expect(table.peek(root, "a") === fresh)  // forgetting the removed node leaves the new one
    table.forget(fresh, 1)
  }

  @Test func renameMovesTheName() {
    let table = NodeTable()
    let dir = Node(ino: 2, realIno: 2, type: S_IFDIR, parent: root, name: "d", layer: 0, dirs: [])
    let a = table.intern(file("a", ino: 50))
    table.move(a, from: root, "a", to: dir, "b")
    #expect(table.peek(root, "a") == nil && table.peek(dir, "b") === a)
    #expect(a.parent === dir && a.name == "b")
    table.forget(a, 1)
  }

  @Test func splitKeepsTheInodeNumberForTheNextNodeOfTheSameFile() {
    let table = NodeTable()
    let a = table.intern(file("a", ino: 60))
    a.ino = 6000  // the number the mount shows (say, the lower file's)
    table.split(a)
    #expect(a.detached && table.peek(root, "a") == nil)
    let next = table.intern(file("a", ino: 60))
    #expect(next !== a && next.ino == 6000)
    table.forget(next, 1)
    // Another file under the name later does not inherit it.
    table.detach(root, "a")
    let other = table.intern(file("a", ino: 61))
    #expect(other.ino == 61)
    table.forget(other, 1)
    table.forget(a, 1)
  }
}

/// overlayfs's name rules over layer directories, through an `Overlay` without a mount:
/// whiteouts (character devices 0/0: making one needs root) and opaque directories
/// (`user.overlay.opaque` with `userxattr`).
@Suite(.enabled(if: getuid() == 0, "making whiteouts (mknod) needs root"))
struct WhiteoutOpaqueTests {
  final class Layers {
    let root = FileManager.default.temporaryDirectory.path + "/snapfs-rules-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    init() {
      for dir in ["top/d", "top/opaque", "bottom/d", "bottom/opaque", "bottom/gone", "bottom/replaced"] {
        try? FileManager.default.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
      }
      for file in ["bottom/d/a", "bottom/d/b", "top/d/c", "bottom/opaque/hidden", "top/opaque/shown", "bottom/gone/x", "bottom/replaced/y"]
      {
        _ = FileManager.default.createFile(atPath: root + "/" + file, contents: Data(file.utf8))
      }
      _ = FileManager.default.createFile(atPath: root + "/top/replaced", contents: Data("a file over a directory".utf8))
      // (a layer not made as meant would make the tests below pass for the wrong reason)
      precondition(mknod(root + "/top/d/a", S_IFCHR | 0o600, 0) == 0)  // whiteout of a file
      precondition(mknod(root + "/top/gone", S_IFCHR | 0o600, 0) == 0)  // whiteout of a directory
      precondition(setxattr(root + "/top/opaque", "user.overlay.opaque", "y", 1, 0) == 0)
      precondition(setxattr(root + "/bottom/d", "user.overlay.opaque", "y", 1, 0) == 0)  // the bottom layer's: hides nothing
    }
    deinit { try? FileManager.default.removeItem(atPath: root) }

    func overlay() throws -> Overlay {
      var options = Options()
      options.lowers = [root + "/top", root + "/bottom"]
      options.userXattr = true
      return try Overlay(options)
    }
  }

  func names(_ overlay: Overlay, _ dir: String) throws -> [String] {
    let (node, _) = try overlay.lookup(overlay.root, dir)
    defer { overlay.nodes.forget(node, 1) }
    return try overlay.entries(node).map(\.name).sorted()
  }

  func lookupError(_ overlay: Overlay, _ parent: Node, _ name: String) -> Int32? {
    do {
      let (node, _) = try overlay.lookup(parent, name)
      overlay.nodes.forget(node, 1)
      return nil
    } catch {
      return error.code
    }
  }

  @Test func aWhiteoutHidesTheLowerFileAndIsNotListed() throws {
    let layers = Layers()
    let overlay = try layers.overlay()
    #expect(try names(overlay, "d") == ["b", "c"])
    let (d, _) = try overlay.lookup(overlay.root, "d")
    defer { overlay.nodes.forget(d, 1) }
    #expect(lookupError(overlay, d, "a") == ENOENT)
    #expect(lookupError(overlay, d, "b") == nil)
    #expect(d.isMerged)  // two layers' directories: link count 1, as overlayfs shows it
  }

  @Test func aWhiteoutHidesAWholeDirectory() throws {
    let layers = Layers()
    let overlay = try layers.overlay()
    #expect(lookupError(overlay, overlay.root, "gone") == ENOENT)
    #expect(try !overlay.entries(overlay.root).map(\.name).contains("gone"))
  }

  @Test func anOpaqueDirectoryHidesWhatIsBelowIt() throws {
    let layers = Layers()
    let overlay = try layers.overlay()
    #expect(try names(overlay, "opaque") == ["shown"])
    let (dir, _) = try overlay.lookup(overlay.root, "opaque")
    defer { overlay.nodes.forget(dir, 1) }
    #expect(!dir.isMerged)
    #expect(lookupError(overlay, dir, "hidden") == ENOENT)
  }

  @Test func aFileOverADirectoryHidesIt() throws {
    let layers = Layers()
    let overlay = try layers.overlay()
    let (node, st) = try overlay.lookup(overlay.root, "replaced")
    defer { overlay.nodes.forget(node, 1) }
    #expect(st.type == S_IFREG && node.dirs.isEmpty)
  }

  @Test func theRootListsEveryLayerOnce() throws {
    let layers = Layers()
    let overlay = try layers.overlay()
    #expect(try overlay.entries(overlay.root).map(\.name).sorted() == ["d", "opaque", "replaced"])
  }
}

/// Directory offsets are name hashes, so a read resumes in any listing of the directory.
@Suite struct ListingsTests {
  static func listing(_ names: [String]) -> Listings.Listing {
    Listings.Listing(names.enumerated().map { Overlay.Entry(name: $1, ino: UInt64($0 + 10), type: UInt8(DT_REG)) })
  }

  /// The names of `listing` from `offset` to the end, resuming after each as READDIRs do.
  static func names(_ listing: Listings.Listing, from offset: off_t) -> [String] {
    var out: [String] = []
    var i = listing.index(of: offset)
    while i < listing.entries.count {
      out.append(listing.entries[i].name)
      i = listing.index(of: listing.offset(after: i))
    }
    return out
  }

  /// Resuming after each entry lists every name once, and past the last ends the listing.
  @Test func resumingListsEveryNameOnce() {
    let l = Self.listing((0..<5000).map { "name-\($0)" })
    #expect(l.offset(after: 4999) == off_t.max && l.index(of: off_t.max) == 5000)
    #expect(l.index(of: 3) == 0)
    let names = Self.names(l, from: 3)
    #expect(names.count == 5000 && Set(names) == Set((0..<5000).map { "name-\($0)" }))
  }

  /// A reader stops part way, the directory changes (a name added, one removed), and it
  /// resumes in the new listing: every name that stayed comes once, none twice.
  @Test func resumingInAChangedListing() {
    let before = (0..<3000).map { "file-\($0)" }
    let old = Self.listing(before)
    var seen = (0..<1000).map { old.entries[$0].name }
    let resume = old.offset(after: 999)
    let new = Self.listing(["added"] + before.filter { $0 != old.entries[2000].name && $0 != old.entries[10].name })
    seen += Self.names(new, from: resume)
    #expect(seen.count == Set(seen).count)
    #expect(Set(before).subtracting([old.entries[2000].name]).isSubset(of: Set(seen)))
  }

  @Test func keptPerDirectoryAndDroppedAtTheEnd() {
    let root = Node(ino: 1, realIno: 1, type: S_IFDIR, parent: nil, name: "", layer: 0, dirs: [])
    let dirs = (0...Listings.limit).map {
      Node(ino: UInt64($0 + 2), realIno: UInt64($0 + 2), type: S_IFDIR, parent: root, name: "d\($0)", layer: 0, dirs: [])
    }
    let l = Listings()
    l.keep(dirs[0], Self.listing(["a"]))
    #expect(l.find(dirs[0])?.entries.map(\.name) == ["a"])
    #expect(l.find(dirs[1]) == nil)
    l.finish(dirs[0])
    #expect(l.find(dirs[0]) == nil)
    for d in dirs { l.keep(d, Self.listing([d.name])) }  // one more than the limit
    #expect(l.find(dirs[0]) == nil)  // the oldest went
    #expect(l.find(dirs[Listings.limit])?.entries.map(\.name) == ["d\(Listings.limit)"])
  }
}
