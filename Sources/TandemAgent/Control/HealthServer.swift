import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemReplication
import TandemResources

/// What the health checks answer from: a copy of the node's state, refreshed every 100 ms by a
/// task of its own, so that a check reads memory and never waits on a volume, the disk or the peer.
public final class HealthState: Sendable {
    public struct Volume: Sendable, Equatable {
        public var name: String
        public var role: VolumeRole
        public var disk: DiskState
        public var connection: ConnectionState
        public var outOfSyncBytes: UInt64
    }

    public struct Facts: Sendable, Equatable {
        /// When it was taken, on the monotonic clock; `nil` before the first refresh.
        public var takenAt: ContinuousClock.Instant?
        /// `nil` on a node without a peer.
        public var clusterRole: ClusterRole?
        public var leaseRemaining: Duration?
        /// The cluster requires a lease of a primary (a witness or a fence command).
        public var leaseBinds = false
        public var standby = false
        public var volumes: [Volume] = []
        /// Per group on this node: whether every resource that runs on the primary is running.
        public var groupsRunning: [String: Bool] = [:]
    }

    private let facts = Mutex(Facts())

    public init() {}

    public var current: Facts { facts.withLock { $0 } }

    /// Replaces the facts (the refresher does, every 100 ms).
    public func store(_ new: Facts) { facts.withLock { $0 = new } }

    /// Whether this node holds the role and serves (the group's resources too, given one);
    /// otherwise why not.
    public static func primary(_ facts: Facts, group: String?) -> String? {
        if let role = facts.clusterRole {
            guard role == .primary else { return "this node is \(role.rawValue)" }
            if facts.leaseBinds {
                guard let lease = facts.leaseRemaining, lease > .zero else { return "this node holds no lease" }
            }
        }
        guard !facts.volumes.isEmpty || facts.clusterRole != nil else { return "this node serves nothing" }
        if let volume = facts.volumes.first(where: { $0.role != .primary }) {
            return "volume \(volume.name) is \(volume.role.rawValue) here"
        }
        if let group {
            guard let running = facts.groupsRunning[group] else { return "no group named that runs here" }
            guard running else { return "group \(group) is not running here" }
        }
        return nil
    }

    /// Whether this node is an up-to-date secondary within `maxOutOfSync`; otherwise why not.
    public static func replica(_ facts: Facts, maxOutOfSync: UInt64) -> String? {
        if facts.clusterRole == .primary { return "this node is primary" }
        guard !facts.volumes.isEmpty else { return "this node has no volumes" }
        for volume in facts.volumes {
            guard volume.role == .secondary else { return "volume \(volume.name) is \(volume.role.rawValue)" }
            guard volume.disk == .upToDate else { return "volume \(volume.name) is \(volume.disk.rawValue)" }
            guard volume.connection == .connected else {
                return "volume \(volume.name) is \(volume.connection.rawValue)"
            }
            guard volume.outOfSyncBytes <= maxOutOfSync else {
                return "volume \(volume.name) has \(volume.outOfSyncBytes) bytes out of sync"
            }
        }
        return nil
    }
}

/// Refreshes a `HealthState` every 100 ms from membership, the volumes and the groups.
struct HealthRefresher: Service {
    let state: HealthState
    let volumes: [ReplicatedVolume]
    let membership: MembershipService?
    let groups: GroupManager?
    let groupNames: [String]
    let leaseBinds: Bool

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                state.store(facts())
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    func facts() -> HealthState.Facts {
        var facts = HealthState.Facts(takenAt: .now, leaseBinds: leaseBinds)
        if let snapshot = membership?.snapshot {
            facts.clusterRole = snapshot.role
            facts.leaseRemaining = snapshot.leaseRemaining
            facts.standby = snapshot.standby
        }
        facts.volumes = volumes.map { volume in
            let status = volume.status
            return HealthState.Volume(
                name: status.name, role: status.role, disk: status.disk, connection: status.connection,
                outOfSyncBytes: status.outOfSyncBytes)
        }
        let resources = groups?.status ?? []
        for name in groupNames {
            let members = resources.filter { $0.group == name && $0.runOn != .secondary }
            facts.groupsRunning[name] = !members.isEmpty && members.allSatisfy { $0.state == .running }
        }
        return facts
    }
}

/// The load balancers' health checks on `health-listen`: plain HTTP, no token (they reveal only a
/// role), on an event loop of their own, answered from `HealthState`.
///
/// `GET|HEAD|OPTIONS /health/primary[?group=NAME]`: 200 only on the node that holds the lease and
/// serves (and runs the group); `/health/replica[?max-out-of-sync=16MiB]`: 200 on an up-to-date
/// secondary; `/health/live`: 200 while the agent answers and its state is fresh. 503 otherwise,
/// with the reason as the body.
public final class HealthServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let state: HealthState
    private let logger: Logger
    /// The checks' own thread: a busy data path or control plane does not delay them.
    static let eventLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    public init(host: String, port: Int, state: HealthState, logger: Logger) {
        self.host = host
        self.port = port
        self.state = state
        self.logger = logger
    }

    public func run() async throws {
        let application = Application(
            router: Self.router(state), server: .http1(configuration: .init(idleTimeout: .seconds(30))),
            configuration: .init(address: .hostname(host, port: port), serverName: nil, backlog: 256),
            onServerRunning: { [logger, host, port] _ in logger.notice("health checks on http://\(host):\(port)") },
            eventLoopGroupProvider: .shared(Self.eventLoop), logger: logger)
        try await application.run()
    }

    /// The checks' routes; `now` is the clock the state's age is read on.
    public static func router(
        _ state: HealthState, now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) -> Router<BasicRequestContext> {
        let router = Router()
        let health = router.group("health")
        @Sendable func answer(_ verdict: String?, _ request: Request) -> Response {
            let body = request.method == .head ? "" : (verdict.map { "\($0)\n" } ?? "ok\n")
            return Response(
                status: verdict == nil ? .ok : .serviceUnavailable,
                headers: [.contentType: "text/plain", .cacheControl: "no-store"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
        }
        for method in [HTTPRequest.Method.get, .head, .options] {
            health.on("primary", method: method) { request, _ in
                guard let facts = fresh(state, now: now()) else { return answer(stale, request) }
                return answer(HealthState.primary(facts, group: request.uri.queryParameters.get("group")), request)
            }
            health.on("replica", method: method) { request, _ in
                var limit: UInt64 = 0
                if let text = request.uri.queryParameters.get("max-out-of-sync") {
                    guard let bytes = Units.parseByteCount(text) else {
                        return Response(
                            status: .badRequest, headers: [.contentType: "text/plain"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: "max-out-of-sync: expected a size\n")))
                    }
                    limit = bytes
                }
                guard let facts = fresh(state, now: now()) else { return answer(stale, request) }
                return answer(HealthState.replica(facts, maxOutOfSync: limit), request)
            }
            health.on("live", method: method) { request, _ in
                answer(fresh(state, now: now()) == nil ? stale : nil, request)
            }
        }
        return router
    }

    static let stale = "the agent's state has not been refreshed for 2 s"

    /// The facts, or `nil` when they are more than 2 s old: a stuck agent must not keep answering
    /// "primary".
    static func fresh(_ state: HealthState, now: ContinuousClock.Instant) -> HealthState.Facts? {
        let facts = state.current
        guard let taken = facts.takenAt, now - taken <= .seconds(2) else { return nil }
        return facts
    }
}
