import Testing

@testable import TandemCore

@Suite("Replication engine: the write and acknowledgement rules")
struct ReplicationEngineTests {
    static func context(
        _ role: VolumeRole = .primary, linked: Bool = true, marked: Int = 0
    ) -> ReplicationEngine.Context {
        ReplicationEngine.Context(
            role: role, epoch: 3, connection: linked ? .connected : .connecting, linked: linked, replicating: linked,
            markedRegions: marked)
    }

    /// The directives an input left, in a short readable form; empties `ready`.
    static func take(_ engine: inout ReplicationEngine) -> [String] {
        defer { engine.ready.removeAll() }
        return engine.ready.map { directive in
            switch directive {
            case .sendWrite(let request, let sequence, let epoch, let offset, let length, let flags):
                return "send \(request) #\(sequence) e\(epoch) \(offset)+\(length) f\(flags)"
            case .sendFlush(let sequence): return "send flush #\(sequence)"
            case .sendAck(let sequence, let kind): return "ack #\(sequence) \(kind)"
            case .mark(let offset, let length): return "mark \(offset)+\(length)"
            case .endActivity(let offset, let length): return "end \(offset)+\(length)"
            case .applyPeerWrite(let sequence): return "apply #\(sequence)"
            case .sync(let sync): return "sync \(sync)"
            case .beginIndependentChanges: return "new generation"
            case .persistBitmap(let wait): return "persist bitmap\(wait ? " (completions wait)" : "")"
            case .complete(let request, let outcome):
                switch outcome {
                case .success: return "complete \(request)"
                case .failure: return "fail \(request)"
                case .noLongerPrimary: return "fail \(request) not primary"
                }
            case .peerRefused(let sequence, let failed): return "refused #\(sequence)\(failed ? " failed" : "")"
            case .catchUp: return "catch up"
            }
        }
    }

    @Test("protocol C completes a write only when the peer wrote it")
    func protocolC() {
        var engine = ReplicationEngine(replicationProtocol: .c)
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
        var engine = ReplicationEngine(replicationProtocol: .b)
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
        var engine = ReplicationEngine(replicationProtocol: .a, asyncWindowBytes: 8192)
        engine.on(.written(IORequest(1), offset: 0, length: 8192, flags: 0), Self.context())
        #expect(Self.take(&engine) == ["send r1 #1 e3 0+8192 f0", "complete r1"])
        engine.on(.written(IORequest(2), offset: 8192, length: 4096, flags: 0), Self.context())
        #expect(Self.take(&engine) == ["mark 8192+4096", "end 8192+4096", "complete r2"])
        // The window drains: the marked region is resynced while connected.
        engine.on(.ack(sequence: 1, .written), Self.context(marked: 1))
        #expect(Self.take(&engine) == ["end 0+8192", "catch up"])
    }

    @Test("a write the peer could not store is marked durably and starts a new generation before it completes")
    func failedAck() {
        var engine = ReplicationEngine(replicationProtocol: .c)
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context())
        _ = Self.take(&engine)
        engine.on(.ack(sequence: 1, .failed), Self.context())
        #expect(
            Self.take(&engine) == [
                "mark 0+4096", "persist bitmap (completions wait)", "new generation", "refused #1 failed",
                "complete r1", "end 0+4096", "catch up",
            ])
    }

    @Test("a refusal marks but starts no generation: the refusing peer's data is the newer")
    func refusedAck() {
        var engine = ReplicationEngine(replicationProtocol: .c)
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context())
        _ = Self.take(&engine)
        engine.on(.ack(sequence: 1, .refused), Self.context())
        #expect(!Self.take(&engine).contains("new generation"))
    }

    @Test("a lost link marks what is in flight, completes it on this copy, and holds it while the peer may take over")
    func disconnectHolds() {
        var engine = ReplicationEngine(replicationProtocol: .c)
        engine.on(.completesWithoutPeer(false), Self.context())
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context())
        _ = Self.take(&engine)
        engine.on(.disconnected, Self.context(linked: false))
        #expect(Self.take(&engine) == ["mark 0+4096", "end 0+4096", "persist bitmap"])
        #expect(engine.held == [IORequest(1)])
        // Writes while apart are marked and held too.
        engine.on(.written(IORequest(2), offset: 8192, length: 4096, flags: 0), Self.context(linked: false))
        #expect(Self.take(&engine) == ["mark 8192+4096", "end 8192+4096"])
        // A voter recorded the peer outdated: a new generation, durably, then the held writes complete.
        engine.on(.completesWithoutPeer(true), Self.context(linked: false))
        #expect(Self.take(&engine) == ["new generation", "complete r1", "complete r2"])
    }

    @Test("a node that stops being primary fails its held writes")
    func heldFail() {
        var engine = ReplicationEngine(replicationProtocol: .c)
        engine.on(.completesWithoutPeer(false), Self.context(linked: false))
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context(linked: false))
        _ = Self.take(&engine)
        engine.on(.releaseHeld(failing: true), Self.context(.secondary, linked: false))
        #expect(Self.take(&engine) == ["fail r1 not primary"])
    }

    @Test("a secondary refuses writes from an older epoch and acknowledges the others after writing them")
    func secondary() {
        var engine = ReplicationEngine(replicationProtocol: .c)
        engine.on(.peerWrite(sequence: 5, epoch: 2, fenceEpoch: 3, flags: 0), Self.context(.secondary))
        #expect(Self.take(&engine) == ["ack #5 refused"])
        engine.on(.peerWrite(sequence: 6, epoch: 3, fenceEpoch: 3, flags: PeerWriteFlags.fua), Self.context(.secondary))
        #expect(Self.take(&engine) == ["apply #6"])
        engine.on(.peerWriteApplied(sequence: 6, flags: PeerWriteFlags.fua, failed: nil), Self.context(.secondary))
        #expect(Self.take(&engine) == ["sync forPeer(6, TandemCore.PeerAckKind.written)"])
        engine.on(.peerWriteApplied(sequence: 7, flags: 0, failed: 0..<512), Self.context(.secondary))
        #expect(Self.take(&engine) == ["mark 0+512", "ack #7 failed"])
        // A primary takes no one's writes.
        engine.on(.peerWrite(sequence: 8, epoch: 9, fenceEpoch: 3, flags: 0), Self.context(.primary))
        #expect(Self.take(&engine) == ["ack #8 refused"])
    }

    @Test("a flush goes to the peer under B and C, not under A, and a failed local sync fails it at once")
    func flushes() {
        var engine = ReplicationEngine(replicationProtocol: .c)
        engine.on(.flush(IORequest(1)), Self.context())
        #expect(Self.take(&engine) == ["send flush #1", "sync pending(1)"])
        struct Broken: Error {}
        engine.on(.synced(.pending(1), failure: Broken()), Self.context())
        #expect(Self.take(&engine) == ["fail r1"])
        engine.on(.ack(sequence: 1, .flushed), Self.context())
        #expect(engine.unacknowledged == 0)
        var async = ReplicationEngine(replicationProtocol: .a)
        async.on(.flush(IORequest(2)), Self.context())
        #expect(Self.take(&async) == ["sync alone(r2, holdable: false)"])
    }

    @Test("a lone node marks nothing and sends nothing")
    func lone() {
        var engine = ReplicationEngine(replicationProtocol: .c, peerConfigured: false)
        engine.on(.written(IORequest(1), offset: 0, length: 4096, flags: 0), Self.context(linked: false))
        #expect(Self.take(&engine) == ["complete r1"])
    }
}
