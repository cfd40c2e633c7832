import ArgumentParser
import Foundation
import TandemAgent
import TandemCore

/// Talks to the running agent of a node over its control socket.
enum ControlClient {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Sends one request line and returns the agent's JSON answer.
    static func request(_ line: String, socketPath: String) throws -> [String: Any] {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw Failure(description: "control socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            throw Failure(
                description:
                    "cannot reach the agent at \(socketPath): \(String(cString: strerror(errno))) (is `tandem agent` running?)"
            )
        }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array((line + "\n").utf8)
        guard
            request.withUnsafeBytes({ send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) })
                == request.count
        else { throw Failure(description: "cannot send to the agent: \(String(cString: strerror(errno)))") }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count == 0 { break }
            guard count > 0 else {
                throw Failure(description: "no answer from the agent: \(String(cString: strerror(errno)))")
            }
            answer += chunk[0..<count]
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any] else {
            throw Failure(description: "the agent's answer is not a JSON object")
        }
        return object
    }
}

/// Options of every command that talks to a node's agent.
struct NodeOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The config file.")
    var config: String = ConfigFile.defaultPath

    @Option(help: "Which node's agent to ask (default: the host name).")
    var node: String?

    @Flag(help: "Print the agent's answer as JSON.")
    var json = false

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

    /// Sends `line` to the node's agent; prints the answer as JSON with `--json`, else with
    /// `printText`; fails if the agent refused.
    func send(_ line: String, printText: ([String: Any]) -> Void) throws {
        let answer: [String: Any]
        do {
            answer = try ControlClient.request(line, socketPath: try socketPath())
        } catch let error as ControlClient.Failure {
            throw fail(error.description)
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: answer, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            printText(answer)
        }
        if let error = answer["error"] as? String { throw fail("refused: \(error)") }
    }

    /// Sends `line`, prints the answer (a table, or JSON), and fails if the agent refused.
    func run(_ line: String, only volume: String? = nil, cluster: Bool = false) throws {
        try send(line) { answer in
            if cluster { printCluster(answer) }
            printTable(answer, only: volume)
        }
    }

    private func printCluster(_ answer: [String: Any]) {
        guard let cluster = answer["cluster"] as? [String: Any] else {
            print("node \(answer["node"] as? String ?? "?"): single node, no peer")
            return
        }
        func seconds(_ value: Any?) -> String {
            (value as? Double).map { String(format: "%.1fs ago", $0) } ?? "never"
        }
        let peer = cluster["peer"] as? [String: Any] ?? [:]
        let witness = cluster["witness"] as? [String: Any] ?? [:]
        let lease = (cluster["leaseRemainingSeconds"] as? Double).map { String(format: ", lease %.1fs left", $0) } ?? ""
        print("quorum      \((cluster["quorum"] as? Bool ?? false) ? "yes" : "NO")   epoch \(cluster["epoch"] ?? 0)")
        print(
            "this node   \(answer["node"] as? String ?? "?"): \(cluster["role"] as? String ?? "?"), "
                + "\(cluster["state"] as? String ?? "?")\(lease)")
        let peerState =
            (peer["alive"] as? Bool ?? false)
            ? "\(peer["role"] as? String ?? "?"), \(peer["state"] as? String ?? "?")" : "offline (no heartbeat)"
        print("peer        \(peer["name"] as? String ?? "-"): \(peerState)")
        for link in peer["links"] as? [[String: Any]] ?? [] {
            print("  link      \(link["name"] as? String ?? "?"): last heard \(seconds(link["lastHeardSecondsAgo"]))")
        }
        let witnessText =
            (witness["configured"] as? Bool ?? false)
            ? "last heard \(seconds(witness["lastHeardSecondsAgo"]))" : "none configured"
        print("witness     \(witnessText)")
        print("failover    \(cluster["automaticFailover"] as? String ?? "?")")
        if let promotion = cluster["lastPromotion"] as? [String: Any] {
            let silent =
                (promotion["peerSilentSeconds"] as? Double).map {
                    String(format: "; the old primary had been silent %.2fs (clients waited about that long)", $0)
                } ?? " (planned or at start-up)"
            print(
                "promoted    \(String(format: "%.0fs", promotion["secondsAgo"] as? Double ?? 0)) ago in epoch "
                    + "\(promotion["epoch"] ?? 0)\(silent)")
        }
        if let modes = answer["modes"] as? [String: Any] {
            func text(_ key: String) -> String { modes[key].map { "\($0)" } ?? "-" }
            print(
                "modes       this node \(text("localMode"))/\(text("localStatus")), "
                    + "peer \(text("remoteMode"))/\(text("remoteStatus"))"
                    + ((modes["failedStartup"] as? String).map { "; blocked: failed-startup (\($0))" } ?? ""))
        }
        let resources = answer["resources"] as? [[String: Any]] ?? []
        if !resources.isEmpty {
            let line = resources.map { resource in
                let fails = resource["failCount"] as? Int ?? 0
                return "\(resource["name"] ?? "?") \(resource["state"] ?? "?")" + (fails > 0 ? " (\(fails) fails)" : "")
            }
            print("resources   \(line.joined(separator: ", "))")
        }
        for event in (cluster["events"] as? [String] ?? []).suffix(5) { print("  event     \(event)") }
        print("")
    }

    private func printTable(_ answer: [String: Any], only: String?) {
        let volumes = (answer["volumes"] as? [[String: Any]] ?? []).filter {
            only == nil || $0["name"] as? String == only
        }
        print("node \(answer["node"] as? String ?? "?")")
        var rows = [["NAME", "ROLE", "CONNECTION", "DISK", "PROTO", "OUT-OF-SYNC", "SYNC", "PEER-ROLE", "PEER-DISK"]]
        var notes: [String] = []
        for volume in volumes {
            let text = { (key: String) in volume[key] as? String ?? "-" }
            let outOfSync = Units.formatByteCount(UInt64((volume["outOfSyncBytes"] as? Int) ?? 0))
            var sync = "-"
            if let resync = volume["resync"] as? [String: Any] {
                let left = Units.formatByteCount(UInt64((resync["bytesLeft"] as? Int) ?? 0))
                let eta = (resync["etaSeconds"] as? Double).map { " eta \(Int($0))s" } ?? ""
                sync = "\(resync["percent"] as? Double ?? 0)% (\(left) left\(eta))"
                if let stalled = resync["stalled"] as? String {
                    sync = "\(resync["percent"] as? Double ?? 0)% (\(left) left, waiting)"
                    notes.append("\(text("name")): resync waits: \(stalled)")
                }
            } else if let verify = volume["verify"] as? [String: Any] {
                let found = (verify["outOfSyncOffsets"] as? [Any])?.count ?? 0
                sync = "verify \(verify["percent"] as? Double ?? 0)% (\(found) out of sync)"
            } else if let split = volume["splitBrain"] as? [String: Any] {
                sync =
                    "SPLIT BRAIN: here \(split["localChangedBytes"] ?? 0) B, peer \(split["peerChangedBytes"] ?? 0) B"
            }
            rows.append([
                text("name"), text("role"), text("connection"), text("disk"), text("protocol"), outOfSync, sync,
                text("peerRole"), text("peerDisk"),
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

        func run() async throws { try options.run("status", only: volume) }
    }

    struct Primary: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make this node primary for a volume (refused if the peer is primary).")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The volume.") var volume: String

        func run() async throws { try options.run("primary \(volume)", only: volume) }
    }

    struct Secondary: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make this node secondary for a volume.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The volume.") var volume: String

        func run() async throws { try options.run("secondary \(volume)", only: volume) }
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
            try options.run("verify-\(action) \(volume)", only: volume)
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
            try options.run("resolve \(volume)", only: volume)
        }
    }
}
