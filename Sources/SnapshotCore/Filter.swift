/// containerd's filter syntax (`filters` package), as the snapshots List call uses it:
///
///     filter   := selector ("," selector)*        all selectors must match
///     selector := fieldpath [("==" | "!=" | "~=") value]
///     fieldpath:= field ("." field)*              a field may be "quoted"
///     value    := "quoted" | /regexp/ | bare text up to the next ","
///
/// A selector without an operator tests that the field is present. Several filters given
/// to List match a snapshot when any of them does. Fields: `kind`, `name`, `parent`,
/// `labels.KEY`.
public struct Filter: Sendable {
  enum Operator: Sendable { case present, equal, notEqual, matches }

  struct Selector: Sendable {
    var fieldpath: [String]
    var op: Operator
    var value: String
    var regex: LinearRegex?
  }

  let selectors: [Selector]

  /// Parses one filter string; an error names the filter and the offending position.
  /// An empty (or blank) filter matches everything, as containerd's `filters.Parse("")`.
  public init(parsing text: String) throws(SnapshotError) {
    if text.unicodeScalars.allSatisfy(\.properties.isWhitespace) {
      selectors = []
      return
    }
    var p = Parser(text: Array(text.unicodeScalars), source: text)
    selectors = try p.parseFilter()
  }

  /// Whether the snapshot matches every selector of this filter.
  public func matches(_ info: SnapshotInfo) -> Bool {
    selectors.allSatisfy { $0.matches(info) }
  }

  /// Whether `info` matches any of `filters` (all snapshots match an empty list).
  public static func matchesAny(_ filters: [Filter], _ info: SnapshotInfo) -> Bool {
    filters.isEmpty || filters.contains { $0.matches(info) }
  }
}

extension Filter.Selector {
  func field(of info: SnapshotInfo) -> String? {
    guard let first = fieldpath.first else { return nil }
    switch first {
    case "kind": return info.kind.name
    case "name": return info.name
    case "parent": return info.parent
    case "labels":
      return info.labels[fieldpath.dropFirst().joined(separator: ".")]
    default: return nil
    }
  }

  func matches(_ info: SnapshotInfo) -> Bool {
    let v = field(of: info)
    switch op {
    case .present: return v != nil
    case .equal: return v == value
    case .notEqual: return (v ?? "") != value
    case .matches:
      guard let regex, let v else { return false }
      return regex.matches(v)
    }
  }
}

private struct Parser {
  let text: [Unicode.Scalar]
  let source: String
  var i = 0

  func fail(_ why: String) -> SnapshotError {
    .invalid("invalid filter \"\(source)\" at offset \(i): \(why)")
  }

  mutating func skipSpace() {
    while i < text.count, text[i].properties.isWhitespace { i += 1 }
  }

  mutating func parseFilter() throws(SnapshotError) -> [Filter.Selector] {
    var selectors: [Filter.Selector] = []
    repeat {
      selectors.append(try parseSelector())
      skipSpace()
      if i == text.count { break }
      guard text[i] == "," else { throw fail("expected \",\"") }
      i += 1
    } while true
    return selectors
  }

  mutating func parseSelector() throws(SnapshotError) -> Filter.Selector {
    skipSpace()
    var path: [String] = [try parseField()]
    while i < text.count, text[i] == "." {
      i += 1
      path.append(try parseField())
    }
    skipSpace()
    guard i + 1 < text.count, text[i + 1] == "=", ["=", "!", "~"].contains(text[i]) else {
      return .init(fieldpath: path, op: .present, value: "", regex: nil)
    }
    let op: Filter.Operator = text[i] == "=" ? .equal : text[i] == "!" ? .notEqual : .matches
    i += 2
    skipSpace()
    let value = try parseValue(allowRegexDelimiters: op == .matches)
    var regex: LinearRegex?
    if op == .matches {
      do { regex = try LinearRegex(value) } catch { throw fail("bad regular expression \"\(value)\": \(error.message)") }
    }
    return .init(fieldpath: path, op: op, value: value, regex: regex)
  }

  mutating func parseField() throws(SnapshotError) -> String {
    if i < text.count, text[i] == "\"" { return try parseQuoted(close: "\"") }
    let start = i
    while i < text.count, !".,=!~\" \t".unicodeScalars.contains(text[i]) { i += 1 }
    guard i > start else { throw fail("expected a field name") }
    return String(String.UnicodeScalarView(text[start..<i]))
  }

  mutating func parseValue(allowRegexDelimiters: Bool) throws(SnapshotError) -> String {
    if i < text.count, text[i] == "\"" { return try parseQuoted(close: "\"") }
    if allowRegexDelimiters, i < text.count, text[i] == "/" || text[i] == "|" {
      return try parseQuoted(close: text[i])
    }
    let start = i
    while i < text.count, text[i] != "," { i += 1 }
    let value = String(String.UnicodeScalarView(text[start..<i]))
    guard !value.isEmpty else { throw fail("expected a value") }
    return value.trimmingTrailingSpace()
  }

  mutating func parseQuoted(close: Unicode.Scalar) throws(SnapshotError) -> String {
    i += 1
    var out = String.UnicodeScalarView()
    while i < text.count {
      let c = text[i]
      i += 1
      if c == close { return String(out) }
      if c == "\\", i < text.count {
        let e = text[i]
        i += 1
        switch e {
        case "n": out.append("\n")
        case "t": out.append("\t")
        default:
          if close != "\"" && e != close { out.append("\\") }
          out.append(e)
        }
        continue
      }
      out.append(c)
    }
    throw fail("unterminated quoted string")
  }
}

extension String {
  fileprivate func trimmingTrailingSpace() -> String {
    var s = Substring(self)
    while let last = s.unicodeScalars.last, last.properties.isWhitespace { s = s.dropLast() }
    return String(s)
  }
}
