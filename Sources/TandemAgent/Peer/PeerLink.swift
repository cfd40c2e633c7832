import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemReplication
import TandemStorage
import TandemWire

/// Sends frames on a peer channel, in the order `send` was called, several to a system call.
///
/// Frames from client threads, the resync pump and the link's own loop go into one outbox in the
/// order the volume's lock gave them; one task on the channel's loop writes everything the outbox
/// holds and flushes once. Frames queued while that task waits to run leave with it: at depth 16 a
/// batch of acknowledgements or writes is one `writev` instead of sixteen. Frames are encoded
/// straight into one open buffer until a payload follows (payloads are passed through, not
/// copied): a batch of acknowledgements is one buffer on its way through the channel, not one per
/// frame.
final class PeerOutbox: Sendable {
    let channel: any Channel
    private let queue = Mutex<Queue>(Queue())

    private struct Queue {
        var items: [IOData] = []
        /// Where the next frames are encoded; it joins `items` when a payload follows, or when the
        /// outbox drains.
        var open: ByteBuffer?
        var drainScheduled = false

        /// Runs `write` on the open buffer (a new one if none is open), in place: a copy taken out
        /// of the queue would share its storage, and the first write would copy it.
        mutating func withOpen<Result>(
            allocator: ByteBufferAllocator, _ write: (inout ByteBuffer) -> Result
        ) -> Result {
            if open == nil { open = allocator.buffer(capacity: 1024) }
            return write(&open!)
        }

        mutating func closeOpen() {
            if let open, open.readableBytes > 0 { items.append(.byteBuffer(open)) }
            open = nil
        }
    }

    init(channel: any Channel) {
        self.channel = channel
    }

    /// Queues `frames`, each with its payload.
    func enqueue(_ frames: [PeerFrame]) {
        enqueue { queue, allocator in
            for frame in frames {
                let pieces = queue.withOpen(allocator: allocator) { PeerCodec.encode(frame, appendingTo: &$0) }
                if !pieces.isEmpty {
                    queue.closeOpen()
                    queue.items += pieces.map(IOData.byteBuffer)
                }
            }
        }
    }

    /// Queues a write frame whose payload is `region` of a file.
    func enqueue(_ frame: PeerFrame, payload region: FileRegion) {
        enqueue { queue, allocator in
            queue.withOpen(allocator: allocator) {
                PeerCodec.encodeHead(of: frame, payloadBytes: region.readableBytes, appendingTo: &$0)
            }
            queue.closeOpen()
            queue.items.append(.fileRegion(region))
        }
    }

    private func enqueue(_ add: (inout Queue, ByteBufferAllocator) -> Void) {
        let allocator = channel.allocator
        let schedule = queue.withLock { queue -> Bool in
            add(&queue, allocator)
            defer { queue.drainScheduled = true }
            return !queue.drainScheduled
        }
        guard schedule else { return }
        channel.eventLoop.execute { [self] in drain() }
    }

    private func drain() {
        let items = queue.withLock { queue -> [IOData] in
            queue.drainScheduled = false
            queue.closeOpen()
            defer { queue.items.removeAll(keepingCapacity: true) }
            return queue.items
        }
        for item in items { channel.write(item, promise: nil) }
        channel.flush()
    }
}

/// A volume's sender on the current link.
struct ChannelPeerSender: PeerSender {
    let outbox: PeerOutbox
    /// Each volume's local copy, opened for `sendfile`.
    let files: [UInt16: NIOFileHandle]

    func send(_ frames: [PeerFrame]) {
        outbox.enqueue(frames)
    }

    /// Sends the payload straight from the file with `sendfile`: no copy through this process.
    func send(_ frame: PeerFrame, payloadStoredIn store: BackingStore, length: Int) throws(StorageError) {
        guard let write = frame.write, let file = files[write.volume], let start = Int(exactly: write.offset) else {
            return send([try frame.withPayload(from: store, length: length)])
        }
        outbox.enqueue(frame, payload: FileRegion(fileHandle: file, readerIndex: start, endIndex: start + length))
    }
}

/// A `TCP_CONGESTION` option value: the name, NUL-terminated, in the kernel's 16 bytes.
private struct CongestionControlName: Sendable {
    private var bytes: (UInt64, UInt64) = (0, 0)

    init(_ name: String) {
        withUnsafeMutableBytes(of: &bytes) { raw in
            for (index, byte) in name.utf8.prefix(15).enumerated() { raw[index] = byte }
        }
    }
}

/// The link to the peer node: listens for it, dials it (the node whose name sorts first dials),
/// authenticates it, and connects every replicated volume to it while the link is up.
public final class PeerLink: Service, PeerLinkDelegate, Sendable {
    private let local: Configuration.Node
    private let peer: Configuration.Node
    private let settings: PeerLinkSettings
    private let volumes: [UInt16: ReplicatedVolume]
    /// Each volume's local copy opened a second time, for `sendfile`; closed when the link ends.
    private let files: [UInt16: NIOFileHandle]
    private let group: any EventLoopGroup
    private let events: VolumeEvents
    private let logger: Logger
    private let maximumFrameBytes: Int
    /// Mutual TLS with the nodes' certificates (`peer-tls = "on"`), or nil for plaintext.
    private let tls: TLSCredentials?
    /// Connections accepted on the peer port: a few may be proving themselves at once; one
    /// authenticated link (two while a crossing pair settles) is all a peer needs.
    private let admission = ConnectionAdmission(unsettledLimit: PeerLink.unauthenticatedLimit, settledLimit: 4)
    private let refusals = RateLimitedLog()
    static let unauthenticatedLimit = 8
    /// The established link and the node that dialed it.
    private let current = Mutex<(channel: any Channel, dialer: String)?>(nil)
    private let listener = Mutex<(any Channel)?>(nil)
    /// When the last frame arrived, in nanoseconds after `ReplicatedVolume.leaseOrigin` (0: never).
    private let lastFrame = Atomic<Int64>(0)
    /// `cluster.peer-congestion-control`; nil keeps the system's default.
    private let congestionControl: String?
    /// Whether the kernel refused `congestionControl` once already (it is logged once).
    private let congestionRefused = Atomic<Bool>(false)

    /// When the peer last sent a frame on the link, if it ever did: the failure detector counts the
    /// replication connection as one more link.
    public var lastActivity: ContinuousClock.Instant? {
        let nanoseconds = lastFrame.load(ordering: .relaxed)
        return nanoseconds == 0 ? nil : ReplicatedVolume.leaseOrigin + .nanoseconds(nanoseconds)
    }

    /// Creates the link; `secret` is the cluster's shared secret.
    public init(
        configuration: Configuration, local: Configuration.Node, peer: Configuration.Node, secret: [UInt8],
        volumes: [ReplicatedVolume], group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        tls: TLSCredentials? = nil, events: VolumeEvents, logger: Logger
    ) {
        self.local = local
        self.peer = peer
        self.tls = tls
        var settings = PeerLinkSettings(
            clusterName: configuration.cluster.name, localName: local.name, peerName: peer.name,
            secret: secret)
        settings.checksPeerCertificate = tls != nil
        // The link counts as a heartbeat link: it must be found dead by the dead time, as the
        // others are, or the primary's writes wait for it (the voters cannot record the peer
        // outdated while the link still looks connected). The silence limit ends two intervals
        // earlier, so that the link is closed here before the kernel gives up on it at
        // TCP_USER_TIMEOUT: a connection the kernel aborted after sends failed on a missing
        // route reads EINVAL, which SwiftNIO treats as a bug and stops the process on.
        let interval = configuration.timing.heartbeatInterval
        settings.keepAliveInterval = Self.timeAmount(interval)
        settings.silenceLimit = Self.timeAmount(max(configuration.timing.deadTime - interval * 2, interval))
        self.settings = settings
        self.userTimeoutMilliseconds = CInt(
            clamping: configuration.timing.deadTime.components.seconds * 1000
                + configuration.timing.deadTime.components.attoseconds / 1_000_000_000_000_000)
        self.volumes = Dictionary(uniqueKeysWithValues: volumes.map { ($0.index, $0) })
        // A volume whose file cannot be opened again sends its payloads from memory instead, as
        // every volume does under TLS: the TLS handler takes buffers, not file regions.
        self.files = volumes.reduce(into: [:]) { files, volume in
            guard tls == nil else { return }
            if let descriptor = try? volume.store.duplicateDescriptor() {
                files[volume.index] = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
            }
        }
        self.group = group
        self.events = events
        self.logger = logger
        self.congestionControl = configuration.cluster.peerCongestionControl
        self.maximumFrameBytes = max(configuration.limits.nbdMaxRequestBytes, 64 << 20) + (64 << 10)
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        .nanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// `TCP_USER_TIMEOUT`: data the peer has not acknowledged for the dead time ends the
    /// connection, as the silence limit does for a link that carries nothing.
    private let userTimeoutMilliseconds: CInt

    /// How long the link must be down before the node whose links lose ties dials too.
    static let fallbackDialDelay = Duration.seconds(5)

    /// Whether links this node dials win over links the peer dials (the name that sorts first wins).
    public var dialsPreferredLinks: Bool { local.name < peer.name }

    /// Listens, dials if this node dials, and keeps the link up until graceful shutdown.
    public func run() async throws {
        let server: any Channel
        do {
            server = try await bindListener()
        } catch {
            throw AgentError.io("cannot listen for the peer link on \(local.address):\(local.port): \(error)")
        }
        listener.withLock { $0 = server }
        logger.info("peer link listening on \(server.localAddress.map { "\($0)" } ?? "?") for \(peer.name)")
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await self.dialForever() }
            try? await gracefulShutdown()
            // Closing the link ends the dialer's wait on it; cancelling ends its back-off sleep.
            tasks.cancelAll()
            try? await server.close()
            if let link = current.withLock({ $0 }) { try? await link.channel.close() }
        }
        // Every channel is closed, so no file region is in use any more.
        for file in files.values { try? file.close() }
    }

    private func pipelineSetup(isDialer: Bool) -> @Sendable (any Channel) -> EventLoopFuture<Void> {
        { [settings, logger, maximumFrameBytes, admission, refusals, tls] channel in
            if !isDialer, case .admittedClosingOldest(let oldest) = admission.arrive(channel) {
                refusals.log(
                    logger, .warning,
                    "peer link: closing the oldest of \(Self.unauthenticatedLimit) connections not yet authenticated to admit a new one"
                )
                oldest.close(promise: nil)
            }
            if !isDialer { channel.closeFuture.whenComplete { _ in admission.remove(channel) } }
            return channel.eventLoop.makeCompletedFuture {
                if let contexts = tls?.peer {
                    if isDialer {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: contexts.dialing, serverHostname: nil))
                    } else {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: contexts.accepting))
                    }
                }
                let limit = PeerFrameLimit(bytes: PeerFrameLimit.handshakeBytes)
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PeerFrameDecoder(limit: limit)))
                try channel.pipeline.syncOperations.addHandler(
                    PeerLinkHandler(
                        settings: settings, isDialer: isDialer, delegate: self, logger: logger,
                        frameLimit: (limit, maximumFrameBytes), admission: isDialer ? nil : admission))
            }.flatMap { self.setUserTimeout(channel) }.flatMap { self.setCongestionControl(channel) }
        }
    }

    private func setUserTimeout(_ channel: any Channel) -> EventLoopFuture<Void> {
        guard let socket = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        return socket.unsafeSetSocketOption(
            level: .init(rawValue: CInt(IPPROTO_TCP)), name: .init(rawValue: CInt(TCP_USER_TIMEOUT)),
            value: userTimeoutMilliseconds
        ).flatMapErrorThrowing { error in
            self.logger.warning("peer link: TCP_USER_TIMEOUT refused (\(error)); a dead peer is found by silence only")
        }
    }

    /// Gives the connection the configured TCP congestion control (`peer-congestion-control`). One
    /// the kernel refuses leaves the system's default, said once in the log: the link works either
    /// way.
    private func setCongestionControl(_ channel: any Channel) -> EventLoopFuture<Void> {
        guard let name = congestionControl, let socket = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        return socket.unsafeSetSocketOption(
            level: .init(rawValue: CInt(IPPROTO_TCP)), name: .init(rawValue: TCP_CONGESTION),
            value: CongestionControlName(name)
        ).flatMapErrorThrowing { error in
            if !self.congestionRefused.exchange(true, ordering: .relaxed) {
                self.logger.warning(
                    "peer link: the kernel refused TCP congestion control \"\(name)\" (\(error)); the link uses the system's default"
                )
            }
        }
    }

    private func bindListener() async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 256 << 10))
            .childChannelOption(.socketOption(.so_sndbuf), value: 4 << 20)
            .childChannelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer(pipelineSetup(isDialer: false))
            .bind(host: local.address, port: local.port).get()
    }

    /// Both nodes dial, so either can open the link. The node whose links lose a tie dials only
    /// after the link has been down for `fallbackDialDelay`: two links crossing at every restart
    /// would each time cut a resync short, and a target that misses the end of its resync must
    /// start over.
    private func dialForever() async {
        var backoff = Duration.milliseconds(100)
        var downSince = ContinuousClock.now
        while !Task.isCancelled {
            if !dialsPreferredLinks {
                let up = current.withLock { $0 != nil }
                if up { downSince = .now }
                if up || ContinuousClock.now - downSince < Self.fallbackDialDelay {
                    do {
                        try await Task.sleep(for: .milliseconds(500))
                    } catch {
                        return
                    }
                    continue
                }
            }
            do {
                let channel = try await ClientBootstrap(group: group)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 256 << 10))
                    .channelOption(.socketOption(.so_sndbuf), value: 4 << 20)
                    .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
                    .channelOption(.maxMessagesPerRead, value: 16)
                    .connectTimeout(.seconds(2))
                    .channelInitializer(pipelineSetup(isDialer: true))
                    .connect(host: peer.address, port: peer.port).get()
                backoff = .milliseconds(100)
                try await withTaskCancellationHandler {
                    try await channel.closeFuture.get()
                } onCancel: {
                    channel.close(promise: nil)
                }
            } catch {
                logger.debug("dialing \(peer.name) at \(peer.address):\(peer.port) failed: \(error)")
            }
            do {
                try await Task.sleep(for: backoff)
            } catch {
                return
            }
            backoff = min(backoff * 2, .seconds(2))
        }
    }

    // MARK: PeerLinkDelegate

    func linkEstablished(_ channel: any Channel, dialedHere: Bool) {
        let dialer = dialedHere ? local.name : peer.name
        let preferred = min(local.name, peer.name)
        enum Outcome {
            case use
            case replace(any Channel)
            case refuse
        }
        // Both nodes apply the same rule, so both keep the same link when two cross.
        let outcome = current.withLock { current -> Outcome in
            guard let existing = current, existing.channel !== channel else {
                current = (channel, dialer)
                return .use
            }
            if existing.dialer == preferred, dialer != preferred { return .refuse }
            current = (channel, dialer)
            return .replace(existing.channel)
        }
        switch outcome {
        case .use:
            connectVolumes(channel)
        case .refuse:
            logger.info("closing a second link to \(peer.name): the one \(preferred) dialed is kept")
            channel.close(promise: nil)
        case .replace(let previous):
            // Synchronously, before any frame of the new link is read: the volumes see the old
            // link go, then the new one come; frames still arriving on the old one are dropped.
            disconnectVolumes()
            connectVolumes(channel)
            previous.close(promise: nil)
        }
    }

    private func disconnectVolumes() {
        outbox.withLock { $0 = nil }
        for volume in volumes.values {
            events.record(volume.peerDisconnected())
        }
    }

    // MARK: Cluster-wide documents

    /// What rides the link beside the volumes: documents both nodes keep alike.
    struct Documents: Sendable {
        var current: @Sendable () -> [(kind: UInt8, bytes: [UInt8])]
        var received: @Sendable (UInt8, [UInt8]) -> Void
    }
    private let documents = Mutex<Documents?>(nil)
    private let outbox = Mutex<PeerOutbox?>(nil)

    /// Shares documents with the peer: `current` is sent each time the link comes up, and what the
    /// peer sends goes to `received`.
    public func shareDocuments(
        current: @escaping @Sendable () -> [(kind: UInt8, bytes: [UInt8])],
        received: @escaping @Sendable (UInt8, [UInt8]) -> Void
    ) {
        documents.withLock { $0 = Documents(current: current, received: received) }
    }

    /// Sends a changed document, if the link is up; else it goes when the link comes up.
    public func send(document kind: UInt8, bytes: [UInt8]) {
        outbox.withLock { $0 }?.enqueue([.document(kind: kind, bytes: bytes)])
    }

    private func connectVolumes(_ channel: any Channel) {
        let outbox = PeerOutbox(channel: channel)
        self.outbox.withLock { $0 = outbox }
        if let documents = documents.withLock({ $0 }) {
            outbox.enqueue(documents.current().map { PeerFrame.document(kind: $0.kind, bytes: $0.bytes) })
        }
        for volume in volumes.values.sorted(by: { $0.index < $1.index }) {
            volume.peerConnected(ChannelPeerSender(outbox: outbox, files: files))
        }
    }

    func linkReceived(_ frame: PeerFrame, on channel: any Channel) {
        guard current.withLock({ $0?.channel === channel }) else { return }
        noteHeard()
        if case .document(let kind, let bytes) = frame {
            documents.withLock { $0 }?.received(kind, bytes)
            return
        }
        guard let index = frame.volumeIndex, let volume = volumes[index] else {
            logger.warning("peer sent a frame for unknown volume \(frame.volumeIndex.map(String.init) ?? "-")")
            return
        }
        events.record(volume.receive(frame))
    }

    func linkHeard(on channel: any Channel) {
        guard current.withLock({ $0?.channel === channel }) else { return }
        noteHeard()
    }

    private func noteHeard() {
        lastFrame.store(
            max(1, ReplicatedVolume.nanoseconds(ReplicatedVolume.leaseOrigin.duration(to: .now))), ordering: .relaxed)
    }

    func linkClosed(_ channel: any Channel) {
        let wasCurrent = current.withLock { current -> Bool in
            guard let active = current, active.channel === channel else { return false }
            current = nil
            return true
        }
        guard wasCurrent else { return }
        logger.warning("peer link to \(peer.name) lost")
        disconnectVolumes()
    }
}

extension PeerFrame {
    /// The volume a frame is about, if any.
    var volumeIndex: UInt16? {
        switch self {
        case .volumeState(let state): return state.volume
        case .data(let write), .resyncData(let write): return write.volume
        case .ack(let ack): return ack.volume
        case .flush(let volume, _), .resyncDone(let volume, _), .bitmap(let volume, _): return volume
        case .verifyRequest(let verify): return verify.volume
        case .verifyReply(let volume, _, _): return volume
        case .hello, .authenticate, .welcome, .ping, .pong, .document: return nil
        }
    }
}
