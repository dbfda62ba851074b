/// Why a registry operation failed. One type for all of them: the message names the
/// registry host, the repository and the reference or digest concerned, so a log line or
/// `snapctl pull`'s error tells what failed where.
public struct RegistryError: Error, CustomStringConvertible, Sendable {
  public enum Kind: String, Sendable {
    /// A reference, platform, hosts.toml or config.json that cannot be used.
    case invalid
    /// The registry refused the request (401/403), or the token service did.
    case unauthorized
    /// No such repository, manifest, blob, or no manifest for the platform.
    case notFound
    /// The content does not match its digest (or its size).
    case digestMismatch
    /// The body ended early, and resuming it did not complete it.
    case truncated
    /// No connection, a TLS failure, a time-out.
    case unreachable
    /// A manifest, index or config that cannot be decoded or is too large.
    case badManifest
    /// Any other status from the registry (5xx among them).
    case server
  }

  public let kind: Kind
  /// The registry host (as in the reference: `docker.io`, `127.0.0.1:5000`), or the
  /// endpoint contacted.
  public let registry: String
  public let repository: String
  /// The reference or digest concerned ("" when none).
  public let object: String
  /// What happened, without the names above.
  public let detail: String

  public init(_ kind: Kind, registry: String, repository: String, object: String = "", _ detail: String) {
    self.kind = kind
    self.registry = registry
    self.repository = repository
    self.object = object
    self.detail = detail
  }

  public var description: String {
    var what = registry.isEmpty ? repository : "\(registry)/\(repository)"
    if !object.isEmpty { what += object.hasPrefix("sha256:") ? "@\(object)" : ":\(object)" }
    let label: String
    switch kind {
    case .invalid: label = "invalid"
    case .unauthorized: label = "unauthorized"
    case .notFound: label = "not found"
    case .digestMismatch: label = "digest mismatch"
    case .truncated: label = "truncated body"
    case .unreachable: label = "registry unreachable"
    case .badManifest: label = "bad manifest"
    case .server: label = "registry error"
    }
    return what.isEmpty ? "\(label): \(detail)" : "\(what): \(label): \(detail)"
  }

  static func invalid(_ detail: String) -> RegistryError {
    RegistryError(.invalid, registry: "", repository: "", detail)
  }
}
