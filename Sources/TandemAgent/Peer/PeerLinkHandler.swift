import Crypto
import Logging
import NIOCore
import TandemCore
import TandemWire

/// HMAC-SHA256 proofs of the peer handshake: each side proves it holds the cluster secret by
/// signing both nonces and its own name, so a replayed or reflected proof never verifies.
enum PeerAuthentication {
    static func proof(key: SymmetricKey, role: String, ownNonce: [UInt8], otherNonce: [UInt8], name: String) -> [UInt8]
    {
        Array(HMAC<SHA256>.authenticationCode(for: message(role, ownNonce, otherNonce, name), using: key))
    }

    static func verify(
        _ proof: [UInt8], key: SymmetricKey, role: String, ownNonce: [UInt8], otherNonce: [UInt8], name: String
    ) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(
            proof, authenticating: message(role, ownNonce, otherNonce, name), using: key)
    }

    private static func message(_ role: String, _ first: [UInt8], _ second: [UInt8], _ name: String) -> [UInt8] {
        Array("tandem-peer-v1 \(role) ".utf8) + first + second + Array(name.utf8)
    }

    static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }
}

/// What a peer link needs to know to authenticate and whom to tell when it is up or down.
struct PeerLinkSettings: Sendable {
    var clusterName: String
    var localName: String
    var peerName: String
    /// The shared secret's bytes (the HMAC key).
    var secret: [UInt8]
    var key: SymmetricKey { SymmetricKey(data: secret) }
    var handshakeTimeout: TimeAmount = .seconds(5)
    var keepAliveInterval: TimeAmount = .seconds(1)
    /// The link is closed when the peer has sent nothing for this long.
    var silenceLimit: TimeAmount = .seconds(6)
    /// Under TLS: the certificate the peer presented must name the peer node (the cluster's
    /// authority also signs NBD clients' certificates, which must not pass for a node).
    var checksPeerCertificate = false
}

/// Receives the events of an authenticated link.
protocol PeerLinkDelegate: Sendable {
    /// The handshake completed on `channel`, which this node dialed or accepted.
    func linkEstablished(_ channel: any Channel, dialedHere: Bool)
    /// A frame arrived on an established link.
    func linkReceived(_ frame: PeerFrame, on channel: any Channel)
    /// A keep-alive arrived on an established link (the link is heard, with nothing to deliver).
    func linkHeard(on channel: any Channel)
    /// An established link closed.
    func linkClosed(_ channel: any Channel)
}

/// One peer connection: the authenticated handshake, then frames to the delegate, with keep-alive.
///
/// The dialer sends `hello`; the acceptor checks version, cluster and name and answers with its own
/// `hello` and its proof; the dialer verifies that and sends its proof; the acceptor verifies and
/// sends `welcome`. Anything else, or a handshake over its time limit, closes the connection with
/// the reason logged.
final class PeerLinkHandler: ChannelInboundHandler {
    typealias InboundIn = PeerFrame
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        case awaitingHello
        case awaitingProof(peerNonce: [UInt8])
        case awaitingWelcome
        case established
        case closed
    }

    private let settings: PeerLinkSettings
    private let isDialer: Bool
    private let delegate: any PeerLinkDelegate
    private let logger: Logger
    private let ownNonce = PeerAuthentication.nonce()
    private var phase = Phase.awaitingHello
    private var lastHeard = NIODeadline.now()
    private var timers: [Scheduled<Void>] = []
    private var keepAliveTimer: Scheduled<Void>?
    private var pingCounter: UInt64 = 0

    /// The decoder's frame limit and what it becomes once the peer is authenticated.
    private let frameLimit: (limit: PeerFrameLimit, authenticated: Int)?
    /// The listener's record of its connections (for an accepted connection).
    private let admission: ConnectionAdmission?

    init(
        settings: PeerLinkSettings, isDialer: Bool, delegate: any PeerLinkDelegate, logger: Logger,
        frameLimit: (limit: PeerFrameLimit, authenticated: Int)? = nil, admission: ConnectionAdmission? = nil
    ) {
        self.settings = settings
        self.isDialer = isDialer
        self.delegate = delegate
        self.logger = logger
        self.frameLimit = frameLimit
        self.admission = admission
    }

    func channelActive(context: ChannelHandlerContext) {
        let deadline = context.eventLoop.assumeIsolated().scheduleTask(in: settings.handshakeTimeout) {
            if case .established = self.phase { return }
            self.close(context: context, reason: "handshake did not complete within \(self.settings.handshakeTimeout)")
        }
        timers.append(deadline)
        if isDialer { send(.hello(hello()), context: context) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        for timer in timers { timer.cancel() }
        keepAliveTimer?.cancel()
        if case .established = phase { delegate.linkClosed(context.channel) }
        phase = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        close(context: context, reason: "\(error)")
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastHeard = .now()
        switch (phase, frame) {
        case (.established, .ping(let value)):
            delegate.linkHeard(on: context.channel)
            send(.pong(value), context: context)
        case (.established, .pong):
            delegate.linkHeard(on: context.channel)
        case (.established, .hello), (.established, .authenticate), (.established, .welcome):
            close(context: context, reason: "handshake frame on an established link")
        case (.established, _):
            delegate.linkReceived(frame, on: context.channel)
        case (.awaitingHello, .hello(let hello)):
            onHello(hello, context: context)
        case (.awaitingProof(let peerNonce), .authenticate(let proof)):
            onProof(proof, peerNonce: peerNonce, context: context)
        case (.awaitingWelcome, .welcome):
            establish(context: context)
        case (.closed, _):
            break
        default:
            close(context: context, reason: "unexpected frame during the handshake")
        }
    }

    // MARK: Handshake

    private func hello() -> PeerHello {
        PeerHello(clusterName: settings.clusterName, nodeName: settings.localName, nonce: ownNonce)
    }

    private func onHello(_ hello: PeerHello, context: ChannelHandlerContext) {
        guard hello.version == PeerHello.currentVersion else {
            return close(
                context: context,
                reason: "peer speaks protocol version \(hello.version), this node \(PeerHello.currentVersion)")
        }
        guard hello.clusterName == settings.clusterName else {
            return close(
                context: context,
                reason:
                    "peer belongs to cluster \(UntrustedText.quoted(hello.clusterName)), not \"\(settings.clusterName)\""
            )
        }
        guard hello.nodeName == settings.peerName else {
            return close(
                context: context,
                reason:
                    "node \(UntrustedText.quoted(hello.nodeName)) is not this node's peer (\"\(settings.peerName)\")")
        }
        guard hello.nonce.count == 32 else { return close(context: context, reason: "peer sent a malformed nonce") }
        phase = .awaitingProof(peerNonce: hello.nonce)
        if isDialer { return }
        send(.hello(self.hello()), context: context)
        let proof = PeerAuthentication.proof(
            key: settings.key, role: "acceptor", ownNonce: ownNonce, otherNonce: hello.nonce, name: settings.localName)
        send(.authenticate(proof: proof), context: context)
    }

    private func onProof(_ proof: [UInt8], peerNonce: [UInt8], context: ChannelHandlerContext) {
        let peerRole = isDialer ? "acceptor" : "dialer"
        guard
            PeerAuthentication.verify(
                proof, key: settings.key, role: peerRole, ownNonce: peerNonce, otherNonce: ownNonce,
                name: settings.peerName)
        else {
            return close(
                context: context, reason: "node \"\(settings.peerName)\" failed authentication (wrong shared secret?)")
        }
        guard isDialer else {
            send(.welcome, context: context)
            return establish(context: context)
        }
        let ownProof = PeerAuthentication.proof(
            key: settings.key, role: "dialer", ownNonce: ownNonce, otherNonce: peerNonce, name: settings.localName)
        send(.authenticate(proof: ownProof), context: context)
        phase = .awaitingWelcome
    }

    private func establish(context: ChannelHandlerContext) {
        if settings.checksPeerCertificate,
            let refusal = PeerIdentity.refusal(of: context.channel, peer: settings.peerName)
        {
            return close(context: context, reason: refusal)
        }
        if let admission, !admission.settle(context.channel) {
            return close(context: context, reason: "too many authenticated peer links are open")
        }
        if let frameLimit { frameLimit.limit.maximumBodyBytes = frameLimit.authenticated }
        phase = .established
        logger.info(
            "peer link to \(settings.peerName) established (\(isDialer ? "dialed" : "accepted")\(settings.checksPeerCertificate ? ", over TLS" : ""))"
        )
        scheduleKeepAlive(context: context)
        delegate.linkEstablished(context.channel, dialedHere: isDialer)
    }

    /// Pings every interval and closes a link whose peer has been silent too long.
    private func scheduleKeepAlive(context: ChannelHandlerContext) {
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: settings.keepAliveInterval) {
            guard case .established = self.phase else { return }
            if NIODeadline.now() - self.lastHeard > self.settings.silenceLimit {
                self.close(context: context, reason: "peer silent for over \(self.settings.silenceLimit)")
                return
            }
            self.pingCounter += 1
            self.send(.ping(self.pingCounter), context: context)
            self.scheduleKeepAlive(context: context)
        }
        keepAliveTimer = timer
    }

    private func send(_ frame: PeerFrame, context: ChannelHandlerContext) {
        for buffer in PeerCodec.encode(frame, allocator: context.channel.allocator) {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        context.flush()
    }

    private func close(context: ChannelHandlerContext, reason: String) {
        if case .closed = phase { return }
        logger.warning("closing peer connection: \(reason)")
        if case .established = phase { delegate.linkClosed(context.channel) }
        phase = .closed
        context.close(promise: nil)
    }
}
