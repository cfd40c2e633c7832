import Foundation
import NIOCore
import Synchronization
import TandemTestSupport
import Testing

@testable import TandemCore
@testable import TandemReplication
@testable import TandemStorage
@testable import TandemWire

#if canImport(Glibc)
    import Glibc
#endif

/// One direction of a simulated link: frames wait here until the test delivers them.
final class LinkQueue: PeerSender {
    private let frames = Mutex<[PeerFrame]>([])
    /// Bytes of resync payload that crossed this direction.
    let resyncBytes = Atomic<UInt64>(0)

    func send(_ newFrames: [PeerFrame]) {
        for case .resyncData(let write) in newFrames {
            resyncBytes.add(UInt64(write.payload.count), ordering: .relaxed)
        }
        frames.withLock { $0 += newFrames }
    }

    func take() -> [PeerFrame] {
        frames.withLock { frames in
            defer { frames = [] }
            return frames
        }
    }

    func drop() {
        _ = take()
    }
}

/// Two nodes' copies of one volume, joined by a link the test steps by hand.
struct Pair {
    let directory = TemporaryDirectory()
    var a: ReplicatedVolume
    var b: ReplicatedVolume
    let open: (String) throws -> ReplicatedVolume
    let aToB = LinkQueue()
    let bToA = LinkQueue()

    init(
        protocol replication: Configuration.ReplicationProtocol, sizeBytes: UInt64 = 16 << 20,
        policy: SplitBrainPolicy = .disconnect, asyncWindowBytes: UInt64 = 64 << 20, resyncMinRate: UInt64? = nil,
        activityLog: ActivityLog = ActivityLog(),
        scheduleAfter: @escaping @Sendable (Duration, @escaping @Sendable () -> Void) -> Void = { _, work in work() },
        runBlocking: @escaping BlockingRunner = { $0() },
        configOfB: (name: String, protocol: Configuration.ReplicationProtocol)? = nil,
        report: @escaping @Sendable (ReplicationEvent) -> Void = { _ in }, clock: ShellClock = .system
    ) throws {
        let directory = self.directory
        func open(_ name: String) throws -> ReplicatedVolume {
            let config = name == "b" ? configOfB : nil
            let volume = Configuration.Volume(
                name: config?.name ?? "vol0", protocol: config?.protocol ?? replication, sizeBytes: sizeBytes,
                backing: "\(directory.path)/\(name).img",
                metadata: nil, nbdExport: "vol0", readOnly: false, splitBrainPolicy: policy,
                resyncMinRateBytesPerSecond: resyncMinRate)
            let local = try LocalVolume.open(
                volume, stateDirectory: directory.path, newGeneration: { DataGenerations.created }, newVolumeID: { 1 })
            return try ReplicatedVolume(
                index: 0, local: local, preferredInTies: name == "a", runBlocking: runBlocking,
                scheduleAfter: scheduleAfter, report: report, asyncWindowBytes: asyncWindowBytes,
                activityLog: activityLog, clock: clock)
        }
        a = try open("a")
        b = try open("b")
        self.open = open
    }

    /// Opens `b` again from its files, as after a crash of that node.
    func restartingB() throws -> Pair {
        var copy = self
        copy.b = try open("b")
        return copy
    }

    /// Opens `a` again from its files, as a node does after `kill -9`.
    mutating func restartAfterCrash() throws {
        aToB.drop()
        bToA.drop()
        _ = b.peerDisconnected()
        a = try open("a")
    }

    func connect() {
        a.peerConnected(aToB)
        b.peerConnected(bToA)
        deliver()
    }

    /// Delivers frames both ways until the link is quiet.
    func deliver(limit: Int = 100_000) {
        for _ in 0..<limit {
            let toB = aToB.take()
            let toA = bToA.take()
            if toB.isEmpty && toA.isEmpty { return }
            for frame in toB { _ = b.receive(frame) }
            for frame in toA { _ = a.receive(frame) }
        }
        Issue.record("the link never went quiet")
    }

    func disconnect() {
        aToB.drop()
        bToA.drop()
        _ = a.peerDisconnected()
        _ = b.peerDisconnected()
    }

    /// Whether the two backing files hold the same bytes.
    func identical() throws -> Bool {
        let size = Int(a.store.sizeBytes)
        var left = [UInt8](repeating: 0, count: size)
        var right = [UInt8](repeating: 1, count: size)
        try left.withUnsafeMutableBytes { try a.store.read(into: $0, at: 0) }
        try right.withUnsafeMutableBytes { try b.store.read(into: $0, at: 0) }
        return left == right
    }
}

/// Records when a completion ran.
final class Outcome: Sendable {
    private let value = Mutex<Result<Void, StorageError>?>(nil)
    var completion: Completion { { result in self.value.withLock { $0 = result } } }
    var done: Bool { value.withLock { $0 != nil } }
    var succeeded: Bool { value.withLock { if case .success? = $0 { true } else { false } } }
}

private func payload(_ byte: UInt8, count: Int = 4096) -> NBDPayload {
    NBDPayload(ByteBuffer(bytes: [UInt8](repeating: byte, count: count)))
}

@Suite struct ReplicationPairTests {
    /// A connected pair whose `a` is primary and in sync.
    private func connectedPair(_ replication: Configuration.ReplicationProtocol, policy: SplitBrainPolicy = .disconnect)
        throws -> Pair
    {
        let pair = try Pair(protocol: replication, policy: policy)
        pair.connect()
        #expect(pair.a.status.connection == .connected)
        try pair.a.setRole(.primary)
        pair.deliver()
        #expect(pair.a.status.connection == .connected, "a fresh pair with a primary is in sync: both are zeroes")
        return pair
    }

    @Test(arguments: [Configuration.ReplicationProtocol.a, .b, .c])
    func write_completesWhenItsProtocolAllows_andBothCopiesMatch(replication: Configuration.ReplicationProtocol) throws
    {
        let pair = try connectedPair(replication)
        let plain = Outcome()
        pair.a.write(offset: 8192, payload: payload(0x11), fua: false, completion: plain.completion)
        #expect(plain.done == (replication == .a), "protocol A completes before the peer answers, B and C after")
        pair.deliver()
        #expect(plain.succeeded)
        let durable = Outcome()
        pair.a.write(offset: 65536, payload: payload(0x22, count: 100_000), fua: true, completion: durable.completion)
        pair.deliver()
        #expect(durable.succeeded)
        let zero = Outcome()
        pair.a.writeZeroes(offset: 8192, length: 2048, fua: false, trim: false, completion: zero.completion)
        let flushed = Outcome()
        pair.a.flush(completion: flushed.completion)
        pair.deliver()
        #expect(zero.succeeded && flushed.succeeded)
        #expect(try pair.identical())
        #expect(pair.a.status.outOfSyncBytes == 0)
    }

    @Test(arguments: [
        ("vol1", Configuration.ReplicationProtocol.c, "volume \"vol1\" in this place, this node's \"vol0\""),
        ("vol0", .a, "replicates with protocol A, this node's with C"),
    ])
    func nodesWhoseConfigsDisagreeOnAVolume_doNotReplicateIt(
        nameOfB: String, protocolOfB: Configuration.ReplicationProtocol, said: String
    ) throws {
        let events = Mutex<[String]>([])
        let pair = try Pair(
            protocol: .c, configOfB: (nameOfB, protocolOfB),
            report: { event in events.withLock { $0.append(event.description) } })
        try pair.a.setRole(.primary)
        pair.connect()
        #expect(pair.a.status.connection == .standAlone)
        #expect(pair.b.status.connection == .standAlone)
        #expect(
            events.withLock { $0 }.contains {
                $0.hasPrefix("vol0: not replicating: the peer's config ") && $0.contains(said)
            },
            "\(events.withLock { $0 })")
        let written = Outcome()
        pair.a.write(offset: 0, payload: payload(0x33), fua: false, completion: written.completion)
        let sent = pair.aToB.take()
        #expect(!sent.contains { if case .data = $0 { true } else { false } }, "a data frame crossed: \(sent)")
        #expect(pair.a.status.outOfSyncBytes > 0, "the write is marked for a later resync")
    }

    /// A peer that refuses every write (here: it knows a newer epoch; in life, also a failing
    /// disk) would put a line per write in the log and the journal: the first is reported at once,
    /// the rest are counted into the next report, ten seconds later at the earliest.
    /// A promotion whose metadata cannot be stored changes nothing: the peer hears of no new role
    /// and the volume serves no write. A demotion still takes effect, and says what was not stored.
    @Test func aRoleChangeWhoseMetadataCannotBeStored_isRefusedWithTheReason_orTakesEffectForADemotion() throws {
        let pair = try Pair(protocol: .c)
        pair.connect()
        let blocker = pair.a.metadataPath + ".tmp"
        try FileManager.default.createDirectory(atPath: blocker, withIntermediateDirectories: false)
        #expect {
            try pair.a.setRole(.primary)
        } throws: { error in
            "\(error)".contains("role primary not recorded") && "\(error)".contains(blocker)
        }
        #expect(pair.a.status.role == .secondary)
        #expect(!pair.a.acceptsWrites)
        #expect(pair.aToB.take().isEmpty, "the peer heard of no new role")
        try FileManager.default.removeItem(atPath: blocker)
        try pair.a.setRole(.primary)
        pair.deliver()
        #expect(pair.b.status.peerRole == .primary)
        try FileManager.default.createDirectory(atPath: blocker, withIntermediateDirectories: false)
        #expect(throws: RoleError.self) { try pair.a.setRole(.secondary) }
        #expect(pair.a.status.role == .secondary, "a demotion is never held back by a failed write")
        #expect(!pair.a.acceptsWrites)
    }

    @Test func refusedWrites_areReportedOnce_thenCounted() throws {
        let pair = try connectedPair(.c)
        pair.b.observeEpoch(.max)
        var events: [String] = []
        for block in 0..<5 {
            pair.a.write(offset: UInt64(block) * 65536, payload: payload(0x44), fua: false, completion: { _ in })
            for frame in pair.aToB.take() { _ = pair.b.receive(frame) }
            for frame in pair.bToA.take() { events += pair.a.receive(frame).map(\.description) }
        }
        let refusals = events.filter { $0.contains("peer refused write") }
        #expect(refusals.count == 1, "\(events)")
        #expect(refusals.first?.hasSuffix("; the regions are marked for resync") == true, "\(events)")
        #expect(pair.a.status.outOfSyncBytes >= 5 * 4096, "every refused write is marked")
    }

    /// Where the peer may take over on its own (a witness or a fence command), a write the peer
    /// refused waits, as one it never got does, until a voter has recorded the peer outdated:
    /// acknowledged at once, it would be missing from the next primary if this one died now.
    @Test func aRefusedWrite_waitsUntilThePeerIsRecordedOutdated_whereThePeerMayTakeOver() throws {
        let pair = try connectedPair(.c)
        pair.a.setCompletesWithoutPeer(false)
        pair.b.observeEpoch(.max)
        let written = Outcome()
        pair.a.write(offset: 0, payload: payload(0x45), fua: false, completion: written.completion)
        for frame in pair.aToB.take() { _ = pair.b.receive(frame) }
        for frame in pair.bToA.take() { _ = pair.a.receive(frame) }
        #expect(!written.done, "acknowledged while the peer lacks it and could still be promoted")
        #expect(pair.a.heldWrites == 1)
        #expect(pair.a.status.generations.bitmap == 0, "a peer in a newer epoch holds the newer data")
        pair.a.setCompletesWithoutPeer(true)
        #expect(written.succeeded)
    }

    /// A write the peer could not store lives on the primary alone, as after a disconnection: if
    /// both nodes then lose power before the catch-up resync, the primary's copy must still be the
    /// source when they meet again, whichever node is preferred in ties.
    @Test func aWriteThePeerCouldNotStore_survivesBothNodesRestarting_beforeTheCatchUp() throws {
        let pair = try connectedPair(.c)
        let before = pair.a.status.generations
        let written = Outcome()
        pair.a.write(offset: 0, payload: payload(0x46), fua: false, completion: written.completion)
        // b's store fails the write: here, by the frame pointing past the end of its copy.
        for case .data(var write) in pair.aToB.take() {
            write.offset = pair.b.store.sizeBytes
            _ = pair.b.receive(.data(write))
        }
        for frame in pair.bToA.take() { _ = pair.a.receive(frame) }
        #expect(written.succeeded)
        #expect(
            pair.a.status.generations.current != before.current && pair.a.status.generations.bitmap == before.current)
        // Power lost on both before the catch-up resync crossed.
        var restarted = try pair.restartingB()
        try restarted.restartAfterCrash()
        restarted.connect()
        restarted.deliver()
        #expect(try restarted.identical())
        var first = [UInt8](repeating: 0, count: 4096)
        try first.withUnsafeMutableBytes { try restarted.b.store.read(into: $0, at: 0) }
        #expect(first.allSatisfy { $0 == 0x46 }, "the acknowledged write was overwritten by the peer's older copy")
    }

    @Test func aFinishedResync_saysItsTimeInMilliseconds_andItsRateInBinaryUnits() {
        #expect(ReplicatedVolume.rate(256 << 20, .milliseconds(601)) == " in 0.601 s, 426 MiB/s")
        #expect(ReplicatedVolume.rate(64 << 10, .microseconds(2_229)) == " in 0.002 s, 28 MiB/s")
        #expect(ReplicatedVolume.rate(1 << 30, .seconds(12) + .milliseconds(5)) == " in 12.005 s, 85.3 MiB/s")
        #expect(ReplicatedVolume.rate(4096, .zero) == " in 0.000 s, 3.8 GiB/s", "no division by zero")
    }

    /// A protocol A pair whose window holds three 4 KiB writes, after ten writes to regions 0–9:
    /// three queued for the peer, seven marked. Returns the writes' outcomes.
    private func protocolAPairPastItsWindow() throws -> (Pair, [Outcome]) {
        let pair = try Pair(protocol: .a, asyncWindowBytes: 3 * 4096)
        pair.connect()
        try pair.a.setRole(.primary)
        pair.deliver()
        let outcomes = (0..<10).map { block in
            let outcome = Outcome()
            pair.a.write(
                offset: UInt64(block) * 65536, payload: payload(0x61), fua: false, completion: outcome.completion)
            return outcome
        }
        return (pair, outcomes)
    }

    @Test func protocolA_fallingBehind_marksInsteadOfQueueing_thenCatchesUp() throws {
        let (pair, outcomes) = try protocolAPairPastItsWindow()
        for outcome in outcomes { #expect(outcome.succeeded, "protocol A never blocks the client") }
        #expect(pair.a.status.outOfSyncBytes == 7 * 65536, "writes past the window are marked, not queued")
        pair.deliver()
        #expect(pair.a.status.outOfSyncBytes == 0)
        #expect(try pair.identical())
    }

    @Test func primarySetByHand_thenPromotedInAnEpoch_writesCarryTheEpochThePeerFences() throws {
        let pair = try connectedPair(.c)
        // Membership promoted the node that was already primary; the peer's voter saw epoch 3.
        try pair.a.setRole(.primary, epoch: 3)
        pair.b.observeEpoch(3)
        pair.deliver()
        let outcome = Outcome()
        pair.a.write(offset: 0, payload: payload(0x44), fua: true, completion: outcome.completion)
        pair.deliver()
        #expect(outcome.succeeded)
        #expect(pair.a.status.epoch == 3)
        #expect(pair.a.status.outOfSyncBytes == 0, "the peer refused nothing")
        #expect(try pair.identical())
    }

    @Test func protocolB_completesOnReceipt_beforeTheWrittenAcknowledgement() throws {
        let pair = try connectedPair(.b)
        let outcome = Outcome()
        pair.a.write(offset: 0, payload: payload(0x33), fua: false, completion: outcome.completion)
        let toB = pair.aToB.take()
        for frame in toB { _ = pair.b.receive(frame) }
        let acks = pair.bToA.take()
        #expect(acks.count == 2)
        _ = pair.a.receive(acks[0])
        #expect(outcome.succeeded, "B completes on the received acknowledgement")
        _ = pair.a.receive(acks[1])
    }

    @Test func protocolA_writeMarkedWhileItsRegionsResyncBlockIsInFlight_stillReachesThePeer() throws {
        let (pair, _) = try protocolAPairPastItsWindow()
        // The three queued writes arrive; their acknowledgements drain the window, and the primary
        // starts resyncing the seven marked regions: those blocks are now on the way to b.
        for frame in pair.aToB.take() { _ = pair.b.receive(frame) }
        for frame in pair.bToA.take() { _ = pair.a.receive(frame) }
        let resyncBlocks = pair.aToB.take()
        #expect(resyncBlocks.contains { if case .resyncData = $0 { true } else { false } })
        // Three writes elsewhere fill the window again; the next write, to region 5, is marked
        // while region 5's resync block (holding the older bytes) is still in flight.
        for block in 20..<23 {
            pair.a.write(offset: UInt64(block) * 65536, payload: payload(0x63), fua: false, completion: { _ in })
        }
        let later = Outcome()
        pair.a.write(offset: 5 * 65536, payload: payload(0x62), fua: false, completion: later.completion)
        #expect(later.succeeded)
        let percent = pair.a.status.resync?.percent ?? 0
        #expect(percent <= 100, "progress counts the region to send again: \(percent)%")
        for frame in resyncBlocks { _ = pair.b.receive(frame) }
        pair.deliver()
        #expect(pair.a.status.outOfSyncBytes == 0)
        #expect(try pair.identical(), "the write marked during the resync reached the peer")
    }

    @Test func resync_givesWayToClientWrites_andTakesTheLinkOnceTheyPause() throws {
        let wakes = Mutex<[@Sendable () -> Void]>([])
        let hand = ManualClockHand()
        let pair = try Pair(
            protocol: .c, resyncMinRate: 1 << 20,
            scheduleAfter: { _, work in wakes.withLock { $0.append(work) } }, clock: .manual(hand))
        pair.connect()
        try pair.a.setRole(.primary)
        pair.deliver()
        // The first primary's full sync left one piece of work for later: its last cache sweep.
        let sweep = wakes.withLock { wakes in
            defer { wakes = [] }
            return wakes
        }
        #expect(sweep.count == 1)
        for work in sweep { work() }
        pair.disconnect()
        for block in 0..<64 {
            pair.a.write(offset: UInt64(block) * 65536, payload: payload(0x44), fua: false, completion: { _ in })
        }
        // Clients wrote just now: at 1 MiB/s the resync has no budget yet and waits for a wake-up.
        let before = pair.aToB.resyncBytes.load(ordering: .relaxed)
        pair.connect()
        #expect(pair.aToB.resyncBytes.load(ordering: .relaxed) == before)
        #expect(pair.a.status.connection == .syncSource)
        #expect(wakes.withLock { $0.count } == 1)
        // Once the clients have been quiet for the activity window, the wake-up sends everything.
        hand.advance(by: .milliseconds(600))
        for wake in wakes.withLock({ $0 }) { wake() }
        pair.deliver()
        #expect(pair.aToB.resyncBytes.load(ordering: .relaxed) - before == 64 * 65536)
        #expect(pair.a.status.connection == .connected)
        #expect(try pair.identical())
    }

    @Test func disconnectedWrites_areMarked_andOnlyThoseAreResynced() throws {
        let pair = try connectedPair(.c)
        for block in 0..<64 {
            pair.a.write(
                offset: UInt64(block) * 65536, payload: payload(0x01, count: 65536), fua: false, completion: { _ in })
        }
        pair.deliver()
        pair.disconnect()
        // 1% of 16 MiB, in eight scattered 20 KiB writes.
        var dirtied: UInt64 = 0
        for index in 0..<8 {
            let outcome = Outcome()
            pair.a.write(
                offset: UInt64(index) * 2_000_000 + 777, payload: payload(0x5A, count: 20_480), fua: true,
                completion: outcome.completion)
            #expect(outcome.succeeded, "a lone primary completes writes after marking them")
            dirtied += 20_480
        }
        #expect(pair.a.status.outOfSyncBytes > 0)
        #expect(try !pair.identical())
        let before = pair.aToB.resyncBytes.load(ordering: .relaxed)
        pair.connect()
        #expect(pair.a.status.connection == .connected)
        #expect(pair.b.status.disk == .upToDate)
        let moved = pair.aToB.resyncBytes.load(ordering: .relaxed) - before
        #expect(moved > 0 && moved <= 16 * 65536, "moved \(moved) bytes for \(dirtied) dirtied: regions of 64 KiB")
        #expect(try pair.identical())
        #expect(pair.a.status.outOfSyncBytes == 0)
        #expect(pair.a.status.generations == pair.b.status.generations)
    }

    @Test func activityLogEviction_writesTheBitmapOnlyWhenItHoldsNewMarks() throws {
        // Two extents of 1 MiB: every write to a third extent evicts one.
        let pair = try Pair(protocol: .c, activityLog: ActivityLog(extentBytes: 1 << 20, capacity: 2))
        pair.connect()
        try pair.a.setRole(.primary)
        pair.deliver()
        func write(extent: UInt64) {
            pair.a.write(offset: extent << 20, payload: payload(0x3C), fua: false, completion: { _ in })
            pair.deliver()
        }
        /// The bitmap file's inode: every write of it replaces the file.
        func bitmapFile() -> ino_t? {
            var info = stat()
            return stat(pair.a.bitmapPath, &info) == 0 ? info.st_ino : nil
        }
        write(extent: 0)
        write(extent: 1)
        #expect(pair.a.status.activityLogDataFlushes == 0, "nothing left the log: no flush of the copy")
        let inSync = bitmapFile()
        for extent in 2..<12 { write(extent: UInt64(extent)) }
        #expect(bitmapFile() == inSync, "in sync, ten evictions found no mark to make durable")
        // Each record that drops an extent waits until the writes there are durable on this copy:
        // a power loss would otherwise lose them here, unmarked, while the peer keeps them.
        #expect(pair.a.status.activityLogDataFlushes == 10)

        pair.disconnect()
        write(extent: 12)
        write(extent: 13)
        write(extent: 14)  // evicts extent 12, whose mark exists only in memory
        #expect(bitmapFile() != inSync)
        let stored = try WriteIntentBitmap.load(path: pair.a.bitmapPath, volumeBytes: pair.a.store.sizeBytes)
        #expect(stored?.isDirty(region: Int((12 << 20) / stored!.regionBytes)) == true, "the evicted extent's mark")
        pair.connect()
        #expect(try pair.identical())
    }

    @Test func activityLogGroupCommit_oneLogWriteForEveryWaitingWrite_durableExtentsGoOn() throws {
        let blocking = HeldWork()
        let pair = try Pair(
            protocol: .c, activityLog: ActivityLog(extentBytes: 1 << 20, capacity: 16), runBlocking: blocking.submit)
        try pair.a.setRole(.primary)
        let results = Mutex<[Int: Result<Void, StorageError>]>([:])
        func write(_ number: Int, extent: UInt64) {
            pair.a.write(offset: extent << 20, payload: payload(UInt8(number)), fua: false) { result in
                results.withLock { $0[number] = result }
            }
        }
        /// The extents in the log's file; `nil` when it cannot be read or decoded.
        func logged() -> Set<UInt64>? {
            guard let bytes = try? AtomicFile.read(path: pair.a.activityLogPath) else { return nil }
            return ActivityLog.decodeExtents(bytes).map { Set($0.extents) }
        }
        func firstByte(extent: UInt64) throws -> UInt8 {
            var byte: UInt8 = 0
            try withUnsafeMutableBytes(of: &byte) { try pair.a.store.read(into: $0, at: extent << 20) }
            return byte
        }
        let recordsBefore = pair.a.activityLogWrite.withLock { $0.sequence }

        // Eight extents enter the log, and a second write to the first of them: all wait for one commit.
        for extent in 0..<8 { write(extent + 1, extent: UInt64(extent)) }
        write(9, extent: 0)
        #expect(results.withLock { $0.isEmpty }, "nothing completes before its extent is durable in the log")
        #expect(try firstByte(extent: 0) == 0, "and nothing reaches the copy")
        #expect(logged() == [])
        #expect(pair.a.writesInFlight == 10, "nine writes wait and one commit is on its way (a drain counts them)")
        #expect(blocking.count == 1, "one commit for all of them")
        blocking.runAll()
        #expect(pair.a.activityLogWrite.withLock { $0.sequence } == recordsBefore + 1, "one log write for nine writes")
        #expect(pair.a.status.activityLogWrites == 1 && pair.a.status.activityLogWaits == 9)
        #expect(logged() == Set(0..<8))
        #expect(results.withLock { $0.count == 9 && $0.values.allSatisfy { (try? $0.get()) != nil } })
        #expect(try firstByte(extent: 7) == 8)

        // An extent already in the file does not wait.
        write(10, extent: 3)
        #expect(results.withLock { $0[10] != nil } && blocking.count == 0)

        // A write that waited while this node stopped being primary fails and leaves the copy alone.
        write(11, extent: 12)
        try pair.a.setRole(.secondary)
        blocking.runAll()
        let failed = results.withLock { $0[11] }
        #expect(failed.map { (try? $0.get()) == nil } == true, "\(String(describing: failed))")
        #expect(try firstByte(extent: 12) == 0)
        #expect(pair.a.writesInFlight == 0)
    }

    @Test func primaryCrashWithWritesInFlight_activityLogMarksThem_andResyncMakesCopiesIdentical() throws {
        var pair = try connectedPair(.c)
        for block in 0..<8 {
            // Written locally; the frames never reach the peer, as when the process dies.
            pair.a.write(
                offset: UInt64(block) * (1 << 20) + 4096, payload: payload(0xC4, count: 8192), fua: false,
                completion: { _ in })
        }
        #expect(try !pair.identical())
        try pair.restartAfterCrash()
        #expect(pair.a.openingEvents.count == 1)
        #expect(
            pair.a.status.outOfSyncBytes == 2 * (4 << 20), "the two 4 MiB activity extents of the writes are marked")
        pair.connect()
        #expect(pair.a.status.connection == .connected)
        #expect(try pair.identical())
        #expect(pair.a.status.outOfSyncBytes == 0)
    }

    @Test func onlineVerify_findsExactlyTheCorruptedRegion_andResyncRepairsIt() throws {
        let pair = try connectedPair(.c)
        pair.a.write(offset: 0, payload: payload(0x42, count: 1 << 20), fua: false, completion: { _ in })
        pair.deliver()
        // Corrupt one block of the secondary behind the engine's back.
        try [UInt8](repeating: 0xEE, count: 512).withUnsafeBytes { try pair.b.store.write($0, at: 5 * 65536 + 100) }
        #expect(try !pair.identical())
        _ = try pair.a.startVerify()
        pair.deliver()
        let result = pair.a.status.lastVerify
        #expect(result?.outOfSyncRegions == [5])
        #expect(result?.checkedRegions == result?.totalRegions)
        #expect(try pair.identical(), "the marked region is resynced when the verify ends")
        #expect(pair.a.status.outOfSyncBytes == 0)
    }

    @Test func onlineVerify_ofIdenticalCopies_findsNothing_andIsRefusedOnTheSecondary() throws {
        let pair = try connectedPair(.c)
        #expect(throws: RoleError.self) { try pair.b.startVerify() }
        _ = try pair.a.startVerify()
        pair.deliver()
        #expect(pair.a.status.lastVerify?.outOfSyncRegions == [])
    }

    @Test func resyncInterruptedByATargetRestart_resumesFromTheSourcesBitmap() throws {
        var pair = try connectedPair(.c)
        pair.disconnect()
        for block in 0..<32 {
            pair.a.write(
                offset: UInt64(block) * 65536, payload: payload(0x77, count: 65536), fua: false, completion: { _ in })
        }
        pair.a.peerConnected(pair.aToB)
        pair.b.peerConnected(pair.bToA)
        // Deliver only the first exchanges: the resync starts, a few blocks arrive, then the target dies.
        for _ in 0..<2 {
            for frame in pair.aToB.take() { _ = pair.b.receive(frame) }
            for frame in pair.bToA.take() { _ = pair.a.receive(frame) }
        }
        #expect(pair.b.status.connection == .syncTarget)
        pair.aToB.drop()
        pair.bToA.drop()
        _ = pair.a.peerDisconnected()
        pair = try pair.restartingB()
        #expect(pair.b.status.disk == .inconsistent, "a target that died mid-resync remembers it")
        #expect(throws: RoleError.self) { try pair.b.setRole(.primary) }
        let left = pair.a.status.outOfSyncBytes
        #expect(left > 0 && left < 32 * 65536)
        let before = pair.aToB.resyncBytes.load(ordering: .relaxed)
        pair.connect()
        #expect(pair.aToB.resyncBytes.load(ordering: .relaxed) - before == left, "only what was left is sent")
        #expect(pair.b.status.disk == .upToDate)
        #expect(try pair.identical())
    }

    @Test func cleanClose_leavesNothingMarked() throws {
        let pair = try connectedPair(.c)
        pair.a.write(offset: 0, payload: payload(1), fua: false, completion: { _ in })
        pair.deliver()
        #expect(pair.a.close().isEmpty)
        let reopened = try pair.open("a")
        #expect(reopened.openingEvents.isEmpty)
        #expect(reopened.status.outOfSyncBytes == 0)
    }

    @Test func freshPair_firstPrimaryBecomesTheSource_afterDataWasWrittenAlone() throws {
        let pair = try Pair(protocol: .c)
        try pair.a.setRole(.primary)
        pair.a.write(offset: 0, payload: payload(0x7E, count: 1 << 20), fua: false, completion: { _ in })
        pair.connect()
        #expect(pair.b.status.disk == .upToDate)
        #expect(pair.aToB.resyncBytes.load(ordering: .relaxed) == 16 << 20, "a never-synced peer gets a full resync")
        #expect(try pair.identical())
    }

    /// A pair that never synced, `a` primary with 1 MiB written, and both 16 MiB copies wholly in the
    /// page cache (checked): what a resync does not drop stays. Returns the copies' paths, `a`'s first.
    private func unsyncedPairWhollyCached() throws -> (Pair, [String]) {
        let pair = try Pair(protocol: .c)
        try pair.a.setRole(.primary)
        let written = Outcome()
        pair.a.write(offset: 0, payload: payload(0x5A, count: 1 << 20), fua: true, completion: written.completion)
        #expect(written.succeeded)
        let paths = ["\(pair.directory.path)/a.img", "\(pair.directory.path)/b.img"]
        try pair.a.store.flush()
        _ = try pair.identical()
        #expect(paths.map(residentPages) == [4096, 4096], "a 16 MiB copy read whole is 4096 pages")
        return (pair, paths)
    }

    /// A full sync and a verify pass both copies through the page cache; they must not leave them
    /// there (the kernel would keep them in large folios that slow every later small write).
    @Test func fullSyncAndVerify_leaveNeitherCopyInThePageCache() throws {
        let (pair, paths) = try unsyncedPairWhollyCached()
        pair.connect()
        #expect(pair.b.status.disk == .upToDate)
        #expect(pair.aToB.resyncBytes.load(ordering: .relaxed) == 16 << 20)
        // (On tmpfs no page can leave the cache; the test directory must be on a disk file system.)
        #expect(paths.map(residentPages) == [0, 0], "pages the full sync left cached (source, target)")
        _ = try pair.identical()
        _ = try pair.a.startVerify()
        pair.deliver()
        #expect(pair.a.status.lastVerify?.outOfSyncRegions == [])
        #expect(paths.map(residentPages) == [0, 0], "pages the verify left cached (primary, secondary)")
    }

    @Test func fullSyncCutOff_leavesOnlyTheUnfinishedExtentsInTheSourcesCache() throws {
        let (pair, paths) = try unsyncedPairWhollyCached()
        let source = paths[0]
        pair.a.peerConnected(pair.aToB)
        pair.b.peerConnected(pair.bToA)
        // Exchange until more than one of the four 4 MiB extents reached the peer, then cut the link.
        var done: UInt64 = 0
        for _ in 0..<100 where done < 6 << 20 {
            for frame in pair.aToB.take() { _ = pair.b.receive(frame) }
            for frame in pair.bToA.take() { _ = pair.a.receive(frame) }
            done = pair.a.status.resync?.doneBytes ?? 0
        }
        #expect(done >= 6 << 20 && done < 12 << 20, "the resync was cut off in its second or third extent")
        pair.disconnect()
        let finishedExtents = Int(done / (4 << 20))
        #expect(
            residentPages(source) == 4096 - finishedExtents * 1024,
            "only the \(finishedExtents) finished extents leave the cache; the others were not done")
        pair.connect()
        #expect(pair.b.status.disk == .upToDate)
        #expect(try pair.identical())
    }

    @Test func twoPrimaries_onAConnectedPair_areRefused() throws {
        let pair = try connectedPair(.c)
        #expect(throws: RoleError.self) { try pair.b.setRole(.primary) }
    }

    /// `a` writes as primary, the link breaks, `b` is promoted and writes too.
    private func splitBrain(policy: SplitBrainPolicy, aBytes: Int, bBytes: Int) throws -> Pair {
        let pair = try connectedPair(.c, policy: policy)
        pair.disconnect()
        if aBytes > 0 {
            pair.a.write(offset: 0, payload: payload(0xAA, count: aBytes), fua: false, completion: { _ in })
        }
        try pair.b.setRole(.primary)
        if bBytes > 0 {
            pair.b.write(offset: 8 << 20, payload: payload(0xBB, count: bBytes), fua: false, completion: { _ in })
        }
        return pair
    }

    @Test func splitBrain_isReportedWithDivergedBytes_andResolvedByDiscardingLocal() throws {
        let pair = try splitBrain(policy: .disconnect, aBytes: 65536, bBytes: 3 * 65536)
        let before = pair.bToA.resyncBytes.load(ordering: .relaxed)
        pair.connect()
        #expect(
            pair.a.status.splitBrain == .init(localChangedBytes: 65536, peerChangedBytes: 3 * 65536, resolvable: true))
        #expect(
            pair.b.status.splitBrain == .init(localChangedBytes: 3 * 65536, peerChangedBytes: 65536, resolvable: true))
        #expect(pair.a.status.connection == .standAlone)
        #expect(try !pair.identical())
        try pair.a.setRole(.secondary)
        let report = try pair.a.resolveSplitBrain()
        #expect(report.localChangedBytes == 65536)
        pair.deliver()
        #expect(pair.a.status.connection == .connected)
        #expect(pair.a.status.disk == .upToDate)
        #expect(
            pair.bToA.resyncBytes.load(ordering: .relaxed) - before == 4 * 65536, "only the regions either side changed"
        )
        #expect(try pair.identical())
    }

    @Test(arguments: [SplitBrainPolicy.disconnect, .discardZeroChanges, .discardYoungerPrimary, .discardLeastChanges])
    func outdatedCopy_neverSurvivesASplitBrain_underAnyPolicy(policy: SplitBrainPolicy) throws {
        // a changed three times as much as b: without the outdated mark, discard-least-changes would
        // keep a's data, and disconnect would wait for an administrator.
        let pair = try splitBrain(policy: policy, aBytes: 3 * 65536, bBytes: 65536)
        try pair.a.setRole(.secondary)
        #expect(!pair.a.markOutdated().isEmpty)
        #expect(pair.a.status.disk == .outdated)
        #expect(throws: RoleError.self, "an outdated copy is never promoted") { try pair.a.setRole(.primary) }
        pair.connect()
        #expect(pair.a.status.connection == .connected, "\(policy): the outdated copy becomes the resync target")
        #expect(pair.a.status.disk == .upToDate)
        #expect(pair.b.status.splitBrain == nil || pair.b.status.connection == .connected)
        #expect(try pair.identical())
        var byte = [UInt8](repeating: 0, count: 1)
        try byte.withUnsafeMutableBytes { try pair.a.store.read(into: $0, at: 8 << 20) }
        #expect(byte == [0xBB], "a holds b's acknowledged data now")
    }

    @Test func primaryCutOffThatCompletedNothingAlone_rejoinsAsTheResyncTarget_withoutASplitBrain() throws {
        let pair = try connectedPair(.c)
        // A witness guards the cluster: writes wait for a voter to record the peer outdated.
        pair.a.setCompletesWithoutPeer(false)
        pair.disconnect()
        let waiting = Mutex<Int>(0)
        pair.a.write(offset: 0, payload: payload(0xAA), fua: true) { _ in waiting.withLock { $0 += 1 } }
        #expect(waiting.withLock { $0 } == 0, "held: nobody recorded b outdated")
        // Quorum moves on without a: b is promoted and writes.
        try pair.a.setRole(.secondary)
        pair.a.releaseHeldWrites(failing: true)
        try pair.b.setRole(.primary, epoch: 5)
        pair.b.write(offset: 8 << 20, payload: payload(0xBB), fua: false, completion: { _ in })
        pair.connect()
        #expect(pair.a.status.splitBrain == nil && pair.b.status.splitBrain == nil)
        #expect(pair.a.status.connection == .connected && pair.a.status.disk == .upToDate)
        #expect(try pair.identical())
    }

    @Test func outdatedMark_isDurable_andARestartedCopyStaysOutdated() throws {
        let pair = try connectedPair(.c)
        pair.disconnect()
        _ = pair.b.markOutdated()
        let restarted = try pair.restartingB()
        #expect(restarted.b.status.disk == .outdated)
        #expect(throws: RoleError.self) { try restarted.b.setRole(.primary) }
        // Back with the primary, which wrote nothing meanwhile: the same data, no longer outdated.
        restarted.connect()
        #expect(restarted.b.status.disk == .upToDate)
    }

    @Test func forcedPromotion_isTheOneWayAnOutdatedCopyServes_andSaysWhatMayBeLost() throws {
        let pair = try connectedPair(.c)
        pair.disconnect()
        _ = pair.b.markOutdated()
        #expect(throws: RoleError.self) { try pair.b.setRole(.primary) }
        let said = pair.b.forceUpToDate().map(\.description).joined()
        #expect(said.contains("are lost unless that node returns"), "\(said)")
        try pair.b.setRole(.primary)
        #expect(pair.b.status.role == .primary)
    }

    @Test(arguments: [
        (SplitBrainPolicy.discardZeroChanges, 0, 65536, UInt8(0xBB)),
        (.discardYoungerPrimary, 65536, 65536, 0xAA),
        (.discardLeastChanges, 3 * 65536, 65536, 0xAA),
    ])
    func splitBrain_automaticPolicies_pickTheSurvivor(
        policy: SplitBrainPolicy, aBytes: Int, bBytes: Int, survivor: UInt8
    ) throws {
        let pair = try splitBrain(policy: policy, aBytes: aBytes, bBytes: bBytes)
        // Policies never discard a serving primary's data: the loser is made secondary first.
        let loser = survivor == 0xAA ? pair.b : pair.a
        try loser.setRole(.secondary)
        pair.connect()
        #expect(pair.a.status.connection == .connected, "\(policy) resolves on its own")
        #expect(try pair.identical())
        let offset: UInt64 = survivor == 0xAA ? 0 : 8 << 20
        var byte = [UInt8](repeating: 0, count: 1)
        try byte.withUnsafeMutableBytes { try loser.store.read(into: $0, at: offset) }
        #expect(byte == [survivor], "the loser now holds the survivor's data")
    }
}

/// A blocking runner that holds its work until the test runs it.
final class HeldWork: Sendable {
    private let work = Mutex<[@Sendable () -> Void]>([])

    var count: Int { work.withLock { $0.count } }

    func submit(_ item: @escaping @Sendable () -> Void) { work.withLock { $0.append(item) } }

    /// Runs what is held, and what that work submits, until nothing is left.
    func runAll() {
        while let item = work.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { item() }
    }
}
