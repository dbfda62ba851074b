/// The TOML that containerd's `hosts.toml` files are written in, parsed here rather than
/// with a library: TOMLKit's toml++ 3 asserts what hostile input breaks (`scripts/fuzz hosts`
/// hit three assertions in a minute: a table header starting with a backtick, a value that
/// is a terminator, after a byte order mark), and in release builds those assertions are
/// compiler assumptions, so undefined behaviour. This parser is small, keeps keys in file
/// order (the order hosts are tried), bounds its nesting, and fails with a line number.
///
/// Supported: comments; bare, quoted and dotted keys; `[table]` headers (dotted, quoted);
/// basic, literal and multi-line strings with TOML's escapes; integers (with `_`, hex, octal,
/// binary), floats, booleans; arrays (nested, multi-line, trailing comma) and inline
/// tables. Not supported, and refused by name: `[[arrays of tables]]` and dates, which
/// hosts.toml does not use.
public indirect enum TOMLValue: Sendable, Equatable {
  case string(String)
  case integer(Int64)
  case float(Double)
  case bool(Bool)
  case array([TOMLValue])
  case table(TOMLTable)

  public var string: String? { if case .string(let s) = self { s } else { nil } }
  public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
  public var array: [TOMLValue]? { if case .array(let a) = self { a } else { nil } }
  public var table: TOMLTable? { if case .table(let t) = self { t } else { nil } }
}

/// A TOML table: its keys in the order the file gives them.
public struct TOMLTable: Sendable, Equatable {
  public private(set) var keys: [String] = []
  private var values: [String: TOMLValue] = [:]

  public init() {}

  public subscript(key: String) -> TOMLValue? { values[key] }

  mutating func set(_ key: String, _ value: TOMLValue) {
    if values[key] == nil { keys.append(key) }
    values[key] = value
  }

  /// Parses a whole document.
  public init(parsing text: String) throws(TOMLError) {
    var p = TOMLParser(Array(text.unicodeScalars))
    self = try p.document()
  }
}

public struct TOMLError: Error, CustomStringConvertible, Sendable {
  public let line: Int
  public let message: String
  public var description: String { "line \(line): \(message)" }
}

private struct TOMLParser {
  let c: [Unicode.Scalar]
  var i = 0
  /// Arrays and inline tables nested deeper than this are refused (the stack is bounded).
  static let maxDepth = 64

  init(_ c: [Unicode.Scalar]) {
    self.c = c
    if c.first == "\u{FEFF}" { i = 1 }  // a byte order mark
  }

  var line: Int { c[..<min(i, c.count)].reduce(1) { $1 == "\n" ? $0 + 1 : $0 } }
  func fail(_ why: String) -> TOMLError { TOMLError(line: line, message: why) }
  func peek(_ k: Int = 0) -> Unicode.Scalar? { i + k < c.count ? c[i + k] : nil }

  mutating func skipBlanks() { while let x = peek(), x == " " || x == "\t" { i += 1 } }

  /// Blanks, newlines and comments.
  mutating func skipTrivia() throws(TOMLError) {
    while let x = peek() {
      if x == " " || x == "\t" || x == "\n" {
        i += 1
      } else if x == "\r", peek(1) == "\n" {
        i += 2
      } else if x == "#" {
        try comment()
      } else {
        return
      }
    }
  }

  mutating func comment() throws(TOMLError) {
    while let x = peek(), x != "\n" {
      if x == "\r" && peek(1) == "\n" { return }
      if Self.isControl(x) && x != "\t" { throw fail("control character in a comment") }
      i += 1
    }
  }

  /// After a key/value or a header: blanks, an optional comment, then the end of the line.
  mutating func endOfLine() throws(TOMLError) {
    skipBlanks()
    if peek() == "#" { try comment() }
    guard let x = peek() else { return }
    if x == "\n" {
      i += 1
    } else if x == "\r", peek(1) == "\n" {
      i += 2
    } else {
      throw fail("expected the end of the line, found \(Self.shown(x))")
    }
  }

  mutating func document() throws(TOMLError) -> TOMLTable {
    var root = TOMLTable()
    var current: [String] = []  // the path of the table being filled
    var defined: Set<[String]> = []  // tables given a [header] already
    while true {
      try skipTrivia()
      guard let x = peek() else { return root }
      if x == "[" {
        if peek(1) == "[" { throw fail("arrays of tables ([[...]]) are not supported") }
        i += 1
        skipBlanks()
        let path = try key()
        skipBlanks()
        guard peek() == "]" else { throw fail("expected ] to close the table header") }
        guard current.count + path.count <= Self.maxDepth else { throw fail("tables nested deeper than \(Self.maxDepth)") }
        i += 1
        try endOfLine()
        guard defined.insert(path).inserted else { throw fail("table \(path.joined(separator: ".")) defined twice") }
        do { try Self.ensureTable(&root, path[...]) } catch { throw fail(error.message) }
        current = path
      } else {
        let path = try key()
        skipBlanks()
        guard peek() == "=" else { throw fail("expected = after the key") }
        i += 1
        skipBlanks()
        let v = try value(depth: 0)
        guard current.count + path.count <= Self.maxDepth else { throw fail("tables nested deeper than \(Self.maxDepth)") }
        do { try Self.insert(&root, current + path, v) } catch { throw fail(error.message) }
        try endOfLine()
      }
    }
  }

  /// Makes the tables along `path` (each must be a table if it exists). Errors carry no
  /// line: the caller adds it (counting lines is left to failures).
  static func ensureTable(_ t: inout TOMLTable, _ path: ArraySlice<String>) throws(TOMLError) {
    guard let first = path.first else { return }
    var sub: TOMLTable
    switch t[first] {
    case nil: sub = TOMLTable()
    case .table(let existing): sub = existing
    default: throw TOMLError(line: 0, message: "\(first) is not a table")
    }
    try ensureTable(&sub, path.dropFirst())
    t.set(first, .table(sub))
  }

  /// Sets `path`'s last key in the table its other keys name; a key given twice is an error.
  static func insert(_ t: inout TOMLTable, _ path: [String], _ v: TOMLValue) throws(TOMLError) {
    guard let last = path.last else { return }
    try ensureTable(&t, path.dropLast()[...])
    func put(_ t: inout TOMLTable, _ rest: ArraySlice<String>) throws(TOMLError) {
      guard let first = rest.first else { return }
      if rest.count == 1 {
        guard t[last] == nil else { throw TOMLError(line: 0, message: "key \(last) given twice") }
        t.set(last, v)
        return
      }
      guard case .table(var sub) = t[first] else { throw TOMLError(line: 0, message: "\(first) is not a table") }
      try put(&sub, rest.dropFirst())
      t.set(first, .table(sub))
    }
    try put(&t, path[...])
  }

  /// A key: bare or quoted parts joined by dots.
  mutating func key() throws(TOMLError) -> [String] {
    var parts: [String] = []
    while true {
      skipBlanks()
      guard let x = peek() else { throw fail("expected a key") }
      if x == "\"" {
        i += 1
        parts.append(try lineString("\""))
      } else if x == "'" {
        i += 1
        parts.append(try lineString("'"))
      } else {
        let start = i
        while let y = peek(), Self.isBareKey(y) { i += 1 }
        guard i > start else { throw fail("expected a key, found \(Self.shown(x))") }
        parts.append(String(String.UnicodeScalarView(c[start..<i])))
      }
      skipBlanks()
      guard peek() == "." else { return parts }
      // Tables are made and filled recursively along a dotted key: bounded like nesting.
      guard parts.count < Self.maxDepth else { throw fail("a key of more than \(Self.maxDepth) parts") }
      i += 1
    }
  }

  mutating func value(depth: Int) throws(TOMLError) -> TOMLValue {
    guard depth < Self.maxDepth else { throw fail("arrays or tables nested deeper than \(Self.maxDepth)") }
    guard let x = peek() else { throw fail("expected a value") }
    switch x {
    case "\"":
      if peek(1) == "\"" && peek(2) == "\"" {
        i += 3
        return .string(try multilineString(literal: false))
      }
      i += 1
      return .string(try lineString("\""))
    case "'":
      if peek(1) == "'" && peek(2) == "'" {
        i += 3
        return .string(try multilineString(literal: true))
      }
      i += 1
      return .string(try lineString("'"))
    case "[":
      i += 1
      var items: [TOMLValue] = []
      while true {
        try skipTrivia()
        if peek() == "]" {
          i += 1
          return .array(items)
        }
        items.append(try value(depth: depth + 1))
        try skipTrivia()
        if peek() == "," {
          i += 1
        } else if peek() == "]" {
          i += 1
          return .array(items)
        } else {
          throw fail("expected , or ] in an array")
        }
      }
    case "{":
      i += 1
      var t = TOMLTable()
      skipBlanks()
      if peek() == "}" {
        i += 1
        return .table(t)
      }
      while true {
        let path = try key()
        skipBlanks()
        guard peek() == "=" else { throw fail("expected = in an inline table") }
        i += 1
        skipBlanks()
        let v = try value(depth: depth + 1)
        do { try Self.insert(&t, path, v) } catch { throw fail(error.message) }
        skipBlanks()
        if peek() == "," {
          i += 1
        } else if peek() == "}" {
          i += 1
          return .table(t)
        } else {
          throw fail("expected , or } in an inline table")
        }
      }
    default:
      return try scalar()
    }
  }

  /// true, false, a number; anything else (a date among them) is refused.
  mutating func scalar() throws(TOMLError) -> TOMLValue {
    let start = i
    while let y = peek(), !(y == " " || y == "\t" || y == "\n" || y == "\r" || y == "," || y == "]" || y == "}" || y == "#") { i += 1 }
    let word = String(String.UnicodeScalarView(c[start..<i]))
    switch word {
    case "true": return .bool(true)
    case "false": return .bool(false)
    case "inf", "+inf": return .float(.infinity)
    case "-inf": return .float(-.infinity)
    case "nan", "+nan", "-nan": return .float(.nan)
    default: break
    }
    guard !word.isEmpty else { throw fail("expected a value") }
    let digits = word.replacingOccurrences(of: "_", with: "")
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where digits.hasPrefix(prefix) {
      guard let n = Int64(digits.dropFirst(2), radix: radix), !word.hasSuffix("_") else { throw fail("malformed number \(word)") }
      return .integer(n)
    }
    if let n = Int64(digits), !word.hasPrefix("_"), !word.hasSuffix("_") { return .integer(n) }
    if digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), let f = Double(digits), f.isFinite { return .float(f) }
    throw fail("unsupported value \(Self.shown(word))")
  }

  /// After the opening quote of a one-line string, to the closing one; escapes count in a
  /// basic (`"`) string only.
  mutating func lineString(_ quote: Unicode.Scalar) throws(TOMLError) -> String {
    var out = String.UnicodeScalarView()
    while let x = peek() {
      i += 1
      if x == quote { return String(out) }
      if x == "\n" || (Self.isControl(x) && x != "\t") { throw fail("control character or newline in a string") }
      out.append(quote == "\"" && x == "\\" ? try escape() : x)
    }
    throw fail("unterminated string")
  }

  /// After the opening `"""` or `'''`: a newline right after it is dropped; in a basic one
  /// a backslash at the end of a line swallows the line break and following blanks.
  mutating func multilineString(literal: Bool) throws(TOMLError) -> String {
    let quote: Unicode.Scalar = literal ? "'" : "\""
    if peek() == "\n" {
      i += 1
    } else if peek() == "\r", peek(1) == "\n" {
      i += 2
    }
    var out = String.UnicodeScalarView()
    while let x = peek() {
      if x == quote, peek(1) == quote, peek(2) == quote {
        i += 3
        // Up to two more quotes belong to the string.
        for _ in 0..<2 where peek() == quote {
          out.append(quote)
          i += 1
        }
        return String(out)
      }
      i += 1
      if !literal && x == "\\" {
        var j = i
        while j < c.count, c[j] == " " || c[j] == "\t" { j += 1 }
        if j < c.count, c[j] == "\n" || c[j] == "\r" {
          i = j
          while let y = peek(), y == " " || y == "\t" || y == "\n" || y == "\r" { i += 1 }
          continue
        }
        out.append(try escape())
      } else if Self.isControl(x) && x != "\t" && x != "\n" && !(x == "\r" && peek() == "\n") {
        throw fail("control character in a string")
      } else {
        out.append(x)
      }
    }
    throw fail("unterminated multi-line string")
  }

  /// After a backslash in a basic string.
  mutating func escape() throws(TOMLError) -> Unicode.Scalar {
    guard let e = peek() else { throw fail("unterminated string") }
    i += 1
    switch e {
    case "b": return "\u{08}"
    case "t": return "\t"
    case "n": return "\n"
    case "f": return "\u{0C}"
    case "r": return "\r"
    case "e": return "\u{1B}"
    case "\"": return "\""
    case "\\": return "\\"
    case "u", "U":
      let n = e == "u" ? 4 : 8
      guard i + n <= c.count else { throw fail("short \\\(e) escape") }
      let hex = String(String.UnicodeScalarView(c[i..<(i + n)]))
      i += n
      guard hex.unicodeScalars.allSatisfy(\.properties.isASCIIHexDigit), let v = UInt32(hex, radix: 16), let s = Unicode.Scalar(v) else {
        throw fail("invalid \\\(e) escape \(hex)")
      }
      return s
    default:
      throw fail("invalid escape \\\(Self.shown(e))")
    }
  }

  static func isBareKey(_ x: Unicode.Scalar) -> Bool {
    ("a"..."z").contains(x) || ("A"..."Z").contains(x) || ("0"..."9").contains(x) || x == "_" || x == "-"
  }

  static func isControl(_ x: Unicode.Scalar) -> Bool { x.value < 0x20 || x.value == 0x7f }

  static func shown(_ x: Unicode.Scalar) -> String { isControl(x) ? "U+\(String(x.value, radix: 16))" : "\"\(x)\"" }
  static func shown(_ s: String) -> String { "\"\(s.prefix(40))\"" }
}
