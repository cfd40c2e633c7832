import NIOCore
import Synchronization
import TandemCore
import TandemStorage
import TandemWire

/// Sends peer frames in the order given; implemented by the agent's peer link.
public protocol PeerSender: Sendable {
    /// Queues `frames` for the peer, after everything queued before.
    func send(_ frames: [PeerFrame])
    /// Queues `frame` (`data` or `resyncData`) whose payload is the `length` bytes at the write's
    /// offset in `store`, read when the frame leaves: a link may send them from the file without
    /// copying them through this process. A later write to the same bytes may already be in them;
    /// that write is queued after this frame, so the peer ends with the same bytes. The frame's own
    /// payload is ignored.
    func send(_ frame: PeerFrame, payloadStoredIn store: BackingStore, length: Int) throws(StorageError)
}

extension PeerSender {
    /// Reads the payload now and queues it with the frame; a failed read queues nothing.
    public func send(_ frame: PeerFrame, payloadStoredIn store: BackingStore, length: Int) throws(StorageError) {
        send([try frame.withPayload(from: store, length: length)])
    }
}

extension PeerFrame {
    /// This write frame with its payload read from `length` bytes at the write's offset in `store`.
    public func withPayload(from store: BackingStore, length: Int) throws(StorageError) -> PeerFrame {
        guard let write else { return self }
        var buffer = ByteBuffer(repeating: 0, count: length)
        try buffer.withUnsafeMutableReadableBytes { (bytes) throws(StorageError) in
            try store.read(into: bytes, at: write.offset)
        }
        return replacingPayload(with: NBDPayload(buffer))
    }
}

/// Runs blocking work (such as `fdatasync`) off the caller's thread.
public typealias BlockingRunner = @Sendable (_ work: @escaping @Sendable () -> Void) -> Void

/// Completion of a client request: called exactly once, from any thread.
public typealias Completion = @Sendable (Result<Void, StorageError>) -> Void

/// Why a role change was refused.
public struct RoleError: Error, Sendable, CustomStringConvertible {
    /// The reason, for the administrator.
    public var description: String
}

/// One volume on one node: local I/O plus replication to the peer under protocol A, B or C.
///
/// The primary applies a client write locally, sends it to the peer in order with every other write,
/// and completes the client's request when the protocol allows: A after the local write, B when the
/// peer received it, C when the peer wrote it (and, for FUA, made it durable). While no peer is
/// connected, or when protocol A falls too far behind, written regions are marked in the write-intent
/// bitmap (persisted before the write is acknowledged) and resynced on the next connection.
///
/// Feed it peer events with `peerConnected(_:)`, `receive(_:)` and `peerDisconnected()`; it sends
/// its frames through the `PeerSender`. Which side resyncs is decided by `SyncDecision` (pure).
public final class ReplicatedVolume: Sendable {
    /// Index of the volume in the config; peers address volumes by it.
    public let index: UInt16
    /// Settings from the config.
    public let configuration: Configuration.Volume
    /// The local copy.
    public let store: BackingStore
    let metadataPath: String
    let bitmapPath: String
    let runBlocking: BlockingRunner
    /// Every reading of time in this shell goes through it.
    let clock: ShellClock
    let digest: RegionDigest
    /// Receives events that arise outside a caller's request (a timer finishing a resync).
    let report: @Sendable (ReplicationEvent) -> Void
    /// Runs work after a delay (the resync's rate limit waits with it).
    let scheduleAfter: @Sendable (Duration, @escaping @Sendable () -> Void) -> Void
    let newGeneration: @Sendable () -> UInt64
    /// Bytes protocol A may have unacknowledged before it stops sending and marks instead.
    let asyncWindowBytes: UInt64
    let state: CheckedState
    /// Whether a peer is configured; a lone node keeps no activity log.
    let peerConfigured: Bool
    /// Breaks ties between two secondaries with marked regions; the peer must get the opposite.
    let preferredInTies: Bool
    let activityLogPath: String
    /// Orders local writes with their sends to the peer (see `replicate`).
    let writeOrder = Mutex<Void>(())
    /// Serialises activity-log writes, so the file never goes back to an older set of extents;
    /// holds the sequence number of the newest record and the size of the file's two slots.
    let activityLogWrite: Mutex<(sequence: UInt64, slotBytes: Int)>
    /// Serialises bitmap writes, so the file never goes back to an older bitmap.
    let bitmapWrite = Mutex<Void>(())
    /// What opening the volume found (for example, extents recovered from a crash).
    public let openingEvents: [ReplicationEvent]

    /// The volume's state under its lock. Every release of the lock checks, in debug builds (the
    /// tests, the simulator), the invariants the types cannot express yet.
    final class CheckedState: Sendable {
        private let mutex: Mutex<State>

        init(_ state: State) { mutex = Mutex(state) }

        func withLock<Result, E: Error>(
            _ body: (inout sending State) throws(E) -> sending Result
        ) throws(E) -> sending Result {
            try mutex.withLock { (state: inout sending State) throws(E) -> sending Result in
                let result = try body(&state)
                assert(state.invariantViolation == nil, state.invariantViolation ?? "")
                return result
            }
        }
    }

    struct State {
        var role: VolumeRole = .secondary
        /// The link to the peer and what runs over it (see `LinkPhase`).
        var link: LinkPhase = .standAlone(splitBrain: nil)
        var disk: DiskState = .upToDate
        var generations: DataGenerations
        var metadata: VolumeMetadata
        var peer: (any PeerSender)?
        var peerState: PeerVolumeState?
        var peerBitmap: WriteIntentBitmap?
        /// The replication rules: pending writes, acknowledgements, held writes.
        var engine: ReplicationEngine
        /// Completions of the client requests the engine keeps waiting, by the ids it knows them by.
        var requests: [IORequest: Completion] = [:]
        var nextRequest: UInt64 = 0
        var epoch: UInt64 = 0
        /// When the engine's running verify started, for status.
        var verifyStartedAt: ContinuousClock.Instant?
        var lastVerify: VerifyProgress?
        var activityLog: ActivityLog
        var resyncedBytesTotal: UInt64 = 0
        /// Regions this node wrote as a resync target since its last resync ended, kept across
        /// disconnections: their pages leave the cache once the resync is durable.
        var resyncWritten: WriteIntentBitmap?
        /// The bitmap's `markCount` when its file was last written: at the same count, every set
        /// bit is durable.
        var persistedMarkCount: UInt64 = 0
        var lastResync: ResyncProgress?
        /// The highest epoch the peer ever reported, kept across disconnections.
        var knownPeerEpoch: UInt64 = 0
        /// Set by `resolveSplitBrain(discardLocal:)`: this side's changes lose the next split brain.
        var discardLocal = false
        /// The newest epoch known in the cluster: replicated writes from older ones are refused.
        var fenceEpoch: UInt64 = 0
        /// The failure of this node's last write of the peer's data, once reported: the same failure
        /// again is not reported again until a write succeeds.
        var peerWriteFailure: String?
        /// The peer's refusals of replicated writes not yet reported, and when the last report went
        /// out: a peer whose disk fails refuses every write, and one line every ten seconds says so.
        var refusalsUnreported = 0
        var refusalReportedAt: ContinuousClock.Instant?
        /// Set while a planned switchover drains writes in flight.
        var draining = false
        /// The activity log's group commit (see `beginActivity`).
        var logCommit = LogCommit()

        var connection: ConnectionState { link.connection }
        var resync: ResyncState? { link.resync }
        var splitBrain: SplitBrainReport? { link.splitBrain }

        /// A new id for a client's request.
        mutating func newRequest() -> IORequest {
            nextRequest += 1
            return IORequest(nextRequest)
        }

        /// What must hold whenever the lock is released; `nil` when it does.
        var invariantViolation: String? {
            if role == .primary, epoch == 0 { return "primary in epoch 0" }
            if resync != nil, peer == nil { return "a resync without a peer link" }
            if engine.verify != nil, peer == nil { return "a verify without a peer link" }
            if resync != nil, engine.verify != nil { return "a resync and a verify at once" }
            if engine.resyncSource != nil, resync?.progress.source != .local {
                return "the engine sends a resync the shell does not record"
            }
            if connection == .syncTarget, disk != .inconsistent {
                return "a resync target whose copy is not marked inconsistent"
            }
            return nil
        }
    }

    /// The link to the peer and what runs over it. What cannot coexist cannot be represented: a
    /// resync's record exists only while this copy is its source or its target, and a split
    /// brain's report only while the pair does not replicate. (The engine's own resync source and
    /// verify run inside `connected`/`syncSource`; `CheckedState` checks that they agree.)
    enum LinkPhase {
        /// Not replicating: the configs differ, the copies are unrelated, the link failed, or a
        /// split brain waits for an administrator (its report).
        case standAlone(splitBrain: SplitBrainReport?)
        /// A link is being made, or the peer's state is not yet decided on; a split brain found
        /// earlier is kept until the decision.
        case connecting(splitBrain: SplitBrainReport?)
        /// Replicating, in sync.
        case connected
        /// Resyncing the peer from this copy.
        case syncSource(ResyncState)
        /// Resynced from the peer; this copy is inconsistent until it ends.
        case syncTarget(ResyncState)

        var connection: ConnectionState {
            switch self {
            case .standAlone: return .standAlone
            case .connecting: return .connecting
            case .connected: return .connected
            case .syncSource: return .syncSource
            case .syncTarget: return .syncTarget
            }
        }

        var resync: ResyncState? {
            switch self {
            case .syncSource(let resync), .syncTarget(let resync): return resync
            case .standAlone, .connecting, .connected: return nil
            }
        }

        var splitBrain: SplitBrainReport? {
            switch self {
            case .standAlone(let report), .connecting(let report): return report
            case .connected, .syncSource, .syncTarget: return nil
            }
        }

        /// Changes the running resync's record; nothing when none runs.
        mutating func updateResync(_ body: (inout ResyncState) -> Void) {
            switch self {
            case .syncSource(var resync):
                body(&resync)
                self = .syncSource(resync)
            case .syncTarget(var resync):
                body(&resync)
                self = .syncTarget(resync)
            case .standAlone, .connecting, .connected:
                break
            }
        }
    }

    /// Writes whose extents entered the activity log wait until its file holds them. One commit
    /// (one `fdatasync`) covers every write waiting when it starts; writes to extents already in the
    /// file go on meanwhile.
    struct LogCommit {
        /// Counts the admissions that changed the log.
        var generation: UInt64 = 0
        /// Extents in the log in memory but not yet in its file, with the generation that added them.
        var undurable: [UInt64: UInt64] = [:]
        /// An extent left the log since the last commit began: the writes there must be durable,
        /// and the bitmap may need writing, before a record without it is.
        var dropped = false
        /// Commits that made the local copy durable first, because they dropped an extent (for
        /// status and the tests).
        var dataFlushes: UInt64 = 0
        /// Writes waiting for the next commit, resumed with its error (`nil`: their extents are durable).
        var waiting: [@Sendable (StorageError?) -> Void] = []
        /// A commit is running; it takes up whatever waits when it ends.
        var running = false
        /// Log writes made, and writes that waited for one (for status).
        var writes: UInt64 = 0
        var waits: UInt64 = 0
    }

    /// A resync's record in the shell: when it started, and the page-cache bookkeeping. A source's
    /// cursor, window and counts are the engine's (`ReplicationEngine.ResyncSource`); a target's
    /// counts are here.
    struct ResyncState {
        var progress: ResyncProgress
        /// The cache extent whose blocks all reached the peer last: its pages leave the cache when
        /// the next one is done. (When the last block's acknowledgement arrives, the kernel may
        /// still hold the pages `sendfile` gave the socket, and a page in use is not dropped.)
        var extentToDrop: Range<UInt64>?
        /// Every extent done, one bit each: dropped once more a second after the resync ends or
        /// its link breaks, for pages that were still in use when their extent was dropped.
        var extentsDone: WriteIntentBitmap?
    }

    /// The progress of the running resync, a source's counts taken from the engine.
    func resyncProgress(_ state: State) -> ResyncProgress? {
        guard var progress = state.resync?.progress else { return nil }
        if progress.source == .local, let source = state.engine.resyncSource {
            progress.totalBytes = source.totalBytes
            progress.doneBytes = source.doneBytes
            progress.stalled = source.stalled
        }
        return progress
    }

    /// Progress of a resync.
    public struct ResyncProgress: Sendable, Equatable {
        /// Which side sends.
        public var source: PeerSide
        /// Bytes to move when it started.
        public var totalBytes: UInt64
        /// Bytes moved so far.
        public var doneBytes: UInt64
        /// When it started.
        public var startedAt: ContinuousClock.Instant
        /// When it finished, if it did.
        public var finishedAt: ContinuousClock.Instant?
        /// Why it is not moving, while it waits after the peer refused a block.
        public var stalled: String?

        /// Percent done.
        public var percent: Double { totalBytes == 0 ? 100 : Double(doneBytes) * 100 / Double(totalBytes) }
    }

    /// What each side had changed when a split brain was found.
    public struct SplitBrainReport: Sendable, Equatable {
        public var localChangedBytes: UInt64
        public var peerChangedBytes: UInt64
        public var resolvable: Bool
    }

    /// Opens the replication state of `local`: its bitmap file (created clean on first use) and its
    /// activity log, whose extents after a crash are marked for resync.
    public init(
        index: UInt16, local: LocalVolume, peerConfigured: Bool = true, preferredInTies: Bool = true,
        runBlocking: @escaping BlockingRunner,
        digest: @escaping RegionDigest = { bytes in withUnsafeBytes(of: CRC32C.checksum(bytes).bigEndian) { Array($0) }
        },
        scheduleAfter: @escaping @Sendable (Duration, @escaping @Sendable () -> Void) -> Void = { _, work in work() },
        report: @escaping @Sendable (ReplicationEvent) -> Void = { _ in },
        newGeneration: @escaping @Sendable () -> UInt64 = { UInt64.random(in: 0x1000...UInt64.max) },
        asyncWindowBytes: UInt64 = 64 << 20, resyncWindow: Int = 16, activityLog: ActivityLog = ActivityLog(),
        clock: ShellClock = .system, lease: LeaseGate = LeaseGate()
    ) throws(MetadataError) {
        self.index = index
        self.clock = clock
        self.lease = lease
        self.configuration = local.configuration
        self.store = local.store
        self.metadataPath = local.metadataPath
        self.bitmapPath = local.metadataPath + ".bitmap"
        self.activityLogPath = local.metadataPath + ".activity"
        self.peerConfigured = peerConfigured
        self.preferredInTies = preferredInTies
        self.runBlocking = runBlocking
        self.digest = digest
        self.scheduleAfter = scheduleAfter
        self.report = report
        self.newGeneration = newGeneration
        self.asyncWindowBytes = asyncWindowBytes
        var bitmap =
            try WriteIntentBitmap.load(path: bitmapPath, volumeBytes: local.store.sizeBytes)
            ?? WriteIntentBitmap(volumeBytes: local.store.sizeBytes)
        var events: [ReplicationEvent] = []
        if let bytes = try AtomicFile.read(path: activityLogPath) {
            guard let recovered = ActivityLog.decodeExtents(bytes) else {
                throw .corrupt(path: activityLogPath, reason: "activity log does not parse or its checksum is wrong")
            }
            for extent in recovered.extents where extent * recovered.extentBytes < local.store.sizeBytes {
                let start = extent * recovered.extentBytes
                bitmap.mark(offset: start, length: min(recovered.extentBytes, local.store.sizeBytes - start))
            }
            if !recovered.extents.isEmpty {
                events.append(
                    ReplicationEvent(
                        description: "\(local.configuration.name): \(recovered.extents.count) extents were active when "
                            + "the node stopped without a clean shutdown; they are marked for resync"))
                try bitmap.store(path: bitmapPath)
            }
        }
        let slotBytes = ActivityLog.slotBytes(extentCount: activityLog.capacity)
        try AtomicFile.replace(path: activityLogPath, bytes: activityLog.encodedFile(sequence: 1, slotBytes: slotBytes))
        activityLogWrite = Mutex((1, slotBytes))
        openingEvents = events
        let stored = local.metadata.generations
        let generations = DataGenerations(
            current: stored.current, bitmap: stored.bitmap,
            history: [stored.history.0, stored.history.1].filter { $0 != 0 })
        var initial = State(
            generations: generations, metadata: local.metadata,
            engine: ReplicationEngine(
                replicationProtocol: local.configuration.protocol, bitmap: bitmap, peerConfigured: peerConfigured,
                asyncWindowBytes: asyncWindowBytes, resyncWindow: resyncWindow),
            activityLog: activityLog)
        // Loaded from its file, and stored again above if the activity log marked anything.
        initial.persistedMarkCount = bitmap.markCount
        // A volume with a configured peer is waiting for it; a lone node's volume stands alone.
        initial.link = peerConfigured ? .connecting(splitBrain: nil) : .standAlone(splitBrain: nil)
        // A resync target that stopped before the end stays inconsistent until a resync finishes.
        initial.disk = local.metadata.inconsistent ? .inconsistent : local.metadata.outdated ? .outdated : .upToDate
        state = CheckedState(initial)
    }

    /// Makes the bitmap durable and empties the activity log: a clean shutdown.
    public func close() -> [ReplicationEvent] {
        var events: [ReplicationEvent] = []
        if let error = persistBitmap() { events.append(ReplicationEvent(description: "\(error)")) }
        let cleared = state.withLock { state -> Bool in
            guard state.engine.unacknowledged == 0, state.logCommit.waiting.isEmpty, !state.logCommit.running else {
                return false
            }
            state.activityLog.clear()
            return true
        }
        if cleared, let error = persistActivityLog() { events.append(ReplicationEvent(description: "\(error)")) }
        if let error = persistMetadata() { events.append(ReplicationEvent(description: "\(error)")) }
        return events
    }

    // MARK: Status

    /// A snapshot for status output.
    public struct Status: Sendable, Equatable {
        public var name: String
        public var role: VolumeRole
        public var connection: ConnectionState
        public var disk: DiskState
        public var protocolName: String
        public var outOfSyncBytes: UInt64
        public var generations: DataGenerations
        public var epoch: UInt64
        public var resync: ResyncProgress?
        public var lastResync: ResyncProgress?
        public var resyncedBytesTotal: UInt64
        public var splitBrain: SplitBrainReport?
        public var verify: VerifyProgress?
        public var lastVerify: VerifyProgress?
        public var peerRole: VolumeRole?
        public var peerDisk: DiskState?
        /// Writes of the activity log's file since the volume opened, and client writes that
        /// waited for one (their extent was not in the file).
        public var activityLogWrites: UInt64
        /// Log writes that dropped an extent, each after making the local copy durable.
        public var activityLogDataFlushes: UInt64
        public var activityLogWaits: UInt64
    }

    /// The current status.
    public var status: Status {
        state.withLock { state in
            Status(
                name: configuration.name, role: state.role, connection: state.connection, disk: state.disk,
                protocolName: configuration.protocol.rawValue, outOfSyncBytes: state.engine.bitmap.dirtyBytes,
                generations: state.generations, epoch: state.epoch, resync: resyncProgress(state),
                lastResync: state.lastResync, resyncedBytesTotal: state.resyncedBytesTotal,
                splitBrain: state.splitBrain, verify: verifyProgress(state), lastVerify: state.lastVerify,
                peerRole: state.peerState?.role,
                peerDisk: state.peerState?.diskState,
                activityLogWrites: state.logCommit.writes, activityLogDataFlushes: state.logCommit.dataFlushes,
                activityLogWaits: state.logCommit.waits)
        }
    }

    /// Whether clients may write: only a primary whose copy is up to date and that is not handing
    /// its role over.
    public var acceptsWrites: Bool {
        state.withLock { $0.role == .primary && $0.disk == .upToDate && !$0.draining }
    }

    /// Refuses new client writes from now on (a planned switchover drains what is in flight);
    /// the next role change ends it.
    public func stopAcceptingWrites() {
        state.withLock { $0.draining = true }
    }

    // MARK: Roles

    /// Makes this node primary or secondary for the volume.
    ///
    /// Refused when it would make two primaries on a connected pair, or when this copy is not up
    /// to date. A node promoted while apart from its peer starts a new data generation so that the
    /// next connection knows which copy changed.
    ///
    /// The metadata is stored before the new role is seen by a client or the peer. A promotion
    /// whose metadata cannot be stored is refused and changes nothing. A demotion always takes
    /// effect (no write completes here afterwards, which is what safety needs), but a metadata
    /// write that failed is still thrown, for the caller to report.
    public func setRole(_ role: VolumeRole, epoch: UInt64? = nil) throws(RoleError) {
        if state.withLock({ RoleRules.promotionEndsPeerLink(to: role, epoch: epoch, roleFacts($0)) }) {
            for event in peerDisconnected() { report(event) }
        }
        // Held across the metadata write: a role change is rare, and no write may complete in a
        // role that is then refused.
        let (peer, frames) = try state.withLock { state throws(RoleError) -> (PeerSender?, [PeerFrame]) in
            let before = state
            state.draining = false
            switch RoleRules.change(to: role, epoch: epoch, volume: configuration.name, roleFacts(state)) {
            case .failure(let refusal):
                throw RoleError(description: refusal.description)
            case .success(.none):
                return (nil, [])
            case .success(.carryEpoch(let epoch)):
                state.epoch = epoch
                state.fenceEpoch = max(state.fenceEpoch, epoch)
            case .success(.promote(let epoch, let fenceEpoch, let generation)):
                switch generation {
                case .first?: state.generations = DataGenerations(current: newGeneration())
                case .independentChanges?:
                    state.generations = state.generations.startingIndependentChanges(newCurrent: newGeneration())
                case nil: break
                }
                state.epoch = epoch
                if let fenceEpoch { state.fenceEpoch = max(state.fenceEpoch, fenceEpoch) }
                state.role = .primary
            case .success(.demote):
                state.role = .secondary
            }
            if let error = storeMetadata(&state) {
                if role == .primary { state = before }
                throw RoleError(description: "\(configuration.name): role \(role.rawValue) not recorded: \(error)")
            }
            if before.role == .secondary, state.role == .primary { notePromotion(epoch: state.epoch) }
            return (state.peer, state.peer == nil ? [] : [.volumeState(volumeState(state))])
        }
        if !frames.isEmpty { peer?.send(frames) }
    }

    /// The facts `RoleRules` reads. Under the lock.
    func roleFacts(_ state: State) -> RoleRules.Facts {
        RoleRules.Facts(
            role: state.role, disk: state.disk, connection: state.connection, linked: state.peer != nil,
            peerRole: state.peer == nil ? nil : state.peerState?.role, inSplitBrain: state.splitBrain != nil,
            fresh: state.generations.current == DataGenerations.created, epoch: state.epoch,
            knownPeerEpoch: state.knownPeerEpoch, markedBytes: state.engine.bitmap.dirtyBytes,
            peerMarkedBytes: state.peerState?.outOfSyncBytes)
    }

    func volumeState(_ state: State) -> PeerVolumeState {
        let generations = state.generations
        return PeerVolumeState(
            volume: index, name: configuration.name, sizeBytes: store.sizeBytes,
            generations: [generations.current, generations.bitmap] + generations.history,
            role: state.role, diskState: state.disk,
            outOfSyncBytes: state.engine.bitmap.dirtyBytes, epoch: state.epoch,
            replicationProtocol: configuration.protocol.rawValue)
    }

    // MARK: Client I/O

    /// Reads from the local copy.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(StorageError) {
        try store.read(into: buffer, at: offset)
    }

    /// Reads what the page cache holds without waiting for the device; returns the bytes filled.
    public func readCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Int {
        store.readCached(into: buffer, at: offset)
    }

    /// Writes of at least this many bytes go to the peer from the local copy, not from the
    /// client's buffers: the link can send them without a copy, and the receive buffers are free
    /// again as soon as the local write is done. Smaller ones go with their frame in one system call.
    static let storedPayloadThreshold: UInt64 = 64 << 10

    /// Writes locally and replicates; `completion` runs when the protocol's guarantee holds.
    public func write(offset: UInt64, payload: NBDPayload, fua: Bool, completion: @escaping Completion) {
        replicate(
            offset: offset, length: UInt64(payload.count), flags: fua ? PeerWriteFlags.fua : 0, payload: payload,
            completion: completion
        ) { [store] () throws(StorageError) in
            var position = offset
            for piece in payload.pieces {
                try piece.withUnsafeReadableBytes { (bytes) throws(StorageError) in try store.write(bytes, at: position)
                }
                position += UInt64(piece.readableBytes)
            }
        }
    }

    /// Zeroes (or, with `trim`, discards) a range locally and replicates it as zeroes.
    public func writeZeroes(offset: UInt64, length: UInt64, fua: Bool, trim: Bool, completion: @escaping Completion) {
        var lengthField = ByteBuffer()
        lengthField.writeInteger(length)
        replicate(
            offset: offset, length: length, flags: (fua ? PeerWriteFlags.fua : 0) | PeerWriteFlags.zeroes,
            payload: NBDPayload(lengthField), completion: completion
        ) { [store] () throws(StorageError) in
            if trim {
                try store.trim(offset: offset, length: length)
            } else {
                try store.writeZeroes(offset: offset, length: length, mayDeallocate: true)
            }
        }
    }

    /// Makes every completed write durable locally and, when connected under B or C, on the peer.
    public func flush(completion: @escaping Completion) {
        let work = state.withLock { state in
            let request = state.newRequest()
            return step(.flush(request), completing: (request, completion), in: &state)
        }
        for event in perform(work) { report(event) }
    }

    func isReplicating(_ state: State) -> Bool {
        state.peer != nil && (state.connection == .connected || state.connection == .syncSource)
    }

    /// Applies `change` locally and queues it for the peer as one step: with a peer, writes from
    /// all connections pass one at a time, so both copies apply overlapping writes in the same order.
    ///
    /// A write whose extents must first enter the activity log's file waits for the group commit
    /// and goes on from the thread that ran the commit; if this node stopped being primary
    /// meanwhile, it fails without touching the copy.
    private func replicate(
        offset: UInt64, length: UInt64, flags: UInt8, payload: NBDPayload, completion: @escaping Completion,
        change: @escaping @Sendable () throws(StorageError) -> Void
    ) {
        if peerConfigured {
            lastClientWrite.store(
                max(1, Self.nanoseconds(clock.sinceOrigin())), ordering: .relaxed)
        }
        let completion = awaitingFirstAck.load(ordering: .relaxed) ? noteFirstAck(then: completion) : completion
        let ready = beginActivity(
            offset: offset, length: length,
            resume: { [self] error in
                if let refusal = error ?? (state.withLock { $0.role == .primary } ? nil : noLongerPrimary) {
                    endActivity(offset: offset, length: length)
                    return completion(.failure(refusal))
                }
                apply(offset: offset, length: length, flags: flags, payload: payload, completion: completion, change)
            })
        if ready {
            apply(offset: offset, length: length, flags: flags, payload: payload, completion: completion, change)
        }
    }

    /// The rest of `replicate`, once the write's extents are durable in the activity log: the local
    /// change and the engine's step (which queues the write for the peer) under `writeOrder`.
    private func apply(
        offset: UInt64, length: UInt64, flags: UInt8, payload: NBDPayload, completion: @escaping Completion,
        _ change: () throws(StorageError) -> Void
    ) {
        let written = { [self] () -> Followups in
            state.withLock { state in
                let request = state.newRequest()
                return step(
                    .written(request, offset: offset, length: length, flags: flags), payload: payload,
                    completing: (request, completion), in: &state)
            }
        }
        let work: Followups
        do throws(StorageError) {
            if peerConfigured {
                work = try writeOrder.withLock { _ throws(StorageError) -> Followups in
                    try change()
                    return written()
                }
            } else {
                try change()
                work = written()
            }
        } catch {
            endActivity(offset: offset, length: length)
            return completion(.failure(error))
        }
        for event in perform(work) { report(event) }
    }

    // MARK: Carrying out the engine's directives

    /// What a step leaves for after the lock: usually one completion or none, kept inline.
    struct Followups {
        enum Work {
            case complete(Completion, Result<Void, StorageError>)
            case sync(ReplicationEngine.Sync, link: (any PeerSender)?)
            case persistBitmap(then: ReplicationEngine.AfterBitmapStore)
            case wakeAfter(Duration)
            case dropCache(Range<UInt64>)
            /// The resync as source ended; its extents done leave the cache later.
            case resyncFinished(WriteIntentBitmap?)
            case refused(sequence: UInt64, failed: Bool)
            case catchUp
            case verifyUnreadable(sequence: UInt64)
            case resyncDifferences
            case event(String)
        }
        var first: Work?
        var more: [Work] = []
        /// The engine asked for the peer's write, or resync block, to be applied here.
        var applyPeerData = false
        /// The engine ended the resync of this copy (the shell takes the source's generations).
        var resyncTargetFinished = false

        mutating func append(_ work: Work) {
            if first == nil { first = work } else { more.append(work) }
        }
    }

    /// The shell's facts the engine reads. Under the lock.
    func context(_ state: State, leaseValid: Bool = true) -> ReplicationEngine.Context {
        ReplicationEngine.Context(
            role: state.role, epoch: state.epoch, connection: state.connection, linked: state.peer != nil,
            replicating: isReplicating(state), syncing: state.resync != nil || state.engine.verify != nil,
            leaseValid: leaseValid)
    }

    /// Feeds `input` to the engine and carries out, under the lock, the directives that must be;
    /// returns the rest. `payload` is the bytes of the request a `written` input names; `link` is
    /// where acknowledgements go (by default the link now up; the peer's writes are answered on the
    /// link they came by).
    ///
    /// `completing` is the client's request the input brings and its completion. When the engine
    /// completes it in this same step (a lone node, protocol A, a flush with nothing to wait for)
    /// it runs from here; only one that waits is kept in `state.requests`.
    func step(
        _ input: ReplicationEngine.Input, payload: NBDPayload? = nil, link: (any PeerSender)?? = nil,
        completing: (request: IORequest, completion: Completion)? = nil, leaseValid: Bool = true,
        in state: inout State
    ) -> Followups {
        var arriving = completing
        state.engine.on(input, context(state, leaseValid: leaseValid))
        var work = Followups()
        // A store failed: the completions after it fail with its error.
        var failing: StorageError?
        // A resync block could not be queued: the link stands alone, and no more go.
        var resyncSendFailed = false
        for directive in state.engine.ready {
            switch directive {
            case .sendWrite(_, let sequence, let epoch, let offset, let length, let flags):
                sendWrite(
                    PeerWrite(
                        volume: index, sequence: sequence, epoch: epoch, offset: offset, flags: flags,
                        payload: payload ?? NBDPayload(ByteBuffer())), length: length, to: state.peer)
            case .sendFlush(let sequence):
                state.peer?.send([.flush(volume: index, sequence: sequence)])
            case .sendAck(let sequence, let kind):
                (link ?? state.peer)?.send([.ack(PeerAck(volume: index, sequence: sequence, kind: kind))])
            case .endActivity(let offset, let length):
                state.activityLog.end(offset: offset, length: length)
            case .applyPeerWrite, .applyResyncBlock:
                work.applyPeerData = true
            case .resyncTargetFinished:
                work.resyncTargetFinished = true
            case .sendVerifyRequest(let sequence, let range):
                if !sendVerifyRequest(sequence: sequence, range: range, to: state.peer) {
                    // An unreadable local region is out of sync by definition.
                    work.append(.verifyUnreadable(sequence: sequence))
                }
            case .verifyFinished(let result):
                work.append(.event(verifyReport(recordVerify(result, in: &state))))
            case .resyncDifferences:
                work.append(.resyncDifferences)
            case .sync(let sync):
                work.append(.sync(sync, link: link ?? state.peer))
            case .beginIndependentChanges:
                guard state.generations.bitmap == 0 else { break }
                state.generations = state.generations.startingIndependentChanges(newCurrent: newGeneration())
                if let error = storeMetadata(&state) {
                    failing = error
                    work.append(.event("\(error)"))
                }
            case .persistBitmap(let then):
                work.append(.persistBitmap(then: then))
            case .complete(let request, let outcome):
                let completion: Completion
                if let waiting = arriving, waiting.request == request {
                    completion = waiting.completion
                    arriving = nil
                } else if let kept = state.requests.removeValue(forKey: request) {
                    completion = kept
                } else {
                    break
                }
                let result: Result<Void, StorageError>
                switch outcome {
                case .success: result = failing.map { .failure($0) } ?? .success(())
                case .failure(let error): result = .failure(Self.storageError(error, path: store.path))
                case .noLongerPrimary: result = .failure(noLongerPrimary)
                }
                work.append(.complete(completion, result))
            case .peerRefused(let sequence, let failed):
                work.append(.refused(sequence: sequence, failed: failed))
            case .catchUp:
                work.append(.catchUp)
            case .sendResyncBlock(let sequence, let epoch, let range):
                guard let peer = state.peer, !resyncSendFailed else { break }
                let block = PeerWrite(
                    volume: index, sequence: sequence, epoch: epoch, offset: range.lowerBound, flags: 0,
                    payload: NBDPayload(ByteBuffer()))
                do {
                    try peer.send(.resyncData(block), payloadStoredIn: store, length: range.count)
                } catch {
                    resyncSendFailed = true
                    state.link = .standAlone(splitBrain: nil)
                    work.append(.event("resync stopped: \(error)"))
                }
            case .wakeAfter(let wait):
                work.append(.wakeAfter(wait))
            case .regionResynced(let range):
                state.resyncedBytesTotal += UInt64(range.count)
                if let drop = extentToDrop(after: range, in: &state) { work.append(.dropCache(drop)) }
            case .resyncNews(let text):
                work.append(.event(text))
            case .resyncFinished(let totalBytes, let doneBytes):
                work.append(.resyncFinished(finishResyncSource(totalBytes: totalBytes, doneBytes: doneBytes, &state)))
            }
        }
        state.engine.ready.removeAll(keepingCapacity: true)
        if resyncSendFailed {
            // The shell dropped the resync's record with the link: the engine drops its source.
            state.engine.on(.stopResyncSource, context(state))
            state.engine.ready.removeAll(keepingCapacity: true)
        }
        if let waiting = arriving { state.requests[waiting.request] = waiting.completion }
        return work
    }

    /// Carries out what a step left for after the lock, in order; returns what is worth logging.
    func perform(_ work: Followups) -> [ReplicationEvent] {
        guard let first = work.first else { return [] }
        var events: [ReplicationEvent] = []
        var failing: StorageError?
        // The first item apart: a write's usual single completion allocates no array.
        for index in -1..<work.more.count {
            let item = index < 0 ? first : work.more[index]
            switch item {
            case .complete(let completion, let result):
                if case .success = result, let failing { completion(.failure(failing)) } else { completion(result) }
            case .sync(let sync, let link):
                runBlocking { [self] in
                    let failure: StorageError?
                    if case .forPeer = sync {
                        failure = flushFailure()
                    } else {
                        do throws(StorageError) {
                            try store.flush()
                            failure = nil
                        } catch {
                            failure = error
                        }
                    }
                    let after = state.withLock { step(.synced(sync, failure: failure), link: link, in: &$0) }
                    for event in perform(after) { report(event) }
                }
            case .persistBitmap(let then):
                guard let error = persistBitmap() else {
                    if then == .pumpResync { events += pumpResync() }
                    break
                }
                if then == .completionsWait { failing = error }
                events.append(event("\(error)"))
            case .wakeAfter(let wait):
                scheduleAfter(wait) { [self] in
                    for event in feed(.wake(now: clock.sinceOrigin(), lastClientWrite: lastClientWriteTime)) {
                        report(event)
                    }
                }
            case .dropCache(let range):
                store.dropCachedPages(in: range)
            case .resyncFinished(let extentsDone):
                events += resyncFinished(extentsDone: extentsDone)
            case .refused(let sequence, let failed):
                events += refusalReport(sequence: sequence, failed: failed)
            case .catchUp:
                events.append(
                    event("regions marked while connected (protocol A fell behind, or refused writes) are resynced"))
                events += startResyncSource(full: false, unite: false)
            case .verifyUnreadable(let sequence):
                events += feed(.verifyReply(sequence: sequence, equal: false))
            case .resyncDifferences:
                events += startResyncSource(full: false, unite: false)
            case .event(let text):
                events.append(event(text))
            }
        }
        return events
    }

    /// Feeds `input` and carries out what it decided.
    func feed(_ input: ReplicationEngine.Input) -> [ReplicationEvent] {
        perform(state.withLock { step(input, in: &$0) })
    }

    /// Queues a client write for the peer: a large one's bytes are read from the local copy when
    /// the frame leaves (see `storedPayloadThreshold`), a small one goes with its payload.
    private func sendWrite(_ write: PeerWrite, length: UInt64, to peer: (any PeerSender)?) {
        guard let peer else { return }
        if write.flags & PeerWriteFlags.zeroes == 0, length >= Self.storedPayloadThreshold {
            var header = write
            header.payload = NBDPayload(ByteBuffer())
            do {
                try peer.send(.data(header), payloadStoredIn: store, length: Int(length))
            } catch {
                // The client's bytes are still at hand.
                peer.send([.data(write)])
            }
        } else {
            peer.send([.data(write)])
        }
    }

    /// A failure the engine carried back, as the storage error it was.
    static func storageError(_ error: any Error, path: String) -> StorageError {
        error as? StorageError ?? StorageError(path: path, operation: "write", reason: "\(error)")
    }

    /// Whether writes the peer does not have may complete. A cluster whose peer may take over on
    /// its own closes this until a voter has recorded that the peer is outdated: before that, an
    /// acknowledged write could be missing from the next primary. Opening it completes what waited.
    ///
    /// A primary apart from its peer starts a new data generation here, durably, before the
    /// first write completes without the peer: the next connection then knows this copy changed.
    /// If that cannot be stored, the writes that waited fail.
    public func setCompletesWithoutPeer(_ allowed: Bool) {
        let work = state.withLock { step(.completesWithoutPeer(allowed), in: &$0) }
        for event in perform(work) { report(event) }
    }

    /// Completes held writes once the peer has them after all (a resync brought it back in sync),
    /// or fails them when this node stops being primary.
    public func releaseHeldWrites(failing: Bool = false) {
        let work = state.withLock { step(.releaseHeld(failing: failing), in: &$0) }
        for event in perform(work) { report(event) }
    }

    /// Why a write that this node took as primary fails after it stopped being one.
    var noLongerPrimary: StorageError {
        StorageError(path: store.path, operation: "write", reason: "no longer primary")
    }

    /// Writes held until they may complete without the peer.
    public var heldWrites: Int { state.withLock { $0.engine.held.count } }

    /// Requests in flight (sent to the peer and not yet answered).
    public var writesInFlight: Int {
        state.withLock { state in
            state.engine.requestsInFlight + state.logCommit.waiting.count + (state.logCommit.running ? 1 : 0)
        }
    }

    /// Quorum recorded that this node lacks writes a primary acknowledged: an up-to-date copy apart
    /// from its peer becomes outdated, durably. It serves no client and survives no split brain
    /// until a resync from the peer makes it up to date again. Nothing to do on a primary (its own
    /// lease decides), on a copy that is inconsistent or outdated already, or on one connected to
    /// its peer: the connection's own decision brings that one up to date, and a mark that arrives
    /// late (datagrams overtake each other) must not outdate a copy that just finished its resync.
    public func markOutdated() -> [ReplicationEvent] {
        changeDisk(
            to: .outdated,
            saying: "quorum recorded this copy as outdated (it lacks writes a primary acknowledged): it serves no "
                + "client and survives no split brain until a resync from the peer"
        ) { state in RoleRules.mayMarkOutdated(roleFacts(state)) }
    }

    /// `tandem failover --force`: an outdated copy is taken as up to date, by the administrator's
    /// order. The writes the other node acknowledged after this copy fell behind are lost if that
    /// node never returns; the event says so.
    public func forceUpToDate() -> [ReplicationEvent] {
        changeDisk(
            to: .upToDate,
            saying: "this outdated copy was made up to date by `tandem failover --force`: the writes the other "
                + "node acknowledged after it fell behind are not here, and are lost unless that node returns"
        ) { state in RoleRules.mayForceUpToDate(roleFacts(state)) }
    }

    /// The node's voter no longer records it outdated (its primary said it is in sync, and it sees
    /// itself in sync): an outdated copy connected to that primary, nothing marked on either side,
    /// is up to date again.
    public func clearOutdated() -> [ReplicationEvent] {
        changeDisk(to: .upToDate, saying: "in sync with the primary: this copy is no longer outdated") { state in
            RoleRules.mayClearOutdated(roleFacts(state))
        }
    }

    /// Sets the disk state when `allowed` holds, durably, tells the peer (if connected), and says
    /// `text`; nothing when it does not hold.
    private func changeDisk(
        to disk: DiskState, saying text: String, when allowed: (State) -> Bool
    ) -> [ReplicationEvent] {
        let (changed, peer, frames) = state.withLock { state -> (Bool, PeerSender?, [PeerFrame]) in
            guard allowed(state) else { return (false, nil, []) }
            state.disk = disk
            return (true, state.peer, [.volumeState(volumeState(state))])
        }
        guard changed else { return [] }
        var events = [event(text)]
        if let error = persistMetadata() { events.append(event("\(error)")) }
        peer?.send(frames)
        return events
    }

    /// Refuses replicated writes from epochs before `epoch` from now on.
    public func observeEpoch(_ epoch: UInt64) {
        state.withLock { $0.fenceEpoch = max($0.fenceEpoch, epoch) }
    }

    /// When a client last wrote, in nanoseconds after `leaseOrigin` (0: never): the resync gives
    /// way to client writes (see `ResyncPacer`).
    let lastClientWrite = Atomic<Int64>(0)

    // MARK: Failover gap

    /// The times around this node's last promotion that bound a failover's client-visible gap
    /// (defined in the management contract, `FailoverRecord`), on this node's clock.
    public struct PromotionTiming: Sendable, Equatable {
        /// The epoch the volume was promoted in.
        public var epoch: UInt64
        public var promotedAt: Duration
        /// When the last replicated write was applied here before the promotion.
        public var lastReplicatedWriteAt: Duration?
        /// When the first client write after the promotion completed.
        public var firstWriteAckedAt: Duration?
    }

    /// The last promotion's timing; `nil` before the first.
    public var lastPromotion: PromotionTiming? { promotionTiming.withLock { $0 } }

    /// When a replicated write was last applied here, as `lastClientWrite` counts (0: never).
    let lastReplicatedWrite = Atomic<Int64>(0)
    /// From a promotion until the first client write after it completed.
    private let awaitingFirstAck = Atomic<Bool>(false)
    private let promotionTiming = Mutex<PromotionTiming?>(nil)

    private func notePromotion(epoch: UInt64) {
        let last = lastReplicatedWrite.load(ordering: .relaxed)
        promotionTiming.withLock {
            $0 = PromotionTiming(
                epoch: epoch, promotedAt: clock.sinceOrigin(),
                lastReplicatedWriteAt: last == 0 ? nil : .nanoseconds(last), firstWriteAckedAt: nil)
        }
        awaitingFirstAck.store(true, ordering: .relaxed)
    }

    private func noteFirstAck(then completion: @escaping Completion) -> Completion {
        { [self] result in
            if case .success = result,
                awaitingFirstAck.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged
            {
                let now = clock.sinceOrigin()
                promotionTiming.withLock { $0?.firstWriteAckedAt = now }
            }
            completion(result)
        }
    }

    // MARK: Lease gate

    /// The node's lease, which its membership side sets: no reply to a client leaves once it ended,
    /// and a primary that loses its peer after that starts no independent changes.
    public let lease: LeaseGate
    /// The clock origin for membership's time and for the link's timestamps.
    public static let leaseOrigin = ShellClock.origin

    /// Whole nanoseconds of `duration`.
    public static func nanoseconds(_ duration: Duration) -> Int64 { LeaseGate.nanoseconds(duration) }

    // MARK: Activity log

    /// Puts the extents of a write into the activity log. Returns `true` when they are all in the
    /// log's file already, so that the write may start now. Otherwise `resume` runs once a commit has
    /// made them durable (or with the error that kept it from doing so), from the thread that ran
    /// the commit; one commit covers every write waiting when it starts.
    func beginActivity(
        offset: UInt64, length: UInt64, resume: @autoclosure () -> @Sendable (StorageError?) -> Void
    ) -> Bool {
        // A write of no bytes has no extent to log (and `end` counts none for it).
        guard peerConfigured, length > 0 else { return true }
        let startCommit = state.withLock { state -> Bool? in
            let admission = state.activityLog.begin(offset: offset, length: length)
            if !admission.added.isEmpty || !admission.dropped.isEmpty {
                state.logCommit.generation += 1
                for extent in admission.added { state.logCommit.undurable[extent] = state.logCommit.generation }
                for extent in admission.dropped { state.logCommit.undurable[extent] = nil }
                if !admission.dropped.isEmpty { state.logCommit.dropped = true }
            }
            guard !state.logCommit.undurable.isEmpty,
                state.activityLog.extents(offset: offset, length: length).contains(where: {
                    state.logCommit.undurable[$0] != nil
                })
            else { return nil }
            state.logCommit.waiting.append(resume())
            state.logCommit.waits += 1
            defer { state.logCommit.running = true }
            return !state.logCommit.running
        }
        guard let startCommit else { return true }
        if startCommit { runBlocking { [self] in commitActivityLog() } }
        return false
    }

    /// Writes the activity log for every write waiting, then resumes them. Writes that came
    /// meanwhile get the next commit, from a task of its own: blocking work queued behind this one
    /// (a flush for a FUA write) runs first, however long misses keep coming. The log is taken
    /// when a commit starts: an extent that left it by then has its bitmap marks made durable first,
    /// and one that entered it later waits for the next commit.
    ///
    /// A record that drops an extent is written only once the local copy is durable: a write there
    /// that completed may still be in the page cache, and once the log no longer lists the extent,
    /// a power loss would lose that write here while the peer keeps it, with nothing marked on
    /// either side.
    func commitActivityLog() {
        let batch = state.withLock {
            state -> (
                waiting: [@Sendable (StorageError?) -> Void], generation: UInt64, log: ActivityLog, dropped: Bool,
                bitmap: Bool
            )? in
            guard !state.logCommit.waiting.isEmpty else {
                state.logCommit.running = false
                return nil
            }
            defer {
                state.logCommit.waiting.removeAll()
                state.logCommit.dropped = false
            }
            let dropped = state.logCommit.dropped
            let bitmap = dropped && state.engine.bitmap.markCount != state.persistedMarkCount
            if dropped { state.logCommit.dataFlushes += 1 }
            return (state.logCommit.waiting, state.logCommit.generation, state.activityLog, dropped, bitmap)
        }
        guard let batch else { return }
        var failure: StorageError?
        if batch.dropped {
            do throws(StorageError) {
                try store.flush()
            } catch {
                failure = error
            }
        }
        if failure == nil, batch.bitmap { failure = persistBitmap() }
        if failure == nil { failure = persistActivityLog(batch.log) }
        if failure == nil {
            state.withLock { state in
                state.logCommit.undurable = state.logCommit.undurable.filter { $0.value > batch.generation }
            }
        }
        for resume in batch.waiting { resume(failure) }
        // Ends the commits if nothing waits by then (`running` stays set until that task looks).
        runBlocking { [self] in commitActivityLog() }
    }

    func endActivity(offset: UInt64, length: UInt64) {
        guard peerConfigured else { return }
        state.withLock { $0.activityLog.end(offset: offset, length: length) }
    }

    /// Writes `log` (by default, the log as it is now) into the file's older slot.
    func persistActivityLog(_ taken: ActivityLog? = nil) -> StorageError? {
        activityLogWrite.withLock { slots -> StorageError? in
            let log = taken ?? state.withLock { $0.activityLog }
            let sequence = slots.sequence + 1
            do {
                if ActivityLog.slotBytes(extentCount: log.count) <= slots.slotBytes {
                    // The older slot is overwritten: torn, it leaves the newer one whole.
                    try DurableFile.overwrite(
                        path: activityLogPath,
                        offset: ActivityLog.slotOffset(sequence: sequence, slotBytes: slots.slotBytes),
                        bytes: log.encodedSlot(sequence: sequence, slotBytes: slots.slotBytes))
                } else {
                    // More extents than a slot holds (all of them busy): a new file, larger slots.
                    let larger = ActivityLog.slotBytes(extentCount: 2 * log.count)
                    try AtomicFile.replace(
                        path: activityLogPath, bytes: log.encodedFile(sequence: sequence, slotBytes: larger))
                    slots.slotBytes = larger
                }
                slots.sequence = sequence
                state.withLock { $0.logCommit.writes += 1 }
                return nil
            } catch {
                return StorageError(path: activityLogPath, operation: "store activity log", reason: "\(error)")
            }
        }
    }

    // MARK: Persistence

    func persistBitmap() -> StorageError? {
        bitmapWrite.withLock { _ -> StorageError? in
            let bitmap = state.withLock { $0.engine.bitmap }
            do throws(MetadataError) {
                try bitmap.store(path: bitmapPath)
            } catch {
                return StorageError(path: bitmapPath, operation: "store bitmap", reason: error.description)
            }
            state.withLock { $0.persistedMarkCount = bitmap.markCount }
            return nil
        }
    }

    func persistMetadata() -> StorageError? {
        state.withLock { storeMetadata(&$0) }
    }

    /// Stores the metadata `state` implies, with the lock held: the file always matches the last
    /// state stored, whichever thread stored it.
    func storeMetadata(_ state: inout State) -> StorageError? {
        var metadata = state.metadata
        let history = state.generations.history + [0, 0]
        metadata.generations = .init(
            current: state.generations.current, bitmap: state.generations.bitmap, history: (history[0], history[1]))
        metadata.inconsistent = state.disk == .inconsistent
        metadata.outdated = state.disk == .outdated
        do {
            try MetadataFile.store(metadata, path: metadataPath)
            state.metadata = metadata
            return nil
        } catch {
            return StorageError(path: metadataPath, operation: "store metadata", reason: error.description)
        }
    }
}
