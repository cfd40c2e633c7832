import NIOCore
import TandemCore
import TandemStorage
import TandemWire

/// Something the caller should log: the volume's view of the link changed.
public struct ReplicationEvent: Sendable, Equatable, CustomStringConvertible {
    /// A one-line description.
    public var description: String
}

extension ReplicatedVolume {
    // MARK: Link events

    /// The link to the peer is up: send this side's bitmap and state; the decision follows when the
    /// peer's state arrives.
    public func peerConnected(_ sender: any PeerSender) {
        let (frames, work) = state.withLock { state -> ([PeerFrame], Followups) in
            state.peer = sender
            state.link = .connecting(splitBrain: state.splitBrain)
            state.peerState = nil
            state.peerBitmap = nil
            // The peer link carries no boot identity yet, so a peer whose host lost power (and
            // with it what its page cache held) cannot be told from one whose link broke: taken
            // as the latter, as before. The engine marks what the peer had not flushed when told.
            let work = step(.peerReturned(lostCache: false), in: &state)
            return (
                [.bitmap(volume: index, bytes: state.engine.bitmap.encoded()), .volumeState(volumeState(state))], work
            )
        }
        for event in perform(work) { report(event) }
        sender.send(frames)
    }

    /// The link is gone: everything the peer may not have is marked, waiting requests complete
    /// (the data is on this node), and a primary starts a new generation.
    public func peerDisconnected() -> [ReplicationEvent] {
        let (work, extentsDone) = state.withLock { state -> (Followups, WriteIntentBitmap?) in
            state.peer = nil
            // A source's finished extents leave the cache as they would have at the end.
            let extentsDone = state.resync?.extentsDone
            state.link = .connecting(splitBrain: state.splitBrain)
            state.peerState = nil
            // What the peer may not have is marked, waiting requests complete on this copy, and a
            // primary starts a new generation (the engine's rules for a lost peer).
            let work = step(.disconnected, leaseValid: lease.holds, in: &state)
            return (work, extentsDone)
        }
        if let extentsDone { dropCachedExtentsLater(extentsDone) }
        return [ReplicationEvent(description: "\(configuration.name): peer disconnected")] + perform(work)
    }

    /// Handles one frame from the peer for this volume; returns what is worth logging.
    public func receive(_ frame: PeerFrame) -> [ReplicationEvent] {
        switch frame {
        case .volumeState(let peerState):
            return onPeerState(peerState)
        case .bitmap(_, let bytes):
            let bitmap = WriteIntentBitmap.decode(bytes, volumeBytes: store.sizeBytes)
            state.withLock { $0.peerBitmap = bitmap }
            return bitmap == nil
                ? [ReplicationEvent(description: "\(configuration.name): peer sent an unreadable bitmap")] : []
        case .data(let write):
            return applyReplicated(write)
        case .ack(let ack):
            return onAck(ack)
        case .flush(_, let sequence):
            return perform(state.withLock { step(.peerFlush(sequence: sequence), in: &$0) })
        case .resyncData(let write):
            return applyResync(write)
        case .resyncDone(_, let generations):
            return onResyncDone(generations)
        case .verifyRequest(let request):
            onVerifyRequest(request)
            return []
        case .verifyReply(_, let sequence, let equal):
            return onVerifyReply(sequence: sequence, equal: equal)
        case .hello, .authenticate, .welcome, .ping, .pong, .document:
            preconditionFailure("link frame \(frame) routed to volume \(configuration.name)")
        }
    }

    // MARK: Deciding on connect

    private func onPeerState(_ peerState: PeerVolumeState) -> [ReplicationEvent] {
        let (outcome, peer) = state.withLock { state -> (PeerPairing.Outcome, PeerPairing.Side) in
            let peer = pairingSide(of: peerState)
            let outcome = PeerPairing.decide(
                local: pairingSide(state), peer: peer, circumstances: pairingCircumstances(state))
            if case .refuse = outcome { return (outcome, peer) }
            state.peerState = peerState
            state.knownPeerEpoch = max(state.knownPeerEpoch, peerState.epoch)
            return (outcome, peer)
        }
        return act(on: outcome, peer: peer)
    }

    /// This node's side of the volume, for `PeerPairing`. Under the lock.
    func pairingSide(_ state: State) -> PeerPairing.Side {
        PeerPairing.Side(
            name: configuration.name, sizeBytes: store.sizeBytes, replicationProtocol: configuration.protocol.rawValue,
            generations: state.generations, role: state.role, disk: state.disk,
            markedBytes: state.engine.bitmap.dirtyBytes, epoch: state.epoch)
    }

    /// Generations as the peer link carries them: current, bitmap, then up to two of history.
    static func generations(fromWire values: [UInt64]) -> DataGenerations {
        DataGenerations(
            current: values.first ?? 0, bitmap: values.dropFirst().first ?? 0,
            history: Array(values.dropFirst(2).filter { $0 != 0 }.prefix(2)))
    }

    /// The peer's side as its state frame tells it.
    func pairingSide(of peer: PeerVolumeState) -> PeerPairing.Side {
        PeerPairing.Side(
            name: peer.name, sizeBytes: peer.sizeBytes, replicationProtocol: peer.replicationProtocol,
            generations: Self.generations(fromWire: peer.generations),
            role: peer.role, disk: peer.diskState, markedBytes: peer.outOfSyncBytes, epoch: peer.epoch)
    }

    func pairingCircumstances(_ state: State) -> PeerPairing.Circumstances {
        PeerPairing.Circumstances(
            resyncing: state.resync != nil, preferredInTies: preferredInTies,
            discardLocal: state.discardLocal, policy: configuration.splitBrainPolicy)
    }

    /// Carries out what `PeerPairing` decided.
    private func act(on outcome: PeerPairing.Outcome, peer: PeerPairing.Side) -> [ReplicationEvent] {
        switch outcome {
        case .refuse(let differences):
            state.withLock { $0.link = .standAlone(splitBrain: $0.splitBrain) }
            report(event("not replicating: \(differences.joined(separator: "; ")) (the two nodes' configs must agree)"))
            return []
        case .keepResyncing:
            return []
        case .connect(let awaitingSource, let clearsOutdated):
            let changed = state.withLock { state -> Bool in
                if clearsOutdated { state.disk = .upToDate }
                guard case .connecting = state.link else { return false }
                state.link = .connected
                return true
            }
            if clearsOutdated {
                report(event("the same data as the peer's up-to-date copy: this copy is no longer outdated"))
                if let error = persistMetadata() { report(event("\(error)")) }
            }
            guard changed else { return [] }
            return [
                event("connected, \(awaitingSource ? "waiting for a primary to become the initial source" : "in sync")")
            ]
        case .resyncSource(let full):
            return startResyncSource(full: full, unite: true)
        case .resyncTarget:
            return becomeResyncTarget()
        case .splitBrain(let found):
            return onSplitBrain(found)
        case .unrelated:
            state.withLock { $0.link = .standAlone(splitBrain: nil) }
            return [event("the peer's copy shares no history with this one: not replicating")]
        }
    }

    private func onSplitBrain(_ found: PeerPairing.SplitBrain) -> [ReplicationEvent] {
        let report = SplitBrainReport(
            localChangedBytes: found.localChangedBytes, peerChangedBytes: found.peerChangedBytes,
            resolvable: found.resolvable)
        let said = event(
            "split brain: this node changed \(found.localChangedBytes) bytes, the peer \(found.peerChangedBytes) bytes")
        switch found.resolution {
        case .leftForAdministrator:
            state.withLock { $0.link = .standAlone(splitBrain: report) }
            return [
                said,
                event("split brain left for an administrator (policy \(configuration.splitBrainPolicy.rawValue))"),
            ]
        case .discardLocal:
            return [said, event("discarding this node's \(found.localChangedBytes) changed bytes")]
                + becomeResyncTarget()
        case .discardPeer(let full):
            return [said, event("discarding the peer's \(found.peerChangedBytes) changed bytes")]
                + startResyncSource(full: full, unite: true)
        }
    }

    /// Drops this node's changes in a split brain: the next decision makes it the resync target.
    /// Returns the diverged byte counts recorded before anything is dropped.
    public func resolveSplitBrain() throws(RoleError) -> SplitBrainReport {
        let (report, link, frames, settled) = try state.withLock { state throws(RoleError) in
            let refusal = PeerPairing.refusalToDiscardLocal(
                volume: configuration.name, inSplitBrain: state.splitBrain != nil, role: state.role,
                disk: state.disk, peerDisk: state.peerState?.diskState)
            guard refusal == nil, let report = state.splitBrain else {
                throw RoleError(description: refusal ?? "\(configuration.name) is not in split brain")
            }
            state.discardLocal = true
            state.disk = .outdated
            state.link = .connecting(splitBrain: report)
            let settled = state.peerState.map { peerState in
                PeerPairing.splitBrain(
                    local: pairingSide(state), peer: pairingSide(of: peerState), resolvable: report.resolvable,
                    circumstances: pairingCircumstances(state))
            }
            return (report, state.peer, [PeerFrame.volumeState(volumeState(state))], settled)
        }
        link?.send(frames)
        if let settled {
            for event in onSplitBrain(settled) { self.report(event) }
        }
        return report
    }

    // MARK: Resync

    func startResyncSource(full: Bool, unite: Bool) -> [ReplicationEvent] {
        let (total, work) = state.withLock { state -> (UInt64, Followups) in
            state.link = .syncSource(
                ResyncState(
                    progress: ResyncProgress(source: .local, totalBytes: 0, doneBytes: 0, startedAt: clock.now())))
            let start = ReplicationEngine.Input.startResyncSource(
                full: full, peerBitmap: unite ? state.peerBitmap : nil, pacer: newPacer())
            let work = step(start, in: &state)
            return (state.engine.resyncSource?.totalBytes ?? 0, work)
        }
        let started = event("resync as source: \(Units.formatByteCount(total)) to send\(full ? " (full)" : "")")
        return [started] + perform(work)
    }

    private func becomeResyncTarget() -> [ReplicationEvent] {
        let (peer, frames) = state.withLock { state -> ((any PeerSender)?, [PeerFrame]) in
            state.disk = .inconsistent
            state.link = .syncTarget(
                ResyncState(
                    progress: ResyncProgress(source: .peer, totalBytes: 0, doneBytes: 0, startedAt: clock.now())))
            return (state.peer, [.volumeState(volumeState(state))])
        }
        // Durable first: a target that restarts mid-resync must know it is not a source.
        let error = persistMetadata()
        // The source decides from this state: an inconsistent peer is always a target.
        peer?.send(frames)
        if let error { return [event("\(error)")] }
        return [event("resync as target: this copy is inconsistent until the resync ends")]
    }

    /// Sends resync blocks up to the window (the engine's cursor and pacer decide which and when).
    /// A block is queued under the lock and its bytes are read from the local copy when it leaves,
    /// so a client write to the same region is either in what is read or queued after it: the
    /// target never ends with older data than the source.
    func pumpResync() -> [ReplicationEvent] {
        feed(.pump(now: clock.sinceOrigin(), lastClientWrite: lastClientWriteTime))
    }

    /// When a client last wrote, after the clock's origin; `nil`: never.
    var lastClientWriteTime: Duration? {
        let last = lastClientWrite.load(ordering: .relaxed)
        return last == 0 ? nil : .nanoseconds(last)
    }

    /// The engine's resync as source ended, with these counts: the generations say so, the peer
    /// hears it, and the record moves to `lastResync`. Under the lock; returns the extents done.
    func finishResyncSource(totalBytes: UInt64, doneBytes: UInt64, _ state: inout State) -> WriteIntentBitmap? {
        guard var progress = state.resync?.progress else { return nil }
        let extentsDone = state.resync?.extentsDone
        progress.totalBytes = totalBytes
        progress.doneBytes = doneBytes
        progress.stalled = nil
        progress.finishedAt = clock.now()
        state.lastResync = progress
        state.generations = state.generations.afterResyncAsSource()
        state.link = .connected
        let generations = state.generations
        state.peer?.send([
            .resyncDone(volume: index, generations: [generations.current, generations.bitmap] + generations.history)
        ])
        return extentsDone
    }

    /// After `finishResyncSource`, with the lock released: the cache, the files, the log line.
    func resyncFinished(extentsDone: WriteIntentBitmap?) -> [ReplicationEvent] {
        if let extentsDone { dropCachedExtentsLater(extentsDone) }
        let errors = [persistBitmap(), persistMetadata()].compactMap { $0 }
        let last = state.withLock { $0.lastResync }
        let bytes = last?.doneBytes ?? 0
        let took = last.flatMap { progress in progress.finishedAt.map { progress.startedAt.duration(to: $0) } }
        let moved = bytes < 1024 ? "\(bytes) bytes" : "\(Units.formatByteCount(bytes)) (\(bytes) bytes)"
        return [event("resync finished: \(moved)\(took.map { Self.rate(bytes, $0) } ?? "")")]
            + errors.map { event("\($0)") }
    }

    /// A resync block for `range` reached the peer: when its cache extent has nothing marked left,
    /// the extent done before it may leave the cache (returned). Under the lock.
    func extentToDrop(after range: Range<UInt64>, in state: inout State) -> Range<UInt64>? {
        guard var resync = state.resync else { return nil }
        defer { state.link.updateResync { $0 = resync } }
        let extent = cacheExtent(containing: range.lowerBound)
        guard state.engine.bitmap.isClear(overlapping: extent), resync.extentToDrop != extent else { return nil }
        let drop = resync.extentToDrop
        resync.extentToDrop = extent
        if resync.extentsDone == nil {
            resync.extentsDone = WriteIntentBitmap(volumeBytes: store.sizeBytes, regionBytes: Self.cacheExtentBytes)
        }
        resync.extentsDone?.mark(offset: extent.lowerBound, length: 1)
        return drop
    }

    /// " in 0.601 s, 426 MiB/s": a resync's time and rate for the log and the journal.
    static func rate(_ bytes: UInt64, _ took: Duration) -> String {
        let microseconds = took.components.seconds * 1_000_000 + took.components.attoseconds / 1_000_000_000_000
        let milliseconds = (microseconds + 500) / 1000
        let fraction = String(milliseconds % 1000)
        let perSecond = UInt64(Double(bytes) * 1_000_000 / Double(max(1, microseconds)))
        return " in \(milliseconds / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction) s, "
            + "\(Units.formatByteCount(perSecond))/s"
    }

    /// A pacer for a resync starting now, at the configured rates.
    func newPacer() -> ResyncPacer {
        ResyncPacer(
            rate: configuration.resyncRateBytesPerSecond, minimumRate: configuration.resyncMinRateBytesPerSecond,
            now: clock.sinceOrigin())
    }

    private func applyResync(_ write: PeerWrite) -> [ReplicationEvent] {
        let (link, work, failing) = state.withLock { state in
            (state.peer, step(.resyncBlock(sequence: write.sequence), in: &state), state.peerWriteFailure != nil)
        }
        var events = perform(work)
        // Refused (this copy is not taking the peer's data now): the answer went under the lock.
        guard work.applyPeerData else { return events }
        var failed: Range<UInt64>?
        do {
            try applyLocally(write)
            events += peerWriteSucceeded(failing: failing)
        } catch {
            failed = failedRange(of: write) ?? 0..<0
            events += peerWriteFailed(error, resync: true)
        }
        // Answered on the link the block came by.
        let applied = state.withLock { state in
            if failed == nil {
                state.link.updateResync { $0.progress.doneBytes += UInt64(write.payload.count) }
                state.resyncedBytesTotal += UInt64(write.payload.count)
                if state.resyncWritten == nil {
                    state.resyncWritten = WriteIntentBitmap(
                        volumeBytes: store.sizeBytes, regionBytes: state.engine.bitmap.regionBytes)
                }
                state.resyncWritten?.mark(offset: write.offset, length: UInt64(write.payload.count))
            }
            return step(.resyncBlockApplied(sequence: write.sequence, failed: failed), link: link, in: &state)
        }
        return events + perform(applied)
    }

    /// The part of this copy a write of the peer's data should have changed, clipped to the
    /// volume; `nil` when it names none.
    private func failedRange(of write: PeerWrite) -> Range<UInt64>? {
        let zeroes = write.flags & PeerWriteFlags.zeroes != 0
        let length =
            zeroes
            ? write.payload.contiguous.getInteger(at: write.payload.contiguous.readerIndex, as: UInt64.self) ?? 0
            : UInt64(write.payload.count)
        guard length > 0, write.offset < store.sizeBytes else { return nil }
        return write.offset..<(write.offset + min(length, store.sizeBytes - write.offset))
    }

    /// Reports a failure to write the peer's data here, unless the same failure was reported last.
    private func peerWriteFailed(_ error: StorageError, resync: Bool) -> [ReplicationEvent] {
        let text = "\(error)"
        let isNew = state.withLock { state in
            defer { state.peerWriteFailure = text }
            return state.peerWriteFailure != text
        }
        guard isNew else { return [] }
        return [
            event(
                "cannot write the peer's \(resync ? "resync data" : "writes"): \(text); the peer keeps those regions "
                    + "marked and tries again")
        ]
    }

    /// After a failure was reported (`failing`, read under the lock the caller takes anyway, so a
    /// write adds none): a write of the peer's data went through again.
    private func peerWriteSucceeded(failing: Bool) -> [ReplicationEvent] {
        guard failing else { return [] }
        state.withLock { $0.peerWriteFailure = nil }
        return [event("writes of the peer's data go through again")]
    }

    private func onResyncDone(_ generations: [UInt64]) -> [ReplicationEvent] {
        guard !generations.isEmpty else {
            return [event("resync-done from the peer without generations: ignored")]
        }
        let (done, written, work) = state.withLock { state -> (ResyncProgress?, WriteIntentBitmap?, Followups) in
            let work = step(.resyncDone, in: &state)
            guard work.resyncTargetFinished else { return (nil, nil, work) }
            defer { state.resyncWritten = nil }
            state.generations = Self.generations(fromWire: generations)
            state.disk = .upToDate
            state.discardLocal = false
            var progress = state.resync?.progress
            progress?.finishedAt = clock.now()
            state.lastResync = progress
            state.link = .connected
            return (progress, state.resyncWritten, work)
        }
        // Not this copy's resync: the engine's news says it was ignored.
        guard work.resyncTargetFinished else { return perform(work) }
        let flushError: StorageError?
        do {
            try store.flush()
            flushError = nil
            // Durable, hence clean: what the resync wrote leaves the cache, as on the source.
            for range in written?.dirtyRanges ?? [] {
                store.dropCachedPages(in: range)
            }
        } catch {
            flushError = error
        }
        let errors = [flushError, persistBitmap(), persistMetadata()].compactMap { $0 }
        let cleared = perform(work)
        let (peer, frames) = state.withLock { state in (state.peer, [PeerFrame.volumeState(volumeState(state))]) }
        peer?.send(frames)
        return [event("resync finished as target: \(done?.doneBytes ?? 0) bytes received")]
            + errors.map { event("\($0)") } + cleared
    }

    // MARK: Secondary side

    private func applyReplicated(_ write: PeerWrite) -> [ReplicationEvent] {
        let (link, work, failing) = state.withLock { state in
            let input = ReplicationEngine.Input.peerWrite(
                sequence: write.sequence, epoch: write.epoch,
                fenceEpoch: max(state.peerState?.epoch ?? 0, state.fenceEpoch), flags: write.flags)
            return (state.peer, step(input, in: &state), state.peerWriteFailure != nil)
        }
        var events = perform(work)
        guard work.applyPeerData else { return events }
        do {
            try applyLocally(write)
        } catch {
            events += peerWriteFailed(error, resync: false)
            // Answered on the link the write came by; the engine marks the region.
            let failed = failedRange(of: write) ?? 0..<0
            let applied = state.withLock { state in
                step(
                    .peerWriteApplied(sequence: write.sequence, flags: write.flags, failed: failed), link: link,
                    in: &state)
            }
            return events + perform(applied)
        }
        events += peerWriteSucceeded(failing: failing)
        lastReplicatedWrite.store(max(1, Self.nanoseconds(clock.sinceOrigin())), ordering: .relaxed)
        switch ReplicationEngine.answer(toWritten: write.flags) {
        case .ack(let kind):
            link?.send([.ack(PeerAck(volume: index, sequence: write.sequence, kind: kind))])
            return events
        case .syncThenAck(let kind):
            var work = Followups()
            work.append(.sync(.forPeer(write.sequence, kind), link: link))
            return events + perform(work)
        }
    }

    private func applyLocally(_ write: PeerWrite) throws(StorageError) {
        if write.flags & PeerWriteFlags.zeroes != 0 {
            guard
                let length = write.payload.contiguous.getInteger(
                    at: write.payload.contiguous.readerIndex, as: UInt64.self),
                write.offset + length <= store.sizeBytes
            else { throw StorageError(path: store.path, operation: "replicated zeroes", reason: "malformed length") }
            try store.writeZeroes(offset: write.offset, length: length, mayDeallocate: true)
            return
        }
        guard write.offset + UInt64(write.payload.count) <= store.sizeBytes else {
            throw StorageError(path: store.path, operation: "replicated write", reason: "past the end of the volume")
        }
        var position = write.offset
        for piece in write.payload.pieces {
            try piece.withUnsafeReadableBytes { (bytes) throws(StorageError) in try store.write(bytes, at: position) }
            position += UInt64(piece.readableBytes)
        }
    }

    // MARK: Primary side

    private func onAck(_ ack: PeerAck) -> [ReplicationEvent] {
        perform(
            state.withLock { state in
                guard state.engine.awaitsResyncAck(ack.sequence) else {
                    return step(.ack(sequence: ack.sequence, ack.kind), in: &state)
                }
                let input = ReplicationEngine.Input.resyncAck(
                    sequence: ack.sequence, ack.kind, now: clock.sinceOrigin(), lastClientWrite: lastClientWriteTime)
                return step(input, in: &state)
            })
    }

    /// The line for a refused write: the first at once, then one every ten seconds at most that
    /// counts the refusals since the last.
    func refusalReport(sequence: UInt64, failed: Bool) -> [ReplicationEvent] {
        let now = clock.now()
        let earlier = state.withLock { state -> Int? in
            if let last = state.refusalReportedAt, now - last < .seconds(10) {
                state.refusalsUnreported += 1
                return nil
            }
            defer {
                state.refusalsUnreported = 0
                state.refusalReportedAt = now
            }
            return state.refusalsUnreported
        }
        guard let earlier else { return [] }
        let more = earlier > 0 ? " (and \(earlier) more refused since the last report)" : ""
        let what = failed ? "could not store" : "refused"
        return [event("peer \(what) write \(sequence)\(more); the regions are marked for resync")]
    }

    /// Drops every extent a resync source finished, a second from now: by then the sockets have
    /// let go of the pages `sendfile` gave them.
    private func dropCachedExtentsLater(_ extentsDone: WriteIntentBitmap) {
        scheduleAfter(.seconds(1)) { [store] in
            for range in extentsDone.dirtyRanges {
                store.dropCachedPages(in: range)
            }
        }
    }

    /// Resync and verify pass whole copies through the page cache and drop their pages again a
    /// cache extent at a time. The kernel caches a file in naturally aligned folios (at most 2 MiB
    /// on x86-64), and a drop leaves alone every folio that crosses its ends: an aligned 4 MiB
    /// extent holds whole folios.
    static let cacheExtentBytes: UInt64 = 4 << 20

    /// The cache extent holding `offset`, clipped to the volume.
    func cacheExtent(containing offset: UInt64) -> Range<UInt64> {
        let start = offset / Self.cacheExtentBytes * Self.cacheExtentBytes
        return start..<min(start + Self.cacheExtentBytes, store.sizeBytes)
    }

    /// Flushes the local copy for the peer; a failure is reported here, since the peer's ack
    /// carries no reason.
    func flushFailure() -> StorageError? {
        do {
            try store.flush()
            return nil
        } catch {
            report(event("flush for the peer failed, acknowledged as failed: \(error)"))
            return error
        }
    }

    func event(_ text: String) -> ReplicationEvent {
        ReplicationEvent(description: "\(configuration.name): \(text)")
    }
}
