/// A regular expression in the syntax containerd's filters take (Go's `regexp`, which is
/// RE2), matched in time linear in the input: the pattern compiles to a Thompson NFA that is
/// simulated one input scalar at a time, with no backtracking. Swift's `Regex` backtracks:
/// `name~=/^(a+)+$/` over a snapshot named `aaaa…a!` never ended. Only whether the pattern
/// matches anywhere in the input is asked (`regexp.MatchString`), so there are no captures.
///
/// Syntax: literals; `.`; classes `[a-z]`, `[^…]`, `[[:alpha:]]`, `\d \D \w \W \s \S`;
/// groups `(…)`, `(?:…)`, `(?P<name>…)`, `(?<name>…)`; flags `(?i)`, `(?s)`, `(?m)`, `(?U)`
/// and `(?flags:…)`; `|`; `* + ? {n} {n,} {n,m}`, each optionally lazy; anchors `^ $ \A \z
/// \b \B`; escapes `\t \n \r \f \v \a \x41 \x{263a}` and any escaped punctuation.
/// Repetition counts above 1000 are refused as RE2 refuses them, and so is a pattern that
/// compiles to more than `maxProgram` instructions: the work per input scalar is bounded.
struct LinearRegex: Sendable {
  static let maxProgram = 20_000
  static let maxRepeat = 1000
  static let maxNesting = 100

  struct SyntaxError: Error { let message: String }

  enum Assertion: Sendable { case beginText, endText, beginLine, endLine, wordBoundary, notWordBoundary }

  struct ScalarSet: Sendable {
    var ranges: [ClosedRange<UInt32>] = []
    var negated = false
    var fold = false

    /// Whether `c` (whose other cases are `variants`) is in the set.
    func contains(_ c: Unicode.Scalar, variants: [Unicode.Scalar]) -> Bool {
      var hit = ranges.contains { $0.contains(c.value) }
      if !hit && fold {
        hit = variants.contains { v in ranges.contains { $0.contains(v.value) } }
      }
      return hit != negated
    }
  }

  enum Inst: Sendable {
    case scalar(Unicode.Scalar, fold: Bool)
    case any(newline: Bool)
    case set(ScalarSet)
    case split(Int, Int)
    case jump(Int)
    case assert(Assertion)
    case match
  }

  let program: [Inst]
  /// Whether any instruction matches case-insensitively (then each input scalar's other
  /// cases are worked out once, not per thread).
  let folds: Bool

  init(_ pattern: String) throws(SyntaxError) {
    var p = RegexParser(Array(pattern.unicodeScalars))
    let node = try p.parseAll()
    var c = RegexCompiler()
    try c.emit(node)
    c.program.append(.match)
    program = c.program
    folds = program.contains { inst in
      switch inst {
      case .scalar(_, let fold): fold
      case .set(let set): set.fold
      default: false
      }
    }
  }

  /// Whether the pattern matches anywhere in `text`.
  func matches(_ text: String) -> Bool {
    let input = Array(text.unicodeScalars)
    var current = ThreadList(program.count)
    var next = ThreadList(program.count)
    var stack: [Int] = []
    for i in 0...input.count {
      if add(&current, 0, i, input, &stack) { return true }
      guard i < input.count else { break }
      let c = input[i]
      let others = folds ? Self.variants(c) : []
      next.clear()
      for pc in current.dense {
        let step: Bool
        switch program[pc] {
        case .scalar(let s, let fold): step = s == c || (fold && others.contains(s))
        case .any(let newline): step = newline || c != "\n"
        case .set(let set): step = set.contains(c, variants: others)
        default: step = false
        }
        if step, add(&next, pc + 1, i + 1, input, &stack) { return true }
      }
      swap(&current, &next)
    }
    return false
  }

  /// Adds the thread at `pc` and every thread reached from it without consuming input;
  /// true when one of them is the match.
  private func add(_ list: inout ThreadList, _ pc: Int, _ pos: Int, _ input: [Unicode.Scalar], _ stack: inout [Int]) -> Bool {
    stack.removeAll(keepingCapacity: true)
    stack.append(pc)
    while let pc = stack.popLast() {
      guard list.insert(pc) else { continue }
      switch program[pc] {
      case .match: return true
      case .jump(let to): stack.append(to)
      case .split(let a, let b):
        stack.append(b)
        stack.append(a)
      case .assert(let a):
        if Self.holds(a, pos, input) { stack.append(pc + 1) }
      default: break
      }
    }
    return false
  }

  private static func holds(_ a: Assertion, _ pos: Int, _ input: [Unicode.Scalar]) -> Bool {
    switch a {
    case .beginText: return pos == 0
    case .endText: return pos == input.count
    case .beginLine: return pos == 0 || input[pos - 1] == "\n"
    case .endLine: return pos == input.count || input[pos] == "\n"
    case .wordBoundary, .notWordBoundary:
      let before = pos > 0 && isWord(input[pos - 1])
      let after = pos < input.count && isWord(input[pos])
      return (before != after) == (a == .wordBoundary)
    }
  }

  /// RE2's `\w`: ASCII letters, digits and `_`.
  static func isWord(_ c: Unicode.Scalar) -> Bool {
    (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "_"
  }

  /// The other cases of `c`, for case-insensitive matching.
  static func variants(_ c: Unicode.Scalar) -> [Unicode.Scalar] {
    var out: [Unicode.Scalar] = []
    for m in [c.properties.lowercaseMapping, c.properties.uppercaseMapping, c.properties.titlecaseMapping] {
      let u = m.unicodeScalars
      if u.count == 1, let s = u.first, s != c, !out.contains(s) { out.append(s) }
    }
    return out
  }
}

/// A set of program counters with O(1) insert and clear (Briggs and Torczon's sparse set).
private struct ThreadList {
  var dense: [Int] = []
  var sparse: [Int]

  init(_ size: Int) {
    sparse = Array(repeating: 0, count: size)
    dense.reserveCapacity(size)
  }

  mutating func insert(_ pc: Int) -> Bool {
    let i = sparse[pc]
    if i < dense.count && dense[i] == pc { return false }
    sparse[pc] = dense.count
    dense.append(pc)
    return true
  }

  mutating func clear() { dense.removeAll(keepingCapacity: true) }
}

private indirect enum RegexNode {
  case empty
  case scalar(Unicode.Scalar, fold: Bool)
  case any(newline: Bool)
  case set(LinearRegex.ScalarSet)
  case assert(LinearRegex.Assertion)
  case concat([RegexNode])
  case alternate([RegexNode])
  case repetition(RegexNode, min: Int, max: Int?)
}

private struct RegexFlags {
  var caseInsensitive = false
  var dotNewline = false
  var multiline = false
}

private struct RegexParser {
  let text: [Unicode.Scalar]
  var i = 0
  var flags = RegexFlags()
  var nesting = 0

  init(_ text: [Unicode.Scalar]) { self.text = text }

  func fail(_ why: String) -> LinearRegex.SyntaxError { .init(message: "\(why) at offset \(i)") }
  var atEnd: Bool { i >= text.count }
  func peek(_ ahead: Int = 0) -> Unicode.Scalar? { i + ahead < text.count ? text[i + ahead] : nil }

  mutating func parseAll() throws(LinearRegex.SyntaxError) -> RegexNode {
    let node = try parseAlternation()
    guard atEnd else { throw fail("unexpected )") }
    return node
  }

  mutating func parseAlternation() throws(LinearRegex.SyntaxError) -> RegexNode {
    var branches = [try parseConcatenation()]
    while peek() == "|" {
      i += 1
      branches.append(try parseConcatenation())
    }
    return branches.count == 1 ? branches[0] : .alternate(branches)
  }

  mutating func parseConcatenation() throws(LinearRegex.SyntaxError) -> RegexNode {
    var items: [RegexNode] = []
    while let c = peek(), c != "|", c != ")" {
      var atom = try parseAtom()
      var repeated = false
      while let (min, max) = try parseRepeat() {
        if repeated { throw fail("invalid nested repetition operator") }
        if peek() == "?" { i += 1 }  // lazy: the same language
        if case .empty = atom { throw fail("missing argument to repetition operator") }
        atom = .repetition(atom, min: min, max: max)
        repeated = true
      }
      items.append(atom)
    }
    return items.count == 1 ? items[0] : .concat(items)
  }

  /// A repetition operator at the cursor, consumed; nil if there is none (a `{` that does
  /// not start `{n}`, `{n,}` or `{n,m}` is a literal, as in Go).
  mutating func parseRepeat() throws(LinearRegex.SyntaxError) -> (Int, Int?)? {
    switch peek() {
    case "*":
      i += 1
      return (0, nil)
    case "+":
      i += 1
      return (1, nil)
    case "?":
      i += 1
      return (0, 1)
    case "{":
      var j = i + 1
      func number(_ j: inout Int) -> Int? {
        var n = 0
        let start = j
        while j < text.count, (0x30...0x39).contains(text[j].value) {
          n = Swift.min(n * 10 + Int(text[j].value - 0x30), 100_000)
          j += 1
        }
        return j > start ? n : nil
      }
      guard let min = number(&j) else { return nil }
      var max: Int? = min
      if j < text.count, text[j] == "," {
        j += 1
        max = number(&j)
      }
      guard j < text.count, text[j] == "}" else { return nil }
      i = j + 1
      guard min <= LinearRegex.maxRepeat, (max ?? 0) <= LinearRegex.maxRepeat, (max ?? min) >= min else {
        throw fail("invalid repeat count")
      }
      return (min, max)
    default:
      return nil
    }
  }

  mutating func parseAtom() throws(LinearRegex.SyntaxError) -> RegexNode {
    let c = text[i]
    switch c {
    case "(":
      return try parseGroup()
    case "[":
      return .set(try parseClass())
    case ".":
      i += 1
      return .any(newline: flags.dotNewline)
    case "^":
      i += 1
      return .assert(flags.multiline ? .beginLine : .beginText)
    case "$":
      i += 1
      return .assert(flags.multiline ? .endLine : .endText)
    case "*", "+", "?":
      throw fail("missing argument to repetition operator")
    case "\\":
      return try parseEscape()
    default:
      i += 1
      return .scalar(c, fold: flags.caseInsensitive && !LinearRegex.variants(c).isEmpty)
    }
  }

  mutating func parseGroup() throws(LinearRegex.SyntaxError) -> RegexNode {
    i += 1
    // Parsing, compiling and freeing recurse once a level: bounded, so no pattern can
    // overflow the stack (`scripts/fuzz filter` found one that did).
    nesting += 1
    defer { nesting -= 1 }
    guard nesting <= LinearRegex.maxNesting else { throw fail("expression nests more than \(LinearRegex.maxNesting) groups") }
    let saved = flags
    if peek() == "?" {
      i += 1
      if peek() == "P" || (peek() == "<" && peek(1) != "=" && peek(1) != "!") {
        // A named group: (?P<name>…) or (?<name>…).
        if peek() == "P" { i += 1 }
        guard peek() == "<" else { throw fail("invalid named capture") }
        i += 1
        let start = i
        while let c = peek(), c != ">" {
          guard LinearRegex.isWord(c) else { throw fail("invalid named capture") }
          i += 1
        }
        guard peek() == ">", i > start else { throw fail("invalid named capture") }
        i += 1
      } else {
        // Flags: (?flags) for the rest of the group, or (?flags:…).
        var negate = false
        var any = false
        while true {
          guard let c = peek() else { throw fail("missing closing )") }
          i += 1
          switch c {
          case "i": flags.caseInsensitive = !negate
          case "s": flags.dotNewline = !negate
          case "m": flags.multiline = !negate
          case "U": break  // ungreedy: the same language
          case "-":
            guard !negate else { throw fail("invalid or unsupported Perl syntax") }
            negate = true
            continue
          case ")":
            guard any || !negate else { throw fail("invalid or unsupported Perl syntax") }
            return .empty  // the flags stay set until the enclosing group ends
          case ":":
            let body = try parseAlternation()
            guard peek() == ")" else { throw fail("missing closing )") }
            i += 1
            flags = saved
            return body
          default:
            throw fail("invalid or unsupported Perl syntax")
          }
          any = true
        }
      }
    }
    let body = try parseAlternation()
    guard peek() == ")" else { throw fail("missing closing )") }
    i += 1
    flags = saved
    return body
  }

  mutating func parseEscape() throws(LinearRegex.SyntaxError) -> RegexNode {
    i += 1
    guard let c = peek() else { throw fail("trailing backslash at end of expression") }
    switch c {
    case "A":
      i += 1
      return .assert(.beginText)
    case "z":
      i += 1
      return .assert(.endText)
    case "b":
      i += 1
      return .assert(.wordBoundary)
    case "B":
      i += 1
      return .assert(.notWordBoundary)
    default:
      if let set = try parseClassEscape() { return .set(set) }
      let s = try parseScalarEscape()
      return .scalar(s, fold: flags.caseInsensitive && !LinearRegex.variants(s).isEmpty)
    }
  }

  /// `\d \D \w \W \s \S` at the cursor (after the backslash), consumed; nil for others.
  mutating func parseClassEscape() throws(LinearRegex.SyntaxError) -> LinearRegex.ScalarSet? {
    guard let c = peek() else { return nil }
    let ranges: [ClosedRange<UInt32>]
    switch c {
    case "d", "D": ranges = [0x30...0x39]
    case "w", "W": ranges = [0x30...0x39, 0x41...0x5a, 0x5f...0x5f, 0x61...0x7a]
    case "s", "S": ranges = [0x09...0x0a, 0x0c...0x0d, 0x20...0x20]
    default: return nil
    }
    i += 1
    return LinearRegex.ScalarSet(ranges: ranges, negated: c.properties.isUppercase)
  }

  /// One escaped scalar at the cursor (after the backslash), consumed.
  mutating func parseScalarEscape() throws(LinearRegex.SyntaxError) -> Unicode.Scalar {
    let c = text[i]
    i += 1
    switch c {
    case "t": return "\t"
    case "n": return "\n"
    case "r": return "\r"
    case "f": return "\u{0C}"
    case "v": return "\u{0B}"
    case "a": return "\u{07}"
    case "x":
      var digits = ""
      if peek() == "{" {
        i += 1
        while let d = peek(), d != "}" {
          digits.unicodeScalars.append(d)
          i += 1
          guard digits.count <= 8 else { throw fail("invalid escape sequence") }
        }
        guard peek() == "}" else { throw fail("invalid escape sequence") }
        i += 1
      } else {
        for _ in 0..<2 {
          guard let d = peek() else { throw fail("invalid escape sequence") }
          digits.unicodeScalars.append(d)
          i += 1
        }
      }
      guard let v = UInt32(digits, radix: 16), let s = Unicode.Scalar(v) else { throw fail("invalid escape sequence") }
      return s
    default:
      // Go allows any escaped punctuation; an escaped letter or digit it does not know is
      // an error.
      guard c.isASCII, !(c.properties.isAlphabetic || ("0"..."9").contains(c)) else { throw fail("invalid escape sequence") }
      return c
    }
  }

  mutating func parseClass() throws(LinearRegex.SyntaxError) -> LinearRegex.ScalarSet {
    i += 1
    var set = LinearRegex.ScalarSet()
    set.fold = flags.caseInsensitive
    if peek() == "^" {
      set.negated = true
      i += 1
    }
    var first = true
    while true {
      guard let c = peek() else { throw fail("missing closing ]") }
      if c == "]" && !first {
        i += 1
        return set
      }
      first = false
      if c == "[", peek(1) == ":" {
        try parsePosixClass(into: &set)
        continue
      }
      let lo: Unicode.Scalar
      if c == "\\" {
        i += 1
        guard !atEnd else { throw fail("missing closing ]") }
        if let inner = try parseClassEscape() {
          try merge(inner, into: &set)
          continue
        }
        lo = try parseScalarEscape()
      } else {
        lo = c
        i += 1
      }
      var hi = lo
      if peek() == "-", let after = peek(1), after != "]" {
        i += 1
        if after == "\\" {
          i += 1
          guard !atEnd else { throw fail("missing closing ]") }
          hi = try parseScalarEscape()
        } else {
          hi = after
          i += 1
        }
        guard hi >= lo else { throw fail("invalid character class range") }
      }
      set.ranges.append(lo.value...hi.value)
    }
  }

  /// `[:name:]` or `[:^name:]` inside a class.
  mutating func parsePosixClass(into set: inout LinearRegex.ScalarSet) throws(LinearRegex.SyntaxError) {
    var j = i + 2
    var name = ""
    while j < text.count, text[j] != ":" {
      name.unicodeScalars.append(text[j])
      j += 1
    }
    guard j + 1 < text.count, text[j + 1] == "]" else { throw fail("invalid character class range") }
    let negated = name.hasPrefix("^")
    if negated { name.removeFirst() }
    let ranges: [ClosedRange<UInt32>]
    switch name {
    case "alnum": ranges = [0x30...0x39, 0x41...0x5a, 0x61...0x7a]
    case "alpha": ranges = [0x41...0x5a, 0x61...0x7a]
    case "ascii": ranges = [0x00...0x7f]
    case "blank": ranges = [0x09...0x09, 0x20...0x20]
    case "cntrl": ranges = [0x00...0x1f, 0x7f...0x7f]
    case "digit": ranges = [0x30...0x39]
    case "graph": ranges = [0x21...0x7e]
    case "lower": ranges = [0x61...0x7a]
    case "print": ranges = [0x20...0x7e]
    case "punct": ranges = [0x21...0x2f, 0x3a...0x40, 0x5b...0x60, 0x7b...0x7e]
    case "space": ranges = [0x09...0x0d, 0x20...0x20]
    case "upper": ranges = [0x41...0x5a]
    case "word": ranges = [0x30...0x39, 0x41...0x5a, 0x5f...0x5f, 0x61...0x7a]
    case "xdigit": ranges = [0x30...0x39, 0x41...0x46, 0x61...0x66]
    default: throw fail("invalid character class range")
    }
    i = j + 2
    try merge(LinearRegex.ScalarSet(ranges: ranges, negated: negated), into: &set)
  }

  /// Adds `inner` (a class escape) to `set`: a negated one becomes the ranges around it.
  func merge(_ inner: LinearRegex.ScalarSet, into set: inout LinearRegex.ScalarSet) throws(LinearRegex.SyntaxError) {
    guard inner.negated else {
      set.ranges += inner.ranges
      return
    }
    var next: UInt32 = 0
    for r in inner.ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
      if r.lowerBound > next { set.ranges.append(next...(r.lowerBound - 1)) }
      next = Swift.max(next, r.upperBound + 1)
    }
    if next <= 0x10FFFF { set.ranges.append(next...0x10FFFF) }
  }
}

private struct RegexCompiler {
  var program: [LinearRegex.Inst] = []

  mutating func append(_ inst: LinearRegex.Inst) throws(LinearRegex.SyntaxError) {
    guard program.count < LinearRegex.maxProgram else { throw .init(message: "expression too large") }
    program.append(inst)
  }

  mutating func emit(_ node: RegexNode) throws(LinearRegex.SyntaxError) {
    switch node {
    case .empty: break
    case .scalar(let s, let fold): try append(.scalar(s, fold: fold))
    case .any(let newline): try append(.any(newline: newline))
    case .set(let set): try append(.set(set))
    case .assert(let a): try append(.assert(a))
    case .concat(let items):
      for item in items { try emit(item) }
    case .alternate(let branches):
      // split(b1, next); b1; jump end; next: split(b2, …) …; last branch; end:
      var jumps: [Int] = []
      for (k, branch) in branches.enumerated() {
        if k == branches.count - 1 {
          try emit(branch)
        } else {
          let split = program.count
          try append(.split(split + 1, -1))
          try emit(branch)
          jumps.append(program.count)
          try append(.jump(-1))
          program[split] = .split(split + 1, program.count)
        }
      }
      for j in jumps { program[j] = .jump(program.count) }
    case .repetition(let body, let min, let max):
      for _ in 0..<min { try emit(body) }
      if let max {
        // Each optional copy may end the repetition: split(copy, end).
        var splits: [Int] = []
        for _ in min..<max {
          splits.append(program.count)
          try append(.split(program.count + 1, -1))
          try emit(body)
        }
        for s in splits { program[s] = .split(s + 1, program.count) }
      } else {
        // loop: split(body, end); body; jump loop; end:
        let loop = program.count
        try append(.split(loop + 1, -1))
        try emit(body)
        try append(.jump(loop))
        program[loop] = .split(loop + 1, program.count)
      }
    }
  }
}
