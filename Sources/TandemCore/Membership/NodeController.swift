/// Settings of the membership state machine, taken from the config.
public struct MembershipSettings: Sendable, Equatable {
    /// This node.
    public var name: String
    public var precedence: Int
    /// The other node, if the cluster has two.
    public var peer: String?
    public var peerPrecedence: Int
    /// The links the failure detector watches (heartbeat addresses and the peer connection).
    public var links: [String]
    public var heartbeatInterval: Duration
    public var deadTime: Duration
    /// Whether a witness votes.
    public var hasWitness: Bool
    /// Whether a fence command can power the peer off (it stands in for the witness).
    public var hasFence = false
    /// How long a node that never heard its peer waits before it contends without it.
    public var waitForPeer: Duration
    /// At most one automatic failover with a living primary (a failback) per this period.
    public var failoverCooldown: Duration
    /// Whether the primary role goes back to the preferred node on its own.
    public var failbackAuto: Bool
    /// How long the preferred node must be healthy and in sync before it gets the role back.
    public var failbackDelay: Duration

    public init(
        name: String, precedence: Int, peer: String?, peerPrecedence: Int, links: [String],
        heartbeatInterval: Duration, deadTime: Duration, hasWitness: Bool, waitForPeer: Duration = .seconds(30),
        failoverCooldown: Duration = .seconds(60), failbackAuto: Bool = false, failbackDelay: Duration = .seconds(30)
    ) {
        self.name = name
        self.precedence = precedence
        self.peer = peer
        self.peerPrecedence = peerPrecedence
        self.links = links
        self.heartbeatInterval = heartbeatInterval
        self.deadTime = deadTime
        self.hasWitness = hasWitness
        self.waitForPeer = waitForPeer
        self.failoverCooldown = failoverCooldown
        self.failbackAuto = failbackAuto
        self.failbackDelay = failbackDelay
    }

    /// How long a voter's promise lasts: the dead time, so that a dead primary's lease is over by
    /// the time its peer declares it dead.
    public var leaseTime: Duration { deadTime }

    /// The lease the primary counts from the moment it asked: shorter than the promise by a tenth
    /// (clock-rate drift between machines) and by one heartbeat interval (time to act on it).
    public var primaryLeaseTime: Duration { deadTime * 0.9 - heartbeatInterval / 2 }

    /// Whether this node is the preferred primary of the two.
    public var isPreferred: Bool {
        guard let peer else { return true }
        return (precedence, name) < (peerPrecedence, peer)
    }
}

/// Where a membership message goes.
public enum MembershipDestination: Sendable, Equatable {
    /// The peer, on every link.
    case peer
    /// The witness.
    case witness
    /// A node or the witness by name, on every path to it.
    case node(String)
}

/// What the shell must do, in order.
public enum MembershipAction: Sendable, Equatable {
    case send(MembershipMessage, to: MembershipDestination)
    /// Write the voter record durably before anything that follows.
    case persist(VoterRecord)
    /// Serve the volumes as primary in `epoch`.
    case promote(epoch: UInt64)
    /// Stop serving; with `drain`, let writes in flight finish and flush first (planned).
    case demote(reason: String, drain: Bool)
    /// The lease now ends at this time (a `Duration` on the controller's clock); `nil`: no end.
    case leaseUntil(Duration?)
    /// Whether writes may complete while the peer does not have them.
    case completeWithoutPeer(Bool)
    /// A newer epoch exists: refuse replication traffic from older ones.
    case observeEpoch(UInt64)
    /// Record the reason durably, then reset the node.
    case reset(reason: String)
    /// Something an administrator wants to see.
    case event(String)
    /// Quorum records this node's copy as outdated (`true`: it lacks writes a primary
    /// acknowledged), or no longer (`false`: its primary says it is in sync, and it sees itself in
    /// sync). The shell marks or clears the volumes' disk state, durably.
    case dataOutdated(Bool)

    // What the node loop (`NodeLoop`) adds around the controller.

    /// Write the mode record durably, before anything that follows. When it cannot be written,
    /// the shell carries out nothing that follows, puts the loop back as it was before this input
    /// and gives it `.modesNotStored`: a mode that cannot be stored is refused.
    case storeModes(ModeRecord)
    /// Run the fence command against the peer; its outcome comes back as `.fenced`.
    case runFence
    /// Tell the resource groups what to run.
    case groups(GroupDirective)
    /// Answer the administrator's request `id`, after everything before it was carried out.
    case answer(RequestID, Answer)
    /// The administrator forced a promotion: outdated copies serve again (the journal says what
    /// may be lost).
    case forceUpToDate
    /// The peer is in sync again: writes held while it was away may complete.
    case releaseHeldWrites
}

/// What the resource groups are told to do.
public enum GroupDirective: Sendable, Equatable {
    /// Stop every group (standby, locked, stopped).
    case stopAll
    /// Run the groups in this role.
    case role(ClusterRole)
    /// Whether groups are monitored and restarted (off in config mode).
    case monitoring(Bool)
}

/// One administrator request the shell holds a reply for.
public struct RequestID: Hashable, Sendable, CustomStringConvertible {
    public let value: UInt64
    public init(_ value: UInt64) { self.value = value }
    public var description: String { "#\(value)" }
}

/// The answer to an administrator's request.
public enum Answer: Sendable, Equatable {
    case done
    case refused(String)
    /// Both nodes' modes after a mode command.
    case modes(ModeView)
}

/// The role of this node in the cluster.
public enum ClusterRole: String, Sendable, Equatable, Codable {
    case secondary
    case candidate
    case primary
}

/// One node's part of membership: failure detection, votes, the lease, and the cluster decider.
///
/// Pure: the shell feeds it time, messages and local facts, and carries out the actions it
/// returns in order. The same code runs in the agent and in the simulator.
public struct NodeController: Sendable {
    public let settings: MembershipSettings
    public private(set) var voter: Voter
    public private(set) var detector: FailureDetector
    public private(set) var role: ClusterRole = .secondary
    /// The epoch this node is primary (or candidate) in.
    public private(set) var epoch: UInt64 = 0
    /// When the lease ends; `nil` while primary means it never ends (no witness: nobody else promotes).
    public private(set) var leaseUntil: Duration?
    /// The peer's last heartbeat.
    public private(set) var peerHeartbeat: Heartbeat?
    /// When the witness was last heard.
    public private(set) var witnessHeardAt: Duration?
    /// Whether the node keeps out of the primary role by choice.
    public private(set) var standby: Bool
    /// The administrator mode, carried in heartbeats; the shell acts on it.
    public private(set) var mode: NodeMode = .default
    /// Whether writes may complete without the peer (the outdating of the peer is recorded).
    public private(set) var completesWithoutPeer: Bool
    /// The last time this node became primary: when, in which epoch, and how long the peer had
    /// been silent (the wait its clients saw, less the time to reconnect).
    public private(set) var lastPromotion: (at: Duration, epoch: UInt64, peerSilentFor: Duration?)?
    public private(set) var facts = LocalFacts(dataReady: false, peerInSync: false)

    private let startedAt: Duration
    private var lastTick: Duration
    private var nextHeartbeat: Duration
    private var nextID: UInt64 = 1
    private var leaseRequests: [UInt64: (sentAt: Duration, peerInSync: Bool)] = [:]
    /// Whether the end of the lease was reported while it did not bind (single or config mode).
    private var leaseEndReported = false
    private var lastInSyncRequestID: UInt64 = 0
    private var candidacy: (id: UInt64, sentAt: Duration)?
    /// A pre-vote asked for `epoch`: a candidacy starts only once a voter besides this node would
    /// grant it.
    private var preCandidacy: (id: UInt64, epoch: UInt64, sentAt: Duration, refusals: Int)?
    /// The last pre-vote refusal reported, so that a repeat is not.
    private var lastPreVoteRefusal: String?
    /// The epoch this node handed over in a planned step-down, and how often it has since told
    /// the voters that the peer is in sync.
    private var handedOver: (epoch: UInt64, reports: Int)?
    private var backoffUntil: Duration
    private var inSyncSince: Duration?
    private var lastAutomaticSwitch: Duration?
    private var knownEpoch: UInt64

    /// What the shell knows about the local volumes.
    public struct LocalFacts: Sendable, Equatable {
        /// Every volume is up to date, with no resync or split brain pending.
        public var dataReady: Bool
        /// Connected to the peer with every volume in sync.
        public var peerInSync: Bool

        public init(dataReady: Bool, peerInSync: Bool) {
            self.dataReady = dataReady
            self.peerInSync = peerInSync
        }
    }

    /// A controller starting at `now` with the voter record and standby flag it had persisted.
    public init(settings: MembershipSettings, record: VoterRecord, standby: Bool, now: Duration) {
        self.settings = settings
        let nodes = [settings.name] + (settings.peer.map { [$0] } ?? [])
        self.voter = Voter(
            name: settings.name, nodes: nodes, leaseTime: settings.leaseTime, record: record, now: now)
        self.detector = FailureDetector(links: settings.links, deadTime: settings.deadTime)
        self.standby = standby
        self.startedAt = now
        self.lastTick = now
        self.nextHeartbeat = now
        self.backoffUntil = now
        self.knownEpoch = record.epoch
        // A cluster that nobody can fail over to on its own needs no fencing of the peer's data.
        self.completesWithoutPeer = settings.peer == nil || !settings.hasWitness
    }

    /// Whether the peer may fail over on its own, so that the primary holds a lease and writes
    /// without the peer wait until a voter recorded the peer as outdated.
    private var fencesPeerData: Bool { settings.hasWitness && settings.peer != nil }

    /// The lease end last seen, with its epoch: within one epoch a lease only grows.
    private var leaseSeen: (epoch: UInt64, until: Duration)?

    /// What the types cannot express, checked after every input in debug builds (the tests and
    /// the simulator): a primary has an epoch, and its lease never shrinks within the epoch.
    private mutating func checkInvariants() {
        assert(role != .primary || epoch > 0, "\(settings.name) is primary in epoch 0")
        guard role == .primary, let until = leaseUntil else { return }
        if let seen = leaseSeen, seen.epoch == epoch {
            assert(until >= seen.until, "the lease of epoch \(epoch) shrank from \(seen.until) to \(until)")
        }
        leaseSeen = (epoch, until)
    }

    // MARK: Inputs

    /// Advances time: heartbeats, lease renewals, failure detection and the decider.
    public mutating func tick(now: Duration, facts: LocalFacts) -> [MembershipAction] {
        defer { checkInvariants() }
        var actions: [MembershipAction] = []
        let stalled = now - lastTick
        lastTick = now
        self.facts = facts
        if facts.peerInSync {
            if inSyncSince == nil { inSyncSince = now }
        } else {
            inSyncSince = nil
        }
        if resetIfStalled(&actions, now: now, stalled: stalled) { return actions }
        if role == .primary, let until = leaseUntil, now >= until {
            if leaseBinds {
                stepDown(
                    &actions, reason: "lost quorum: the lease of epoch \(epoch) ended", drain: false, release: false)
            } else if !leaseEndReported {
                leaseEndReported = true
                actions.append(
                    .event(
                        "the lease of epoch \(epoch) ended; \(settings.name) serves on in \(mode.rawValue) mode, "
                            + "its peer locked or certified down"))
            }
        }
        if role == .primary, facts.peerInSync, let peer = settings.peer, voter.isOutdated(peer) {
            voter.setOutdated(peer, false)
            actions.append(.persist(voter.record))
        }
        if facts.peerInSync, fencesPeerData, completesWithoutPeer {
            // Back in sync: the next disconnection must again be recorded before writes go on alone.
            completesWithoutPeer = false
            actions.append(.completeWithoutPeer(false))
        }
        if role == .secondary, voter.isOutdated(settings.name) {
            // Marked while connected, the copy is left to the connection; once apart from the
            // peer it takes the mark. Said every tick: the shell does nothing when it has it.
            actions.append(.dataOutdated(true))
        }
        if now >= nextHeartbeat {
            nextHeartbeat = now + settings.heartbeatInterval
            if settings.peer != nil { actions.append(.send(.heartbeat(heartbeat()), to: .peer)) }
            if settings.hasWitness { actions.append(.send(.heartbeat(heartbeat()), to: .witness)) }
            if role == .primary { renewLease(&actions, now: now) }
            reportPeerInSyncAfterHandover(&actions)
        }
        switch role {
        case .primary:
            considerFailback(&actions, now: now)
        case .candidate:
            if let candidacy, now - candidacy.sentAt > candidateTimeout {
                self.candidacy = nil
                // The vote this node gave itself must not stand in the way of the peer's candidacy.
                voter.release(sender: settings.name, epoch: epoch)
                role = .secondary
                backoffUntil = now + settings.heartbeatInterval * (settings.isPreferred ? 1 : 3)
                actions.append(.event("no quorum for epoch \(epoch) yet; \(settings.name) stays secondary"))
            }
        case .secondary:
            considerCandidacy(&actions, now: now)
        }
        return actions
    }

    /// A message arrived; `link` names the link it came on when it came from the peer.
    public mutating func receive(_ message: MembershipMessage, link: String?, now: Duration) -> [MembershipAction] {
        defer { checkInvariants() }
        var actions: [MembershipAction] = []
        if resetIfStalled(&actions, now: now, stalled: now - lastTick) { return actions }
        let markedBefore = voter.isOutdated(settings.name)
        actions += handle(message, link: link, now: now)
        let marked = voter.isOutdated(settings.name)
        if marked != markedBefore {
            actions.append(.dataOutdated(marked))
            if marked {
                actions.append(
                    .event("\(message.sender) records \(settings.name) as outdated: its copy lacks acknowledged writes")
                )
            }
        }
        return actions
    }

    private mutating func handle(_ message: MembershipMessage, link: String?, now: Duration) -> [MembershipAction] {
        var actions: [MembershipAction] = []
        let fromPeer = message.sender == settings.peer
        if fromPeer, let link { detector.heard(on: link, at: now) }
        if !fromPeer, message.sender != settings.name { witnessHeardAt = now }
        switch message {
        case .heartbeat(let heartbeat):
            guard fromPeer else { break }
            peerHeartbeat = heartbeat
            learnEpoch(heartbeat.epoch, &actions)
            if heartbeat.isPrimary, role == .primary, heartbeat.epoch > epoch {
                stepDown(
                    &actions, reason: "\(heartbeat.sender) is primary in newer epoch \(heartbeat.epoch)",
                    drain: false, release: false)
            }
            // Only when this node sees itself in sync too: heartbeats are datagrams and may arrive
            // out of order, and an older one saying "in sync" must not undo the mark a newer lease
            // request set while the primary completes writes this copy lacks.
            if heartbeat.isPrimary, heartbeat.peerInSync, facts.peerInSync, voter.isOutdated(settings.name) {
                voter.setOutdated(settings.name, false)
                actions.append(.persist(voter.record))
            }
        case .leaseRequest(let request):
            if role == .primary, request.epoch > epoch {
                stepDown(
                    &actions, reason: "\(request.sender) holds newer epoch \(request.epoch)", drain: false,
                    release: false)
            }
            let before = voter.record
            let reply = voter.renew(request, at: now)
            if voter.record != before { actions.append(.persist(voter.record)) }
            learnEpoch(voter.record.epoch, &actions)
            actions.append(.send(.leaseReply(reply), to: .node(request.sender)))
        case .leaseReply(let reply):
            onLeaseReply(reply, &actions, now: now)
        case .voteRequest(let request):
            let fit: (Bool, String) =
                role == .primary
                ? (false, "\(settings.name) is primary")
                : role == .candidate && request.epoch <= epoch ? (false, "\(settings.name) is a candidate") : (true, "")
            let before = voter.record
            let reply = voter.vote(request, at: now, candidateFit: fit)
            if voter.record != before { actions.append(.persist(voter.record)) }
            learnEpoch(voter.record.epoch, &actions)
            actions.append(.send(.voteReply(reply), to: .node(request.sender)))
        case .voteReply(let reply) where reply.preVote:
            learnEpoch(reply.knownEpoch, &actions)
            guard role == .secondary, let pre = preCandidacy, reply.id == pre.id, reply.epoch == pre.epoch else {
                break
            }
            guard reply.granted else {
                let said = "\(reply.sender) refused its pre-vote for epoch \(reply.epoch): \(reply.reason)"
                if said != lastPreVoteRefusal {
                    // Said once per reason: a node cut off from the primary asks every interval.
                    lastPreVoteRefusal = said
                    actions.append(.event(said))
                }
                preCandidacy?.refusals += 1
                if pre.refusals + 1 >= (settings.hasWitness ? 2 : 1) {
                    // Every other voter said no: ask again soon, not after the pre-vote's timeout.
                    preCandidacy = nil
                    backoffUntil = now + settings.heartbeatInterval * (settings.isPreferred ? 1 : 2)
                }
                break
            }
            preCandidacy = nil
            startCandidacy(&actions, now: now)
        case .voteReply(let reply):
            learnEpoch(reply.knownEpoch, &actions)
            guard role == .candidate, reply.epoch == epoch, let candidacy, reply.id == candidacy.id else { break }
            if reply.granted {
                becomePrimary(&actions, now: now, askedAt: candidacy.sentAt)
            } else {
                actions.append(.event("\(reply.sender) refused its vote for epoch \(reply.epoch): \(reply.reason)"))
            }
        case .release(let sender, let epoch, let peerInSync):
            let before = voter.record
            voter.release(sender: sender, epoch: epoch, peerInSync: peerInSync)
            if voter.record != before { actions.append(.persist(voter.record)) }
        case .modeRequest:
            // The shell carries out administrator commands.
            break
        }
        return actions
    }

    /// The peer connection carried a frame: it counts as one more link.
    public mutating func peerLinkActive(link: String, now: Duration) {
        detector.heard(on: link, at: now)
    }

    /// Puts the node in standby (a primary hands its role over first) or back online.
    public mutating func setStandby(_ standby: Bool, now: Duration) -> [MembershipAction] {
        defer { checkInvariants() }
        var actions: [MembershipAction] = []
        guard standby != self.standby else { return actions }
        self.standby = standby
        actions.append(.event("\(settings.name) is now \(standby ? "in standby" : "online")"))
        if standby, role == .primary {
            stepDown(&actions, reason: "\(settings.name) was put in standby", drain: true, release: true)
        } else if standby, role == .candidate {
            role = .secondary
            candidacy = nil
        }
        if standby { preCandidacy = nil }
        if let peer = settings.peer { actions.append(.send(.heartbeat(heartbeat()), to: .node(peer))) }
        return actions
    }

    /// Sets the administrator mode. A change is sent to the peer at once, so that a command run
    /// there next (say `tandem start` right after `tandem stop`) does not act on the old mode.
    ///
    /// In single and config mode the lease no longer bounds a primary: the volumes take writes
    /// past its end. Back in default mode it binds again from the next tick, and a primary whose
    /// lease ended meanwhile asks for a renewal at once but steps down if none came by then.
    public mutating func setMode(_ mode: NodeMode) -> [MembershipAction] {
        guard mode != self.mode else { return [] }
        let bound = leaseBinds
        self.mode = mode
        var actions: [MembershipAction] = []
        if role == .primary, bound != leaseBinds {
            leaseEndReported = false
            actions.append(.leaseUntil(leaseBinds ? leaseUntil : nil))
            if leaseBinds { renewLease(&actions, now: lastTick) }
        }
        if let peer = settings.peer { actions.append(.send(.heartbeat(heartbeat()), to: .node(peer))) }
        return actions
    }

    /// Whether the lease bounds how long this node may serve as primary. Not in single or config
    /// mode: there the peer is locked or certified down (the mode matrix admits nothing else), so
    /// nobody else can take the role, and the node keeps serving when the voters fall silent.
    private var leaseBinds: Bool { mode != .single && mode != .config }

    /// Promotes by the administrator's order, without quorum: only when there is no witness.
    public mutating func forcePromote(now: Duration) -> Result<[MembershipAction], ForceError> {
        defer { checkInvariants() }
        guard !settings.hasWitness else {
            return .failure(ForceError(description: "the cluster has a witness; it fails over on its own"))
        }
        guard role != .primary else { return .failure(ForceError(description: "\(settings.name) is already primary")) }
        var actions: [MembershipAction] = []
        let newEpoch = max(knownEpoch, voter.record.epoch) + 1
        voter.claim(epoch: newEpoch)
        actions.append(.persist(voter.record))
        epoch = newEpoch
        becomePrimary(&actions, now: now, askedAt: now)
        actions.append(.event("\(settings.name) was made primary by force in epoch \(newEpoch)"))
        return .success(actions)
    }

    /// Why a forced promotion was refused.
    public struct ForceError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    // MARK: Views

    /// Whether the peer is alive.
    public func peerAlive(at now: Duration) -> Bool { detector.isAlive(at: now) }

    /// Whether the witness answered within the dead time.
    public func witnessAlive(at now: Duration) -> Bool {
        guard let witnessHeardAt else { return false }
        return now - witnessHeardAt < settings.deadTime
    }

    /// Whether this node sees a majority of the three voters (itself included).
    public func hasQuorum(at now: Duration) -> Bool {
        if role == .primary, let leaseUntil { return now < leaseUntil }
        let votes = 1 + (peerAlive(at: now) ? 1 : 0) + (witnessAlive(at: now) ? 1 : 0)
        return votes >= 2
    }

    /// Why automatic failover cannot happen now, if it cannot.
    public var automaticFailoverBlocker: String? {
        settings.hasWitness || settings.peer == nil || settings.hasFence
            ? nil : "automatic failover is off: the cluster has no witness (use `tandem failover --force NODE`)"
    }

    /// The heartbeat this node sends.
    public func heartbeat() -> Heartbeat {
        Heartbeat(
            sender: settings.name, epoch: max(knownEpoch, epoch), isPrimary: role == .primary, standby: standby,
            dataReady: isEligible, peerInSync: facts.peerInSync, mode: mode)
    }

    /// Why `peer` could not take the primary role now (not heard from, in standby or another
    /// mode, its data not up to date or blocked), or `nil` when it could: a group that fails here
    /// is handed over only to a peer that can run it.
    public static func peerUnfitForTakeover(peer: String, alive: Bool, heartbeat: Heartbeat?) -> String? {
        guard alive, let heartbeat else { return "\(peer) is not heard from" }
        if heartbeat.standby { return "\(peer) is in standby" }
        if heartbeat.mode != .default { return "\(peer) is in \(heartbeat.mode.rawValue) mode" }
        if !heartbeat.dataReady { return "\(peer) cannot serve: its data is not up to date or it is blocked" }
        return nil
    }

    /// Whether this node could serve as primary now.
    public var isEligible: Bool {
        !standby && facts.dataReady && !voter.record.outdated.contains(settings.name)
    }

    // MARK: Decisions

    private var candidateTimeout: Duration { max(settings.heartbeatInterval * 3, .milliseconds(300)) }

    /// A primary whose lease ended while the node was not running (frozen, starved) cannot prove
    /// it stopped serving in time: it resets, whatever arrives first after it wakes.
    private mutating func resetIfStalled(
        _ actions: inout [MembershipAction], now: Duration, stalled: Duration
    ) -> Bool {
        guard role == .primary, leaseBinds, let until = leaseUntil, now - until > settings.heartbeatInterval,
            stalled > settings.heartbeatInterval
        else { return false }
        actions.append(
            .reset(
                reason: "the lease of epoch \(epoch) ended \(now - until) ago while the node was not running "
                    + "(stalled for \(stalled)); it cannot prove it stopped serving in time"))
        stepDown(&actions, reason: "lease expired while stalled", drain: false, release: false)
        return true
    }

    private mutating func considerCandidacy(_ actions: inout [MembershipAction], now: Duration) {
        guard settings.peer != nil else {
            // A lone node has nobody to contend with.
            if isEligible { becomeCandidateAlone(&actions, now: now) }
            return
        }
        guard isEligible, now >= backoffUntil else { return }
        let peerAlive = detector.isAlive(at: now)
        if peerAlive, let peer = peerHeartbeat {
            if peer.isPrimary { return }
            let peerEligible = !peer.standby && peer.dataReady && !voter.isOutdated(peer.sender)
            guard settings.isPreferred || !peerEligible else { return }
        } else if peerAlive {
            return
        } else {
            guard settings.hasWitness else { return }
        }
        if !peerAlive, detector.lastHeardAnywhere == nil, now - startedAt < settings.waitForPeer,
            !witnessAlive(at: now)
        {
            return
        }
        startPreVote(&actions, now: now)
    }

    /// Asks the peer and the witness whether they would vote for this node in the next epoch,
    /// changing nothing anywhere; the candidacy follows the first yes.
    private mutating func startPreVote(_ actions: inout [MembershipAction], now: Duration) {
        if let pre = preCandidacy {
            guard now - pre.sentAt > candidateTimeout else { return }
            // Nobody would: wait as a refused candidacy does, without having raised the epoch.
            preCandidacy = nil
            backoffUntil = now + settings.heartbeatInterval * (settings.isPreferred ? 1 : 3)
            return
        }
        let newEpoch = max(knownEpoch, voter.record.epoch) + 1
        let id = nextID
        nextID += 1
        let request = VoteRequest(sender: settings.name, epoch: newEpoch, id: id, preVote: true)
        guard voter.vote(request, at: now).granted else {
            backoffUntil = now + settings.heartbeatInterval
            return
        }
        preCandidacy = (id, newEpoch, now, 0)
        actions.append(.send(.voteRequest(request), to: .peer))
        if settings.hasWitness { actions.append(.send(.voteRequest(request), to: .witness)) }
    }

    private mutating func startCandidacy(_ actions: inout [MembershipAction], now: Duration) {
        guard isEligible, role == .secondary else { return }
        let newEpoch = max(knownEpoch, voter.record.epoch) + 1
        let id = nextID
        nextID += 1
        let selfVote = voter.vote(VoteRequest(sender: settings.name, epoch: newEpoch, id: id), at: now)
        guard selfVote.granted else {
            backoffUntil = now + settings.heartbeatInterval
            return
        }
        actions.append(.persist(voter.record))
        role = .candidate
        epoch = newEpoch
        candidacy = (id, now)
        let request = MembershipMessage.voteRequest(VoteRequest(sender: settings.name, epoch: newEpoch, id: id))
        actions.append(.send(request, to: .peer))
        if settings.hasWitness { actions.append(.send(request, to: .witness)) }
        actions.append(.event("\(settings.name) asks for votes to become primary in epoch \(newEpoch)"))
    }

    private mutating func becomeCandidateAlone(_ actions: inout [MembershipAction], now: Duration) {
        epoch = max(knownEpoch, voter.record.epoch) + 1
        voter.claim(epoch: epoch)
        actions.append(.persist(voter.record))
        becomePrimary(&actions, now: now, askedAt: now)
    }

    private mutating func becomePrimary(_ actions: inout [MembershipAction], now: Duration, askedAt: Duration) {
        role = .primary
        candidacy = nil
        knownEpoch = max(knownEpoch, epoch)
        leaseRequests.removeAll()
        let silent = detector.lastHeardAnywhere.map { now - $0 }
        lastPromotion = (now, epoch, detector.isAlive(at: now) ? nil : silent)
        if fencesPeerData {
            leaseUntil = askedAt + settings.primaryLeaseTime
        } else {
            leaseUntil = nil
        }
        actions.append(.leaseUntil(leaseBinds ? leaseUntil : nil))
        // Until a voter records that the peer lacks this epoch's writes, they wait for the peer.
        completesWithoutPeer = !fencesPeerData
        actions.append(.completeWithoutPeer(completesWithoutPeer))
        actions.append(.promote(epoch: epoch))
        actions.append(.event("\(settings.name) is primary in epoch \(epoch)"))
        if settings.peer != nil {
            actions.append(.send(.heartbeat(heartbeat()), to: .peer))
            renewLease(&actions, now: now)
        }
    }

    private mutating func renewLease(_ actions: inout [MembershipAction], now: Duration) {
        guard settings.peer != nil else { return }
        let id = nextID
        nextID += 1
        leaseRequests = leaseRequests.filter { now - $0.value.sentAt < settings.leaseTime }
        leaseRequests[id] = (now, facts.peerInSync)
        if facts.peerInSync { lastInSyncRequestID = id }
        let request = MembershipMessage.leaseRequest(
            LeaseRequest(sender: settings.name, epoch: epoch, id: id, peerInSync: facts.peerInSync))
        actions.append(.send(request, to: .peer))
        if settings.hasWitness { actions.append(.send(request, to: .witness)) }
    }

    private mutating func onLeaseReply(_ reply: LeaseReply, _ actions: inout [MembershipAction], now: Duration) {
        learnEpoch(reply.knownEpoch, &actions)
        guard role == .primary, reply.epoch == epoch, let request = leaseRequests[reply.id] else { return }
        guard reply.granted else {
            if reply.knownEpoch > epoch {
                stepDown(
                    &actions, reason: "\(reply.sender) knows newer epoch \(reply.knownEpoch)", drain: false,
                    release: false)
            }
            return
        }
        if let until = leaseUntil {
            let extended = request.sentAt + settings.primaryLeaseTime
            if extended > until {
                leaseUntil = extended
                leaseEndReported = false
                if leaseBinds { actions.append(.leaseUntil(extended)) }
            }
        }
        if reply.peerOutdatedRecorded, !request.peerInSync, reply.id > lastInSyncRequestID, !completesWithoutPeer,
            !facts.peerInSync
        {
            completesWithoutPeer = true
            if let peer = settings.peer, !voter.isOutdated(peer) {
                // This node's own vote must not go to the peer either, until it has every write again.
                voter.setOutdated(peer, true)
                actions.append(.persist(voter.record))
            }
            actions.append(.completeWithoutPeer(true))
            actions.append(
                .event(
                    "\(reply.sender) recorded that \(settings.peer ?? "the peer") is outdated; writes complete "
                        + "without it"))
        }
    }

    private mutating func considerFailback(_ actions: inout [MembershipAction], now: Duration) {
        guard settings.failbackAuto, !settings.isPreferred, let since = inSyncSince,
            now - since >= settings.failbackDelay, detector.isAlive(at: now), let peer = peerHeartbeat,
            !peer.standby, peer.dataReady
        else { return }
        if let last = lastAutomaticSwitch, now - last < settings.failoverCooldown { return }
        if let promotion = lastPromotion, now - promotion.at < settings.failoverCooldown { return }
        lastAutomaticSwitch = now
        stepDown(
            &actions, reason: "failback: \(peer.sender) is preferred, healthy and in sync", drain: true,
            release: true)
    }

    private mutating func stepDown(
        _ actions: inout [MembershipAction], reason: String, drain: Bool, release: Bool
    ) {
        guard role == .primary else { return }
        role = .secondary
        leaseUntil = nil
        leaseRequests.removeAll()
        actions.append(.demote(reason: reason, drain: drain))
        actions.append(.event("\(settings.name) stepped down from epoch \(epoch): \(reason)"))
        if release {
            handedOver = (epoch, 0)
            let message = MembershipMessage.release(sender: settings.name, epoch: epoch, peerInSync: false)
            if settings.peer != nil { actions.append(.send(message, to: .peer)) }
            if settings.hasWitness { actions.append(.send(message, to: .witness)) }
            if let peer = settings.peer { actions.append(.send(.heartbeat(heartbeat()), to: .node(peer))) }
        }
        backoffUntil = lastTick + settings.heartbeatInterval * 2
    }

    /// After a planned handover, once this node's last writes are done and the peer holds the
    /// same data, tells both voters so (a few times, datagrams get lost): a peer that was still
    /// resyncing when this node stepped down is outdated in their records, and would otherwise
    /// never get their votes.
    private mutating func reportPeerInSyncAfterHandover(_ actions: inout [MembershipAction]) {
        guard let handed = handedOver else { return }
        guard role == .secondary, knownEpoch <= handed.epoch, handed.reports < 3 else {
            handedOver = nil
            return
        }
        guard facts.peerInSync else { return }
        handedOver?.reports += 1
        let message = MembershipMessage.release(sender: settings.name, epoch: handed.epoch, peerInSync: true)
        if settings.peer != nil { actions.append(.send(message, to: .peer)) }
        if settings.hasWitness { actions.append(.send(message, to: .witness)) }
    }

    private mutating func learnEpoch(_ seen: UInt64, _ actions: inout [MembershipAction]) {
        guard seen > knownEpoch else { return }
        knownEpoch = seen
        actions.append(.observeEpoch(seen))
    }
}
