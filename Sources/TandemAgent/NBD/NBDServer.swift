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
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex<ServerState>(ServerState())
    private let connections: ConnectionAdmission
    private let refusals = RateLimitedLog()
    private let pool: NBDMemoryPool

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
        adjust: (inout NBDServerSettings) -> Void = { _ in },
        logger: Logger
    ) {
        self.listen = listen
        self.exports = exports
        var settings = NBDServerSettings(
            maximumRequestBytes: limits.nbdMaxRequestBytes, maximumInFlight: limits.nbdMaxInFlight,
            connectionBudgetBytes: limits.nbdMaxBufferedBytes / 2)
        self.pool = NBDMemoryPool(limit: limits.nbdMaxBufferedBytes)
        settings.withdrawalGrace = withdrawalGrace
        settings.negotiationDeadline = negotiationDeadline
        adjust(&settings)
        self.settings = settings
        self.connections = ConnectionAdmission(
            unsettledLimit: settings.maximumNegotiating, settledLimit: limits.nbdMaxConnections)
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
            // At most 1 MiB per read cycle: what a connection can take before it stops for memory.
            .childChannelOption(.maxMessagesPerRead, value: 4)
            // 256 KiB reads: large writes arrive in few pieces (taken without copying, see NBDPayload)
            // while the buffer stays small enough to be reused warm from the allocator.
            .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 256 << 10))
            .childChannelOption(.autoRead, value: true)
            .childChannelInitializer { [exports, settings, logger, connections, pool, refusals] channel in
                if case .admittedClosingOldest(let oldest) = connections.arrive(channel) {
                    refusals.log(
                        logger, .warning,
                        "closing the oldest of \(settings.maximumNegotiating) NBD connections still negotiating to admit a new one"
                    )
                    oldest.close(promise: nil)
                }
                channel.closeFuture.whenComplete { _ in connections.remove(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NBDServerHandler(
                            exports: exports, settings: settings, pool: pool, admission: connections,
                            refusals: refusals, logger: logger))
                }
            }
        do {
            switch address {
            case .tcp(let host, let port):
                // IP_FREEBIND: a group's floating address is listened on before the node holds it
                // (as it does only while primary), so the server need not bind the wildcard.
                let freeBind = ChannelOptions.Types.SocketOption(
                    level: NIOBSDSocket.OptionLevel(rawValue: CInt(IPPROTO_IP)),
                    name: NIOBSDSocket.Option(rawValue: CInt(IP_FREEBIND)))
                return try await bootstrap.serverChannelOption(freeBind, value: 1).bind(host: host, port: port).get()
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
