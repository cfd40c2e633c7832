import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemReplication
import TandemResources

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's local command socket: one request line in, one JSON document out.
///
/// Requests: `status`, `primary VOLUME`, `secondary VOLUME`, `resolve VOLUME`. Every answer carries
/// the status of this node's volumes as both nodes see them, since an administrator expects the
/// state after a change.
public final class ControlServer: Service, Sendable {
    private let path: String
    private let nodeName: String
    private let volumes: [ReplicatedVolume]
    private let membership: MembershipService?
    private let groups: GroupManager?
    private let reset: HAReset?
    private let afterCleanup: @Sendable () async -> Void
    private let group: any EventLoopGroup
    private let volumeEvents: VolumeEvents
    private let logger: Logger

    /// The socket path for `node` under the config's state directory.
    public static func socketPath(stateDirectory: String, node: String) -> String {
        "\(stateDirectory)/\(node).control"
    }

    /// Creates the server; nothing is bound until `run()`.
    public init(
        path: String, nodeName: String, volumes: [ReplicatedVolume], membership: MembershipService? = nil,
        groups: GroupManager? = nil, reset: HAReset? = nil, afterCleanup: @escaping @Sendable () async -> Void = {},
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, events: VolumeEvents, logger: Logger
    ) {
        self.path = path
        self.nodeName = nodeName
        self.volumes = volumes
        self.membership = membership
        self.groups = groups
        self.reset = reset
        self.afterCleanup = afterCleanup
        self.group = group
        self.volumeEvents = events
        self.logger = logger
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        unlink(path)
        // At most 32 administrators' connections at once; one more closes the oldest, so a stuck
        // client cannot keep `tandem` from answering.
        let connections = ConnectionAdmission(unsettledLimit: 32, settledLimit: 1)
        let bootstrap = ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                if case .admittedClosingOldest(let oldest) = connections.arrive(channel) { oldest.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in connections.remove(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ControlHandler(server: self))
                }
            }
        // The socket is created owner-only: set afterwards, its mode would leave a moment in which
        // anyone on the host could connect and command the node.
        let previous = umask(0o177)
        let server: any Channel
        do {
            server = try await bootstrap.bind(unixDomainSocketPath: path).get()
            umask(previous)
        } catch {
            umask(previous)
            throw error
        }
        try? await gracefulShutdown()
        try? await server.close()
        unlink(path)
    }

    /// Answers one request.
    func answer(_ line: String) async -> JSONValue {
        let words = line.split(separator: " ").map(String.init)
        var members: [(String, JSONValue)] = [("node", .string(nodeName))]
        if let (command, error) = await performMode(words) {
            members.append(error.map { ("error", .string($0)) } ?? ("ok", .bool(true)))
            if let membership, case .success(let view) = await membership.mode(nil) {
                members.append(("modes", Self.json(view, node: nodeName, peer: command)))
            }
            return .object(members)
        }
        if let error = await perform(words) {
            members.append(("error", .string(error)))
        } else {
            members.append(("ok", .bool(true)))
        }
        members.append(("volumes", .array(volumes.map { Self.json($0.status) })))
        if let membership { members.append(("cluster", Self.json(membership.snapshot, node: nodeName))) }
        if let groups { members.append(("resources", .array(groups.status.map(Self.json)))) }
        if let modes = membership?.snapshot.modes {
            members.append(("modes", Self.json(modes, node: nodeName, peer: membership?.peerName ?? "")))
        }
        return .object(members)
    }

    /// Mode commands: `mode M`, `peerdown`, `peerup`, `clear`, `start`, `stop`, `force-reset`,
    /// `modes`. `nil` when the request is not one of them; else the peer's name and the refusal.
    private func performMode(_ words: [String]) async -> (String, String?)? {
        let modeWords = ["mode", "peerdown", "peerup", "clear", "start", "stop", "force-reset", "modes"]
        guard let first = words.first, modeWords.contains(first) else { return nil }
        guard let membership else { return ("", "this node has no peer: modes apply to a pair") }
        let peer = membership.peerName ?? ""
        let command: MembershipService.ModeCommand?
        switch (first, words.count) {
        case ("modes", 1): command = nil
        case ("mode", 2):
            guard let mode = NodeMode(rawValue: words[1]), mode != .peerdown else {
                return (peer, "expected: mode single|config|locked|default")
            }
            command = .set(mode)
        case ("peerdown", 1): command = .peerdown
        case ("peerup", 1): command = .peerup
        case ("clear", 1): command = .clear
        case ("start", 1): command = .start
        case ("stop", 1): command = .stop
        case ("force-reset", 1):
            guard case .success(let view) = await membership.mode(nil), view.localMode == .default else {
                return (peer, "force-reset is allowed only in default mode")
            }
            logger.critical("force-reset by administrator")
            reset?.reset(reason: "force-reset by administrator")
            return (peer, "this node has no reset configured")
        default: return (peer, "unexpected arguments to \(first)")
        }
        if let command { logger.notice("\(command.name) by administrator") }
        switch await membership.mode(command) {
        case .success: return (peer, nil)
        case .failure(let refusal): return (peer, refusal.reason)
        }
    }

    static func json(_ view: MembershipService.ModeView, node: String, peer: String) -> JSONValue {
        .object([
            ("localNode", .string(node)), ("localMode", .string(view.localMode.rawValue)),
            ("localStatus", .string(view.localStatus.rawValue)), ("remoteNode", .string(peer)),
            ("remoteMode", view.remoteMode.map { .string($0.rawValue) } ?? .string("unknown")),
            ("remoteStatus", view.remoteStatus.map { .string($0.rawValue) } ?? .string("unknown")),
            ("peerCertifiedDown", .bool(view.peerCertifiedDown)),
            ("failedStartup", view.failedStartup.map { .string($0) } ?? .null),
        ])
    }

    private func perform(_ words: [String]) async -> String? {
        guard let command = words.first else { return "empty request" }
        if command == "status", words.count == 1 { return nil }
        if command == "resource-cleanup" || command == "resource-refresh", words.count <= 2 {
            guard let groups else { return "this node runs no resources" }
            logger.notice("\(words.joined(separator: " ")) by administrator")
            if command == "resource-refresh" {
                await groups.refresh()
                return nil
            }
            if let refused = await groups.cleanup(words.count == 2 ? words[1] : nil) { return refused }
            // A node that a group's failures put in standby is eligible again.
            await afterCleanup()
            return nil
        }
        if ["standby", "online"].contains(command), words.count == 2, words[1] != nodeName {
            guard let membership, let peerName = membership.peerName else {
                return "this node has no peer: there is no role to hand over"
            }
            guard words[1] == peerName else {
                return "no node named \"\(words[1])\" (this node: \(nodeName), peer: \(peerName))"
            }
            logger.notice("\(command) of \(peerName) by administrator")
            return await membership.setPeerStandby(command == "standby")
        }
        if ["standby", "online", "force-primary"].contains(command),
            words.count == 1 || (words.count == 2 && command != "force-primary")
        {
            guard let membership else { return "this node has no peer: there is no role to hand over" }
            logger.notice("\(command) by administrator")
            switch command {
            case "standby": return await membership.setStandby(true)
            case "online": return await membership.setStandby(false)
            default: return await membership.forcePromote()
            }
        }
        if command == "primary" || command == "secondary", let membership, membership.failsOverOnItsOwn {
            return "the cluster decider holds the primary role (a witness or a fence command is configured): "
                + "move it with `tandem node standby NODE`; `volume primary|secondary` is for clusters "
                + "without automatic failover"
        }
        guard words.count == 2, let volume = volumes.first(where: { $0.configuration.name == words[1] }) else {
            return words.count == 2
                ? "no volume named \"\(words[1])\"" : "expected: status | primary|secondary|resolve VOLUME"
        }
        do {
            switch command {
            case "primary":
                try volume.setRole(.primary)
            case "secondary":
                try volume.setRole(.secondary)
            case "verify-start":
                volumeEvents.record(try volume.startVerify(), level: .notice)
            case "verify-stop":
                volumeEvents.record(try volume.stopVerify(), level: .notice)
            case "resolve":
                let report = try volume.resolveSplitBrain()
                let name = volume.configuration.name
                volumeEvents.record(
                    "split brain on \(name) resolved by discarding this node's changes: "
                        + "\(report.localChangedBytes) bytes changed here, \(report.peerChangedBytes) on the peer",
                    level: .notice, durable: true)
            default:
                return "unknown command \"\(command)\""
            }
            // A role or a resolve matters after a crash; a verify's start or stop does not.
            volumeEvents.record(
                "\(volume.configuration.name): \(command) by administrator", level: .notice,
                durable: !command.hasPrefix("verify"))
            return nil
        } catch {
            return error.description
        }
    }

    static func json(_ resource: GroupManager.ResourceStatus) -> JSONValue {
        .object([
            ("name", .string(resource.name)), ("group", .string(resource.group)), ("type", .string(resource.type)),
            ("runOn", .string(resource.runOn.rawValue)), ("state", .string(resource.state.rawValue)),
            ("failCount", .integer(Int64(resource.failCount))),
            ("lastFailure", resource.lastFailure.map { .string($0) } ?? .null),
        ])
    }

    static func seconds(_ duration: Duration) -> JSONValue {
        .number(Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
    }

    static func json(_ snapshot: MembershipService.Snapshot, node: String) -> JSONValue {
        let peer = snapshot.peerHeartbeat
        var members: [(String, JSONValue)] = [
            ("role", .string(snapshot.role.rawValue)), ("epoch", .integer(Int64(snapshot.epoch))),
            ("state", .string(snapshot.standby ? "standby" : "online")), ("quorum", .bool(snapshot.hasQuorum)),
            ("leaseRemainingSeconds", snapshot.leaseRemaining.map(seconds) ?? .null),
            (
                "peer",
                .object([
                    ("name", peer.map { .string($0.sender) } ?? .null), ("alive", .bool(snapshot.peerAlive)),
                    ("role", peer.map { .string($0.isPrimary ? "primary" : "secondary") } ?? .null),
                    ("state", peer.map { .string($0.standby ? "standby" : "online") } ?? .null),
                    ("epoch", peer.map { .integer(Int64($0.epoch)) } ?? .null),
                    (
                        "links",
                        .array(
                            snapshot.links.map { link in
                                .object([
                                    ("name", .string(link.0)),
                                    ("lastHeardSecondsAgo", link.1.map(seconds) ?? .null),
                                ])
                            })
                    ),
                ])
            ),
            (
                "witness",
                .object([
                    ("configured", .bool(snapshot.witnessConfigured)),
                    ("lastHeardSecondsAgo", snapshot.witnessHeardAgo.map(seconds) ?? .null),
                ])
            ),
            ("automaticFailover", .string(snapshot.automaticFailoverBlocker ?? "on")),
            ("recordedOutdated", .array(snapshot.recordedOutdated.map { .string($0) })),
            ("events", .array(snapshot.events.map { .string($0) })),
        ]
        if let promotion = snapshot.lastPromotion {
            members.append(
                (
                    "lastPromotion",
                    .object([
                        ("secondsAgo", seconds(promotion.ago)), ("epoch", .integer(Int64(promotion.epoch))),
                        ("peerSilentSeconds", promotion.peerSilentFor.map(seconds) ?? .null),
                    ])
                ))
        }
        return .object(members)
    }

    static func json(_ status: ReplicatedVolume.Status) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("name", .string(status.name)), ("role", .string(status.role.rawValue)),
            ("connection", .string(status.connection.rawValue)), ("disk", .string(status.disk.rawValue)),
            ("protocol", .string(status.protocolName)), ("outOfSyncBytes", .integer(Int64(status.outOfSyncBytes))),
            ("generations", .string(status.generations.description)), ("epoch", .integer(Int64(status.epoch))),
            ("resyncedBytesTotal", .integer(Int64(status.resyncedBytesTotal))),
            ("activityLogWrites", .integer(Int64(status.activityLogWrites))),
            ("activityLogDataFlushes", .integer(Int64(status.activityLogDataFlushes))),
            ("activityLogWaits", .integer(Int64(status.activityLogWaits))),
            ("peerRole", status.peerRole.map { .string($0.rawValue) } ?? .null),
            ("peerDisk", status.peerDisk.map { .string($0.rawValue) } ?? .null),
        ]
        if let resync = status.resync { members.append(("resync", json(resync))) }
        if let last = status.lastResync { members.append(("lastResync", json(last))) }
        if let verify = status.verify { members.append(("verify", json(verify))) }
        if let last = status.lastVerify { members.append(("lastVerify", json(last))) }
        if let split = status.splitBrain {
            members.append(
                (
                    "splitBrain",
                    .object([
                        ("localChangedBytes", .integer(Int64(split.localChangedBytes))),
                        ("peerChangedBytes", .integer(Int64(split.peerChangedBytes))),
                    ])
                ))
        }
        return .object(members)
    }

    private static func json(_ verify: ReplicatedVolume.VerifyProgress) -> JSONValue {
        let elapsed = (verify.finishedAt ?? .now) - verify.startedAt
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return .object([
            ("percent", .number((verify.percent * 10).rounded() / 10)),
            ("checkedRegions", .integer(Int64(verify.checkedRegions))),
            ("totalRegions", .integer(Int64(verify.totalRegions))),
            ("regionBytes", .integer(Int64(verify.regionBytes))),
            (
                "outOfSyncOffsets",
                .array(verify.outOfSyncRegions.map { .integer(Int64($0) * Int64(verify.regionBytes)) })
            ),
            ("finished", .bool(verify.finishedAt != nil)), ("stopped", .bool(verify.stopped)),
            ("seconds", .number((seconds * 1000).rounded() / 1000)),
        ])
    }

    private static func json(_ progress: ReplicatedVolume.ResyncProgress) -> JSONValue {
        let end = progress.finishedAt ?? .now
        let elapsed = end - progress.startedAt
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = seconds > 0 ? Double(progress.doneBytes) / seconds : 0
        let left = progress.totalBytes > progress.doneBytes ? progress.totalBytes - progress.doneBytes : 0
        return .object([
            ("source", .string(progress.source == .local ? "local" : "peer")),
            ("percent", .number((progress.percent * 10).rounded() / 10)),
            ("doneBytes", .integer(Int64(progress.doneBytes))), ("totalBytes", .integer(Int64(progress.totalBytes))),
            ("bytesLeft", .integer(Int64(left))), ("seconds", .number((seconds * 1000).rounded() / 1000)),
            ("etaSeconds", rate > 0 && progress.finishedAt == nil ? .number((Double(left) / rate).rounded()) : .null),
            ("stalled", progress.stalled.map { .string($0) } ?? .null),
        ])
    }
}

/// Splits a byte stream into lines of at most 4 KiB.
struct LineDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = String

    struct LineTooLong: Error {}

    mutating func decode(buffer: inout ByteBuffer) throws -> String? {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > 4096 { throw LineTooLong() }
            return nil
        }
        let length = newline - buffer.readerIndex
        let line = buffer.readString(length: length)
        buffer.moveReaderIndex(forwardBy: 1)
        return line
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> String? {
        try decode(buffer: &buffer)
    }
}

/// Answers one line, then closes.
final class ControlHandler: ChannelInboundHandler {
    typealias InboundIn = String
    typealias OutboundOut = ByteBuffer

    private let server: ControlServer
    /// A request arrived: the connection carries one, and whatever follows it is not run.
    private var requested = false
    /// How long a connection may take to send its request.
    static let requestDeadline = TimeAmount.seconds(10)

    init(server: ControlServer) {
        self.server = server
    }

    func channelActive(context: ChannelHandlerContext) {
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.requestDeadline) {
            if !self.requested { context.close(promise: nil) }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !requested else { return }
        requested = true
        let line = unwrapInboundIn(data).trimmingWhitespace()
        let bound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
        let promise = context.eventLoop.makePromise(of: String.self)
        promise.completeWithTask { [server] in await server.answer(line).serialized() }
        promise.futureResult.whenSuccess { text in
            let (context, handler) = bound.value
            let buffer = ByteBuffer(string: text + "\n")
            let channel = context.channel
            context.writeAndFlush(handler.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
