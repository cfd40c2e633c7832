import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemWire

#if canImport(Glibc)
    import Glibc
#endif

/// The NBD server of one node: listens on TCP and Unix sockets and serves the node's exports.
///
/// Run it as a `Service` (it binds, serves until graceful shutdown, then closes every connection),
/// or call `start()` and `stop()` directly in tests.
public final class NBDServer: Service, Sendable {
    private let listen: [ListenAddress]
    private let exports: NBDExportTable
    private let settings: NBDServerSettings
    private let maximumConnections: Int
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex<ServerState>(ServerState())
    private let connections = ConnectionCount()

    private struct ServerState {
        var listeners: [any Channel] = []
        var onListening: (@Sendable ([SocketAddress]) -> Void)?
    }

    /// Called by `run()` once every address is bound.
    public var onListening: (@Sendable ([SocketAddress]) -> Void)? {
        get { state.withLock { $0.onListening } }
        set { state.withLock { $0.onListening = newValue } }
    }

    /// Creates a server; nothing is bound until `start()`.
    public init(
        listen: [ListenAddress],
        exports: NBDExportTable,
        limits: Configuration.Limits,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        withdrawalGrace: TimeAmount = .seconds(5),
        negotiationDeadline: TimeAmount = .seconds(10),
        logger: Logger
    ) {
        self.listen = listen
        self.exports = exports
        var settings = NBDServerSettings(
            maximumRequestBytes: limits.nbdMaxRequestBytes, maximumInFlight: limits.nbdMaxInFlight)
        settings.withdrawalGrace = withdrawalGrace
        settings.negotiationDeadline = negotiationDeadline
        self.settings = settings
        self.maximumConnections = limits.nbdMaxConnections
        self.group = group
        self.logger = logger
    }

    /// Binds every listen address; returns the addresses actually bound (port 0 picks a free port).
    @discardableResult
    public func start() async throws -> [SocketAddress] {
        var bound: [SocketAddress] = []
        for address in listen {
            let channel = try await bind(address)
            state.withLock { $0.listeners.append(channel) }
            if let local = channel.localAddress { bound.append(local) }
            logger.info("NBD server listening on \(channel.localAddress.map { "\($0)" } ?? "\(address)")")
        }
        return bound
    }

    /// Closes the listeners and every open connection.
    public func stop() async {
        let listeners = state.withLock { state in
            defer { state.listeners = [] }
            return state.listeners
        }
        for listener in listeners {
            try? await listener.close()
        }
        await connections.closeAll()
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        let bound = try await start()
        onListening?(bound)
        try? await gracefulShutdown()
        logger.info("NBD server shutting down")
        await stop()
    }

    private func bind(_ address: ListenAddress) async throws -> any Channel {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            // 256 KiB reads: large writes arrive in few pieces (taken without copying, see NBDPayload)
            // while the buffer stays small enough to be reused warm from the allocator.
            .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 256 << 10))
            .childChannelOption(.autoRead, value: true)
            .childChannelInitializer {
                [exports, settings, logger, connections, maximumConnections] channel in
                guard connections.admit(channel, limit: maximumConnections) else {
                    logger.warning("refusing NBD connection: \(maximumConnections) connections already open")
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in connections.remove(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    let decoder = NBDClientFrameDecoder(maximumWriteBytes: settings.maximumRequestBytes)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
                    try channel.pipeline.syncOperations.addHandler(
                        NBDServerHandler(exports: exports, settings: settings, logger: logger))
                }
            }
        do {
            switch address {
            case .tcp(let host, let port):
                return try await bootstrap.bind(host: host, port: port).get()
            case .unix(let path):
                unlink(path)
                return try await bootstrap.bind(unixDomainSocketPath: path).get()
            }
        } catch {
            let place: String
            switch address {
            case .tcp(let host, let port): place = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): place = path
            }
            throw AgentError.io("cannot listen for NBD clients on \(place): \(error)")
        }
    }
}

/// The connections currently open, bounded.
private final class ConnectionCount: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func admit(_ channel: any Channel, limit: Int) -> Bool {
        channels.withLock { channels in
            guard channels.count < limit else { return false }
            channels[ObjectIdentifier(channel)] = channel
            return true
        }
    }

    func remove(_ channel: any Channel) {
        _ = channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    func closeAll() async {
        let open = channels.withLock { Array($0.values) }
        for channel in open {
            try? await channel.close()
        }
    }
}
