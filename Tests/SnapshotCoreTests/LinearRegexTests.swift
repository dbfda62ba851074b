import Testing

@testable import SnapshotCore

/// The filter regexps: Go's (RE2) syntax, matched without backtracking.
@Suite struct LinearRegexTests {
  func m(_ pattern: String, _ text: String) throws -> Bool { try LinearRegex(pattern).matches(text) }

  @Test func syntax() throws {
    #expect(try m("abc", "xxabcxx"))
    #expect(try !m("^abc", "xabc"))
    #expect(try m("^a.c$", "abc"))
    #expect(try !m("^a.c$", "a\nc"))
    #expect(try m("(?s)^a.c$", "a\nc"))
    #expect(try m("^(foo|bar)+$", "foobarfoo"))
    #expect(try !m("^(foo|bar)+$", "foobaz"))
    #expect(try m("^a{2,3}$", "aaa"))
    #expect(try !m("^a{2,3}$", "aaaa"))
    #expect(try m("^a{2,}$", "aaaaaa"))
    #expect(try m("^a{2}$", "aa"))
    #expect(try m("a{,2}", "a{,2}"))  // not a repetition: literal, as in Go
    #expect(try m("^[a-c]+[^x-z]$", "abca"))
    #expect(try !m("^[a-c]+[^x-z]$", "abcz"))
    #expect(try m("^[[:digit:]]+$", "0123"))
    #expect(try m("^\\d+\\.\\d+$", "1.25"))
    #expect(try !m("^\\d+$", "12a"))
    #expect(try m("^\\w+\\s\\W$", "a_1 !"))
    #expect(try m("(?i)^ABC$", "abc"))
    #expect(try m("(?i)^[a-c]+$", "AbC"))
    #expect(try !m("^[a-c]+$", "AbC"))
    #expect(try m("^(?i:a)B$", "AB"))
    #expect(try !m("^(?i:a)B$", "Ab"))
    #expect(try m("\\bword\\b", "a word here"))
    #expect(try !m("\\bword\\b", "swordfish"))
    #expect(try m("(?m)^b$", "a\nb\nc"))
    #expect(try !m("^b$", "a\nb\nc"))
    #expect(try m("\\x41\\x{263a}", "A☺"))
    #expect(try m("^(?P<n>a)(?:b)*?$", "abbb"))
    #expect(try m("", "anything"))
    #expect(try m("^$", ""))
    #expect(try m("sha256:[0-9a-f]{64}", "sha256:" + String(repeating: "ab", count: 32)))
  }

  @Test(arguments: ["(", ")", "a**", "*a", "[a", "a{1001}", "\\q", "(?z)", "[z-a]", "\\", "(?P<>a)"])
  func refused(_ pattern: String) {
    #expect(throws: LinearRegex.SyntaxError.self) { try LinearRegex(pattern) }
  }

  /// Patterns that make a backtracking matcher take exponential time answer at once.
  @Test func noBacktracking() throws {
    let text = String(repeating: "a", count: 5000) + "!"
    #expect(try !m("^(a+)+$", text))
    #expect(try !m("^(a|a)*$", text))
    #expect(try !m("^(a*)*b$", text))
    #expect(try m("(a+)+!", text))
    // A program too large to run per input scalar is refused.
    #expect(throws: LinearRegex.SyntaxError.self) { try LinearRegex("((a{1000}){1000})") }
    // Nesting is bounded: 10,000 open groups overflowed the stack (scripts/fuzz filter).
    #expect(throws: LinearRegex.SyntaxError.self) { try LinearRegex(String(repeating: "(", count: 10_000)) }
    #expect(try m(String(repeating: "(", count: 100) + "a" + String(repeating: ")", count: 100), "a"))
  }
}
