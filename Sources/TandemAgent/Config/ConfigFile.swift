import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

/// Reads the config file from disk.
public enum ConfigFile {
    /// The path used when none is given.
    public static let defaultPath = "/etc/tandem/tandem.toml"

    /// Reads and validates `path`; every problem is reported with the file, line and key.
    public static func load(path: String) throws(ConfigError) -> Configuration {
        guard let text = readText(path: path) else {
            let reason =
                errno == EFBIG
                ? "the file is larger than \(maximumBytes >> 20) MiB" : String(cString: strerror(errno))
            throw ConfigError(file: path, issues: [ConfigIssue(line: nil, key: "", message: "cannot read: \(reason)")])
        }
        return try Configuration.parse(text: text, file: path)
    }

    /// The largest config (or secret) file read.
    static let maximumBytes = 16 << 20

    /// The whole file as UTF-8 text, or `nil` when it cannot be read (`errno` says why: `EFBIG`
    /// when it is larger than `limit`).
    static func readText(path: String, limit: Int = maximumBytes) -> String? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count > 0 { bytes += chunk[0..<count] }
            if count < chunk.count { break }
            if bytes.count > limit {
                errno = EFBIG
                return nil
            }
        }
        guard ferror(file) == 0 else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}
