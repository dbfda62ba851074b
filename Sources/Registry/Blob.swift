import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Unpack

/// A blob's bytes as they arrive from the registry (see `RegistryClient.blob`). Each
/// iteration downloads the blob anew. Throws `RegistryError`: `digestMismatch` when the
/// bytes do not match the descriptor's digest or size (before the last chunk's end is
/// reported), `truncated` when the body broke off and resuming did not complete it,
/// `notFound`, `unauthorized`, `unreachable`, `server`.
public struct BlobStream: AsyncSequence, Sendable {
  public typealias Element = ByteBuffer

  let client: RegistryClient
  let reference: Reference
  public let descriptor: Descriptor
  /// Whether the bytes are hashed and checked against the descriptor's digest (the size is
  /// checked always). Off for a consumer that hashes them itself (the layer importer).
  var verifyDigest = true

  public func makeAsyncIterator() -> Iterator {
    Iterator(client: client, reference: reference, descriptor: descriptor, verifyDigest: verifyDigest)
  }

  public struct Iterator: AsyncIteratorProtocol {
    let client: RegistryClient
    let reference: Reference
    let descriptor: Descriptor
    private var session: Session?
    private var body: HTTPClientResponse.Body.AsyncIterator?
    let verifyDigest: Bool
    private var hasher = Unpack.Hasher()
    /// Bytes received so far.
    private var received: Int64 = 0
    /// Bytes of the current body to drop: what a server that ignored Range sends again.
    private var skip: Int64 = 0
    private var resumes = 0
    private var resumesWithoutProgress = 0
    private var progressAtOpen: Int64 = 0
    private var finished = false
    private var lastEndpoint = 0

    init(client: RegistryClient, reference: Reference, descriptor: Descriptor, verifyDigest: Bool) {
      self.client = client
      self.reference = reference
      self.descriptor = descriptor
      self.verifyDigest = verifyDigest
    }

    private var object: String { descriptor.digest.description }

    public mutating func next() async throws -> ByteBuffer? {
      do {
        return try await nextChunk()
      } catch {
        finished = true
        body = nil
        throw error
      }
    }

    private mutating func nextChunk() async throws(RegistryError) -> ByteBuffer? {
      while !finished {
        if body == nil { try await open() }
        var chunk: ByteBuffer?
        do {
          chunk = try await body!.next()
        } catch {
          body = nil
          if Task.isCancelled {
            throw session!.error(.truncated, object: object, "cancelled after \(received) of \(descriptor.size) bytes")
          }
          try resumeOrFail("the body broke off after \(received) of \(descriptor.size) bytes: \(describe(error))")
          continue
        }
        guard var chunk else {
          body = nil
          if received < descriptor.size {
            try resumeOrFail("the body ended after \(received) of \(descriptor.size) bytes")
            continue
          }
          finished = true
          let digest = verifyDigest ? hasher.finalize() : descriptor.digest
          guard digest == descriptor.digest else {
            throw session!.error(.digestMismatch, object: object, "the blob's \(received) bytes have digest \(digest)")
          }
          return nil
        }
        if skip > 0 {
          let drop = Int(Swift.min(skip, Int64(chunk.readableBytes)))
          chunk.moveReaderIndex(forwardBy: drop)
          skip -= Int64(drop)
          if chunk.readableBytes == 0 { continue }
        }
        guard received + Int64(chunk.readableBytes) <= descriptor.size else {
          finished = true
          body = nil
          throw session!.error(.digestMismatch, object: object, "the blob is longer than its \(descriptor.size) bytes")
        }
        if verifyDigest { chunk.withUnsafeReadableBytes { hasher.update($0) } }
        received += Int64(chunk.readableBytes)
        return chunk
      }
      return nil
    }

    /// After a broken body: counts a resume, or throws `truncated` when they are used up
    /// (too many in a row without progress).
    private mutating func resumeOrFail(_ why: String) throws(RegistryError) {
      if received > progressAtOpen { resumesWithoutProgress = 0 } else { resumesWithoutProgress += 1 }
      resumes += 1
      let limit = client.configuration.maxResumes
      if resumesWithoutProgress > limit || resumes > limit * 8 || limit == 0 {
        finished = true
        throw session!.error(.truncated, object: object, why + " (\(resumes - 1) resumes)")
      }
    }

    /// Requests the blob (from `received` on, with Range, after the first time) from the
    /// first host that has it.
    private mutating func open() async throws(RegistryError) {
      if session == nil { session = try Session(client: client, reference: reference) }
      let s = session!
      progressAtOpen = received
      let eps = s.endpoints.enumerated().filter { $0.element.host.capabilities.contains(.pull) }
      guard !eps.isEmpty else { throw s.error(.notFound, object: object, "no configured host may pull") }
      // The host that served the start serves the rest, if it still can.
      let ordered = eps.filter { $0.offset == lastEndpoint } + eps.filter { $0.offset != lastEndpoint }
      var first: RegistryError?
      for (i, ep) in ordered {
        var headers = HTTPHeaders()
        if received > 0 { headers.add(name: "Range", value: "bytes=\(received)-") }
        let response: HTTPClientResponse
        do throws(RegistryError) {
          response = try await s.send(ep, .GET, s.url(ep, "blobs", object), headers: headers, object: object, deadline: .distantFuture)
        } catch {
          if first == nil || first?.kind == .notFound { first = error }
          continue
        }
        switch response.status {
        case .ok:
          skip = received  // a whole body again: drop what we have
        case .partialContent:
          let range = response.headers.first(name: "Content-Range") ?? ""
          guard range.hasPrefix("bytes \(received)-") else {
            if first == nil {
              first = s.error(.server, ep, object: object, "answered a Range request for bytes \(received)- with \(quote(range))")
            }
            continue
          }
          skip = 0
        default:
          let e = await s.statusError(response, ep, object: object, what: "blob")
          if first == nil || first?.kind == .notFound { first = e }
          continue
        }
        lastEndpoint = i
        body = response.body.makeAsyncIterator()
        return
      }
      finished = true
      if received > 0, let e = first {
        throw s.error(.truncated, object: object, "resuming at byte \(received) of \(descriptor.size) failed: \(e.detail)")
      }
      throw first!
    }
  }
}
