import CTandemLinux
import Foundation
import Synchronization
import TandemAPI
import TandemTestSupport
import Testing

/// Four hosts on one machine: node A, node B, the witness and a client, each in a network
/// namespace the test creates, on a bridge in a fifth. Every address lives inside them.
final class NamespaceLab: @unchecked Sendable {
    static let subnet = "10.77.0"
    /// Each lab of one test process gets its own names.
    static let counter = Mutex(0)
    let prefix: String
    let hub: String
    let hosts: [String: (namespace: String, address: String)]
    /// The agents and the witness started, by host; a supervisor thread reads them too.
    private let processLock = NSLock()
    private var processes: [String: Process] = [:]
    private var logs: [String: DataCollector] = [:]
    let directory = TemporaryDirectory()
    let config: String
    static let floating = "\(subnet).50"
    /// Held by Debian's IPaddr2 OCF agent in the same group.
    static let second = "\(subnet).51"
    static let nbdPort = 10809

    /// Fails with what is missing: these tests need root and iproute2.
    static func requirements() throws {
        guard getuid() == 0 else { throw Tools.Failure(description: "network namespace tests need root") }
        guard (try? Tools.path(of: "ip")) != nil else {
            throw Tools.Failure(description: "the ip tool (iproute2) is missing")
        }
        guard (try? Tools.path(of: "arping")) != nil else {
            throw Tools.Failure(description: "arping (iputils-arping) is missing")
        }
    }

    /// `cluster` adds lines to the config's `[cluster]` table; `{dir}` in them is the lab's directory.
    init(cluster: String = "") throws {
        try Self.requirements()
        let serial = Self.counter.withLock { value in
            value += 1
            return value % 100
        }
        prefix = "td\(getpid() % 100_000)\(serial)"
        hub = "\(prefix)-hub"
        hosts = [
            "a": ("\(prefix)-a", "\(Self.subnet).1"), "b": ("\(prefix)-b", "\(Self.subnet).2"),
            "w": ("\(prefix)-w", "\(Self.subnet).3"), "c": ("\(prefix)-c", "\(Self.subnet).10"),
        ]
        config = "\(directory.path)/tandem.toml"
        try ip(["netns", "add", hub])
        try ip(["-n", hub, "link", "add", "br0", "type", "bridge"])
        try ip(["-n", hub, "link", "set", "br0", "up"])
        for (name, host) in hosts.sorted(by: { $0.key < $1.key }) {
            try ip(["netns", "add", host.namespace])
            let outside = "\(prefix)\(name)p"
            try ip(["link", "add", "\(prefix)\(name)e", "type", "veth", "peer", "name", outside])
            try ip(["link", "set", "\(prefix)\(name)e", "netns", host.namespace, "name", "eth0"])
            try ip(["link", "set", outside, "netns", hub])
            try ip(["-n", hub, "link", "set", outside, "master", "br0", "up"])
            try ip(["-n", host.namespace, "addr", "add", "\(host.address)/24", "dev", "eth0"])
            try ip(["-n", host.namespace, "link", "set", "eth0", "up"])
            try ip(["-n", host.namespace, "link", "set", "lo", "up"])
        }
        try "0123456789abcdef0123456789abcdef\n".write(
            toFile: "\(directory.path)/secret", atomically: true, encoding: .utf8)
        try """
        [cluster]
        name = "netns"
        secret-file = "\(directory.path)/secret"
        state-dir = "\(directory.path)/{node}"
        ha-reset = "exit"
        \(cluster.replacing("{dir}", with: directory.path))

        [[node]]
        name = "a"
        address = "\(hosts["a"]!.address)"
        nbd-listen = ["0.0.0.0:\(Self.nbdPort)"]

        [[node]]
        name = "b"
        address = "\(hosts["b"]!.address)"
        nbd-listen = ["0.0.0.0:\(Self.nbdPort)"]

        [witness]
        address = "\(hosts["w"]!.address)"

        [[volume]]
        name = "vol0"
        protocol = "C"
        size = "256MiB"
        backing = "\(directory.path)/{node}/vol0.img"

        [[group]]
        name = "storage"
        resources = [
          { type = "volume", volume = "vol0" },
          { type = "ip", name = "floating", address = "\(Self.floating)/24", interface = "eth0", monitor-interval = "1s" },
          { type = "nbd-export", volume = "vol0" },
          { type = "ocf", name = "vip2", agent = "heartbeat:IPaddr2", monitor-interval = "2s", params = { ip = "\(Self.second)", cidr_netmask = "24", nic = "eth0" } },
        ]
        """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    deinit {
        let all = processLock.withLock { Array(processes.values) }
        for process in all where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        for process in all { Tools.wait(process) }
        for host in hosts.values { _ = try? Tools.run("ip", ["netns", "del", host.namespace]) }
        _ = try? Tools.run("ip", ["netns", "del", hub])
    }

    @discardableResult
    func ip(_ arguments: [String]) throws -> Tools.Output { try Tools.check("ip", arguments) }

    /// Starts `tandem agent` (or the witness for "w") inside the host's namespace.
    func start(_ name: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Tools.path(of: "ip"))
        let command = name == "w" ? ["witness", "--config", config] : ["agent", "--config", config, "--node", name]
        process.arguments = ["netns", "exec", hosts[name]!.namespace, try Tools.tandemBinary()] + command
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try Tools.launch(process)
        // The log of an earlier run of the same host stays readable in front of the new one.
        let earlier = log(name)
        let collector = DataCollector(errors.fileHandleForReading)
        processLock.withLock {
            processes[name] = process
            logs[name] = collector
            earlierLogs[name] = earlier
        }
    }

    private var earlierLogs: [String: String] = [:]

    func kill9(_ name: String) {
        guard let process = processLock.withLock({ processes[name] }) else { return }
        kill(process.processIdentifier, SIGKILL)
        Tools.wait(process)
    }

    /// Sends `number` to the host's process (the agent itself, not `ip netns exec`, which execs it).
    func signal(_ name: String, _ number: Int32) {
        guard let process = processLock.withLock({ processes[name] }) else { return }
        kill(process.processIdentifier, number)
    }

    func isRunning(_ name: String) -> Bool { processLock.withLock { processes[name] }?.isRunning ?? false }

    /// Takes a host off the bridge (its cable pulled) or puts it back.
    func link(_ name: String, up: Bool) throws {
        try ip(["-n", hosts[name]!.namespace, "link", "set", "eth0", up ? "up" : "down"])
    }

    /// Cuts or heals only the path between A and B: each drops what it would send to the other.
    func cutBetweenNodes(_ cut: Bool) throws {
        for (from, to) in [("a", "b"), ("b", "a")] {
            try ip([
                "-n", hosts[from]!.namespace, "route", cut ? "add" : "del", "blackhole", "\(hosts[to]!.address)/32",
            ])
        }
    }

    /// Drops (or lets through again) the peer link's TCP traffic in the host's namespace, leaving
    /// the membership datagrams on the same port alone. Needs nft (Debian's nftables).
    func blockReplication(_ name: String, _ block: Bool) throws {
        let namespace = hosts[name]!.namespace
        let nft = try Tools.path(of: "nft")
        guard block else {
            try Tools.check("ip", ["netns", "exec", namespace, nft, "delete", "table", "inet", "tandemtest"])
            return
        }
        let rules = """
            table inet tandemtest {
              chain input { type filter hook input priority 0; tcp dport 7789 drop; tcp sport 7789 drop; }
              chain output { type filter hook output priority 0; tcp dport 7789 drop; tcp sport 7789 drop; }
            }
            """
        let file = "\(directory.path)/block-\(name).nft"
        try rules.write(toFile: file, atomically: true, encoding: .utf8)
        try Tools.check("ip", ["netns", "exec", namespace, nft, "-f", file])
    }

    /// The node's status from `tandem status --json`, if its agent answers.
    func cluster(_ node: String) -> StatusReply? {
        guard
            let output = try? Tools.run(
                try Tools.tandemBinary(), ["status", "--json", "--config", config, "--node", node]),
            output.status == 0
        else { return nil }
        return try? APICoding.decoder().decode(StatusReply.self, from: Data(output.standardOutput.utf8))
    }

    func role(_ node: String) -> String? {
        guard isRunning(node) else { return nil }
        return cluster(node)?.cluster?.role.rawValue
    }

    /// Which nodes hold `address` (the floating one by default) now.
    func floatingHolders(_ address: String = floating) -> [String] {
        ["a", "b"].filter { node in
            let output = try? Tools.run("ip", ["-n", hosts[node]!.namespace, "-o", "addr", "show", "dev", "eth0"])
            return output?.standardOutput.contains("inet \(address)/") ?? false
        }
    }

    func log(_ name: String) -> String {
        let (earlier, current) = processLock.withLock { (earlierLogs[name] ?? "", logs[name]) }
        return earlier + (current?.snapshot() ?? "")
    }

    func waitFor(_ what: String, seconds: Double = 60, _ condition: () -> Bool) throws {
        if Polling.until(seconds: seconds, condition) { return }
        throw Tools.Failure(
            description: "timed out waiting for \(what); a: \(log("a").suffix(1500)) b: \(log("b").suffix(1500))")
    }

    /// Runs `work` on a thread inside the client's namespace: every socket it opens lives there.
    func onClient(_ work: @escaping @Sendable () -> Void) -> Thread {
        let path = "/run/netns/\(hosts["c"]!.namespace)"
        let thread = Thread {
            guard ctandem_enter_network_namespace(path) == 0 else {
                print("cannot enter \(path): \(String(cString: strerror(errno)))")
                return
            }
            work()
        }
        thread.start()
        return thread
    }
}

/// A client in its own namespace writing numbered 4 KiB FUA blocks to the floating address and
/// keeping a ledger of every acknowledgement. It reconnects every 50 ms when the address fails.
final class FloatingLedger: @unchecked Sendable {
    let lock = NSLock()
    private(set) var acknowledged: [(block: Int, at: Date)] = []
    private var stopped = false
    private var next = 0
    var failures: [String] = []

    var count: Int { lock.withLock { acknowledged.count } }
    func stop() { lock.withLock { stopped = true } }
    func acknowledged(after time: Date) -> Int { lock.withLock { acknowledged.filter { $0.at > time }.count } }

    /// The longest stall the client saw after `time`: the largest interval between consecutive
    /// acknowledgements, the later one after `time` (an acknowledgement already on its way when
    /// the primary was killed may arrive just after it).
    func gap(after time: Date) -> TimeInterval? {
        let all = lock.withLock { acknowledged }
        guard let first = all.firstIndex(where: { $0.at > time }), first > 0 else { return nil }
        return (first..<all.count).map { all[$0].at.timeIntervalSince(all[$0 - 1].at) }.max()
    }

    func run() {
        while !lock.withLock({ stopped }) {
            guard
                let client = try? NBDTestClient(
                    port: NamespaceLab.nbdPort, host: NamespaceLab.floating, connectTimeout: 300),
                (try? client.greet()) != nil, let export = try? client.go(export: "vol0"),
                !export.flags.contains(.readOnly)
            else {
                usleep(50_000)
                continue
            }
            while !lock.withLock({ stopped }) {
                let block = lock.withLock { next }
                guard block < 65536 else { return }
                guard let error = try? client.write(NumberedWriter.content(block), at: UInt64(block) * 4096, fua: true),
                    error == 0
                else { break }
                lock.withLock {
                    acknowledged.append((block, Date()))
                    next += 1
                }
            }
        }
    }

    /// The acknowledged blocks that read back wrong through the floating address (`[-1]` when the
    /// export could not be reached within 20 seconds).
    func lost() -> [Int] {
        var connected: NBDTestClient?
        for _ in 0..<200 where connected == nil {
            if let client = try? NBDTestClient(
                port: NamespaceLab.nbdPort, host: NamespaceLab.floating, connectTimeout: 300),
                (try? client.greet()) != nil, (try? client.go(export: "vol0")) != nil
            {
                connected = client
            } else {
                usleep(100_000)
            }
        }
        guard let client = connected else { return [-1] }
        return lock.withLock { acknowledged }.compactMap { entry in
            guard let (error, data) = try? client.read(at: UInt64(entry.block) * 4096, length: 4096), error == 0,
                data == NumberedWriter.content(entry.block)
            else { return entry.block }
            return nil
        }
    }
}

@Suite("Network namespaces: floating IP, partitions, isolation", .serialized)
struct NamespaceLabTests {
    /// Waits for `thread` to end.
    func join(_ thread: Thread) {
        while !thread.isFinished { usleep(10_000) }
    }

    func lostThroughTheFloatingAddress(_ lab: NamespaceLab, _ ledger: FloatingLedger) -> [Int] {
        let result = NSLockedBox<[Int]>([])
        join(lab.onClient { result.set(ledger.lost()) })
        return result.value
    }

    @Test("the client follows the floating IP through a primary's death; partitions make at most one primary")
    func floatingIP_partitions_andIsolation() throws {
        let lab = try NamespaceLab()
        try lab.start("w")
        try lab.start("a")
        try lab.start("b")
        try lab.waitFor("a primary with the floating address") {
            lab.role("a") == "primary" && lab.floatingHolders() == ["a"]
        }
        try lab.waitFor("IPaddr2 holds the second address on a") { lab.floatingHolders(NamespaceLab.second) == ["a"] }
        try lab.waitFor("a and b in sync") {
            let volume = lab.cluster("a")?.volumes.first
            return volume?.connection == .connected && volume?.peerDisk == .upToDate && volume?.outOfSyncBytes == 0
        }
        usleep(1_000_000)
        // The nbd-export resource runs only on the primary: the secondary offers no export.
        let secondaryAnswer = NSLockedBox<String>("")
        join(
            lab.onClient {
                guard let client = try? NBDTestClient(port: NamespaceLab.nbdPort, host: lab.hosts["b"]!.address),
                    (try? client.greet()) != nil
                else { return secondaryAnswer.set("no connection") }
                do {
                    _ = try client.go(export: "vol0")
                    secondaryAnswer.set("offered")
                } catch {
                    secondaryAnswer.set("\(error)")
                }
            })
        #expect(secondaryAnswer.value.contains("GO refused"), "\(secondaryAnswer.value)")
        let ledger = FloatingLedger()
        let writer = lab.onClient { ledger.run() }
        try lab.waitFor("writes through the floating address") { ledger.count >= 50 }

        // The witness isolated: nothing moves, writes go on.
        try lab.link("w", up: false)
        usleep(6_000_000)
        #expect(lab.role("a") == "primary")
        #expect(lab.role("b") == "secondary")
        #expect(lab.floatingHolders() == ["a"])
        let beforeWitness = Date()
        try lab.waitFor("writes with the witness gone") { ledger.acknowledged(after: beforeWitness) >= 20 }
        try lab.link("w", up: true)
        usleep(2_000_000)

        // Only A–B cut, the witness sees both: exactly one primary keeps serving.
        try lab.cutBetweenNodes(true)
        usleep(8_000_000)
        #expect(lab.role("a") == "primary")
        #expect(lab.role("b") != "primary")
        #expect(lab.floatingHolders() == ["a"])
        let duringCut = Date()
        try lab.waitFor("writes on a while cut from b") { ledger.acknowledged(after: duringCut) >= 20 }
        try lab.cutBetweenNodes(false)
        try lab.waitFor("a and b in sync again", seconds: 90) {
            let volume = lab.cluster("a")?.volumes.first
            return volume?.peerDisk == .upToDate && volume?.outOfSyncBytes == 0
        }
        usleep(1_000_000)

        // The primary dies (agent killed, cable pulled): B takes the volume, the address, the export.
        let killedAt = Date()
        lab.kill9("a")
        try lab.link("a", up: false)
        // (A's dead namespace still has the address configured on its unplugged interface.)
        try lab.waitFor("b primary with the floating address", seconds: 30) {
            lab.role("b") == "primary" && lab.floatingHolders().contains("b")
        }
        try lab.waitFor("IPaddr2 moved the second address to b", seconds: 30) {
            lab.floatingHolders(NamespaceLab.second).contains("b")
        }
        try lab.waitFor("writes through the floating address on b", seconds: 30) {
            ledger.acknowledged(after: killedAt) >= 20
        }
        ledger.stop()
        join(writer)
        let lost = lostThroughTheFloatingAddress(lab, ledger)
        #expect(lost.isEmpty, "\(lost.count) acknowledged blocks lost, first \(lost.prefix(5))")
        let gap = ledger.gap(after: killedAt) ?? .infinity
        print(
            "floating-address ledger: \(ledger.count) acknowledged blocks, none lost; "
                + String(format: "gap through the floating address when the primary died: %.3f s", gap))

        // A returns as secondary; then B is isolated from everyone: it stops serving, A takes over.
        try lab.link("a", up: true)
        try lab.start("a")
        try lab.waitFor("a back in sync", seconds: 90) {
            let volume = lab.cluster("b")?.volumes.first
            return volume?.peerDisk == .upToDate && volume?.outOfSyncBytes == 0
        }
        usleep(1_000_000)
        try lab.link("b", up: false)
        try lab.waitFor("b, cut off from everyone, stops serving and gives up the address", seconds: 30) {
            lab.role("b") != "primary" && !lab.floatingHolders().contains("b")
        }
        try lab.waitFor("a primary with the floating address", seconds: 30) {
            lab.role("a") == "primary" && lab.floatingHolders() == ["a"]
        }
        let events = try Tools.check(
            try Tools.tandemBinary(), ["events", "--config", lab.config, "--node", "b"]
        ).standardOutput
        #expect(events.contains("lost quorum"), "\(events)")
        #expect(lostThroughTheFloatingAddress(lab, ledger).isEmpty)
    }

    @Test("a floating address another host already answers for is refused by name; nothing else stops")
    func floatingAddressInUse_isReported() throws {
        let lab = try NamespaceLab()
        // The client host takes the address first.
        try lab.ip(["-n", lab.hosts["c"]!.namespace, "addr", "add", "\(NamespaceLab.floating)/24", "dev", "eth0"])
        try lab.start("w")
        try lab.start("a")
        try lab.start("b")
        try lab.waitFor("a reports the address in use") {
            let events =
                (try? Tools.run(
                    try Tools.tandemBinary(), ["events", "--config", lab.config, "--node", "a"]))?.standardOutput ?? ""
            return events.contains(
                "resource floating failed to start: \(NamespaceLab.floating) is already in use: another host on eth0 answers ARP for it"
            )
        }
        #expect(lab.floatingHolders().isEmpty)
        #expect(lab.isRunning("a") && lab.isRunning("b"))
        #expect(lab.cluster("a")?.volumes.first?.name == "vol0", "the agent still answers with its volume")
    }
}

/// A value set by one thread and read by another.
final class NSLockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    func set(_ value: Value) { lock.withLock { stored = value } }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
    var value: Value { lock.withLock { stored } }
}
