import Foundation
import Testing

@testable import TandemCore

/// Random TOML documents read by our reader and by Python's `tomllib`: both refuse, or both accept
/// and agree on every value. The generator stays inside what both should agree on: no datetimes
/// (tomllib has them, we do not), integers within 64 bits, no NaN (its bits differ), nesting far
/// below tomllib's recursion limit.
@Suite struct TOMLDifferentialTests {
    /// The same documents on every run.
    struct Generator {
        var source: SplitMix64
        init(state: UInt64) { source = SplitMix64(seed: state) }
        mutating func below(_ bound: Int) -> Int { Int(source.next() % UInt64(bound)) }
        mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
        mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
    }

    static func key(_ random: inout Generator) -> String {
        if random.chance(15) {
            return "\"" + random.pick(["a b", "é", "x.y", "quoted", "tab\\t", "#"]) + "\""
        }
        let letters = Array("abcdefghij")
        return String((0...random.below(5)).map { _ in random.pick(letters) }) + random.pick(["", "_1", "-x", "2"])
    }

    static func value(_ random: inout Generator, depth: Int) -> String {
        switch random.below(depth > 2 ? 5 : 7) {
        case 0:
            return random.pick([
                "\"plain\"", "\"esc\\n\\t\\\"q\\\" \\\\\"", "\"\\u00e9\\U0001F600\"", "'lit\\eral'", "\"\"",
                "\"\"\"\nmulti\nline\"\"\"", "'''\nraw\\n'''", "\"a\\\nb\"",
            ])
        case 1:
            return random.pick([
                "0", "-17", "+42", "1_000_000", "9223372036854775807", "-9223372036854775808", "0x1F", "0o17",
                "0b101", "007", "1__0", "0x_1", "-0x1", "+0", "-0",
            ])
        case 2:
            return random.pick(["1.5", "-0.25", "1e3", "6.02e+23", "1E-7", "inf", "-inf", "3.", ".5", "1_0.5"])
        case 3:
            return random.pick(["true", "false", "True"])
        case 4:
            let count = random.below(4)
            let items = (0..<count).map { _ in value(&random, depth: depth + 1) }
            return "[" + items.joined(separator: random.pick([", ", ",", ",\n "])) + (random.chance(20) ? ",]" : "]")
        default:
            let count = random.below(3)
            let pairs = (0..<count).map { _ in key(&random) + " = " + value(&random, depth: depth + 1) }
            return "{ " + pairs.joined(separator: ", ") + " }"
        }
    }

    static func document(_ random: inout Generator) -> String {
        var lines: [String] = []
        for _ in 0..<random.below(6) { lines.append(key(&random) + " = " + value(&random, depth: 0)) }
        for _ in 0..<random.below(4) {
            let name = (0...random.below(2)).map { _ in key(&random) }.joined(separator: ".")
            lines.append(random.chance(30) ? "[[\(name)]]" : "[\(name)]")
            for _ in 0..<random.below(4) {
                let dotted = random.chance(25) ? key(&random) + "." : ""
                lines.append(dotted + key(&random) + " = " + value(&random, depth: 0) + random.pick(["", " # note"]))
            }
        }
        var text = lines.joined(separator: "\n") + "\n"
        if random.chance(30), !text.isEmpty {
            // A mutation, as a typo or a hostile byte would make it.
            var characters = Array(text)
            let at = random.below(characters.count)
            switch random.below(3) {
            case 0: characters.remove(at: at)
            case 1: characters.insert(random.pick(Array("=[]{}\"'#\n,.\\ ")), at: at)
            default: characters.insert(contentsOf: characters[at..<min(at + 8, characters.count)], at: at)
            }
            text = String(characters)
        }
        return text
    }

    /// A value in a form Python prints the same way: typed, strings as UTF-8 hex, floats as bits.
    static func canonical(_ value: TOMLValue) -> String {
        switch value {
        case .string(let text): return "s" + text.utf8.map { String(format: "%02x", $0) }.joined()
        case .integer(let number): return "i\(number)"
        case .float(let number): return "f" + String(format: "%016llx", number.bitPattern)
        case .boolean(let flag): return flag ? "b1" : "b0"
        case .array(let items): return "[" + items.map { canonical($0.value) }.joined(separator: ",") + "]"
        case .table(let table): return canonical(table)
        }
    }

    static func canonical(_ table: TOMLTable) -> String {
        let members = table.keys.sorted().map { key in
            "s" + key.utf8.map { String(format: "%02x", $0) }.joined() + ":" + canonical(table[key]!.value)
        }
        return "{" + members.joined(separator: ",") + "}"
    }

    static let python = """
        import struct, sys, tomllib
        def canonical(v):
            if isinstance(v, bool): return "b1" if v else "b0"
            if isinstance(v, str): return "s" + v.encode().hex()
            if isinstance(v, int): return "i%d" % v if -2**63 <= v < 2**63 else "beyond 64 bits"
            if isinstance(v, float): return "f" + struct.pack(">d", v).hex()
            if isinstance(v, list): return "[" + ",".join(canonical(x) for x in v) + "]"
            if isinstance(v, dict):
                keys = sorted(v, key=lambda k: k.encode())
                return "{" + ",".join("s" + k.encode().hex() + ":" + canonical(v[k]) for k in keys) + "}"
            return "unsupported " + type(v).__name__
        for path in sys.argv[1:]:
            try:
                with open(path, "rb") as f: print(canonical(tomllib.load(f)))
            except tomllib.TOMLDecodeError:
                print("refused")
        """

    @Test func randomDocuments_readAsPythonsTomllibReadsThem() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toml-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var random = Generator(state: 20_261_207)
        var paths: [String] = []
        var ours: [String] = []
        var documents: [String] = []
        for index in 0..<600 {
            let text = Self.document(&random)
            let path = directory.appendingPathComponent("\(index).toml").path
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            paths.append(path)
            documents.append(text)
            ours.append((try? TOMLDocument.parse(text)).map { Self.canonical($0.root) } ?? "refused")
        }
        let script = directory.appendingPathComponent("canonical.py").path
        try Self.python.write(toFile: script, atomically: false, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script] + paths
        let output = Pipe()
        process.standardOutput = output
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try #require(
            process.terminationStatus == 0,
            "python3 with tomllib (3.11 or later) is needed: \(String(decoding: stderr, as: UTF8.self))")
        let theirs = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .dropLast().map(String.init)
        try #require(theirs.count == ours.count, "tomllib answered \(theirs.count) of \(ours.count) documents")
        let accepted = ours.filter { $0 != "refused" }.count
        var disagreements: [String] = []
        // tomllib takes integers of any size; this reader stops at 64 bits, and says so.
        for index in ours.indices where ours[index] != theirs[index] && !theirs[index].contains("beyond 64 bits") {
            disagreements.append(
                "document \(index):\n\(documents[index])\nours:   \(ours[index])\ntomllib: \(theirs[index])")
        }
        #expect(
            disagreements.isEmpty,
            "\(disagreements.count) disagreements; first:\n\(disagreements.prefix(3).joined(separator: "\n---\n"))")
        // Both kinds are exercised: neither reader refuses everything or accepts everything.
        #expect(accepted > 100 && accepted < 580, "\(accepted) of 600 accepted")
    }
}
