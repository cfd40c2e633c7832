/// One node's membership decisions: the `NodeController` plus what surrounds it on a node — the
/// administrator's modes and standby, the fence schedule, and the requests exchanged with the
/// peer's administrator.
///
/// Pure, like the controller: the shell feeds it inputs with the time and what it knows of the
/// volumes, and carries out the returned actions in order. Nothing here reads a clock, a file or
/// a socket, so a script of inputs and the actions it gives read as a trace (see the trace tests).
public struct NodeLoop: Sendable {
    public enum Input: Sendable, Equatable {
        /// Time passed. `replicationHeardAt`: when the replication link last carried a frame.
        case tick(replicationHeardAt: Duration?)
        /// A datagram on a heartbeat link (`link` is `nil` for the witness).
        case datagram(MembershipMessage, link: String?)
        /// This node's administrator: standby (`true`) or online.
        case standby(Bool, RequestID)
        /// This node's administrator asks the peer for standby or online.
        case peerStandby(Bool, RequestID)
        /// This node's administrator forces a promotion (no witness only).
        case force(RequestID)
        /// A mode command; `nil` only reports the modes.
        case mode(ModeCommand?, RequestID)
        /// The fence command finished: whether the peer is certainly off, and what it said.
        case fenced(Bool, String)
        /// The `.storeModes` of `input` failed with `reason`; the loop is as it was before `input`.
        indirect case modesNotStored(reason: String, input: Input)
    }

    public private(set) var controller: NodeController
    public private(set) var modes: ModeRecord
    /// The administrator's standby choice (persisted with the voter record).
    public private(set) var standby: Bool
    let hasFence: Bool
    /// Set by a peer's `tandem start`: stay out of the role until that peer is primary.
    private var rejoinWhenPeerPrimary = false
    /// Set by this node's `tandem stop` until the peer is locked and stopped.
    private var finishingStop = false
    /// After a stop: until when to tell a still-locked peer to return to default mode.
    private var unlockUntil: Duration?
    /// A standby or online asked of the peer: repeated until its heartbeat shows it, or the deadline.
    private var peerRequest: (standby: Bool, sentAt: Duration, until: Duration, id: RequestID)?
    /// The last standby or online the peer asked of this node that was refused (said once).
    private var refusedPeerRequest: ModeRequest?
    /// The last mode record that could not be stored (said once).
    private var unstoredModes: ModeRecord?
    /// When the fence command may run next (not while one runs, not again at once after a failure).
    private var fenceAllowedAt: Duration? = .zero

    /// How long a standby or online asked of the peer may take to show in its heartbeat.
    public static let peerRequestTimeout = Duration.seconds(15)
    /// How long after a stop a still-locked peer is told to return to default mode.
    static let unlockWindow = Duration.seconds(10)

    /// A loop starting at `now` with what the node had persisted; `hasFence`: a fence command and
    /// no witness.
    public init(
        settings: MembershipSettings, record: VoterRecord, standby: Bool, modes: ModeRecord, now: Duration
    ) {
        self.modes = modes
        self.standby = standby
        self.hasFence = settings.hasFence
        controller = NodeController(
            settings: settings, record: record, standby: Self.holdsBack(modes, standby: standby), now: now)
        // The first heartbeat carries the mode: nothing else to tell yet.
        _ = controller.setMode(modes.mode)
    }

    /// What the shell does before the first input: the groups and the volumes' write rule.
    public func start() -> [MembershipAction] {
        var actions: [MembershipAction] = []
        if let blocker = modes.failedStartup {
            actions.append(
                .event("failed-startup: \(blocker); this node takes no primary role until `tandem clear`"))
        }
        if let blocker = controller.automaticFailoverBlocker { actions.append(.event(blocker)) }
        // Until the controller says otherwise, a primary's writes wait for the peer.
        actions.append(.completeWithoutPeer(controller.completesWithoutPeer))
        actions.append(.groups(holdsBack ? .stopAll : .role(.secondary)))
        actions.append(.groups(.monitoring(modes.mode != .config)))
        return actions
    }

    var node: String { controller.settings.name }
    var peer: String? { controller.settings.peer }
    /// Whether the node keeps out of the primary role: standby by choice, locked, or blocked.
    var holdsBack: Bool { Self.holdsBack(modes, standby: standby) }

    static func holdsBack(_ record: ModeRecord, standby: Bool) -> Bool {
        standby || record.mode == .locked || record.failedStartup != nil
    }

    // MARK: Inputs

    /// Decides what `input` calls for. `facts`: what the shell knows of the volumes now.
    public mutating func on(
        _ input: Input, facts: NodeController.LocalFacts, now: Duration
    ) -> [MembershipAction] {
        var actions: [MembershipAction]
        switch input {
        case .tick(let heardAt):
            if let heardAt { controller.peerLinkActive(link: "replication", now: heardAt) }
            actions = controller.tick(now: now, facts: facts)
            actions += followPeerRequest(now: now)
            actions += considerFence(now: now)
        case .fenced(let success, let output):
            actions = fenced(success, output: output, now: now)
        case .datagram(.modeRequest(let sender, let request), _) where sender == peer:
            actions = peerAsked(request, sender: sender, now: now)
        case .datagram(let message, let link):
            actions = []
            if case .heartbeat(let heartbeat) = message, heartbeat.sender == peer {
                actions = heardPeer(heartbeat, now: now)
            }
            actions += controller.receive(message, link: link, now: now)
        case .standby(let value, let id):
            switch changeStandby(value, now: now) {
            case .success(let done):
                // Answered once the choice is durable, before the handover is carried out: a
                // resource group asks for standby and waits for the answer, while the handover
                // waits for the groups to stop.
                actions = done
                actions.insert(.answer(id, .done), at: 1)
            case .failure(let refusal): actions = [.answer(id, .refused(refusal.reason))]
            }
        case .peerStandby(let value, let id):
            actions = askPeer(standby: value, id: id, now: now)
        case .force(let id):
            switch controller.forcePromote(now: now) {
            case .success(let forced): actions = [.forceUpToDate] + forced + [.answer(id, .done)]
            case .failure(let error): actions = [.answer(id, .refused(error.description))]
            }
        case .mode(let command, let id):
            actions = []
            if let command {
                switch apply(command, now: now) {
                case .success(let done): actions = done
                case .failure(let refusal): return [.answer(id, .refused(refusal.reason))]
                }
            }
            actions.append(.answer(id, .modes(view(now: now))))
        case .modesNotStored(let reason, let input):
            actions = modesNotStored(reason, input: input)
        }
        // Writes held while the peer was away are on it once it is in sync (the resync brought
        // them over); looked at on every tick, a few times per heartbeat interval.
        if case .tick = input, facts.peerInSync { actions.append(.releaseHeldWrites) }
        return actions
    }

    /// The peer's administrator asked something of this node.
    private mutating func peerAsked(_ request: ModeRequest, sender: String, now: Duration) -> [MembershipAction] {
        switch request {
        case .standby, .online:
            let value = request == .standby
            guard value != standby else { return [] }
            switch changeStandby(value, now: now) {
            case .success(let done):
                refusedPeerRequest = nil
                return [.event("\(request.rawValue) requested by \(sender)")] + done
            case .failure(let refusal):
                guard refusedPeerRequest != request else { return [] }
                refusedPeerRequest = request
                return [.event("\(request.rawValue) requested by \(sender) refused: \(refusal.reason)")]
            }
        case .start, .stop, .unlock:
            // The peer's administrator ran `tandem start` or `tandem stop` there: stop now (locked
            // while the peer stops too), and for start come back once it is primary.
            modes.mode = request == .stop ? .locked : .default
            standby = true
            rejoinWhenPeerPrimary = request == .start
            var actions = controller.setMode(modes.mode) + controller.setStandby(true, now: now)
            actions.append(
                .event(
                    request == .unlock
                        ? "\(sender) finished stopping the pair: \(node) stopped in default mode"
                        : "\(request.rawValue) requested by \(sender): \(node) stops its services, mode "
                            + modes.mode.rawValue))
            actions.append(.groups(.stopAll))
            return [.storeModes(modes), .persist(controller.voter.record)] + actions
            return actions
        }
    }

    /// A heartbeat from the peer, before the controller hears it.
    private mutating func heardPeer(_ heartbeat: Heartbeat, now: Duration) -> [MembershipAction] {
        var actions: [MembershipAction] = []
        if let request = peerRequest, heartbeat.standby == request.standby {
            actions.append(.answer(request.id, .done))
            peerRequest = nil
        }
        actions += peerReturned()
        if finishingStop, heartbeat.mode != .locked {
            // Datagrams get lost: ask again until the peer reports locked.
            actions.append(.send(.modeRequest(sender: node, request: .stop), to: .peer))
        } else if finishingStop, heartbeat.standby, !heartbeat.isPrimary, controller.role != .primary {
            // Both stopped: back to default mode on both, still stopped.
            finishingStop = false
            unlockUntil = now + Self.unlockWindow
            modes.mode = .default
            actions.append(.storeModes(modes))
            actions += controller.setMode(.default)
            actions.append(.event("stop complete: both nodes stopped in default mode"))
        }
        if let until = unlockUntil {
            if heartbeat.mode == .locked, now < until {
                actions.append(.send(.modeRequest(sender: node, request: .unlock), to: .peer))
            } else {
                unlockUntil = nil
            }
        }
        if rejoinWhenPeerPrimary, heartbeat.isPrimary {
            rejoinWhenPeerPrimary = false
            standby = false
            actions.append(.persist(controller.voter.record))
            actions += controller.setStandby(holdsBack, now: now)
            actions.append(.groups(.role(.secondary)))
        }
        return actions
    }

    /// A peer that was certified down speaks again: the certification is erased, this node goes
    /// back to default mode and stops its services, which then run again under HA monitoring.
    private mutating func peerReturned() -> [MembershipAction] {
        guard let next = ModeRules.peerTalked(modes) else { return [] }
        modes = next
        return [.storeModes(modes)] + controller.setMode(modes.mode) + [
            .groups(.monitoring(true)), .groups(.stopAll), .groups(.role(servingRole)),
            .event(
                "the peer certified down is talking again: certification erased, \(node) back in "
                    + "\(modes.mode.rawValue) mode, its services restarted under HA monitoring"),
        ]
    }

    /// The role the groups run in when the node does not hold back.
    private var servingRole: ClusterRole { controller.role == .primary ? .primary : .secondary }

    /// A standby or online asked of the peer: answered when its heartbeat shows it, asked again
    /// every heartbeat interval (datagrams get lost), refused at the deadline.
    private mutating func followPeerRequest(now: Duration) -> [MembershipAction] {
        guard let request = peerRequest, let peer else { return [] }
        if now >= request.until {
            peerRequest = nil
            return [
                .answer(
                    request.id,
                    .refused(
                        "\(peer) did not show \(request.standby ? "standby" : "online") within "
                            + "\(Self.peerRequestTimeout); its events (`tandem events --node \(peer)`) say why"))
            ]
        }
        guard now - request.sentAt >= controller.settings.heartbeatInterval else { return [] }
        peerRequest?.sentAt = now
        return [Self.standbyRequest(request.standby, from: node)]
    }

    private mutating func askPeer(standby value: Bool, id: RequestID, now: Duration) -> [MembershipAction] {
        guard let peer, controller.peerAlive(at: now) else {
            return [.answer(id, .refused("\(peer ?? "the peer") is not heard from: run the command on that node"))]
        }
        if controller.peerHeartbeat?.standby == value { return [.answer(id, .done)] }
        var actions: [MembershipAction] = []
        if let earlier = peerRequest { actions.append(.answer(earlier.id, .refused("superseded by a newer request"))) }
        peerRequest = (value, now, now + Self.peerRequestTimeout, id)
        actions.append(Self.standbyRequest(value, from: node))
        actions.append(.event("\(value ? "standby" : "online") of \(peer) asked by administrator on \(node)"))
        return actions
    }

    static func standbyRequest(_ standby: Bool, from node: String) -> MembershipAction {
        .send(.modeRequest(sender: node, request: standby ? .standby : .online), to: .peer)
    }

    /// With a fence command and no witness: a secondary that may take over and hears nothing of a
    /// primary peer powers it off first. One run at a time, and not again at once after a failure.
    private mutating func considerFence(now: Duration) -> [MembershipAction] {
        guard hasFence, let allowed = fenceAllowedAt, now >= allowed, controller.role != .primary,
            controller.isEligible, !controller.peerAlive(at: now), controller.peerHeartbeat?.isPrimary == true
        else { return [] }
        fenceAllowedAt = nil
        return [.event("\(peer ?? "peer") is silent: running the fence command"), .runFence]
    }

    private mutating func fenced(_ success: Bool, output: String, now: Duration) -> [MembershipAction] {
        if success, controller.role != .primary, !controller.peerAlive(at: now),
            case .success(let forced) = controller.forcePromote(now: now)
        {
            fenceAllowedAt = .zero
            return [.event("fence command powered \(peer ?? "the peer") off: \(output)")] + forced
        }
        fenceAllowedAt = now + controller.settings.deadTime
        return [.event("fence command failed, nothing moves: \(output)")]
    }

    private mutating func modesNotStored(_ reason: String, input: Input) -> [MembershipAction] {
        switch input {
        case .mode(_, let id):
            return [.answer(id, .refused(reason))]
        case .datagram(.modeRequest(let sender, let request), _):
            return [.event("\(request.rawValue) requested by \(sender) refused: \(reason)")]
        default:
            // A change the loop makes on its own (the peer returned, a stop completed) is tried
            // again with the next heartbeat; said once.
            guard unstoredModes != modes else { return [] }
            unstoredModes = modes
            return [.event("mode change not made: \(reason)")]
        }
    }

    // MARK: Administrator modes

    /// Carries out `command`; the actions, or why it was refused.
    private mutating func apply(_ command: ModeCommand, now: Duration) -> Result<[MembershipAction], ModeRefusal> {
        let change: ModeChange
        switch ModeRules.apply(
            command, to: modes, remote: remoteMode(now: now), peerAlive: controller.peerAlive(at: now))
        {
        case .success(let made): change = made
        case .failure(let refusal): return .failure(refusal)
        }
        let changed = change.record != modes
        modes = change.record
        if let value = change.standby { standby = value }
        var actions: [MembershipAction] = [.storeModes(modes)]
        if let request = change.peerRequest, let peer {
            actions.append(.send(.modeRequest(sender: node, request: request), to: .node(peer)))
        }
        actions += controller.setMode(modes.mode)
        actions += controller.setStandby(holdsBack, now: now)
        // A node in single or config mode whose peer is certified down takes the role without a
        // quorum when there is no witness: the administrator vouched that the peer is off.
        if [.single, .config, .default].contains(modes.mode), modes.peerCertifiedDown, !holdsBack,
            controller.role != .primary, !controller.peerAlive(at: now),
            case .success(let forced) = controller.forcePromote(now: now)
        {
            actions += forced
        }
        if changed || command == .start || command == .stop {
            actions.append(.event("mode command \(command.name) by administrator: now \(describe(modes))"))
        }
        finishingStop = command == .stop
        actions.append(.groups(.monitoring(modes.mode != .config)))
        actions.insert(.persist(controller.voter.record), at: 1)
        actions.append(.groups(holdsBack ? .stopAll : .role(servingRole)))
        return .success(actions)
    }

    /// Puts this node in standby or back online, for its own administrator or the peer's.
    private mutating func changeStandby(_ value: Bool, now: Duration) -> Result<[MembershipAction], ModeRefusal> {
        if let refusal = ModeRules.standbyRefusal(value, record: modes, node: node) { return .failure(refusal) }
        standby = value
        let actions = controller.setStandby(holdsBack, now: now)
        return .success([.persist(controller.voter.record)] + actions)
    }

    // MARK: Views

    /// The peer's mode as this node sees it: its heartbeat's when alive, `peerdown` when silent
    /// and certified, else unknown.
    public func remoteMode(now: Duration) -> NodeMode? {
        if controller.peerAlive(at: now), let heartbeat = controller.peerHeartbeat { return heartbeat.mode }
        return modes.peerCertifiedDown ? .peerdown : nil
    }

    /// Both nodes' modes and statuses.
    public func view(now: Duration) -> ModeView {
        let localStatus: NodeRunStatus =
            controller.role == .primary
            ? .primary
            : (controller.standby || modes.mode == .locked || modes.failedStartup != nil) ? .stopped : .running
        var remoteStatus: NodeRunStatus?
        if controller.peerAlive(at: now), let heartbeat = controller.peerHeartbeat {
            remoteStatus = heartbeat.isPrimary ? .primary : heartbeat.standby ? .stopped : .running
        } else if modes.peerCertifiedDown {
            remoteStatus = .stopped
        }
        return ModeView(
            localMode: modes.mode, localStatus: localStatus, remoteMode: remoteMode(now: now),
            remoteStatus: remoteStatus, peerCertifiedDown: modes.peerCertifiedDown,
            failedStartup: modes.failedStartup)
    }

    func describe(_ record: ModeRecord) -> String {
        "mode \(record.mode.rawValue)" + (record.peerCertifiedDown ? ", peer certified down" : "")
            + (record.failedStartup.map { ", failed-startup: \($0)" } ?? "")
    }
}
