/// What a voter must remember across restarts (written atomically before it answers).
public struct VoterRecord: Sendable, Equatable {
    /// The highest epoch this voter gave its vote in, or accepted a lease for.
    public var epoch: UInt64 = 0
    /// The node it went to.
    public var holder: String? = nil
    /// Nodes whose data is known to be missing writes the primary acknowledged.
    public var outdated: Set<String> = []

    public init(epoch: UInt64 = 0, holder: String? = nil, outdated: Set<String> = []) {
        self.epoch = epoch
        self.holder = holder
        self.outdated = outdated
    }
}

/// One of the three votes (node A, node B, the witness).
///
/// A voter gives its vote to at most one node per epoch, and while it has promised a lease to a
/// node it votes for no other. A promise lasts `leaseTime` from the moment the voter answered;
/// the primary counts its lease from the moment it asked, and shorter, so its lease always ends
/// before the promises that hold it. After a start the voter stays quiet for one lease time:
/// it may have forgotten a promise. Pure: time is passed in.
public struct Voter: Sendable, Equatable {
    /// This voter's name.
    public let name: String
    /// The two nodes of the cluster.
    public let nodes: [String]
    /// How long a promise lasts.
    public let leaseTime: Duration
    /// The durable part.
    public private(set) var record: VoterRecord
    /// The lease this voter promised: to whom, for which epoch, until when.
    public private(set) var promise: (holder: String, epoch: UInt64, until: Duration)?
    /// The last holder that gave its lease up, and the epoch it gave up.
    private var released: (holder: String, epoch: UInt64)?
    /// The newest lease request that set the outdated mark: by whom, in which epoch, its id.
    private var newestRenewal: (holder: String, epoch: UInt64, id: UInt64)?
    /// No vote before this time.
    public let quietUntil: Duration
    /// Whether this voter also records which node is outdated (the witness does; a node records
    /// only itself).
    public let tracksOutdated: Bool

    public static func == (left: Voter, right: Voter) -> Bool {
        left.name == right.name && left.record == right.record && left.promise?.holder == right.promise?.holder
            && left.promise?.until == right.promise?.until && left.quietUntil == right.quietUntil
    }

    /// A voter starting at `now` with what it had persisted.
    public init(name: String, nodes: [String], leaseTime: Duration, record: VoterRecord, now: Duration) {
        self.name = name
        self.nodes = nodes
        self.leaseTime = leaseTime
        self.record = record
        self.quietUntil = now + leaseTime
        self.tracksOutdated = !nodes.contains(name)
    }

    /// Whether a promise to someone other than `node` still holds.
    public func promisedToAnother(than node: String, at now: Duration) -> String? {
        guard let promise, promise.holder != node, promise.until > now else { return nil }
        return promise.holder
    }

    /// The answer to a vote request; `record` may have changed and must be persisted before the
    /// answer leaves. `candidateFit` is the owning node's own judgement (always true for the witness).
    public mutating func vote(
        _ request: VoteRequest, at now: Duration, candidateFit: (ok: Bool, reason: String) = (true, "")
    ) -> VoteReply {
        func refuse(_ reason: String) -> VoteReply {
            VoteReply(
                sender: name, epoch: request.epoch, id: request.id, granted: false, knownEpoch: record.epoch,
                reason: reason, preVote: request.preVote)
        }
        guard nodes.contains(request.sender) else { return refuse("\(request.sender) is not a node of this cluster") }
        if now < quietUntil { return refuse("\(name) started less than a lease time ago") }
        if request.epoch < record.epoch || (request.epoch == record.epoch && record.holder != request.sender) {
            return refuse(
                "epoch \(request.epoch) is not newer than epoch \(record.epoch) of \(record.holder ?? "nobody")")
        }
        if let holder = promisedToAnother(than: request.sender, at: now) {
            return refuse("the lease of \(holder) is still valid")
        }
        if record.outdated.contains(request.sender) {
            return refuse("the data of \(request.sender) is outdated")
        }
        guard candidateFit.ok else { return refuse(candidateFit.reason) }
        if request.preVote {
            // It would be granted; nothing is recorded or promised.
            return VoteReply(
                sender: name, epoch: request.epoch, id: request.id, granted: true, knownEpoch: record.epoch, reason: "",
                preVote: true)
        }
        record.epoch = request.epoch
        record.holder = request.sender
        promise = (request.sender, request.epoch, now + leaseTime)
        return VoteReply(
            sender: name, epoch: request.epoch, id: request.id, granted: true, knownEpoch: record.epoch, reason: "")
    }

    /// The answer to a lease request; `record` may have changed and must be persisted first.
    public mutating func renew(_ request: LeaseRequest, at now: Duration) -> LeaseReply {
        func reply(granted: Bool, recorded: Bool = false) -> LeaseReply {
            LeaseReply(
                sender: name, epoch: request.epoch, id: request.id, granted: granted, knownEpoch: record.epoch,
                peerOutdatedRecorded: recorded)
        }
        guard nodes.contains(request.sender) else { return reply(granted: false) }
        if let released, released.holder == request.sender, request.epoch <= released.epoch {
            // A renewal that was overtaken by its holder's release: the lease is over.
            return reply(granted: false)
        }
        if request.epoch < record.epoch || (request.epoch == record.epoch && record.holder != request.sender) {
            return reply(granted: false)
        }
        if request.epoch > record.epoch {
            // The sender won this epoch with the two other votes: whatever this voter promised
            // before has expired at those voters, so it is void here too.
            record.epoch = request.epoch
            record.holder = request.sender
        }
        promise = (request.sender, request.epoch, now + leaseTime)
        let peer = nodes.first { $0 != request.sender }
        var recorded = false
        if let peer, tracksOutdated || peer == name {
            // Lease requests are datagrams over every link and may arrive out of order: only the
            // newest sets the mark, lest an older "in sync" undo a newer "not in sync" while the
            // holder completes writes its peer lacks.
            let newest =
                newestRenewal.map {
                    $0.holder != request.sender || ($0.epoch, $0.id) < (request.epoch, request.id)
                } ?? true
            if newest {
                newestRenewal = (request.sender, request.epoch, request.id)
                if request.peerInSync { record.outdated.remove(peer) } else { record.outdated.insert(peer) }
            }
            recorded = !request.peerInSync && record.outdated.contains(peer)
        }
        return reply(granted: true, recorded: recorded)
    }

    /// Takes `epoch` for this voter's own node without a vote of the others (a lone node, or a
    /// promotion the administrator forced).
    public mutating func claim(epoch: UInt64) {
        record.epoch = max(record.epoch, epoch)
        record.holder = name
        promise = nil
    }

    /// The holder stepped down: its promise ends now. With `peerInSync` (sent once the holder's
    /// last writes are done, while no later epoch exists) its peer is no longer outdated: the
    /// peer can take over after a planned handover even if no lease renewal said so in time.
    public mutating func release(sender: String, epoch: UInt64, peerInSync: Bool = false) {
        if peerInSync, record.holder == sender, record.epoch == epoch, let peer = nodes.first(where: { $0 != sender }),
            tracksOutdated || peer == name
        {
            record.outdated.remove(peer)
        }
        released = (sender, max(epoch, released?.holder == sender ? released!.epoch : 0))
        guard let promise, promise.holder == sender, promise.epoch <= epoch else { return }
        self.promise = nil
    }

    /// Whether `node` is recorded as outdated.
    public func isOutdated(_ node: String) -> Bool { record.outdated.contains(node) }

    /// Records whether `node` lacks writes a primary acknowledged.
    public mutating func setOutdated(_ node: String, _ outdated: Bool) {
        if outdated {
            record.outdated.insert(node)
        } else {
            record.outdated.remove(node)
        }
    }
}
