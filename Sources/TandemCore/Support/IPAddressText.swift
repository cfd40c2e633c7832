#if canImport(Glibc)
    import Glibc
#endif

/// Checks that a config value is an IP address as written (`10.0.0.1`, `fe80::1`), not a host
/// name or anything else: every address Tandem binds or sends heartbeats from must be one.
public enum IPAddressText {
    /// Whether `text` is an IPv4 address in dotted-quad form or an IPv6 address.
    public static func isAddress(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 64 else { return false }
        var buffer = [UInt8](repeating: 0, count: 16)
        let family = text.contains(":") ? AF_INET6 : AF_INET
        return inet_pton(family, text, &buffer) == 1
    }

    /// Whether `text` is a loopback address: 127.0.0.0/8 or ::1.
    public static func isLoopback(_ text: String) -> Bool {
        guard isAddress(text) else { return false }
        if text.contains(":") {
            var buffer = [UInt8](repeating: 0, count: 16)
            _ = inet_pton(AF_INET6, text, &buffer)
            return buffer == [UInt8](repeating: 0, count: 15) + [1]
        }
        return text.hasPrefix("127.")
    }
}
