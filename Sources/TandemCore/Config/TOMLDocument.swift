/// A parsed TOML document whose every value remembers the line it was written on.
///
/// Tandem parses its own configuration so that every error, including the ones found after parsing
/// (an unknown key, a wrong type, a duplicate node), can name the line of the key at fault.
/// Drive it with `TOMLDocument.parse(_:)` and walk `root`.
public struct TOMLDocument: Sendable, Equatable {
    /// The top-level table.
    public var root: TOMLTable

    /// Parses TOML text (v1.0, without dates and times, which no Tandem setting uses).
    public static func parse(_ text: String) throws(TOMLSyntaxError) -> TOMLDocument {
        var parser = TOMLParser(text: text)
        return TOMLDocument(root: try parser.parseDocument())
    }
}

/// A value in a TOML document.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case boolean(Bool)
    case array([TOMLNode])
    case table(TOMLTable)

    /// The TOML name of this value's type, for error messages.
    public var typeName: String {
        switch self {
        case .string: return "a string"
        case .integer: return "an integer"
        case .float: return "a float"
        case .boolean: return "a boolean"
        case .array: return "an array"
        case .table: return "a table"
        }
    }
}

/// A value and the 1-based line it starts on.
public struct TOMLNode: Sendable, Equatable {
    /// The value.
    public var value: TOMLValue
    /// The 1-based line on which the value (or its key) was written.
    public var line: Int

    /// Creates a node.
    public init(_ value: TOMLValue, line: Int) {
        self.value = value
        self.line = line
    }
}

/// A TOML table: keys in the order they were written.
public struct TOMLTable: Sendable, Equatable {
    /// The keys in document order.
    public private(set) var keys: [String] = []
    private var nodes: [String: TOMLNode] = [:]
    /// The line of the table's header (`[name]`), or of its first key.
    public var line: Int

    /// Creates an empty table that starts on `line`.
    public init(line: Int) {
        self.line = line
    }

    /// The node stored under `key`.
    public subscript(key: String) -> TOMLNode? {
        get { nodes[key] }
        set {
            if nodes[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            nodes[key] = newValue
        }
    }
}

/// A TOML syntax error, with the position where it was found.
public struct TOMLSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 1-based line.
    public var line: Int
    /// 1-based column.
    public var column: Int
    /// What was wrong.
    public var message: String

    /// A one-line description.
    public var description: String { "line \(line), column \(column): \(message)" }
}

/// A recursive-descent TOML parser over UTF-8 bytes.
struct TOMLParser {
    private let bytes: [UInt8]
    private var index = 0
    private var line = 1
    private var lineStart = 0
    /// The path of the table that `key = value` lines currently go into.
    private var currentPath: [PathStep] = []
    /// Tables that were opened by a header, so a second `[same]` is an error.
    private var definedHeaders: Set<String> = []

    /// A step through the tree: a key, and for arrays of tables, the last element.
    private enum PathStep: Hashable {
        case key(String)
        case lastElement(String)
    }

    /// How deep arrays and inline tables may nest, and how many parts a dotted key may have: a
    /// config needs a few of each, and a hostile file must not overflow the stack (nesting is
    /// parsed by recursion) or take quadratic time (each part of a key walks the path again).
    static let maximumNesting = 32
    static let maximumKeyParts = 32
    /// Arrays and inline tables open around the value being parsed.
    private var nesting = 0

    init(text: String) {
        self.bytes = Array(text.utf8)
    }

    /// Counts one more level of nesting, refusing one too many.
    private mutating func enterNesting() throws(TOMLSyntaxError) {
        guard nesting < Self.maximumNesting else {
            throw error("arrays and inline tables nest deeper than \(Self.maximumNesting) levels")
        }
        nesting += 1
    }

    // MARK: Document

    mutating func parseDocument() throws(TOMLSyntaxError) -> TOMLTable {
        var root = TOMLTable(line: 1)
        while true {
            skipWhitespaceCommentsAndNewlines()
            guard let byte = peek() else { return root }
            if byte == UInt8(ascii: "[") {
                try parseHeader(into: &root)
            } else {
                let keyLine = line
                let key = try parseDottedKey()
                skipWhitespace()
                try expect(UInt8(ascii: "="), "expected '=' after the key")
                skipWhitespace()
                let value = try parseValue()
                try insert(value, at: currentPath, key: key, line: keyLine, into: &root)
            }
            try expectEndOfLine()
        }
    }

    private mutating func parseHeader(into root: inout TOMLTable) throws(TOMLSyntaxError) {
        let headerLine = line
        advance()
        let isArray = peek() == UInt8(ascii: "[")
        if isArray { advance() }
        skipWhitespace()
        let key = try parseDottedKey()
        skipWhitespace()
        try expect(UInt8(ascii: "]"), "expected ']' to close the table header")
        if isArray { try expect(UInt8(ascii: "]"), "expected ']]' to close the array-of-tables header") }
        let parentPath = try resolve(Array(key.dropLast()), in: &root, line: headerLine)
        let name = key[key.count - 1]
        if isArray {
            try appendTable(named: name, at: parentPath, line: headerLine, into: &root)
            currentPath = parentPath + [.lastElement(name)]
        } else {
            let path = parentPath + [.key(name)]
            let identity = "\(path)"
            guard !definedHeaders.contains(identity) else {
                throw error("table [\(key.joined(separator: "."))] is defined twice")
            }
            definedHeaders.insert(identity)
            try ensureTable(named: name, at: parentPath, line: headerLine, into: &root)
            currentPath = path
        }
    }

    /// Turns dotted header keys into a path, creating implicit tables and stepping into the last
    /// element of arrays of tables.
    private func resolve(_ keys: [String], in root: inout TOMLTable, line: Int) throws(TOMLSyntaxError) -> [PathStep] {
        var path: [PathStep] = []
        for key in keys {
            let existing = try lookup(path, in: root)?[key]
            switch existing?.value {
            case .array(let elements)?:
                guard case .table? = elements.last?.value else {
                    throw error("'\(key)' is an array of values, not of tables")
                }
                path.append(.lastElement(key))
            case .table?:
                path.append(.key(key))
            case nil:
                try ensureTable(named: key, at: path, line: line, into: &root)
                path.append(.key(key))
            case .some:
                throw error("'\(key)' already holds a value, it cannot also be a table")
            }
        }
        return path
    }

    private func lookup(_ path: [PathStep], in table: TOMLTable) throws(TOMLSyntaxError) -> TOMLTable? {
        var current = table
        for step in path {
            switch step {
            case .key(let key):
                guard case .table(let next)? = current[key]?.value else { return nil }
                current = next
            case .lastElement(let key):
                guard case .array(let elements)? = current[key]?.value,
                    case .table(let next)? = elements.last?.value
                else { return nil }
                current = next
            }
        }
        return current
    }

    /// Applies `body` to the table at `path`, writing the change back up the tree.
    private func modify(
        _ path: ArraySlice<PathStep>,
        in table: inout TOMLTable,
        _ body: (inout TOMLTable) throws(TOMLSyntaxError) -> Void
    ) throws(TOMLSyntaxError) {
        guard let step = path.first else {
            try body(&table)
            return
        }
        switch step {
        case .key(let key):
            guard var node = table[key], case .table(var next) = node.value else {
                throw error("'\(key)' is not a table")
            }
            try modify(path.dropFirst(), in: &next, body)
            node.value = .table(next)
            table[key] = node
        case .lastElement(let key):
            guard var node = table[key], case .array(var elements) = node.value,
                var last = elements.popLast(), case .table(var next) = last.value
            else { throw error("'\(key)' is not an array of tables") }
            try modify(path.dropFirst(), in: &next, body)
            last.value = .table(next)
            elements.append(last)
            node.value = .array(elements)
            table[key] = node
        }
    }

    private func ensureTable(
        named name: String,
        at path: [PathStep],
        line: Int,
        into root: inout TOMLTable
    ) throws(TOMLSyntaxError) {
        try modify(path[...], in: &root) { (table: inout TOMLTable) throws(TOMLSyntaxError) in
            switch table[name]?.value {
            case nil: table[name] = TOMLNode(.table(TOMLTable(line: line)), line: line)
            case .table?: break
            case .some: throw error("'\(name)' already holds a value, it cannot also be a table")
            }
        }
    }

    private func appendTable(
        named name: String,
        at path: [PathStep],
        line: Int,
        into root: inout TOMLTable
    ) throws(TOMLSyntaxError) {
        try modify(path[...], in: &root) { (table: inout TOMLTable) throws(TOMLSyntaxError) in
            let element = TOMLNode(.table(TOMLTable(line: line)), line: line)
            switch table[name]?.value {
            case nil:
                table[name] = TOMLNode(.array([element]), line: line)
            case .array(var elements)?:
                guard elements.allSatisfy({ if case .table = $0.value { true } else { false } }) else {
                    throw error("'\(name)' is an array of values, not of tables")
                }
                elements.append(element)
                table[name]?.value = .array(elements)
            case .some:
                throw error("'\(name)' already holds a value, it cannot also be an array of tables")
            }
        }
    }

    private func insert(
        _ value: TOMLValue,
        at path: [PathStep],
        key: [String],
        line: Int,
        into root: inout TOMLTable
    ) throws(TOMLSyntaxError) {
        var fullPath = path
        for part in key.dropLast() {
            try ensureTable(named: part, at: fullPath, line: line, into: &root)
            fullPath.append(.key(part))
        }
        let name = key[key.count - 1]
        try modify(fullPath[...], in: &root) { (table: inout TOMLTable) throws(TOMLSyntaxError) in
            guard table[name] == nil else {
                throw error("key '\(key.joined(separator: "."))' is defined twice")
            }
            table[name] = TOMLNode(value, line: line)
        }
    }

    // MARK: Keys

    private mutating func parseDottedKey() throws(TOMLSyntaxError) -> [String] {
        var parts = [try parseSimpleKey()]
        while true {
            let saved = (index, line, lineStart)
            skipWhitespace()
            guard peek() == UInt8(ascii: ".") else {
                (index, line, lineStart) = saved
                return parts
            }
            advance()
            skipWhitespace()
            guard parts.count < Self.maximumKeyParts else {
                throw error("a dotted key has more than \(Self.maximumKeyParts) parts")
            }
            parts.append(try parseSimpleKey())
        }
    }

    private mutating func parseSimpleKey() throws(TOMLSyntaxError) -> String {
        switch peek() {
        case UInt8(ascii: "\"")?:
            return try parseBasicString()
        case UInt8(ascii: "'")?:
            return try parseLiteralString()
        default:
            let start = index
            while let byte = peek(), Self.isBareKeyByte(byte) { advance() }
            guard index > start else { throw error("expected a key") }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }
    }

    private static func isBareKeyByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    // MARK: Values

    private mutating func parseValue() throws(TOMLSyntaxError) -> TOMLValue {
        guard let byte = peek() else { throw error("expected a value, found the end of the file") }
        switch byte {
        case UInt8(ascii: "\""):
            return .string(startsWith("\"\"\"") ? try parseMultilineBasicString() : try parseBasicString())
        case UInt8(ascii: "'"):
            return .string(startsWith("'''") ? try parseMultilineLiteralString() : try parseLiteralString())
        case UInt8(ascii: "["):
            return try parseArray()
        case UInt8(ascii: "{"):
            return try parseInlineTable()
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            if startsWith("true") {
                index += 4
                return .boolean(true)
            }
            if startsWith("false") {
                index += 5
                return .boolean(false)
            }
            throw error("expected a value (a string needs quotes)")
        default:
            return try parseNumber()
        }
    }

    private mutating func parseArray() throws(TOMLSyntaxError) -> TOMLValue {
        try enterNesting()
        defer { nesting -= 1 }
        advance()
        var elements: [TOMLNode] = []
        while true {
            skipWhitespaceCommentsAndNewlines()
            if peek() == UInt8(ascii: "]") {
                advance()
                return .array(elements)
            }
            let elementLine = line
            elements.append(TOMLNode(try parseValue(), line: elementLine))
            skipWhitespaceCommentsAndNewlines()
            switch peek() {
            case UInt8(ascii: ",")?: advance()
            case UInt8(ascii: "]")?: continue
            default: throw error("expected ',' or ']' in the array")
            }
        }
    }

    private mutating func parseInlineTable() throws(TOMLSyntaxError) -> TOMLValue {
        try enterNesting()
        defer { nesting -= 1 }
        let tableLine = line
        advance()
        var table = TOMLTable(line: tableLine)
        skipWhitespaceCommentsAndNewlines()
        if peek() == UInt8(ascii: "}") {
            advance()
            return .table(table)
        }
        while true {
            skipWhitespaceCommentsAndNewlines()
            let keyLine = line
            let key = try parseDottedKey()
            skipWhitespace()
            try expect(UInt8(ascii: "="), "expected '=' after the key")
            skipWhitespace()
            let value = try parseValue()
            try insert(value, at: [], key: key, line: keyLine, into: &table)
            skipWhitespaceCommentsAndNewlines()
            switch peek() {
            case UInt8(ascii: ",")?: advance()
            case UInt8(ascii: "}")?:
                advance()
                return .table(table)
            default: throw error("expected ',' or '}' in the inline table")
            }
        }
    }

    private mutating func parseNumber() throws(TOMLSyntaxError) -> TOMLValue {
        let start = index
        while let byte = peek(), Self.isNumberByte(byte) { advance() }
        let raw = String(decoding: bytes[start..<index], as: UTF8.self)
        guard !raw.isEmpty else {
            throw error("expected a value (a string needs quotes)")
        }
        // A date starts with four digits and a dash (1979-05-27), a time with two and a colon.
        let digits = raw.prefix { $0.isASCII && $0.isNumber }
        if (digits.count == 4 && raw.dropFirst(4).first == "-")
            || (digits.count == 2 && raw.count == 2 && peek() == UInt8(ascii: ":"))
        {
            throw error("dates and times are not supported here")
        }
        guard Self.isTOMLNumber(Array(raw.utf8)) else {
            index = start
            throw error("invalid value '\(raw)' (a string needs quotes)")
        }
        let text = raw.replacingUnderscores()
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where text.hasPrefix(prefix) {
            guard let value = Int64(text.dropFirst(2), radix: radix) else { throw error("invalid number '\(raw)'") }
            return .integer(value)
        }
        if let value = Int64(text) { return .integer(value) }
        switch text {
        case "inf", "+inf": return .float(.infinity)
        case "-inf": return .float(-.infinity)
        case "nan", "+nan", "-nan": return .float(.nan)
        default: break
        }
        let isFloatShaped = text.contains(".") || text.lowercased().contains("e")
        guard isFloatShaped, let value = Double(text) else {
            index = start
            throw error("invalid value '\(raw)' (a string needs quotes)")
        }
        return .float(value)
    }

    /// Whether `text` is written as TOML 1.0 writes a number: decimal integers without leading
    /// zeros, hexadecimal, octal and binary ones without a sign, floats with digits on both sides
    /// of the point, underscores only between digits, and `inf` and `nan`.
    static func isTOMLNumber(_ text: [UInt8]) -> Bool {
        var rest = text[...]
        func digits(_ isDigit: (UInt8) -> Bool) -> Bool {
            guard let first = rest.first, isDigit(first) else { return false }
            rest = rest.dropFirst()
            while let byte = rest.first {
                if byte == UInt8(ascii: "_") {
                    guard rest.count > 1, isDigit(rest[rest.startIndex + 1]) else { return false }
                    rest = rest.dropFirst(2)
                } else if isDigit(byte) {
                    rest = rest.dropFirst()
                } else {
                    break
                }
            }
            return true
        }
        let decimal = { (byte: UInt8) in byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
        for (prefix, isDigit) in [
            (
                "0x",
                { (byte: UInt8) in
                    decimal(byte) || (byte | 0x20 >= UInt8(ascii: "a") && byte | 0x20 <= UInt8(ascii: "f"))
                }
            ),
            ("0o", { (byte: UInt8) in byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "7") }),
            ("0b", { (byte: UInt8) in byte == UInt8(ascii: "0") || byte == UInt8(ascii: "1") }),
        ] where text.starts(with: Array(prefix.utf8)) {
            rest = rest.dropFirst(2)
            return digits(isDigit) && rest.isEmpty
        }
        if let sign = rest.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { rest = rest.dropFirst() }
        if rest.elementsEqual("inf".utf8) || rest.elementsEqual("nan".utf8) { return true }
        let integerStart = rest
        guard digits(decimal) else { return false }
        if integerStart.first == UInt8(ascii: "0"), integerStart.count - rest.count > 1 { return false }
        if rest.first == UInt8(ascii: ".") {
            rest = rest.dropFirst()
            guard digits(decimal) else { return false }
        }
        if let e = rest.first, e | 0x20 == UInt8(ascii: "e") {
            rest = rest.dropFirst()
            if let sign = rest.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { rest = rest.dropFirst() }
            guard digits(decimal) else { return false }
        }
        return rest.isEmpty
    }

    private static func isNumberByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"), UInt8(ascii: "+"), UInt8(ascii: "-"),
            UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }

    // MARK: Strings

    private mutating func parseBasicString() throws(TOMLSyntaxError) -> String {
        advance()
        var scalars: [UInt8] = []
        while true {
            guard let byte = peek(), byte != UInt8(ascii: "\n") else { throw error("unterminated string") }
            advance()
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: scalars, as: UTF8.self)
            case UInt8(ascii: "\\"):
                try parseEscape(into: &scalars)
            default:
                scalars.append(byte)
            }
        }
    }

    private mutating func parseMultilineBasicString() throws(TOMLSyntaxError) -> String {
        index += 3
        skipOneNewline()
        var scalars: [UInt8] = []
        while true {
            if startsWith("\"\"\"") {
                index += 3
                return String(decoding: scalars, as: UTF8.self)
            }
            guard let byte = peek() else { throw error("unterminated multi-line string") }
            advance()
            if byte == UInt8(ascii: "\n") { noteNewline() }
            if byte == UInt8(ascii: "\\") {
                if let next = peek(),
                    next == UInt8(ascii: "\n") || next == UInt8(ascii: " ")
                        || next == UInt8(ascii: "\r") || next == UInt8(ascii: "\t")
                {
                    skipWhitespaceCommentsAndNewlines(allowComments: false)
                    continue
                }
                try parseEscape(into: &scalars)
            } else {
                scalars.append(byte)
            }
        }
    }

    private mutating func parseLiteralString() throws(TOMLSyntaxError) -> String {
        advance()
        let start = index
        while let byte = peek(), byte != UInt8(ascii: "'") {
            guard byte != UInt8(ascii: "\n") else { throw error("unterminated string") }
            advance()
        }
        guard peek() != nil else { throw error("unterminated string") }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        advance()
        return text
    }

    private mutating func parseMultilineLiteralString() throws(TOMLSyntaxError) -> String {
        index += 3
        skipOneNewline()
        let start = index
        while !startsWith("'''") {
            guard let byte = peek() else { throw error("unterminated multi-line string") }
            advance()
            if byte == UInt8(ascii: "\n") { noteNewline() }
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        index += 3
        return text
    }

    private mutating func parseEscape(into scalars: inout [UInt8]) throws(TOMLSyntaxError) {
        guard let byte = peek() else { throw error("unterminated escape") }
        advance()
        let simple: [UInt8: UInt8] = [
            UInt8(ascii: "b"): 0x08, UInt8(ascii: "t"): 0x09, UInt8(ascii: "n"): 0x0A, UInt8(ascii: "f"): 0x0C,
            UInt8(ascii: "r"): 0x0D, UInt8(ascii: "\""): 0x22, UInt8(ascii: "\\"): 0x5C,
        ]
        if let replacement = simple[byte] {
            scalars.append(replacement)
            return
        }
        let digits: Int
        switch byte {
        case UInt8(ascii: "u"): digits = 4
        case UInt8(ascii: "U"): digits = 8
        default: throw error("invalid escape '\\\(Character(Unicode.Scalar(byte)))'")
        }
        guard index + digits <= bytes.count,
            let code = UInt32(String(decoding: bytes[index..<index + digits], as: UTF8.self), radix: 16),
            let scalar = Unicode.Scalar(code)
        else { throw error("invalid unicode escape") }
        index += digits
        scalars.append(contentsOf: Array(String(Character(scalar)).utf8))
    }

    // MARK: Lexing helpers

    private func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private mutating func advance() {
        index += 1
    }

    private func startsWith(_ literal: String) -> Bool {
        let literalBytes = Array(literal.utf8)
        guard index + literalBytes.count <= bytes.count else { return false }
        return bytes[index..<index + literalBytes.count].elementsEqual(literalBytes)
    }

    private mutating func noteNewline() {
        line += 1
        lineStart = index
    }

    private mutating func skipOneNewline() {
        if startsWith("\r\n") { index += 1 }
        if peek() == UInt8(ascii: "\n") {
            advance()
            noteNewline()
        }
    }

    private mutating func skipWhitespace() {
        while let byte = peek(), byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { advance() }
    }

    private mutating func skipWhitespaceCommentsAndNewlines(allowComments: Bool = true) {
        while let byte = peek() {
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                advance()
            case UInt8(ascii: "\n"):
                advance()
                noteNewline()
            case UInt8(ascii: "#") where allowComments:
                while let next = peek(), next != UInt8(ascii: "\n") { advance() }
            default:
                return
            }
        }
    }

    private mutating func expectEndOfLine() throws(TOMLSyntaxError) {
        skipWhitespace()
        if peek() == UInt8(ascii: "#") {
            while let next = peek(), next != UInt8(ascii: "\n") { advance() }
        }
        if peek() == UInt8(ascii: "\r") { advance() }
        guard let byte = peek() else { return }
        guard byte == UInt8(ascii: "\n") else { throw error("expected the end of the line") }
        advance()
        noteNewline()
    }

    private mutating func expect(_ byte: UInt8, _ message: String) throws(TOMLSyntaxError) {
        guard peek() == byte else { throw error(message) }
        advance()
    }

    private func error(_ message: String) -> TOMLSyntaxError {
        TOMLSyntaxError(line: line, column: index - lineStart + 1, message: message)
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String {
        String(filter { $0 != "_" })
    }
}
