import CSysShims
import Foundation
import SnapshotSys
import Testing

@testable import FuseOverlay

#if canImport(Glibc)
  import Glibc
#endif

/// `lowerdir=` with data-only layers, and metacopy stubs looked up and opened through an
/// `Overlay` (no mount: runs without root, with `userxattr`'s `user.overlay.*` names, where
/// the temp dir's file system has user xattrs). The mounted behaviour against the kernel's is
/// tests/snapfs (root).
@Suite struct LowerdirTests {
  @Test func normalAndDataOnlyLayers() throws {
    #expect(try Options.lowerdir("a") == (["a"], []))
    #expect(try Options.lowerdir("a:b") == (["a", "b"], []))
    #expect(try Options.lowerdir("a:b::d") == (["a", "b"], ["d"]))
    #expect(try Options.lowerdir("a::d1::d2") == (["a"], ["d1", "d2"]))
    #expect(try Options.lowerdir(#"a\:b:c\\d::e\:f"#) == (["a:b", #"c\d"#], ["e:f"]))
  }

  @Test func refusedAsOverlayfsRefusesThem() {
    for bad in ["", "::d", ":a", "a:", "a::", "a:::d", "a::::d", "a::d:b", "a::d::", "a:b::", #"a\"#, "a::d1:d2"] {
      #expect(throws: Options.Invalid.self, "lowerdir=\(bad)") { try Options.lowerdir(bad) }
    }
  }

  @Test func parse() throws {
    let o = try Options.parse(["-o", "index=off,metacopy=on,lowerdir=/l2:/l1::/o,upperdir=/u,workdir=/w", "/m"])
    #expect(o.lowers == ["/l2", "/l1"])
    #expect(o.dataLowers == ["/o"])
    #expect(o.metacopy == true)
    #expect(try Options.parse(["-o", "lowerdir=/l::/o", "/m"]).metacopy == nil)
    #expect(throws: Options.Invalid.self) { try Options.parse(["-o", "lowerdir=/l::/o,metacopy=on,userxattr", "/m"]) }
    #expect(throws: Options.Invalid.self) { try Options.parse(["-o", "lowerdir=/l::/o,metacopy=on,redirect_dir=off", "/m"]) }
    #expect(throws: Options.Invalid.self) { try Options.parse(["-o", "lowerdir=/l::/o,metacopy=maybe", "/m"]) }
  }

  @Test func metacopyDefault() {
    var o = Options()
    #expect(o.effectiveMetacopy { true })
    #expect(!o.effectiveMetacopy { false })
    o.redirectDir = "off"
    #expect(!o.effectiveMetacopy { true })
    o.redirectDir = nil
    o.userXattr = true
    #expect(!o.effectiveMetacopy { true })
    o.metacopy = false
    o.userXattr = false
    #expect(!o.effectiveMetacopy { true })
  }

  /// Lower directories' redirects are followed as overlayfs follows them.
  @Test func redirectsFollowed() {
    var o = Options()
    #expect(o.followsRedirects(metacopy: false) { true })  // off by default, always followed
    #expect(!o.followsRedirects(metacopy: false) { false })
    #expect(o.followsRedirects(metacopy: true) { false })  // metacopy=on turns them on
    o.redirectDir = "nofollow"
    #expect(!o.followsRedirects(metacopy: false) { true })
    o.redirectDir = "follow"
    #expect(o.followsRedirects(metacopy: false) { false })
    o.redirectDir = "off"
    #expect(!o.followsRedirects(metacopy: false) { false })
  }
}

/// A temp dir with layers l0 (top), l1 (bottom), data-only o1 and o2, an upper and a work
/// dir; nil where user xattrs cannot be set.
final class StubTree {
  let root: String
  init?() {
    root = FileManager.default.temporaryDirectory.path + "/snapfs-stubs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    for dir in ["l0", "l1", "o1/ab", "o2/ab", "o2/cd", "u", "w"] {
      try? FileManager.default.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
    }
    write("o1/ab/cd", "from o1\n")
    write("o2/ab/cd", "from o2\n")
    write("o2/cd/ef", "only o2\n")
    guard setxattr(root + "/o1/ab/cd", "user.probe", "", 0, 0) == 0 else {
      try? FileManager.default.removeItem(atPath: root)
      return nil
    }
  }
  deinit { try? FileManager.default.removeItem(atPath: root) }

  func write(_ rel: String, _ text: String) {
    _ = FileManager.default.createFile(atPath: root + "/" + rel, contents: Data(text.utf8))
  }

  /// A stub of `size` bytes with `user.overlay.metacopy` (unless nil) and `redirect`.
  func stub(_ rel: String, size: Int = 8, metacopy: String? = "", redirect: String? = nil) {
    let path = root + "/" + rel
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    truncate(path, off_t(size))
    if let metacopy { setxattr(path, "user.overlay.metacopy", metacopy, metacopy.utf8.count, 0) }
    if let redirect { setxattr(path, "user.overlay.redirect", redirect, redirect.utf8.count, 0) }
  }

  func overlay(lowers: [String] = ["l1"], data: [String] = ["o1", "o2"], metacopy: Bool = false, upper: Bool = false) throws -> Overlay {
    var options = Options()
    if upper {
      options.upper = root + "/u"
      options.work = root + "/w"
    }
    options.lowers = lowers.map { root + "/" + $0 }
    options.dataLowers = data.map { root + "/" + $0 }
    options.userXattr = true
    options.metacopy = metacopy
    return try Overlay(options)
  }
}

@Suite(.enabled(if: StubTree() != nil, "user xattrs in the temp dir"))
struct StubTests {
  /// The errno of looking `name` up, or nil.
  func lookupError(_ overlay: Overlay, _ name: String) -> Int32? {
    do {
      let (node, _) = try overlay.lookup(overlay.root, name)
      overlay.nodes.forget(node, 1)
      return nil
    } catch {
      return error.code
    }
  }

  /// What opening `name` reads, or its errno as `failed(errno)` says it.
  func read(_ overlay: Overlay, _ name: String) throws -> String {
    let (node, _) = try overlay.lookup(overlay.root, name)
    defer { overlay.nodes.forget(node, 1) }
    do {
      let fd = try overlay.open(node, flags: O_RDONLY) { (_, openFile) throws(Errno) -> Int32 in try openFile() }
      defer { close(fd) }
      var buffer = [UInt8](repeating: 0, count: 100)
      let n = Glibc.read(fd, &buffer, buffer.count)
      return String(decoding: buffer[..<max(n, 0)], as: UTF8.self)
    } catch {
      return failed(error.code)
    }
  }

  func failed(_ code: Int32) -> String { "errno \(code)" }

  @Test func dataFromTheFirstDataOnlyLayerThatHasIt() throws {
    let tree = try #require(StubTree())
    tree.stub("l1/a", redirect: "/ab/cd")
    tree.stub("l1/b", redirect: "/cd/ef")
    tree.stub("l1/dots", redirect: "/ab/../ab/cd")
    tree.write("l1/plain", "plain\n")
    setxattr(tree.root + "/l1/plain", "user.overlay.redirect", "/ab/cd", 6, 0)  // no metacopy: ignored
    let overlay = try tree.overlay()
    #expect(try read(overlay, "a") == "from o1\n")
    #expect(try read(overlay, "b") == "only o2\n")
    #expect(try read(overlay, "dots") == "from o1\n")
    #expect(try read(overlay, "plain") == "plain\n")
  }

  @Test func attributesAreTheStubs() throws {
    let tree = try #require(StubTree())
    tree.stub("l1/a", size: 8, redirect: "/ab/cd")
    chmod(tree.root + "/l1/a", 0o640)
    var real = stat()
    stat(tree.root + "/l1/a", &real)
    let overlay = try tree.overlay()
    let (node, st) = try overlay.lookup(overlay.root, "a")
    defer { overlay.nodes.forget(node, 1) }
    #expect(st.st_ino == real.st_ino)
    #expect(st.st_mode == real.st_mode)
    #expect(st.st_size == 8)
    #expect(st.st_blocks == blkcnt_t((Int(real.st_blksize) + 511) / 512))  // size in whole blocks, until opened
  }

  @Test func missingOrUnusableDataFiles() throws {
    let tree = try #require(StubTree())
    mkdir(tree.root + "/o1/dir", 0o755)
    symlink("ab", tree.root + "/o1/link")
    tree.stub("l1/missing", redirect: "/ab/none")
    tree.stub("l1/dir", redirect: "/dir")
    tree.stub("l1/through-link", redirect: "/link/cd")
    tree.stub("l1/not-dir", redirect: "/ab/cd/x")
    let overlay = try tree.overlay(data: ["o1"])
    for name in ["missing", "dir", "through-link", "not-dir"] { #expect(lookupError(overlay, name) == nil, "\(name)") }
    #expect(try read(overlay, "missing") == failed(ENOENT))
    #expect(try read(overlay, "dir") == failed(ENOENT))
    #expect(try read(overlay, "through-link") == failed(ELOOP))
    #expect(try read(overlay, "not-dir") == failed(ENOTDIR))
  }

  @Test func malformedAndUnfollowed() throws {
    let tree = try #require(StubTree())
    for (name, redirect) in [("empty", ""), ("slash", "ab/cd"), ("double", "//ab/cd"), ("trailing", "/ab/cd/")] {
      tree.stub("l1/" + name, redirect: redirect)
    }
    tree.stub("l1/none")
    tree.stub("l1/relative", redirect: "cd")
    tree.stub("l1/short", metacopy: "x", redirect: "/ab/cd")
    tree.stub("l0/top-layer", redirect: "/ab/cd")
    let overlay = try tree.overlay(lowers: ["l0", "l1"])
    for name in ["empty", "slash", "double", "trailing"] { #expect(lookupError(overlay, name) == EINVAL, "\(name)") }
    #expect(lookupError(overlay, "none") == EPERM)
    #expect(lookupError(overlay, "relative") == EPERM)
    #expect(lookupError(overlay, "short") == EIO)
    #expect(lookupError(overlay, "top-layer") == EPERM)  // metacopy=off: only the bottom layer's
    let on = try tree.overlay(lowers: ["l0", "l1"], metacopy: true)
    #expect(try read(on, "top-layer") == "from o1\n")
    #expect(lookupError(on, "none") == EIO)
  }

  @Test func copyUp() throws {
    let tree = try #require(StubTree())
    tree.stub("l1/a", size: 8, redirect: "/ab/cd")
    setxattr(tree.root + "/l1/a", "user.kept", "yes", 3, 0)
    chmod(tree.root + "/l1/a", 0o640)
    tree.stub("l1/missing", redirect: "/ab/none")
    let overlay = try tree.overlay(upper: true)
    for name in ["a", "missing"] {
      let (node, _) = try overlay.lookup(overlay.root, name)
      defer { overlay.nodes.forget(node, 1) }
      do {
        let fd = try overlay.open(node, flags: O_WRONLY | O_APPEND) { (upper, openFile) throws(Errno) -> Int32 in
          #expect(upper)
          return try openFile()
        }
        #expect(write(fd, "+\n", 2) == 2)
        close(fd)
        #expect(name == "a")
      } catch {
        #expect(name == "missing" && error.code == ENOENT)  // no copy-up without the data file
      }
    }
    let upper = tree.root + "/u/a"
    #expect(try String(contentsOfFile: upper, encoding: .utf8) == "from o1\n+\n")
    var st = stat()
    stat(upper, &st)
    #expect(st.st_mode & 0o7777 == 0o640)
    var names = [CChar](repeating: 0, count: 256)
    let n = listxattr(upper, &names, names.count)
    #expect(String(decoding: names[..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "user.kept\0")
    #expect(access(tree.root + "/u/missing", F_OK) != 0)
    #expect(try String(contentsOfFile: tree.root + "/o1/ab/cd", encoding: .utf8) == "from o1\n")
  }

  @Test func metacopyChainByName() throws {
    let tree = try #require(StubTree())
    tree.stub("l0/chained", size: 6)
    tree.write("l1/chained", "below\n")
    tree.stub("l0/renamed", size: 6, redirect: "target")
    tree.write("l1/target", "below\n")
    tree.stub("l0/to-stub", size: 8)
    tree.stub("l1/to-stub", redirect: "/ab/cd")
    let overlay = try tree.overlay(lowers: ["l0", "l1"], metacopy: true)
    #expect(try read(overlay, "chained") == "below\n")
    #expect(try read(overlay, "renamed") == "below\n")
    #expect(try read(overlay, "to-stub") == "from o1\n")
    let off = try tree.overlay(lowers: ["l0", "l1"])
    #expect(lookupError(off, "chained") == EPERM)
  }

  @Test func withoutDataOnlyLayers() throws {
    let tree = try #require(StubTree())
    tree.stub("l1/a", redirect: "/ab/cd")
    tree.stub("l1/bad", redirect: "ab/cd")  // not even read in the bottom layer
    #expect(lookupError(try tree.overlay(data: []), "a") == EPERM)
    #expect(lookupError(try tree.overlay(data: []), "bad") == EPERM)
    #expect(lookupError(try tree.overlay(data: [], metacopy: true), "a") == EIO)
  }
}
