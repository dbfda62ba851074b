import Foundation
import Synchronization

/// One challenge of a `WWW-Authenticate` header: `Bearer realm="…",service="…",scope="…"`
/// or `Basic realm="…"`.
struct AuthChallenge: Hashable, Sendable {
  var scheme: String  // lowercased: "bearer", "basic"
  var parameters: [String: String]  // keys lowercased

  var realm: String? { parameters["realm"] }
  var service: String? { parameters["service"] }
  var scope: String? { parameters["scope"] }

  /// Every challenge in a header value (RFC 7235: `scheme param=value, param="v", scheme2 …`).
  static func parse(_ header: String) -> [AuthChallenge] {
    var out: [AuthChallenge] = []
    let s = Array(header.utf8)
    var i = 0
    func skipSpace() { while i < s.count && (s[i] == 0x20 || s[i] == 0x09 || s[i] == 0x2c) { i += 1 } }
    func token() -> String {
      let start = i
      while i < s.count, s[i] != 0x20, s[i] != 0x09, s[i] != 0x2c, s[i] != 0x3d { i += 1 }
      return String(decoding: s[start..<i], as: UTF8.self)
    }
    while true {
      skipSpace()
      guard i < s.count else { break }
      let word = token()
      // "key=" continues the current challenge; a bare word starts a new one.
      var j = i
      while j < s.count && (s[j] == 0x20 || s[j] == 0x09) { j += 1 }
      if j < s.count && s[j] == 0x3d, !out.isEmpty {
        i = j + 1
        while i < s.count && (s[i] == 0x20 || s[i] == 0x09) { i += 1 }
        var value: [UInt8] = []
        if i < s.count && s[i] == 0x22 {
          i += 1
          while i < s.count && s[i] != 0x22 {
            if s[i] == 0x5c && i + 1 < s.count { i += 1 }
            value.append(s[i])
            i += 1
          }
          i += 1
        } else {
          while i < s.count && s[i] != 0x2c && s[i] != 0x20 {
            value.append(s[i])
            i += 1
          }
        }
        out[out.count - 1].parameters[word.lowercased()] = String(decoding: value, as: UTF8.self)
      } else if !word.isEmpty {
        out.append(AuthChallenge(scheme: word.lowercased(), parameters: [:]))
      } else {
        i += 1  // a stray '='
      }
    }
    return out
  }
}

/// What the client has learnt about authenticating to each host, and the bearer tokens it
/// holds: one per (realm, service, scope), kept until shortly before it expires.
final class AuthCache: Sendable {
  struct Token: Sendable {
    var value: String
    var expires: ContinuousClock.Instant
  }

  private let challenges = Mutex<[String: AuthChallenge]>([:])
  private let tokens = Mutex<[String: Token]>([:])

  func challenge(for host: String) -> AuthChallenge? { challenges.withLock { $0[host] } }
  func setChallenge(_ c: AuthChallenge, for host: String) { challenges.withLock { $0[host] = c } }

  static func key(_ c: AuthChallenge, scope: String) -> String {
    "\(c.realm ?? "")|\(c.service ?? "")|\(scope)"
  }

  func token(_ key: String) -> String? {
    tokens.withLock { t in
      guard let tok = t[key] else { return nil }
      if tok.expires <= .now {
        t[key] = nil
        return nil
      }
      return tok.value
    }
  }

  func store(_ key: String, _ value: String, lifetime: Duration) {
    tokens.withLock { $0[key] = Token(value: value, expires: .now + lifetime) }
  }

  func forget(_ key: String) { _ = tokens.withLock { $0.removeValue(forKey: key) } }
}

/// A token service's answer (Docker's token spec: `token`, or OAuth's `access_token`).
struct TokenResponse: Decodable {
  var token: String?
  var access_token: String?
  var expires_in: Int?

  var value: String? { (token?.isEmpty == false ? token : nil) ?? (access_token?.isEmpty == false ? access_token : nil) }
  /// Tokens are used until 10 s before they expire; the spec's default lifetime is 60 s.
  var lifetime: Duration { .seconds(max((expires_in ?? 60) - 10, 5)) }
}

func basicAuthorization(_ c: Credentials) -> String {
  "Basic " + Data("\(c.username):\(c.password)".utf8).base64EncodedString()
}
