#if canImport(Glibc)
    import Glibc
#endif

/// A file could not be written.
struct FileWriteError: Error, CustomStringConvertible {
    var path: String
    var reason: String
    var description: String { "cannot write \(path): \(reason)" }
}

enum TextFile {
    /// Writes `text` to `path` with `mode`, fsync'd, creating the parent directory if needed.
    static func write(_ text: String, to path: String, mode: mode_t) throws {
        let parent = String(
            path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/"))
        if !parent.isEmpty, access(parent, F_OK) != 0, mkdir(parent, 0o755) != 0 {
            throw FileWriteError(path: parent, reason: String(cString: strerror(errno)))
        }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw FileWriteError(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        fchmod(descriptor, mode)
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let count = bytes[done...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { throw FileWriteError(path: path, reason: String(cString: strerror(errno))) }
            done += count
        }
        guard fsync(descriptor) == 0 else { throw FileWriteError(path: path, reason: String(cString: strerror(errno))) }
    }
}

enum SecretFile {
    /// Writes 32 random bytes, hex-encoded, readable by the owner only.
    static func write(path: String) throws {
        var generator = SystemRandomNumberGenerator()
        let hex = (0..<32).map { _ in
            let byte = UInt8.random(in: 0...255, using: &generator)
            return String(byte, radix: 16).count == 1 ? "0" + String(byte, radix: 16) : String(byte, radix: 16)
        }.joined()
        try TextFile.write(hex + "\n", to: path, mode: 0o600)
    }
}
