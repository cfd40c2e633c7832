import Foundation
import Synchronization
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
    /// Each node's backing file, `{node}` standing for its name.
    private let backingPattern: String

    /// With `witness`, the config has a witness (start it with `startWitness()`) and agents exit as
    /// their HA reset.
    init(
        protocol replication: String, size: String, witness: Bool = false, deadTime: String = "2s", extra: String = "",
        clusterExtra: String = "", volumeExtra: String = "", backing: String? = nil
    ) throws {
        backingPattern = backing ?? "\(directory.path)/{node}/vol0.img"
        let ports = try (0..<5).map { _ in try freeLoopbackPort() }
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

        [[node]]
        name = "b"
        address = "127.0.0.1"
        port = \(ports[1])
        precedence = 20
        nbd-listen = ["127.0.0.1:\(ports[3])"]

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
    func cluster(_ node: String) throws -> [String: Any] {
        guard let cluster = try ask(node)["cluster"] as? [String: Any] else {
            throw Tools.Failure(description: "no cluster status from \(node)")
        }
        return cluster
    }

    /// The agent's answer to `status` on its control socket, read directly: the polling loops ask
    /// many times a second, and a process per question is wasteful.
    func ask(_ node: String) throws -> [String: Any] {
        let descriptor = try controlConnection(node)
        defer { close(descriptor) }
        _ = Array("status\n".utf8).withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let answer = Self.readToEnd(descriptor)
        guard let root = try JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any] else {
            throw Tools.Failure(description: "no status from \(node)")
        }
        return root
    }

    /// A connection to a node's control socket, reads timing out after `seconds`.
    func controlConnection(_ node: String, seconds: Int = 10) throws -> Int32 {
        let path = "\(directory.path)/\(node)/\(node).control"
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
        let primaries = ["a", "b"].filter { isRunning($0) && field($0, "role") == "primary" }
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
    func status(_ node: String) throws -> [String: Any] {
        guard let volumes = try ask(node)["volumes"] as? [[String: Any]], let first = volumes.first else {
            throw Tools.Failure(description: "no volume status from \(node)")
        }
        return first
    }

    func field(_ node: String, _ key: String) -> String? {
        (try? status(node))?[key].map { "\($0)" }
    }

    /// Polls `condition` every 100 ms for at most `seconds`.
    func waitFor(_ what: String, seconds: Double = 60, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(100_000)
        }
        throw Tools.Failure(
            description: "timed out waiting for \(what); a: \(log("a").suffix(2000)) b: \(log("b").suffix(2000))")
    }

    /// Waits until both nodes are connected, up to date and have nothing marked.
    func waitInSync(seconds: Double = 120) throws {
        try waitFor("both nodes connected and in sync", seconds: seconds) {
            ["a", "b"].allSatisfy { node in
                field(node, "connection") == "connected" && field(node, "disk") == "upToDate"
                    && field(node, "outOfSyncBytes") == "0" && field(node, "peerDisk") == "upToDate"
            }
        }
        // The voters learn that the secondary is in sync from the primary's next lease renewal;
        // until then it is recorded outdated and could not take over.
        usleep(1_000_000)
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

@Suite(.serialized) struct ReplicationProcessTests {
    @Test(arguments: ["A", "B", "C"])
    func writesThroughNBD_leaveBothBackingFilesIdentical(replication: String) throws {
        let cluster = try TwoNodeCluster(protocol: replication, size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        // Two connections at once over the same bytes: small writes travel with their frames,
        // writes of 64 KiB and more are sent from the primary's file, so overlapping writes from
        // both must still end identical on both copies.
        try Tools.check(
            "fio",
            [
                "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--size=64M", "--randrepeat=0",
                "--name=small", "--bs=4k", "--iodepth=16", "--io_size=16M",
                "--name=large", "--bsrange=64k-1m", "--iodepth=8", "--io_size=48M",
            ])
        try Tools.check(
            "qemu-io",
            [
                "-f", "raw", "-c", "write -f -P 0x5c 1M 256k", "-c", "write -z 2M 64k", "-c", "flush", cluster.uri("a"),
            ])
        try cluster.waitFor("identical copies under protocol \(replication)", seconds: 30) { try cluster.identical() }
        let refused = try Tools.run("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4k", cluster.uri("b")])
        #expect(refused.status != 0, "the secondary must refuse client writes")
        #expect(try cluster.stopBothAndCompare())
    }

    /// A cluster whose peer link runs over mutual TLS, with certificates from `tandem cert issue`;
    /// `swapped` gives node b node a's certificate.
    private func tlsCluster(swapped: Bool = false) throws -> (TwoNodeCluster, TemporaryDirectory) {
        let tls = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "64MiB", clusterExtra: "peer-tls = \"on\"\ntls-dir = \"\(tls.path)\"")
        let tandem = try Tools.tandemBinary()
        try Tools.check(
            tandem,
            [
                "init", "--output", "\(tls.path)/unused.toml", "--secret", "\(tls.path)/unused.secret", "--tls-dir",
                tls.path,
            ])
        for node in ["a", "b"] { try Tools.check(tandem, ["cert", "issue", node, "-c", cluster.config]) }
        if swapped {
            for file in ["server-cert.pem", "server-key.pem"] {
                try FileManager.default.removeItem(atPath: "\(tls.path)/b/\(file)")
                try FileManager.default.copyItem(atPath: "\(tls.path)/a/\(file)", toPath: "\(tls.path)/b/\(file)")
            }
        }
        return (cluster, tls)
    }

    @Test func peerLinkOverMutualTLS_replicatesToIdenticalCopies() throws {
        let (cluster, tls) = try tlsCluster()
        try cluster.startInSyncWithPrimaryA()
        try Tools.check(
            "fio",
            [
                "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--size=64M", "--randrepeat=0",
                "--name=small", "--bs=4k", "--iodepth=16", "--io_size=8M",
                "--name=large", "--bsrange=64k-1m", "--iodepth=8", "--io_size=32M",
            ])
        try cluster.waitFor("identical copies over TLS", seconds: 30) { try cluster.identical() }
        #expect(cluster.log("a").contains("over TLS"), "\(cluster.log("a").suffix(2000))")
        #expect(try cluster.stopBothAndCompare())
        _ = tls
    }

    @Test func peerLinkOverTLS_refusesACertificateThatNamesAnotherNode() throws {
        let (cluster, tls) = try tlsCluster(swapped: true)
        try cluster.start("a")
        try cluster.start("b")
        try cluster.waitFor("a refusing b's certificate", seconds: 30) {
            (cluster.log("a") + cluster.log("b")).contains("does not name node")
        }
        // Node a never takes a link from the node that shows a's own certificate.
        #expect(!cluster.log("a").contains("peer link to b established"), "\(cluster.log("a").suffix(2000))")
        _ = tls
    }

    /// Finding 9: an idle replication link is heard through its keep-alives, so `status` does not
    /// show it silent for as long as no write crossed it.
    @Test func idleReplicationLink_isHeardThroughItsKeepAlives() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.startInSyncWithPrimaryA()
        sleep(3)
        let peer = try #require(try cluster.cluster("a")["peer"] as? [String: Any])
        let links = try #require(peer["links"] as? [[String: Any]])
        let ages = links.map { ($0["name"] as? String ?? "?", $0["lastHeardSecondsAgo"] as? Double ?? -1) }
        let replication = try #require(ages.first { $0.0.contains("replication") }, "links: \(ages)")
        #expect(replication.1 >= 0 && replication.1 < 1.5, "links: \(ages)")
    }

    /// Finding 9: the control socket runs the first line of a connection and nothing after it, and
    /// closes a connection that sends no request within its deadline.
    @Test func controlSocket_runsOnlyTheFirstLine_andClosesAnIdleConnection() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.startInSyncWithPrimaryA()
        let twoLines = try cluster.controlConnection("a", seconds: 15)
        defer { close(twoLines) }
        _ = Array("status\nstandby\n".utf8).withUnsafeBytes { send(twoLines, $0.baseAddress, $0.count, 0) }
        #expect(String(decoding: TwoNodeCluster.readToEnd(twoLines), as: UTF8.self).contains("\"node\""))
        sleep(1)
        #expect(!cluster.log("a").contains("standby by administrator"), "the second line ran: \(cluster.log("a"))")
        let idle = try cluster.controlConnection("a", seconds: 15)
        defer { close(idle) }
        let started = Date()
        #expect(TwoNodeCluster.readToEnd(idle).isEmpty)
        let waited = Date().timeIntervalSince(started)
        #expect(waited > 8 && waited < 14, "closed after \(waited) s")
    }

    @Test func peerLink_takesTheConfiguredCongestionControl_oneTheKernelRefusesLeavesItsDefault() throws {
        let systemDefault = try String(contentsOfFile: "/proc/sys/net/ipv4/tcp_congestion_control", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let available = try String(
            contentsOfFile: "/proc/sys/net/ipv4/tcp_available_congestion_control", encoding: .utf8
        ).split(whereSeparator: \.isWhitespace).map(String.init)
        // One other than the default, so the check below cannot pass by the default alone.
        guard let other = available.first(where: { $0 != systemDefault }) else {
            Issue.record("this kernel offers no TCP congestion control but \(systemDefault); the test needs two")
            return
        }
        let configured = try TwoNodeCluster(
            protocol: "C", size: "16MiB", clusterExtra: "peer-congestion-control = \"\(other)\"")
        try configured.startInSyncWithPrimaryA()
        #expect(try configured.peerLinkCongestionControls() == [other, other])

        let refused = try TwoNodeCluster(
            protocol: "C", size: "16MiB", clusterExtra: "peer-congestion-control = \"no_such_control\"")
        try refused.startInSyncWithPrimaryA()
        #expect(try refused.peerLinkCongestionControls() == [systemDefault, systemDefault])
        for node in ["a", "b"] {
            #expect(
                refused.log(node).contains("refused TCP congestion control \"no_such_control\""),
                "\(node) logged: \(refused.log(node))")
        }
        // The link works on the default.
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x3d 0 1M", refused.uri("a")])
        #expect(try refused.stopBothAndCompare())
    }

    /// Any client could send these: a write, write-zeroes or trim of length 0 was counted in the
    /// activity log when it began and never when it ended, so the next clean stop failed the log's
    /// precondition (SIGILL) and the node restarted as after a crash.
    @Test func zeroLengthWriteZeroesAndTrim_leaveTheActivityLogEmpty_andTheNodeStopsCleanly() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.startInSyncWithPrimaryA()
        let client = try NBDTestClient(port: cluster.nbdPorts["a"]!)
        try client.greet()
        _ = try client.go(export: "vol0")
        #expect(try client.write([], at: 4096) == 0)
        #expect(try client.command(.writeZeroes, offset: 8192, length: 0) == 0)
        #expect(try client.command(.trim, offset: 12288, length: 0) == 0)
        #expect(try client.write([UInt8](repeating: 7, count: 4096), at: 0, fua: true) == 0)
        cluster.stop("a")
        #expect(cluster.exitStatus("a") == 0, "a clean stop; the log ends: \(cluster.log("a").suffix(1500))")
        cluster.stop("b")
    }

    @Test func secondaryStopped_onePercentWritten_resyncMovesAtMostTwiceTheDirtiedBytes() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "1GiB")
        try cluster.startInSyncWithPrimaryA(seconds: 300)
        let fullSeconds = (try cluster.status("a")["lastResync"] as? [String: Any])?["seconds"] as? Double ?? 0
        cluster.stop("b")
        try cluster.waitFor("a to notice b is gone") { cluster.field("a", "connection") == "connecting" }
        // 1% of the volume, rounded up to whole 64 KiB writes (fio writes whole blocks).
        let dirtied = ((1 << 30) / 100 + 65535) / 65536 * 65536
        try Tools.check(
            "fio",
            [
                "--name=onepercent", "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--bs=64k",
                "--iodepth=8", "--size=1G", "--io_size=\(dirtied)", "--randrepeat=0",
            ])
        let marked = Int(cluster.field("a", "outOfSyncBytes") ?? "0") ?? 0
        #expect(marked > 0 && marked <= dirtied, "marked \(marked) bytes for \(dirtied) written")
        let receivedBefore = Int(cluster.field("b", "resyncedBytesTotal") ?? "0") ?? 0
        #expect(receivedBefore == 0, "a restarted agent counts from zero")
        // As during the full sync, no client has written for the last half second: the printed
        // times then compare the same thing (a resync right after a client's write keeps to
        // resync-min-rate).
        usleep(1_000_000)
        try cluster.start("b")
        try cluster.waitInSync()
        let moved = Int(cluster.field("b", "resyncedBytesTotal") ?? "0") ?? 0
        let partialSeconds = (try cluster.status("a")["lastResync"] as? [String: Any])?["seconds"] as? Double ?? 0
        print(
            "resync after 1% written: moved \(moved) bytes for \(dirtied) dirtied; full sync \(fullSeconds) s, partial \(partialSeconds) s"
        )
        #expect(moved > 0 && moved <= 2 * dirtied, "moved \(moved) bytes for \(dirtied) dirtied")
        #expect(try cluster.stopBothAndCompare())
    }

    /// With 16 extents the activity log reaches 64 MiB of the 256: most writes wait for a log write,
    /// and a crash then finds whatever the group commits had made durable.
    @Test(arguments: [nil, 16])
    func primaryKilledMidStream_afterRestartAndResync_copiesAreIdentical(activityLogExtents: Int?) throws {
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "256MiB",
            volumeExtra: activityLogExtents.map { "activity-log-extents = \($0)" } ?? "")
        try cluster.startInSyncWithPrimaryA()
        let stream = Process()
        stream.executableURL = URL(fileURLWithPath: try Tools.path(of: "fio"))
        stream.arguments = [
            "--name=stream", "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--bs=16k",
            "--iodepth=32", "--size=256M", "--time_based", "--runtime=30",
        ]
        stream.standardOutput = FileHandle.nullDevice
        stream.standardError = FileHandle.nullDevice
        try Tools.launch(stream)
        try cluster.waitFor("writes to be flowing") { (Int(cluster.field("a", "epoch") ?? "0") ?? 0) > 0 }
        usleep(1_500_000)
        let waits = Int(cluster.field("a", "activityLogWaits") ?? "") ?? -1
        cluster.crash("a")
        Tools.wait(stream)
        if activityLogExtents != nil {
            #expect(waits > 1000, "writes beyond the log's reach should have waited for log writes, counted \(waits)")
        }
        try cluster.start("a")
        try cluster.waitInSync()
        #expect(cluster.log("a").contains("marked for resync"), "the activity log must be replayed after a crash")
        #expect(try cluster.stopBothAndCompare())
    }

    @Test func splitBrain_isReportedWithDivergedBytes_andResolveDiscardLocalMakesCopiesIdentical() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        cluster.stop("b")
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0xaa 0 1M", cluster.uri("a")])
        cluster.stop("a")
        try cluster.start("b")
        try cluster.volume("b", ["primary", "vol0"])
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0xbb 8M 2M", cluster.uri("b")])
        try cluster.start("a")
        try cluster.waitFor("split brain on both nodes") {
            try cluster.status("a")["splitBrain"] != nil && cluster.status("b")["splitBrain"] != nil
        }
        let report = try cluster.status("a")["splitBrain"] as? [String: Any]
        #expect(report?["localChangedBytes"] as? Int == 1 << 20)
        #expect(report?["peerChangedBytes"] as? Int == 2 << 20)
        let table = try cluster.volume("a", ["status"]).standardOutput
        #expect(table.contains("SPLIT BRAIN"), "\(table)")
        #expect(try cluster.volume("a", ["resolve", "vol0"]).status != 0, "resolve needs --discard-local")
        try cluster.volume("a", ["resolve", "vol0", "--discard-local"])
        try cluster.waitInSync()
        // The journal keeps what was found and what was discarded, in that order.
        let journal = try cluster.events("a")
        let found = journal.range(of: "vol0: split brain: this node changed 1048576 bytes, the peer 2097152 bytes")
        let resolved = journal.range(
            of: "split brain on vol0 resolved by discarding this node's changes: 1048576 bytes changed here, "
                + "2097152 on the peer")
        #expect(found != nil && resolved != nil, "\(journal)")
        if let found, let resolved { #expect(found.lowerBound < resolved.lowerBound, "\(journal)") }
        #expect(try cluster.events("b").contains("vol0: resync as source"), "the survivor's journal shows its resync")
        #expect(try cluster.stopBothAndCompare())
    }

    @Test func onlineVerify_findsTheBlockCorruptedBehindTandemsBack_andResyncRepairsIt() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 0 16M", cluster.uri("a")])
        try cluster.waitFor("identical copies") { try cluster.identical() }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: cluster.backing("b")))
        try handle.seek(toOffset: 5 * 65536 + 4096)
        try handle.write(contentsOf: Data(repeating: 0xEE, count: 4096))
        try handle.close()
        #expect(try !cluster.identical())
        try cluster.volume("a", ["verify", "start", "vol0"])
        try cluster.waitFor("the verify to finish") {
            ((try cluster.status("a"))["lastVerify"] as? [String: Any])?["finished"] as? Bool == true
        }
        let result = try cluster.status("a")["lastVerify"] as? [String: Any]
        #expect(result?["outOfSyncOffsets"] as? [Int] == [5 * 65536], "exactly the corrupted 64 KiB region")
        try cluster.waitInSync()
        let finished =
            "vol0: online verify finished: 1024 of 1024 regions compared, 1 out of sync (offset+length: 327680+65536)"
        #expect(cluster.log("a").contains(finished))
        #expect(try cluster.events("a").contains(finished), "the verify's result belongs in the event journal too")
        #expect(try cluster.stopBothAndCompare())
    }

    /// The secondary's file system fills up during the initial full sync. The resync waits (a
    /// second, then two, four... up to a minute) with the reason in the status and the journal,
    /// rather than sending the refused blocks round and round; once there is room it goes on.
    @Test func aSecondaryWhoseDiskIsFull_makesTheResyncWaitWithTheReason_andItEndsOnceThereIsRoom() throws {
        guard getuid() == 0 else {
            throw Tools.Failure(description: "this test needs root: it mounts a tmpfs in a mount namespace")
        }
        let disks = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "32MiB", backing: "\(disks.path)/{node}-disk/vol0.img")
        for node in ["a", "b"] {
            try FileManager.default.createDirectory(
                atPath: "\(disks.path)/\(node)-disk", withIntermediateDirectories: true)
        }
        try cluster.start("a")
        try cluster.start("b", tmpfs: (directory: "\(disks.path)/b-disk", size: "8m"))
        try cluster.volume("a", ["primary", "vol0"])
        var reason = ""
        try cluster.waitFor("the resync to wait") {
            reason = ((try cluster.status("a"))["resync"] as? [String: Any])?["stalled"] as? String ?? ""
            return !reason.isEmpty
        }
        #expect(reason.hasPrefix("the peer could not write the block at offset "), "\(reason)")
        #expect(
            cluster.log("b").contains(
                "cannot write the peer's resync data: pwrite \(cluster.backing("b")): No space left on device"),
            "\(cluster.log("b"))")
        // b knows its copy lacks the blocks it could not write.
        #expect((Int(cluster.field("b", "outOfSyncBytes") ?? "") ?? 0) > 0, "b counts itself in sync")
        // Waiting, not spinning: over three seconds the two agents use a fraction of a core.
        let pids = try ["a", "b"].map { node in
            try #require(cluster.pid(node), "\(node)'s agent is not running")
        }
        let before = try pids.map(cpuTicks).reduce(0, +)
        usleep(3_000_000)
        let spent = try pids.map(cpuTicks).reduce(0, +) - before
        #expect(spent < Int(sysconf(Int32(_SC_CLK_TCK))), "the agents spent \(spent) clock ticks in 3 s")
        let journal = try cluster.events("a")
        #expect(journal.contains("vol0: resync waits: the peer could not write the block at offset "), "\(journal)")
        // Room again (the tmpfs grown from inside b's mount namespace): the next try goes on.
        try Tools.check(
            "nsenter", ["-t", "\(pids[1])", "-m", "mount", "-o", "remount,size=64m", "\(disks.path)/b-disk"])
        try cluster.waitInSync()
        #expect(try cluster.events("a").contains("vol0: resync goes on: the peer writes its blocks again"))
        #expect(cluster.log("b").contains("vol0: writes of the peer's data go through again"))
        let copyOfB = "/proc/\(pids[1])/root\(cluster.backing("b"))"
        #expect(FileManager.default.contentsEqual(atPath: cluster.backing("a"), andPath: copyOfB))
    }

    /// User and system time of a process so far, in clock ticks (from /proc/PID/stat).
    private func cpuTicks(_ pid: Int32) throws -> Int {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // The fields after the command's closing parenthesis; utime and stime are the 14th and
        // 15th of the line, the 12th and 13th after it.
        guard let close = stat.lastIndex(of: ")") else { throw Tools.Failure(description: "unreadable \(stat)") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else {
            throw Tools.Failure(description: "unreadable /proc/\(pid)/stat: \(stat)")
        }
        return user + system
    }

    @Test func aSecondWitnessOnTheSameRecord_refusesToStart() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB", witness: true)
        try cluster.startWitness()
        defer { cluster.stopWitness() }
        let second = try Tools.run(
            try Tools.tandemBinary(), ["witness", "--config", cluster.config], timeout: .seconds(30))
        #expect(second.status == 1)
        #expect(
            second.standardError.contains("another witness is running (process ")
                && second.standardError.contains("/witness/witness.lock)"), "\(second.standardError)")
    }

    /// The node's port taken over TCP (the peer link's listener) or over UDP by a socket that allows
    /// sharing it, as another agent's did (the heartbeats: sharing would split them between the
    /// two). With the peer link and membership running, the failure must still end the agent.
    @Test(arguments: [
        (Int32(SOCK_STREAM.rawValue), "cannot listen for the peer link on 127.0.0.1:"),
        (Int32(SOCK_DGRAM.rawValue), "cannot listen for membership datagrams on UDP 127.0.0.1:"),
    ])
    func anAgentWhosePortIsTaken_exitsNamingIt(type: Int32, said: String) throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        let port = cluster.peerPorts["a"]!
        let stream = type == Int32(SOCK_STREAM.rawValue)
        guard let taken = boundLoopbackSocket(port: port, type: type, reuseAddress: !stream),
            !stream || listen(taken, 1) == 0
        else { throw Tools.Failure(description: "cannot take 127.0.0.1:\(port)") }
        defer { close(taken) }
        let output = try Tools.run(
            try Tools.tandemBinary(), ["agent", "--config", cluster.config, "--node", "a"], timeout: .seconds(30))
        #expect(output.status == 1)
        #expect(output.standardError.contains("\(said)\(port): "), "\(output.standardError)")
    }

    @Test func wrongSharedSecret_isRefusedWithTheReason_andNothingReplicates() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.start("a")
        // b reads another secret: each side must refuse the other's proof.
        try "ffffffffffffffffffffffffffffffff\n".write(
            toFile: "\(cluster.directory.path)/secret", atomically: true, encoding: .utf8)
        try cluster.start("b")
        try cluster.waitFor("the handshake to be refused") {
            (cluster.log("a") + cluster.log("b")).contains("failed authentication (wrong shared secret?)")
        }
        #expect(cluster.field("a", "connection") == "connecting")
        #expect(cluster.field("b", "connection") == "connecting")
        #expect(cluster.field("a", "peerRole") == "<null>" || cluster.field("a", "peerRole") == nil)
    }
}
