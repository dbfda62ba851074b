import Foundation

/// A user name and password (or token) for a registry.
public struct Credentials: Hashable, Sendable {
  public var username: String
  public var password: String

  public init(username: String, password: String) {
    self.username = username
    self.password = password
  }
}

/// Credentials from Docker's `config.json`: its `auths` map, keyed by registry host (with
/// or without a scheme and path: `https://index.docker.io/v1/` names docker.io), each with
/// `auth` (base64 of `user:password`) or `username` and `password`. Credential helpers
/// (`credsStore`, `credHelpers`) are not run.
public struct DockerConfig: Sendable {
  /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json` (root's when HOME is unset).
  public static var defaultPath: String {
    let env = ProcessInfo.processInfo.environment
    if let dir = env["DOCKER_CONFIG"], !dir.isEmpty { return dir + "/config.json" }
    return (env["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "/root") + "/.docker/config.json"
  }

  /// Registry host → credentials.
  public var auths: [String: Credentials]

  public init(auths: [String: Credentials] = [:]) {
    self.auths = auths
  }

  /// Reads `path`; a missing file is an empty configuration, a malformed one an error.
  public init(path: String) throws(RegistryError) {
    guard FileManager.default.fileExists(atPath: path) else {
      self.init()
      return
    }
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
      throw .invalid("cannot read \(path): \(error.localizedDescription)")
    }
    try self.init(json: data, source: path)
  }

  public init(json: Data, source: String = "config.json") throws(RegistryError) {
    struct File: Decodable {
      struct Entry: Decodable {
        var auth: String?
        var username: String?
        var password: String?
      }
      var auths: [String: Entry]?
    }
    let file: File
    do { file = try JSONDecoder().decode(File.self, from: json) } catch {
      throw .invalid("\(source): not a Docker config file: \(error)")
    }
    var auths: [String: Credentials] = [:]
    for (key, e) in file.auths ?? [:] {
      let host = Self.normalize(key)
      if let auth = e.auth, !auth.isEmpty {
        guard let raw = Data(base64Encoded: auth), let text = String(data: raw, encoding: .utf8),
          let colon = text.firstIndex(of: ":")
        else {
          throw .invalid("\(source): the auth of \(quote(key)) is not base64 of user:password")
        }
        auths[host] = Credentials(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
      } else if let u = e.username, let p = e.password {
        auths[host] = Credentials(username: u, password: p)
      }
    }
    self.init(auths: auths)
  }

  /// The credentials for a registry host (as contacted: a mirror's own name), if any.
  public func credentials(for host: String) -> Credentials? {
    let h = Self.normalize(host)
    return auths[h]
  }

  /// `https://index.docker.io/v1/` → `docker.io`; `http://127.0.0.1:5000/` → `127.0.0.1:5000`.
  static func normalize(_ key: String) -> String {
    var k = key.lowercased()
    if let r = k.range(of: "://") { k = String(k[r.upperBound...]) }
    if let slash = k.firstIndex(of: "/") { k = String(k[..<slash]) }
    switch k {
    case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com": return "docker.io"
    default: return k
    }
  }
}
