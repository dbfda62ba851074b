import Unpack

/// An image reference, normalized as Docker and containerd normalize it:
/// `busybox` is `docker.io/library/busybox:latest`, `user/app` is `docker.io/user/app:latest`,
/// `index.docker.io/...` is `docker.io/...`; a first component with a `.` or a `:`, or
/// `localhost`, names the registry. A reference with a digest is fetched by the digest (its
/// tag, if any, is kept for display).
public struct Reference: Hashable, Sendable, CustomStringConvertible {
  /// The registry as named in the reference: `docker.io`, `127.0.0.1:5000`.
  public var registry: String
  /// The repository path in that registry: `library/busybox`.
  public var repository: String
  public var tag: String?
  public var digest: Digest?

  public init(registry: String, repository: String, tag: String? = nil, digest: Digest? = nil) {
    self.registry = registry
    self.repository = repository
    self.tag = tag
    self.digest = digest
  }

  /// Parses `[registry/]name[:tag][@digest]`; `latest` when there is neither a tag nor a
  /// digest.
  public init(parsing text: String) throws(RegistryError) {
    func bad(_ why: String) -> RegistryError { .invalid("reference \(quote(text)): \(why)") }
    var rest = Substring(text)
    guard !rest.isEmpty else { throw bad("empty") }
    guard !rest.contains(where: { $0 == " " || $0 == "\t" || $0 == "\n" }) else { throw bad("contains white space") }
    if let at = rest.firstIndex(of: "@") {
      let d = rest[rest.index(after: at)...]
      guard let digest = Digest(String(d)) else { throw bad("malformed digest \(quote(String(d))) (sha256:<64 hex> expected)") }
      self.digest = digest
      rest = rest[..<at]
    }
    let lastSlash = rest.lastIndex(of: "/")
    if let colon = rest.lastIndex(of: ":"), lastSlash.map({ colon > $0 }) ?? true {
      let t = String(rest[rest.index(after: colon)...])
      guard Self.validTag(t) else { throw bad("malformed tag \(quote(t))") }
      tag = t
      rest = rest[..<colon]
    }
    var registry = "docker.io"
    var path = rest
    if let slash = rest.firstIndex(of: "/") {
      let first = rest[..<slash]
      if first.contains(".") || first.contains(":") || first == "localhost" {
        registry = String(first)
        path = rest[rest.index(after: slash)...]
      }
    }
    if registry == "index.docker.io" || registry == "registry-1.docker.io" { registry = "docker.io" }
    guard Self.validHost(registry) else { throw bad("malformed registry \(quote(registry))") }
    if registry == "docker.io" && !path.contains("/") { path = "library/" + path }
    let repository = String(path)
    guard Self.validRepository(repository) else {
      throw bad("malformed repository \(quote(repository)) (lowercase letters, digits and . _ - / separators)")
    }
    self.registry = registry
    self.repository = repository
    if tag == nil && digest == nil { tag = "latest" }
  }

  /// What the registry's manifest endpoint takes: the digest if there is one, else the tag.
  public var object: String { digest?.description ?? tag ?? "latest" }

  /// The same repository, pinned to `digest`.
  public func with(digest: Digest) -> Reference {
    Reference(registry: registry, repository: repository, tag: tag, digest: digest)
  }

  public var description: String {
    var s = "\(registry)/\(repository)"
    if let tag { s += ":\(tag)" }
    if let digest { s += "@\(digest)" }
    return s
  }

  static func validTag(_ t: String) -> Bool {
    guard let first = t.utf8.first, t.utf8.count <= 128 else { return false }
    func word(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x5f }
    return word(first) && t.utf8.allSatisfy { word($0) || $0 == 0x2e || $0 == 0x2d }
  }

  static func validRepository(_ r: String) -> Bool {
    guard !r.isEmpty, r.utf8.count <= 255 else { return false }
    for component in r.split(separator: "/", omittingEmptySubsequences: false) {
      let u = Array(component.utf8)
      guard let f = u.first, let l = u.last else { return false }
      func alnum(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7a) }
      guard alnum(f), alnum(l), u.allSatisfy({ alnum($0) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d }) else { return false }
    }
    return true
  }

  /// The distribution reference grammar's host: DNS labels joined by `.` (each starts and
  /// ends with a letter or digit, `-` inside), or a bracketed IPv6 address; then an
  /// optional `:port`. So `..`, `.x` or `a..b` are not hosts.
  static func validHost(_ h: String) -> Bool {
    var host = Substring(h)
    if host.hasPrefix("[") {
      guard let close = host.firstIndex(of: "]") else { return false }
      let inner = host[host.index(after: host.startIndex)..<close]
      guard !inner.isEmpty, inner.utf8.allSatisfy({ isHex($0) || $0 == 0x3a || $0 == 0x2e }) else { return false }
      host = host[host.index(after: close)...]
      guard host.isEmpty || host.hasPrefix(":") else { return false }
    } else {
      let name = host.prefix { $0 != ":" }
      host = host[name.endIndex...]
      guard !name.isEmpty, name.utf8.count <= 253 else { return false }
      for label in name.split(separator: ".", omittingEmptySubsequences: false) {
        let u = Array(label.utf8)
        func alnum(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) }
        guard let f = u.first, let l = u.last, alnum(f), alnum(l), u.allSatisfy({ alnum($0) || $0 == 0x2d }) else { return false }
      }
    }
    if host.isEmpty { return true }
    let port = host.dropFirst()
    guard (1...5).contains(port.utf8.count), port.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(port) else { return false }
    return n <= 65535
  }

  private static func isHex(_ c: UInt8) -> Bool {
    (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
  }
}

/// The platform an image index is resolved for: `os/architecture[/variant]`.
public struct Platform: Hashable, Sendable, CustomStringConvertible {
  public var os: String
  public var architecture: String
  public var variant: String?

  public init(os: String, architecture: String, variant: String? = nil) {
    self.os = os
    self.architecture = architecture
    self.variant = variant
  }

  /// Parses `os/arch[/variant]` (as `--platform` takes it); `arch` alone means linux.
  public init(parsing text: String) throws(RegistryError) {
    let parts = text.lowercased().split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    guard (1...3).contains(parts.count), parts.allSatisfy({ !$0.isEmpty }) else {
      throw .invalid("platform \(quote(text)): os/arch[/variant] expected")
    }
    // As containerd's platforms.Parse: each part letters, digits, `_` and `-`.
    for part in parts where part.utf8.count > 64 || !part.utf8.allSatisfy(Self.specifierByte) {
      throw .invalid("platform \(quote(text)): \(quote(part)) is not a valid os, architecture or variant (letters, digits, _ and -)")
    }
    if parts.count == 1 {
      self.init(os: "linux", architecture: parts[0])
    } else {
      self.init(os: parts[0], architecture: parts[1], variant: parts.count == 3 ? parts[2] : nil)
    }
    architecture = Self.normalize(architecture)
    if architecture == "arm64" && variant == "v8" { variant = nil }
  }

  static func specifierByte(_ c: UInt8) -> Bool {
    (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c == 0x5f || c == 0x2d
  }

  /// This machine's platform (linux/amd64 on x86_64).
  public static var host: Platform {
    #if arch(x86_64)
      return Platform(os: "linux", architecture: "amd64")
    #elseif arch(arm64)
      return Platform(os: "linux", architecture: "arm64")
    #elseif arch(arm)
      return Platform(os: "linux", architecture: "arm", variant: "v7")
    #else
      return Platform(os: "linux", architecture: "unknown")
    #endif
  }

  public var description: String { "\(os)/\(architecture)" + (variant.map { "/\($0)" } ?? "") }

  /// Whether an index entry's platform serves this one: same os and architecture, and the
  /// variant asked for (any when none is asked; arm64's v8 is arm64 without one).
  func matches(os: String?, architecture: String?, variant: String?) -> Bool {
    guard os?.lowercased() == self.os, let a = architecture.map({ Self.normalize($0.lowercased()) }), a == self.architecture else {
      return false
    }
    guard let want = self.variant else { return true }
    return variant?.lowercased() == want
  }

  static func normalize(_ arch: String) -> String {
    switch arch {
    case "x86_64", "x86-64": return "amd64"
    case "aarch64": return "arm64"
    case "i386": return "386"
    default: return arch
    }
  }
}

func quote(_ s: String) -> String { "\"" + s + "\"" }
