import ArgumentParser
import Foundation
import NIOHTTP1
import TandemAPI
import TandemAgent
import TandemCore

/// Options of every command that talks to a node's agent.
struct NodeOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The config file.")
    var config: String = ConfigFile.defaultPath

    @Option(help: "Which node's agent to ask (default: the host name).")
    var node: String?

    @Flag(help: "Print the agent's answer as JSON.")
    var json = false

    @Option(
        help: ArgumentHelp(
            "Call this node's management API over the network (https://HOST:PORT) instead of the local "
                + "control socket; also $TANDEM_SERVER."))
    var server: String?

    @Option(help: "The file holding the API token, for --server; also $TANDEM_TOKEN_FILE.")
    var tokenFile: String?

    @Option(
        help: ArgumentHelp(
            "The cluster authority's certificate the server must chain to, for --server; also $TANDEM_CA "
                + "(default: ca-cert.pem in the config's tls-dir)."))
    var ca: String?

    /// `--server` or `$TANDEM_SERVER`.
    var remote: String? { server ?? ProcessInfo.processInfo.environment["TANDEM_SERVER"] }

    /// The node asked for and its state directory, from the config.
    func stateDirectory() throws -> (node: String, directory: String) {
        let configuration: Configuration
        do {
            configuration = try ConfigFile.load(path: config)
        } catch {
            throw fail("invalid config:\n\(error)")
        }
        let name = node ?? Agent.hostName()
        guard configuration.node(named: name) != nil else {
            throw fail("node \"\(name)\" is not defined in \(config); pass --node")
        }
        return (name, configuration.cluster.stateDirectory.replacing("{node}", with: name))
    }

    func socketPath() throws -> String {
        let (name, directory) = try stateDirectory()
        return ControlServer.socketPath(stateDirectory: directory, node: name)
    }

    /// The node's agent: over the network with `--server`, else over its control socket.
    func client() throws -> APIClient {
        guard let remote else { return APIClient(.unixSocket(path: try socketPath())) }
        let environment = ProcessInfo.processInfo.environment
        let authority =
            ca ?? environment["TANDEM_CA"]
            ?? "\((try? ConfigFile.load(path: config))?.cluster.tlsDirectory ?? "/etc/tandem/tls")/ca-cert.pem"
        guard let endpoint = APIClient.Endpoint.parse(remote, authority: authority) else {
            throw fail("--server: expected https://HOST:PORT, found \(remote)")
        }
        guard let file = tokenFile ?? environment["TANDEM_TOKEN_FILE"] else {
            throw fail(
                "--server needs a token: --token-file FILE or $TANDEM_TOKEN_FILE (`tandem token create` makes one)")
        }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw fail("cannot read the token file \(file)")
        }
        return APIClient(endpoint, token: text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Calls the node's agent: prints the reply as JSON with `--json`, else with `printText`; fails
    /// with the agent's refusal (its message, cause and correction) or when the agent is unreachable.
    func call<Reply: Codable>(
        _ method: HTTPMethod, _ path: String, _ body: (some Encodable)? = nil as String?, as type: Reply.Type,
        printText: (Reply) -> Void
    ) throws {
        let reply: Reply
        do {
            reply = try client().send(method, path, body, as: Reply.self)
        } catch let refusal as APIError {
            throw fail("refused: \(refusal)")
        } catch let error as APIClient.Unreachable {
            throw fail(error.description)
        }
        if json {
            let encoder = APICoding.encoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(reply), as: UTF8.self))
        } else {
            printText(reply)
        }
    }

    /// Calls `method path` and prints the node's state after it (a table, or JSON).
    func run(
        _ path: String, _ body: (some Encodable)? = nil as String?, method: HTTPMethod = .POST,
        only volume: String? = nil, cluster: Bool = false
    ) throws {
        try call(method, path, body, as: StatusReply.self) { reply in
            if cluster { printCluster(reply) }
            printTable(reply, only: volume)
        }
    }

    /// `tandem status` and `volume status`.
    func runStatus(only volume: String? = nil, cluster: Bool = false) throws {
        try run(APIPath.status, method: .GET, only: volume, cluster: cluster)
    }

    private func printCluster(_ reply: StatusReply) {
        guard let cluster = reply.cluster else {
            print("node \(reply.node): single node, no peer")
            return
        }
        func ago(_ value: Double?) -> String { value.map { String(format: "%.1fs ago", $0) } ?? "never" }
        let peer = cluster.peer
        let lease = cluster.leaseRemainingSeconds.map { String(format: ", lease %.1fs left", $0) } ?? ""
        print("quorum      \(cluster.quorum ? "yes" : "NO")   epoch \(cluster.epoch)")
        print("this node   \(reply.node): \(cluster.role.rawValue), \(cluster.state.rawValue)\(lease)")
        let peerState =
            peer.alive
            ? "\(peer.role?.rawValue ?? "?"), \(peer.state?.rawValue ?? "?")" : "offline (no heartbeat)"
        print("peer        \(peer.name ?? "-"): \(peerState)")
        for link in peer.links { print("  link      \(link.name): last heard \(ago(link.lastHeardSecondsAgo))") }
        print(
            "witness     \(cluster.witness.configured ? "last heard \(ago(cluster.witness.lastHeardSecondsAgo))" : "none configured")"
        )
        print("failover    \(cluster.automaticFailover)")
        if let promotion = cluster.failovers.last {
            let secondsAgo = max(0, Date().timeIntervalSince1970 - promotion.at)
            let why =
                switch promotion.reason {
                case .peerSilent:
                    String(format: "; the old primary had been silent %.2fs", promotion.peerSilentSeconds ?? 0)
                case .handover: " (handed over)"
                case .start: " (at start-up)"
                case .forced: " (forced without quorum)"
                }
            let gap = promotion.clientVisibleGapSeconds.map { String(format: "; client-visible gap %.2fs", $0) } ?? ""
            print("promoted    \(String(format: "%.0fs", secondsAgo)) ago in epoch \(promotion.epoch)\(why)\(gap)")
        }
        if let modes = reply.modes {
            print(
                "modes       this node \(modes.localMode.rawValue)/\(modes.localStatus.rawValue), "
                    + "peer \(modes.remoteMode?.rawValue ?? "-")/\(modes.remoteStatus?.rawValue ?? "-")"
                    + (modes.failedStartup.map { "; blocked: failed-startup (\($0))" } ?? ""))
        }
        if !reply.resources.isEmpty {
            let line = reply.resources.map { resource in
                "\(resource.name) \(resource.state.rawValue)"
                    + (resource.failCount > 0 ? " (\(resource.failCount) fails)" : "")
            }
            print("resources   \(line.joined(separator: ", "))")
        }
        for event in cluster.events.suffix(5) { print("  event     \(event)") }
        print("")
    }

    private func printTable(_ reply: StatusReply, only: String?) {
        let volumes = reply.volumes.filter { only == nil || $0.name == only }
        print("node \(reply.node)")
        var rows = [["NAME", "ROLE", "CONNECTION", "DISK", "PROTO", "OUT-OF-SYNC", "SYNC", "PEER-ROLE", "PEER-DISK"]]
        var notes: [String] = []
        for volume in volumes {
            var sync = "-"
            if let resync = volume.resync {
                let left = Units.formatByteCount(resync.bytesLeft)
                let eta = resync.etaSeconds.map { " eta \(Int($0))s" } ?? ""
                sync = "\(resync.percent)% (\(left) left\(eta))"
                if let stalled = resync.stalled {
                    sync = "\(resync.percent)% (\(left) left, waiting)"
                    notes.append("\(volume.name): resync waits: \(stalled)")
                }
            } else if let verify = volume.verify {
                sync = "verify \(verify.percent)% (\(verify.outOfSyncOffsets.count) out of sync)"
            } else if let split = volume.splitBrain {
                sync = "SPLIT BRAIN: here \(split.localChangedBytes) B, peer \(split.peerChangedBytes) B"
            }
            rows.append([
                volume.name, volume.role.rawValue, volume.connection.rawValue, volume.disk.rawValue, volume.protocol,
                Units.formatByteCount(volume.outOfSyncBytes), sync, volume.peerRole?.rawValue ?? "-",
                volume.peerDisk?.rawValue ?? "-",
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            print(
                zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
        for note in notes { print(note) }
    }
}

struct VolumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume", abstract: "Replicated volumes: status, roles, split-brain resolution.",
        subcommands: [Status.self, Primary.self, Secondary.self, Resolve.self, Verify.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Role, connection, disk state, out-of-sync bytes and sync progress, as both nodes see them.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "Only this volume.") var volume: String?

        func run() async throws { try options.runStatus(only: volume) }
    }

    struct Primary: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make this node primary for a volume (refused if the peer is primary).")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The volume.") var volume: String

        func run() async throws { try options.run(APIPath.volume(volume, "primary"), only: volume) }
    }

    struct Secondary: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make this node secondary for a volume.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The volume.") var volume: String

        func run() async throws { try options.run(APIPath.volume(volume, "secondary"), only: volume) }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Online verify: compare every region's SHA-256 with the peer while the volume is in use; "
                + "regions that differ are marked and resynced from this node.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "start or stop.") var action: String
        @Argument(help: "The volume.") var volume: String

        func run() async throws {
            guard action == "start" || action == "stop" else { throw fail("expected start or stop, found \(action)") }
            try options.run(APIPath.volume(volume, "verify"), method: action == "start" ? .POST : .DELETE, only: volume)
        }
    }

    struct Resolve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "End a split brain by discarding this node's changes; the diverged byte counts are logged first.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The volume.") var volume: String
        @Flag(help: "Required: this node's changes are the ones dropped.") var discardLocal = false

        func run() async throws {
            guard discardLocal else { throw fail("resolve drops this node's changes; say so with --discard-local") }
            try options.run(APIPath.volume(volume, "resolve"), only: volume)
        }
    }
}
