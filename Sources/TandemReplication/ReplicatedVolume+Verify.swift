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

    struct VerifyState {
        var progress: VerifyProgress
        var nextRegion = 0
        var inFlight: [UInt64: Int] = [:]
    }

    /// Starts comparing every region's digest with the peer's while the volume stays in use.
    ///
    /// Run it on the primary (or, with two secondaries, on the node whose copy is to be trusted):
    /// regions that differ are marked on this node and resynced from it when the verify ends.
    public func startVerify() throws(RoleError) -> [ReplicationEvent] {
        try state.withLock { state throws(RoleError) in
            guard state.peer != nil, state.connection == .connected else {
                throw RoleError(
                    description:
                        "\(configuration.name) is \(state.connection.rawValue); verify needs a connected, idle peer")
            }
            guard state.verify == nil else {
                throw RoleError(description: "a verify of \(configuration.name) is already running")
            }
            if state.role == .secondary, state.peerState?.role == .primary {
                throw RoleError(description: "the peer is primary for \(configuration.name); start the verify there")
            }
            let progress = VerifyProgress(
                totalRegions: state.engine.bitmap.regionCount, checkedRegions: 0, outOfSyncRegions: [],
                regionBytes: state.engine.bitmap.regionBytes, startedAt: clock.now())
            state.verify = VerifyState(progress: progress)
        }
        return [event("online verify started")] + pumpVerify()
    }

    /// Stops a running verify; what it found so far is kept and marked.
    public func stopVerify() throws(RoleError) -> [ReplicationEvent] {
        let progress = try state.withLock { state throws(RoleError) -> VerifyProgress in
            guard var verify = state.verify else {
                throw RoleError(description: "no verify of \(configuration.name) is running")
            }
            verify.progress.stopped = true
            verify.progress.finishedAt = clock.now()
            state.lastVerify = verify.progress
            state.verify = nil
            return verify.progress
        }
        return finishVerify(progress)
    }

    /// Sends digests up to the window; reads and digests run under the lock so that the order of
    /// regions and sequence numbers is the order of sending.
    func pumpVerify() -> [ReplicationEvent] {
        let finished = state.withLock { state -> VerifyProgress? in
            guard var verify = state.verify, let peer = state.peer else { return nil }
            while verify.inFlight.count < state.engine.resyncWindow, verify.nextRegion < verify.progress.totalRegions {
                let region = verify.nextRegion
                verify.nextRegion += 1
                let range = state.engine.bitmap.range(ofRegion: region)
                guard let digest = digestOfRange(range) else {
                    // An unreadable local block is out of sync by definition.
                    verify.progress.outOfSyncRegions.append(region)
                    verify.progress.checkedRegions += 1
                    continue
                }
                let sequence = state.engine.takeSequence()
                verify.inFlight[sequence] = region
                peer.send([
                    .verifyRequest(
                        PeerVerify(
                            volume: index, sequence: sequence, offset: range.lowerBound,
                            length: UInt32(range.upperBound - range.lowerBound), digest: digest))
                ])
            }
            guard verify.inFlight.isEmpty, verify.nextRegion >= verify.progress.totalRegions else {
                state.verify = verify
                return nil
            }
            verify.progress.finishedAt = clock.now()
            verify.progress.outOfSyncRegions.sort()
            state.lastVerify = verify.progress
            state.verify = nil
            return verify.progress
        }
        return finished.map(finishVerify) ?? []
    }

    private func finishVerify(_ progress: VerifyProgress) -> [ReplicationEvent] {
        let regions = progress.outOfSyncRegions
        let listed = regions.prefix(32).map { region -> String in
            let start = UInt64(region) * progress.regionBytes
            return "\(start)+\(progress.regionBytes)"
        }.joined(separator: " ")
        var events = [
            event(
                "online verify \(progress.stopped ? "stopped" : "finished"): \(progress.checkedRegions) of "
                    + "\(progress.totalRegions) regions compared, \(regions.count) out of sync"
                    + (regions.isEmpty ? "" : " (offset+length: \(listed)\(regions.count > 32 ? " …" : ""))"))
        ]
        guard !regions.isEmpty else { return events }
        let work = state.withLock { state in
            var work = Followups()
            for region in regions {
                let range = state.engine.bitmap.range(ofRegion: region)
                let input = ReplicationEngine.Input.markOutOfSync(
                    offset: range.lowerBound, length: range.upperBound - range.lowerBound)
                work.merge(step(input, in: &state))
            }
            return work
        }
        events += perform(work)
        if let error = persistBitmap() { events.append(event("\(error)")) }
        let idle = state.withLock { $0.connection == .connected && $0.resync == nil && $0.peer != nil }
        if idle { events += startResyncSource(full: false, unite: false) }
        return events
    }

    func onVerifyRequest(_ request: PeerVerify) {
        let peer = state.withLock { $0.peer }
        let end = request.offset + UInt64(request.length)
        let equal = end <= store.sizeBytes && digestOfRange(request.offset..<end) == request.digest
        peer?.send([.verifyReply(volume: index, sequence: request.sequence, equal: equal)])
    }

    func onVerifyReply(sequence: UInt64, equal: Bool) -> [ReplicationEvent] {
        let known = state.withLock { state -> Bool in
            guard var verify = state.verify, let region = verify.inFlight.removeValue(forKey: sequence) else {
                return false
            }
            verify.progress.checkedRegions += 1
            if !equal { verify.progress.outOfSyncRegions.append(region) }
            state.verify = verify
            return true
        }
        return known ? pumpVerify() : []
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
