import Crypto
import Dispatch
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemReplication
import TandemStorage

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon of one node.
///
/// `Agent.prepare(configuration:nodeName:logger:)` opens the node's volumes (creating backing
/// files and metadata on first use) and builds its services; `run()` runs them as one
/// `ServiceGroup` until SIGTERM or SIGINT, then shuts them down in reverse order.
public struct Agent: Sendable {
    /// This node's settings.
    public let node: Configuration.Node
    /// The peer's settings, when the config has two nodes.
    public let peer: Configuration.Node?
    /// The volumes opened on this node.
    public let volumes: [ReplicatedVolume]
    /// The NBD server.
    public let nbdServer: NBDServer
    /// The local command socket.
    public let controlServer: ControlServer
    /// The management API on the node's `api-listen` addresses.
    public let apiServers: [APIServer]
    /// The health checks on `health-listen`, and the task that keeps their state fresh.
    let healthServices: [any Service]
    /// The link to the peer, when there is one.
    public let peerLink: PeerLink?
    /// Membership (heartbeats, votes, leases), when there is a peer.
    public let membership: MembershipService?
    /// The node's groups of resources.
    public let resources: ResourceService
    /// The node's event journal.
    public let journal: EventJournal
    private let logger: Logger

    /// The event loop of the data path: NBD connections and the peer link. Every replicated write
    /// passes through the peer link's loop anyway; with the client's connection on the same loop,
    /// the peer's acknowledgement completes the client's request without a hop between threads
    /// (4 KiB random writes under protocol C: 31,500 IOPS on one loop against 26,300 on two, see
    /// docs/benchmarks.md). Control, membership and timers keep their own loops, so heartbeats
    /// never queue behind client I/O. Reads that miss the page cache run on a pool of their own.
    static let dataThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// Opens volumes and builds services for `nodeName`. Paths may contain `{node}`, replaced by
    /// the node's name (so that one config serves several nodes on one machine, as in the lab).
    public static func prepare(
        configuration original: Configuration, nodeName: String, logger: Logger
    ) throws(AgentError) -> Agent {
        let configuration = original.expandingNodeName(nodeName)
        guard let node = configuration.node(named: nodeName) else {
            let known = configuration.nodes.map(\.name).joined(separator: ", ")
            throw .unknownNode("node \"\(nodeName)\" is not defined in the config (known: \(known))")
        }
        guard configuration.nodes.count <= 2 else {
            throw .unsupported("this version replicates between two nodes; the config has \(configuration.nodes.count)")
        }
        let peer = configuration.nodes.first { $0.name != nodeName }
        let secret = try peer.map { _ throws(AgentError) in try readSecret(configuration) }
        if let path = configuration.cluster.secretFile, peer != nil {
            warnIfOthersCanRead(secret: path, logger: logger)
        }
        try makeDirectory(configuration.cluster.stateDirectory)
        try NodeLock.acquire(directory: configuration.cluster.stateDirectory, node: node.name)
        let journal = try EventJournal(directory: configuration.cluster.stateDirectory, node: node.name, logger: logger)
        journal.append(.agent, "agent starting", durable: false)
        let volumeEvents = VolumeEvents(journal: journal, logger: logger)
        // The node's lease: membership sets its end, every reply to a client passes it.
        let lease = LeaseGate(now: MembershipService.systemNow)
        let volumes = try openVolumes(
            configuration, node: node, peer: peer, events: volumeEvents, lease: lease, logger: logger)
        // Exports that an nbd-export resource manages appear only while it runs.
        let managed = Set(
            configuration.groups(on: node.name).flatMap(\.resources)
                .filter { $0.type == .nbdExport }.compactMap { resource in
                    configuration.volume(named: resource.parameters["volume"] ?? "")?.nbdExport
                })
        let gate = ExportGate(hidden: managed)
        let exports = NBDExportTable(
            volumes.map { NBDExport(name: $0.configuration.nbdExport, volume: $0) }, gate: gate)
        let credentials =
            node.tls == .off && !(configuration.cluster.peerTLS && peer != nil)
            ? nil
            : try TLSCredentials(
                directory: "\(configuration.cluster.tlsDirectory)/\(node.name)", node: node.name,
                requireClientCertificates: configuration.cluster.nbdClientCertificates == .required,
                pskFile: configuration.cluster.nbdTLSPSKFile, peerLink: configuration.cluster.peerTLS && peer != nil)
        if let credentials { reloadOnHangup(credentials, logger: logger) }
        let nbdMetrics = NBDMetrics()
        let server = NBDServer(
            listen: node.nbdListen, exports: exports, limits: configuration.limits, group: dataThread,
            adjust: { settings in
                settings.tls = node.tls
                settings.tlsCredentials = credentials
                settings.allowedClientNames = Set(configuration.cluster.nbdClientNames)
                settings.metrics = nbdMetrics
            }, logger: logger)
        let link = peer.map { peer in
            PeerLink(
                configuration: configuration, local: node, peer: peer, secret: secret ?? [], volumes: volumes,
                group: dataThread, tls: configuration.cluster.peerTLS ? credentials : nil, events: volumeEvents,
                logger: logger)
        }
        let reset = HAReset.make(configuration: configuration, node: node.name, journal: journal, logger: logger)
        // A group that fails past its restarts hands the primary role over (a planned switchover).
        let membershipBox = Mutex<MembershipService?>(nil)
        // Set when a group's failures put this node in standby; a cleanup brings it back online.
        let standbyByFailover = Mutex(false)
        let resources = ResourceService(
            configuration: configuration, node: node.name, volumes: volumes, gate: gate, journal: journal,
            reset: reset,
            failover: { reason in
                guard let membership = membershipBox.withLock({ $0 }) else {
                    journal.append(.failover, "no peer to fail over to: \(reason)", durable: true)
                    return "there is no peer"
                }
                // A group that failed here because of the peer's leftovers must not be sent to a
                // peer that is dead: nobody would run it.
                if let unfit = membership.peerUnfitForTakeover {
                    journal.append(.failover, "not handed to the peer (\(unfit)): \(reason)", durable: true)
                    return unfit
                }
                journal.append(.failover, "handing the primary role to the peer: \(reason)", durable: true)
                if let refused = await membership.setStandby(true) {
                    journal.append(.failover, "the handover was refused: \(refused)", durable: true)
                    return "the handover was refused: \(refused)"
                }
                standbyByFailover.withLock { $0 = true }
                return nil
            }, startAsPrimary: peer == nil, logger: logger)
        let membership = try peer.map { peer throws(AgentError) in
            try MembershipService(
                configuration: configuration, local: node, peer: peer, secret: secret ?? [], volumes: volumes,
                lease: lease, peerLink: link, journal: journal, groups: resources.manager, logger: logger)
        }
        membershipBox.withLock { $0 = membership }
        let api = ManagementAPI(
            nodeName: node.name, volumes: volumes, membership: membership, groups: resources.manager, reset: reset,
            afterCleanup: {
                guard standbyByFailover.withLock({ $0 }), let membership = membershipBox.withLock({ $0 }) else {
                    return
                }
                if await membership.setStandby(false) == nil {
                    standbyByFailover.withLock { $0 = false }
                    journal.append(.failover, "fail counts cleared: \(node.name) is online again", durable: true)
                }
            },
            events: volumeEvents, logger: logger)
        let tokens: TokenStore
        do {
            tokens = try TokenStore(
                path: "\(configuration.cluster.stateDirectory)/\(node.name).tokens", node: node.name)
        } catch {
            throw .unsupported(error.description)
        }
        // The token list is cluster-wide: it rides the peer link, and the newer list wins.
        if let link, let peer {
            link.shareDocuments(
                current: { [(TokenStore.documentKind, tokens.document)] },
                received: { kind, bytes in
                    guard kind == TokenStore.documentKind else { return }
                    switch tokens.merge(bytes, from: peer.name) {
                    case .kept: break
                    case .adopted(let version, let added, let removed):
                        journal.append(
                            .api,
                            "token list version \(version) from \(peer.name) adopted: added "
                                + "\(added.isEmpty ? "none" : added.joined(separator: ", ")), removed "
                                + "\(removed.isEmpty ? "none" : removed.joined(separator: ", "))", durable: true)
                    case .refused(let reason):
                        logger.warning("\(reason)")
                    }
                })
            tokens.onChange { bytes in link.send(document: TokenStore.documentKind, bytes: bytes) }
        }
        // Every call that changes something is in the journal: an audit trail of who did what.
        let audit: @Sendable (String) -> Void = { journal.append(.api, $0, durable: true) }
        let jobs = JobRegistry(record: { journal.append(.api, $0, durable: true) })
        let metrics = MetricsExporter(
            configuration: configuration, node: node.name, volumes: volumes, membership: membership,
            groups: resources.manager, events: journal.bus, nbd: nbdMetrics)
        let control = ControlServer(
            path: ControlServer.socketPath(stateDirectory: configuration.cluster.stateDirectory, node: node.name),
            stateDirectory: configuration.cluster.stateDirectory, api: api, tokens: tokens, audit: audit,
            events: journal.bus, metrics: metrics, jobs: jobs, logger: logger)
        let apiTLS =
            node.apiListen.isEmpty || configuration.api.plainHTTP
            ? nil
            : try APIServer.tlsConfiguration(
                directory: "\(configuration.cluster.tlsDirectory)/\(node.name)", node: node.name)
        let apiServers = node.apiListen.map { listen in
            APIServer(
                host: listen.host, port: listen.port, tls: apiTLS, api: api, tokens: tokens, audit: audit,
                events: journal.bus, metrics: metrics, jobs: jobs, logger: logger)
        }
        let health = HealthState()
        let healthServices: [any Service] =
            node.healthListen.isEmpty
            ? []
            : [
                HealthRefresher(
                    state: health, volumes: volumes, membership: membership, groups: resources.manager,
                    groupNames: configuration.groups(on: node.name).map(\.name),
                    leaseBinds: configuration.witness != nil || configuration.cluster.fenceCommand != nil)
            ] + node.healthListen.map { HealthServer(host: $0.host, port: $0.port, state: health, logger: logger) }
        return Agent(
            node: node, peer: peer, volumes: volumes, nbdServer: server, controlServer: control,
            apiServers: apiServers, healthServices: healthServices, peerLink: link, membership: membership,
            resources: resources, journal: journal, logger: logger)
    }

    private static func openVolumes(
        _ configuration: Configuration, node: Configuration.Node, peer: Configuration.Node?, events: VolumeEvents,
        lease: LeaseGate, logger: Logger
    ) throws(AgentError) -> [ReplicatedVolume] {
        var volumes: [ReplicatedVolume] = []
        for (index, volume) in configuration.volumes.enumerated() {
            do {
                let local = try LocalVolume.open(
                    volume, stateDirectory: configuration.cluster.stateDirectory,
                    newGeneration: { DataGenerations.created },
                    newVolumeID: {
                        UInt128(UInt64.random(in: 0...UInt64.max)) << 64 | UInt128(UInt64.random(in: 0...UInt64.max))
                    })
                let replicated = try ReplicatedVolume(
                    index: UInt16(index), local: local, peerConfigured: peer != nil,
                    preferredInTies: peer.map { node.name < $0.name } ?? true,
                    runBlocking: { work in NIOThreadPool.singleton.submit { _ in work() } },
                    digest: { bytes in Array(SHA256.hash(data: bytes)) },
                    scheduleAfter: { delay, work in
                        let nanoseconds =
                            delay.components.seconds * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000
                        MultiThreadedEventLoopGroup.singleton.next().scheduleTask(in: .nanoseconds(nanoseconds)) {
                            work()
                        }
                    },
                    report: { event in events.record([event]) },
                    activityLog: ActivityLog(capacity: volume.activityLogExtents), lease: lease)
                events.record(replicated.openingEvents, level: .warning)
                if peer == nil {
                    // A lone node has nobody to contend with: it serves its volumes.
                    try replicated.setRole(.primary)
                }
                volumes.append(replicated)
                let size = Units.formatByteCount(local.store.sizeBytes)
                let role = replicated.status.role.rawValue
                logger.info(
                    "volume \(volume.name) open: \(size) on \(volume.backing), protocol \(volume.protocol.rawValue), \(role)"
                )
            } catch let error as LocalVolumeError {
                throw .volume(name: volume.name, reason: error.description)
            } catch let error as MetadataError {
                throw .volume(name: volume.name, reason: error.description)
            } catch {
                throw .volume(name: volume.name, reason: "\(error)")
            }
        }
        return volumes
    }

    static func readSecret(_ configuration: Configuration) throws(AgentError) -> [UInt8] {
        guard let path = configuration.cluster.secretFile else {
            throw .unsupported("cluster.secret-file is required when the config has two nodes")
        }
        guard let text = ConfigFile.readText(path: path) else {
            throw .unsupported("cannot read the shared secret \(path): \(String(cString: strerror(errno)))")
        }
        let secret = Array(text.filter { !$0.isWhitespace }.utf8)
        guard secret.count >= 16 else {
            throw .unsupported("the shared secret in \(path) is shorter than 16 characters")
        }
        return secret
    }

    /// The shared secret authenticates every peer and datagram: a file others can read is said
    /// at every start (the agent still runs: refusing would take a working cluster down).
    static func warnIfOthersCanRead(secret path: String, logger: Logger) {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & 0o077 != 0 else { return }
        let mode = String(info.st_mode & 0o777, radix: 8)
        logger.warning(
            "the shared secret \(path) has mode \(mode): others on this host can read it (chmod 600 \(path))")
    }

    static func makeDirectory(_ path: String) throws(AgentError) {
        var built = ""
        for part in path.split(separator: "/") {
            built += "/" + part
            if access(built, F_OK) != 0, mkdir(built, 0o755) != 0, errno != EEXIST {
                throw .unsupported("cannot create \(built): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Runs every service until SIGTERM or SIGINT; `onListening` is called once the NBD server is bound.
    /// On the way out every volume's bitmap is made durable and its activity log emptied.
    public func run(onListening: @escaping @Sendable ([SocketAddress]) -> Void = { _ in }) async throws {
        let node = node.name
        nbdServer.onListening = { addresses in
            onListening(addresses)
            // Its listeners are open: a Type=notify unit's dependents may start.
            SystemdNotify.send("READY=1\nSTATUS=serving as \(node)")
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] =
            [
                .init(service: controlServer), .init(service: nbdServer),
            ] + apiServers.map { .init(service: $0) } + healthServices.map { .init(service: $0) }
            + [.init(service: ShutdownAnnouncer(bus: journal.bus))]
        if let peerLink { services.insert(.init(service: peerLink), at: 0) }
        if let membership { services.insert(.init(service: membership), at: 1) }
        // Last to start, first to stop: the services release the volumes before anything else ends.
        services.append(.init(service: resources))
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        let events = VolumeEvents(journal: journal, logger: logger)
        for volume in volumes { events.record(volume.close(), level: .error) }
    }

    /// Runs `services` as one group until SIGTERM or SIGINT.
    /// Runs `services` (the witness's) until SIGTERM or SIGINT, telling the service manager when
    /// they stop.
    public static func runServices(_ services: [any Service], logger: Logger) async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: (services + [ShutdownAnnouncer(bus: nil)]).map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// The name this host most likely has in the config: its host name.
    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// `SIGHUP` reads the TLS credentials again: a renewed certificate takes effect without a restart
/// (and without a failover). A file that cannot be read leaves the credentials in use.
private func reloadOnHangup(_ credentials: TLSCredentials, logger: Logger) {
    signal(SIGHUP, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGHUP)
    source.setEventHandler {
        do {
            try credentials.reload()
            logger.notice("TLS credentials reloaded from \(credentials.directory)")
        } catch {
            logger.error("TLS credentials not reloaded: \(error)")
        }
    }
    source.resume()
    hangupSource = source
}

/// The signal source lives as long as the process; it is set once, while the agent is prepared.
nonisolated(unsafe) private var hangupSource: (any DispatchSourceSignal)?

extension Configuration {
    /// The config with `{node}` in paths replaced by `name`.
    func expandingNodeName(_ name: String) -> Configuration {
        var copy = self
        let expand = { (path: String) in path.replacing("{node}", with: name) }
        copy.cluster.stateDirectory = expand(cluster.stateDirectory)
        copy.cluster.watchdog = cluster.watchdog.map(expand)
        copy.cluster.tlsDirectory = expand(cluster.tlsDirectory)
        copy.volumes = volumes.map { volume in
            var volume = volume
            volume.backing = expand(volume.backing)
            volume.metadata = volume.metadata.map(expand)
            return volume
        }
        copy.groups = groups.map { group in
            var group = group
            group.resources = group.resources.map { resource in
                var resource = resource
                resource.parameters = resource.parameters.mapValues(expand)
                return resource
            }
            return group
        }
        return copy
    }
}

/// Why the agent could not start.
public enum AgentError: Error, Sendable, CustomStringConvertible {
    case unknownNode(String)
    case volume(name: String, reason: String)
    case unsupported(String)
    case io(String)

    /// A message for the administrator.
    public var description: String {
        switch self {
        case .io(let message): return message
        case .unknownNode(let message): return message
        case .volume(let name, let reason): return "volume \(name): \(reason)"
        case .unsupported(let message): return message
        }
    }
}
