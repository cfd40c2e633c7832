import CTandemLinux
import Logging
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemReplication
import TandemResources
import TandemStorage

#if canImport(Glibc)
    import Glibc
#endif

/// The node's groups as a service: validates every agent at start, runs the group manager, and
/// on shutdown stops every resource in reverse order before the volumes close.
public final class ResourceService: Service, Sendable {
    public let manager: GroupManager
    private let startAsPrimary: Bool

    /// The resources of the groups that may run on `node`; `builtIn` makes the daemon's own kinds.
    init(
        configuration: Configuration, node: String, volumes: [ReplicatedVolume], gate: ExportGate,
        journal: EventJournal,
        reset: HAReset, failover: @escaping @Sendable (String) async -> String?, startAsPrimary: Bool, logger: Logger
    ) {
        let groups = configuration.groups(on: node)
        var agents: [any ResourceAgent] = []
        let peerAddresses = configuration.nodes.filter { $0.name != node }.flatMap { [$0.address] + $0.heartbeat }
        let note: @Sendable (String) -> Void = { message in
            logger.notice("\(message)")
            journal.append(.resource, message, durable: true)
        }
        for group in groups {
            for (index, resource) in group.resources.enumerated() {
                guard let spec = try? ResourceSpec.make(group: group.name, index: index, resource: resource).get()
                else { continue }
                agents.append(
                    ResourceAgents.make(spec, peerAddresses: Array(Set(peerAddresses)).sorted(), note: note) { spec in
                        Self.builtIn(spec, volumes: volumes, gate: gate)
                    })
            }
        }
        manager = GroupManager(
            agents: agents,
            hooks: .init(
                event: { message, durable in
                    logger.notice("\(message)")
                    journal.append(.resource, message, durable: durable)
                },
                failover: failover,
                reset: { reason in reset.reset(reason: reason) }))
        self.startAsPrimary = startAsPrimary
    }

    /// `volume`: runs where the volume is primary (membership promotes it); `nbd-export`: the NBD
    /// server offers the volume's export while it runs (it runs where the volume does).
    static func builtIn(_ spec: ResourceSpec, volumes: [ReplicatedVolume], gate: ExportGate) -> (any ResourceAgent)? {
        let name = spec.parameters["volume"] ?? ""
        guard let volume = volumes.first(where: { $0.configuration.name == name }) else { return nil }
        let check: @Sendable () async -> MonitorResult = {
            let status = volume.status
            if status.role != .primary { return .notRunning }
            if let split = status.splitBrain {
                return .failed("split brain: \(split.localChangedBytes) bytes changed here")
            }
            return status.disk == .upToDate ? .running : .failed("disk is \(status.disk.rawValue)")
        }
        let start: @Sendable () async -> String? = {
            switch await check() {
            case .running: return nil
            case .notRunning: return "volume \(name) is not primary on this node"
            case .failed(let reason): return "volume \(name): \(reason)"
            }
        }
        guard spec.type == .nbdExport else {
            return ClosureAgent(spec: spec, start: start, stop: { nil }, monitor: check)
        }
        let export = volume.configuration.nbdExport
        return ClosureAgent(
            spec: spec,
            start: {
                if let problem = await start() { return problem }
                gate.setOffered(export, true)
                return nil
            },
            stop: {
                // Stopped means no client is served here: connections close once answered.
                await gate.withdraw(export)
                return nil
            },
            monitor: {
                guard gate.isOffered(export) else { return .notRunning }
                return await check()
            })
    }

    public func run() async throws {
        // The manager's loop is not this task's child: when the service group cancels its
        // services (another one failed to start), the loop must still be there to stop the
        // resources, else `stopAll()` would wait for it forever.
        let loop = Task { await manager.run() }
        if startAsPrimary { manager.requestRole(.primary) }
        try? await gracefulShutdown()
        await manager.stopAll()
        manager.finish()
        await loop.value
    }
}

/// Self-fencing: the node's floating addresses are dropped, the reason is appended to the reset
/// log and the journal, both fsync'd, then the machine reboots (or, in the lab and in tests, the
/// agent exits with status 70).
public struct HAReset: Sendable {
    let path: String
    /// The mode file, where the reset leaves the failed-startup blocker.
    let modesPath: String
    let node: String
    let action: Configuration.ResetAction
    let journal: EventJournal?
    let logger: Logger
    /// The node's `ip` resources: dropped first, so that an agent that exits (or a reboot that
    /// fails) leaves no address answering for a service it no longer runs.
    var addresses: [IPAgent] = []

    /// The reset of `node` as `configuration` sets it up.
    static func make(configuration: Configuration, node: String, journal: EventJournal?, logger: Logger) -> HAReset {
        let state = configuration.cluster.stateDirectory
        let groups = configuration.groups(on: node).map(\.name)
        let addresses = ResourceSpec.all(in: configuration).filter { $0.type == .ip && groups.contains($0.group) }
        return HAReset(
            path: "\(state)/\(node).reset-log",
            modesPath: MembershipService.modesPath(stateDirectory: state, node: node),
            node: node, action: configuration.cluster.haReset, journal: journal, logger: logger,
            addresses: addresses.map { IPAgent(spec: $0) })
    }

    public func reset(reason: String) -> Never {
        for address in addresses {
            if let problem = address.releaseBlocking() {
                logger.error("HA reset: cannot drop \(address.spec.parameters["address"] ?? ""): \(problem)")
            }
        }
        let line = "\(EventJournal.timestamp()) \(node) HA reset: \(reason)\n"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if descriptor >= 0 {
            fchmod(descriptor, 0o600)
            _ = Array(line.utf8).withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            fsync(descriptor)
            close(descriptor)
        }
        journal?.append(.reset, "HA reset: \(reason)", durable: true)
        // The node starts blocked until an administrator has looked: no reset loops.
        var record = (try? AtomicFile.read(path: modesPath)).flatMap { $0.flatMap(ModeRecord.decode) } ?? ModeRecord()
        record.failedStartup = "HA reset at \(EventJournal.timestamp()): \(reason)"
        do {
            try AtomicFile.replace(path: modesPath, bytes: record.encoded())
        } catch {
            // The reset goes on; the node will start unblocked, and this line says why.
            logger.critical("HA reset: the failed-startup block could not be stored in \(modesPath): \(error)")
        }
        logger.critical("HA reset: \(reason)")
        if action == .reboot {
            _ = ctandem_reboot()
            logger.critical("reboot failed: \(String(cString: strerror(errno))); the agent exits instead")
        }
        exit(70)
    }
}
