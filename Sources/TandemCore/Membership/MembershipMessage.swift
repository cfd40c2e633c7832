/// What one node's administrator asks of the peer over the membership links.
public enum ModeRequest: String, Sendable, Equatable, CaseIterable {
    /// `tandem node standby PEER`: hand the primary role over and stay out of it.
    case standby
    /// `tandem node online PEER`: take part again.
    case online
    /// `tandem start`: stop now, and come back once the asking node is primary.
    case start
    /// `tandem stop`: stop and lock while the asking node stops too.
    case stop
    /// The stop is complete: return to default mode, still stopped.
    case unlock
}

/// What nodes and the witness say to each other about who is primary.
///
/// Every message names its sender. Heartbeats go between the two nodes on every link; lease and
/// vote traffic goes to every voter (the peer on every link, and the witness).
public enum MembershipMessage: Sendable, Equatable {
    case heartbeat(Heartbeat)
    case leaseRequest(LeaseRequest)
    case leaseReply(LeaseReply)
    case voteRequest(VoteRequest)
    case voteReply(VoteReply)
    /// A primary that stepped down of its own will: voters drop their promise to it at once.
    /// The holder of `epoch` stepped down. With `peerInSync`, sent once its last writes are done:
    /// the peer holds the same data, so it is no longer outdated.
    case release(sender: String, epoch: UInt64, peerInSync: Bool)
    /// An administrator's command carried to the peer (`tandem start`, `tandem stop`, `tandem
    /// node standby|online PEER`).
    case modeRequest(sender: String, request: ModeRequest)

    /// Who sent it.
    public var sender: String {
        switch self {
        case .heartbeat(let message): return message.sender
        case .leaseRequest(let message): return message.sender
        case .leaseReply(let message): return message.sender
        case .voteRequest(let message): return message.sender
        case .voteReply(let message): return message.sender
        case .release(let sender, _, _): return sender
        case .modeRequest(let sender, _): return sender
        }
    }
}

/// A node's periodic word to its peer: alive, and in which state.
public struct Heartbeat: Sendable, Equatable {
    public var sender: String
    /// The highest epoch the sender knows.
    public var epoch: UInt64
    /// Whether the sender is primary (and holds a lease).
    public var isPrimary: Bool
    /// Whether the sender is in standby (takes no primary role by choice).
    public var standby: Bool
    /// Whether the sender's data could serve as primary (up to date, no resync or split brain pending).
    public var dataReady: Bool
    /// Whether the sender is connected to its peer with every volume in sync.
    public var peerInSync: Bool
    /// The sender's administrator mode.
    public var mode: NodeMode

    public init(
        sender: String, epoch: UInt64, isPrimary: Bool, standby: Bool, dataReady: Bool, peerInSync: Bool,
        mode: NodeMode = .default
    ) {
        self.mode = mode
        self.sender = sender
        self.epoch = epoch
        self.isPrimary = isPrimary
        self.standby = standby
        self.dataReady = dataReady
        self.peerInSync = peerInSync
    }
}

/// A primary asks a voter to extend its lease for `epoch`.
public struct LeaseRequest: Sendable, Equatable {
    public var sender: String
    public var epoch: UInt64
    /// Matches the reply to the request (and so to the time it was sent).
    public var id: UInt64
    /// Whether the primary's peer has every write: when false, the voter records the peer as outdated.
    public var peerInSync: Bool

    public init(sender: String, epoch: UInt64, id: UInt64, peerInSync: Bool) {
        self.sender = sender
        self.epoch = epoch
        self.id = id
        self.peerInSync = peerInSync
    }
}

/// A voter's answer to a `LeaseRequest`.
public struct LeaseReply: Sendable, Equatable {
    public var sender: String
    public var epoch: UInt64
    public var id: UInt64
    public var granted: Bool
    /// The highest epoch the voter knows; above `epoch`, the requester has been replaced.
    public var knownEpoch: UInt64
    /// Whether the voter has durably recorded that the requester's peer is outdated.
    public var peerOutdatedRecorded: Bool

    public init(
        sender: String, epoch: UInt64, id: UInt64, granted: Bool, knownEpoch: UInt64, peerOutdatedRecorded: Bool
    ) {
        self.sender = sender
        self.epoch = epoch
        self.id = id
        self.granted = granted
        self.knownEpoch = knownEpoch
        self.peerOutdatedRecorded = peerOutdatedRecorded
    }
}

/// A node asks a voter to make it primary for `epoch`.
///
/// A pre-vote (`preVote`) asks only whether the voter would grant it: the voter answers as it
/// would, and records nothing. A node raises its epoch only after a pre-vote won, so that a node
/// cut off from the others does not drive the epoch up with candidacies that cannot win, and
/// depose a primary whose lease is valid when it returns (Raft's PreVote).
public struct VoteRequest: Sendable, Equatable {
    public var sender: String
    public var epoch: UInt64
    public var id: UInt64
    public var preVote: Bool

    public init(sender: String, epoch: UInt64, id: UInt64, preVote: Bool = false) {
        self.sender = sender
        self.epoch = epoch
        self.id = id
        self.preVote = preVote
    }
}

/// A voter's answer to a `VoteRequest`.
public struct VoteReply: Sendable, Equatable {
    public var sender: String
    public var epoch: UInt64
    public var id: UInt64
    public var granted: Bool
    public var knownEpoch: UInt64
    /// Why a vote was refused, for the log.
    public var reason: String
    /// The answer to a pre-vote: nothing was recorded.
    public var preVote: Bool

    public init(
        sender: String, epoch: UInt64, id: UInt64, granted: Bool, knownEpoch: UInt64, reason: String,
        preVote: Bool = false
    ) {
        self.sender = sender
        self.epoch = epoch
        self.id = id
        self.granted = granted
        self.knownEpoch = knownEpoch
        self.reason = reason
        self.preVote = preVote
    }
}
