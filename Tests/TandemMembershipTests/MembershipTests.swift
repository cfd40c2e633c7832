import TandemCore
import TandemStorage
import TandemWire
import Testing

@Suite("Membership datagrams")
struct MembershipCodecTests {
    static let messages: [MembershipMessage] = [
        .heartbeat(
            Heartbeat(sender: "box-a", epoch: 7, isPrimary: true, standby: false, dataReady: true, peerInSync: false)),
        .leaseRequest(LeaseRequest(sender: "box-a", epoch: 7, id: 99, peerInSync: true)),
        .leaseReply(
            LeaseReply(sender: "witness", epoch: 7, id: 99, granted: true, knownEpoch: 7, peerOutdatedRecorded: true)),
        .voteRequest(VoteRequest(sender: "box-b", epoch: 8, id: 1 << 40)),
        .voteReply(VoteReply(sender: "box-a", epoch: 8, id: 3, granted: false, knownEpoch: 9, reason: "no — älter")),
        .release(sender: "box-a", epoch: 7, peerInSync: true),
    ]

    @Test("every message survives a round trip")
    func roundTrip() throws {
        for message in Self.messages {
            let bytes = MembershipCodec.encode(message, cluster: "media")
            #expect(try MembershipCodec.decode(bytes, cluster: "media") == message)
        }
    }

    @Test("every truncation, trailing byte, foreign cluster and bad flag is refused")
    func badDatagrams() {
        for message in Self.messages {
            let bytes = MembershipCodec.encode(message, cluster: "media")
            for length in 0..<bytes.count {
                #expect(throws: MembershipCodec.DecodeError.self) {
                    try MembershipCodec.decode(Array(bytes.prefix(length)), cluster: "media")
                }
            }
            #expect(throws: MembershipCodec.DecodeError.self) {
                try MembershipCodec.decode(bytes + [0], cluster: "media")
            }
            #expect(throws: MembershipCodec.DecodeError.self) {
                try MembershipCodec.decode(bytes, cluster: "other")
            }
        }
        var heartbeat = MembershipCodec.encode(Self.messages[0], cluster: "media")
        heartbeat[heartbeat.count - 1] = 2
        #expect(throws: MembershipCodec.DecodeError.self) { try MembershipCodec.decode(heartbeat, cluster: "media") }
        var random = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let garbage = (0..<Int.random(in: 0..<64, using: &random)).map { _ in UInt8.random(in: 0...255) }
            _ = try? MembershipCodec.decode(garbage, cluster: "media")
        }
    }
}

@Suite("Failure detector and voter")
struct VoterTests {
    @Test("a datagram is admitted once: repeats, ones too far behind and earlier runs are refused")
    func replayGuard() {
        var guardian = ReplayGuard()
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 10) == nil)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 10)?.contains("already received") == true)
        // Reordered across links: an older sequence inside the window passes once.
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 12) == nil)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 11) == nil)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 11) != nil)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 12) != nil)
        // Another sender has its own numbers.
        #expect(guardian.admit(sender: "b", incarnation: 1, sequence: 10) == nil)
        // A jump past the window forgets what lies behind it; what falls out is refused.
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 12 + ReplayGuard.windowSize) == nil)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 11)?.contains("too old") == true)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 13) == nil, "63 behind: inside the window")
        // A new run of the sender starts again from any sequence; its earlier run is refused from then on.
        #expect(guardian.admit(sender: "a", incarnation: 6, sequence: 1) == nil)
        #expect(guardian.admit(sender: "a", incarnation: 5, sequence: 500)?.contains("earlier run") == true)
        #expect(guardian.admit(sender: "a", incarnation: 6, sequence: 2) == nil)
    }

    @Test("the peer is dead only when every link has been silent for the dead time")
    func oneLinkIsEnough() {
        var detector = FailureDetector(links: ["l1", "l2", "peer"], deadTime: .seconds(2))
        #expect(!detector.isAlive(at: .zero))
        detector.heard(on: "l1", at: .seconds(1))
        detector.heard(on: "l2", at: .seconds(1))
        for second in 2...10 { detector.heard(on: "l2", at: .seconds(second)) }
        #expect(detector.isAlive(at: .milliseconds(10_500)))
        #expect(!detector.isLinkAlive("l1", at: .milliseconds(10_500)))
        #expect(detector.isAlive(at: .milliseconds(11_999)))
        #expect(!detector.isAlive(at: .seconds(12)))
        detector.heard(on: "unknown", at: .seconds(12))
        #expect(!detector.isAlive(at: .seconds(12)))
    }

    @Test("one vote per epoch, none while a lease holds, none right after a start")
    func votes() {
        var voter = Voter(name: "w", nodes: ["a", "b"], leaseTime: .seconds(2), record: VoterRecord(), now: .zero)
        #expect(!voter.vote(VoteRequest(sender: "a", epoch: 1, id: 1), at: .seconds(1)).granted)
        #expect(voter.vote(VoteRequest(sender: "a", epoch: 1, id: 1), at: .seconds(3)).granted)
        // The same epoch for another node, or a newer one while a's lease holds: refused.
        #expect(!voter.vote(VoteRequest(sender: "b", epoch: 1, id: 2), at: .seconds(6)).granted)
        #expect(!voter.vote(VoteRequest(sender: "b", epoch: 2, id: 3), at: .seconds(4)).granted)
        #expect(voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 4, peerInSync: true), at: .seconds(4)).granted)
        #expect(!voter.vote(VoteRequest(sender: "b", epoch: 2, id: 5), at: .milliseconds(5_900)).granted)
        #expect(voter.vote(VoteRequest(sender: "b", epoch: 2, id: 6), at: .seconds(6)).granted)
        // a is replaced: its renewals are refused with the newer epoch.
        let reply = voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 7, peerInSync: true), at: .seconds(7))
        #expect(!reply.granted && reply.knownEpoch == 2)
        #expect(!voter.vote(VoteRequest(sender: "x", epoch: 9, id: 8), at: .seconds(20)).granted)
    }

    /// A witness that gave epoch 1 to a, at 3 s (after its quiet start).
    private func witnessThatElectedA() -> Voter {
        var voter = Voter(name: "w", nodes: ["a", "b"], leaseTime: .seconds(2), record: VoterRecord(), now: .zero)
        #expect(voter.vote(VoteRequest(sender: "a", epoch: 1, id: 1), at: .seconds(3)).granted)
        return voter
    }

    @Test("an outdated node gets no vote until a primary says its peer is in sync")
    func outdated() {
        var voter = witnessThatElectedA()
        let lone = voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 2, peerInSync: false), at: .seconds(3))
        #expect(lone.granted && lone.peerOutdatedRecorded)
        #expect(voter.isOutdated("b"))
        let refused = voter.vote(VoteRequest(sender: "b", epoch: 2, id: 3), at: .seconds(9))
        #expect(!refused.granted && refused.reason.contains("outdated"))
        _ = voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 4, peerInSync: true), at: .seconds(10))
        #expect(!voter.isOutdated("b"))
        #expect(voter.vote(VoteRequest(sender: "b", epoch: 2, id: 5), at: .seconds(13)).granted)
    }

    @Test("a renewal overtaken by a newer one does not undo its outdated mark")
    func reorderedRenewals() {
        var voter = witnessThatElectedA()
        // Sent as 2 (in sync) then 3 (not in sync); the datagrams arrive the other way round.
        let newer = voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 3, peerInSync: false), at: .seconds(3))
        #expect(newer.granted && newer.peerOutdatedRecorded)
        let older = voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 2, peerInSync: true), at: .seconds(3))
        #expect(older.granted && !older.peerOutdatedRecorded)
        #expect(voter.isOutdated("b"), "the older renewal's 'in sync' undid the newer mark")
        // A newer renewal that says in sync clears it.
        _ = voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 5, peerInSync: true), at: .seconds(10))
        #expect(!voter.isOutdated("b"))
    }

    @Test("a release ends the promise at once, and a late renewal does not revive it")
    func release() {
        var voter = witnessThatElectedA()
        voter.release(sender: "a", epoch: 1)
        #expect(!voter.renew(LeaseRequest(sender: "a", epoch: 1, id: 2, peerInSync: true), at: .seconds(3)).granted)
        #expect(voter.vote(VoteRequest(sender: "b", epoch: 2, id: 3), at: .seconds(3)).granted)
    }
}

/// Two controllers and a witness joined by a perfect network, stepped by hand.
struct Cluster {
    var a: NodeController
    var b: NodeController
    var witness: WitnessController?
    var now = Duration.zero
    var facts = NodeController.LocalFacts(dataReady: true, peerInSync: true)
    /// Facts of one node that differ from `facts`.
    var factsOf: [String: NodeController.LocalFacts] = [:]
    var down: Set<String> = []
    /// The path between a and b is cut (each still reaches the witness).
    var cut = false
    /// Nodes that run but reach nobody, and whom nobody reaches.
    var isolated: Set<String> = []
    var log: [String] = []
    var promotions: [(String, UInt64)] = []
    var resets: [String] = []

    init(
        witness hasWitness: Bool = true, failbackAuto: Bool = false, precedenceA: Int = 10, precedenceB: Int = 20,
        standbyA: Bool = false
    ) {
        func settings(_ name: String, _ peer: String, _ mine: Int, _ theirs: Int) -> MembershipSettings {
            MembershipSettings(
                name: name, precedence: mine, peer: peer, peerPrecedence: theirs, links: ["l1"],
                heartbeatInterval: .milliseconds(200), deadTime: .seconds(2), hasWitness: hasWitness,
                waitForPeer: .seconds(10), failoverCooldown: .seconds(60), failbackAuto: failbackAuto,
                failbackDelay: .seconds(5))
        }
        a = NodeController(
            settings: settings("a", "b", precedenceA, precedenceB), record: VoterRecord(), standby: standbyA, now: .zero
        )
        b = NodeController(
            settings: settings("b", "a", precedenceB, precedenceA), record: VoterRecord(), standby: false, now: .zero)
        witness =
            hasWitness
            ? WitnessController(
                name: "w", nodes: ["a", "b"], leaseTime: .seconds(2), record: VoterRecord(), now: .zero)
            : nil
    }

    var primaries: [String] {
        [a, b].filter { $0.role == .primary && !down.contains($0.settings.name) }.map(\.settings.name)
    }

    mutating func run(for duration: Duration) {
        let end = now + duration
        while now < end {
            now += .milliseconds(50)
            for name in ["a", "b"] where !down.contains(name) {
                let mine = factsOf[name] ?? facts
                let actions = name == "a" ? a.tick(now: now, facts: mine) : b.tick(now: now, facts: mine)
                route(actions, from: name)
            }
        }
    }

    mutating func standby(_ name: String, _ value: Bool) {
        let actions = name == "a" ? a.setStandby(value, now: now) : b.setStandby(value, now: now)
        route(actions, from: name)
    }

    mutating func route(_ actions: [MembershipAction], from name: String) {
        let peer = name == "a" ? "b" : "a"
        for action in actions {
            switch action {
            case .send(let message, let destination):
                switch destination {
                case .peer, .node("a"), .node("b"): deliver(message, to: peer, from: name)
                case .witness, .node: deliver(message, to: "w", from: name)
                }
            case .promote(let epoch): promotions.append((name, epoch))
            case .reset(let reason): resets.append("\(name): \(reason)")
            case .event(let text): log.append(text)
            default: break
            }
        }
    }

    mutating func deliver(_ message: MembershipMessage, to target: String, from sender: String) {
        guard !down.contains(target), !down.contains(sender) else { return }
        if cut, Set([target, sender]) == ["a", "b"] { return }
        if isolated.contains(target) || isolated.contains(sender) { return }
        if target == "w" {
            guard var witness else { return }
            let actions = witness.receive(message, now: now)
            self.witness = witness
            route(actions, from: "w-as-\(message.sender)")
            for case .send(let reply, .node(let node)) in actions { deliver(reply, to: node, from: "w") }
            return
        }
        let actions =
            target == "a" ? a.receive(message, link: "l1", now: now) : b.receive(message, link: "l1", now: now)
        route(actions, from: target)
    }
}

@Suite("Cluster decider")
struct DeciderTests {
    @Test("two nodes booting at once end with one primary: the lower precedence")
    func startUp() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["a"])
        var reversed = Cluster(precedenceA: 30, precedenceB: 20)
        reversed.run(for: .seconds(4))
        #expect(reversed.primaries == ["b"])
    }

    @Test("a dead primary is replaced after the dead time, with a newer epoch")
    func failover() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        let killedAt = cluster.now
        cluster.down.insert("a")
        cluster.run(for: .milliseconds(1500))
        #expect(cluster.primaries.isEmpty)
        cluster.run(for: .seconds(2))
        #expect(cluster.primaries == ["b"])
        let (node, epoch) = cluster.promotions.last!
        #expect(node == "b" && epoch > cluster.promotions.first!.1)
        #expect(cluster.b.lastPromotion!.at - killedAt <= .milliseconds(2600))
    }

    @Test("without a witness nothing fails over on its own, and the cluster says so")
    func noWitness() {
        var cluster = Cluster(witness: false)
        cluster.run(for: .seconds(3))
        #expect(cluster.primaries == ["a"])
        cluster.down.insert("a")
        cluster.run(for: .seconds(20))
        #expect(cluster.primaries.isEmpty)
        #expect(cluster.b.automaticFailoverBlocker?.contains("no witness") == true)
        var forced = cluster.b
        let result = forced.forcePromote(now: cluster.now)
        guard case .success(let actions) = result else {
            Issue.record("forced promotion refused")
            return
        }
        #expect(actions.contains(.promote(epoch: 2)))
    }

    @Test("a primary cut off from both voters stops before its lease ends; the other takes over")
    func lostQuorum() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        // a can reach nobody, but keeps running.
        cluster.down.insert("w")
        cluster.witness = cluster.witness.map { _ in
            WitnessController(name: "w", nodes: ["a", "b"], leaseTime: .seconds(2), record: VoterRecord(), now: .zero)
        }
        var isolated = cluster.a
        var time = cluster.now
        var demotedAt: Duration?
        let leaseEnd = isolated.leaseUntil!
        while demotedAt == nil, time < cluster.now + .seconds(5) {
            time += .milliseconds(50)
            if isolated.tick(now: time, facts: cluster.facts).contains(where: {
                if case .demote = $0 { return true } else { return false }
            }) {
                demotedAt = time
            }
        }
        #expect(demotedAt != nil)
        #expect(demotedAt! <= leaseEnd + .milliseconds(50))
        #expect(leaseEnd - cluster.now < .seconds(2))
    }

    @Test("a node cut off from peer and witness raises no epoch, and does not depose the primary on its return")
    func preVote_keepsTheEpochOfAnIsolatedNode() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["a"])
        cluster.isolated.insert("a")
        cluster.run(for: .seconds(10))
        #expect(cluster.primaries == ["b"])
        let epoch = cluster.b.epoch
        // a asked for pre-votes all along, and nobody answered: it never raised its epoch.
        #expect(cluster.a.heartbeat().epoch < epoch)
        cluster.isolated.remove("a")
        let promotions = cluster.promotions.count
        cluster.run(for: .seconds(6))
        #expect(cluster.primaries == ["b"])
        #expect(cluster.b.epoch == epoch)
        #expect(cluster.promotions.count == promotions, "\(cluster.log.suffix(6))")
    }

    @Test("a failing group goes only to a peer that is heard, online, in default mode and ready")
    func peerUnfitForTakeover() {
        func heartbeat(standby: Bool = false, dataReady: Bool = true, mode: NodeMode = .default) -> Heartbeat {
            Heartbeat(
                sender: "b", epoch: 3, isPrimary: false, standby: standby, dataReady: dataReady, peerInSync: true,
                mode: mode)
        }
        #expect(NodeController.peerUnfitForTakeover(peer: "b", alive: true, heartbeat: heartbeat()) == nil)
        #expect(
            NodeController.peerUnfitForTakeover(peer: "b", alive: false, heartbeat: heartbeat())
                == "b is not heard from")
        #expect(
            NodeController.peerUnfitForTakeover(peer: "b", alive: true, heartbeat: heartbeat(standby: true))
                == "b is in standby")
        #expect(
            NodeController.peerUnfitForTakeover(peer: "b", alive: true, heartbeat: heartbeat(mode: .locked))
                == "b is in locked mode")
        #expect(
            NodeController.peerUnfitForTakeover(peer: "b", alive: true, heartbeat: heartbeat(dataReady: false))?
                .hasPrefix("b cannot serve") == true)
    }

    @Test("a primary that was stopped past its lease resets itself when it wakes")
    func stalledPrimaryResets() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        var frozen = cluster.a
        let actions = frozen.tick(now: cluster.now + .seconds(6), facts: cluster.facts)
        #expect(actions.contains { if case .reset = $0 { return true } else { return false } })
    }

    @Test("standby hands the role over; online makes the node eligible again")
    func standby() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        cluster.standby("a", true)
        cluster.run(for: .seconds(1))
        #expect(cluster.primaries == ["b"])
        #expect(cluster.a.heartbeat().standby)
        cluster.standby("a", false)
        cluster.run(for: .seconds(10))
        // Manual failback: b keeps the role.
        #expect(cluster.primaries == ["b"])
    }

    @Test("a handover while the peer still resyncs: once in sync, the old primary clears its outdated mark")
    func handoverBeforeThePeerIsInSync() {
        var cluster = Cluster()
        cluster.facts = NodeController.LocalFacts(dataReady: true, peerInSync: false)
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["a"])
        #expect(cluster.witness?.voter.isOutdated("b") == true)
        #expect(cluster.b.voter.isOutdated("b"))
        // a steps down before any renewal could say that b caught up.
        cluster.standby("a", true)
        cluster.run(for: .seconds(3))
        #expect(cluster.primaries.isEmpty, "an outdated b must not take over")
        // The resync ends: a, no longer writing, tells both voters.
        cluster.facts = NodeController.LocalFacts(dataReady: true, peerInSync: true)
        cluster.run(for: .seconds(5))
        #expect(cluster.witness?.voter.isOutdated("b") == false)
        #expect(cluster.primaries == ["b"])
    }

    @Test("a late heartbeat saying 'in sync' does not clear the mark of a secondary that sees itself behind")
    func lateHeartbeatDoesNotClearTheOutdatedMark() {
        var cluster = Cluster()
        cluster.facts = NodeController.LocalFacts(dataReady: true, peerInSync: false)
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["a"])
        #expect(cluster.b.voter.isOutdated("b"))
        // A heartbeat a sent while still in sync, overtaken by the renewal that outdated b.
        let late = MembershipMessage.heartbeat(
            Heartbeat(
                sender: "a", epoch: cluster.a.epoch, isPrimary: true, standby: false, dataReady: true,
                peerInSync: true))
        _ = cluster.b.receive(late, link: "l1", now: cluster.now)
        #expect(cluster.b.voter.isOutdated("b"), "the late heartbeat undid the mark")
        // Once b sees itself in sync as well, the primary's word clears it.
        cluster.facts = NodeController.LocalFacts(dataReady: true, peerInSync: true)
        cluster.run(for: .seconds(1))
        #expect(!cluster.b.voter.isOutdated("b"))
    }

    @Test("a mode change reaches the peer at once, not with the next periodic heartbeat")
    func modeChangeIsSentAtOnce() {
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        #expect(cluster.b.peerHeartbeat?.mode == .default)
        cluster.route(cluster.a.setMode(.config), from: "a")
        #expect(cluster.b.peerHeartbeat?.mode == .config)
        #expect(cluster.a.setMode(.config).isEmpty, "an unchanged mode sends nothing")
        cluster.route(cluster.a.setMode(.default), from: "a")
        #expect(cluster.b.peerHeartbeat?.mode == .default)
    }

    @Test("in single mode a primary serves on when its voters fall silent; back in default mode the lease binds again")
    func singleModeOutlivesTheLease() {
        /// a is primary, b is off (certified down), a runs in single mode and then the witness dies.
        func aloneInSingleMode() -> (Cluster, [MembershipAction]) {
            var cluster = Cluster()
            cluster.run(for: .seconds(4))
            cluster.down.insert("b")
            cluster.run(for: .seconds(3))
            let actions = cluster.a.setMode(.single)
            cluster.route(actions, from: "a")
            cluster.down.insert("w")
            cluster.run(for: .seconds(10))
            return (cluster, actions)
        }
        var (cluster, actions) = aloneInSingleMode()
        #expect(actions.contains(.leaseUntil(nil)), "the volumes must take writes past the lease's end")
        #expect(cluster.primaries == ["a"])
        #expect(cluster.a.leaseUntil! < cluster.now, "no voter renewed the lease")
        #expect(cluster.log.filter { $0.contains("serves on in single mode") }.count == 1)
        var frozen = cluster.a
        #expect(
            !frozen.tick(now: cluster.now + .seconds(6), facts: cluster.facts).contains {
                if case .reset = $0 { return true } else { return false }
            }, "a stall past the lease is no reason to reset in single mode")

        // Back in default mode with no voter: the lease binds, and it ended.
        let back = cluster.a.setMode(.default)
        cluster.route(back, from: "a")
        #expect(back.contains { if case .leaseUntil(.some) = $0 { return true } else { return false } })
        cluster.run(for: .milliseconds(100))
        #expect(cluster.primaries.isEmpty)
        #expect(cluster.log.contains { $0.contains("lost quorum") })

        // Back in default mode with the witness answering again: the renewal keeps a primary.
        (cluster, _) = aloneInSingleMode()
        cluster.down.remove("w")
        cluster.route(cluster.a.setMode(.default), from: "a")
        cluster.run(for: .seconds(3))
        #expect(cluster.primaries == ["a"])
        #expect(cluster.a.leaseUntil! > cluster.now)
    }

    @Test("a peer that returns cut off from a primary in single mode is refused by the witness, even one that slept")
    func returningPeerMeetsTheWitness() {
        // The witness dies first, while a and b are in sync: it never learns that b falls behind.
        var cluster = Cluster()
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["a"])
        cluster.down.insert("w")
        cluster.down.insert("b")
        cluster.facts.peerInSync = false
        cluster.run(for: .seconds(1))
        // The administrator certifies b down and runs a alone: no voter renews a's lease now.
        cluster.route(cluster.a.setMode(.single), from: "a")
        cluster.run(for: .seconds(10))
        #expect(cluster.primaries == ["a"])
        #expect(cluster.witness?.voter.record.outdated.contains("b") == false, "the witness slept through it")

        // The witness restarts from its record; b restarts from its own, cut off from a.
        let witnessRecord = cluster.witness!.voter.record
        cluster.witness = WitnessController(
            name: "w", nodes: ["a", "b"], leaseTime: .seconds(2), record: witnessRecord, now: cluster.now)
        cluster.b = NodeController(
            settings: cluster.b.settings, record: cluster.b.voter.record, standby: false, now: cluster.now)
        cluster.cut = true
        cluster.down.remove("w")
        cluster.down.remove("b")
        // As far as b can tell its data is whole and its peer in sync.
        cluster.factsOf["b"] = NodeController.LocalFacts(dataReady: true, peerInSync: true)
        cluster.run(for: .seconds(20))
        #expect(cluster.primaries == ["a"], "b must not become primary beside a")
        #expect(cluster.promotions.allSatisfy { $0.0 == "a" })
        #expect(
            cluster.witness?.voter.record.outdated.contains("b") == true,
            "a's first renewal tells the restarted witness that b is outdated")
        // The witness refuses b first for a's lease, which a renews there although it no longer binds a.
        #expect(
            cluster.log.contains {
                $0.contains("w refused its pre-vote") && $0.contains("the lease of a is still valid")
            },
            "\(cluster.log.suffix(5))")
    }

    @Test("automatic failback returns the role after the delay, at most once per cooldown")
    func failback() {
        var cluster = Cluster(failbackAuto: true, standbyA: true)
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["b"])
        cluster.standby("a", false)
        cluster.run(for: .seconds(4))
        #expect(cluster.primaries == ["b"])
        cluster.run(for: .seconds(70))
        #expect(cluster.primaries == ["a"])
    }

    @Test("a node alone waits for its peer unless the witness answers")
    func waitForPeer() {
        var cluster = Cluster(witness: false)
        cluster.down.insert("a")
        cluster.run(for: .seconds(30))
        #expect(cluster.primaries.isEmpty)
        var withWitness = Cluster()
        withWitness.down.insert("a")
        withWitness.run(for: .seconds(4))
        #expect(withWitness.primaries == ["b"])
    }
}
