import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

/// A file of pre-shared keys in GnuTLS's `psktool` format: one `identity:hexkey` per line, which
/// libnbd (`tls-psk-file=`) and QEMU (`tls-creds-psk`, `keys.psk`) read too.
public enum PSKFile {
    /// The most a key file may hold: bytes, lines, and bytes of an identity and of a key.
    static let maximumBytes = 256 << 10
    static let maximumIdentityBytes = 128
    static let minimumKeyBytes = 16
    static let maximumKeyBytes = 64

    /// The keys by identity; the error names the file and line.
    public static func read(path: String) throws(AgentError) -> [String: [UInt8]] {
        guard let text = ConfigFile.readText(path: path, limit: maximumBytes) else {
            throw .unsupported("cannot read the PSK file \(path): \(String(cString: strerror(errno)))")
        }
        return try parse(text, path: path)
    }

    /// Parses the file's text.
    public static func parse(_ text: String, path: String) throws(AgentError) -> [String: [UInt8]] {
        var keys: [String: [UInt8]] = [:]
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = line.trimmingSuffix { $0 == "\r" || $0 == " " }
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.lastIndex(of: ":") else {
                throw .unsupported("\(path):\(index + 1): expected identity:hexkey")
            }
            let identity = String(line[..<colon])
            let hex = Array(line[line.index(after: colon)...].utf8)
            guard !identity.isEmpty, identity.utf8.count <= maximumIdentityBytes,
                identity.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != ":" })
            else {
                throw .unsupported(
                    "\(path):\(index + 1): an identity is 1 to \(maximumIdentityBytes) printable characters")
            }
            guard hex.count % 2 == 0, (minimumKeyBytes * 2...maximumKeyBytes * 2).contains(hex.count),
                let key = decode(hex)
            else {
                throw .unsupported(
                    "\(path):\(index + 1): the key of \(UntrustedText.quoted(identity)) must be \(minimumKeyBytes) to \(maximumKeyBytes) bytes in hexadecimal"
                )
            }
            keys[identity] = key
        }
        guard !keys.isEmpty else { throw .unsupported("\(path) holds no key") }
        return keys
    }

    private static func decode(_ hex: [UInt8]) -> [UInt8]? {
        func nibble(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.count / 2)
        var index = 0
        while index < hex.count {
            guard let high = nibble(hex[index]), let low = nibble(hex[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }
}

extension Substring {
    fileprivate func trimmingSuffix(while predicate: (Character) -> Bool) -> Substring {
        var end = endIndex
        while end > startIndex, predicate(self[index(before: end)]) { end = index(before: end) }
        return self[startIndex..<end]
    }
}
