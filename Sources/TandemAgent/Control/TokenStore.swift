import Crypto
import Foundation
import Synchronization
import TandemAPI
import TandemCore
import TandemStorage

/// The API's bearer tokens: only their SHA-256 is kept, in `STATE-DIR/NODE.tokens` (owner-only,
/// replaced atomically), with a version that every change raises.
///
/// The list is cluster-wide: each node sends it to its peer over the peer link when the link comes
/// up and after every change, and a node adopts a list with a higher version. Lists changed on both
/// nodes while they were apart can end with the same version and different tokens: then the list of
/// the node whose name sorts first wins on both, and the other node's journal names the tokens it
/// dropped and gained (make them again if they are still wanted).
///
/// No token exists until an administrator creates one on the node (through the control socket,
/// which only root or the state directory's owner reaches): there is no default token, user or
/// password.
public final class TokenStore: Sendable {
    /// One token as stored: its record and the SHA-256 of the token, hexadecimal.
    struct Stored: Codable, Sendable, Equatable {
        var record: TokenRecord
        var sha256: String
    }

    struct File: Codable, Sendable, Equatable {
        var version: UInt64 = 0
        var tokens: [Stored] = []
    }

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case unreadable(String)
        case badName(String)
        case duplicateName(String)
        case unknown(String)
        case notStored(String)

        public var description: String {
            switch self {
            case .unreadable(let text): return text
            case .badName(let name):
                return "a token name is 1 to 64 letters, digits, '-', '_' or '.', found \(UntrustedText.quoted(name))"
            case .duplicateName(let name): return "a token named \(name) exists; revoke it first"
            case .unknown(let key): return "no token with the id or name \(UntrustedText.quoted(key))"
            case .notStored(let reason): return "the token list was not stored: \(reason)"
            }
        }
    }

    public let path: String
    private let node: String
    private let state: Mutex<File>
    private let changed = Mutex<(@Sendable ([UInt8]) -> Void)?>(nil)

    /// The peer-link document kind of the token list.
    public static let documentKind: UInt8 = 1

    /// Reads the node's tokens; a missing file is an empty list, a damaged one an error.
    public init(path: String, node: String) throws(Failure) {
        self.path = path
        self.node = node
        let bytes: [UInt8]?
        do {
            bytes = try AtomicFile.read(path: path)
        } catch {
            throw .unreadable("cannot read \(path): \(error)")
        }
        guard let bytes else {
            state = Mutex(File())
            return
        }
        do {
            state = Mutex(try APICoding.decoder().decode(File.self, from: Data(bytes)))
        } catch {
            throw .unreadable("the token file \(path) is damaged (\(error)); move it away and create the tokens again")
        }
    }

    /// The records, without their hashes.
    public var list: TokenList {
        state.withLock { TokenList(version: $0.version, tokens: $0.tokens.map(\.record)) }
    }

    /// Makes a token of 32 random bytes; returns it (shown once) and keeps only its hash.
    public func create(name: String, role: APIRole, expiresIn: Double?, now: Double) throws(Failure) -> CreatedToken {
        guard Self.isName(name) else { throw .badName(name) }
        var generator = SystemRandomNumberGenerator()
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let token = "tdm_" + Self.hex(secret)
        let id = Self.hex((0..<8).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let record = TokenRecord(
            id: id, name: name, role: role, createdAt: now, expiresAt: expiresIn.map { now + $0 }, createdOn: node)
        try change { file throws(Failure) in
            guard !file.tokens.contains(where: { $0.record.name == name }) else { throw .duplicateName(name) }
            file.tokens.append(Stored(record: record, sha256: Self.digest(token)))
        }
        return CreatedToken(token: token, record: record)
    }

    /// Removes the token with this id or name.
    public func revoke(_ key: String) throws(Failure) {
        try change { file throws(Failure) in
            let before = file.tokens.count
            file.tokens.removeAll { $0.record.id == key || $0.record.name == key }
            guard file.tokens.count < before else { throw .unknown(key) }
        }
    }

    /// Why a presented token is refused; the caller answers 401 for each alike.
    public enum Refusal: Error, Equatable {
        case unknown
        case expired(name: String)
    }

    /// The record of `token` if it is known and not expired. Every stored hash is compared, in
    /// constant time, whatever matched before it.
    public func authenticate(_ token: String, now: Double) -> Result<TokenRecord, Refusal> {
        let presented = Array(SHA256.hash(data: Array(token.utf8)))
        let match: TokenRecord? = state.withLock { file in
            var found: TokenRecord?
            for stored in file.tokens {
                if let expected = Self.bytes(fromHex: stored.sha256), Self.equalInConstantTime(expected, presented) {
                    found = stored.record
                }
            }
            return found
        }
        guard let match else { return .failure(.unknown) }
        if let expires = match.expiresAt, expires <= now { return .failure(.expired(name: match.name)) }
        return .success(match)
    }

    // MARK: Keeping both nodes alike

    /// Calls `send` with the list after every local change (to send it to the peer).
    public func onChange(_ send: @escaping @Sendable ([UInt8]) -> Void) {
        changed.withLock { $0 = send }
    }

    /// The list as the peer link carries it.
    public var document: [UInt8] {
        state.withLock { (try? Array(APICoding.encoder().encode($0))) ?? [] }
    }

    /// What became of a list the peer sent.
    public enum MergeOutcome: Equatable {
        /// This node's list stays (it is newer, the same, or wins the tie).
        case kept
        /// The peer's list replaced this node's; the names of the tokens that came and went.
        case adopted(version: UInt64, added: [String], removed: [String])
        /// The document does not parse or holds a malformed token; nothing changed.
        case refused(String)
    }

    /// Takes the peer's list if it is newer, or as new and `peer` sorts before this node.
    public func merge(_ bytes: [UInt8], from peer: String) -> MergeOutcome {
        let offered: File
        do {
            offered = try APICoding.decoder().decode(File.self, from: Data(bytes))
        } catch {
            return .refused("the peer's token list does not parse: \(error)")
        }
        for stored in offered.tokens
        where !Self.isName(stored.record.name) || stored.sha256.utf8.count != 64
            || Self.bytes(fromHex: stored.sha256) == nil
        {
            return .refused("the peer's token list holds a malformed token \(UntrustedText.quoted(stored.record.name))")
        }
        return state.withLock { file -> MergeOutcome in
            guard offered != file else { return .kept }
            let adopt = offered.version > file.version || (offered.version == file.version && peer < node)
            guard adopt else { return .kept }
            do {
                try AtomicFile.replace(path: path, bytes: Array(APICoding.encoder().encode(offered)))
            } catch {
                return .refused("the peer's token list was not stored: \(error)")
            }
            let before = Set(file.tokens.map(\.record.id))
            let after = Set(offered.tokens.map(\.record.id))
            let added = offered.tokens.filter { !before.contains($0.record.id) }.map(\.record.name)
            let removed = file.tokens.filter { !after.contains($0.record.id) }.map(\.record.name)
            file = offered
            return .adopted(version: offered.version, added: added, removed: removed)
        }
    }

    private func change(_ edit: (inout File) throws(Failure) -> Void) throws(Failure) {
        let document = try state.withLock { file throws(Failure) -> [UInt8] in
            var next = file
            try edit(&next)
            next.version += 1
            let bytes: Data
            do {
                bytes = try APICoding.encoder().encode(next)
            } catch {
                throw .notStored("\(error)")
            }
            do {
                try AtomicFile.replace(path: path, bytes: Array(bytes))
            } catch {
                throw .notStored("\(error)")
            }
            file = next
            return Array(bytes)
        }
        changed.withLock { $0 }?(document)
    }

    static func isName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64
            && name.unicodeScalars.allSatisfy {
                $0.properties.isAlphabetic && $0.isASCII || "0123456789-_.".unicodeScalars.contains($0)
            }
    }

    static func digest(_ token: String) -> String { hex(Array(SHA256.hash(data: Array(token.utf8)))) }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 15)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    static func bytes(fromHex text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
            default: return nil
            }
        }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: utf8.count, by: 2) {
            guard let high = value(utf8[index]), let low = value(utf8[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    /// Whether two byte strings are equal, in time that depends only on their lengths.
    static func equalInConstantTime(_ left: [UInt8], _ right: [UInt8]) -> Bool {
        guard left.count == right.count else { return false }
        var difference: UInt8 = 0
        for index in left.indices { difference |= left[index] ^ right[index] }
        return difference == 0
    }
}
