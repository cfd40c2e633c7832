/// What the peer's acknowledgement of a replicated frame says.
public enum PeerAckKind: UInt8, Sendable {
    /// The data arrived (protocol B).
    case received = 1
    /// The data is written (protocol C), and durable if the write had FUA.
    case written = 2
    /// A flush completed.
    case flushed = 3
    /// A resync block is written.
    case resynced = 4
    /// The write was refused: it came from an older epoch, or this node is primary itself. The
    /// sender marks it out of sync.
    case refused = 5
    /// The write could not be stored here (an I/O error, no space). The sender marks it out of
    /// sync and, holding data this copy lacks, starts a new data generation.
    case failed = 6
}

/// Bits of a replicated write's flags.
public enum PeerWriteFlags {
    /// Durable before the written acknowledgement.
    public static let fua: UInt8 = 1
    /// The payload is an 8-byte length: write that many zeroes.
    public static let zeroes: UInt8 = 2
}

/// A client request the shell keeps (its completion, and its payload while it is being sent).
public struct IORequest: Hashable, Sendable, CustomStringConvertible {
    public var id: UInt64
    public init(_ id: UInt64) { self.id = id }
    public var description: String { "r\(id)" }
}

/// The replication rules of one volume on one node, without I/O: which write goes to the peer and
/// which is marked instead, when a client's request may complete, what a lost peer or a refused
/// write changes, what this node answers to the peer's writes.
///
/// The shell (`ReplicatedVolume`) feeds it every input with `on(_:_:)` under the volume's lock and
/// carries out the directives it leaves in `ready`, in order, each with the duty its case names;
/// then it empties `ready` (keeping its capacity, so that a write allocates nothing here). It feeds
/// back what the directives produced (a local sync's end, the peer's acknowledgements). The facts
/// the shell still owns (role, epoch, the link's state) come with each input as a `Context`.
///
/// Client requests and their payloads are named by `IORequest`s; the shell keeps the completions
/// and the payload bytes. Replicated frames are numbered by sequence numbers taken here.
public struct ReplicationEngine: Sendable {
    /// The facts of the volume's shell that the rules read.
    public struct Context: Sendable, Equatable {
        public var role: VolumeRole
        public var epoch: UInt64
        public var connection: ConnectionState
        /// A peer link is up (whatever the connection's state).
        public var linked: Bool
        /// A peer link is up and the peer takes writes (connected, or this node is its resync source).
        public var replicating: Bool
        /// A resync or a verify runs.
        public var syncing: Bool
        /// This node's lease has not ended: it may still present its copy as changed.
        public var leaseValid: Bool

        public init(
            role: VolumeRole, epoch: UInt64, connection: ConnectionState, linked: Bool, replicating: Bool,
            syncing: Bool = false, leaseValid: Bool = true
        ) {
            self.role = role
            self.epoch = epoch
            self.connection = connection
            self.linked = linked
            self.replicating = replicating
            self.syncing = syncing
            self.leaseValid = leaseValid
        }
    }

    /// Everything that happens to the volume's rules.
    public enum Input: Sendable {
        /// A client write (or zeroes/trim, `flags` saying which) is applied to the local copy.
        case written(IORequest, offset: UInt64, length: UInt64, flags: UInt8)
        /// A client asks for every completed write to be durable.
        case flush(IORequest)
        /// A `sync` directive ended; `failure` is why it failed.
        case synced(Sync, failure: (any Error & Sendable)?)
        /// The peer acknowledged frame `sequence`.
        case ack(sequence: UInt64, PeerAckKind)
        /// The link to the peer is gone.
        case disconnected
        /// Whether writes the peer does not have may complete (membership decides).
        case completesWithoutPeer(Bool)
        /// Complete the held writes (the peer has them now), or fail them (this node is no longer primary).
        case releaseHeld(failing: Bool)
        /// The peer sent write `sequence` from its epoch `epoch`; `fenceEpoch` is the newest epoch
        /// this node knows.
        case peerWrite(sequence: UInt64, epoch: UInt64, fenceEpoch: UInt64, flags: UInt8)
        /// The local write of the peer's write `sequence` ended; `failed` is the part of the
        /// volume it should have changed when it failed (empty when that is unknown).
        case peerWriteApplied(sequence: UInt64, flags: UInt8, failed: Range<UInt64>?)
        /// The peer asks for a flush, numbered `sequence`.
        case peerFlush(sequence: UInt64)
        /// Regions are out of sync for a reason the rules do not see (a verify found them differ,
        /// a resync block could not be stored here).
        case markOutOfSync(offset: UInt64, length: UInt64)
        /// This node resyncs the peer: every region (`full`), or the marked ones and those the
        /// peer's bitmap marks, at the pace `pacer` allows.
        case startResyncSource(full: Bool, peerBitmap: WriteIntentBitmap?, pacer: ResyncPacer)
        /// Send resync blocks while the window and the pacer allow; `lastClientWrite` is when a
        /// client last wrote (the resync gives way to clients).
        case pump(now: Duration, lastClientWrite: Duration?)
        /// The resync as source stops before its end (its blocks cannot be read here): the regions
        /// it did not bring stay marked.
        case stopResyncSource
        /// A `wakeAfter` timer fired.
        case wake(now: Duration, lastClientWrite: Duration?)
        /// The peer acknowledged resync block `sequence` (see `awaitsResyncAck`).
        case resyncAck(sequence: UInt64, PeerAckKind, now: Duration, lastClientWrite: Duration?)
        /// An online verify led from here starts: every region's digest is compared with the
        /// peer's (see `refusalToVerify` first).
        case startVerify
        /// The peer compared the digest of verify request `sequence`; `equal: false` also when
        /// this node could not read the region.
        case verifyReply(sequence: UInt64, equal: Bool)
        /// An administrator stops the verify.
        case stopVerify
        /// The peer sent resync block `sequence`.
        case resyncBlock(sequence: UInt64)
        /// The local write of resync block `sequence` ended; `failed` is the part of the volume it
        /// should have changed when it failed.
        case resyncBlockApplied(sequence: UInt64, failed: Range<UInt64>?)
        /// The peer says its resync of this copy ended.
        case resyncDone
        /// The link to the peer is up again; `lostCache`: the peer's host lost its page cache
        /// since the link was last up (a power loss, a reboot), so what it had not flushed is gone.
        case peerReturned(lostCache: Bool)
    }

    /// A local `fdatasync` and what it is for.
    public enum Sync: Sendable, Equatable {
        /// For pending frame `sequence` (a FUA write or a flush the peer also does).
        case pending(UInt64)
        /// For a request the peer takes no part in; `holdable`: a write that must wait while
        /// writes the peer lacks may not complete.
        case alone(IORequest, holdable: Bool)
        /// For the peer's FUA write or flush `sequence`: acknowledge with `kind` when it succeeds.
        case forPeer(UInt64, PeerAckKind)
    }

    /// How a request ends.
    public enum Outcome: Sendable {
        case success
        /// A local write or sync failed.
        case failure(any Error & Sendable)
        /// This node stopped being primary before the request could complete.
        case noLongerPrimary
    }

    /// What the shell must do, in order. Cases marked "under the lock" are carried out before the
    /// volume's lock is released (they change what the next input sees, or fix the peer's order);
    /// the others after, in the order given.
    public enum Directive: Sendable {
        /// Under the lock: queue the client write `request`'s bytes for the peer as frame
        /// `sequence` of `epoch`, after every frame queued before.
        case sendWrite(IORequest, sequence: UInt64, epoch: UInt64, offset: UInt64, length: UInt64, flags: UInt8)
        /// Under the lock: queue a flush request for the peer.
        case sendFlush(sequence: UInt64)
        /// Under the lock: queue an acknowledgement of the peer's frame.
        case sendAck(sequence: UInt64, PeerAckKind)
        /// Under the lock: the write is no longer tracked; end its activity-log entry.
        case endActivity(offset: UInt64, length: UInt64)
        /// Write the peer's frame `sequence` to the local copy, then feed `peerWriteApplied`.
        case applyPeerWrite(sequence: UInt64)
        /// Under the lock: read `range` of the local copy and send its digest to the peer as verify
        /// request `sequence` (read under the lock, so requests leave in the order they were
        /// numbered); if it cannot be read, feed `verifyReply(sequence, equal: false)` after the lock.
        case sendVerifyRequest(sequence: UInt64, range: Range<UInt64>)
        /// The verify ended (`stopped`: before every region was compared). The regions that
        /// differ are marked already; the shell records and reports the result.
        case verifyFinished(VerifyResult)
        /// Resync the regions the verify found different now: the link is idle.
        case resyncDifferences
        /// Write the peer's resync block `sequence` to the local copy, then feed `resyncBlockApplied`.
        case applyResyncBlock(sequence: UInt64)
        /// Under the lock: the resync of this copy ended and nothing here differs from the peer:
        /// the copy takes the source's generations and is up to date and connected. Then, after
        /// the lock, it is made durable and the bitmap and the metadata are stored, before the
        /// peer hears this copy's new state.
        case resyncTargetFinished
        /// Make the local copy durable off the caller's thread, then feed `synced`.
        case sync(Sync)
        /// This copy now holds writes the peer lacks: start a new current generation (unless one
        /// started since the last resync) and store the metadata. Done before any `complete` after
        /// it; if the store fails, those completions fail with its error instead of succeeding.
        case beginIndependentChanges
        /// Store the bitmap, then what `then` says.
        case persistBitmap(then: AfterBitmapStore)
        /// Complete the client's request.
        case complete(IORequest, Outcome)
        /// The peer refused (`failed`: could not store) frame `sequence`; its region is marked.
        case peerRefused(sequence: UInt64, failed: Bool)
        /// Regions were marked while connected and nothing is in flight: resync them now.
        case catchUp
        /// Under the lock: queue resync block `sequence` for the peer, the bytes of `range` read
        /// from the local copy when it leaves (a client write to the range is then either in them
        /// or queued after them).
        case sendResyncBlock(sequence: UInt64, epoch: UInt64, range: Range<UInt64>)
        /// Feed `wake` after this long (the pacer holds the resync and nothing in flight wakes it).
        case wakeAfter(Duration)
        /// The resync block for `range` reached the peer and its region is clear.
        case regionResynced(Range<UInt64>)
        /// The resync stalls (the peer could not store a block) or goes on again.
        case resyncNews(String)
        /// Every marked region reached the peer: the resync as source ends (the shell records the
        /// generations and tells the peer). Its counts at the end.
        case resyncFinished(totalBytes: UInt64, doneBytes: UInt64)
    }

    /// What follows a bitmap store.
    public enum AfterBitmapStore: Sendable, Equatable {
        /// A failure is only reported: the activity log still covers the regions.
        case report
        /// The completions after it wait for it and fail with its error if it fails.
        case completionsWait
        /// The resync starts only once it is stored: feed `pump` then.
        case pumpResync
    }

    /// The resync this node sends, while it runs.
    public struct ResyncSource: Sendable {
        /// Bytes to move: the marked bytes when it started, and those marked since.
        public internal(set) var totalBytes: UInt64
        public internal(set) var doneBytes: UInt64 = 0
        /// Why it is not moving, while it waits after the peer refused a block.
        public internal(set) var stalled: String?
        var nextRegion = 0
        var inFlight: [UInt64: Int] = [:]
        /// Regions in flight that a later write marked again (protocol A with a full window):
        /// their acknowledgement must not clear them, for the peer does not have that write.
        var markedAgain: Set<Int> = []
        var clearedSincePersist = 0
        /// The token bucket, the clients' precedence and the back-off after refusals.
        var pacer: ResyncPacer
        var wakeScheduled = false
    }

    /// An online verify this node leads, while it runs.
    public struct VerifyRun: Sendable {
        public let totalRegions: Int
        public internal(set) var checkedRegions = 0
        /// Regions whose digests differed (or could not be read here), in the order found.
        public internal(set) var outOfSyncRegions: [Int] = []
        var nextRegion = 0
        var inFlight: [UInt64: Int] = [:]
    }

    /// How a verify ended.
    public struct VerifyResult: Sendable, Equatable {
        public var totalRegions: Int
        public var checkedRegions: Int
        /// In ascending order.
        public var outOfSyncRegions: [Int]
        /// Before every region was compared (an administrator, or a lost link).
        public var stopped: Bool
    }

    struct Pending {
        var offset: UInt64
        var length: UInt64
        var request: IORequest?
        /// The acknowledgement that lets the client's request complete.
        var completesOn: PeerAckKind
        var localDone: Bool
        var peerDone: Bool
        /// The peer's final answer (written, flushed or refused) arrived, or the peer is gone:
        /// once the client has its answer too, the entry can go.
        var acknowledged = false
        /// The peer went away, or refused, before it had the write: it completes on this copy alone.
        var alone = false
        /// The peer writes it durably before it answers (FUA).
        var durableOnPeer = false
    }

    /// Bytes the peer wrote (a write it acknowledged, a resync block) that may still be only in
    /// its page cache: a power loss there would lose them. Each is kept until a flush sent after
    /// it is acknowledged, across a lost link, and marked if the peer returns without its cache.
    struct UnflushedOnPeer {
        var sequence: UInt64
        var offset: UInt64
        var length: UInt64
    }

    /// Bugs the simulator plants on purpose, to show that its checker finds them. The agent never
    /// sets any.
    package struct Defects: OptionSet, Sendable {
        package let rawValue: Int
        package init(rawValue: Int) { self.rawValue = rawValue }
        /// Protocol C completes a write as soon as it is sent, before the peer wrote it.
        package static let completesBeforePeerWrote = Defects(rawValue: 1)
        /// A lost link leaves the writes in flight unmarked.
        package static let forgetsInFlightOnDisconnect = Defects(rawValue: 2)
        /// A resync clears a region's bit when its block is sent, not when the peer wrote it.
        package static let clearsBitWhenSent = Defects(rawValue: 4)
    }

    package var defects: Defects = []

    public let replicationProtocol: Configuration.ReplicationProtocol
    /// Resync blocks in flight at once: the resync's share of the link.
    public let resyncWindow: Int
    /// Regions that may differ from the peer's copy.
    public private(set) var bitmap: WriteIntentBitmap
    /// The resync this node sends, while one runs.
    public private(set) var resyncSource: ResyncSource?
    /// The online verify this node leads, while one runs.
    public private(set) var verify: VerifyRun?
    /// Whether a peer is configured: a lone node replicates nothing and marks nothing.
    public let peerConfigured: Bool
    /// Bytes protocol A may have unacknowledged before it stops sending and marks instead.
    public let asyncWindowBytes: UInt64

    /// What the last inputs decided, for the shell to carry out and empty.
    public var ready: [Directive] = []
    var pending: [UInt64: Pending] = [:]
    public private(set) var nextSequence: UInt64 = 1
    public private(set) var asyncBytesInFlight: UInt64 = 0
    /// Writes and resync blocks the peer may hold only in its page cache before the engine asks it
    /// to flush on its own (a client's flush does so too): bounds what a power loss there makes
    /// resync, at one `fdatasync` on the peer per so many writes. `nil`: nothing is tracked, and
    /// the peer is never asked to flush on the engine's own account. The agent passes `nil` until
    /// the peer link tells it when a peer lost its cache (a boot identity), for until then the
    /// flushes would cost the peer's disk and buy nothing; the simulator tracks.
    public let peerFlushEvery: Int?
    var unflushedOnPeer: [UnflushedOnPeer] = []
    /// The flush the engine sent on its own, until the peer answers it.
    var barrier: UInt64?
    /// Whether writes the peer does not have may complete.
    public private(set) var completesWithoutPeer = true
    /// Completions of writes the peer does not have, held until they may complete.
    public private(set) var held: [IORequest] = []

    public init(
        replicationProtocol: Configuration.ReplicationProtocol, bitmap: WriteIntentBitmap,
        peerConfigured: Bool = true, asyncWindowBytes: UInt64 = 64 << 20, resyncWindow: Int = 16,
        peerFlushEvery: Int? = nil
    ) {
        self.peerFlushEvery = peerFlushEvery
        self.replicationProtocol = replicationProtocol
        self.bitmap = bitmap
        self.resyncWindow = resyncWindow
        self.peerConfigured = peerConfigured
        self.asyncWindowBytes = asyncWindowBytes
        ready.reserveCapacity(8)
        if let peerFlushEvery { unflushedOnPeer.reserveCapacity(peerFlushEvery + resyncWindow + 64) }
    }

    /// Client requests in flight: sent to the peer or syncing, and not yet answered.
    public var requestsInFlight: Int { pending.values.count { $0.request != nil } }

    /// Frames sent and not finally acknowledged (requests whose peer part is still open).
    public var unacknowledged: Int { pending.count }

    /// What the peer wrote but may hold only in its page cache (marked if it returns without it).
    public var unflushedOnPeerRanges: [Range<UInt64>] {
        unflushedOnPeer.map { $0.offset..<($0.offset + $0.length) }
    }

    /// How a secondary answers the peer's write once it is in the local copy.
    public enum PeerWriteAnswer: Sendable, Equatable {
        case ack(PeerAckKind)
        /// Make the copy durable first (FUA), then acknowledge.
        case syncThenAck(PeerAckKind)
    }

    /// What a secondary answers once the peer's write went into its copy. It needs none of the
    /// engine's state: the shell answers a write that went through without a second turn of the
    /// volume's lock (one that failed is the `peerWriteApplied` input, for it marks).
    public static func answer(toWritten flags: UInt8) -> PeerWriteAnswer {
        flags & PeerWriteFlags.fua != 0 ? .syncThenAck(.written) : .ack(.written)
    }

    /// Why a verify may not start now; `nil` when it may. `peerRole` is the peer's role as last
    /// heard. The copy it runs from is trusted: the regions that differ are resynced from it.
    public func refusalToVerify(_ context: Context, peerRole: VolumeRole?, volume: String) -> String? {
        guard context.linked, context.connection == .connected else {
            return "\(volume) is \(context.connection.rawValue); verify needs a connected, idle peer"
        }
        guard verify == nil else { return "a verify of \(volume) is already running" }
        if context.role == .secondary, peerRole == .primary {
            return "the peer is primary for \(volume); start the verify there"
        }
        return nil
    }

    /// Whether `sequence` is a resync block whose acknowledgement is awaited.
    public func awaitsResyncAck(_ sequence: UInt64) -> Bool { resyncSource?.inFlight[sequence] != nil }

    /// A sequence number for a frame the shell sends on its own (a resync block, a verify request).
    public mutating func takeSequence() -> UInt64 {
        defer { nextSequence += 1 }
        return nextSequence
    }

    /// Decides what `input` changes; the directives land in `ready`.
    public mutating func on(_ input: Input, _ context: Context) {
        switch input {
        case .written(let request, let offset, let length, let flags):
            onWritten(request, offset: offset, length: length, flags: flags, context)
        case .flush(let request):
            guard context.replicating, replicationProtocol != .a else {
                return ready.append(.sync(.alone(request, holdable: false)))
            }
            let sequence = takeSequence()
            pending[sequence] = Pending(
                offset: 0, length: 0, request: request, completesOn: .flushed, localDone: false, peerDone: false)
            ready.append(.sendFlush(sequence: sequence))
            ready.append(.sync(.pending(sequence)))
        case .synced(let sync, let failure):
            onSynced(sync, failure: failure, context)
        case .ack(let sequence, let kind):
            onAck(sequence: sequence, kind, context)
        case .disconnected:
            onDisconnected(context)
        case .completesWithoutPeer(let allowed):
            completesWithoutPeer = allowed
            guard allowed else { return }
            // A primary apart from its peer starts a new generation, durably, before the first write
            // completes without the peer: the next connection then knows this copy changed.
            if context.role == .primary, !context.linked { ready.append(.beginIndependentChanges) }
            releaseHeld(.success)
        case .releaseHeld(let failing):
            releaseHeld(failing ? .noLongerPrimary : .success)
        case .peerWrite(let sequence, let epoch, let fenceEpoch, let flags):
            // A primary takes no one's writes, and a write from an older epoch than one this node
            // has seen comes from a node whose lease ended.
            if context.role == .primary || epoch < fenceEpoch {
                return ready.append(.sendAck(sequence: sequence, .refused))
            }
            if replicationProtocol == .b, flags & PeerWriteFlags.fua == 0 {
                ready.append(.sendAck(sequence: sequence, .received))
            }
            ready.append(.applyPeerWrite(sequence: sequence))
        case .peerWriteApplied(let sequence, let flags, let failed):
            if let failed {
                // This copy lacks the write now: marked here too, it no longer counts as in sync with
                // the primary (which marks it as well) until a resync brings the region.
                if !failed.isEmpty { mark(offset: failed.lowerBound, length: UInt64(failed.count)) }
                ready.append(.sendAck(sequence: sequence, .failed))
            } else {
                switch Self.answer(toWritten: flags) {
                case .ack(let kind): ready.append(.sendAck(sequence: sequence, kind))
                case .syncThenAck(let kind): ready.append(.sync(.forPeer(sequence, kind)))
                }
            }
        case .peerFlush(let sequence):
            ready.append(.sync(.forPeer(sequence, .flushed)))
        case .markOutOfSync(let offset, let length):
            mark(offset: offset, length: length)
        case .startResyncSource(let full, let peerBitmap, let pacer):
            if full { bitmap.markAll() }
            if let peerBitmap { bitmap.formUnion(peerBitmap) }
            resyncSource = ResyncSource(totalBytes: bitmap.dirtyBytes, pacer: pacer)
            ready.append(.persistBitmap(then: .pumpResync))
        case .pump(let now, let lastClientWrite):
            pump(now: now, lastClientWrite: lastClientWrite, context)
        case .stopResyncSource:
            resyncSource = nil
        case .wake(let now, let lastClientWrite):
            resyncSource?.wakeScheduled = false
            pump(now: now, lastClientWrite: lastClientWrite, context)
        case .resyncAck(let sequence, let kind, let now, let lastClientWrite):
            onResyncAck(sequence: sequence, kind, now: now)
            pump(now: now, lastClientWrite: lastClientWrite, context)
        case .startVerify:
            guard verify == nil else { return }
            verify = VerifyRun(totalRegions: bitmap.regionCount)
            pumpVerify(context)
        case .verifyReply(let sequence, let equal):
            guard var run = verify, let region = run.inFlight.removeValue(forKey: sequence) else { return }
            run.checkedRegions += 1
            if !equal { run.outOfSyncRegions.append(region) }
            verify = run
            pumpVerify(context)
        case .stopVerify:
            endVerify(stopped: true, context)
        case .resyncBlock(let sequence):
            // A block lands only on this copy while it is the resync's target, or on a connected
            // secondary its primary catches up. A copy that decided otherwise on connect (a split
            // brain left for an administrator, configs that differ) keeps its data.
            let takesBlocks =
                context.connection == .syncTarget || (context.connection == .connected && context.role == .secondary)
            guard takesBlocks else {
                return ready.append(.sendAck(sequence: sequence, .refused))
            }
            ready.append(.applyResyncBlock(sequence: sequence))
        case .resyncBlockApplied(let sequence, let failed):
            if let failed {
                // Marked here too: this copy lacks the source's data for the region until a later
                // resync brings it.
                if !failed.isEmpty { mark(offset: failed.lowerBound, length: UInt64(failed.count)) }
                return ready.append(.sendAck(sequence: sequence, .failed))
            }
            ready.append(.sendAck(sequence: sequence, .resynced))
        case .resyncDone:
            guard context.connection == .syncTarget else {
                return ready.append(.resyncNews("resync-done from the peer while not a resync target: ignored"))
            }
            bitmap.clearAll()
            ready.append(.resyncTargetFinished)
        case .peerReturned(let lostCache):
            // A peer that kept its cache still holds what it had not flushed: it stays listed.
            guard lostCache, !unflushedOnPeer.isEmpty else { return }
            for unflushed in unflushedOnPeer { mark(offset: unflushed.offset, length: unflushed.length) }
            unflushedOnPeer.removeAll(keepingCapacity: true)
            ready.append(.persistBitmap(then: .report))
        }
    }

    // MARK: Online verify

    /// Sends digests of the next regions up to the window; ends the verify when every region was
    /// compared.
    private mutating func pumpVerify(_ context: Context) {
        guard var run = verify, context.linked else { return }
        while run.inFlight.count < resyncWindow, run.nextRegion < run.totalRegions {
            let region = run.nextRegion
            run.nextRegion += 1
            let sequence = takeSequence()
            run.inFlight[sequence] = region
            ready.append(.sendVerifyRequest(sequence: sequence, range: bitmap.range(ofRegion: region)))
        }
        verify = run
        if run.inFlight.isEmpty, run.nextRegion >= run.totalRegions { endVerify(stopped: false, context) }
    }

    /// Ends the verify: the regions that differ are marked and stored, and resynced at once when
    /// the link is idle (otherwise when it next connects, or with the next resync).
    private mutating func endVerify(stopped: Bool, _ context: Context, storesBitmap: Bool = true) {
        guard let run = verify else { return }
        verify = nil
        let found = run.outOfSyncRegions.sorted()
        ready.append(
            .verifyFinished(
                VerifyResult(
                    totalRegions: run.totalRegions, checkedRegions: run.checkedRegions, outOfSyncRegions: found,
                    stopped: stopped)))
        guard !found.isEmpty else { return }
        for region in found {
            let range = bitmap.range(ofRegion: region)
            mark(offset: range.lowerBound, length: range.upperBound - range.lowerBound)
        }
        let idle = context.linked && context.connection == .connected && resyncSource == nil
        // A resync from here stores the bitmap before it sends anything.
        if idle {
            ready.append(.resyncDifferences)
        } else if storesBitmap {
            ready.append(.persistBitmap(then: .report))
        }
    }

    // MARK: Resync as source

    /// Sends resync blocks up to the window, from a cursor that goes round once more when regions
    /// behind it were marked again; ends the resync when nothing is marked or in flight.
    private mutating func pump(now: Duration, lastClientWrite: Duration?, _ context: Context) {
        guard var resync = resyncSource, context.linked else { return }
        defer { if resyncSource != nil { resyncSource = resync } }
        switch resync.pacer.hold(now: now) {
        case .none:
            break
        case .waiting(let remaining):
            if !resync.wakeScheduled {
                resync.wakeScheduled = true
                ready.append(.wakeAfter(remaining))
            }
            return
        case .ended:
            // The refused regions are behind the cursor: start again from the first marked.
            resync.nextRegion = 0
        }
        var wrapped = false
        while resync.inFlight.count < resyncWindow {
            guard let region = bitmap.nextDirtyRegion(from: resync.nextRegion) else {
                // Regions behind the cursor were marked again (protocol A with a full window): go
                // round once more.
                guard !wrapped, resync.nextRegion > 0 else { break }
                wrapped = true
                resync.nextRegion = 0
                continue
            }
            if resync.inFlight.values.contains(region) {
                resync.nextRegion = region + 1
                continue
            }
            let range = bitmap.range(ofRegion: region)
            let grant = resync.pacer.take(
                range.upperBound - range.lowerBound, idle: resync.inFlight.isEmpty, lastClientWrite: lastClientWrite,
                now: now)
            if case .wait(let after) = grant {
                if let after, !resync.wakeScheduled {
                    resync.wakeScheduled = true
                    ready.append(.wakeAfter(after))
                }
                break
            }
            resync.nextRegion = region + 1
            let sequence = takeSequence()
            resync.inFlight[sequence] = region
            if defects.contains(.clearsBitWhenSent) { bitmap.clear(region: region) }
            ready.append(.sendResyncBlock(sequence: sequence, epoch: context.epoch, range: range))
        }
        guard resync.inFlight.isEmpty, bitmap.nextDirtyRegion(from: 0) == nil else { return }
        resyncSource = nil
        ready.append(.resyncFinished(totalBytes: resync.totalBytes, doneBytes: resync.doneBytes))
        // The blocks are in the peer's page cache: a flush after them lets them go from the list.
        askPeerToFlush()
    }

    /// The peer flushed: everything it acknowledged before flush `sequence` is durable there.
    private mutating func peerFlushed(_ sequence: UInt64) {
        unflushedOnPeer.removeAll { $0.sequence < sequence }
        if barrier == sequence { barrier = nil }
    }

    /// Asks the peer to flush once enough of what it wrote may be only in its cache.
    private mutating func askPeerToFlushIfDue() {
        guard let peerFlushEvery, unflushedOnPeer.count >= peerFlushEvery else { return }
        askPeerToFlush()
    }

    private mutating func askPeerToFlush() {
        guard barrier == nil, !unflushedOnPeer.isEmpty else { return }
        let sequence = takeSequence()
        barrier = sequence
        pending[sequence] = Pending(
            offset: 0, length: 0, request: nil, completesOn: .flushed, localDone: true, peerDone: false)
        ready.append(.sendFlush(sequence: sequence))
    }

    private mutating func onResyncAck(sequence: UInt64, _ kind: PeerAckKind, now: Duration) {
        guard var resync = resyncSource, let region = resync.inFlight.removeValue(forKey: sequence) else { return }
        defer { resyncSource = resync }
        let markedAgain = resync.markedAgain.remove(region) != nil
        let range = bitmap.range(ofRegion: region)
        guard kind == .resynced else {
            // The peer could not write it (its disk failed, or is full): the region stays marked,
            // and the resync waits before it tries again instead of sending the same blocks round
            // and round. Refusals of blocks already in flight add nothing.
            guard let pause = resync.pacer.refused(now: now) else { return }
            let reason =
                "the peer could not write the block at offset \(range.lowerBound) (see its log); next try in "
                + "\(pause.components.seconds) s"
            resync.stalled = reason
            ready.append(.resyncNews("resync waits: \(reason)"))
            return
        }
        if resync.pacer.accepted() {
            resync.stalled = nil
            ready.append(.resyncNews("resync goes on: the peer writes its blocks again"))
        }
        if !markedAgain { bitmap.clear(region: region) }
        // In the peer's page cache until its next flush.
        if peerFlushEvery != nil {
            unflushedOnPeer.append(
                UnflushedOnPeer(
                    sequence: sequence, offset: range.lowerBound, length: range.upperBound - range.lowerBound))
            askPeerToFlushIfDue()
        }
        resync.doneBytes += range.upperBound - range.lowerBound
        resync.clearedSincePersist += 1
        ready.append(.regionResynced(range))
        if resync.clearedSincePersist >= 256 {
            resync.clearedSincePersist = 0
            ready.append(.persistBitmap(then: .report))
        }
    }

    /// Marks bytes the peer will not get now. During a resync from here the marked bytes join the
    /// resync's total, and a region whose resync block is in flight stays marked after that
    /// block's acknowledgement.
    private mutating func mark(offset: UInt64, length: UInt64) {
        let before = bitmap.dirtyRegionCount
        bitmap.mark(offset: offset, length: length)
        guard var resync = resyncSource else { return }
        var added = UInt64(bitmap.dirtyRegionCount - before) * bitmap.regionBytes
        if length > 0, !resync.inFlight.isEmpty {
            let regions = Int(offset / bitmap.regionBytes)...Int((offset + length - 1) / bitmap.regionBytes)
            for region in Set(resync.inFlight.values) where regions.contains(region) {
                if resync.markedAgain.insert(region).inserted { added += bitmap.regionBytes }
            }
        }
        resync.totalBytes += added
        resyncSource = resync
    }

    private mutating func onWritten(
        _ request: IORequest, offset: UInt64, length: UInt64, flags: UInt8, _ context: Context
    ) {
        let fua = flags & PeerWriteFlags.fua != 0
        guard peerConfigured else {
            if fua { return ready.append(.sync(.alone(request, holdable: true))) }
            return completeAlone(request, .success, context)
        }
        let windowFull = replicationProtocol == .a && asyncBytesInFlight + length > asyncWindowBytes
        guard context.replicating, !windowFull else {
            // Not replicated: marked in memory; its extent is in the durable activity log, which
            // keeps it marked across a crash.
            mark(offset: offset, length: length)
            ready.append(.endActivity(offset: offset, length: length))
            if fua { return ready.append(.sync(.alone(request, holdable: true))) }
            return completeAlone(request, .success, context)
        }
        let sequence = takeSequence()
        let completesOn: PeerAckKind = replicationProtocol == .b && !fua ? .received : .written
        pending[sequence] = Pending(
            offset: offset, length: length, request: request, completesOn: completesOn, localDone: !fua,
            peerDone: replicationProtocol == .a || defects.contains(.completesBeforePeerWrote), durableOnPeer: fua)
        if replicationProtocol == .a { asyncBytesInFlight += length }
        ready.append(
            .sendWrite(request, sequence: sequence, epoch: context.epoch, offset: offset, length: length, flags: flags))
        if fua { ready.append(.sync(.pending(sequence))) } else { completeIfReady(sequence) }
    }

    private mutating func onSynced(_ sync: Sync, failure: (any Error & Sendable)?, _ context: Context) {
        switch sync {
        case .pending(let sequence):
            guard let failure else {
                pending[sequence]?.localDone = true
                return completeIfReady(sequence)
            }
            // The client hears the failure now; the entry stays until the peer's answer.
            if let request = pending[sequence]?.request {
                pending[sequence]?.request = nil
                ready.append(.complete(request, .failure(failure)))
            }
            pending[sequence]?.localDone = true
            if pending[sequence].map({ $0.acknowledged }) == true { retire(sequence) }
        case .alone(let request, let holdable):
            let outcome: Outcome = failure.map { .failure($0) } ?? .success
            if holdable { completeAlone(request, outcome, context) } else { ready.append(.complete(request, outcome)) }
        case .forPeer(let sequence, let kind):
            ready.append(.sendAck(sequence: sequence, failure == nil ? kind : .failed))
        }
    }

    private mutating func onAck(sequence: UInt64, _ kind: PeerAckKind, _ context: Context) {
        guard var entry = pending[sequence] else { return }
        switch kind {
        case .received:
            if entry.completesOn == .received { entry.peerDone = true }
        case .written, .flushed, .refused, .failed:
            if kind == .refused || kind == .failed {
                if entry.length > 0 { mark(offset: entry.offset, length: entry.length) }
                // The peer does not have it, as if it had gone away: where the peer may take over
                // on its own, the write waits until a voter has recorded it outdated (or a resync
                // brings it the write), lest it be acknowledged and missing there.
                entry.alone = true
                ready.append(.persistBitmap(then: .completionsWait))
                // This copy now holds a write the peer lacks, as after a disconnection: a new
                // generation says so durably, or two copies with equal generations would let the
                // marked side be overwritten from the peer after both restart. (Not for a refusal:
                // that comes from a peer in a newer epoch or primary itself, whose data is newer.)
                if kind == .failed, entry.length > 0, context.role == .primary {
                    ready.append(.beginIndependentChanges)
                }
                ready.append(.peerRefused(sequence: sequence, failed: kind == .failed))
            }
            if replicationProtocol == .a { asyncBytesInFlight -= min(asyncBytesInFlight, entry.length) }
            entry.peerDone = true
            entry.acknowledged = true
            if kind == .written, !entry.durableOnPeer, entry.length > 0, peerFlushEvery != nil {
                unflushedOnPeer.append(UnflushedOnPeer(sequence: sequence, offset: entry.offset, length: entry.length))
            }
            if kind == .flushed { peerFlushed(sequence) }
            if kind == .failed, barrier == sequence { barrier = nil }
        case .resynced:
            return
        }
        pending[sequence] = entry
        completeIfReady(sequence)
        askPeerToFlushIfDue()
        if context.role == .primary, context.connection == .connected, !context.syncing, resyncSource == nil,
            asyncBytesInFlight == 0, bitmap.dirtyRegionCount > 0
        {
            ready.append(.catchUp)
        }
    }

    private mutating func onDisconnected(_ context: Context) {
        // The peer may not have these: mark them (their extents are in the durable activity log),
        // and let every waiting request complete on this node's copy.
        for (sequence, entry) in pending {
            if entry.length > 0, !defects.contains(.forgetsInFlightOnDisconnect) {
                mark(offset: entry.offset, length: entry.length)
            }
            pending[sequence]?.peerDone = true
            pending[sequence]?.acknowledged = true
            pending[sequence]?.alone = true
        }
        // What the peer wrote but may not have flushed stays listed until it returns: marked then if
        // its host lost its page cache meanwhile.
        barrier = nil
        asyncBytesInFlight = 0
        resyncSource = nil
        // What a verify found so far stays marked (stored just below): it is resynced when the
        // peer returns.
        endVerify(stopped: true, context, storesBitmap: false)
        for sequence in Array(pending.keys).sorted() { completeIfReady(sequence) }
        ready.append(.persistBitmap(then: .report))
        // A primary whose lease ended (frozen past it, woken now) acknowledges nothing more and
        // must not present its copy as changed: quorum has made the peer primary already. Under
        // protocol C, where writes wait for a voter to record the peer outdated before they
        // complete alone, the generation starts then (`completesWithoutPeer`): a primary cut off
        // from everyone completes nothing alone, and its copy rejoins as the resync target
        // without looking like a split brain.
        let completesAlone = completesWithoutPeer || replicationProtocol != .c
        if context.role == .primary, context.leaseValid, completesAlone { ready.append(.beginIndependentChanges) }
    }

    /// Completes the client's request once both halves are done. The entry stays until the peer's
    /// final acknowledgement (for protocols A and B that comes after the client's answer), so that
    /// a lost peer marks what it may not have and protocol A's window drains.
    private mutating func completeIfReady(_ sequence: UInt64) {
        guard var entry = pending[sequence] else { return }
        if entry.localDone, entry.peerDone, let request = entry.request {
            entry.request = nil
            if entry.alone, !completesWithoutPeer {
                held.append(request)
            } else {
                ready.append(.complete(request, .success))
            }
        }
        pending[sequence] = entry
        if entry.acknowledged, entry.localDone, entry.request == nil { retire(sequence) }
    }

    private mutating func retire(_ sequence: UInt64) {
        guard let entry = pending.removeValue(forKey: sequence) else { return }
        if entry.length > 0 { ready.append(.endActivity(offset: entry.offset, length: entry.length)) }
    }

    /// Completes a write the peer does not have, or holds it while such writes may not complete.
    private mutating func completeAlone(_ request: IORequest, _ outcome: Outcome, _ context: Context) {
        if completesWithoutPeer || context.role != .primary {
            return ready.append(.complete(request, outcome))
        }
        if case .success = outcome { return held.append(request) }
        ready.append(.complete(request, outcome))
    }

    private mutating func releaseHeld(_ outcome: Outcome) {
        for request in held { ready.append(.complete(request, outcome)) }
        held.removeAll()
    }
}
