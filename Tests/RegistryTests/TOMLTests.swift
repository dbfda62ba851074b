import Testing

@testable import Registry

/// hosts.toml's TOML: what containerd's files use, parsed in file order; hostile input
/// (what the fuzzer found crashing toml++) is an error with a line.
@Suite struct TOMLTests {
  @Test func documents() throws {
    let t = try TOMLTable(
      parsing: """
        \u{FEFF}# a comment
        server = "https://registry-1.docker.io"  # trailing comment
        ca = ['/a.pem', "b\\u00e9.pem"]
        n = 0x1F_00
        f = 1.5e3
        [host."https://z.example:5000"]
          capabilities = ["pull",
            "resolve", # inside
          ]
          skip_verify = true
          client = [["c.cert", "c.key"], ['d.cert']]
        [host.'http://a.example']
          header = { x-a = "1", y.z = 2 }
          text = \"\"\"
        line one \\
          still one
        two\"\"\"
        """)
    #expect(t.keys == ["server", "ca", "n", "f", "host"])
    #expect(t["server"]?.string == "https://registry-1.docker.io")
    #expect(t["ca"]?.array == [.string("/a.pem"), .string("bé.pem")])
    #expect(t["n"] == .integer(0x1F00))
    #expect(t["f"] == .float(1500))
    let hosts = try #require(t["host"]?.table)
    #expect(hosts.keys == ["https://z.example:5000", "http://a.example"])  // file order, not sorted
    let z = try #require(hosts["https://z.example:5000"]?.table)
    #expect(z["skip_verify"]?.bool == true)
    #expect(z["capabilities"]?.array?.count == 2)
    #expect(z["client"]?.array?.first?.array == [.string("c.cert"), .string("c.key")])
    let a = try #require(hosts["http://a.example"]?.table)
    #expect(a["header"]?.table?["y"]?.table?["z"] == .integer(2))
    #expect(a["text"]?.string == "line one still one\ntwo")
  }

  @Test(arguments: [
    "[`host]\n", "\u{FEFF}[\\\n", "a = \n", "a = ,\n", "a = 1\na = 2\n", "[t]\n[t]\n", "a = \"unterminated\n", "a = [1, 2\n",
    "a = 1 b = 2\n", "[[array]]\n", "d = 1979-05-27\n", "a = \"\\q\"\n", "a = \"\\u12\"\n", "a.b = 1\na.b.c = 2\n", "= 1\n",
    "a = {b = 1,}\n", "a = 1_\n", String(repeating: "a = [", count: 1) + String(repeating: "[", count: 100) + "\n",
    "a = \"x\u{01}\"\n", "k = '''never closed",
    Array(repeating: "k", count: 10_000).joined(separator: ".") + " = 1\n",
    "[" + Array(repeating: "t", count: 10_000).joined(separator: ".") + "]\n",
  ])
  func refused(_ text: String) {
    #expect(throws: TOMLError.self) { try TOMLTable(parsing: text) }
  }
}
