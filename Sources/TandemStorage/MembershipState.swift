import TandemCore

/// What a node or the witness keeps of membership across restarts: its voter record and, for a
/// node, whether it is in standby. Stored as a few lines of text with a CRC-32C, replaced atomically.
public struct MembershipState: Sendable, Equatable {
    public var record: VoterRecord
    public var standby: Bool

    public init(record: VoterRecord = VoterRecord(), standby: Bool = false) {
        self.record = record
        self.standby = standby
    }

    /// The file's bytes.
    public func encoded() -> [UInt8] {
        var text = "tandem-membership 1\n"
        text += "epoch \(record.epoch)\n"
        text += "holder \(record.holder ?? "-")\n"
        text += "outdated \(record.outdated.sorted().joined(separator: ","))\n"
        text += "standby \(standby ? 1 : 0)\n"
        let crc = CRC32C.checksum(Array(text.utf8))
        return Array((text + "crc \(String(crc, radix: 16))\n").utf8)
    }

    /// Parses a file written by `encoded()`; `nil` when it is torn, altered or not ours.
    public static func decode(_ bytes: [UInt8]) -> MembershipState? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.last == "" else { return nil }
        lines.removeLast()
        guard lines.count == 6, lines[0] == "tandem-membership 1", lines[5].hasPrefix("crc ") else { return nil }
        let body = lines[0..<5].map { $0 + "\n" }.joined()
        guard UInt32(lines[5].dropFirst(4), radix: 16) == CRC32C.checksum(Array(body.utf8)) else { return nil }
        func value(_ line: String, _ key: String) -> String? {
            line.hasPrefix(key + " ") ? String(line.dropFirst(key.count + 1)) : (line == key ? "" : nil)
        }
        guard let epochText = value(lines[1], "epoch"), let epoch = UInt64(epochText),
            let holder = value(lines[2], "holder"), let outdated = value(lines[3], "outdated"),
            let standby = value(lines[4], "standby")
        else { return nil }
        let record = VoterRecord(
            epoch: epoch, holder: holder == "-" ? nil : holder,
            outdated: Set(outdated.split(separator: ",").map(String.init)))
        return MembershipState(record: record, standby: standby == "1")
    }
}
