import Crypto
import Logging
import NIOCore
import NIOPosix
import Synchronization
import TandemCore
import TandemStorage
import TandemWire

#if canImport(Glibc)
    import Glibc
#endif

/// Membership datagrams over UDP, each authenticated with an HMAC-SHA256 over the shared secret
/// and numbered against replay.
///
/// Layout: the message as `MembershipCodec` encodes it, this run's incarnation, the datagram's
/// sequence number and the receiver's incarnation as this sender last heard it (the echo; 0 before
/// it heard any), 8 bytes each, big-endian, then the HMAC over all of that. A datagram that is not
/// ours, not for this cluster, whose code does not match, or that `ReplayGuard` has seen before is
/// dropped with a logged reason; nothing else is affected.
///
/// The echo closes the replay window a restart would open: a receiver that starts again forgets
/// which sequence numbers it saw, but its incarnation is raised durably at every start, so any
/// datagram recorded before the start echoes an older one and is refused. The receiver answers
/// such a datagram with a challenge (magic `TDMC`, its name, its trailer and code) that tells the
/// sender its new incarnation; the sender's next datagram echoes it and is heard. A restart thus
/// costs one round trip, and nothing recorded earlier acts again.
final class MembershipTransport: Sendable {
    static let macBytes = 32
    static let numberBytes = 24
    static let challengeMagic: [UInt8] = Array("TDMC".utf8)
    /// A sender is challenged at most once in this long (a stream of replayed datagrams must not
    /// become a stream of answers).
    static let challengeInterval = Duration.milliseconds(100)
    let cluster: String
    /// This end's name: a node's, or "witness".
    let name: String
    let secret: [UInt8]
    let logger: Logger
    /// This run's incarnation: raised durably at every start of the sender.
    let incarnation: UInt64
    private let sequence = Atomic<UInt64>(0)
    private let replay = Mutex(ReplayGuard())
    private let challenged = Mutex<[String: (incarnation: UInt64, at: ContinuousClock.Instant)]>([:])

    init(cluster: String, name: String, secret: [UInt8], incarnation: UInt64, logger: Logger) {
        self.cluster = cluster
        self.name = name
        self.secret = secret
        self.incarnation = incarnation
        self.logger = logger
    }

    /// The datagram for `message` to `recipient`; every call takes a new sequence number, so seal
    /// once per send.
    func seal(_ message: MembershipMessage, to recipient: String) -> [UInt8] {
        sealed(MembershipCodec.encode(message, cluster: cluster), to: recipient)
    }

    private func sealed(_ encoded: [UInt8], to recipient: String) -> [UInt8] {
        var body = encoded
        let number = sequence.add(1, ordering: .relaxed).newValue
        let echo = replay.withLock { $0.incarnation(of: recipient) } ?? 0
        for value in [incarnation, number, echo] {
            withUnsafeBytes(of: value.bigEndian) { body.append(contentsOf: $0) }
        }
        return body + Array(HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: secret)))
    }

    /// Opens a datagram. One refused because it was sealed before this end's latest start is
    /// answered through `answer` with a challenge for its sender (named first), to be sent to the
    /// sender's membership address.
    func open(
        _ bytes: [UInt8], answer: (String, [UInt8]) -> Void = { _, _ in }
    ) -> Result<MembershipMessage, MembershipCodec.DecodeError> {
        guard bytes.count > Self.macBytes + Self.numberBytes else {
            return .failure(.init(description: "datagram too short"))
        }
        let body = Array(bytes.dropLast(Self.macBytes))
        let code = Array(bytes.suffix(Self.macBytes))
        guard HMAC<SHA256>.isValidAuthenticationCode(code, authenticating: body, using: SymmetricKey(data: secret))
        else {
            return .failure(.init(description: "failed authentication (wrong shared secret?)"))
        }
        let trailer = Array(body.suffix(Self.numberBytes))
        func number(_ index: Int) -> UInt64 {
            trailer[index * 8..<index * 8 + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        let (incarnation, sequence, echo) = (number(0), number(1), number(2))
        let content = Array(body.dropLast(Self.numberBytes))
        if content.starts(with: Self.challengeMagic) {
            guard let sender = Self.challenger(content, cluster: cluster) else {
                return .failure(.init(description: "malformed challenge"))
            }
            replay.withLock { $0.note(sender: sender, incarnation: incarnation) }
            return .failure(
                .init(description: "challenge from \(UntrustedText.quoted(sender)), now at incarnation \(incarnation)"))
        }
        let message: MembershipMessage
        do {
            message = try MembershipCodec.decode(content, cluster: cluster)
        } catch {
            return .failure(error)
        }
        guard echo == self.incarnation else {
            replay.withLock { $0.note(sender: message.sender, incarnation: incarnation) }
            if mayChallenge(message.sender, incarnation: incarnation) {
                answer(message.sender, challenge(to: message.sender))
            }
            return .failure(
                .init(
                    description:
                        "sealed before this run started (it names incarnation \(echo), this run is \(self.incarnation)); challenged"
                ))
        }
        if let refusal = replay.withLock({
            $0.admit(sender: message.sender, incarnation: incarnation, sequence: sequence)
        }) {
            return .failure(.init(description: "replayed: \(refusal)"))
        }
        return .success(message)
    }

    /// A challenge to `recipient`: this end's name and incarnation, signed and numbered.
    func challenge(to recipient: String) -> [UInt8] {
        var content = Self.challengeMagic
        content.append(UInt8(min(cluster.utf8.count, 255)))
        content.append(contentsOf: cluster.utf8.prefix(255))
        content.append(UInt8(min(name.utf8.count, 255)))
        content.append(contentsOf: name.utf8.prefix(255))
        return sealed(content, to: recipient)
    }

    /// The challenger's name, if the content is a well-formed challenge for `cluster`.
    private static func challenger(_ content: [UInt8], cluster: String) -> String? {
        var rest = content.dropFirst(challengeMagic.count)
        func string() -> String? {
            guard let length = rest.first, rest.count > Int(length) else { return nil }
            defer { rest = rest.dropFirst(1 + Int(length)) }
            return String(validating: rest.dropFirst().prefix(Int(length)), as: UTF8.self)
        }
        guard string() == cluster, let sender = string(), rest.isEmpty, !sender.isEmpty else { return nil }
        return sender
    }

    /// A sender's run is challenged at most once per interval; a new run of it at once.
    private func mayChallenge(_ sender: String, incarnation: UInt64) -> Bool {
        let now = ContinuousClock.now
        return challenged.withLock { last in
            if let previous = last[sender], previous.incarnation == incarnation,
                now - previous.at < Self.challengeInterval
            {
                return false
            }
            last[sender] = (incarnation, now)
            return true
        }
    }

    /// Raises and returns the incarnation kept in `path` (a new file counts from 0, so the first
    /// run is 1). The file is replaced atomically and synced before the first datagram leaves.
    static func nextIncarnation(path: String) throws(AgentError) -> UInt64 {
        var previous: UInt64 = 0
        let stored: [UInt8]?
        do {
            stored = try AtomicFile.read(path: path)
        } catch {
            throw .io("cannot read \(path): \(error)")
        }
        if let stored {
            let words = String(decoding: stored, as: UTF8.self).split(whereSeparator: \.isWhitespace)
            guard words.count == 1, let value = UInt64(words[0]) else {
                throw .io("\(path) does not hold an incarnation number; remove it to start again from 0")
            }
            previous = value
        }
        let next = previous + 1
        do {
            try AtomicFile.replace(path: path, bytes: Array("\(next)\n".utf8))
        } catch {
            throw .io("cannot store \(path): \(error)")
        }
        return next
    }

    /// Binds a UDP socket at `host:port`; `receive` gets every datagram and its source.
    static func bind(
        host: String, port: Int, group: any EventLoopGroup,
        receive: @escaping @Sendable ([UInt8], SocketAddress) -> Void
    ) async throws -> any Channel {
        // No SO_REUSEADDR: for UDP it would let a second socket (a second agent, another program)
        // share the port and take some of the datagrams; a port in use is an error to report.
        do {
            return try await DatagramBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(DatagramReceiver(receive: receive))
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            throw AgentError.io("cannot listen for membership datagrams on UDP \(host):\(port): \(error)")
        }
    }
}

private final class DatagramReceiver: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let receive: @Sendable ([UInt8], SocketAddress) -> Void

    init(receive: @escaping @Sendable ([UInt8], SocketAddress) -> Void) { self.receive = receive }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.data.readableBytes <= 4096 else { return }
        receive(Array(envelope.data.readableBytesView), envelope.remoteAddress)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A refused datagram (ICMP port unreachable while the peer is down) is not fatal.
    }
}

/// Sends membership datagrams from a plain UDP socket bound to one local address.
///
/// Sending is kept apart from the receiving channel on purpose: a send that fails (no route while
/// a link is down, a blackholed peer) would close a socket-layer channel, and the node would then
/// stop hearing the voters it can still reach. Here a failed send is dropped, and that is all.
final class DatagramSender: Sendable {
    private let descriptor: Int32

    init(host: String) throws(AgentError) {
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: host, port: 0)
        } catch {
            throw .unsupported("heartbeat address \(host) is not an IP address")
        }
        let family = host.contains(":") ? AF_INET6 : AF_INET
        descriptor = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw .io("cannot open a UDP socket: \(String(cString: strerror(errno)))") }
        let bound = address.withSockAddr { pointer, length in bind(descriptor, pointer, socklen_t(length)) }
        guard bound == 0 else {
            // deinit closes the descriptor (it runs when a class's init throws once every
            // property is set); closing it here as well would close a stranger's descriptor.
            throw .io("cannot bind a UDP socket to \(host): \(String(cString: strerror(errno)))")
        }
    }

    deinit { close(descriptor) }

    /// Sends one datagram without waiting; a failure (peer down, no route) is the failure
    /// detector's business.
    func send(_ bytes: [UInt8], to address: SocketAddress) {
        _ = bytes.withUnsafeBytes { buffer in
            address.withSockAddr { pointer, length in
                sendto(
                    descriptor, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), pointer,
                    socklen_t(length))
            }
        }
    }
}

extension Channel {
    /// Sends one datagram; failures (peer down, no route) are the failure detector's business.
    func sendDatagram(_ bytes: [UInt8], to address: SocketAddress) {
        var buffer = allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        writeAndFlush(AddressedEnvelope(remoteAddress: address, data: buffer), promise: nil)
    }
}

extension MembershipState {
    /// Reads the state file at `path` (a fresh state when there is none). A damaged file refuses
    /// the start: it holds votes, and a voter that forgot them could vote twice in one epoch.
    static func load(path: String) throws(AgentError) -> MembershipState {
        let bytes: [UInt8]?
        do {
            bytes = try AtomicFile.read(path: path)
        } catch {
            throw .unsupported("cannot read \(path): \(error)")
        }
        guard let bytes else { return MembershipState() }
        guard let state = decode(bytes) else {
            throw .unsupported(
                "\(path) is damaged; it holds votes, so nothing starts without it (remove it only if every "
                    + "other voter is known to be stopped)")
        }
        return state
    }
}
