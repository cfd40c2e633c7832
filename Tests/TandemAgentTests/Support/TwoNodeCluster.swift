import Foundation
import Synchronization
import TandemAPI
import TandemTestSupport
import Testing

/// Two real agents on loopback, driven through the `tandem` binary and real NBD clients.
final class TwoNodeCluster: @unchecked Sendable {
    let directory = TemporaryDirectory()
    let config: String
    let nbdPorts: [String: Int]
    /// Each node's peer-link port.
    let peerPorts: [String: Int]
    private var processes: [String: Process] = [:]
    /// Every agent process started, restarts included.
    private var started: [Int32] = []
    private var logs: [String: DataCollector] = [:]

    let witnessPort: Int?
    private var witnessProcess: Process?
    /// Each node's management API port on 127.0.0.1, when the cluster was made with `api`.
    let apiPorts: [String: Int]
    /// Each node's health-check port on 127.0.0.1, when the cluster was made with `health`.
    let healthPorts: [String: Int]
    /// Each node's backing file, `{node}` standing for its name.
    private let backingPattern: String

    /// With `witness`, the config has a witness (start it with `startWitness()`) and agents exit as
    /// their HA reset.
    init(
        protocol replication: String, size: String, witness: Bool = false, deadTime: String = "2s", extra: String = "",
        clusterExtra: String = "", volumeExtra: String = "", backing: String? = nil, api: Bool = false,
        health: Bool = false
    ) throws {
        backingPattern = backing ?? "\(directory.path)/{node}/vol0.img"
        let ports = try (0..<9).map { _ in try freeLoopbackPort() }
        apiPorts = api ? ["a": ports[5], "b": ports[6]] : [:]
        healthPorts = health ? ["a": ports[7], "b": ports[8]] : [:]
        nbdPorts = ["a": ports[2], "b": ports[3]]
        peerPorts = ["a": ports[0], "b": ports[1]]
        witnessPort = witness ? ports[4] : nil
        let witnessSection =
            witness
            ? """

            [witness]
            address = "127.0.0.1"
            port = \(ports[4])

            [timing]
            dead-time = "\(deadTime)"
            """ : ""
        config = "\(directory.path)/tandem.toml"
        try "0123456789abcdef0123456789abcdef\n".write(
            toFile: "\(directory.path)/secret", atomically: true, encoding: .utf8)
        try """
        [cluster]
        name = "pair"
        secret-file = "\(directory.path)/secret"
        state-dir = "\(directory.path)/{node}"
        ha-reset = "exit"
        \(clusterExtra)

        [[node]]
        name = "a"
        address = "127.0.0.1"
        port = \(ports[0])
        precedence = 10
        nbd-listen = ["127.0.0.1:\(ports[2])"]
        \(api ? "api-listen = [\"127.0.0.1:\(ports[5])\"]" : "")
        \(health ? "health-listen = [\"127.0.0.1:\(ports[7])\"]" : "")

        [[node]]
        name = "b"
        address = "127.0.0.1"
        port = \(ports[1])
        precedence = 20
        nbd-listen = ["127.0.0.1:\(ports[3])"]
        \(api ? "api-listen = [\"127.0.0.1:\(ports[6])\"]" : "")
        \(health ? "health-listen = [\"127.0.0.1:\(ports[8])\"]" : "")

        [[volume]]
        name = "vol0"
        protocol = "\(replication)"
        size = "\(size)"
        backing = "\(backingPattern)"
        \(volumeExtra)
        \(witnessSection)
        \(extra)
        """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    func startWitness() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Tools.tandemBinary())
        process.arguments = ["witness", "--config", config]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try Tools.launch(process)
        witnessProcess = process
        logs["witness"] = DataCollector(errors.fileHandleForReading)
        // Its port open, or the reason it is not: a test that went on without its witness would
        // fail later for a reason it never names.
        let deadline = Date().addingTimeInterval(10)
        while !Self.udpListening(port: witnessPort ?? 0) {
            guard process.isRunning, Date() < deadline else {
                throw Tools.Failure(
                    description: "the witness did not open UDP 127.0.0.1:\(witnessPort ?? 0): \(log("witness"))")
            }
            usleep(20_000)
        }
    }

    /// Whether a UDP socket is bound to 127.0.0.1:`port` (from /proc/net/udp).
    static func udpListening(port: Int) -> Bool {
        guard let table = try? String(contentsOfFile: "/proc/net/udp", encoding: .utf8) else { return false }
        let local = String(format: "0100007F:%04X", port)
        return table.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first == Substring(local) }
    }

    func stopWitness() {
        guard let witnessProcess else { return }
        witnessProcess.terminate()
        if !Tools.wait(witnessProcess) { Tools.killIfOurs(witnessProcess.processIdentifier) }
        self.witnessProcess = nil
    }

    /// Sends `signal` to a node's agent.
    func signal(_ node: String, _ signal: Int32) {
        if let process = processes[node] { kill(process.processIdentifier, signal) }
    }

    /// Stops a node's agent and returns once every one of its threads has stopped. `kill` returns
    /// when the signal is queued; until a thread of the agent takes it, the others run on, and a
    /// request sent in that window may be answered before the stop.
    func freeze(_ node: String) throws {
        guard let pid = processes[node]?.processIdentifier else {
            throw Tools.Failure(description: "\(node)'s agent is not running")
        }
        kill(pid, SIGSTOP)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            let states = tasks.map { task -> Character? in
                // The state follows the command's closing parenthesis: "pid (comm) S ...".
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
                    let close = stat.lastIndex(of: ")")
                else { return nil }
                return stat[stat.index(after: close)...].first { $0 != " " }
            }
            if !states.isEmpty, states.allSatisfy({ $0 == "T" || $0 == "t" }) { return }
            usleep(1_000)
        }
        throw Tools.Failure(description: "\(node)'s agent (pid \(pid)) did not stop within 10 s of SIGSTOP")
    }

    func isRunning(_ node: String) -> Bool { processes[node]?.isRunning ?? false }

    /// The process id of a node's agent.
    func pid(_ node: String) -> Int32? { processes[node]?.processIdentifier }

    /// The node's cluster view (`tandem status --json`'s "cluster").
    func cluster(_ node: String) throws -> ClusterView {
        guard let cluster = try ask(node).cluster else {
            throw Tools.Failure(description: "no cluster status from \(node)")
        }
        return cluster
    }

    /// The agent's answer to `GET /v1/status` on its control socket, asked directly: the polling
    /// loops ask many times a second, and a process per question is wasteful.
    func ask(_ node: String) throws -> StatusReply {
        try control(node).get(APIPath.status)
    }

    /// The node's control socket.
    func controlSocket(_ node: String) -> String { "\(directory.path)/\(node)/\(node).control" }

    /// A client of the node's control socket.
    func control(_ node: String) -> APIClient {
        APIClient(.unixSocket(path: controlSocket(node)), timeout: .seconds(10))
    }

    /// A connection to a node's control socket, reads timing out after `seconds`.
    func controlConnection(_ node: String, seconds: Int = 10) throws -> Int32 {
        let path = controlSocket(node)
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw Tools.Failure(description: "socket: \(errno)") }
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            close(descriptor)
            throw Tools.Failure(description: "\(node)'s control socket does not answer")
        }
        return descriptor
    }

    /// Everything the other end sends until it closes (or a read times out).
    static func readToEnd(_ descriptor: Int32) -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(descriptor, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            bytes += buffer[0..<count]
        }
        return bytes
    }

    /// The node that is primary for vol0, if exactly one is.
    func primary() -> String? {
        let primaries = ["a", "b"].filter { isRunning($0) && view($0)?.role == .primary }
        return primaries.count == 1 ? primaries[0] : nil
    }

    deinit {
        // Every agent this cluster ever started, whatever Foundation believes of it.
        for pid in started + (witnessProcess.map { [$0.processIdentifier] } ?? []) { Tools.killIfOurs(pid) }
    }

    func uri(_ node: String) -> String { "nbd://127.0.0.1:\(nbdPorts[node]!)/vol0" }
    func backing(_ node: String) -> String { backingPattern.replacingOccurrences(of: "{node}", with: node) }

    /// Starts a node's agent; with `tmpfs`, in a mount namespace of its own where a tmpfs of
    /// `tmpfs.size` is mounted on `tmpfs.directory` (nothing outside sees it; it goes with the
    /// agent, whose pid stays the launched process's, for unshare and sh exec).
    func start(_ node: String, tmpfs: (directory: String, size: String)? = nil) throws {
        let process = Process()
        if let tmpfs {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
            process.arguments = [
                "--mount", "--propagation", "private", "sh", "-c",
                "mount -t tmpfs -o size=$0 tmpfs \"$1\" && exec \"$2\" agent --config \"$3\" --node \"$4\"",
                tmpfs.size, tmpfs.directory, try Tools.tandemBinary(), config, node,
            ]
        } else {
            process.executableURL = URL(fileURLWithPath: try Tools.tandemBinary())
            process.arguments = ["agent", "--config", config, "--node", node]
        }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try Tools.launch(process)
        processes[node] = process
        started.append(process.processIdentifier)
        logs[node] = DataCollector(errors.fileHandleForReading)
        try waitFor("the control socket of \(node)") { (try? self.status(node)) != nil }
    }

    /// Stops a node with SIGTERM (a clean shutdown) and waits for it.
    func stop(_ node: String) {
        guard let process = processes[node] else { return }
        process.terminate()
        if !Tools.wait(process) { Tools.killIfOurs(process.processIdentifier) }
    }

    /// The exit status of a node's agent once it has ended.
    func exitStatus(_ node: String) -> Int32? {
        guard let process = processes[node], !process.isRunning else { return nil }
        return Tools.status(process)
    }

    /// Kills a node with SIGKILL, as a crash does.
    func crash(_ node: String) {
        guard let process = processes[node] else { return }
        kill(process.processIdentifier, SIGKILL)
        Tools.wait(process)
    }

    /// The TCP congestion control of every established peer-link socket on this machine (both
    /// ends of the link), as `ss` reports it.
    func peerLinkCongestionControls() throws -> [String] {
        let filter = peerPorts.values.sorted().map { "sport = :\($0) or dport = :\($0)" }.joined(separator: " or ")
        let listing = try Tools.check("ss", ["-tinH", "state", "established", "( \(filter) )"]).standardOutput
        // Each socket is a line of addresses, then an indented line of its TCP details that starts
        // with the congestion control's name.
        return listing.split(separator: "\n").filter { $0.first == " " || $0.first == "\t" }.compactMap {
            $0.split(whereSeparator: \.isWhitespace).first.map(String.init)
        }
    }

    /// What the node's agent logged so far.
    func log(_ node: String) -> String { logs[node]?.snapshot() ?? "" }

    /// The node's event journal, as `tandem events` prints it.
    func events(_ node: String) throws -> String {
        try Tools.check(try Tools.tandemBinary(), ["events", "--config", config, "--node", node]).standardOutput
    }

    /// Runs `tandem volume …` against a node.
    @discardableResult
    func volume(_ node: String, _ arguments: [String]) throws -> Tools.Output {
        try Tools.run(try Tools.tandemBinary(), ["volume"] + arguments + ["--config", config, "--node", node])
    }

    /// The node's view of vol0.
    func status(_ node: String) throws -> VolumeView {
        guard let first = try ask(node).volumes.first else {
            throw Tools.Failure(description: "no volume status from \(node)")
        }
        return first
    }

    /// The node's view of vol0, or `nil` while its agent does not answer.
    func view(_ node: String) -> VolumeView? { try? status(node) }

    /// Polls `condition` every 100 ms for at most `seconds`.
    func waitFor(_ what: String, seconds: Double = 60, _ condition: () throws -> Bool) throws {
        if try Polling.until(seconds: seconds, condition) { return }
        throw Tools.Failure(
            description: "timed out waiting for \(what); a: \(log("a").suffix(2000)) b: \(log("b").suffix(2000))")
    }

    /// Waits until both nodes are connected, up to date and have nothing marked.
    func waitInSync(seconds: Double = 120) throws {
        try waitFor("both nodes connected and in sync", seconds: seconds) {
            ["a", "b"].allSatisfy { node in
                let volume = view(node)
                return volume?.connection == .connected && volume?.disk == .upToDate
                    && volume?.outOfSyncBytes == 0 && volume?.peerDisk == .upToDate
            }
        }
        // The voters learn that the secondary is in sync from the primary's next lease renewal;
        // until then it is recorded outdated and could not take over.
        try waitFor("no copy recorded outdated") {
            try ["a", "b"].allSatisfy { node in try cluster(node).recordedOutdated.isEmpty }
        }
    }

    /// Starts both agents, waits until the decider made `a` primary and the initial sync ended.
    func startInSyncWithPrimaryA(seconds: Double = 120) throws {
        try start("a")
        try start("b")
        // The cluster decider chooses a (the lower precedence); a role set by hand would race it.
        try waitFor("a primary") { primary() == "a" }
        try waitInSync(seconds: seconds)
    }

    /// Stops both agents cleanly; whether their backing files are then identical.
    func stopBothAndCompare() throws -> Bool {
        stop("a")
        stop("b")
        return try identical()
    }

    func identical() throws -> Bool {
        try Data(contentsOf: URL(fileURLWithPath: backing("a"))) == Data(contentsOf: URL(fileURLWithPath: backing("b")))
    }
}

/// Ports handed out in this test process: none is handed out twice.
private let handedOutPorts = Mutex<Set<Int>>([])

/// A loopback port free for both TCP and UDP, below the kernel's ephemeral range: a port the kernel
/// chose would be free only until it handed the same number to an outgoing connection, or to
/// another test asking the same way, before this test's agent bound it.
func freeLoopbackPort() throws -> Int {
    let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
        .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
    let ephemeralStart = range?.first ?? 32768
    let candidates = 10000..<max(10001, min(ephemeralStart, 65536))
    for _ in 0..<2000 {
        let port = Int.random(in: candidates)
        guard handedOutPorts.withLock({ $0.insert(port).inserted }) else { continue }
        if canBindLoopback(port: port, type: Int32(SOCK_STREAM.rawValue)),
            canBindLoopback(port: port, type: Int32(SOCK_DGRAM.rawValue))
        {
            return port
        }
    }
    throw Tools.Failure(description: "no free loopback port in \(candidates)")
}

private func canBindLoopback(port: Int, type: Int32) -> Bool {
    guard let descriptor = boundLoopbackSocket(port: port, type: type) else { return false }
    close(descriptor)
    return true
}

/// A socket of `type` bound to 127.0.0.1:`port`, or nil when the port is taken; with
/// `reuseAddress`, SO_REUSEADDR is set first.
func boundLoopbackSocket(port: Int, type: Int32, reuseAddress: Bool = false) -> CInt? {
    let descriptor = socket(AF_INET, type, 0)
    guard descriptor >= 0 else { return nil }
    if reuseAddress {
        var one: CInt = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
    guard bound else {
        close(descriptor)
        return nil
    }
    return descriptor
}
