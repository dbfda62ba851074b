import ArgumentParser
import Foundation
import GRPCCore
import SnapshotAPI
import SnapshotCore

struct ImportLayer: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "import-layer",
    abstract: "Import a layer blob into the layer store and print its chainID.",
    discussion: """
      BLOB is a path on the daemon's host, or - to stream the blob from standard input through \
      the socket. The digests are checked when given; the layer is committed as the snapshot \
      named by its chainID, on top of PARENT.
      """)
  @OptionGroup var client: ClientOptions
  @Argument(help: "The layer blob, or - for standard input.") var blob: String
  @Option(help: "The blob's media type (OCI or Docker layer types, tar, +gzip or +zstd).")
  var mediaType: String = "application/vnd.oci.image.layer.v1.tar+gzip"
  @Option(help: "Expected digest of the blob (sha256:...).") var digest: String = ""
  @Option(help: "Expected diffID, the digest of the uncompressed tar (sha256:...).") var diffId: String = ""
  @Option(help: "chainID of the layer below.") var parent: String = ""

  func run() async throws {
    try await reporting {
      var header = Snapshotd_V1_LayerHeader()
      header.mediaType = mediaType
      header.digest = digest
      header.diffID = diffId
      header.parent = parent
      let streamed = blob == "-"
      if !streamed {
        header.path = blob.hasPrefix("/") ? blob : FileManager.default.currentDirectoryPath + "/" + blob
      }
      let first = Snapshotd_V1_ImportLayerRequest.with { $0.header = header }
      let request = StreamingClientRequest<Snapshotd_V1_ImportLayerRequest> { writer in
        try await writer.write(first)
        guard streamed else { return }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
          let n = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
          if n < 0 && errno == EINTR { continue }
          if n < 0 { throw Failure("reading standard input: \(String(cString: strerror(errno)))") }
          if n == 0 { return }
          try await writer.write(.with { $0.data = Data(buffer[0..<n]) })
        }
      }
      let response = try await client.store { try await $0.importLayer(request: request) }
      print(response.chainID)
    }
  }
}

struct ImportImage: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "import-image",
    abstract: "Import an OCI image (layout directory or archive) and print its top chainID.",
    discussion: "Layers are unpacked concurrently. Progress goes to standard error: a bar on a terminal, plain lines otherwise.")
  @OptionGroup var client: ClientOptions
  @Argument(help: "An OCI image layout directory or OCI archive (what `ctr image export` writes), on the daemon's host.")
  var path: String

  func run() async throws {
    try await reporting {
      let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
      let chainID: String = try await client.store { c in
        try await c.importImage(request: .init(message: .with { $0.path = absolute })) { response in
          try await Progress.follow(response.messages, "the import")
        }
      }
      print(chainID)
    }
  }
}

struct Pull: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pull",
    abstract: "Pull an image from its registry into the store and print its top chainID.",
    discussion: """
      The daemon fetches the layers the store lacks, several at once, each streamed into the \
      store (registry hosts and credentials as snapshotd is configured: hosts.toml, \
      config.json). Progress goes to standard error: a bar on a terminal, plain lines otherwise.
      """)
  @OptionGroup var client: ClientOptions
  @Argument(help: "The image: registry/repository[:tag][@digest] (docker.io and latest by default).")
  var reference: String
  @Option(help: "The platform of an image index to pull: os/arch[/variant] (default: the daemon's).")
  var platform: String = ""

  func run() async throws {
    try await reporting {
      let request = Snapshotd_V1_PullRequest.with {
        $0.reference = reference
        $0.platform = platform
      }
      let chainID: String = try await client.store { c in
        try await c.pull(request: .init(message: request)) { response in
          try await Progress.follow(response.messages, "the pull")
        }
      }
      print(chainID)
    }
  }
}

enum Progress {
  /// Shows an import's or pull's progress on standard error (a bar on a terminal, a line per
  /// finished layer otherwise) and returns the top chainID its last message carries.
  static func follow(_ messages: some AsyncSequence<Snapshotd_V1_ImportProgress, any Error>, _ what: String) async throws -> String {
    let terminal = isatty(2) != 0
    var shownLayers = -1
    for try await p in messages {
      if !p.chainID.isEmpty {
        if terminal {
          printError("\r" + bar(p) + "\u{1B}[K")
        } else if p.layersDone != shownLayers {
          printError(line(p))
        }
        return p.chainID
      }
      if terminal {
        var err = StandardError()
        print("\r" + bar(p) + "\u{1B}[K", terminator: "", to: &err)
      } else if p.layersDone != shownLayers {
        shownLayers = Int(p.layersDone)
        printError(line(p))
      }
    }
    throw Failure("\(what) ended without a result")
  }

  static func bar(_ p: Snapshotd_V1_ImportProgress) -> String { bar(p.bytesDone, of: p.bytesTotal) + line(p) }
  static func bar(_ p: Snapshotd_V1_CheckProgress) -> String { bar(p.bytesDone, of: p.bytesTotal) + line(p) }

  static func fraction(_ done: Int64, of total: Int64) -> Double {
    total > 0 ? min(1, Double(done) / Double(total)) : 0
  }

  private static func bar(_ done: Int64, of total: Int64) -> String {
    let fraction = fraction(done, of: total)
    let width = 30
    let filled = Int(fraction * Double(width))
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
      + String(format: "%3.0f%% ", fraction * 100)
  }

  static func line(_ p: Snapshotd_V1_ImportProgress) -> String {
    "\(Output.bytes(p.bytesDone)) of \(Output.bytes(p.bytesTotal)), \(p.layersDone)/\(p.layersTotal) layers"
  }

  static func line(_ p: Snapshotd_V1_CheckProgress) -> String {
    "\(Output.bytes(p.bytesDone)) of \(Output.bytes(p.bytesTotal)) hashed"
  }
}

struct GC: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "gc", abstract: "Delete imported layers no snapshot uses, and content objects nothing references.")
  @OptionGroup var client: ClientOptions

  func run() async throws {
    try await reporting {
      let r = try await client.store { try await $0.gc(request: .init(message: .init())) }
      if client.json {
        print("{\"layers\":\(r.layers),\"objects\":\(r.objects),\"bytes\":\(r.bytes)}")
      } else {
        print("removed \(r.layers) layers, \(r.objects) objects, \(Output.bytes(r.bytes))")
      }
    }
  }
}

struct Check: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Walk the store and report missing, corrupt and orphan objects and wrong reference counts; --repair fixes counts and orphans.",
    discussion: """
      Every object in use is hashed; progress goes to standard error: a bar on a terminal, plain \
      lines otherwise. Each finding is printed on its own line. Exits 1 when something is wrong \
      (with --repair: when something could not be repaired).
      """)
  @OptionGroup var client: ClientOptions
  @Flag(help: "Set references and counts from the stubs and remove orphans.") var repair = false

  func run() async throws {
    try await reporting {
      let terminal = isatty(2) != 0
      let request = Snapshotd_V1_CheckRequest.with { $0.repair = repair }
      let findings: [Snapshotd_V1_CheckFinding] = try await client.store { c in
        try await c.check(request) { response in
          var shownStep = -1
          for try await p in response.messages {
            if terminal {
              var err = StandardError()
              print("\r" + Progress.bar(p) + "\u{1B}[K", terminator: p.done ? "\n" : "", to: &err)
            } else if p.bytesTotal > 0 {
              let step = Int(Progress.fraction(p.bytesDone, of: p.bytesTotal) * 10)
              if step != shownStep {
                shownStep = step
                printError(Progress.line(p))
              }
            }
            if p.done { return p.findings }
          }
          throw Failure("the check ended without a result")
        }
      }
      if client.json {
        let items = findings.map { f in
          "{\"kind\":\(Output.json(f.kind)),\"detail\":\(Output.json(f.detail)),\"repairable\":\(f.repairable),\"repaired\":\(f.repaired)}"
        }
        print("[" + items.joined(separator: ",") + "]")
      } else {
        for f in findings { print(f.line) }
      }
      let broken = findings.filter { !$0.repaired }.count
      if findings.isEmpty {
        if !client.json { print("store is consistent") }
      } else if repair {
        let summary = "\(findings.count - broken) repaired, \(broken) cannot be repaired"
        if broken > 0 { throw Failure(summary) }
        if !client.json { print(summary) }
      } else {
        throw Failure("\(findings.count) problem\(findings.count == 1 ? "" : "s") found")
      }
    }
  }
}

struct Info: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show the daemon's configuration: the mount driver it uses (and why) and its root.")
  @OptionGroup var client: ClientOptions

  func run() async throws {
    try await reporting {
      let r = try await client.store { try await $0.info(request: .init(message: .init())) }
      if client.json {
        print(Output.json(["driver": r.driver, "driverReason": r.driverReason, "root": r.root]))
      } else {
        print("driver: \(r.driver) (\(r.driverReason))")
        print("root:   \(r.root)")
      }
    }
  }
}
