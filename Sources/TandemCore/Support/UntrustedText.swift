/// Text a remote party chose (an NBD client's export name, a peer's claimed cluster or node name),
/// made safe to write into a log line or a message: quoted, every control character and
/// backslash escaped (no forged lines, no terminal escapes), and cut to `limit` characters.
public enum UntrustedText {
    /// The longest part of an untrusted string that is shown.
    public static let defaultLimit = 64

    /// `text` quoted and escaped, at most `limit` of its characters, then how much was left out.
    public static func quoted(_ text: String, limit: Int = defaultLimit) -> String {
        var shown = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count == limit {
                return "\"\(shown)\"… (\(text.utf8.count) bytes in all)"
            }
            count += 1
            switch scalar {
            case "\\": shown += "\\\\"
            case "\"": shown += "\\\""
            case "\n": shown += "\\n"
            case "\r": shown += "\\r"
            case "\t": shown += "\\t"
            default:
                let value = scalar.value
                // C0 controls, DEL, C1 controls, and the line and paragraph separators.
                if value < 0x20 || (0x7F...0x9F).contains(value) || value == 0x2028 || value == 0x2029 {
                    let digits = String(value, radix: 16)
                    shown += "\\u{" + digits + "}"
                } else {
                    shown.unicodeScalars.append(scalar)
                }
            }
        }
        return "\"\(shown)\""
    }
}
