import Testing

@testable import TandemCore

@Suite("Replication engine: the write and acknowledgement rules")
struct ReplicationEngineTests {
    static func context(_ role: VolumeRole = .primary, linked: Bool = true) -> ReplicationEngine.Context {
        ReplicationEngine.Context(
            role: role, epoch: 3, connection: linked ? .connected : .connecting, linked: linked, replicating: linked)
    }

    /// An engine for a 1 MiB volume with 4 KiB regions.
    static func engine(
        _ replicationProtocol: Configuration.ReplicationProtocol, peerConfigured: Bool = true,
        asyncWindowBytes: UInt64 = 64 << 20
    ) -> ReplicationEngine {
        ReplicationEngine(
            replicationProtocol: replicationProtocol,
            bitmap: WriteIntentBitmap(volumeBytes: 1 << 20, regionBytes: 4096),
            peerConfigured: peerConfigured, asyncWindowBytes: asyncWindowBytes, resyncWindow: 2, peerFlushEvery: 1024)
    }

    /// The marked regions, as "first..last" runs.
    static func marked(_ engine: ReplicationEngine) -> [Int] { engine.bitmap.dirtyRegions }

    /// The directives an input left, in a short readable form; empties `ready`.
    static func take(_ engine: inout ReplicationEngine) -> [String] {
        defer { engine.ready.removeAll() }
        return engine.ready.map { directive in
            switch directive {
            case .sendWrite(let request, let sequence, let epoch, let offset, let length, let flags):
                return "send \(request) #\(sequence) e\(epoch) \(offset)+\(length) f\(flags)"
            case .sendFlush(let sequence): return "send flush #\(sequence)"
            case .sendAck(let sequence, let kind): return "ack #\(sequence) \(kind)"
            case .endActivity(let offset, let length): return "end \(offset)+\(length)"
            case .applyPeerWrite(let sequence): return "apply #\(sequence)"
            case .applyResyncBlock(let sequence): return "apply resync block #\(sequence)"
            case .resyncTargetFinished: return "resync of this copy finished"
            case .sendVerifyRequest(let sequence, let range): return "verify #\(sequence) \(range)"
            case .verifyFinished(let result):
                return
                    "verify \(result.stopped ? "stopped" : "finished") \(result.checkedRegions)/\(result.totalRegions) "
                    + "differ \(result.outOfSyncRegions)"
            case .resyncDifferences: return "resync the differences"
            case .sync(let sync): return "sync \(sync)"
            case .beginIndependentChanges: return "new generation"
            case .persistBitmap(let then): return "persist bitmap, then \(then)"
            case .complete(let request, let outcome):
                switch outcome {
                case .success: return "complete \(request)"
                case .failure: return "fail \(request)"
                case .noLongerPrimary: return "fail \(request) not primary"
                }
            case .peerRefused(let sequence, let failed): return "refused #\(sequence)\(failed ? " failed" : "")"
            case .catchUp: return "catch up"
            case .sendResyncBlock(let sequence, let epoch, let range): return "resync #\(sequence) e\(epoch) \(range)"
            case .wakeAfter(let wait): return "wake after \(wait)"
            case .regionResynced(let range): return "resynced \(range)"
            case .resyncNews(let text): return text
            case .resyncFinished(let total, let done): return "resync finished \(done)/\(total)"
            }
        }
    }

    @Test("protocol C completes a write only when the peer wrote it")
    func protocolC() {
        var engine = Self.engine(.c)
        engine.on(.written(IORequest(1), offset: 4096, length: 4096, flags: 0), Self.context())
        #expect(Self.take(&engine) == ["send r1 #1 e3 4096+4096 f0"])
        engine.on(.ack(sequence: 1, .received), Self.context())
        #expect(Self.take(&engine) == [])
        engine.on(.ack(sequence: 1, .written), Self.context())
        #expect(Self.take(&engine) == ["complete r1", "end 4096+4096"])
        #expect(engine.unacknowledged == 0)
    }

    @Test("protocol B completes on receipt, but a FUA write waits for the peer's durable write and its own")
    func protocolB() {
        var engine = Self.engine(.b)
        engine.on(.written(IORequest(1), offset: 0, length: 512, flags: 0), Self.context())
        engine.on(.ack(sequence: 1, .received), Self.context())
        #expect(Self.take(&engine) == ["send r1 #1 e3 0+512 f0", "complete r1"])
        engine.on(.written(IORequest(2), offset: 0, length: 512, flags: PeerWriteFlags.fua), Self.context())
        #expect(Self.take(&engine) == ["send r2 #2 e3 0+512 f1", "sync pending(2)"])
        engine.on(.ack(sequence: 2, .received), Self.context())
        engine.on(.ack(sequence: 2, .written), Self.context())
        #expect(Self.take(&engine) == [])
        engine.on(.synced(.pending(2), failure: nil), Self.context())
        #expect(Self.take(&engine) == ["complete r2", "end 0+512"])
    }

    @Test("protocol A completes at once and marks instead of sending once its window is full")
    func protocolAWindow() {
        var engine = Self.engine(.a, asyncWindowBytes: 8192)
        engine.on(.written(IORequest(1), offset: 0, length: 8192, flags: 0), Self.context())
        #expect(Self.take(&engine) == ["send r1 #1 e3 0+8192 f0", "complete r1"])
        engine.on(.written(IORequest(2), offset: 8192, length: 4096, flags: 0), Self.context())
        #expect(Self.take(&engine) == ["end 8192+4096", "complete r2"])
        #expect(Self.marked(engine) == [2])
        // The window drains: the marked region is resynced while connected.
        engine.on(.ack(sequence: 1, .written), Self.context())
        #expect(Self.take(&engine) == ["end 0+8192", "catch up"])
    }

    @Test("a write the peer could not store is marked durably and starts a new generation before it completes")
    func failedAck() {
        var engine = Self.engine(.c)
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context())
        _ = Self.take(&engine)
        engine.on(.ack(sequence: 1, .failed), Self.context())
        #expect(
            Self.take(&engine) == [
                "persist bitmap, then completionsWait", "new generation", "refused #1 failed", "complete r1",
                "end 0+4096", "catch up",
            ])
        #expect(Self.marked(engine) == [0])
    }

    @Test("a refusal marks but starts no generation: the refusing peer's data is the newer")
    func refusedAck() {
        var engine = Self.engine(.c)
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context())
        _ = Self.take(&engine)
        engine.on(.ack(sequence: 1, .refused), Self.context())
        #expect(!Self.take(&engine).contains("new generation"))
    }

    @Test("a lost link marks what is in flight, completes it on this copy, and holds it while the peer may take over")
    func disconnectHolds() {
        var engine = Self.engine(.c)
        engine.on(.completesWithoutPeer(false), Self.context())
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context())
        _ = Self.take(&engine)
        engine.on(.disconnected, Self.context(linked: false))
        #expect(Self.take(&engine) == ["end 0+4096", "persist bitmap, then report"])
        #expect(Self.marked(engine) == [0])
        #expect(engine.held == [IORequest(1)])
        // Writes while apart are marked and held too.
        engine.on(.written(IORequest(2), offset: 8192, length: 4096, flags: 0), Self.context(linked: false))
        #expect(Self.take(&engine) == ["end 8192+4096"])
        #expect(Self.marked(engine) == [0, 2])
        // A voter recorded the peer outdated: a new generation, durably, then the held writes complete.
        engine.on(.completesWithoutPeer(true), Self.context(linked: false))
        #expect(Self.take(&engine) == ["new generation", "complete r1", "complete r2"])
    }

    @Test("a node that stops being primary fails its held writes")
    func heldFail() {
        var engine = Self.engine(.c)
        engine.on(.completesWithoutPeer(false), Self.context(linked: false))
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context(linked: false))
        _ = Self.take(&engine)
        engine.on(.releaseHeld(failing: true), Self.context(.secondary, linked: false))
        #expect(Self.take(&engine) == ["fail r1 not primary"])
    }

    @Test("a secondary refuses writes from an older epoch and acknowledges the others after writing them")
    func secondary() {
        var engine = Self.engine(.c)
        engine.on(.peerWrite(sequence: 5, epoch: 2, fenceEpoch: 3, flags: 0), Self.context(.secondary))
        #expect(Self.take(&engine) == ["ack #5 refused"])
        engine.on(.peerWrite(sequence: 6, epoch: 3, fenceEpoch: 3, flags: PeerWriteFlags.fua), Self.context(.secondary))
        #expect(Self.take(&engine) == ["apply #6"])
        engine.on(.peerWriteApplied(sequence: 6, flags: PeerWriteFlags.fua, failed: nil), Self.context(.secondary))
        #expect(Self.take(&engine) == ["sync forPeer(6, TandemCore.PeerAckKind.written)"])
        engine.on(.peerWriteApplied(sequence: 7, flags: 0, failed: 0..<512), Self.context(.secondary))
        #expect(Self.take(&engine) == ["ack #7 failed"])
        #expect(Self.marked(engine) == [0])
        // A primary takes no one's writes.
        engine.on(.peerWrite(sequence: 8, epoch: 9, fenceEpoch: 3, flags: 0), Self.context(.primary))
        #expect(Self.take(&engine) == ["ack #8 refused"])
    }

    @Test("a flush goes to the peer under B and C, not under A, and a failed local sync fails it at once")
    func flushes() {
        var engine = Self.engine(.c)
        engine.on(.flush(IORequest(1)), Self.context())
        #expect(Self.take(&engine) == ["send flush #1", "sync pending(1)"])
        struct Broken: Error {}
        engine.on(.synced(.pending(1), failure: Broken()), Self.context())
        #expect(Self.take(&engine) == ["fail r1"])
        engine.on(.ack(sequence: 1, .flushed), Self.context())
        #expect(engine.unacknowledged == 0)
        var async = Self.engine(.a)
        async.on(.flush(IORequest(2)), Self.context())
        #expect(Self.take(&async) == ["sync alone(r2, holdable: false)"])
    }

    @Test("a lone node marks nothing and sends nothing")
    func lone() {
        var engine = Self.engine(.c, peerConfigured: false)
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context(linked: false))
        #expect(Self.take(&engine) == ["complete r1"])
        #expect(Self.marked(engine).isEmpty)
    }

    @Test("a resync sends the marked regions through its window, clears each on the peer's write, and ends")
    func resyncSource() {
        var engine = Self.engine(.c)
        engine.on(.markOutOfSync(offset: 0, length: 4096), Self.context())
        var peer = WriteIntentBitmap(volumeBytes: 1 << 20, regionBytes: 4096)
        peer.mark(offset: 3 * 4096, length: 2 * 4096)
        let pacer = ResyncPacer(rate: nil, minimumRate: nil, now: .zero)
        engine.on(.startResyncSource(full: false, peerBitmap: peer, pacer: pacer), Self.context())
        #expect(Self.take(&engine) == ["persist bitmap, then pumpResync"])
        #expect(engine.resyncSource?.totalBytes == 3 * 4096)
        engine.on(.pump(now: .zero, lastClientWrite: nil), Self.context())
        #expect(Self.take(&engine) == ["resync #1 e3 0..<4096", "resync #2 e3 12288..<16384"])
        // A write to a region in flight marks it again: its acknowledgement must not clear it.
        engine.on(.written(IORequest(9), offset: 0, length: 512, flags: 0), Self.context(linked: false))
        _ = Self.take(&engine)
        engine.on(.resyncAck(sequence: 1, .resynced, now: .zero, lastClientWrite: nil), Self.context())
        #expect(Self.take(&engine) == ["resynced 0..<4096", "resync #3 e3 16384..<20480"])
        #expect(Self.marked(engine) == [0, 3, 4])
        engine.on(.resyncAck(sequence: 2, .resynced, now: .zero, lastClientWrite: nil), Self.context())
        engine.on(.resyncAck(sequence: 3, .resynced, now: .zero, lastClientWrite: nil), Self.context())
        // The cursor goes round once more for the region marked again.
        #expect(
            Self.take(&engine) == [
                "resynced 12288..<16384", "resync #4 e3 0..<4096", "resynced 16384..<20480",
            ])
        engine.on(.resyncAck(sequence: 4, .resynced, now: .zero, lastClientWrite: nil), Self.context())
        // The blocks may be only in the peer's page cache: it is asked to flush.
        #expect(Self.take(&engine) == ["resynced 0..<4096", "resync finished 16384/16384", "send flush #5"])
        #expect(engine.unflushedOnPeerRanges.count == 4)
        engine.on(.ack(sequence: 5, .flushed), Self.context())
        #expect(engine.unflushedOnPeerRanges.isEmpty)
        #expect(Self.marked(engine).isEmpty)
        #expect(engine.resyncSource == nil)
    }

    @Test("what the peer wrote and had not flushed is marked when it returns without its page cache")
    func peerLostCache() {
        var engine = Self.engine(.c)
        engine.on(.written(IORequest(1), offset: 8192, length: 4096, flags: 0), Self.context())
        engine.on(.written(IORequest(2), offset: 16384, length: 4096, flags: PeerWriteFlags.fua), Self.context())
        engine.on(.ack(sequence: 1, .written), Self.context())
        engine.on(.ack(sequence: 2, .written), Self.context())
        engine.on(.synced(.pending(2), failure: nil), Self.context())
        _ = Self.take(&engine)
        engine.on(.disconnected, Self.context(linked: false))
        #expect(Self.marked(engine).isEmpty, "a write the peer acknowledged is not marked when the link breaks")
        engine.on(.peerReturned(lostCache: true), Self.context(linked: true))
        // The FUA write was durable there; the other may be gone.
        #expect(Self.marked(engine) == [2])
        #expect(Self.take(&engine).contains("persist bitmap, then report"))
    }

    @Test("a refused resync block stays marked and the resync waits before it tries again")
    func resyncRefused() {
        var engine = Self.engine(.c)
        engine.on(.markOutOfSync(offset: 0, length: 4096), Self.context())
        let pacer = ResyncPacer(rate: nil, minimumRate: nil, now: .zero)
        engine.on(.startResyncSource(full: false, peerBitmap: nil, pacer: pacer), Self.context())
        engine.on(.pump(now: .zero, lastClientWrite: nil), Self.context())
        _ = Self.take(&engine)
        engine.on(.resyncAck(sequence: 1, .failed, now: .zero, lastClientWrite: nil), Self.context())
        let directives = Self.take(&engine)
        #expect(directives.first?.hasPrefix("resync waits: the peer could not write the block at offset 0") == true)
        #expect(directives.dropFirst().first?.hasPrefix("wake after") == true)
        #expect(Self.marked(engine) == [0])
        engine.on(.wake(now: .seconds(61), lastClientWrite: nil), Self.context())
        #expect(Self.take(&engine) == ["resync #2 e3 0..<4096"])
    }

    @Test("a resync target writes the blocks, marks one it could not store, and ends only as the target")
    func resyncTarget() {
        var engine = Self.engine(.c)
        var target = Self.context(.secondary)
        target.connection = .syncTarget
        engine.on(.resyncBlock(sequence: 4), target)
        #expect(Self.take(&engine) == ["apply resync block #4"])
        engine.on(.resyncBlockApplied(sequence: 4, failed: nil), target)
        #expect(Self.take(&engine) == ["ack #4 resynced"])
        engine.on(.resyncBlock(sequence: 5), target)
        engine.on(.resyncBlockApplied(sequence: 5, failed: 8192..<12288), target)
        #expect(Self.take(&engine) == ["apply resync block #5", "ack #5 failed"])
        #expect(Self.marked(engine) == [2])
        // A connected secondary takes blocks too: its primary catches it up.
        engine.on(.resyncBlock(sequence: 6), Self.context(.secondary))
        #expect(Self.take(&engine) == ["apply resync block #6"])
        // A copy that stands alone (a split brain left for an administrator) or serves as primary
        // keeps its data.
        var alone = Self.context(.secondary)
        alone.connection = .standAlone
        engine.on(.resyncBlock(sequence: 7), alone)
        engine.on(.resyncBlock(sequence: 8), Self.context(.primary))
        #expect(Self.take(&engine) == ["ack #7 refused", "ack #8 refused"])
        // The end counts only for the target, and clears what it marked.
        engine.on(.resyncDone, Self.context(.secondary))
        #expect(Self.take(&engine) == ["resync-done from the peer while not a resync target: ignored"])
        #expect(Self.marked(engine) == [2])
        engine.on(.resyncDone, target)
        #expect(Self.take(&engine) == ["resync of this copy finished"])
        #expect(Self.marked(engine).isEmpty)
    }

    @Test("a verify compares every region through the window, marks what differs, and resyncs it when idle")
    func verify() {
        // 4 regions of 4 KiB: a 16 KiB volume.
        var engine = ReplicationEngine(
            replicationProtocol: .c, bitmap: WriteIntentBitmap(volumeBytes: 16384, regionBytes: 4096), resyncWindow: 2)
        #expect(engine.refusalToVerify(Self.context(.secondary), peerRole: .primary, volume: "v") != nil)
        #expect(engine.refusalToVerify(Self.context(linked: false), peerRole: nil, volume: "v") != nil)
        #expect(engine.refusalToVerify(Self.context(), peerRole: .secondary, volume: "v") == nil)
        engine.on(.startVerify, Self.context())
        #expect(Self.take(&engine) == ["verify #1 0..<4096", "verify #2 4096..<8192"])
        #expect(
            engine.refusalToVerify(Self.context(), peerRole: nil, volume: "v") == "a verify of v is already running")
        engine.on(.verifyReply(sequence: 2, equal: false), Self.context())
        engine.on(.verifyReply(sequence: 1, equal: true), Self.context())
        #expect(Self.take(&engine) == ["verify #3 8192..<12288", "verify #4 12288..<16384"])
        // An answer nobody asked for changes nothing.
        engine.on(.verifyReply(sequence: 99, equal: false), Self.context())
        engine.on(.verifyReply(sequence: 4, equal: true), Self.context())
        engine.on(.verifyReply(sequence: 3, equal: false), Self.context())
        #expect(Self.take(&engine) == ["verify finished 4/4 differ [1, 2]", "resync the differences"])
        #expect(Self.marked(engine) == [1, 2])
        #expect(engine.verify == nil)
    }

    @Test("a verify the link interrupts keeps what it found marked for the next resync")
    func verifyInterrupted() {
        var engine = ReplicationEngine(
            replicationProtocol: .c, bitmap: WriteIntentBitmap(volumeBytes: 16384, regionBytes: 4096), resyncWindow: 2)
        engine.on(.startVerify, Self.context())
        engine.on(.verifyReply(sequence: 1, equal: false), Self.context())
        _ = Self.take(&engine)
        engine.on(.disconnected, Self.context(linked: false))
        #expect(
            Self.take(&engine) == ["verify stopped 1/4 differ [0]", "persist bitmap, then report", "new generation"])
        #expect(Self.marked(engine) == [0])
        engine.on(.startVerify, Self.context())
        engine.on(.stopVerify, Self.context())
        #expect(Self.take(&engine) == ["verify #4 0..<4096", "verify #5 4096..<8192", "verify stopped 0/4 differ []"])
    }
}
