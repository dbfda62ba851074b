// registry-probe: drives the Registry client from tests/registry/run (a test tool, not a
// product). On failure it prints `error: <message>` and `kind: <kind>` to stderr and exits 1.
import ArgumentParser
import Foundation
import Registry
import Unpack

struct Options: ParsableArguments {
  @Option(help: "containerd's registry config_path (hosts.toml directories); \"\" for none")
  var hostsDir: String = HostsConfiguration.defaultConfigPath
  @Option(help: "Docker's config.json")
  var dockerConfig: String = DockerConfig.defaultPath
  @Option(help: "Range requests allowed after a body breaks off without progress")
  var maxResumes: Int = 3
  @Option(help: "read time-out in seconds")
  var readTimeout: Int64 = 30

  func client() -> RegistryClient {
    var c = RegistryConfiguration()
    c.hosts = HostsConfiguration(configPath: hostsDir.isEmpty ? nil : hostsDir)
    c.dockerConfigPath = dockerConfig
    c.maxResumes = maxResumes
    c.readTimeout = .seconds(readTimeout)
    return RegistryClient(configuration: c)
  }
}

func withClient(_ options: Options, _ body: (RegistryClient) async throws -> Void) async throws {
  let client = options.client()
  do {
    try await body(client)
    try await client.shutdown()
  } catch let e as RegistryError {
    try? await client.shutdown()
    FileHandle.standardError.write(Data("error: \(e)\nkind: \(e.kind.rawValue)\n".utf8))
    throw ExitCode(1)
  } catch {
    try? await client.shutdown()
    throw error
  }
}

func json(_ value: Any) -> String {
  String(decoding: try! JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self)
}

@main
struct Probe: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "registry-probe",
    abstract: "Resolves references and fetches blobs with the Registry client.",
    subcommands: [Resolve.self, Blob.self, Layers.self]
  )
}

struct Resolve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Resolves REF; prints its manifest, config and layers as JSON.")
  @OptionGroup var options: Options
  @Argument var reference: String
  @Option var platform: String?

  func run() async throws {
    try await withClient(options) { client in
      let image = try await resolve(client, reference, platform)
      var out: [String: Any] = [
        "reference": image.reference.description,
        "manifest": ["digest": image.manifest.digest.description, "mediaType": image.manifest.mediaType, "size": image.manifest.size],
        "config": image.config.digest.description,
        "platform": image.platform.description,
        "layers": image.layers.map {
          ["digest": $0.digest.description, "size": $0.size, "mediaType": $0.mediaType, "diffID": $0.diffID.description]
        },
        "chainIDs": image.chainIDs.map(\.description),
      ]
      if let i = image.index { out["index"] = ["digest": i.digest.description, "mediaType": i.mediaType] }
      print(json(out))
    }
  }
}

struct Blob: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Fetches blob DIGEST of SIZE bytes from REF's repository into a file.")
  @OptionGroup var options: Options
  @Argument var reference: String
  @Argument var digest: String
  @Argument var size: Int64
  @Option(name: .shortAndLong, help: "where the bytes go (default: nowhere)")
  var output: String = "/dev/null"
  @Flag(help: "read through BlobSource (the importer's ByteSource) on a thread")
  var source = false

  func run() async throws {
    try await withClient(options) { client in
      let ref = try Reference(parsing: reference)
      guard let d = Digest(digest) else { throw ValidationError("malformed digest \(digest)") }
      let desc = Descriptor(mediaType: "application/octet-stream", digest: d, size: size)
      let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
      guard fd >= 0 else { throw ValidationError("cannot write \(output)") }
      let out = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
      var total: Int64 = 0
      if source {
        let src = client.blobSource(ref, desc)
        let result: Result<Int64, any Error> = await withCheckedContinuation { c in
          Thread.detachNewThread {
            var n: Int64 = 0
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            do {
              while true {
                let k = try buf.withUnsafeMutableBytes { b throws(LayerError) in try src.read(into: b) }
                if k == 0 { break }
                out.write(Data(buf[0..<k]))
                n += Int64(k)
              }
              c.resume(returning: .success(n))
            } catch {
              c.resume(returning: .failure(error))
            }
          }
        }
        switch result {
        case .success(let n): total = n
        case .failure:
          throw src.failure!
        }
      } else {
        for try await chunk in client.blob(ref, desc) {
          out.write(Data(chunk.readableBytesView))
          total += Int64(chunk.readableBytes)
        }
      }
      try out.close()
      print("\(total) bytes \(d)")
    }
  }
}

struct Layers: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Resolves REF and fetches all its layers at once; prints each digest and size.")
  @OptionGroup var options: Options
  @Argument var reference: String
  @Option var platform: String?

  func run() async throws {
    try await withClient(options) { client in
      let image = try await resolve(client, reference, platform)
      let ref = image.reference
      try await withThrowingTaskGroup(of: String.self) { group in
        for l in image.layers {
          group.addTask {
            var n: Int64 = 0
            for try await chunk in client.blob(ref, l.blob) { n += Int64(chunk.readableBytes) }
            return "\(l.digest) \(n)"
          }
        }
        for try await line in group { print(line) }
      }
    }
  }
}

/// REF resolved for PLATFORM (this machine's when nil).
func resolve(_ client: RegistryClient, _ reference: String, _ platform: String?) async throws -> ResolvedImage {
  try await client.resolve(Reference(parsing: reference), platform: platform.map { try Platform(parsing: $0) } ?? .host)
}
