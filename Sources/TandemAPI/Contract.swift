import TandemCore

// The management plane's contract: every request and reply the agent serves under `/v1`, as the
// agent, the CLI and the tests read and write them. A field added here is seen by all three; a
// field renamed breaks the build of all three, never one of them at run time.
//
// Durations are seconds (`Double`), sizes bytes, times of day seconds since the Unix epoch. An
// optional field without a value is left out of the JSON. docs/openapi.yaml describes the same
// types; the tests validate real replies against it.

/// `GET /v1/status`, and the reply to every action on a node or a volume: the node's state after it.
public struct StatusReply: Codable, Sendable, Equatable {
    /// The node that answered.
    public var node: String
    /// `nil` on a node without a peer.
    public var cluster: ClusterView?
    public var volumes: [VolumeView]
    public var resources: [ResourceView]
    /// `nil` on a node without a peer (modes apply to a pair).
    public var modes: ModesView?

    public init(
        node: String, cluster: ClusterView?, volumes: [VolumeView], resources: [ResourceView], modes: ModesView?
    ) {
        self.node = node
        self.cluster = cluster
        self.volumes = volumes
        self.resources = resources
        self.modes = modes
    }

    /// The volume named `name`.
    public func volume(_ name: String) -> VolumeView? { volumes.first { $0.name == name } }
}

/// What this node's membership knows: its role, quorum, the peer, the witness, the failovers.
public struct ClusterView: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable { case online, standby }

    public var role: ClusterRole
    public var epoch: UInt64
    public var state: State
    public var quorum: Bool
    /// `nil` when the node holds no lease.
    public var leaseRemainingSeconds: Double?
    public var peer: PeerView
    public var witness: WitnessView
    /// `"on"`, or why automatic failover is blocked.
    public var automaticFailover: String
    /// The copies this node's voter records as lacking acknowledged writes.
    public var recordedOutdated: [String]
    /// The last decisions, oldest first.
    public var events: [String]
    /// The promotions of this node since its agent started, oldest first (at most 32).
    public var failovers: [FailoverRecord]

    public init(
        role: ClusterRole, epoch: UInt64, state: State, quorum: Bool, leaseRemainingSeconds: Double?, peer: PeerView,
        witness: WitnessView, automaticFailover: String, recordedOutdated: [String], events: [String],
        failovers: [FailoverRecord]
    ) {
        self.role = role
        self.epoch = epoch
        self.state = state
        self.quorum = quorum
        self.leaseRemainingSeconds = leaseRemainingSeconds
        self.peer = peer
        self.witness = witness
        self.automaticFailover = automaticFailover
        self.recordedOutdated = recordedOutdated
        self.events = events
        self.failovers = failovers
    }
}

/// The peer as this node hears it; the role, state and epoch are from its last heartbeat.
public struct PeerView: Codable, Sendable, Equatable {
    public var name: String?
    public var alive: Bool
    public var role: ClusterRole?
    public var state: ClusterView.State?
    public var epoch: UInt64?
    public var links: [LinkView]

    public init(
        name: String?, alive: Bool, role: ClusterRole?, state: ClusterView.State?, epoch: UInt64?, links: [LinkView]
    ) {
        self.name = name
        self.alive = alive
        self.role = role
        self.state = state
        self.epoch = epoch
        self.links = links
    }
}

/// One heartbeat link.
public struct LinkView: Codable, Sendable, Equatable {
    public var name: String
    /// `nil` when the peer was never heard on it.
    public var lastHeardSecondsAgo: Double?

    public init(name: String, lastHeardSecondsAgo: Double?) {
        self.name = name
        self.lastHeardSecondsAgo = lastHeardSecondsAgo
    }
}

public struct WitnessView: Codable, Sendable, Equatable {
    public var configured: Bool
    public var lastHeardSecondsAgo: Double?

    public init(configured: Bool, lastHeardSecondsAgo: Double?) {
        self.configured = configured
        self.lastHeardSecondsAgo = lastHeardSecondsAgo
    }
}

/// One promotion of the answering node to primary.
///
/// **The client-visible gap** of a failover, defined here once for status, history, metrics and
/// reports: from the last client write the old primary acknowledged, as the new primary knows it
/// from replication (the arrival of the last replicated write), to the first client write the new
/// primary acknowledged. Both ends are read on the new primary's clock, so no clock offset enters
/// it. It is `nil` until the new primary has acknowledged a write, and for a volume that received
/// no replicated write while secondary. A client that was idle before the failover makes it
/// longer than what any client waited: it bounds the outage from above.
public struct FailoverRecord: Codable, Sendable, Equatable {
    /// Why the node took the role.
    public enum Reason: String, Codable, Sendable, CaseIterable {
        /// The peer was silent for the dead time and quorum agreed.
        case peerSilent
        /// The peer handed the role over (a planned switchover, a failback).
        case handover
        /// The node started with no primary in the cluster.
        case start
        /// An administrator forced it without quorum.
        case forced
    }

    public var epoch: UInt64
    public var reason: Reason
    /// When, in seconds since the Unix epoch.
    public var at: Double
    /// How long the peer had been silent, for a failover on silence.
    public var peerSilentSeconds: Double?
    public var volumes: [VolumeGap]
    /// The longest of the volumes' gaps; `nil` until one is known.
    public var clientVisibleGapSeconds: Double? { volumes.compactMap(\.clientVisibleGapSeconds).max() }

    public init(epoch: UInt64, reason: Reason, at: Double, peerSilentSeconds: Double?, volumes: [VolumeGap]) {
        self.epoch = epoch
        self.reason = reason
        self.at = at
        self.peerSilentSeconds = peerSilentSeconds
        self.volumes = volumes
    }

    private enum CodingKeys: String, CodingKey {
        case epoch, reason, at, peerSilentSeconds, volumes, clientVisibleGapSeconds
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        epoch = try container.decode(UInt64.self, forKey: .epoch)
        reason = try container.decode(Reason.self, forKey: .reason)
        at = try container.decode(Double.self, forKey: .at)
        peerSilentSeconds = try container.decodeIfPresent(Double.self, forKey: .peerSilentSeconds)
        volumes = try container.decode([VolumeGap].self, forKey: .volumes)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(epoch, forKey: .epoch)
        try container.encode(reason, forKey: .reason)
        try container.encode(at, forKey: .at)
        try container.encodeIfPresent(peerSilentSeconds, forKey: .peerSilentSeconds)
        try container.encode(volumes, forKey: .volumes)
        try container.encodeIfPresent(clientVisibleGapSeconds, forKey: .clientVisibleGapSeconds)
    }

    /// One volume's side of a promotion.
    public struct VolumeGap: Codable, Sendable, Equatable {
        public var volume: String
        /// From the last replicated write's arrival to the promotion; `nil` if none arrived.
        public var lastReplicatedWriteSecondsBefore: Double?
        /// From the promotion to the first client write this node acknowledged.
        public var firstWriteSecondsAfter: Double?
        /// The client-visible gap (see `FailoverRecord`): the sum of the two.
        public var clientVisibleGapSeconds: Double? {
            guard let before = lastReplicatedWriteSecondsBefore, let after = firstWriteSecondsAfter else { return nil }
            return before + after
        }

        public init(volume: String, lastReplicatedWriteSecondsBefore: Double?, firstWriteSecondsAfter: Double?) {
            self.volume = volume
            self.lastReplicatedWriteSecondsBefore = lastReplicatedWriteSecondsBefore
            self.firstWriteSecondsAfter = firstWriteSecondsAfter
        }

        private enum CodingKeys: String, CodingKey {
            case volume, lastReplicatedWriteSecondsBefore, firstWriteSecondsAfter, clientVisibleGapSeconds
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            volume = try container.decode(String.self, forKey: .volume)
            lastReplicatedWriteSecondsBefore = try container.decodeIfPresent(
                Double.self, forKey: .lastReplicatedWriteSecondsBefore)
            firstWriteSecondsAfter = try container.decodeIfPresent(Double.self, forKey: .firstWriteSecondsAfter)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(volume, forKey: .volume)
            try container.encodeIfPresent(lastReplicatedWriteSecondsBefore, forKey: .lastReplicatedWriteSecondsBefore)
            try container.encodeIfPresent(firstWriteSecondsAfter, forKey: .firstWriteSecondsAfter)
            try container.encodeIfPresent(clientVisibleGapSeconds, forKey: .clientVisibleGapSeconds)
        }
    }
}

/// One replicated volume on the answering node.
public struct VolumeView: Codable, Sendable, Equatable {
    public var name: String
    public var role: VolumeRole
    public var connection: ConnectionState
    public var disk: DiskState
    /// `A`, `B` or `C`.
    public var `protocol`: String
    public var outOfSyncBytes: UInt64
    /// The data generations, as `current:bitmap:history…` in hexadecimal.
    public var generations: String
    public var epoch: UInt64
    public var resyncedBytesTotal: UInt64
    public var activityLogWrites: UInt64
    public var activityLogDataFlushes: UInt64
    public var activityLogWaits: UInt64
    public var peerRole: VolumeRole?
    public var peerDisk: DiskState?
    /// The running resync, if any.
    public var resync: ResyncView?
    public var lastResync: ResyncView?
    /// The running verify, if any.
    public var verify: VerifyView?
    public var lastVerify: VerifyView?
    public var splitBrain: SplitBrainView?

    public init(
        name: String, role: VolumeRole, connection: ConnectionState, disk: DiskState, protocol: String,
        outOfSyncBytes: UInt64, generations: String, epoch: UInt64, resyncedBytesTotal: UInt64,
        activityLogWrites: UInt64, activityLogDataFlushes: UInt64, activityLogWaits: UInt64, peerRole: VolumeRole?,
        peerDisk: DiskState?, resync: ResyncView?, lastResync: ResyncView?, verify: VerifyView?,
        lastVerify: VerifyView?, splitBrain: SplitBrainView?
    ) {
        self.name = name
        self.role = role
        self.connection = connection
        self.disk = disk
        self.protocol = `protocol`
        self.outOfSyncBytes = outOfSyncBytes
        self.generations = generations
        self.epoch = epoch
        self.resyncedBytesTotal = resyncedBytesTotal
        self.activityLogWrites = activityLogWrites
        self.activityLogDataFlushes = activityLogDataFlushes
        self.activityLogWaits = activityLogWaits
        self.peerRole = peerRole
        self.peerDisk = peerDisk
        self.resync = resync
        self.lastResync = lastResync
        self.verify = verify
        self.lastVerify = lastVerify
        self.splitBrain = splitBrain
    }
}

public struct ResyncView: Codable, Sendable, Equatable {
    public enum Source: String, Codable, Sendable { case local, peer }

    /// Which side sends: this node (`local`) or its peer.
    public var source: Source
    public var percent: Double
    public var doneBytes: UInt64
    public var totalBytes: UInt64
    public var bytesLeft: UInt64
    public var seconds: Double
    /// `nil` when finished or not moving.
    public var etaSeconds: Double?
    /// Why it is not moving, while it waits after the peer refused a block.
    public var stalled: String?

    public init(
        source: Source, percent: Double, doneBytes: UInt64, totalBytes: UInt64, bytesLeft: UInt64, seconds: Double,
        etaSeconds: Double?, stalled: String?
    ) {
        self.source = source
        self.percent = percent
        self.doneBytes = doneBytes
        self.totalBytes = totalBytes
        self.bytesLeft = bytesLeft
        self.seconds = seconds
        self.etaSeconds = etaSeconds
        self.stalled = stalled
    }
}

public struct VerifyView: Codable, Sendable, Equatable {
    public var percent: Double
    public var checkedRegions: Int
    public var totalRegions: Int
    public var regionBytes: UInt64
    /// The byte offsets of the regions whose digests differed.
    public var outOfSyncOffsets: [UInt64]
    public var finished: Bool
    public var stopped: Bool
    public var seconds: Double

    public init(
        percent: Double, checkedRegions: Int, totalRegions: Int, regionBytes: UInt64, outOfSyncOffsets: [UInt64],
        finished: Bool, stopped: Bool, seconds: Double
    ) {
        self.percent = percent
        self.checkedRegions = checkedRegions
        self.totalRegions = totalRegions
        self.regionBytes = regionBytes
        self.outOfSyncOffsets = outOfSyncOffsets
        self.finished = finished
        self.stopped = stopped
        self.seconds = seconds
    }
}

public struct SplitBrainView: Codable, Sendable, Equatable {
    public var localChangedBytes: UInt64
    public var peerChangedBytes: UInt64

    public init(localChangedBytes: UInt64, peerChangedBytes: UInt64) {
        self.localChangedBytes = localChangedBytes
        self.peerChangedBytes = peerChangedBytes
    }
}

/// One resource of a group on the answering node.
public struct ResourceView: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case stopped, starting, running, stopping, failed, invalid
    }

    public var name: String
    public var group: String
    public var type: String
    public var runOn: RunOn
    public var state: State
    public var failCount: Int
    public var lastFailure: String?

    public init(
        name: String, group: String, type: String, runOn: RunOn, state: State, failCount: Int, lastFailure: String?
    ) {
        self.name = name
        self.group = group
        self.type = type
        self.runOn = runOn
        self.state = state
        self.failCount = failCount
        self.lastFailure = lastFailure
    }
}

/// `GET /v1/modes`, and the reply to every mode command: both nodes' modes and statuses.
public struct ModesView: Codable, Sendable, Equatable {
    public var localNode: String
    public var localMode: NodeMode
    public var localStatus: NodeRunStatus
    public var remoteNode: String
    /// `nil` when the peer is silent and not certified down.
    public var remoteMode: NodeMode?
    public var remoteStatus: NodeRunStatus?
    public var peerCertifiedDown: Bool
    /// The `failed-startup` blocker's reason, when it is set.
    public var failedStartup: String?

    public init(
        localNode: String, localMode: NodeMode, localStatus: NodeRunStatus, remoteNode: String, remoteMode: NodeMode?,
        remoteStatus: NodeRunStatus?, peerCertifiedDown: Bool, failedStartup: String?
    ) {
        self.localNode = localNode
        self.localMode = localMode
        self.localStatus = localStatus
        self.remoteNode = remoteNode
        self.remoteMode = remoteMode
        self.remoteStatus = remoteStatus
        self.peerCertifiedDown = peerCertifiedDown
        self.failedStartup = failedStartup
    }
}

// MARK: Requests

/// `PUT /v1/modes`.
public struct SetModeRequest: Codable, Sendable, Equatable {
    /// `default`, `single`, `config` or `locked`.
    public var mode: NodeMode

    public init(mode: NodeMode) { self.mode = mode }
}

/// `POST /v1/nodes/{node}/force-primary`: promotion without quorum.
public struct ForcePrimaryRequest: Codable, Sendable, Equatable {
    /// Must be `ForcePrimaryRequest.risk`, word for word: the caller states that it knows.
    public var confirm: String

    /// What a forced promotion risks, as the caller must confirm it.
    public static let risk = "the other node may still serve; both copies may diverge"

    public init(confirm: String) { self.confirm = confirm }
}

/// `POST /v1/resources/cleanup`.
public struct CleanupRequest: Codable, Sendable, Equatable {
    /// One resource, or `nil` for every failed one.
    public var resource: String?

    public init(resource: String?) { self.resource = resource }
}

// MARK: Errors

/// Every refusal and error: what happened, why, and what the administrator can do.
public struct APIError: Codable, Sendable, Equatable, Error, CustomStringConvertible {
    public var message: String
    public var cause: String?
    public var correction: String?

    public init(message: String, cause: String? = nil, correction: String? = nil) {
        self.message = message
        self.cause = cause
        self.correction = correction
    }

    public var description: String {
        [message, cause.map { "cause: \($0)" }, correction.map { "to fix: \($0)" }].compactMap { $0 }
            .joined(separator: "; ")
    }
}

// MARK: Events

/// One line of a node's event journal (`STATE-DIR/NODE.events`, JSON lines).
public struct JournalEntry: Codable, Sendable, Equatable {
    /// What an event is about.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case membership, failover, mode, resource, volume, reset, agent, api
    }

    /// UTC, ISO 8601 with milliseconds.
    public var time: String
    public var node: String
    public var kind: Kind
    public var message: String

    public init(time: String, node: String, kind: Kind, message: String) {
        self.time = time
        self.node = node
        self.kind = kind
        self.message = message
    }
}

/// `GET /v1/failovers`: the answering node's promotions, oldest first.
public struct FailoverHistoryReply: Codable, Sendable, Equatable {
    public var node: String
    public var failovers: [FailoverRecord]

    public init(node: String, failovers: [FailoverRecord]) {
        self.node = node
        self.failovers = failovers
    }
}

// MARK: Tokens

/// What a token may do. Each role may do everything the ones before it may.
public enum APIRole: String, Codable, Sendable, CaseIterable, Comparable {
    /// Reads status, modes, failovers, events.
    case viewer
    /// Also node standby and online, resource cleanup and refresh, volume verify.
    case `operator`
    /// Also modes, forced promotion, split-brain resolution, start and stop, roles by hand, tokens.
    case admin

    public static func < (left: APIRole, right: APIRole) -> Bool {
        allCases.firstIndex(of: left)! < allCases.firstIndex(of: right)!
    }
}

/// A token as the cluster keeps it: never the token itself, only its name, role and times.
public struct TokenRecord: Codable, Sendable, Equatable {
    /// 16 hexadecimal digits, chosen at random: how `tandem token revoke` names it.
    public var id: String
    public var name: String
    public var role: APIRole
    /// Seconds since the Unix epoch.
    public var createdAt: Double
    /// `nil`: it does not expire.
    public var expiresAt: Double?
    /// Which node created it.
    public var createdOn: String

    public init(id: String, name: String, role: APIRole, createdAt: Double, expiresAt: Double?, createdOn: String) {
        self.id = id
        self.name = name
        self.role = role
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.createdOn = createdOn
    }
}

/// `POST /v1/tokens`.
public struct CreateTokenRequest: Codable, Sendable, Equatable {
    public var name: String
    public var role: APIRole
    /// `nil`: it does not expire.
    public var expiresInSeconds: Double?

    public init(name: String, role: APIRole, expiresInSeconds: Double?) {
        self.name = name
        self.role = role
        self.expiresInSeconds = expiresInSeconds
    }
}

/// The reply to `POST /v1/tokens`: the only time the token is ever shown.
public struct CreatedToken: Codable, Sendable, Equatable {
    public var token: String
    public var record: TokenRecord

    public init(token: String, record: TokenRecord) {
        self.token = token
        self.record = record
    }
}

/// `GET /v1/tokens`, and the reply to `DELETE /v1/tokens/{id}`.
public struct TokenList: Codable, Sendable, Equatable {
    /// Raised by every change on either node; the higher list wins when the nodes meet.
    public var version: UInt64
    public var tokens: [TokenRecord]

    public init(version: UInt64, tokens: [TokenRecord]) {
        self.version = version
        self.tokens = tokens
    }
}

// MARK: Jobs

/// Long work run in the background (`Prefer: respond-async` on an action that takes time answers
/// 202 with `Location: /v1/jobs/ID`): its state, its result, and its steps with their times.
public struct JobView: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable { case queued, running, finished }
    public enum Outcome: String, Codable, Sendable { case success, failed, cancelled, timedOut }

    public var id: String
    /// What it does: `node-standby`, `node-online`, `volume-verify`.
    public var kind: String
    /// What it acts on: a node or a volume.
    public var target: String
    public var state: State
    /// Set once finished.
    public var result: Outcome?
    /// Who asked, as the audit trail names them.
    public var caller: String
    public var createdAt: Double
    public var finishedAt: Double?
    public var steps: [JobStep]
    /// Why it failed, was cancelled or timed out.
    public var error: APIError?

    public init(
        id: String, kind: String, target: String, state: State, result: Outcome?, caller: String, createdAt: Double,
        finishedAt: Double?, steps: [JobStep], error: APIError?
    ) {
        self.id = id
        self.kind = kind
        self.target = target
        self.state = state
        self.result = result
        self.caller = caller
        self.createdAt = createdAt
        self.finishedAt = finishedAt
        self.steps = steps
        self.error = error
    }
}

/// One step of a job.
public struct JobStep: Codable, Sendable, Equatable {
    public var name: String
    public var startedAt: Double
    public var finishedAt: Double?
    public var message: String?

    public init(name: String, startedAt: Double, finishedAt: Double?, message: String?) {
        self.name = name
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.message = message
    }
}

/// `GET /v1/jobs`: the node's recent jobs, newest last.
public struct JobList: Codable, Sendable, Equatable {
    public var jobs: [JobView]

    public init(jobs: [JobView]) { self.jobs = jobs }
}
