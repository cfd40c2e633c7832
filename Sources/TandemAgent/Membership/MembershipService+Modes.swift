import TandemCore
import TandemStorage

/// Administrator modes, carried out by the membership shell: they change what the controller may
/// do (standby, forced promotion) and what the groups run, and they persist in `NODE.modes`.
extension MembershipService {
    public typealias ModeCommand = TandemCore.ModeCommand
    public typealias ModeRefusal = TandemCore.ModeRefusal

    /// Both nodes' modes and statuses, as every mode command prints them.
    public struct ModeView: Sendable, Equatable {
        public var localMode: NodeMode
        public var localStatus: NodeRunStatus
        /// `nil` when the peer is silent and not certified down.
        public var remoteMode: NodeMode?
        public var remoteStatus: NodeRunStatus?
        public var peerCertifiedDown: Bool
        public var failedStartup: String?
    }

    static func loadModes(path: String) throws(AgentError) -> ModeRecord {
        let bytes: [UInt8]?
        do {
            bytes = try AtomicFile.read(path: path)
        } catch {
            throw .unsupported("cannot read \(path): \(error)")
        }
        guard let bytes else { return ModeRecord() }
        guard let record = ModeRecord.decode(bytes) else {
            throw .unsupported(
                "the mode file \(path) is torn or altered; check it, then remove it to start in default mode")
        }
        return record
    }

    /// Writes the record durably; a mode that cannot be stored is refused.
    func storeModes(_ record: ModeRecord) -> String? {
        do {
            try AtomicFile.replace(path: modesPath, bytes: record.encoded())
            return nil
        } catch {
            return "cannot store \(modesPath): \(error)"
        }
    }

    /// The peer's mode as this node sees it: its heartbeat's when alive, `peerdown` when silent and
    /// certified, else unknown.
    func remoteMode(_ controller: NodeController, _ record: ModeRecord, now: Duration) -> NodeMode? {
        if controller.peerAlive(at: now), let heartbeat = controller.peerHeartbeat { return heartbeat.mode }
        return record.peerCertifiedDown ? .peerdown : nil
    }

    func view(_ controller: NodeController, _ record: ModeRecord, now: Duration) -> ModeView {
        let localStatus: NodeRunStatus =
            controller.role == .primary
            ? .primary
            : (controller.standby || record.mode == .locked || record.failedStartup != nil) ? .stopped : .running
        var remoteStatus: NodeRunStatus?
        if controller.peerAlive(at: now), let heartbeat = controller.peerHeartbeat {
            remoteStatus = heartbeat.isPrimary ? .primary : heartbeat.standby ? .stopped : .running
        } else if record.peerCertifiedDown {
            remoteStatus = .stopped
        }
        return ModeView(
            localMode: record.mode, localStatus: localStatus, remoteMode: remoteMode(controller, record, now: now),
            remoteStatus: remoteStatus, peerCertifiedDown: record.peerCertifiedDown,
            failedStartup: record.failedStartup)
    }

    /// Whether the node keeps out of the primary role: standby by choice, locked, or blocked.
    static func holdsBack(_ record: ModeRecord, standby: Bool) -> Bool {
        standby || record.mode == .locked || record.failedStartup != nil
    }

    /// Carries out `command`; returns the controller's actions, or why it was refused.
    func apply(
        _ command: ModeCommand, controller: inout NodeController, record: inout ModeRecord, standby: inout Bool,
        now: Duration
    ) -> Result<[MembershipAction], ModeRefusal> {
        let change: ModeChange
        switch ModeRules.apply(
            command, to: record, remote: remoteMode(controller, record, now: now),
            peerAlive: controller.peerAlive(at: now))
        {
        case .success(let made): change = made
        case .failure(let refusal): return .failure(refusal)
        }
        let next = change.record
        if let value = change.standby { standby = value }
        var actions: [MembershipAction] = []
        if let request = change.peerRequest, let peer {
            actions.append(.send(.modeRequest(sender: local.name, request: request), to: .node(peer.name)))
        }
        if let problem = storeModes(next) { return .failure(ModeRefusal(problem)) }
        let changed = next != record
        record = next
        actions += controller.setMode(record.mode)
        actions += controller.setStandby(Self.holdsBack(record, standby: standby), now: now)
        // A node in single or config mode whose peer is certified down takes the role without a
        // quorum when there is no witness: the administrator vouched that the peer is off.
        if [.single, .config, .default].contains(record.mode), record.peerCertifiedDown,
            !Self.holdsBack(record, standby: standby), controller.role != .primary, !controller.peerAlive(at: now),
            case .success(let forced) = controller.forcePromote(now: now)
        {
            actions += forced
        }
        if changed || command == .start || command == .stop {
            actions.append(.event("mode command \(command.name) by administrator: now \(describe(record))"))
        }
        return .success(actions)
    }

    /// Puts this node in standby or back online, for its own administrator or the peer's.
    func changeStandby(
        _ value: Bool, modes: ModeRecord, controller: inout NodeController, standby: inout Bool, now: Duration
    ) -> Result<[MembershipAction], ModeRefusal> {
        if let refusal = ModeRules.standbyRefusal(value, record: modes, node: local.name) { return .failure(refusal) }
        var actions = controller.setStandby(Self.holdsBack(modes, standby: value), now: now)
        standby = value
        actions.insert(.persist(controller.voter.record), at: 0)
        return .success(actions)
    }

    /// The datagram that asks the peer for standby or online.
    static func standbyRequest(_ standby: Bool, from node: String) -> MembershipAction {
        .send(.modeRequest(sender: node, request: standby ? "standby" : "online"), to: .peer)
    }

    /// A peer that was certified down speaks again: the certification is erased, this node goes
    /// back to default mode and stops its services, which then run again under HA monitoring.
    func peerReturned(record: inout ModeRecord, controller: inout NodeController) -> [MembershipAction] {
        guard let next = ModeRules.peerTalked(record) else { return [] }
        record = next
        let told = controller.setMode(record.mode)
        groups?.setMonitoring(true)
        _ = storeModes(record)
        groups?.requestStopAll()
        groups?.requestRole(controller.role == .primary ? .primary : .secondary)
        return told + [
            .event(
                "the peer certified down is talking again: certification erased, \(local.name) back in "
                    + "\(record.mode.rawValue) mode, its services restarted under HA monitoring")
        ]
    }

    func describe(_ record: ModeRecord) -> String {
        "mode \(record.mode.rawValue)" + (record.peerCertifiedDown ? ", peer certified down" : "")
            + (record.failedStartup.map { ", failed-startup: \($0)" } ?? "")
    }
}
