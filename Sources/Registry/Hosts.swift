import Foundation
import NIOSSL
import SnapshotSys

/// One endpoint a registry's content is fetched from: the registry itself or a mirror, as
/// containerd's `hosts.toml` describes it.
public struct RegistryHost: Hashable, Sendable, CustomStringConvertible {
  public struct Capabilities: OptionSet, Hashable, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Fetches manifests and blobs by digest.
    public static let pull = Capabilities(rawValue: 1)
    /// Resolves tags to digests.
    public static let resolve = Capabilities(rawValue: 2)
    public static let push = Capabilities(rawValue: 4)
    public static let all: Capabilities = [.pull, .resolve, .push]
  }

  /// `http` or `https`.
  public var scheme: String
  /// `host[:port]`.
  public var host: String
  /// The API root, `/v2` unless `override_path` says otherwise.
  public var path: String
  public var capabilities: Capabilities
  /// PEM files of certificate authorities trusted besides the system's.
  public var caFiles: [String] = []
  /// Client certificate and key files (a nil key: the key is in the certificate's file).
  public var clientPairs: [ClientPair] = []
  public var skipVerify: Bool?
  /// Extra headers sent with every request to this host.
  public var headers: [String: [String]] = [:]

  public struct ClientPair: Hashable, Sendable {
    public var certificate: String
    public var key: String?
  }

  public init(scheme: String, host: String, path: String = "/v2", capabilities: Capabilities = .all) {
    self.scheme = scheme
    self.host = host
    self.path = path
    self.capabilities = capabilities
  }

  /// The URL of `components` under the API root: `https://host/v2/<repo>/manifests/<ref>`.
  func url(_ components: String...) -> String {
    "\(scheme)://\(host)\(path)/" + components.joined(separator: "/")
  }

  public var description: String { "\(scheme)://\(host)\(path)" }

  /// The TLS settings for this host: the system's roots plus `ca`, the `client` pairs, and
  /// no verification with `skip_verify`. Nil for plain HTTP.
  public func tlsConfiguration() throws(RegistryError) -> TLSConfiguration? {
    guard scheme == "https" else { return nil }
    var tls = TLSConfiguration.makeClientConfiguration()
    if skipVerify == true { tls.certificateVerification = .none }
    do {
      for f in caFiles {
        let certs = try NIOSSLCertificate.fromPEMFile(f)
        guard !certs.isEmpty else { throw RegistryError.invalid("no certificate in CA file \(f)") }
        tls.additionalTrustRoots.append(.certificates(certs))
      }
      // A TLS connection presents one client certificate: the first pair, as Go's does
      // when the server names no acceptable CA.
      if let pair = clientPairs.first {
        let chain = try NIOSSLCertificate.fromPEMFile(pair.certificate)
        tls.certificateChain = chain.map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: pair.key ?? pair.certificate, format: .pem))
      }
    } catch let e as RegistryError {
      throw e
    } catch {
      throw .invalid("TLS settings of \(self): \(error)")
    }
    return tls
  }
}

/// Where registry hosts are configured: containerd's `config_path` directory, holding
/// `<host>/hosts.toml` (`<host>` with a `:port` written `_port_` tried first, as containerd
/// does, then `host:port`, then `_default`). A host directory without `hosts.toml` is read
/// Docker's way (`*.crt` CAs, `*.cert`/`*.key` client pairs).
public struct HostsConfiguration: Sendable {
  public static let defaultConfigPath = "/etc/containerd/certs.d"

  /// The directory, or nil for none (each registry is its own only host).
  public var configPath: String?

  public init(configPath: String? = HostsConfiguration.defaultConfigPath) {
    self.configPath = configPath
  }

  /// The endpoints for `registry` in the order they are tried: the `[host]` entries of its
  /// hosts.toml, then its `server` (or the registry itself: `registry-1.docker.io` for
  /// docker.io, plain HTTP for localhost and loopback addresses, HTTPS otherwise).
  public func hosts(for registry: String) throws(RegistryError) -> [RegistryHost] {
    var hosts: [RegistryHost] = []
    var last: RegistryHost?  // the server entry, if a file set one
    var lastTemplate = RegistryHost(scheme: "", host: "")  // settings for the default server
    if let dir = hostDirectory(for: registry) {
      let file = dir + "/hosts.toml"
      // No hosts.toml is Docker's certs.d layout; one that cannot be read is an error, not
      // that layout (its mirrors and CA would silently be skipped).
      let text: String
      do { text = String(decoding: try Sys.readAll(file), as: UTF8.self) } catch  where error.errno == ENOENT { text = "" } catch {
        throw .invalid("registry hosts \(file): \(error)")
      }
      if !text.isEmpty {
        let parsed = try Self.parse(text, baseDir: dir, file: file)
        hosts = parsed.hosts
        if parsed.server.host.isEmpty { lastTemplate = parsed.server } else { last = parsed.server }
      } else {
        lastTemplate = try Self.certFiles(dir)
      }
    }
    if last == nil {
      var h = lastTemplate
      h.path = "/v2"
      h.capabilities = .all
      if registry == "docker.io" {
        h.scheme = "https"
        h.host = "registry-1.docker.io"
      } else if isLocalhost(registry) {
        h.scheme = "http"
        h.host = registry
        if h.skipVerify == nil { h.skipVerify = true }
      } else {
        h.scheme = "https"
        h.host = registry
      }
      last = h
    }
    hosts.append(last!)
    return hosts
  }

  func hostDirectory(for registry: String) -> String? {
    guard let root = configPath else { return nil }
    var candidates: [String] = []
    if let colon = registry.lastIndex(of: ":"), colon != registry.startIndex {
      candidates.append(root + "/" + registry[..<colon] + "_" + registry[registry.index(after: colon)...] + "_")
    }
    candidates.append(root + "/" + registry)
    candidates.append(root + "/_default")
    var isDir: ObjCBool = false
    return candidates.first { FileManager.default.fileExists(atPath: $0, isDirectory: &isDir) && isDir.boolValue }
  }

  /// A hosts.toml: its `[host."..."]` entries in file order, and the top-level entry
  /// (`server`, whose host is empty when the file names none).
  static func parse(_ text: String, baseDir: String, file: String = "hosts.toml") throws(RegistryError) -> (
    hosts: [RegistryHost], server: RegistryHost
  ) {
    let table: TOMLTable
    do { table = try TOMLTable(parsing: text) } catch {
      throw .invalid("\(file): \(error)")
    }
    var hosts: [RegistryHost] = []
    if let hostTable = table["host"] {
      guard let ht = hostTable.table else { throw .invalid("\(file): `host` is not a table") }
      for name in ht.keys {  // in file order: the order hosts are tried
        guard let entry = ht[name]?.table else { throw .invalid("\(file): host \(quote(name)) is not a table") }
        hosts.append(try parseHost(name, entry, baseDir: baseDir, file: file))
      }
    }
    let serverName = table["server"]?.string ?? ""
    if table["server"] != nil && table["server"]?.string == nil { throw .invalid("\(file): `server` is not a string") }
    let server = try parseHost(serverName, table, baseDir: baseDir, file: file)
    return (hosts, server)
  }

  static func parseHost(_ server: String, _ t: TOMLTable, baseDir: String, file: String) throws(RegistryError) -> RegistryHost {
    func bad(_ why: String) -> RegistryError { .invalid("\(file): \(server.isEmpty ? "" : "host \(quote(server)): ")\(why)") }
    let overridePath = t["override_path"]?.bool ?? false
    var h = RegistryHost(scheme: "", host: "", path: "", capabilities: .all)
    if !server.isEmpty {
      var s = server
      if !s.hasPrefix("http") { s = "https://" + s }
      guard let u = URLComponents(string: s), let scheme = u.scheme, scheme == "http" || scheme == "https",
        let host = u.host, !host.isEmpty
      else { throw bad("unusable server URL \(quote(server))") }
      h.scheme = scheme
      h.host = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
      if let port = u.port { h.host += ":\(port)" }
      var path = u.path
      while path.hasSuffix("/") { path.removeLast() }
      if !path.isEmpty {
        path = (path as NSString).standardizingPath
        if !path.hasSuffix("/v2") && !overridePath { path += "/v2" }
      } else if !overridePath {
        path = "/v2"
      }
      h.path = path
    }
    if let skip = t["skip_verify"] {
      guard let b = skip.bool else { throw bad("skip_verify is not a boolean") }
      h.skipVerify = b
    }
    if let caps = t["capabilities"] {
      guard let a = caps.array else { throw bad("capabilities is not an array") }
      if !a.isEmpty {
        var c: RegistryHost.Capabilities = []
        for v in a {
          switch v.string?.lowercased() {
          case "pull": c.insert(.pull)
          case "resolve": c.insert(.resolve)
          case "push": c.insert(.push)
          default: throw bad("unknown capability \(v.string.map(quote) ?? "\(v)")")
          }
        }
        h.capabilities = c
      }
    }
    func absolute(_ p: String) -> String { p.hasPrefix("/") ? p : baseDir + "/" + p }
    if let ca = t["ca"] {
      if let s = ca.string {
        h.caFiles = [absolute(s)]
      } else if let a = ca.array {
        for v in a {
          guard let s = v.string else { throw bad("ca holds a non-string") }
          h.caFiles.append(absolute(s))
        }
      } else {
        throw bad("ca is neither a string nor an array")
      }
    }
    if let client = t["client"] {
      if let s = client.string {
        h.clientPairs = [.init(certificate: absolute(s), key: nil)]
      } else if let a = client.array {
        for v in a {
          if let s = v.string {
            h.clientPairs.append(.init(certificate: absolute(s), key: nil))
          } else if let pair = v.array, pair.count == 2, let c = pair[0].string, let k = pair[1].string {
            h.clientPairs.append(.init(certificate: absolute(c), key: absolute(k)))
          } else {
            throw bad("client holds neither a file nor a [cert, key] pair")
          }
        }
      } else {
        throw bad("client is neither a string nor an array")
      }
    }
    if let header = t["header"] {
      guard let ht = header.table else { throw bad("header is not a table") }
      for key in ht.keys {
        if let s = ht[key]?.string {
          h.headers[key] = [s]
        } else if let a = ht[key]?.array {
          var values: [String] = []
          for v in a {
            guard let s = v.string else { throw bad("header \(key) holds a non-string") }
            values.append(s)
          }
          h.headers[key] = values
        } else {
          throw bad("header \(key) is neither a string nor an array")
        }
      }
    }
    return h
  }

  /// Docker's certs.d layout: `*.crt` files are CAs, `X.cert` with `X.key` client pairs.
  static func certFiles(_ dir: String) throws(RegistryError) -> RegistryHost {
    var h = RegistryHost(scheme: "", host: "")
    let names: [String]
    do { names = try Sys.listDirectory(dir).sorted() } catch { throw .invalid("registry certificates \(dir): \(error)") }
    for n in names {
      if n.hasSuffix(".crt") { h.caFiles.append(dir + "/" + n) }
      if n.hasSuffix(".cert") {
        let key = dir + "/" + n.dropLast(5) + ".key"
        h.clientPairs.append(.init(certificate: dir + "/" + n, key: FileManager.default.fileExists(atPath: key) ? key : nil))
      }
    }
    return h
  }
}

/// `localhost` or a loopback address, with or without a port.
func isLocalhost(_ registry: String) -> Bool {
  var host = registry
  if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
    host = String(host[host.index(after: host.startIndex)..<close])
  } else if host.filter({ $0 == ":" }).count == 1, let colon = host.firstIndex(of: ":") {
    host = String(host[..<colon])
  }
  if host == "localhost" || host == "::1" { return true }
  let parts = host.split(separator: ".")
  return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
}
