import TandemCore

/// Two nodes running the real `ReplicationEngine` over in-memory disks and a simulated peer link,
/// with seeded faults: the link is cut (everything in flight on it is lost) and comes back after a
/// while, either node's process crashes and restarts (its engine's memory is lost; its disk and
/// page cache stay), B loses power (each block its page cache held is lost or reached the disk, so
/// a write over several blocks tears), the secondary's disk refuses writes for a while (full or
/// failing), local syncs end late and in any order, and frames are delayed. Node A is primary, B
/// secondary. (A's power loss needs a failover to B, which is the membership simulator's part.)
///
/// The engine is the one the agent runs, with its resync as source (cursor, window, pacer); what
/// is simulated is its shell: the disks, the link, the activity log (a region with a write in
/// progress stays marked across a crash), the resync target's writes, and the choice of A as the
/// resync source whenever either side has regions marked.
///
/// Checked at every step:
/// - protocol C: a write completes only when B holds it, or when A's bitmap marks it (it completed
///   without the peer);
/// - FUA under B and C: a write completed with FUA while B took part is in B's durable copy;
/// - every block where the copies differ is marked in a bitmap or has a write in flight: a resync
///   would bring it over;
/// - a resync sends only regions that were marked when it started or were written since;
/// and at the end, with the link healed and everything delivered, both copies are byte-identical.
public struct DataPathSimulation {
    public struct Options: Sendable {
        public var replicationProtocol: Configuration.ReplicationProtocol = .c
        public var steps = 600
        /// Blocks of 4 KiB in the volume; a region of the bitmap is one block.
        public var blocks = 48
        /// A broken engine, to show that the checker catches it.
        package var defects: ReplicationEngine.Defects = []
        /// Power loss on B: its unsynced writes are lost or torn.
        public var secondaryPowerLoss = true

        public init() {}
    }

    public struct Report: Sendable {
        public var seed: UInt64
        public var violations: [String]
        public var completedWrites: Int
        public var faults: Int
        public var trace: [String]
    }

    static let blockBytes: UInt64 = 4096

    /// A disk: what `fdatasync` made durable, and what the page cache holds on top.
    struct Disk {
        var durable: [UInt64]
        var cache: [Int: UInt64] = [:]
        var refusing = false

        func view(_ block: Int) -> UInt64 { cache[block] ?? durable[block] }

        mutating func sync() {
            for (block, version) in cache { durable[block] = version }
            cache.removeAll()
        }
    }

    enum Frame {
        case write(sequence: UInt64, epoch: UInt64, first: Int, versions: [UInt64], flags: UInt8)
        case flush(sequence: UInt64)
        case ack(sequence: UInt64, PeerAckKind)
        case resyncBlock(sequence: UInt64, first: Int, versions: [UInt64])
        case resyncDone
    }

    struct Message {
        var deliverAt: Int
        var frame: Frame
    }

    /// What the simulated shell keeps of a client's request.
    struct Request {
        var first: Int
        var versions: [UInt64]
        var fua: Bool
        var flush: Bool
        var sequence: UInt64?
        /// B answered that it wrote it (durably, for FUA): B took part.
        var writtenByB = false
    }

    struct Node {
        var name: String
        var engine: ReplicationEngine
        var disk: Disk
        var durableBitmap: WriteIntentBitmap
        /// Sending a resync (A) or receiving one (B).
        var resyncing = false
        var bitmap: WriteIntentBitmap { engine.bitmap }
        /// Writes in progress per region, and the regions in the activity log: a region stays in
        /// the log until the bitmap was stored with no write in it (as the agent's log evicts an
        /// extent only after storing the bitmap), and is marked after a crash.
        var activity: [Int: Int] = [:]
        var logged: Set<Int> = []
        var requests: [IORequest: Request] = [:]
        var up = true
        var downUntil = 0
    }

    var random: SeededRandom
    let seed: UInt64
    let options: Options
    var now = 0
    var a: Node
    var b: Node
    /// Frames A → B and B → A, each in order (a TCP connection).
    var toB: [Message] = []
    var toA: [Message] = []
    var linkUp = true
    /// B lost power since the link was last up.
    var bLostCache = false
    /// A crashed, and B has not flushed since: what B held unflushed before is tracked nowhere.
    var aForgotUnflushed = false
    var linkDownUntil = 0
    var nextVersion: UInt64 = 0
    var nextRequest: UInt64 = 0
    /// Writes sent to B and not finally answered, per block.
    var inFlight: [Int: Int] = [:]
    var inFlightBySequence: [UInt64: (first: Int, count: Int)] = [:]
    /// Local syncs not yet ended, with the link they answer on (a reconnection is a new link:
    /// answers for an older one are lost, as the agent answers on the link a frame came by).
    var syncs: [(node: String, sync: ReplicationEngine.Sync, link: Int)] = []
    var link = 0
    /// Set while a sync for a link that is gone ends: nothing it sends arrives.
    var sendingOnOldLink = false
    var violations: [String] = []
    var trace: [String] = []
    var completedWrites = 0
    var faults = 0

    public init(seed: UInt64, options: Options = Options()) {
        self.seed = seed
        self.options = options
        random = SeededRandom(seed: seed)
        let bitmap = WriteIntentBitmap(
            volumeBytes: UInt64(options.blocks) * Self.blockBytes, regionBytes: Self.blockBytes)
        func node(_ name: String) -> Node {
            Node(
                name: name, engine: Self.engine(options, bitmap: bitmap),
                disk: Disk(durable: Array(repeating: 0, count: options.blocks)), durableBitmap: bitmap)
        }
        a = node("A")
        b = node("B")
    }

    static func engine(_ options: Options, bitmap: WriteIntentBitmap) -> ReplicationEngine {
        var engine = ReplicationEngine(
            replicationProtocol: options.replicationProtocol, bitmap: bitmap, asyncWindowBytes: 8 << 12,
            resyncWindow: 4,
            peerFlushEvery: 16)
        engine.defects = options.defects
        return engine
    }

    /// Simulated time: a step is 10 ms.
    var time: Duration { .milliseconds(now * 10) }

    /// Timers the engines asked for (`wakeAfter`), by the step they fire at.
    var wakes: [Int] = []
    /// Regions a resync may send: marked on either side when it started, or marked on A since.
    var resyncable: Set<Int> = []

    public mutating func run() -> Report {
        for _ in 0..<options.steps {
            step()
            check()
            if !violations.isEmpty { break }
        }
        if violations.isEmpty { heal() }
        return Report(
            seed: seed, violations: violations, completedWrites: completedWrites, faults: faults,
            trace: Array(trace.suffix(60)))
    }

    mutating func note(_ text: String) { trace.append("t\(now) \(text)") }

    // MARK: One step

    mutating func step() {
        now += 1
        restartDueNodes()
        if !linkUp, now >= linkDownUntil, a.up, b.up { reconnect() }
        deliver()
        finishSomeSyncs()
        fireWakes()
        if a.up, random.chance(0.5) { clientWrite() }
        if a.up, random.chance(0.05) { clientFlush() }
        if random.chance(0.03) { injectFault() }
        if b.disk.refusing, random.chance(0.05) {
            b.disk.refusing = false
            note("B's disk takes writes again")
        }
    }

    mutating func injectFault() {
        faults += 1
        switch Int.random(in: 0..<5, using: &random) {
        case 0:
            note("link cut")
            cutLink(until: now + Int.random(in: 1...30, using: &random))
        case 1:
            // Not a power loss while A has forgotten what B had not flushed (see case 2).
            crash(\.b, powerLoss: options.secondaryPowerLoss && !aForgotUnflushed && random.chance(0.5))
        case 2:
            // Not while B's cache loss is unreported: A's list of what B had not flushed is memory
            // only, and its activity log lets an extent go before the peer flushed it, so A's crash
            // then loses track of what B lost (a known gap, in the docs).
            if !bLostCache { crash(\.a, powerLoss: false) }
        case 3:
            note("B's disk refuses writes")
            b.disk.refusing = true
        default:
            // Frames slow down: everything queued is delayed further, in order.
            let delay = Int.random(in: 1...10, using: &random)
            for index in toB.indices { toB[index].deliverAt += delay }
            for index in toA.indices { toA[index].deliverAt += delay }
            note("link slows by \(delay)")
        }
    }

    mutating func cutLink(until: Int) {
        linkDownUntil = max(linkDownUntil, until)
        guard linkUp else { return }
        linkUp = false
        toB.removeAll()
        toA.removeAll()
        inFlight.removeAll()
        inFlightBySequence.removeAll()
        if a.up { feed(\.a, .disconnected) }
        if b.up { feed(\.b, .disconnected) }
    }

    /// The link is back: A resyncs B when either side has regions marked.
    mutating func reconnect() {
        linkUp = true
        link += 1
        // B tells whether its host lost power since the link was last up.
        feed(\.a, .peerReturned(lostCache: bLostCache))
        bLostCache = false
        a.resyncing = false
        b.resyncing = false
        note("link up")
        startResync()
    }

    mutating func startResync() {
        guard linkUp, !a.resyncing, a.bitmap.dirtyRegionCount > 0 || b.bitmap.dirtyRegionCount > 0 else { return }
        var marked = a.bitmap
        marked.formUnion(b.bitmap)
        resyncable = Set(marked.dirtyRegions)
        note("resync of \(marked.dirtyRegionCount) regions starts")
        a.resyncing = true
        b.resyncing = true
        feed(
            \.a,
            .startResyncSource(
                full: false, peerBitmap: b.bitmap, pacer: ResyncPacer(rate: nil, minimumRate: nil, now: time)))
    }

    mutating func fireWakes() {
        let due = wakes.filter { $0 <= now }
        wakes.removeAll { $0 <= now }
        for _ in due where a.up { feed(\.a, .wake(now: time, lastClientWrite: nil)) }
    }

    mutating func crash(_ node: WritableKeyPath<DataPathSimulation, Node>, powerLoss: Bool) {
        guard self[keyPath: node].up else { return }
        let name = self[keyPath: node].name
        note("\(name) crashes\(powerLoss ? " (power loss)" : "")")
        cutLink(until: now + 1)
        var crashed = self[keyPath: node]
        crashed.up = false
        crashed.downUntil = now + Int.random(in: 1...20, using: &random)
        if powerLoss {
            bLostCache = true
            // Each unsynced block is lost or reached the disk: a write over several blocks tears.
            for (block, version) in crashed.disk.cache.sorted(by: { $0.key < $1.key }) where random.chance(0.5) {
                crashed.disk.durable[block] = version
            }
            crashed.disk.cache.removeAll()
        }
        // What the restart finds: the bitmap's file, and the activity log's regions marked.
        var bitmap = crashed.durableBitmap
        for region in crashed.logged {
            bitmap.mark(offset: UInt64(region) * Self.blockBytes, length: Self.blockBytes)
        }
        crashed.logged.removeAll()
        crashed.durableBitmap = bitmap
        crashed.activity.removeAll()
        crashed.requests.removeAll()
        crashed.engine = Self.engine(options, bitmap: bitmap)
        if name == "A" { aForgotUnflushed = true }
        crashed.resyncing = false
        self[keyPath: node] = crashed
        if name == "A" { wakes.removeAll() }
        syncs.removeAll { $0.node == name }
    }

    mutating func restartDueNodes() {
        for node in [\DataPathSimulation.a, \DataPathSimulation.b] where !self[keyPath: node].up {
            if now >= self[keyPath: node].downUntil {
                self[keyPath: node].up = true
                note("\(self[keyPath: node].name) restarts")
            }
        }
    }

    // MARK: The client

    mutating func clientWrite() {
        let count = Int.random(in: 1...3, using: &random)
        let first = Int.random(in: 0...(options.blocks - count), using: &random)
        let fua = random.chance(0.2)
        var versions: [UInt64] = []
        for block in first..<(first + count) {
            nextVersion += 1
            versions.append(nextVersion)
            a.disk.cache[block] = nextVersion
            a.activity[block, default: 0] += 1
            a.logged.insert(block)
        }
        nextRequest += 1
        let request = IORequest(nextRequest)
        a.requests[request] = Request(first: first, versions: versions, fua: fua, flush: false)
        note("write \(request) blocks \(first)..<\(first + count) v\(versions[0])\(fua ? " fua" : "")")
        feed(
            \.a,
            .written(
                request, offset: UInt64(first) * Self.blockBytes, length: UInt64(count) * Self.blockBytes,
                flags: fua ? PeerWriteFlags.fua : 0))
    }

    mutating func clientFlush() {
        nextRequest += 1
        let request = IORequest(nextRequest)
        a.requests[request] = Request(first: 0, versions: [], fua: false, flush: true)
        note("flush \(request)")
        feed(\.a, .flush(request))
    }

    // MARK: The shell

    func context(_ node: Node) -> ReplicationEngine.Context {
        let primary = node.name == "A"
        let connection: ConnectionState =
            !linkUp ? .connecting : !node.resyncing ? .connected : primary ? .syncSource : .syncTarget
        return ReplicationEngine.Context(
            role: primary ? .primary : .secondary, epoch: 1, connection: connection, linked: linkUp,
            replicating: linkUp && (primary || !node.resyncing), syncing: node.resyncing)
    }

    mutating func feed(_ node: WritableKeyPath<DataPathSimulation, Node>, _ input: ReplicationEngine.Input) {
        let context = context(self[keyPath: node])
        self[keyPath: node].engine.on(input, context)
        if a.resyncing { resyncable.formUnion(a.bitmap.dirtyRegions) }
        let directives = self[keyPath: node].engine.ready
        self[keyPath: node].engine.ready.removeAll(keepingCapacity: true)
        for directive in directives { execute(directive, on: node, input: input) }
    }

    mutating func execute(
        _ directive: ReplicationEngine.Directive, on node: WritableKeyPath<DataPathSimulation, Node>,
        input: ReplicationEngine.Input
    ) {
        let name = self[keyPath: node].name
        switch directive {
        case .sendWrite(let request, let sequence, let epoch, let offset, _, let flags):
            guard let entry = a.requests[request] else { return }
            a.requests[request]?.sequence = sequence
            let first = Int(offset / Self.blockBytes)
            // The bytes as the copy holds them when the frame leaves.
            let versions = (first..<(first + entry.versions.count)).map { a.disk.view($0) }
            for block in first..<(first + versions.count) { inFlight[block, default: 0] += 1 }
            inFlightBySequence[sequence] = (first, versions.count)
            send(.write(sequence: sequence, epoch: epoch, first: first, versions: versions, flags: flags), from: name)
        case .sendFlush(let sequence):
            send(.flush(sequence: sequence), from: name)
        case .sendAck(let sequence, let kind):
            send(.ack(sequence: sequence, kind), from: name)
        case .endActivity(let offset, let length):
            let first = Int(offset / Self.blockBytes)
            for region in first..<(first + Int(length / Self.blockBytes)) {
                self[keyPath: node].activity[region, default: 0] -= 1
            }
        case .applyPeerWrite(let sequence):
            guard case .peerWrite(_, _, _, let flags) = input, case .write(_, _, let first, let versions, _)? = applying
            else { return }
            if b.disk.refusing {
                let range = UInt64(first) * Self.blockBytes..<UInt64(first + versions.count) * Self.blockBytes
                feed(\.b, .peerWriteApplied(sequence: sequence, flags: flags, failed: range))
            } else {
                for (index, version) in versions.enumerated() { b.disk.cache[first + index] = version }
                feed(\.b, .peerWriteApplied(sequence: sequence, flags: flags, failed: nil))
            }
        case .applyResyncBlock(let sequence):
            guard case .resyncBlock(_, let first, let versions)? = applying else { return }
            if b.disk.refusing {
                let range = UInt64(first) * Self.blockBytes..<UInt64(first + versions.count) * Self.blockBytes
                feed(\.b, .resyncBlockApplied(sequence: sequence, failed: range))
            } else {
                for (index, version) in versions.enumerated() { b.disk.cache[first + index] = version }
                feed(\.b, .resyncBlockApplied(sequence: sequence, failed: nil))
            }
        case .sendVerifyRequest, .verifyFinished, .resyncDifferences:
            // The simulation starts no online verify: its copies never rot silently.
            break
        case .resyncTargetFinished:
            // The shell makes the copy durable before it says it is current.
            b.disk.sync()
            b.resyncing = false
        case .sync(let sync):
            syncs.append((name, sync, link))
        case .beginIndependentChanges:
            break
        case .persistBitmap(let then):
            self[keyPath: node].durableBitmap = self[keyPath: node].bitmap
            let activity = self[keyPath: node].activity
            self[keyPath: node].logged = self[keyPath: node].logged.filter { activity[$0, default: 0] > 0 }
            if then == .pumpResync { feed(node, .pump(now: time, lastClientWrite: nil)) }
        case .complete(let request, let outcome):
            completed(request, outcome)
        case .peerRefused:
            break
        case .catchUp:
            startResync()
        case .sendResyncBlock(let sequence, _, let range):
            let region = Int(range.lowerBound / Self.blockBytes)
            if !resyncable.contains(region) {
                violations.append("the resync sent region \(region), which was neither marked nor written")
            }
            inFlight[region, default: 0] += 1
            inFlightBySequence[sequence] = (region, 1)
            note("resync block #\(sequence) region \(region) v\(a.disk.view(region))")
            send(.resyncBlock(sequence: sequence, first: region, versions: [a.disk.view(region)]), from: name)
        case .wakeAfter(let wait):
            wakes.append(now + max(1, Int(wait / .milliseconds(10))))
        case .regionResynced:
            break
        case .resyncNews(let text):
            note(text)
        case .resyncFinished:
            note("resync finished")
            a.resyncing = false
            send(.resyncDone, from: name)
        }
    }

    /// The write frame B is applying (set while B's engine takes it).
    var applying: Frame?

    mutating func send(_ frame: Frame, from name: String) {
        guard linkUp, !sendingOnOldLink else { return }
        let queue = name == "A" ? toB : toA
        let at = max(queue.last?.deliverAt ?? now, now + Int.random(in: 0...3, using: &random))
        if name == "A" {
            toB.append(Message(deliverAt: at, frame: frame))
        } else {
            toA.append(Message(deliverAt: at, frame: frame))
        }
    }

    mutating func deliver() {
        while linkUp, let message = toB.first, message.deliverAt <= now {
            toB.removeFirst()
            guard b.up else { continue }
            switch message.frame {
            case .write(let sequence, let epoch, _, _, let flags):
                applying = message.frame
                feed(\.b, .peerWrite(sequence: sequence, epoch: epoch, fenceEpoch: 1, flags: flags))
                applying = nil
            case .flush(let sequence):
                feed(\.b, .peerFlush(sequence: sequence))
            case .resyncBlock(let sequence, _, _):
                applying = message.frame
                feed(\.b, .resyncBlock(sequence: sequence))
                applying = nil
            case .resyncDone:
                feed(\.b, .resyncDone)
            case .ack:
                break
            }
        }
        while linkUp, let message = toA.first, message.deliverAt <= now {
            toA.removeFirst()
            guard a.up, case .ack(let sequence, let kind) = message.frame else { continue }
            if kind != .received, let (first, count) = inFlightBySequence.removeValue(forKey: sequence) {
                for block in first..<(first + count) { inFlight[block, default: 0] -= 1 }
            }
            if kind == .flushed { aForgotUnflushed = false }
            if kind == .written, let request = a.requests.first(where: { $0.value.sequence == sequence })?.key {
                a.requests[request]?.writtenByB = true
            }
            if a.engine.awaitsResyncAck(sequence) {
                note("resync ack #\(sequence) \(kind)")
                feed(\.a, .resyncAck(sequence: sequence, kind, now: time, lastClientWrite: nil))
            } else {
                feed(\.a, .ack(sequence: sequence, kind))
            }
        }
    }

    mutating func finishSomeSyncs() {
        var index = 0
        while index < syncs.count {
            guard random.chance(0.5) else {
                index += 1
                continue
            }
            let (name, sync, link) = syncs.remove(at: index)
            let node: WritableKeyPath<DataPathSimulation, Node> = name == "A" ? \.a : \.b
            self[keyPath: node].disk.sync()
            sendingOnOldLink = link != self.link
            feed(node, .synced(sync, failure: nil))
            sendingOnOldLink = false
        }
    }

    // MARK: Invariants

    mutating func completed(_ request: IORequest, _ outcome: ReplicationEngine.Outcome) {
        guard let entry = a.requests.removeValue(forKey: request), case .success = outcome, !entry.flush else { return }
        completedWrites += 1
        note("complete \(request)")
        let blocks = entry.first..<(entry.first + entry.versions.count)
        // Each block is on B, or marked on A (the write completed without the peer, or a resync
        // is bringing it).
        let covered = zip(blocks, entry.versions).allSatisfy { b.disk.view($0) >= $1 || aTracks($0) }
        if options.replicationProtocol == .c, !covered {
            violations.append("write \(request) completed under protocol C while B lacks it and A has it unmarked")
        }
        if entry.fua, entry.writtenByB, options.replicationProtocol != .a,
            !zip(blocks, entry.versions).allSatisfy({ b.disk.durable[$0] >= $1 })
        {
            violations.append("FUA write \(request) completed while B took part, but is not durable on B")
        }
    }

    /// Whether A will bring `block` to B: marked, or B lost its cache and has not said so yet, and
    /// A lists the block as unflushed there (it marks those when B returns).
    func aTracks(_ block: Int) -> Bool {
        if a.bitmap.isDirty(region: block) { return true }
        let offset = UInt64(block) * Self.blockBytes
        return bLostCache && a.engine.unflushedOnPeerRanges.contains { $0.contains(offset) }
    }

    mutating func check() {
        guard a.up, b.up else { return }
        for block in 0..<options.blocks where a.disk.view(block) != b.disk.view(block) {
            if aTracks(block) || b.bitmap.isDirty(region: block) || inFlight[block, default: 0] > 0 { continue }
            violations.append(
                "block \(block) differs (A v\(a.disk.view(block)), B v\(b.disk.view(block))) and nothing marks it")
            return
        }
    }

    /// Heals everything, lets the resync run, and checks that the copies end byte-identical with
    /// nothing marked.
    mutating func heal() {
        b.disk.refusing = false
        for _ in 0..<6000 {
            now += 1
            restartDueNodes()
            if !linkUp, a.up, b.up { reconnect() }
            deliver()
            finishSomeSyncs()
            fireWakes()
            check()
            if !violations.isEmpty { return }
            let settled =
                linkUp && toA.isEmpty && toB.isEmpty && syncs.isEmpty && !a.resyncing && !b.resyncing
                && a.engine.unacknowledged == 0
            if settled, a.bitmap.dirtyRegionCount > 0 || b.bitmap.dirtyRegionCount > 0 {
                startResync()
            } else if settled {
                break
            }
        }
        if a.bitmap.dirtyRegionCount > 0 || b.bitmap.dirtyRegionCount > 0 || a.resyncing {
            violations.append(
                "after healing, the resync did not end (A marks \(a.bitmap.dirtyRegionCount) regions, B "
                    + "\(b.bitmap.dirtyRegionCount))")
            return
        }
        for block in 0..<options.blocks where a.disk.view(block) != b.disk.view(block) {
            violations.append(
                "after healing, block \(block) differs (A v\(a.disk.view(block)), B v\(b.disk.view(block)))")
            return
        }
    }
}
