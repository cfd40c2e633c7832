/// When one node's copy of a volume may change role or disk state, and what the change brings
/// with it (a new epoch, a new data generation). Pure: the shell gathers the facts under its lock,
/// applies the change, and stores the metadata before a client or the peer sees it.
public enum RoleRules {
    /// The facts of one copy that the rules read.
    public struct Facts: Sendable, Equatable {
        public var role: VolumeRole
        public var disk: DiskState
        public var connection: ConnectionState
        /// A peer link is up.
        public var linked: Bool
        /// The peer's role as last heard on the link now up; `nil` when none was.
        public var peerRole: VolumeRole?
        public var inSplitBrain: Bool
        /// This copy was never written as a replicated volume yet (its generation is the one it
        /// was created with).
        public var fresh: Bool
        /// The epoch this copy was last promoted in, and the highest the peer ever reported.
        public var epoch: UInt64
        public var knownPeerEpoch: UInt64
        /// Bytes marked here, and in the peer's bitmap as last heard.
        public var markedBytes: UInt64
        public var peerMarkedBytes: UInt64?

        public init(
            role: VolumeRole, disk: DiskState, connection: ConnectionState, linked: Bool, peerRole: VolumeRole?,
            inSplitBrain: Bool, fresh: Bool, epoch: UInt64, knownPeerEpoch: UInt64, markedBytes: UInt64 = 0,
            peerMarkedBytes: UInt64? = nil
        ) {
            self.markedBytes = markedBytes
            self.peerMarkedBytes = peerMarkedBytes
            self.role = role
            self.disk = disk
            self.connection = connection
            self.linked = linked
            self.peerRole = peerRole
            self.inSplitBrain = inSplitBrain
            self.fresh = fresh
            self.epoch = epoch
            self.knownPeerEpoch = knownPeerEpoch
        }
    }

    /// What a role change does.
    public enum Change: Sendable, Equatable {
        /// Nothing: the copy has that role already.
        case none
        /// Already primary: writes from now on carry `epoch` (membership's newer epoch), which the
        /// peer's voter has seen and fences with.
        case carryEpoch(UInt64)
        /// Becomes primary in `epoch`, fencing writes from before `fenceEpoch`; with `generation`
        /// a new data generation starts first.
        case promote(epoch: UInt64, fenceEpoch: UInt64?, generation: NewGeneration?)
        /// Becomes secondary.
        case demote
    }

    /// The data generation a promotion starts.
    public enum NewGeneration: Sendable, Equatable {
        /// The first one this copy has (it was never written as a replicated volume).
        case first
        /// The copy changes apart from its peer from now on: the next connection must know it.
        case independentChanges
    }

    /// What making this copy `role` does; a refusal says why. `epoch` is the epoch membership
    /// promotes in (`nil`: by hand).
    public static func change(to role: VolumeRole, epoch: UInt64?, volume: String, _ facts: Facts) -> Result<
        Change, RoleRefusal
    > {
        if role == .primary, facts.role == .primary, let epoch, epoch > facts.epoch {
            return .success(.carryEpoch(epoch))
        }
        guard role != facts.role else { return .success(.none) }
        guard role == .primary else { return .success(.demote) }
        if facts.linked, facts.peerRole == .primary {
            return .failure(
                RoleRefusal("the peer is primary for \(volume); demote it first (two primaries are never allowed)"))
        }
        guard facts.disk == .upToDate else {
            return .failure(RoleRefusal("\(volume) is \(facts.disk.rawValue) here; it cannot serve as primary"))
        }
        if facts.inSplitBrain, facts.linked {
            return .failure(RoleRefusal("\(volume) is in split brain; resolve it first"))
        }
        let apart = !facts.linked || facts.connection == .standAlone || facts.connection == .connecting
        let generation: NewGeneration? = facts.fresh ? .first : apart ? .independentChanges : nil
        let promoted = max(facts.epoch, facts.knownPeerEpoch) + 1
        return .success(
            .promote(epoch: max(promoted, epoch ?? 0), fenceEpoch: epoch, generation: generation))
    }

    /// Membership promotes this copy in a new epoch while the link still shows the peer as
    /// primary: the peer's lease has ended whatever its link says (a frozen node keeps its
    /// connection open), so the link counts as lost first. Nothing more goes to the peer until it
    /// reconnects, and its old-epoch writes are refused.
    public static func promotionEndsPeerLink(to role: VolumeRole, epoch: UInt64?, _ facts: Facts) -> Bool {
        role == .primary && epoch != nil && facts.linked && facts.peerRole == .primary
    }

    /// Quorum recorded that this copy lacks acknowledged writes. Only an up-to-date secondary
    /// apart from its peer becomes outdated: a primary's own lease decides for it, and on a
    /// connected copy the connection's decision does (a mark that arrives late, since datagrams
    /// overtake each other, must not outdate a copy that just finished its resync).
    public static func mayMarkOutdated(_ facts: Facts) -> Bool {
        facts.role == .secondary && facts.disk == .upToDate
            && (facts.connection == .connecting || facts.connection == .standAlone)
    }

    /// The voter no longer records this copy outdated (its primary said it is in sync): an
    /// outdated copy connected to that primary, nothing marked on either side, is up to date.
    public static func mayClearOutdated(_ facts: Facts) -> Bool {
        facts.disk == .outdated && facts.connection == .connected && facts.peerRole == .primary
            && facts.peerMarkedBytes == 0 && facts.markedBytes == 0
    }

    /// The administrator's `failover --force` makes an outdated copy up to date; nothing else does
    /// it by order.
    public static func mayForceUpToDate(_ facts: Facts) -> Bool { facts.disk == .outdated }
}

/// Why a role change was refused.
public struct RoleRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
