import NIOCore
import TandemCore
import TandemStorage
import TandemWire

/// Digest of one region for online verify; the agent passes SHA-256.
public typealias RegionDigest = @Sendable (UnsafeRawBufferPointer) -> [UInt8]

extension ReplicatedVolume {
    /// Progress or result of an online verify.
    public struct VerifyProgress: Sendable, Equatable {
        /// Regions in the volume.
        public var totalRegions: Int
        /// Regions compared so far.
        public var checkedRegions: Int
        /// Regions whose digests differed, in ascending order.
        public var outOfSyncRegions: [Int]
        /// Bytes per region.
        public var regionBytes: UInt64
        /// When it started.
        public var startedAt: ContinuousClock.Instant
        /// When it finished or was stopped.
        public var finishedAt: ContinuousClock.Instant?
        /// Whether it was stopped before the end.
        public var stopped = false

        /// Percent compared.
        public var percent: Double { totalRegions == 0 ? 100 : Double(checkedRegions) * 100 / Double(totalRegions) }
    }

    /// Starts comparing every region's digest with the peer's while the volume stays in use.
    ///
    /// Run it on the primary (or, with two secondaries, on the node whose copy is to be trusted):
    /// regions that differ are marked on this node and resynced from it when the verify ends.
    public func startVerify() throws(RoleError) -> [ReplicationEvent] {
        let work = try state.withLock { state throws(RoleError) -> Followups in
            if let refusal = state.engine.refusalToVerify(
                context(state), peerRole: state.peerState?.role, volume: configuration.name)
            {
                throw RoleError(description: refusal)
            }
            state.verifyStartedAt = clock.now()
            return step(.startVerify, in: &state)
        }
        return [event("online verify started")] + perform(work)
    }

    /// Stops a running verify; what it found so far is kept and marked.
    public func stopVerify() throws(RoleError) -> [ReplicationEvent] {
        let work = try state.withLock { state throws(RoleError) -> Followups in
            guard state.engine.verify != nil else {
                throw RoleError(description: "no verify of \(configuration.name) is running")
            }
            return step(.stopVerify, in: &state)
        }
        return perform(work)
    }

    /// The engine's verify as status shows it. Under the lock.
    func verifyProgress(_ state: State) -> VerifyProgress? {
        guard let run = state.engine.verify else { return nil }
        return VerifyProgress(
            totalRegions: run.totalRegions, checkedRegions: run.checkedRegions,
            outOfSyncRegions: run.outOfSyncRegions.sorted(), regionBytes: state.engine.bitmap.regionBytes,
            startedAt: state.verifyStartedAt ?? clock.now())
    }

    /// The engine ended the verify: recorded for status. Under the lock.
    func recordVerify(_ result: ReplicationEngine.VerifyResult, in state: inout State) -> VerifyProgress {
        let progress = VerifyProgress(
            totalRegions: result.totalRegions, checkedRegions: result.checkedRegions,
            outOfSyncRegions: result.outOfSyncRegions, regionBytes: state.engine.bitmap.regionBytes,
            startedAt: state.verifyStartedAt ?? clock.now(), finishedAt: clock.now(), stopped: result.stopped)
        state.lastVerify = progress
        state.verifyStartedAt = nil
        return progress
    }

    /// The line that reports a verify's end.
    func verifyReport(_ progress: VerifyProgress) -> String {
        let regions = progress.outOfSyncRegions
        let listed = regions.prefix(32).map { region -> String in
            let start = UInt64(region) * progress.regionBytes
            return "\(start)+\(progress.regionBytes)"
        }.joined(separator: " ")
        return "online verify \(progress.stopped ? "stopped" : "finished"): \(progress.checkedRegions) of "
            + "\(progress.totalRegions) regions compared, \(regions.count) out of sync"
            + (regions.isEmpty ? "" : " (offset+length: \(listed)\(regions.count > 32 ? " …" : ""))")
    }

    /// Reads `range` and sends its digest as verify request `sequence`; `false` if it cannot be
    /// read. Under the lock.
    func sendVerifyRequest(sequence: UInt64, range: Range<UInt64>, to peer: (any PeerSender)?) -> Bool {
        guard let digest = digestOfRange(range) else { return false }
        peer?.send([
            .verifyRequest(
                PeerVerify(
                    volume: index, sequence: sequence, offset: range.lowerBound,
                    length: UInt32(range.upperBound - range.lowerBound), digest: digest))
        ])
        return true
    }

    func onVerifyRequest(_ request: PeerVerify) {
        let peer = state.withLock { $0.peer }
        let end = request.offset + UInt64(request.length)
        let equal = end <= store.sizeBytes && digestOfRange(request.offset..<end) == request.digest
        peer?.send([.verifyReply(volume: index, sequence: request.sequence, equal: equal)])
    }

    func onVerifyReply(sequence: UInt64, equal: Bool) -> [ReplicationEvent] {
        feed(.verifyReply(sequence: sequence, equal: equal))
    }

    /// The digest of a byte range of the local copy, or `nil` if it cannot be read. A range that
    /// ends a cache extent drops that extent's clean pages: a verify reads the whole copy in order,
    /// and would otherwise leave it cached in read-ahead's large folios.
    private func digestOfRange(_ range: Range<UInt64>) -> [UInt8]? {
        let length = Int(range.upperBound - range.lowerBound)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
        defer { buffer.deallocate() }
        do {
            try store.read(into: buffer, at: range.lowerBound)
        } catch {
            return nil
        }
        let extent = cacheExtent(containing: range.upperBound - 1)
        if range.upperBound == extent.upperBound {
            store.dropCachedPages(in: extent)
        }
        return digest(UnsafeRawBufferPointer(buffer))
    }
}
