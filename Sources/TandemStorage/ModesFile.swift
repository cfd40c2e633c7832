import TandemCore

/// The file `NODE.modes` holds: a node's modes, as a few lines of text and a CRC-32C, replaced
/// atomically (see `AtomicFile`).
extension ModeRecord {
    /// The file's bytes: a few lines of text and a CRC-32C.
    public func encoded() -> [UInt8] {
        var text = "tandem-modes 1\n"
        text += "mode \(mode.rawValue)\n"
        text += "peerdown \(peerCertifiedDown ? 1 : 0)\n"
        text += "failed-startup \(failedStartup?.replacing("\n", with: " ") ?? "-")\n"
        let crc = CRC32C.checksum(Array(text.utf8))
        return Array((text + "crc \(String(crc, radix: 16))\n").utf8)
    }

    /// Parses a file written by `encoded()`; `nil` when it is torn, altered or not ours.
    public static func decode(_ bytes: [UInt8]) -> ModeRecord? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.last == "" else { return nil }
        lines.removeLast()
        guard lines.count == 5, lines[0] == "tandem-modes 1", lines[4].hasPrefix("crc ") else { return nil }
        let body = lines[0..<4].map { $0 + "\n" }.joined()
        guard UInt32(lines[4].dropFirst(4), radix: 16) == CRC32C.checksum(Array(body.utf8)) else { return nil }
        guard lines[1].hasPrefix("mode "), let mode = NodeMode(rawValue: String(lines[1].dropFirst(5))),
            mode != .peerdown, lines[2] == "peerdown 0" || lines[2] == "peerdown 1",
            lines[3].hasPrefix("failed-startup ")
        else { return nil }
        let blocker = String(lines[3].dropFirst("failed-startup ".count))
        return ModeRecord(
            mode: mode, peerCertifiedDown: lines[2] == "peerdown 1", failedStartup: blocker == "-" ? nil : blocker)
    }
}
