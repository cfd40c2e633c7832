/// Data-generation identifiers of one copy of a volume, as DRBD keeps them.
///
/// `current` names the data as it is now. A node that writes while its peer is away first moves
/// `current` into `bitmap` and takes a fresh `current`: from then on its write-intent bitmap names
/// every region changed since the peer last had the same data. `history` keeps the two generations
/// before that, newest first. Comparing two nodes' generations on connect says which copy is newer,
/// whether the bitmap suffices to bring the other up to date, or whether both changed (split brain).
public struct DataGenerations: Sendable, Equatable, CustomStringConvertible {
    /// The generation of a volume that has never held data: neither copy is a source yet.
    public static let created: UInt64 = 4

    /// The data as it is now.
    public var current: UInt64
    /// The generation the bitmap tracks changes from (0 when not tracking).
    public var bitmap: UInt64
    /// Older generations, newest first.
    public var history: [UInt64]

    /// Creates generations; `history` keeps at most two entries.
    public init(current: UInt64, bitmap: UInt64 = 0, history: [UInt64] = []) {
        precondition(history.count <= 2, "at most two history generations, got \(history.count)")
        self.current = current
        self.bitmap = bitmap
        self.history = history
    }

    /// A volume that was just created.
    public static var fresh: DataGenerations { DataGenerations(current: created) }

    /// `current:bitmap:history0:history1` in hex, as status output shows it.
    public var description: String {
        let parts = [current, bitmap] + history + Array(repeating: 0, count: 2 - history.count)
        return parts.map { String($0, radix: 16, uppercase: true) }.joined(separator: ":")
    }

    /// The copy starts changing without its peer: track changes from the current generation.
    ///
    /// Called when a primary loses its peer, or a node is made primary while disconnected. If the
    /// bitmap already tracks an older generation it keeps it, so no change is ever forgotten.
    public func startingIndependentChanges(newCurrent: UInt64) -> DataGenerations {
        precondition(newCurrent != current && newCurrent > DataGenerations.created, "new generation must be fresh")
        var next = self
        if next.bitmap == 0 { next.bitmap = current }
        next.current = newCurrent
        return next
    }

    /// This copy was the source of a completed resync: the bitmap's generation becomes history.
    public func afterResyncAsSource() -> DataGenerations {
        guard bitmap != 0 else { return self }
        return DataGenerations(current: current, bitmap: 0, history: Array(([bitmap] + history).prefix(2)))
    }

    /// This copy was the target of a completed resync from `source`: it now holds the source's data.
    public func afterResyncAsTarget(from source: DataGenerations) -> DataGenerations {
        source.afterResyncAsSource()
    }
}

/// Which side of a connection.
public enum PeerSide: Sendable, Equatable {
    case local
    case peer

    /// The other side.
    public var other: PeerSide { self == .local ? .peer : .local }
}

/// What two connected nodes do about a volume, decided from their generations alone.
public enum SyncDecision: Sendable, Equatable {
    /// Both copies hold the same data.
    case noSync
    /// Copy the regions named in `source`'s bitmap to the other side.
    case partialResync(source: PeerSide)
    /// Copy every block from `source`: the other side is older than any bitmap covers.
    case fullResync(source: PeerSide)
    /// Both copies changed on their own since they last agreed; `bitmapsCover` says whether the two
    /// bitmaps together name every diverged region (a partial resync can then repair it).
    case splitBrain(bitmapsCover: Bool)
    /// The copies share no history: they are not the same volume.
    case unrelated
    /// Neither copy has held data yet; an administrator picks the source by promoting one node.
    case awaitingInitialSource

    /// Decides what to do on connect. The function is symmetric: the peer, deciding with the
    /// arguments swapped, reaches the mirrored decision.
    ///
    /// `localInconsistent` and `peerInconsistent` say that a copy is known to be partially written
    /// (an interrupted resync target); such a copy can never be a source, and its resync resumes
    /// from the source's bitmap when the generations allow.
    ///
    /// With equal generations, marked regions can only come from a crash (the activity log of a
    /// primary that died with writes in flight) or from writes the peer refused; those regions are
    /// copied from the current primary, else from the side with nothing marked, else from the side
    /// the caller prefers (`localPreferred` must be the opposite on the peer, such as "my name sorts
    /// first").
    public static func decide(
        local: DataGenerations, peer: DataGenerations, localInconsistent: Bool = false, peerInconsistent: Bool = false,
        marks: Marks = Marks()
    ) -> SyncDecision {
        switch (localInconsistent, peerInconsistent) {
        case (true, true):
            return .unrelated
        case (true, false), (false, true):
            // An interrupted resync resumes from the source's bitmap when the generations still say
            // so; anything else starts over with a full resync from the consistent side.
            let source: PeerSide = localInconsistent ? .peer : .local
            let plain = decide(local: local, peer: peer, marks: marks)
            return plain == .partialResync(source: source) ? plain : .fullResync(source: source)
        case (false, false):
            break
        }
        if local.current == peer.current {
            if local.current == DataGenerations.created { return .awaitingInitialSource }
            guard marks.localDirty || marks.peerDirty else { return .noSync }
            if marks.localPrimary != marks.peerPrimary {
                return .partialResync(source: marks.localPrimary ? .local : .peer)
            }
            if marks.localDirty != marks.peerDirty { return .partialResync(source: marks.localDirty ? .peer : .local) }
            return .partialResync(source: marks.localPreferred ? .local : .peer)
        }
        if peer.current == DataGenerations.created { return .fullResync(source: .local) }
        if local.current == DataGenerations.created { return .fullResync(source: .peer) }
        if local.bitmap != 0, peer.current == local.bitmap { return .partialResync(source: .local) }
        if peer.bitmap != 0, local.current == peer.bitmap { return .partialResync(source: .peer) }
        if local.history.contains(peer.current) { return .fullResync(source: .local) }
        if peer.history.contains(local.current) { return .fullResync(source: .peer) }
        if local.bitmap != 0, local.bitmap == peer.bitmap { return .splitBrain(bitmapsCover: true) }
        let sharedHistory = Set(local.history + [local.bitmap]).subtracting([0])
            .intersection(Set(peer.history + [peer.bitmap]))
        return sharedHistory.isEmpty ? .unrelated : .splitBrain(bitmapsCover: false)
    }
}

/// What each side has marked and which is primary, for copies whose generations are equal.
public struct Marks: Sendable, Equatable {
    public var localDirty: Bool
    public var peerDirty: Bool
    public var localPrimary: Bool
    public var peerPrimary: Bool
    public var localPreferred: Bool

    /// Creates marks; the defaults describe two clean secondaries.
    public init(
        localDirty: Bool = false, peerDirty: Bool = false, localPrimary: Bool = false, peerPrimary: Bool = false,
        localPreferred: Bool = false
    ) {
        self.localDirty = localDirty
        self.peerDirty = peerDirty
        self.localPrimary = localPrimary
        self.peerPrimary = peerPrimary
        self.localPreferred = localPreferred
    }

    /// The same facts seen from the peer.
    public var mirrored: Marks {
        Marks(
            localDirty: peerDirty, peerDirty: localDirty, localPrimary: peerPrimary, peerPrimary: localPrimary,
            localPreferred: !localPreferred)
    }
}

/// How a volume settles a split brain without an administrator.
public enum SplitBrainPolicy: String, Sendable, Equatable, CaseIterable {
    /// Stay disconnected and report it (the default): nothing is discarded without a person.
    case disconnect
    /// If only one side wrote anything, its changes win.
    case discardZeroChanges = "discard-zero-changes"
    /// The side that became primary last loses its changes.
    case discardYoungerPrimary = "discard-younger-primary"
    /// The side with fewer changed bytes loses its changes; a tie disconnects.
    case discardLeastChanges = "discard-least-changes"

    /// What one side knows of its own divergence.
    public struct Divergence: Sendable, Equatable {
        /// Bytes marked in this side's bitmap since the sides last agreed.
        public var changedBytes: UInt64
        /// The epoch in which this side last became primary (0 if it never did while apart).
        public var promotedEpoch: UInt64
        /// Whether this side is serving the volume as primary now.
        public var isPrimary: Bool

        /// Creates a divergence.
        public init(changedBytes: UInt64, promotedEpoch: UInt64, isPrimary: Bool = false) {
            self.changedBytes = changedBytes
            self.promotedEpoch = promotedEpoch
            self.isPrimary = isPrimary
        }
    }

    /// Which side's changes are discarded, or `nil` to stay disconnected. No policy discards the
    /// data of a side that is serving it as primary.
    public func victim(local: Divergence, peer: Divergence) -> PeerSide? {
        guard let side = chosenVictim(local: local, peer: peer) else { return nil }
        return (side == .local ? local : peer).isPrimary ? nil : side
    }

    private func chosenVictim(local: Divergence, peer: Divergence) -> PeerSide? {
        switch self {
        case .disconnect:
            return nil
        case .discardZeroChanges:
            switch (local.changedBytes == 0, peer.changedBytes == 0) {
            case (true, false): return .local
            case (false, true): return .peer
            case (true, true), (false, false): return nil
            }
        case .discardYoungerPrimary:
            guard local.promotedEpoch != peer.promotedEpoch else { return nil }
            return local.promotedEpoch > peer.promotedEpoch ? .local : .peer
        case .discardLeastChanges:
            guard local.changedBytes != peer.changedBytes else { return nil }
            return local.changedBytes < peer.changedBytes ? .local : .peer
        }
    }
}
