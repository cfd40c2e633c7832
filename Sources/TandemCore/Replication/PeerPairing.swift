/// What a node does for one volume when its peer's state arrives on a (re)connected link: whether
/// the two copies may pair at all, which side resyncs, and how a split brain is met. Pure: the
/// shell gathers both sides' facts under its lock and carries the outcome out.
///
/// `SyncDecision` compares the copies' histories; this adds what surrounds it: the configs must
/// agree, a resync that runs is not decided again, an outdated copy that turns out to hold the
/// up-to-date peer's data is current again, and a split brain's victim follows the administrator's
/// order first, then quorum's record, then the policy.
public enum PeerPairing {
    /// One side of the volume, as its node knows it.
    public struct Side: Sendable, Equatable {
        /// The volume's name in this side's config.
        public var name: String
        public var sizeBytes: UInt64
        /// The replication protocol this side's config names ("A", "B" or "C").
        public var replicationProtocol: String
        public var generations: DataGenerations
        public var role: VolumeRole
        public var disk: DiskState
        /// Bytes marked in this side's write-intent bitmap.
        public var markedBytes: UInt64
        /// The epoch in which this side last became primary.
        public var epoch: UInt64

        public init(
            name: String, sizeBytes: UInt64, replicationProtocol: String, generations: DataGenerations,
            role: VolumeRole,
            disk: DiskState, markedBytes: UInt64, epoch: UInt64
        ) {
            self.name = name
            self.sizeBytes = sizeBytes
            self.replicationProtocol = replicationProtocol
            self.generations = generations
            self.role = role
            self.disk = disk
            self.markedBytes = markedBytes
            self.epoch = epoch
        }
    }

    /// What only this node knows.
    public struct Circumstances: Sendable, Equatable {
        /// A resync runs already (either way): the connect decides nothing new.
        public var resyncing: Bool
        /// Wins a tie of two equal candidates for the initial source.
        public var preferredInTies: Bool
        /// An administrator ordered this copy's changes discarded.
        public var discardLocal: Bool
        public var policy: SplitBrainPolicy

        public init(resyncing: Bool, preferredInTies: Bool, discardLocal: Bool, policy: SplitBrainPolicy) {
            self.resyncing = resyncing
            self.preferredInTies = preferredInTies
            self.discardLocal = discardLocal
            self.policy = policy
        }
    }

    /// What becomes of the pair.
    public enum Outcome: Sendable, Equatable {
        /// The configs disagree: not replicating, and why (each difference).
        case refuse([String])
        /// A resync runs: nothing changes.
        case keepResyncing
        /// Connected without a resync. `awaitingSource`: neither copy is consistent yet, and the
        /// first primary becomes the initial source. `clearsOutdated`: this outdated copy holds
        /// the same data as the up-to-date peer, nothing marked on either side.
        case connect(awaitingSource: Bool, clearsOutdated: Bool)
        /// This copy is the resync's source; `full` sends every region, otherwise both bitmaps'.
        case resyncSource(full: Bool)
        /// This copy is the resync's target: it is inconsistent until the resync ends.
        case resyncTarget
        /// Both copies changed apart.
        case splitBrain(SplitBrain)
        /// The copies share no history: not replicating.
        case unrelated
    }

    /// A split brain as found on connect: what each side changed, and how it is settled.
    public struct SplitBrain: Sendable, Equatable {
        public var localChangedBytes: UInt64
        public var peerChangedBytes: UInt64
        /// Both bitmaps together cover every region either side changed: a partial resync mends it.
        public var resolvable: Bool
        public var resolution: Resolution

        public init(localChangedBytes: UInt64, peerChangedBytes: UInt64, resolvable: Bool, resolution: Resolution) {
            self.localChangedBytes = localChangedBytes
            self.peerChangedBytes = peerChangedBytes
            self.resolvable = resolvable
            self.resolution = resolution
        }
    }

    public enum Resolution: Sendable, Equatable {
        /// Stays disconnected until an administrator discards one side's changes.
        case leftForAdministrator
        /// This copy's changes go: it becomes the resync target.
        case discardLocal
        /// The peer's changes go: this copy is the source, of every region when the bitmaps do
        /// not cover the divergence.
        case discardPeer(full: Bool)
    }

    /// The whole decision on the peer's state arriving.
    public static func decide(local: Side, peer: Side, circumstances: Circumstances) -> Outcome {
        let differences = [
            peer.name == local.name
                ? nil : "the peer's config has volume \"\(peer.name)\" in this place, this node's \"\(local.name)\"",
            peer.sizeBytes == local.sizeBytes
                ? nil : "the peer's copy is \(peer.sizeBytes) bytes, this one \(local.sizeBytes)",
            peer.replicationProtocol == local.replicationProtocol
                ? nil
                : "the peer's config replicates with protocol \(peer.replicationProtocol), "
                    + "this node's with \(local.replicationProtocol)",
        ].compactMap { $0 }
        guard differences.isEmpty else { return .refuse(differences) }
        guard !circumstances.resyncing else { return .keepResyncing }
        let marks = Marks(
            localDirty: local.markedBytes > 0, peerDirty: peer.markedBytes > 0, localPrimary: local.role == .primary,
            peerPrimary: peer.role == .primary, localPreferred: circumstances.preferredInTies)
        let decision = SyncDecision.decide(
            local: local.generations, peer: peer.generations, localInconsistent: local.disk == .inconsistent,
            peerInconsistent: peer.disk == .inconsistent, marks: marks)
        switch decision {
        case .noSync, .awaitingInitialSource:
            let clearsOutdated =
                decision == .noSync && local.disk == .outdated && local.markedBytes == 0 && peer.disk == .upToDate
                && peer.markedBytes == 0
            return .connect(awaitingSource: decision == .awaitingInitialSource, clearsOutdated: clearsOutdated)
        case .partialResync(let source):
            return source == .local ? .resyncSource(full: false) : .resyncTarget
        case .fullResync(let source):
            return source == .local ? .resyncSource(full: true) : .resyncTarget
        case .splitBrain(let bitmapsCover):
            return .splitBrain(
                splitBrain(local: local, peer: peer, resolvable: bitmapsCover, circumstances: circumstances))
        case .unrelated:
            return .unrelated
        }
    }

    /// How a split brain is met: the administrator's order to discard this copy first; then a
    /// copy that quorum recorded outdated (it lacks acknowledged writes) never survives an
    /// up-to-date one; then the policy, which never discards a serving primary's data.
    public static func splitBrain(
        local: Side, peer: Side, resolvable: Bool, circumstances: Circumstances
    ) -> SplitBrain {
        let resolution: Resolution
        if circumstances.discardLocal {
            resolution = .discardLocal
        } else if local.disk == .outdated, peer.disk != .outdated {
            resolution = .discardLocal
        } else if peer.disk == .outdated, local.disk != .outdated {
            resolution = .discardPeer(full: !resolvable)
        } else {
            let victim = circumstances.policy.victim(
                local: .init(
                    changedBytes: local.markedBytes, promotedEpoch: local.epoch, isPrimary: local.role == .primary),
                peer: .init(changedBytes: peer.markedBytes, promotedEpoch: peer.epoch, isPrimary: peer.role == .primary)
            )
            switch victim {
            case nil: resolution = .leftForAdministrator
            case .local?: resolution = .discardLocal
            case .peer?: resolution = .discardPeer(full: !resolvable)
            }
        }
        return SplitBrain(
            localChangedBytes: local.markedBytes, peerChangedBytes: peer.markedBytes, resolvable: resolvable,
            resolution: resolution)
    }

    /// Why an administrator may not discard this copy's changes now; `nil` when they may.
    /// `peerDisk` is the peer's disk state as last heard, if it was.
    public static func refusalToDiscardLocal(
        volume: String, inSplitBrain: Bool, role: VolumeRole, disk: DiskState, peerDisk: DiskState?
    ) -> String? {
        guard inSplitBrain else { return "\(volume) is not in split brain" }
        guard role == .secondary else {
            return "\(volume) is primary here; make it secondary before discarding its data"
        }
        if disk != .outdated, peerDisk == .outdated {
            return "the peer's copy of \(volume) is outdated (quorum recorded that it lacks acknowledged writes); "
                + "discarding this node's changes would keep it. Run the command on the peer instead"
        }
        return nil
    }
}
