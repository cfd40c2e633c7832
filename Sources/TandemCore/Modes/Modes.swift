/// An administrator's override of HA monitoring on one node, as StorNext's HA manager defines
/// them.
public enum NodeMode: String, Sendable, Equatable, CaseIterable {
    /// HA monitoring on: the cluster decides who is primary.
    case `default`
    /// The node runs alone, HA monitoring off; the peer must be locked or certified down.
    case single
    /// The node runs for configuration work, HA monitoring off (no restarts, no failover); the
    /// peer must be locked or certified down.
    case config
    /// The node runs nothing and never becomes primary; the peer may be in any mode.
    case locked
    /// The node was certified down by its peer (`tandem peerdown`): as the peer records it.
    case peerdown
}

/// Whether a node runs services, and as what.
public enum NodeRunStatus: String, Sendable, Equatable {
    case stopped
    case running
    case primary
}

/// Which pairs of modes may coexist: a pure function of the local and the remote mode.
///
/// Allowed: default-default, default-locked, default-peerdown, single-peerdown, single-locked,
/// config-peerdown, config-locked, locked-anything. Prohibited: single-default, single-single,
/// single-config, config-default, config-single, config-config, peerdown-anything (a node its
/// peer certified down must not run). The remote mode `peerdown` means the peer is silent and
/// certified down.
public enum ModeMatrix {
    /// `nil` when the pair is allowed, else why not.
    public static func verdict(local: NodeMode, remote: NodeMode) -> String? {
        if local == .peerdown {
            return "this node was certified down by its peer and must not run"
        }
        if remote == .peerdown || local == .locked || remote == .locked { return nil }
        switch (local, remote) {
        case (.default, .default): return nil
        case (.single, _), (.config, _):
            return "\(local.rawValue) mode needs the peer locked or certified down (peer is \(remote.rawValue))"
        case (_, .single), (_, .config):
            return "the peer is in \(remote.rawValue) mode: this node must be locked while it is"
        default:
            return "\(local.rawValue)-\(remote.rawValue) is not an allowed pair"
        }
    }

    /// Whether `local` alongside `remote` is allowed.
    public static func allowed(local: NodeMode, remote: NodeMode) -> Bool {
        verdict(local: local, remote: remote) == nil
    }
}

/// A node's modes as persisted: its own mode, whether it certified its peer down, and the
/// failed-startup blocker.
public struct ModeRecord: Sendable, Equatable {
    public var mode: NodeMode
    /// The administrator certified that the peer is down (`tandem peerdown`).
    public var peerCertifiedDown: Bool
    /// Why the node is blocked from starting until `tandem clear`, if it is.
    public var failedStartup: String?

    public init(mode: NodeMode = .default, peerCertifiedDown: Bool = false, failedStartup: String? = nil) {
        self.mode = mode
        self.peerCertifiedDown = peerCertifiedDown
        self.failedStartup = failedStartup
    }

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
