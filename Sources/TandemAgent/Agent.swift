import Logging
import NIOCore
import ServiceLifecycle
import TandemCore
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
    /// The volumes opened on this node.
    public let volumes: [LocalVolume]
    /// The NBD server.
    public let nbdServer: NBDServer
    private let logger: Logger

    /// Opens volumes and builds services for `nodeName`.
    public static func prepare(
        configuration: Configuration, nodeName: String, logger: Logger
    ) throws(AgentError) -> Agent {
        guard let node = configuration.node(named: nodeName) else {
            let known = configuration.nodes.map(\.name).joined(separator: ", ")
            throw .unknownNode("node \"\(nodeName)\" is not defined in the config (known: \(known))")
        }
        var volumes: [LocalVolume] = []
        for volume in configuration.volumes {
            do {
                let opened = try LocalVolume.open(
                    volume, stateDirectory: configuration.cluster.stateDirectory,
                    newGeneration: { UInt64.random(in: 1...UInt64.max) },
                    newVolumeID: {
                        UInt128(UInt64.random(in: 0...UInt64.max)) << 64 | UInt128(UInt64.random(in: 0...UInt64.max))
                    })
                volumes.append(opened)
                logger.info(
                    "volume \(volume.name) open: \(Units.formatByteCount(opened.store.sizeBytes)) on \(volume.backing)")
            } catch {
                throw .volume(name: volume.name, reason: error.description)
            }
        }
        let exports = NBDExportTable(
            volumes.map {
                NBDExport(name: $0.configuration.nbdExport, store: $0.store, readOnly: $0.configuration.readOnly)
            })
        let server = NBDServer(listen: node.nbdListen, exports: exports, limits: configuration.limits, logger: logger)
        return Agent(node: node, volumes: volumes, nbdServer: server, logger: logger)
    }

    /// Runs every service until SIGTERM or SIGINT; `onListening` is called once the NBD server is bound.
    public func run(onListening: @escaping @Sendable ([SocketAddress]) -> Void = { _ in }) async throws {
        nbdServer.onListening = onListening
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: nbdServer)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }

    /// The name this host most likely has in the config: its host name.
    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "" }
        return String(cString: buffer)
    }
}

/// Why the agent could not start.
public enum AgentError: Error, Sendable, CustomStringConvertible {
    case unknownNode(String)
    case volume(name: String, reason: String)

    /// A message for the administrator.
    public var description: String {
        switch self {
        case .unknownNode(let message): return message
        case .volume(let name, let reason): return "volume \(name): \(reason)"
        }
    }
}
