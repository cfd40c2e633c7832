import Testing

@testable import TandemCore

@Suite struct TOMLDocumentTests {
    @Test func parse_scalarsArraysAndInlineTables_keepTheirLines() throws {
        let document = try TOMLDocument.parse(
            """
            # comment
            title = "basic \\"quoted\\" \\u00e9"
            literal = 'C:\\path'
            count = 1_000
            hex = 0xff
            ratio = 0.5
            enabled = true

            [table]
            list = [
              "a", # trailing comment
              'b',
            ]
            inline = { x = 1, y.z = "deep" }
            """)
        let root = document.root
        #expect(root["title"] == TOMLNode(.string("basic \"quoted\" é"), line: 2))
        #expect(root["literal"]?.value == .string("C:\\path"))
        #expect(root["count"]?.value == .integer(1000))
        #expect(root["hex"]?.value == .integer(255))
        #expect(root["ratio"]?.value == .float(0.5))
        #expect(root["enabled"] == TOMLNode(.boolean(true), line: 7))
        guard case .table(let table)? = root["table"]?.value else {
            Issue.record("no [table]")
            return
        }
        #expect(table.line == 9)
        guard case .array(let list)? = table["list"]?.value else {
            Issue.record("no list")
            return
        }
        #expect(list == [TOMLNode(.string("a"), line: 11), TOMLNode(.string("b"), line: 12)])
        guard case .table(let inline)? = table["inline"]?.value, case .table(let y)? = inline["y"]?.value else {
            Issue.record("no inline table")
            return
        }
        #expect(inline["x"]?.value == .integer(1))
        #expect(y["z"]?.value == .string("deep"))
    }

    /// Found by the differential test against tomllib: a negative number before a space was taken
    /// for a date, and numbers TOML forbids (`3.`, `.5`, `007`, `1__0`) were accepted.
    @Test func numbers_followTOMLsGrammar() throws {
        let document = try TOMLDocument.parse(
            "a = -17 # note\nb = { c = -0.25 }\nd = -9223372036854775808\ne = 0x1_F\n")
        #expect(document.root["a"]?.value == .integer(-17))
        #expect(document.root["d"]?.value == .integer(.min))
        #expect(document.root["e"]?.value == .integer(31))
        for bad in ["3.", ".5", "007", "1__0", "0x_1", "-0x1", "1e", "1._5", "+_1"] {
            #expect(throws: TOMLSyntaxError.self, "\(bad)") { try TOMLDocument.parse("x = \(bad)\n") }
        }
        #expect(throws: TOMLSyntaxError.self) { try TOMLDocument.parse("x = 1979-05-27\n") }
    }

    @Test func parse_arraysOfTables_appendInOrder() throws {
        let document = try TOMLDocument.parse("[[node]]\nname = \"a\"\n\n[[node]]\nname = \"b\"\n[node.extra]\nk = 1\n")
        guard case .array(let nodes)? = document.root["node"]?.value else {
            Issue.record("no nodes")
            return
        }
        #expect(nodes.map(\.line) == [1, 4])
        guard case .table(let second) = nodes[1].value, case .table(let extra)? = second["extra"]?.value else {
            Issue.record("second node has no [node.extra]")
            return
        }
        #expect(extra["k"]?.value == .integer(1))
    }

    @Test func parse_multilineStrings() throws {
        let document = try TOMLDocument.parse("a = \"\"\"\nline one\nline two\"\"\"\nb = '''\nraw \\n'''\nc = 1\n")
        #expect(document.root["a"]?.value == .string("line one\nline two"))
        #expect(document.root["b"]?.value == .string("raw \\n"))
        #expect(document.root["c"]?.line == 6)
    }

    @Test(arguments: [
        ("a = \"open\n", 1, "unterminated string"),
        ("a = 1\na = 2\n", 2, "key 'a' is defined twice"),
        ("[t]\n[t]\n", 2, "table [t] is defined twice"),
        ("a = [1, 2\n", 2, "expected ',' or ']' in the array"),
        ("a = 1 b = 2\n", 1, "expected the end of the line"),
        ("a = hello\n", 1, "invalid value 'hello' (a string needs quotes)"),
        ("a = 1979-05-27\n", 1, "dates and times are not supported here"),
        ("= 1\n", 1, "expected a key"),
        ("a = \"\\q\"\n", 1, "invalid escape '\\q'"),
        ("[a\n", 1, "expected ']' to close the table header"),
    ])
    func parse_malformed_reportsLineAndReason(text: String, line: Int, message: String) {
        do {
            _ = try TOMLDocument.parse(text)
            Issue.record("expected a syntax error for \(text)")
        } catch {
            #expect(error.line == line)
            #expect(error.message == message)
        }
    }

    @Test func parse_randomBytes_neverCrashes() {
        var generator = SplitMix64(seed: 0x7A4D)
        let alphabet = Array("[]{}=\"',.#\n abc123_-\\".utf8)
        for _ in 0..<2000 {
            let length = Int(generator.next() % 64)
            let bytes = (0..<length).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] }
            _ = try? TOMLDocument.parse(String(decoding: bytes, as: UTF8.self))
        }
    }
}

/// A small seeded generator so that a failing input can be reproduced.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
