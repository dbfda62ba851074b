import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Unpack

/// How a `RegistryClient` finds hosts and credentials, and its limits.
public struct RegistryConfiguration: Sendable {
  /// Registry hosts, mirrors and their TLS settings (containerd's `config_path`).
  public var hosts = HostsConfiguration()
  /// Docker's config.json, read at each resolve and blob fetch (nil: no credentials).
  public var dockerConfigPath: String? = DockerConfig.defaultPath
  /// Credentials used instead of reading `dockerConfigPath`, when set.
  public var credentials: DockerConfig?
  public var userAgent = "snapshotd"
  /// Manifests, indexes and configs larger than this are refused before decoding.
  public var maxManifestSize = 4 << 20
  public var connectTimeout: TimeAmount = .seconds(15)
  /// A connection that sends nothing for this long is given up (and a blob resumed).
  public var readTimeout: TimeAmount = .seconds(30)
  /// Manifest and token requests must finish within this.
  public var requestTimeout: TimeAmount = .seconds(120)
  /// Range requests made for one blob after its body broke off without progress.
  public var maxResumes = 3

  public init() {}
}

/// A client of the OCI distribution API (registries such as Docker Hub or
/// `docker-registry`): resolves references to a platform's manifest and streams blobs,
/// verified against their digests, with containerd's host configuration and Docker's
/// credentials. Safe to use from several tasks at once; `shutdown()` it when done.
public final class RegistryClient: Sendable {
  public let configuration: RegistryConfiguration
  let http: HTTPClient
  let auth = AuthCache()

  public init(configuration: RegistryConfiguration = RegistryConfiguration()) {
    self.configuration = configuration
    var c = HTTPClient.Configuration()
    // Registries send blobs to object storage; AsyncHTTPClient drops Authorization on a
    // redirect to another origin and keeps Range.
    c.redirectConfiguration = .follow(max: 10, allowCycles: false)
    c.timeout = .init(connect: configuration.connectTimeout, read: configuration.readTimeout)
    c.decompression = .disabled
    http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
  }

  public func shutdown() async throws {
    try await http.shutdown()
  }

  // MARK: resolving

  /// Resolves `reference` to the manifest for `platform`, through an index or manifest
  /// list when the reference names one. Manifests named by digest (the reference's, an
  /// index entry's) are verified against it; the config is fetched and verified, and its
  /// diffIDs paired with the manifest's layers.
  public func resolve(_ reference: Reference, platform: Platform = .host) async throws(RegistryError) -> ResolvedImage {
    let session = try Session(client: self, reference: reference)
    var top = try await session.manifest(reference.object, expected: reference.digest, resolving: reference.digest == nil)
    var index: Descriptor?
    if ManifestMediaType.isIndex(top.mediaType) {
      index = Descriptor(mediaType: top.mediaType, digest: top.digest, size: Int64(top.bytes.count))
      guard let entries = top.raw.manifests else {
        throw session.error(.badManifest, object: top.digest.description, "index without manifests")
      }
      guard let entry = selectManifest(entries, for: platform) else {
        let offered = entries.compactMap { e in
          e.platform.map { "\($0.os ?? "?")/\($0.architecture ?? "?")" + ($0.variant.map { "/\($0)" } ?? "") }
        }
        throw session.error(
          .notFound, object: reference.object,
          "no manifest for \(platform) in the index (it has \(offered.isEmpty ? "none with a platform" : offered.joined(separator: ", ")))")
      }
      guard let d = Digest(entry.digest) else {
        throw session.error(.badManifest, object: top.digest.description, "index entry with malformed digest \(quote(entry.digest))")
      }
      top = try await session.manifest(d.description, expected: d, resolving: false)
      guard ManifestMediaType.isManifest(top.mediaType) else {
        throw session.error(.badManifest, object: d.description, "index entry for \(platform) is a \(top.mediaType), not an image manifest")
      }
    }
    guard ManifestMediaType.isManifest(top.mediaType) else {
      throw session.error(.badManifest, object: reference.object, "unsupported manifest media type \(top.mediaType)")
    }
    let object = top.digest.description
    let layerType =
      top.mediaType == ManifestMediaType.dockerManifest
      ? "application/vnd.docker.image.rootfs.diff.tar.gzip" : "application/vnd.oci.image.layer.v1.tar+gzip"
    guard let rawConfig = top.raw.config,
      let config = rawConfig.descriptor(defaultType: "application/vnd.oci.image.config.v1+json")
    else {
      throw session.error(.badManifest, object: object, "manifest without a valid config descriptor")
    }
    var blobs: [Descriptor] = []
    for l in top.raw.layers ?? [] {
      guard let d = l.descriptor(defaultType: layerType) else {
        throw session.error(.badManifest, object: object, "layer with malformed digest \(quote(l.digest)) or size")
      }
      blobs.append(d)
    }
    let configBytes = try await session.smallBlob(config)
    let image: RawConfig
    do { image = try JSONDecoder().decode(RawConfig.self, from: Data(configBytes)) } catch {
      throw session.error(.badManifest, object: config.digest.description, "image config does not decode: \(error)")
    }
    let diffIDs = try (image.rootfs?.diff_ids ?? []).map { s throws(RegistryError) -> Digest in
      guard let d = Digest(s) else { throw session.error(.badManifest, object: config.digest.description, "malformed diff_id \(quote(s))") }
      return d
    }
    guard diffIDs.count == blobs.count else {
      throw session.error(.badManifest, object: object, "\(blobs.count) layers but \(diffIDs.count) diff_ids in config \(config.digest)")
    }
    return ResolvedImage(
      reference: reference,
      manifest: Descriptor(mediaType: top.mediaType, digest: top.digest, size: Int64(top.bytes.count)),
      index: index,
      config: config,
      platform: Platform(os: image.os ?? platform.os, architecture: image.architecture ?? platform.architecture, variant: image.variant),
      layers: zip(blobs, diffIDs).map { RemoteLayer(blob: $0, diffID: $1) }
    )
  }

  // MARK: blobs

  /// The bytes of blob `descriptor` of `reference`'s repository, as they arrive: a body
  /// that breaks off is resumed with a Range request; its size and digest are checked as
  /// it streams, and the sequence throws (a `RegistryError`) instead of ending when they do
  /// not match, so a consumer that commits only at the end commits nothing bad. Memory is
  /// bounded: the next chunk is read from the connection when the consumer asks for it.
  public func blob(_ reference: Reference, _ descriptor: Descriptor) -> BlobStream {
    BlobStream(client: self, reference: reference, descriptor: descriptor)
  }

  /// The blob as a `ByteSource` for the layer importer: a task downloads it, up to
  /// `buffer` bytes ahead of the reader. With `verifyDigest` false only its size is checked:
  /// the importer hashes every byte itself and refuses a blob whose digest differs
  /// (`LayerImport.digest`), so hashing here too would do that work twice.
  public func blobSource(
    _ reference: Reference, _ descriptor: Descriptor, buffer: Int = 4 << 20, verifyDigest: Bool = true
  ) -> BlobSource {
    var stream = blob(reference, descriptor)
    stream.verifyDigest = verifyDigest
    return BlobSource(stream, limit: buffer)
  }

  func credentials() throws(RegistryError) -> DockerConfig {
    if let c = configuration.credentials { return c }
    guard let path = configuration.dockerConfigPath else { return DockerConfig() }
    return try DockerConfig(path: path)
  }
}

/// A registry host with its TLS settings, for one repository.
struct Endpoint: Sendable {
  var host: RegistryHost
  var tls: TLSConfiguration?
  var credentials: Credentials?
}

/// The hosts and credentials of one operation on one repository, and the requests made
/// to them.
struct Session: Sendable {
  let client: RegistryClient
  let reference: Reference
  let endpoints: [Endpoint]

  init(client: RegistryClient, reference: Reference) throws(RegistryError) {
    self.client = client
    self.reference = reference
    let creds = try client.credentials()
    var eps: [Endpoint] = []
    for h in try client.configuration.hosts.hosts(for: reference.registry) {
      // (config.json's registry-1.docker.io and docker.io are one entry: DockerConfig.normalize)
      eps.append(Endpoint(host: h, tls: try h.tlsConfiguration(), credentials: creds.credentials(for: h.host)))
    }
    endpoints = eps
  }

  func error(_ kind: RegistryError.Kind, object: String, _ detail: String) -> RegistryError {
    RegistryError(kind, registry: reference.registry, repository: reference.repository, object: object, detail)
  }

  func error(_ kind: RegistryError.Kind, _ ep: Endpoint, object: String, _ detail: String) -> RegistryError {
    let via = ep.host.host == reference.registry ? "" : " (via \(ep.host))"
    return error(kind, object: object, detail + via)
  }

  /// `…/v2/<repository>/<kind>/<object>`, with `?ns=<registry>` for a mirror, as containerd
  /// sends it.
  func url(_ ep: Endpoint, _ kind: String, _ object: String) -> String {
    var u = ep.host.url(reference.repository, kind, object)
    if ep.host.host != reference.registry { u += "?ns=" + reference.registry }
    return u
  }

  // MARK: manifests

  struct Manifest {
    var bytes: [UInt8]
    var raw: RawManifest
    var mediaType: String
    var digest: Digest
  }

  /// The manifest or index `object` (a tag or a digest), from the first host that has it.
  func manifest(_ object: String, expected: Digest?, resolving: Bool) async throws(RegistryError) -> Manifest {
    let need: RegistryHost.Capabilities = resolving ? [.pull, .resolve] : [.pull]
    let eps = endpoints.filter { $0.host.capabilities.isSuperset(of: need) }
    guard !eps.isEmpty else { throw error(.notFound, object: object, "no configured host may \(resolving ? "resolve" : "pull")") }
    var first: RegistryError?
    var notFound: RegistryError?
    for ep in eps {
      do throws(RegistryError) {
        return try await manifest(object, expected: expected, from: ep)
      } catch {
        if error.kind == .notFound { notFound = notFound ?? error } else { first = first ?? error }
      }
    }
    throw first ?? notFound!
  }

  private func manifest(_ object: String, expected: Digest?, from ep: Endpoint) async throws(RegistryError) -> Manifest {
    var headers = HTTPHeaders()
    headers.add(name: "Accept", value: ManifestMediaType.accept)
    let response = try await send(ep, .GET, url(ep, "manifests", object), headers: headers, object: object)
    guard response.status == .ok else { throw await statusError(response, ep, object: object, what: "manifest") }
    let bytes = try await collect(response, ep, object: object, what: "manifest")
    let actual = Unpack.Digest.of(bytes)
    if let expected, actual != expected {
      throw error(.digestMismatch, ep, object: object, "manifest content has digest \(actual)")
    }
    let raw: RawManifest
    do { raw = try JSONDecoder().decode(RawManifest.self, from: Data(bytes)) } catch {
      throw self.error(.badManifest, ep, object: object, "manifest does not decode: \(error)")
    }
    let header = response.headers.first(name: "Content-Type").map {
      String($0.split(separator: ";")[0]).trimmingCharacters(in: .whitespaces)
    }
    if raw.schemaVersion == 1 || header == ManifestMediaType.dockerSchema1 || header == ManifestMediaType.dockerSchema1Signed {
      throw error(.badManifest, ep, object: object, "Docker schema 1 manifests are not supported")
    }
    var mediaType = raw.mediaType ?? ""
    if mediaType.isEmpty, let h = header, ManifestMediaType.isIndex(h) || ManifestMediaType.isManifest(h) { mediaType = h }
    if mediaType.isEmpty {
      if raw.manifests != nil {
        mediaType = ManifestMediaType.ociIndex
      } else if raw.config != nil {
        mediaType = ManifestMediaType.ociManifest
      }
    }
    guard ManifestMediaType.isIndex(mediaType) || ManifestMediaType.isManifest(mediaType) else {
      throw error(.badManifest, ep, object: object, "unsupported manifest media type \(mediaType.isEmpty ? "(none)" : mediaType)")
    }
    return Manifest(bytes: bytes, raw: raw, mediaType: mediaType, digest: actual)
  }

  /// A small blob (a config) whole, verified.
  func smallBlob(_ d: Descriptor) async throws(RegistryError) -> [UInt8] {
    let object = d.digest.description
    guard d.size <= client.configuration.maxManifestSize else {
      throw error(
        .badManifest, object: object, "config of \(d.size) bytes is larger than the limit of \(client.configuration.maxManifestSize)")
    }
    var first: RegistryError?
    for ep in endpoints where ep.host.capabilities.contains(.pull) {
      do throws(RegistryError) {
        let response = try await send(ep, .GET, url(ep, "blobs", object), headers: HTTPHeaders(), object: object)
        guard response.status == .ok else { throw await statusError(response, ep, object: object, what: "blob") }
        let bytes = try await collect(response, ep, object: object, what: "config")
        let actual = Unpack.Digest.of(bytes)
        guard actual == d.digest, bytes.count == d.size else {
          throw error(.digestMismatch, ep, object: object, "config blob has \(bytes.count) bytes of digest \(actual), \(d.size) expected")
        }
        return bytes
      } catch {
        if first == nil || first?.kind == .notFound { first = error }
      }
    }
    throw first ?? error(.notFound, object: object, "no configured host may pull")
  }

  private func collect(_ response: HTTPClientResponse, _ ep: Endpoint, object: String, what: String) async throws(RegistryError) -> [UInt8]
  {
    let limit = client.configuration.maxManifestSize
    if let length = response.headers.first(name: "Content-Length").flatMap({ Int($0) }), length > limit {
      throw error(.badManifest, ep, object: object, "\(what) of \(length) bytes is larger than the limit of \(limit)")
    }
    do {
      var buffer = try await response.body.collect(upTo: limit)
      return buffer.readBytes(length: buffer.readableBytes) ?? []
    } catch is NIOTooManyBytesError {
      throw error(.badManifest, ep, object: object, "\(what) is larger than the limit of \(limit) bytes")
    } catch {
      throw self.error(.truncated, ep, object: object, "reading the \(what): \(describe(error))")
    }
  }

  // MARK: requests

  /// Sends a request with this host's headers, TLS settings and authorization; answers a
  /// 401 once by authenticating as its challenge asks (a bearer token for this
  /// repository's pull scope, or basic auth), then gives up with `unauthorized`.
  func send(_ ep: Endpoint, _ method: HTTPMethod, _ url: String, headers: HTTPHeaders, object: String, deadline: NIODeadline? = nil)
    async throws(RegistryError) -> HTTPClientResponse
  {
    var request = HTTPClientRequest(url: url)
    request.method = method
    request.tlsConfiguration = ep.tls
    request.headers.add(name: "User-Agent", value: client.configuration.userAgent)
    for (k, vs) in ep.host.headers { for v in vs { request.headers.add(name: k, value: v) } }
    for (k, v) in headers { request.headers.add(name: k, value: v) }
    let deadline = deadline ?? .now() + client.configuration.requestTimeout
    var fresh = false
    if let a = try await authorization(ep, object: object, refresh: false) {
      request.headers.replaceOrAdd(name: "Authorization", value: a.header)
      fresh = a.fresh
    }
    for attempt in 0..<2 {
      let response: HTTPClientResponse
      do { response = try await client.http.execute(request, deadline: deadline) } catch {
        throw self.error(.unreachable, ep, object: object, "\(method) \(url): \(describe(error))")
      }
      guard response.status == .unauthorized else { return response }
      // Raw values: a challenge's parameters are comma-separated, so no splitting on commas.
      let challenges = AuthChallenge.parse(response.headers["WWW-Authenticate"].joined(separator: ", "))
      let usable = challenges.first { $0.scheme == "bearer" && $0.realm != nil } ?? challenges.first { $0.scheme == "basic" }
      let hadAuth = request.headers.contains(name: "Authorization")
      // Retry once: with a new token or basic credentials, unless what we sent was just made.
      guard attempt == 0, let c = usable, !(hadAuth && fresh && client.auth.challenge(for: ep.host.host) == c) else {
        throw await statusError(response, ep, object: object, what: "request")
      }
      client.auth.setChallenge(c, for: ep.host.host)
      guard let a = try await authorization(ep, object: object, refresh: true) else {
        throw await statusError(response, ep, object: object, what: "request")
      }
      _ = try? await response.body.collect(upTo: 64 << 10)  // read once; the connection serves the retry
      request.headers.replaceOrAdd(name: "Authorization", value: a.header)
    }
    fatalError("unreachable")
  }

  /// The Authorization header for `ep`, from what its last challenge asked: a cached or
  /// new bearer token, or basic credentials. Nil when the host has not asked (or basic
  /// auth without credentials).
  private func authorization(_ ep: Endpoint, object: String, refresh: Bool) async throws(RegistryError) -> (header: String, fresh: Bool)? {
    guard let c = client.auth.challenge(for: ep.host.host) else { return nil }
    if c.scheme == "basic" {
      return ep.credentials.map { (basicAuthorization($0), true) }
    }
    let scope = "repository:\(reference.repository):pull"
    let key = AuthCache.key(c, scope: scope)
    if refresh {
      client.auth.forget(key)
    } else if let t = client.auth.token(key) {
      return ("Bearer " + t, false)
    }
    let token = try await fetchToken(c, scope: scope, ep, object: object)
    client.auth.store(key, token.value, lifetime: token.lifetime)
    return ("Bearer " + token.value, true)
  }

  /// A token from the challenge's realm (Docker's token spec, GET with the service and
  /// scopes, basic auth when there are credentials).
  private func fetchToken(_ c: AuthChallenge, scope: String, _ ep: Endpoint, object: String) async throws(RegistryError) -> (
    value: String, lifetime: Duration
  ) {
    guard let realm = c.realm, var u = URLComponents(string: realm), u.scheme == "http" || u.scheme == "https" else {
      throw error(.unauthorized, ep, object: object, "unusable token realm \(quote(c.realm ?? ""))")
    }
    var items = u.queryItems ?? []
    if let s = c.service { items.append(URLQueryItem(name: "service", value: s)) }
    items.append(URLQueryItem(name: "scope", value: scope))
    if let s = c.scope, s != scope { items.append(URLQueryItem(name: "scope", value: s)) }
    u.queryItems = items
    guard let url = u.string else { throw error(.unauthorized, ep, object: object, "unusable token realm \(quote(realm))") }
    var request = HTTPClientRequest(url: url)
    request.tlsConfiguration = ep.tls
    request.headers.add(name: "User-Agent", value: client.configuration.userAgent)
    if let creds = ep.credentials { request.headers.add(name: "Authorization", value: basicAuthorization(creds)) }
    let response: HTTPClientResponse
    do { response = try await client.http.execute(request, timeout: client.configuration.requestTimeout) } catch {
      throw self.error(.unreachable, ep, object: object, "token service \(realm): \(describe(error))")
    }
    guard response.status == .ok else {
      let kind: RegistryError.Kind = [.unauthorized, .forbidden].contains(response.status) ? .unauthorized : .server
      throw error(
        kind, ep, object: object,
        "token service \(realm) answered \(response.status.code) \(response.status.reasonPhrase)\(ep.credentials == nil ? " (no credentials for \(ep.host.host))" : "")"
      )
    }
    let bytes = try await collect(response, ep, object: object, what: "token")
    guard let t = try? JSONDecoder().decode(TokenResponse.self, from: Data(bytes)), let value = t.value else {
      throw error(.unauthorized, ep, object: object, "token service \(realm) sent no token")
    }
    return (value, t.lifetime)
  }

  /// The error for a response that is not a success: its status, and the registry's own
  /// error message (`{"errors":[{"code","message"}]}`) when it sent one.
  func statusError(_ response: HTTPClientResponse, _ ep: Endpoint, object: String, what: String) async -> RegistryError {
    struct Errors: Decodable {
      struct E: Decodable {
        var code: String?
        var message: String?
      }
      var errors: [E]?
    }
    var detail = "\(response.status.code) \(response.status.reasonPhrase)"
    if var body = try? await response.body.collect(upTo: 16 << 10), let bytes = body.readBytes(length: body.readableBytes),
      let e = try? JSONDecoder().decode(Errors.self, from: Data(bytes)), let list = e.errors, !list.isEmpty
    {
      detail += ": " + list.map { [$0.code, $0.message].compactMap { $0 }.joined(separator: " ") }.joined(separator: "; ")
    }
    let kind: RegistryError.Kind
    switch response.status {
    case .unauthorized, .forbidden:
      kind = .unauthorized
      if ep.credentials == nil { detail += " (no credentials for \(ep.host.host))" }
    case .notFound: kind = .notFound
    default: kind = .server
    }
    return error(kind, ep, object: object, "\(what): \(detail)")
  }
}

/// An error from the HTTP stack in a few words.
func describe(_ error: any Error) -> String {
  if let e = error as? HTTPClientError { return "\(e)" }
  if let e = error as? NIOSSLError { return "TLS: \(e)" }
  if let e = error as? BoringSSLError { return "TLS: \(e)" }
  return "\(error)"
}
