import TandemCore

/// A deterministic random source (SplitMix64): the same seed gives the same scenario.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func chance(_ probability: Double) -> Bool { Double.random(in: 0..<1, using: &self) < probability }

    mutating func milliseconds(_ range: ClosedRange<Int>) -> Duration {
        .milliseconds(Int.random(in: range, using: &self))
    }
}

/// A cluster of two nodes and a witness in simulated time, with seeded faults: crashes and restarts,
/// stalls (as SIGSTOP), lost, delayed and reordered messages, one-way and two-way partitions between
/// any two of the three voters, a cut cable, planned switchovers, and a disk that for a while
/// cannot store the peer's writes (full or failing: the write is refused, and the copy falls
/// behind until a resync). The nodes run the real
/// `NodeController` and `WitnessController`; the data path is a model of protocol C (a write is
/// acknowledged when the peer applied it, or alone once a voter recorded the peer as outdated),
/// including the volume's lease gate and the epoch check on replicated writes.
///
/// It checks, at every step: at most one node can complete writes; every promotion had a majority
/// of votes granted for it; every node that becomes primary holds every acknowledged write. After
/// the faults stop, exactly one primary must be in place within `settleBound` and stay.
public struct Simulation {
    public struct Options: Sendable {
        public var heartbeatInterval = Duration.milliseconds(200)
        public var deadTime = Duration.seconds(2)
        /// Faults are injected until this time; then the network heals and every node runs.
        public var faultPeriod = Duration.seconds(30)
        /// After the faults, one primary must be in place within this time.
        public var settleBound = Duration.seconds(12)
        /// The run ends this long after the faults.
        public var tail = Duration.seconds(16)
        /// How long a planned switchover may leave the cluster without a primary.
        public var switchoverBound = Duration.seconds(2)
        public var tickEvery = Duration.milliseconds(50)
        public var step = Duration.milliseconds(5)
        /// A broken shell that never stops serving once promoted: it breaks safety on purpose, to
        /// show that the checker notices.
        public var shellIgnoresDemotion = false
        /// A broken shell that acknowledges a write the peer refused at once, as if the peer had
        /// it: the checker must find the acknowledged write missing from the next primary.
        public var shellAcknowledgesRefusedWrites = false

        public init() {}
    }

    /// What a run found.
    public struct Report: Sendable {
        public var seed: UInt64
        public var violations: [String]
        public var promotions: Int
        public var acknowledgedWrites: Int
        public var faults: Int
        /// The last events before the end or the first violation, for replaying by eye.
        public var trace: [String]
    }

    enum Fault: String, CaseIterable {
        case crash, stall, partitionTwoWay, partitionOneWay, cutCable, witnessCrash, loss, standby, diskRefuses
    }

    struct Message {
        var deliverAt: Duration
        var order: Int
        var from: String
        var to: String
        var link: String
        var content: Content
    }

    enum Content {
        case membership(MembershipMessage)
        case replicate(write: Int, epoch: UInt64)
        case replicateAck(write: Int, epoch: UInt64, stored: Bool)
    }

    struct Node {
        let name: String
        var controller: NodeController?
        var record = VoterRecord()
        var standby = false
        var crashedUntil: Duration?
        var stalledUntil: Duration?
        var nextTick: Duration
        /// The shell's view: serving as primary, in which epoch, until when.
        var serving = false
        var servingEpoch: UInt64 = 0
        var leaseUntil: Duration?
        var completesWithoutPeer = false
        var fenceEpoch: UInt64 = 0
        /// Whether the node last said its copy is recorded outdated.
        var copyOutdated = false
        /// Durable data: the writes this copy holds.
        var disk: Set<Int> = []
        /// Writes waiting for the peer (or for the outdating of the peer).
        var waiting: [Int] = []
        var syncingUntil: Duration?
        var inSync = false
        /// Until then this node's disk cannot store the peer's writes (nor a resync).
        var refusesUntil: Duration?

        var running: Bool { crashedUntil == nil && stalledUntil == nil }
        var up: Bool { crashedUntil == nil }
    }

    public let seed: UInt64
    let options: Options
    var random: SeededRandom
    var now = Duration.zero
    var nodes: [Node] = []
    var witness: WitnessController
    var witnessRecord = VoterRecord()
    var witnessCrashedUntil: Duration?
    var queue: [Message] = []
    var order = 0
    var blocked: Set<String> = []
    var lossRate = 0.0
    var nextWrite = 1
    var acknowledged: Set<Int> = []
    var ackLog: [(node: String, epoch: UInt64, at: Duration)] = []
    var grants: [String: Set<String>] = [:]
    var violations: [String] = []
    var trace: [String] = []
    var promotions = 0
    var faults = 0
    var replicationUp = false
    var settledSince: Duration?
    var gapSince: Duration?
    let names = ["a", "b"]
    let witnessName = "w"

    public init(seed: UInt64, options: Options = Options()) {
        self.seed = seed
        self.options = options
        self.random = SeededRandom(seed: seed)
        witness = WitnessController(
            name: "w", nodes: ["a", "b"], leaseTime: options.deadTime, record: VoterRecord(), now: .zero)
        for (index, name) in names.enumerated() {
            var node = Node(name: name, nextTick: .milliseconds(7 * index + 1))
            node.controller = makeController(name, record: node.record, standby: false)
            nodes.append(node)
        }
    }

    func idx(_ name: String) -> Int { name == "a" ? 0 : 1 }

    func settings(_ name: String) -> MembershipSettings {
        let peer = name == "a" ? "b" : "a"
        return MembershipSettings(
            name: name, precedence: name == "a" ? 10 : 20, peer: peer, peerPrecedence: name == "a" ? 20 : 10,
            links: ["l1", "l2", "peer"], heartbeatInterval: options.heartbeatInterval, deadTime: options.deadTime,
            hasWitness: true, waitForPeer: .seconds(5), failoverCooldown: .seconds(10), failbackAuto: name == "b",
            failbackDelay: .seconds(3))
    }

    func makeController(_ name: String, record: VoterRecord, standby: Bool) -> NodeController {
        NodeController(settings: settings(name), record: record, standby: standby, now: now)
    }

    /// Runs the scenario to its end (or its first violation).
    public mutating func run() -> Report {
        let end = options.faultPeriod + options.tail
        var nextFault = random.milliseconds(300...2000)
        var healed = false
        while now <= end, violations.isEmpty {
            if now < options.faultPeriod, now >= nextFault {
                injectFault()
                nextFault = now + random.milliseconds(300...2500)
            }
            if !healed, now >= options.faultPeriod {
                healed = true
                healEverything()
            }
            recoverDueNodes()
            deliverDueMessages()
            updateReplicationLink()
            for name in names { tickIfDue(name) }
            clientWrites()
            checkOneWriter()
            if healed { checkSettled() }
            now += options.step
        }
        if violations.isEmpty, settledSince == nil {
            violations.append("no single primary by the end of the run (\(rolesText()))")
        }
        return Report(
            seed: seed, violations: violations, promotions: promotions, acknowledgedWrites: acknowledged.count,
            faults: faults, trace: Array(trace.suffix(60)))
    }

    // MARK: Faults

    mutating func note(_ text: String) {
        trace.append("\(now) \(text)")
        if trace.count > 400 { trace.removeFirst(200) }
    }

    mutating func injectFault() {
        faults += 1
        let node = names.randomElement(using: &random)!
        switch Fault.allCases.randomElement(using: &random)! {
        case .crash:
            guard nodes[idx(node)].up else { return }
            crash(node, restartAfter: random.milliseconds(200...5000), reason: "crash")
        case .stall:
            guard nodes[idx(node)].running else { return }
            let length = options.deadTime * Double.random(in: 0.3...3.5, using: &random)
            nodes[idx(node)].stalledUntil = now + length
            note("\(node) stalls for \(length)")
        case .partitionTwoWay, .partitionOneWay:
            let pairs = [("a", "b"), ("a", "w"), ("b", "w")]
            let (x, y) = pairs.randomElement(using: &random)!
            let oneWay = random.chance(0.5)
            let keys = oneWay ? [x + ">" + y] : [x + ">" + y, y + ">" + x]
            for key in keys { blocked.insert(key) }
            note("partition \(keys) for a while")
            scheduleHeal(keys)
        case .cutCable:
            blocked.insert("l1")
            note("cable l1 cut")
            scheduleHeal(["l1"])
        case .witnessCrash:
            guard witnessCrashedUntil == nil else { return }
            witnessCrashedUntil = now + random.milliseconds(200...6000)
            note("witness crashes")
        case .loss:
            lossRate = Double.random(in: 0...0.3, using: &random)
            note("loss rate \(lossRate)")
        case .standby:
            guard nodes[idx(node)].running, var controller = nodes[idx(node)].controller else { return }
            let standby = !controller.standby
            let actions = controller.setStandby(standby, now: now)
            nodes[idx(node)].controller = controller
            nodes[idx(node)].standby = standby
            note("\(node) standby=\(standby)")
            perform(actions, at: node)
        case .diskRefuses:
            let length = random.milliseconds(200...5000)
            nodes[idx(node)].refusesUntil = now + length
            note("\(node)'s disk refuses the peer's writes for \(length)")
        }
    }

    var heals: [(at: Duration, keys: [String])] = []

    mutating func scheduleHeal(_ keys: [String]) {
        heals.append((now + random.milliseconds(500...6000), keys))
    }

    mutating func healEverything() {
        blocked.removeAll()
        heals.removeAll()
        lossRate = 0
        if witnessCrashedUntil != nil { witnessCrashedUntil = now }
        for name in names {
            if nodes[idx(name)].crashedUntil != nil {
                nodes[idx(name)].crashedUntil = now
                nodes[idx(name)].standby = false
            }
            if nodes[idx(name)].stalledUntil != nil { nodes[idx(name)].stalledUntil = now }
            if nodes[idx(name)].standby, var controller = nodes[idx(name)].controller {
                let actions = controller.setStandby(false, now: now)
                nodes[idx(name)].controller = controller
                nodes[idx(name)].standby = false
                perform(actions, at: name)
            }
        }
        note("faults stop; everything heals")
    }

    mutating func crash(_ name: String, restartAfter: Duration, reason: String) {
        var node = nodes[idx(name)]
        node.controller = nil
        node.crashedUntil = now + restartAfter
        node.stalledUntil = nil
        node.serving = false
        node.leaseUntil = nil
        node.waiting = []
        node.syncingUntil = nil
        node.inSync = false
        nodes[idx(name)] = node
        note("\(name) \(reason)")
    }

    mutating func recoverDueNodes() {
        heals.removeAll { heal in
            guard heal.at <= now else { return false }
            for key in heal.keys { blocked.remove(key) }
            return true
        }
        if let until = witnessCrashedUntil, until <= now {
            witnessCrashedUntil = nil
            witness = WitnessController(
                name: witnessName, nodes: names, leaseTime: options.deadTime, record: witnessRecord, now: now)
            note("witness restarts")
        }
        for name in names {
            if let until = nodes[idx(name)].crashedUntil, until <= now {
                nodes[idx(name)].crashedUntil = nil
                nodes[idx(name)].fenceEpoch = nodes[idx(name)].record.epoch
                nodes[idx(name)].controller = makeController(
                    name, record: nodes[idx(name)].record, standby: nodes[idx(name)].standby)
                nodes[idx(name)].nextTick = now
                note("\(name) restarts")
            }
            if let until = nodes[idx(name)].stalledUntil, until <= now {
                nodes[idx(name)].stalledUntil = nil
                note("\(name) resumes")
            }
        }
    }

    // MARK: Network

    func isBlocked(from: String, to: String, link: String) -> Bool {
        blocked.contains(from + ">" + to) || (link == "l1" && blocked.contains("l1"))
    }

    mutating func send(_ content: Content, from: String, to: String, link: String) {
        if isBlocked(from: from, to: to, link: link) { return }
        if case .membership = content, random.chance(lossRate) { return }
        var delay = random.milliseconds(1...30)
        if random.chance(0.05) { delay += random.milliseconds(50...400) }
        order += 1
        queue.append(Message(deliverAt: now + delay, order: order, from: from, to: to, link: link, content: content))
    }

    mutating func deliverDueMessages() {
        var due: [Message] = []
        var kept: [Message] = []
        for message in queue {
            let receiverRunning =
                message.to == witnessName ? witnessCrashedUntil == nil : nodes[idx(message.to)].running
            let receiverUp = message.to == witnessName ? witnessCrashedUntil == nil : nodes[idx(message.to)].up
            if message.deliverAt <= now, receiverRunning {
                due.append(message)
            } else if receiverUp {
                kept.append(message)
            }
        }
        queue = kept
        for message in due.sorted(by: { ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order) }) {
            deliver(message)
        }
    }

    mutating func deliver(_ message: Message) {
        switch message.content {
        case .membership(let membership):
            if message.to == witnessName {
                let actions = witness.receive(membership, now: now)
                for action in actions {
                    switch action {
                    case .persist(let record):
                        if record.outdated != witnessRecord.outdated {
                            note("w records outdated \(record.outdated.sorted())")
                        }
                        witnessRecord = record
                    case .send(let reply, .node(let target)):
                        recordGrant(reply, voter: witnessName)
                        send(.membership(reply), from: witnessName, to: target, link: "w")
                    default: break
                    }
                }
            } else {
                guard var controller = nodes[idx(message.to)].controller else { return }
                let link = message.from == witnessName ? nil : message.link
                let actions = controller.receive(membership, link: link, now: now)
                nodes[idx(message.to)].controller = controller
                perform(actions, at: message.to)
            }
        case .replicate(let write, let epoch):
            let node = nodes[idx(message.to)]
            guard replicationUp, !node.serving, epoch >= node.fenceEpoch else { return }
            let stored = node.refusesUntil.map { now >= $0 } ?? true
            if stored { nodes[idx(message.to)].disk.insert(write) }
            send(
                .replicateAck(write: write, epoch: epoch, stored: stored), from: message.to, to: message.from,
                link: "peer")
        case .replicateAck(let write, let epoch, let stored):
            let node = nodes[idx(message.to)]
            guard node.serving, node.servingEpoch == epoch, let index = node.waiting.firstIndex(of: write) else {
                return
            }
            nodes[idx(message.to)].waiting.remove(at: index)
            guard !stored else { return acknowledge(write, at: message.to) }
            // The peer lacks it: both copies are out of sync until a resync, and the write waits
            // like one the peer never got, unless the peer is recorded outdated already.
            note("\(message.from) refused write \(write)")
            for name in names { nodes[idx(name)].inSync = false }
            if node.completesWithoutPeer || options.shellAcknowledgesRefusedWrites {
                acknowledge(write, at: message.to)
            } else {
                nodes[idx(message.to)].waiting.append(write)
            }
        }
    }

    /// Votes as they leave their voter: a reply that grants, or a request (sent only after the
    /// candidate voted for itself).
    mutating func recordGrant(_ message: MembershipMessage, voter: String) {
        switch message {
        case .voteReply(let reply) where reply.granted:
            grants["\(reply.epoch)", default: []].insert(voter)
        case .voteRequest(let request) where request.sender == voter:
            grants["\(request.epoch)", default: []].insert(voter)
        default:
            break
        }
    }

    // MARK: Nodes

    mutating func tickIfDue(_ name: String) {
        guard nodes[idx(name)].running, now >= nodes[idx(name)].nextTick, var controller = nodes[idx(name)].controller
        else {
            return
        }
        nodes[idx(name)].nextTick = now + options.tickEvery
        let node = nodes[idx(name)]
        let facts = NodeController.LocalFacts(
            dataReady: node.syncingUntil == nil, peerInSync: replicationUp && node.inSync)
        if replicationUp { controller.peerLinkActive(link: "peer", now: now) }
        let actions = controller.tick(now: now, facts: facts)
        nodes[idx(name)].controller = controller
        perform(actions, at: name)
    }

    mutating func perform(_ actions: [MembershipAction], at name: String) {
        for action in actions {
            guard nodes[idx(name)].up else { return }
            switch action {
            case .send(let message, let destination):
                recordGrant(message, voter: name)
                let peer = name == "a" ? "b" : "a"
                switch destination {
                case .peer, .node("a"), .node("b"):
                    for link in ["l1", "l2"] { send(.membership(message), from: name, to: peer, link: link) }
                case .witness, .node:
                    send(.membership(message), from: name, to: witnessName, link: "w")
                }
            case .persist(let record):
                if record.outdated != nodes[idx(name)].record.outdated {
                    note("\(name) records outdated \(record.outdated.sorted())")
                }
                nodes[idx(name)].record = record
            case .promote(let epoch):
                promote(name, epoch: epoch)
            case .demote(let reason, _):
                if options.shellIgnoresDemotion { break }
                if reason.contains("newer epoch"), let until = nodes[idx(name)].leaseUntil, until > now {
                    // PreVote: no candidacy raises the epoch while a primary's lease holds at a
                    // voter, so a newer epoch never reaches a primary whose lease is valid.
                    violations.append(
                        "\(name) was deposed by a newer epoch with \(until - now) of its lease left: \(reason)")
                }
                nodes[idx(name)].serving = false
                nodes[idx(name)].waiting = []
                note("\(name) demotes: \(reason)")
            case .leaseUntil(let until):
                nodes[idx(name)].leaseUntil = options.shellIgnoresDemotion ? nil : until
            case .completeWithoutPeer(let allowed):
                nodes[idx(name)].completesWithoutPeer = allowed
                if allowed { releaseWaiting(name) }
            case .observeEpoch(let epoch):
                nodes[idx(name)].fenceEpoch = max(nodes[idx(name)].fenceEpoch, epoch)
            case .reset(let reason):
                crash(name, restartAfter: .seconds(1), reason: "resets: \(reason)")
                return
            case .event(let text):
                note("\(name): \(text)")
            case .dataOutdated(let marked):
                // The node offers the mark every tick while it holds it: note the changes only.
                if nodes[idx(name)].copyOutdated != marked {
                    nodes[idx(name)].copyOutdated = marked
                    note("\(name)'s copy \(marked ? "is" : "is no longer") recorded outdated")
                }
            case .storeModes, .runFence, .groups, .answer, .forceUpToDate, .releaseHeldWrites:
                // The node loop's, around the controller; the controller alone never asks them.
                violations.append("the controller of \(name) asked for \(action)")
            }
        }
    }

    mutating func promote(_ name: String, epoch: UInt64) {
        promotions += 1
        let voters = grants["\(epoch)", default: []]
        if voters.count < 2 || !voters.contains(name) {
            violations.append("\(name) promoted in epoch \(epoch) with the votes of \(voters.sorted()) only")
        }
        let missing = acknowledged.subtracting(nodes[idx(name)].disk)
        if !missing.isEmpty {
            violations.append(
                "\(name) promoted in epoch \(epoch) without \(missing.count) acknowledged writes "
                    + "(for example \(missing.sorted().prefix(5)))")
        }
        nodes[idx(name)].serving = true
        nodes[idx(name)].servingEpoch = epoch
        nodes[idx(name)].fenceEpoch = max(nodes[idx(name)].fenceEpoch, epoch)
        nodes[idx(name)].waiting = []
        nodes[idx(name)].syncingUntil = nil
        note("\(name) promoted in epoch \(epoch)")
    }

    /// The volume's gate: a primary completes I/O only before its lease ends.
    func mayComplete(_ name: String) -> Bool {
        let node = nodes[idx(name)]
        guard node.serving, node.running else { return false }
        if let until = node.leaseUntil { return now < until }
        return true
    }

    mutating func acknowledge(_ write: Int, at name: String) {
        guard mayComplete(name) else { return }
        acknowledged.insert(write)
        // A write the peer lacks may be acknowledged only once the peer cannot win an election:
        // two of the three voters' records hold it outdated.
        let peer = name == "a" ? "b" : "a"
        if !nodes[idx(peer)].disk.contains(write) {
            let records = [nodes[idx(name)].record, nodes[idx(peer)].record, witnessRecord]
            let holding = records.filter { $0.outdated.contains(peer) }.count
            if holding < 2 {
                violations.append(
                    "\(now) \(name) acknowledged write \(write), which \(peer) lacks, while only \(holding) voter records "
                        + "hold \(peer) outdated \(records.map(\.outdated))")
            }
        }
        let epoch = nodes[idx(name)].servingEpoch
        if let last = ackLog.last, last.node != name, last.epoch >= epoch {
            violations.append(
                "\(name) acknowledged a write in epoch \(epoch) after \(last.node) did in epoch \(last.epoch)")
        }
        ackLog.append((name, epoch, now))
        if ackLog.count > 64 { ackLog.removeFirst(32) }
    }

    mutating func releaseWaiting(_ name: String) {
        guard !replicationUp || !nodes[idx(name)].inSync else { return }
        let waiting = nodes[idx(name)].waiting
        nodes[idx(name)].waiting = []
        for write in waiting { acknowledge(write, at: name) }
    }

    mutating func clientWrites() {
        for name in names where mayComplete(name) {
            let write = nextWrite
            nextWrite += 1
            nodes[idx(name)].disk.insert(write)
            let peer = name == "a" ? "b" : "a"
            if replicationUp {
                nodes[idx(name)].waiting.append(write)
                send(.replicate(write: write, epoch: nodes[idx(name)].servingEpoch), from: name, to: peer, link: "peer")
            } else if nodes[idx(name)].completesWithoutPeer {
                acknowledge(write, at: name)
            } else {
                nodes[idx(name)].waiting.append(write)
            }
        }
    }

    /// The replication connection: up while both nodes run and nothing blocks either direction.
    /// When it comes up with a primary, the other copy resyncs from it for a while.
    mutating func updateReplicationLink() {
        let a = nodes[idx("a")]
        let b = nodes[idx("b")]
        let up = a.up && b.up && !blocked.contains("a>b") && !blocked.contains("b>a")
        if up != replicationUp {
            replicationUp = up
            note("replication link \(up ? "up" : "down")")
            for name in names {
                nodes[idx(name)].inSync = false
                nodes[idx(name)].syncingUntil = nil
                // Writes that waited for the peer now wait for its outdating (or the next sync).
                if !up, nodes[idx(name)].completesWithoutPeer { releaseWaiting(name) }
            }
        }
        guard replicationUp else { return }
        // Only a running primary with a valid lease is a resync source (in Tandem the generations
        // decide; a frozen former primary's data is never newer than its successor's).
        for (source, target) in [("a", "b"), ("b", "a")] where mayComplete(source) && !nodes[idx(target)].serving {
            // A disk that refuses writes takes no resync either; the resync starts over after.
            if let until = nodes[idx(target)].refusesUntil, now < until {
                nodes[idx(target)].syncingUntil = nil
                continue
            }
            if nodes[idx(target)].syncingUntil == nil, !nodes[idx(target)].inSync {
                nodes[idx(target)].syncingUntil = now + random.milliseconds(100...800)
            }
            if let until = nodes[idx(target)].syncingUntil, until <= now {
                nodes[idx(target)].disk = nodes[idx(source)].disk
                nodes[idx(target)].syncingUntil = nil
                nodes[idx(target)].inSync = true
                nodes[idx(source)].inSync = true
                // Writes that waited during the sync are on the peer now.
                let waiting = nodes[idx(source)].waiting
                nodes[idx(source)].waiting = []
                for write in waiting { acknowledge(write, at: source) }
                note("\(target) in sync with \(source)")
            }
        }
    }

    // MARK: Invariants

    mutating func checkOneWriter() {
        let writers = names.filter { mayComplete($0) }
        if writers.count > 1 {
            violations.append("two nodes can complete writes at once: \(writers) (\(rolesText()))")
        }
    }

    /// After the faults, exactly one primary within `settleBound`; later, only a planned
    /// switchover (a failback) may leave the cluster without one, and only briefly.
    mutating func checkSettled() {
        let primaries = names.filter { nodes[idx($0)].serving && mayComplete($0) }
        if primaries.count == 1 {
            if settledSince == nil { settledSince = now }
            gapSince = nil
            return
        }
        if gapSince == nil { gapSince = now }
        let deadline =
            settledSince == nil ? options.faultPeriod + options.settleBound : gapSince! + options.switchoverBound
        if now > deadline {
            let what = settledSince == nil ? "after the faults stopped" : "after a switchover began"
            violations.append(
                "\(now - (settledSince == nil ? options.faultPeriod : gapSince!)) \(what) there is not exactly one "
                    + "primary (\(rolesText()))")
        }
    }

    func rolesText() -> String {
        names.map { name in
            let node = nodes[idx(name)]
            let role = node.controller.map { $0.role.rawValue } ?? "down"
            let detail =
                node.controller.map { controller in
                    " eligible=\(controller.isEligible) outdated=\(controller.voter.record.outdated.sorted()) "
                        + "peerAlive=\(controller.peerAlive(at: now)) peer=\(controller.peerHeartbeat.map { "\($0)" } ?? "-")"
                } ?? ""
            return "\(name): \(role)\(node.serving ? " serving e\(node.servingEpoch)" : "")\(detail)"
        }.joined(separator: ", ")
    }
}
