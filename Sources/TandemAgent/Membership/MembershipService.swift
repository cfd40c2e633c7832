import CTandemLinux
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TandemAPI
import TandemCore
import TandemReplication
import TandemResources
import TandemStorage
import TandemWire

#if canImport(Glibc)
    import Glibc
#endif

/// The shell around `NodeController`: heartbeats on every link, votes and leases with the peer and
/// the witness, and the directives carried out on the volumes.
///
/// Everything that touches the controller runs in one task, one input at a time: datagrams, ticks
/// and administrator commands are queued to it. What it decided is visible in `snapshot`.
public final class MembershipService: Service, Sendable {
    enum Input {
        case datagram(MembershipMessage, link: String?)
        case tick
        case standby(Bool, reply: @Sendable (String?) -> Void)
        /// Standby or online for the peer, asked of it over the membership links.
        case peerStandby(Bool, reply: @Sendable (String?) -> Void)
        case force(reply: @Sendable (String?) -> Void)
        case mode(ModeCommand?, reply: @Sendable (Result<ModeView, ModeRefusal>) -> Void)
        /// The fence command finished: whether the peer is certainly off, and what it said.
        case fenced(Bool, String)
    }

    struct Link {
        let name: String
        let localHost: String
        let peerAddress: SocketAddress?
    }

    /// What `tandem status` shows.
    public struct Snapshot: Sendable {
        public var role: ClusterRole = .secondary
        public var epoch: UInt64 = 0
        public var standby = false
        public var hasQuorum = false
        public var leaseRemaining: Duration?
        public var peerAlive = false
        public var peerHeartbeat: Heartbeat?
        /// Per link: its name and how long ago the peer was heard on it.
        public var links: [(String, Duration?)] = []
        public var witnessConfigured = false
        public var witnessHeardAgo: Duration?
        public var automaticFailoverBlocker: String?
        /// The copies this node's voter records as lacking acknowledged writes.
        public var recordedOutdated: [String] = []
        /// This node's promotions since the agent started, oldest first, with their gaps.
        public var failovers: [FailoverRecord] = []
        public var events: [String] = []
        public var modes: ModeView?
    }

    let configuration: Configuration
    let local: Configuration.Node
    let peer: Configuration.Node?
    private let volumes: [ReplicatedVolume]
    private let peerLink: PeerLink?
    private let transport: MembershipTransport
    private let statePath: String
    let modesPath: String
    private let initialModes: ModeRecord
    private let haReset: HAReset
    private let journal: EventJournal?
    let groups: GroupManager?
    private let logger: Logger
    private let links: [Link]
    private let witnessAddress: SocketAddress?
    private let inputs: AsyncStream<Input>
    private let continuation: AsyncStream<Input>.Continuation
    /// What of `inputs` may pile up is bounded here, not by the stream: a stream that dropped its
    /// oldest input could drop a request whose caller then waits forever, or a fence's outcome.
    private let backlog = InputBacklog()
    private let channels = Mutex<[any Channel]>([])
    /// One sender per link, bound to the link's local address.
    private let senders: [DatagramSender]
    private let current = Mutex(Snapshot())
    /// The promotions of this node, for status and history.
    private let history = Mutex(FailoverHistory())
    /// The last decisions, for status.
    private let events = Mutex<[String]>([])
    private let initialState: MembershipState
    static let witnessName = "witness"
    /// Armed for as long as the loop runs, when the config names one.
    private let watchdog: Watchdog?
    /// The end of this node's lease while it is primary and the lease binds: the watchdog is not
    /// fed once it is more than a heartbeat interval past (the loop did not step down in time).
    private let leaseEnd = Mutex<Duration?>(nil)
    /// The time on the volumes' lease clock; every reading of time in this shell goes through it.
    private let clock: @Sendable () -> Duration
    /// The gate every reply to a client passes: this shell sets the end the loop decides, on the
    /// same clock (the volumes and the NBD server only read it).
    private let lease: LeaseGate
    /// The fence command while it runs.
    private let fence = Mutex<Task<Void, Never>?>(nil)

    /// Reads the persisted state; an unreadable state file refuses the start (it holds votes).
    public init(
        configuration: Configuration, local: Configuration.Node, peer: Configuration.Node?, secret: [UInt8],
        volumes: [ReplicatedVolume], lease: LeaseGate, peerLink: PeerLink?, journal: EventJournal? = nil,
        groups: GroupManager? = nil, clock: @escaping @Sendable () -> Duration = MembershipService.systemNow,
        logger: Logger
    ) throws(AgentError) {
        self.clock = clock
        self.lease = lease
        self.journal = journal
        self.groups = groups
        self.configuration = configuration
        self.local = local
        self.peer = peer
        self.volumes = volumes
        self.peerLink = peerLink
        self.transport = MembershipTransport(
            cluster: configuration.cluster.name, name: local.name, secret: secret,
            incarnation: try MembershipTransport.nextIncarnation(
                path: "\(configuration.cluster.stateDirectory)/\(local.name).incarnation"),
            logger: logger)
        self.statePath = "\(configuration.cluster.stateDirectory)/\(local.name).membership"
        self.modesPath = Self.modesPath(stateDirectory: configuration.cluster.stateDirectory, node: local.name)
        self.haReset = HAReset.make(configuration: configuration, node: local.name, journal: journal, logger: logger)
        self.logger = logger
        self.links = local.heartbeat.enumerated().map { index, host in
            let peerHost = peer.map { $0.heartbeat[min(index, $0.heartbeat.count - 1)] }
            let address = peer.flatMap { peer in peerHost.flatMap { try? SocketAddress(ipAddress: $0, port: peer.port) }
            }
            return Link(name: "\(host)→\(peerHost ?? "-")", localHost: host, peerAddress: address)
        }
        self.senders = try links.map { link throws(AgentError) in try DatagramSender(host: link.localHost) }
        self.witnessAddress = configuration.witness.flatMap { try? SocketAddress(ipAddress: $0.address, port: $0.port) }
        (inputs, continuation) = AsyncStream.makeStream(of: Input.self, bufferingPolicy: .unbounded)
        initialState = try MembershipState.load(path: statePath)
        initialModes = try Self.loadModes(path: modesPath)
        watchdog = try configuration.cluster.watchdog.map { path throws(AgentError) in
            try Watchdog(
                path: path,
                timeoutSeconds: Watchdog.timeout(
                    deadTime: configuration.timing.deadTime, heartbeatInterval: configuration.timing.heartbeatInterval),
                logger: logger)
        }
    }

    /// Why the watchdog must not be fed now: a primary whose lease ended more than a heartbeat
    /// interval ago without stepping down.
    private func watchdogRefusal(now: Duration) -> String? {
        guard let end = leaseEnd.withLock({ $0 }), now - end > configuration.timing.heartbeatInterval else {
            return nil
        }
        return "the lease ended \(now - end) ago and this node has not stepped down"
    }

    /// Where a node keeps its modes.
    static func modesPath(stateDirectory: String, node: String) -> String { "\(stateDirectory)/\(node).modes" }

    /// Carries out a mode command (`nil`: only report); the modes of both nodes afterwards.
    public func mode(_ command: ModeCommand?) async -> Result<ModeView, ModeRefusal> {
        await continuation.request(orWhenEnded: .failure(ModeRefusal(Self.stopped))) { .mode(command, reply: $0) }
    }

    static let stopped = "the membership service has stopped (the agent is shutting down)"

    /// The peer's name.
    public var peerName: String? { peer?.name }

    /// Whether the cluster moves the primary role on its own (a witness or a fence command): then
    /// only the decider sets volume roles, and `tandem volume primary|secondary` is refused.
    public var failsOverOnItsOwn: Bool {
        configuration.witness != nil || configuration.cluster.fenceCommand != nil
    }

    /// Why the peer could not take the primary role now, or `nil` when it could (from the last
    /// view the loop published).
    public var peerUnfitForTakeover: String? {
        let view = snapshot
        return NodeController.peerUnfitForTakeover(
            peer: peer?.name ?? "the peer", alive: view.peerAlive, heartbeat: view.peerHeartbeat)
    }

    /// The latest view, for status.
    public var snapshot: Snapshot { current.withLock { $0 } }

    /// This node's promotions since its agent started, by reason.
    public var failoverTotals: [FailoverRecord.Reason: Int] { history.withLock { $0.totals } }

    /// Puts this node in standby (handing the primary role over) or back online; `nil` on success.
    public func setStandby(_ standby: Bool) async -> String? {
        await continuation.request(orWhenEnded: Self.stopped) { .standby(standby, reply: $0) }
    }

    /// Asks the peer to go to standby or back online, and waits until its heartbeat shows it
    /// (the request is repeated every heartbeat interval, for at most `peerRequestTimeout`);
    /// `nil` on success. This is what `tandem node standby PEER` runs on this node.
    public func setPeerStandby(_ standby: Bool) async -> String? {
        await continuation.request(orWhenEnded: Self.stopped) { .peerStandby(standby, reply: $0) }
    }

    /// Promotes without quorum (no witness only); `nil` on success.
    public func forcePromote() async -> String? {
        await continuation.request(orWhenEnded: Self.stopped) { .force(reply: $0) }
    }

    /// The system's time on the volumes' lease clock: what `clock` reads outside tests.
    public static func systemNow() -> Duration { ShellClock.system.sinceOrigin() }

    /// Receive → decide → perform: every input goes through `NodeLoop`, which makes every
    /// decision; this loop only carries out its actions and holds the administrators' replies.
    public func run() async throws {
        try await bindLinks()
        let keepers = Task {
            await withTaskGroup(of: Void.self) { tasks in
                for index in links.indices { tasks.addTask { await self.keepBound(index) } }
            }
        }
        var loop = NodeLoop(
            settings: settings, record: initialState.record, standby: initialState.standby, modes: initialModes,
            now: clock())
        var replies = Replies()
        _ = await perform(loop.start(), standby: loop.standby, replies: &replies)
        let ticker = startTicker()
        await withGracefulShutdownHandler {
            for await input in inputs {
                var next: NodeLoop.Input? = loopInput(input, replies: &replies)
                while let step = next {
                    let before = loop
                    let actions = loop.on(step, facts: facts(), now: clock())
                    next = nil
                    if let reason = await perform(actions, standby: loop.standby, replies: &replies) {
                        // A mode that cannot be stored is refused: the loop forgets it decided it.
                        loop = before
                        next = .modesNotStored(reason: reason, input: step)
                    }
                }
                publish(loop, now: clock())
            }
        } onGracefulShutdown: { [continuation] in
            continuation.finish()
        }
        // Also when the loop ended by cancellation: a request made from now on is answered at once.
        continuation.finish()
        replies.answerAll(Self.stopped)
        ticker.cancel()
        // The ticker feeds the watchdog: it must be done before the descriptor closes.
        await ticker.value
        watchdog?.disarm()
        keepers.cancel()
        fence.withLock { $0 }?.cancel()
        await fence.withLock { $0 }?.value
        for channel in channels.withLock({ $0 }) { try? await channel.close() }
    }

    /// Counts `input` out of the backlog, holds its reply, and gives what the node loop is fed.
    private func loopInput(_ input: Input, replies: inout Replies) -> NodeLoop.Input {
        switch input {
        case .tick:
            backlog.tickQueued.store(false, ordering: .releasing)
            let heardAt = peerLink?.lastActivity.map { ReplicatedVolume.leaseOrigin.duration(to: $0) }
            return .tick(replicationHeardAt: heardAt)
        case .datagram(let message, let link):
            backlog.datagrams.subtract(1, ordering: .relaxed)
            return .datagram(message, link: link)
        case .standby(let value, let reply): return .standby(value, replies.hold(.text(reply)))
        case .peerStandby(let value, let reply): return .peerStandby(value, replies.hold(.text(reply)))
        case .force(let reply):
            history.withLock { $0.forceRequested = true }
            return .force(replies.hold(.text(reply)))
        case .mode(let command, let reply): return .mode(command, replies.hold(.modes(reply)))
        case .fenced(let success, let output): return .fenced(success, output)
        }
    }

    /// What the controller is told of this node's configuration.
    private var settings: MembershipSettings {
        var settings = MembershipSettings(
            name: local.name, precedence: local.precedence, peer: peer?.name, peerPrecedence: peer?.precedence ?? 0,
            links: links.map(\.name) + (peer == nil ? [] : ["replication"]),
            heartbeatInterval: configuration.timing.heartbeatInterval, deadTime: configuration.timing.deadTime,
            hasWitness: configuration.witness != nil, waitForPeer: configuration.timing.waitForPeer,
            failoverCooldown: configuration.timing.failoverCooldown,
            failbackAuto: configuration.groups.contains { $0.failback == .auto },
            failbackDelay: configuration.timing.failbackDelay)
        settings.hasFence = configuration.cluster.fenceCommand != nil && configuration.witness == nil
        return settings
    }

    private func bindLinks() async throws {
        var bound: [any Channel] = []
        for index in links.indices {
            bound.append(try await bindLink(index))
            logger.info(
                "heartbeats on \(links[index].localHost):\(local.port) (link \(index + 1): \(links[index].name))")
        }
        channels.withLock { $0 = bound }
    }

    /// Queues a tick a few times per heartbeat interval and feeds the watchdog.
    private func startTicker() -> Task<Void, Never> {
        let tickEvery = min(configuration.timing.heartbeatInterval / 4, .milliseconds(50))
        return Task { [continuation, backlog, watchdog, clock] in
            while !Task.isCancelled {
                try? await Task.sleep(for: tickEvery)
                watchdog?.feed(refusal: self.watchdogRefusal(now: clock()))
                // One tick waiting is enough: a loop held up (a resource's stop) catches up with one.
                if !backlog.tickQueued.exchange(true, ordering: .acquiringAndReleasing) { continuation.yield(.tick) }
            }
        }
    }

    /// Runs `fence-command PEER ADDRESS` with a 60-second deadline and reports the outcome. The
    /// task is owned here: the loop's end cancels it and waits for it.
    private func startFence() {
        guard let command = configuration.cluster.fenceCommand, let peer else { return }
        let task = Task { [continuation] in
            let outcome = await ProcessRunner.run(
                command, [peer.name, peer.address], environment: ProcessRunner.defaultEnvironment,
                timeout: .seconds(60))
            let said = outcome.lastLine.isEmpty ? "" : ": \(outcome.lastLine)"
            let text =
                outcome.status == 0
                ? "exit 0\(said)"
                : outcome.timedOut
                    ? "no answer within 60s" : "exit \(outcome.status.map(String.init) ?? "by signal")\(said)"
            continuation.yield(.fenced(outcome.status == 0, text))
        }
        fence.withLock { $0 = task }
    }

    /// Binds the UDP socket of link `index`.
    private func bindLink(_ index: Int) async throws -> any Channel {
        let linkName: String? = links[index].name
        let (linkSender, peerAddress, witnessAddress) = (senders[index], links[index].peerAddress, witnessAddress)
        let witnessSender = senders.first
        return try await MembershipTransport.bind(
            host: links[index].localHost, port: local.port, group: MultiThreadedEventLoopGroup.singleton
        ) { [transport, continuation, backlog, logger] bytes, source in
            let opened = transport.open(bytes) { recipient, challenge in
                if recipient == Self.witnessName {
                    if let witnessAddress { witnessSender?.send(challenge, to: witnessAddress) }
                } else if let peerAddress {
                    linkSender.send(challenge, to: peerAddress)
                }
            }
            switch opened {
            case .success(let message):
                guard backlog.datagrams.add(1, ordering: .relaxed).newValue <= InputBacklog.datagramLimit else {
                    backlog.datagrams.subtract(1, ordering: .relaxed)
                    logger.debug(
                        "membership datagram from \(source) dropped: \(InputBacklog.datagramLimit) wait already")
                    return
                }
                let fromWitness = message.sender == Self.witnessName
                continuation.yield(.datagram(message, link: fromWitness ? nil : linkName))
            case .failure(let error):
                logger.debug("membership datagram from \(source) refused: \(error)")
            }
        }
    }

    /// Waits for link `index`'s socket to close and binds a new one, until cancelled.
    private func keepBound(_ index: Int) async {
        while !Task.isCancelled {
            let channel = channels.withLock { $0[index] }
            try? await channel.closeFuture.get()
            if Task.isCancelled { return }
            logger.warning("heartbeat socket of link \(links[index].name) closed after a send error; binding it again")
            while !Task.isCancelled {
                if let fresh = try? await bindLink(index) {
                    channels.withLock { $0[index] = fresh }
                    break
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    private func facts() -> NodeController.LocalFacts {
        let statuses = volumes.map(\.status)
        let ready = statuses.allSatisfy { $0.disk == .upToDate && $0.splitBrain == nil && $0.connection != .syncTarget }
        let inSync =
            peer != nil
            && statuses.allSatisfy {
                $0.connection == .connected && $0.outOfSyncBytes == 0 && $0.peerDisk == .upToDate
            }
        return NodeController.LocalFacts(dataReady: ready, peerInSync: inSync)
    }

    /// Carries out `actions` in order. Returns why a mode record could not be stored, having
    /// carried out nothing after it; `nil` when all were carried out.
    private func perform(_ actions: [MembershipAction], standby: Bool, replies: inout Replies) async -> String? {
        for action in actions {
            switch action {
            case .send(let message, let destination):
                send(message, to: destination)
            case .persist(let record):
                do {
                    try AtomicFile.replace(
                        path: statePath, bytes: MembershipState(record: record, standby: standby).encoded())
                } catch {
                    // A vote that cannot be made durable must not be given: stop here.
                    logger.critical("cannot store \(statePath): \(error); the agent stops")
                    reset(reason: "cannot store membership state: \(error)")
                }
            case .storeModes(let record):
                do {
                    try AtomicFile.replace(path: modesPath, bytes: record.encoded())
                } catch {
                    let reason = "cannot store \(modesPath): \(error)"
                    logger.error("\(reason)")
                    return reason
                }
            case .promote(let epoch):
                for volume in volumes {
                    do {
                        try volume.setRole(.primary, epoch: epoch)
                    } catch {
                        record(.volume, "\(volume.configuration.name): cannot become primary: \(error)")
                    }
                }
                groups?.requestRole(.primary)
            case .demote(let reason, let drain):
                leaseEnd.withLock { $0 = nil }
                // A planned switchover stops the services first, so that they release the volume;
                // otherwise the volume stops at once and the services follow.
                if drain { await groups?.setRole(.secondary) }
                await demote(drain: drain)
                if !drain { groups?.requestRole(.secondary) }
                logger.notice("demoted: \(reason)")
            case .leaseUntil(let until):
                leaseEnd.withLock { $0 = until }
                lease.end(at: until)
            case .completeWithoutPeer(let allowed):
                for volume in volumes { volume.setCompletesWithoutPeer(allowed) }
            case .observeEpoch(let epoch):
                for volume in volumes { volume.observeEpoch(epoch) }
            case .reset(let reason):
                reset(reason: reason)
            case .dataOutdated(let marked):
                for volume in volumes {
                    for change in marked ? volume.markOutdated() : volume.clearOutdated() {
                        record(.volume, change.description)
                    }
                }
            case .forceUpToDate:
                // The administrator's order is the one way an outdated copy serves again; the
                // journal names what may be lost.
                for volume in volumes {
                    for change in volume.forceUpToDate() { record(.volume, change.description) }
                }
            case .releaseHeldWrites:
                // Writes held while the peer was away are on it now: the resync brought them over.
                for volume in volumes where volume.heldWrites > 0 { volume.releaseHeldWrites() }
            case .runFence:
                startFence()
            case .groups(.stopAll):
                groups?.requestStopAll()
            case .groups(.role(let role)):
                groups?.requestRole(role == .primary ? .primary : .secondary)
            case .groups(.monitoring(let on)):
                groups?.setMonitoring(on)
            case .answer(let id, let answer):
                replies.answer(id, answer)
            case .event(let text):
                logger.notice("\(text)")
                journal?.append(.membership, text, durable: true)
                events.withLock { events in
                    events.append("\(EventJournal.timestamp()) \(text)")
                    if events.count > 50 { events.removeFirst(events.count - 50) }
                }
            }
        }
        return nil
    }

    /// Logs and journals a change of the volumes.
    private func record(_ category: EventJournal.Kind, _ text: String) {
        logger.notice("\(text)")
        journal?.append(category, text, durable: true)
    }

    /// Stops serving. With `drain` (a planned switchover) the writes in flight finish and are
    /// flushed first; in every case no further write completes here.
    private func demote(drain: Bool) async {
        if drain {
            for volume in volumes { volume.stopAcceptingWrites() }
            let deadline = clock() + .seconds(10)
            while volumes.contains(where: { $0.writesInFlight > 0 }), clock() < deadline {
                try? await Task.sleep(for: .milliseconds(5))
            }
            for volume in volumes {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    volume.flush { _ in done.resume() }
                }
            }
        }
        lease.end(at: clock())
        for volume in volumes {
            do {
                try volume.setRole(.secondary)
            } catch {
                // The demotion took effect; what was not recorded is said.
                logger.critical("\(error)")
                journal?.append(.volume, "\(error)", durable: true)
            }
            volume.releaseHeldWrites(failing: true)
        }
    }

    private func send(_ message: MembershipMessage, to destination: MembershipDestination) {
        // Sealed once per datagram: each carries its own sequence number.
        switch destination {
        case .peer, .node(peer?.name ?? ""):
            for (link, sender) in zip(links, senders) {
                if let address = link.peerAddress, let peer {
                    sender.send(transport.seal(message, to: peer.name), to: address)
                }
            }
        case .witness, .node:
            if let witnessAddress, let sender = senders.first {
                sender.send(transport.seal(message, to: Self.witnessName), to: witnessAddress)
            }
        }
    }

    private func reset(reason: String) -> Never { haReset.reset(reason: reason) }

    private static func reason(
        _ promotion: (at: Duration, epoch: UInt64, peerSilentFor: Duration?), history: FailoverHistory
    ) -> FailoverRecord.Reason {
        if history.forceRequested { return .forced }
        if promotion.peerSilentFor != nil { return .peerSilent }
        // The peer was primary and is alive: it handed the role over. Else nobody held it yet.
        return history.peerWasPrimary ? .handover : .start
    }

    private func publish(_ loop: NodeLoop, now: Duration) {
        let controller = loop.controller
        var snapshot = Snapshot()
        snapshot.role = controller.role
        snapshot.epoch = max(controller.epoch, controller.voter.record.epoch)
        snapshot.standby = controller.standby
        snapshot.hasQuorum = controller.hasQuorum(at: now)
        snapshot.leaseRemaining = controller.leaseUntil.map { $0 - now }
        snapshot.peerAlive = controller.peerAlive(at: now)
        snapshot.peerHeartbeat = controller.peerHeartbeat
        snapshot.links = controller.detector.links.map { ($0, controller.detector.lastHeard(on: $0).map { now - $0 }) }
        snapshot.witnessConfigured = configuration.witness != nil
        snapshot.witnessHeardAgo = controller.witnessHeardAt.map { now - $0 }
        snapshot.automaticFailoverBlocker = controller.automaticFailoverBlocker
        snapshot.recordedOutdated = controller.voter.record.outdated.sorted()
        snapshot.failovers = history.withLock { history in
            if let promotion = controller.lastPromotion, history.records.last?.epoch != promotion.epoch {
                history.record(
                    epoch: promotion.epoch, reason: Self.reason(promotion, history: history),
                    ago: now - promotion.at, peerSilentFor: promotion.peerSilentFor)
            }
            if controller.role != .primary, controller.peerHeartbeat?.isPrimary == true {
                history.peerWasPrimary = true
            }
            history.fillGaps(from: volumes)
            return history.records
        }
        snapshot.events = events.withLock { $0 }
        snapshot.modes = loop.view(now: now)
        current.withLock { $0 = snapshot }
    }
}

/// The replies the loop owes administrators, by request.
struct Replies {
    enum Reply {
        case text(@Sendable (String?) -> Void)
        case modes(@Sendable (Result<ModeView, ModeRefusal>) -> Void)
    }

    private var next: UInt64 = 0
    private var waiting: [RequestID: Reply] = [:]

    mutating func hold(_ reply: Reply) -> RequestID {
        next += 1
        waiting[RequestID(next)] = reply
        return RequestID(next)
    }

    mutating func answer(_ id: RequestID, _ answer: Answer) {
        guard let reply = waiting.removeValue(forKey: id) else { return }
        switch (reply, answer) {
        case (.text(let reply), .done), (.text(let reply), .modes): reply(nil)
        case (.text(let reply), .refused(let reason)): reply(reason)
        case (.modes(let reply), .modes(let view)): reply(.success(view))
        case (.modes(let reply), .refused(let reason)): reply(.failure(ModeRefusal(reason)))
        case (.modes(let reply), .done): reply(.failure(ModeRefusal("no view of the modes was given")))
        }
    }

    /// The loop ended: every request still waiting is refused with `reason`.
    mutating func answerAll(_ reason: String) {
        for id in waiting.keys { answer(id, .refused(reason)) }
    }
}

/// How many datagrams wait in the membership loop's inputs, and whether a tick does.
final class InputBacklog: Sendable {
    /// Datagrams past this many waiting are dropped on arrival, as the network might have: the
    /// next heartbeat says the same.
    static let datagramLimit = 4096
    let datagrams = Atomic<Int>(0)
    let tickQueued = Atomic<Bool>(false)
}

/// This node's promotions, each with its volumes' side of the client-visible gap, filled in as the
/// volumes learn it (the first client write after a promotion may come long after it).
struct FailoverHistory {
    private(set) var records: [FailoverRecord] = []
    /// An administrator forced a promotion that has not happened yet.
    var forceRequested = false
    /// This node heard the peer as primary since its last promotion.
    var peerWasPrimary = false
    /// Every promotion since the agent started, by reason (the records keep only the last 32).
    private(set) var totals: [FailoverRecord.Reason: Int] = [:]
    static let limit = 32

    mutating func record(epoch: UInt64, reason: FailoverRecord.Reason, ago: Duration, peerSilentFor: Duration?) {
        forceRequested = false
        peerWasPrimary = false
        totals[reason, default: 0] += 1
        let at = WallClock.secondsSinceEpoch() - ago.seconds
        records.append(
            FailoverRecord(epoch: epoch, reason: reason, at: at, peerSilentSeconds: peerSilentFor?.seconds, volumes: [])
        )
        if records.count > Self.limit { records.removeFirst(records.count - Self.limit) }
    }

    /// Completes the last record from the volumes promoted in its epoch.
    mutating func fillGaps(from volumes: [ReplicatedVolume]) {
        guard var last = records.last, last.volumes.count < volumes.count || last.clientVisibleGapSeconds == nil
        else { return }
        last.volumes = volumes.compactMap { volume in
            guard let timing = volume.lastPromotion, timing.epoch == last.epoch else { return nil }
            return FailoverRecord.VolumeGap(
                volume: volume.configuration.name,
                lastReplicatedWriteSecondsBefore: timing.lastReplicatedWriteAt.map { (timing.promotedAt - $0).seconds },
                firstWriteSecondsAfter: timing.firstWriteAckedAt.map { ($0 - timing.promotedAt).seconds })
        }
        records[records.count - 1] = last
    }
}
