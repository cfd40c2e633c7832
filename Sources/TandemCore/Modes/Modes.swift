/// An administrator's override of HA monitoring on one node, as StorNext's HA manager defines
/// them.
public enum NodeMode: String, Sendable, Equatable, CaseIterable, Codable {
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
public enum NodeRunStatus: String, Sendable, Equatable, Codable {
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
}

/// An administrator's mode command on one node.
public enum ModeCommand: Sendable, Equatable {
    case set(NodeMode)
    case peerdown
    case peerup
    case clear
    case start
    case stop

    /// As the administrator typed it.
    public var name: String {
        switch self {
        case .set(let mode): return "mode \(mode.rawValue)"
        case .peerdown: return "peerdown"
        case .peerup: return "peerup"
        case .clear: return "clear"
        case .start: return "start"
        case .stop: return "stop"
        }
    }
}

/// What a mode command changes: the node's record, its standby choice, and what to ask of the peer.
public struct ModeChange: Sendable, Equatable {
    public var record: ModeRecord
    /// The administrator's standby choice afterwards, when the command sets it.
    public var standby: Bool?
    /// `.start` or `.stop`, to be carried to the peer.
    public var peerRequest: ModeRequest?
}

/// Whether a mode command may be carried out, and what it changes: a pure function of the command,
/// this node's record, the peer's mode as heard (`nil` when silent and not certified) and whether
/// the peer is heard at all.
public enum ModeRules {
    public static func apply(_ command: ModeCommand, to record: ModeRecord, remote: NodeMode?, peerAlive: Bool)
        -> Result<ModeChange, ModeRefusal>
    {
        var change = ModeChange(record: record)
        switch command {
        case .set(let mode):
            guard mode != .peerdown else {
                return .failure(ModeRefusal("use `tandem peerdown` to certify the peer down"))
            }
            if mode == .single || mode == .config {
                guard let remote else {
                    return .failure(
                        ModeRefusal(
                            "the peer is silent and its mode unknown: certify it down with `tandem peerdown` or lock it"
                        ))
                }
                if let reason = ModeMatrix.verdict(local: mode, remote: remote) { return .failure(ModeRefusal(reason)) }
            } else if mode == .default, let reason = leavingLockedBlind(record, remote: remote) {
                return .failure(reason)
            } else if mode == .default, let remote, let reason = ModeMatrix.verdict(local: .default, remote: remote) {
                return .failure(ModeRefusal(reason))
            }
            change.record.mode = mode
        case .peerdown:
            if peerAlive {
                return .failure(
                    ModeRefusal("the peer is alive (heartbeats arrive); peerdown certifies a peer that is powered off"))
            }
            change.record.peerCertifiedDown = true
        case .peerup:
            change.record.peerCertifiedDown = false
        case .clear:
            change.record.failedStartup = nil
        case .start:
            if let blocker = record.failedStartup {
                return .failure(ModeRefusal("blocked by failed-startup (\(blocker)); run `tandem clear` first"))
            }
            if let reason = leavingLockedBlind(record, remote: remote) { return .failure(reason) }
            if let remote, remote != .locked, let reason = ModeMatrix.verdict(local: .default, remote: remote) {
                return .failure(ModeRefusal(reason))
            }
            change.record.mode = .default
            change.standby = false
            change.peerRequest = .start
        case .stop:
            // The peer is locked and this node goes to config mode while both stop; once the peer
            // reports locked and stopped, both return to default mode, still stopped.
            change.record.mode = .config
            change.standby = true
            change.peerRequest = .stop
        }
        return .success(change)
    }

    /// A locked node that cannot hear its peer must not return to default mode: the peer may run
    /// alone in single or config mode, where its lease no longer bounds it, and two primaries
    /// would follow. The administrator certifies the peer down first (or waits until it is heard).
    static func leavingLockedBlind(_ record: ModeRecord, remote: NodeMode?) -> ModeRefusal? {
        guard record.mode == .locked, remote == nil else { return nil }
        return ModeRefusal(
            "the peer is silent and its mode unknown (it may run alone in single or config mode): "
                + "certify it down with `tandem peerdown` before leaving locked mode")
    }

    /// Whether a node in `record` may go to standby (`standby`) or back online, asked by its own
    /// administrator or the peer's; `nil` when it may.
    public static func standbyRefusal(_ standby: Bool, record: ModeRecord, node: String) -> ModeRefusal? {
        if !standby, let blocker = record.failedStartup {
            return ModeRefusal("blocked by failed-startup (\(blocker)); run `tandem clear` first")
        }
        if standby, record.mode == .single || record.mode == .config {
            return ModeRefusal("\(node) is in \(record.mode.rawValue) mode: HA monitoring is off, there is no handover")
        }
        return nil
    }

    /// A peer certified down speaks again: the certification is erased and a node running alone
    /// (single or config) returns to default mode. `nil` when nothing changes.
    public static func peerTalked(_ record: ModeRecord) -> ModeRecord? {
        guard record.peerCertifiedDown else { return nil }
        var next = record
        next.peerCertifiedDown = false
        if next.mode == .single || next.mode == .config { next.mode = .default }
        return next
    }
}

/// Why a mode command was refused.
public struct ModeRefusal: Error, Sendable, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

/// Both nodes' modes and statuses, as every mode command prints them.
public struct ModeView: Sendable, Equatable {
    public var localMode: NodeMode
    public var localStatus: NodeRunStatus
    /// `nil` when the peer is silent and not certified down.
    public var remoteMode: NodeMode?
    public var remoteStatus: NodeRunStatus?
    public var peerCertifiedDown: Bool
    public var failedStartup: String?

    public init(
        localMode: NodeMode, localStatus: NodeRunStatus, remoteMode: NodeMode?, remoteStatus: NodeRunStatus?,
        peerCertifiedDown: Bool, failedStartup: String?
    ) {
        self.localMode = localMode
        self.localStatus = localStatus
        self.remoteMode = remoteMode
        self.remoteStatus = remoteStatus
        self.peerCertifiedDown = peerCertifiedDown
        self.failedStartup = failedStartup
    }
}
