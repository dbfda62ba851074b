import Foundation
import NIOCore
import SnapshotSys
import Testing
import Unpack

@testable import Registry

@Suite struct ReferenceTests {
  @Test(arguments: [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io/user/app:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:v1.0-rc_2", "localhost:5000/a/b/c:v1.0-rc_2"),
    ("127.0.0.1:5000/test/busybox:1", "127.0.0.1:5000/test/busybox:1"),
    ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
    ("quay.io/x/y@sha256:" + String(repeating: "a", count: 64), "quay.io/x/y@sha256:" + String(repeating: "a", count: 64)),
    ("busybox:1@sha256:" + String(repeating: "b", count: 64), "docker.io/library/busybox:1@sha256:" + String(repeating: "b", count: 64)),
  ])
  func normalizes(_ input: String, _ expected: String) throws {
    #expect(try Reference(parsing: input).description == expected)
  }

  @Test func parts() throws {
    let r = try Reference(parsing: "127.0.0.1:5000/test/busybox:1")
    #expect(r.registry == "127.0.0.1:5000")
    #expect(r.repository == "test/busybox")
    #expect(r.tag == "1")
    #expect(r.digest == nil)
    #expect(r.object == "1")
    let d = try Reference(parsing: "x/y@sha256:" + String(repeating: "c", count: 64))
    #expect(d.tag == nil)
    #expect(d.object == "sha256:" + String(repeating: "c", count: 64))
  }

  @Test(arguments: [
    "", "Busybox", "busybox:", "busybox@sha256:abc", "a//b", "busybox:-x", "a b", "busybox@md5:" + String(repeating: "a", count: 32),
    "-a/b",
  ])
  func refuses(_ input: String) {
    #expect(throws: RegistryError.self) { try Reference(parsing: input) }
  }

  @Test func platforms() throws {
    #expect(try Platform(parsing: "linux/amd64") == Platform(os: "linux", architecture: "amd64"))
    #expect(try Platform(parsing: "linux/arm/v7") == Platform(os: "linux", architecture: "arm", variant: "v7"))
    #expect(try Platform(parsing: "linux/arm64/v8") == Platform(os: "linux", architecture: "arm64"))
    #expect(try Platform(parsing: "x86_64") == Platform(os: "linux", architecture: "amd64"))
    #expect(throws: RegistryError.self) { try Platform(parsing: "linux//") }
    let amd = Platform(os: "linux", architecture: "amd64")
    #expect(amd.matches(os: "linux", architecture: "amd64", variant: nil))
    #expect(amd.matches(os: "linux", architecture: "amd64", variant: "v3"))
    #expect(!amd.matches(os: "linux", architecture: "arm64", variant: nil))
    #expect(!amd.matches(os: "windows", architecture: "amd64", variant: nil))
    let v7 = Platform(os: "linux", architecture: "arm", variant: "v7")
    #expect(!v7.matches(os: "linux", architecture: "arm", variant: "v6"))
  }

  @Test func selectsFromIndex() throws {
    func entry(_ os: String?, _ arch: String?, _ variant: String? = nil, _ n: Character) -> RawDescriptor {
      RawDescriptor(
        mediaType: ManifestMediaType.ociManifest, digest: "sha256:" + String(repeating: n, count: 64), size: 1,
        platform: os.map { RawDescriptor.RawPlatform(os: $0, architecture: arch, variant: variant) })
    }
    let entries = [
      entry("unknown", "unknown", nil, "0"), entry("linux", "arm", "v6", "1"), entry("linux", "arm", "v7", "2"),
      entry("linux", "amd64", "v3", "3"), entry("linux", "amd64", nil, "4"), entry("linux", "arm64", "v8", "5"),
    ]
    #expect(selectManifest(entries, for: .init(os: "linux", architecture: "amd64"))?.digest.last == "4")
    #expect(selectManifest(entries, for: .init(os: "linux", architecture: "arm", variant: "v7"))?.digest.last == "2")
    #expect(selectManifest(entries, for: try Platform(parsing: "linux/arm64"))?.digest.last == "5")
    #expect(selectManifest(entries, for: .init(os: "linux", architecture: "s390x")) == nil)
  }
}

@Suite struct HostsTests {
  func directory(_ files: [String: String]) throws -> String {
    let dir = NSTemporaryDirectory() + "registry-tests-" + UUID().uuidString
    for (path, text) in files {
      let full = dir + "/" + path
      try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
      try text.write(toFile: full, atomically: true, encoding: .utf8)
    }
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }

  @Test func defaults() throws {
    let h = HostsConfiguration(configPath: nil)
    #expect(try h.hosts(for: "docker.io").map(\.description) == ["https://registry-1.docker.io/v2"])
    #expect(try h.hosts(for: "127.0.0.1:5000").map(\.description) == ["http://127.0.0.1:5000/v2"])
    #expect(try h.hosts(for: "localhost").map(\.description) == ["http://localhost/v2"])
    #expect(try h.hosts(for: "ghcr.io").map(\.description) == ["https://ghcr.io/v2"])
    #expect(try h.hosts(for: "ghcr.io")[0].capabilities == .all)
  }

  @Test func hostsFile() throws {
    let dir = try directory([
      "127.0.0.1_5000_/hosts.toml": """
      server = "https://127.0.0.1:5000"
      ca = "ca.pem"
      skip_verify = false

      [host."http://127.0.0.1:7000"]
        capabilities = ["pull"]

      [host."https://127.0.0.1:6000/custom"]
        capabilities = ["pull", "resolve"]
        ca = ["/etc/a.pem", "b.pem"]
        client = [["c.pem", "k.pem"], "both.pem"]
        skip_verify = true
        [host."https://127.0.0.1:6000/custom".header]
          x-custom = "1"
      """,
      "_default/hosts.toml": """
      [host."https://mirror.example:443"]
      """,
    ])
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let conf = HostsConfiguration(configPath: dir)
    let hosts = try conf.hosts(for: "127.0.0.1:5000")
    #expect(hosts.map(\.description) == ["http://127.0.0.1:7000/v2", "https://127.0.0.1:6000/custom/v2", "https://127.0.0.1:5000/v2"])
    #expect(hosts[0].capabilities == [.pull])
    #expect(hosts[1].capabilities == [.pull, .resolve])
    #expect(hosts[1].caFiles == ["/etc/a.pem", dir + "/127.0.0.1_5000_/b.pem"])
    #expect(
      hosts[1].clientPairs == [
        .init(certificate: dir + "/127.0.0.1_5000_/c.pem", key: dir + "/127.0.0.1_5000_/k.pem"),
        .init(certificate: dir + "/127.0.0.1_5000_/both.pem", key: nil),
      ])
    #expect(hosts[1].skipVerify == true)
    #expect(hosts[1].headers == ["x-custom": ["1"]])
    #expect(hosts[2].caFiles == [dir + "/127.0.0.1_5000_/ca.pem"])
    #expect(hosts[2].skipVerify == false)
    #expect(hosts[2].capabilities == .all)
    // Another registry falls to _default: its mirror, then itself.
    #expect(try conf.hosts(for: "quay.io").map(\.description) == ["https://mirror.example:443/v2", "https://quay.io/v2"])
  }

  @Test func orderIsTheFileOrder() throws {
    let text = """
      [host."https://z.example"]
      [host.'https://a.example']
      [host."https://m.example"]
      """
    let parsed = try HostsConfiguration.parse(text, baseDir: "/x")
    #expect(parsed.hosts.map(\.host) == ["z.example", "a.example", "m.example"])
    #expect(parsed.server.host == "")
  }

  @Test func refusesBadFiles() {
    #expect(throws: RegistryError.self) { try HostsConfiguration.parse("capabilities = [\"fly\"]", baseDir: "/") }
    #expect(throws: RegistryError.self) { try HostsConfiguration.parse("ca = 3", baseDir: "/") }
    #expect(throws: RegistryError.self) { try HostsConfiguration.parse("[host", baseDir: "/") }
  }

  @Test func dockerCertsDirectory() throws {
    let dir = try directory(["r.example/ca.crt": "x", "r.example/client.cert": "x", "r.example/client.key": "x"])
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let hosts = try HostsConfiguration(configPath: dir).hosts(for: "r.example")
    #expect(hosts.count == 1)
    #expect(hosts[0].description == "https://r.example/v2")
    #expect(hosts[0].caFiles == [dir + "/r.example/ca.crt"])
    #expect(hosts[0].clientPairs == [.init(certificate: dir + "/r.example/client.cert", key: dir + "/r.example/client.key")])
  }

  @Test func localhostDetection() {
    #expect(isLocalhost("localhost:5000"))
    #expect(isLocalhost("127.0.0.1"))
    #expect(isLocalhost("127.1.2.3:80"))
    #expect(isLocalhost("[::1]:5000"))
    #expect(!isLocalhost("127.example.com"))
    #expect(!isLocalhost("10.0.0.1:5000"))
  }
}

@Suite struct AuthTests {
  @Test func dockerConfig() throws {
    let json = """
      {"auths": {
        "https://index.docker.io/v1/": {"auth": "\(Data("hub:secret:with:colons".utf8).base64EncodedString())"},
        "http://127.0.0.1:5000": {"username": "u", "password": "p"},
        "empty.example": {}
      }, "credsStore": "desktop"}
      """
    let c = try DockerConfig(json: Data(json.utf8))
    #expect(c.credentials(for: "docker.io") == Credentials(username: "hub", password: "secret:with:colons"))
    #expect(c.credentials(for: "registry-1.docker.io") == Credentials(username: "hub", password: "secret:with:colons"))
    #expect(c.credentials(for: "127.0.0.1:5000") == Credentials(username: "u", password: "p"))
    #expect(c.credentials(for: "empty.example") == nil)
    #expect(throws: RegistryError.self) { try DockerConfig(json: Data(#"{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}"#.utf8)) }
    #expect(try DockerConfig(path: "/nonexistent/config.json").auths.isEmpty)
  }

  @Test func challenges() {
    let c = AuthChallenge.parse(
      #"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#)
    #expect(c.count == 1)
    #expect(c[0].scheme == "bearer")
    #expect(c[0].realm == "https://auth.docker.io/token")
    #expect(c[0].service == "registry.docker.io")
    #expect(c[0].scope == "repository:library/busybox:pull")
    let two = AuthChallenge.parse(#"Basic realm="Registry Realm", Bearer realm="http://x/t", service=reg"#)
    #expect(two.map(\.scheme) == ["basic", "bearer"])
    #expect(two[0].realm == "Registry Realm")
    #expect(two[1].service == "reg")
    #expect(AuthChallenge.parse(#"Bearer realm="a\"b""#)[0].realm == #"a"b"#)
  }

  @Test func errorMessagesNameWhatFailed() {
    let e = RegistryError(
      .digestMismatch, registry: "127.0.0.1:5000", repository: "test/busybox", object: "sha256:" + String(repeating: "a", count: 64), "bad")
    #expect(e.description == "127.0.0.1:5000/test/busybox@sha256:\(String(repeating: "a", count: 64)): digest mismatch: bad")
    let t = RegistryError(.unauthorized, registry: "docker.io", repository: "library/busybox", object: "latest", "401")
    #expect(t.description == "docker.io/library/busybox:latest: unauthorized: 401")
  }
}

@Suite struct ChannelTests {
  /// The queue between the download and the importer's thread keeps at most about its
  /// limit queued, hands every byte over in order, and reports a failure after the bytes.
  @Test func boundedAndOrdered() async throws {
    let channel = BlobChannel(limit: 64 << 10)
    let chunks = 200
    let producer = Task {
      for i in 0..<chunks {
        var b = ByteBufferAllocator().buffer(capacity: 16 << 10)
        b.writeRepeatingByte(UInt8(i & 0xff), count: 16 << 10)
        #expect(await channel.put(b))
      }
      channel.finish(RegistryError(.truncated, registry: "r", repository: "x", "end"))
    }
    let got: (Int, Bool, Bool) = await withCheckedContinuation { c in
      Thread.detachNewThread {
        var n = 0
        var ordered = true
        while true {
          switch channel.take() {
          case .success(let b?):
            if b.readableBytesView.first != UInt8(n & 0xff) { ordered = false }
            n += 1
            usleep(100)
          case .success(nil):
            c.resume(returning: (n, ordered, false))
            return
          case .failure:
            c.resume(returning: (n, ordered, true))
            return
          }
        }
      }
    }
    await producer.value
    #expect(got.0 == chunks)
    #expect(got.1)
    #expect(got.2)
  }

  /// A producer waiting for room (the queue is over its limit) ends when the reader
  /// abandons the channel, from another thread; whichever comes first, the put answers
  /// false. The test's own task is the producer, so no other task needs a thread of the
  /// (small) cooperative pool. The wake-up itself, in a fixed order and with a deadline,
  /// is `WaitingTests.abandonWakesOneWaitingForRoom`.
  @Test(.timeLimit(.minutes(1))) func abandonWakesTheProducer() async throws {
    let channel = BlobChannel(limit: 1)
    var b = ByteBufferAllocator().buffer(capacity: 10)
    b.writeRepeatingByte(1, count: 10)
    try Threads.spawn { channel.abandon() }
    #expect(await channel.put(b) == false)
    #expect(await channel.put(b) == false)  // and any put after it
  }

}
