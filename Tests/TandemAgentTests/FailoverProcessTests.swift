import Foundation
import NIOCore
import TandemAPI
import TandemWire
import Testing

/// A client that writes numbered 4 KiB blocks with FUA, each at its own offset, and records every
/// acknowledgement with its time. When its node fails it moves to the other one.
final class NumberedWriter: @unchecked Sendable {
    let cluster: TwoNodeCluster
    let lock = NSLock()
    private(set) var acknowledged: [(block: Int, node: String, at: Date)] = []
    private var next = 0
    private var stopped = false
    let blocks: Int
    var target: String
    /// Stay on `target` instead of trying the other node when it does not take writes.
    var fixed = false

    init(cluster: TwoNodeCluster, blocks: Int, start target: String) {
        self.cluster = cluster
        self.blocks = blocks
        self.target = target
    }

    static func content(_ block: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        for index in stride(from: 0, to: 4096, by: 8) {
            withUnsafeBytes(of: UInt64(block).bigEndian) { bytes.replaceSubrange(index..<index + 8, with: $0) }
        }
        return bytes
    }

    var count: Int { lock.withLock { acknowledged.count } }

    func stop() { lock.withLock { stopped = true } }

    /// Writes until stopped; on a failed connection, tries the nodes in turn every 20 ms until one
    /// takes writes.
    func run() {
        var node = target
        while !lock.withLock({ stopped }) {
            guard let client = try? NBDTestClient(port: cluster.nbdPorts[node]!),
                (try? client.greet()) != nil, let export = try? client.go(export: "vol0"),
                !export.flags.contains(.readOnly)
            else {
                if !fixed { node = node == "a" ? "b" : "a" }
                usleep(20_000)
                continue
            }
            while !lock.withLock({ stopped }) {
                let block = lock.withLock { next }
                guard block < blocks else { return }
                guard let error = try? client.write(Self.content(block), at: UInt64(block) * 4096, fua: true) else {
                    break
                }
                guard error == 0 else { break }
                lock.withLock {
                    acknowledged.append((block, node, Date()))
                    next += 1
                }
            }
        }
    }

    /// Every acknowledged block, read back from `node`: the blocks whose content is wrong.
    func lostBlocks(readingFrom node: String) throws -> [Int] {
        let client = try NBDTestClient(port: cluster.nbdPorts[node]!)
        try client.greet()
        try client.go(export: "vol0")
        var lost: [Int] = []
        for entry in lock.withLock({ acknowledged }) {
            let (error, data) = try client.read(at: UInt64(entry.block) * 4096, length: 4096)
            if error != 0 || data != Self.content(entry.block) { lost.append(entry.block) }
        }
        return lost
    }

    /// The gap the client saw when it moved to `node` after `time`: from the last acknowledgement
    /// before the first one `node` gave after `time`, to that one. Acknowledgements the old node
    /// sent just after `time` count as before the gap, as they do for the client.
    func gap(movingTo node: String, after time: Date) -> TimeInterval? {
        let all = lock.withLock { acknowledged }
        guard let first = all.firstIndex(where: { $0.node == node && $0.at > time }), first > 0 else { return nil }
        return all[first].at.timeIntervalSince(all[first - 1].at)
    }
}

@Suite("Failover with real agents and a witness", .serialized)
struct FailoverProcessTests {
    static let rounds = ProcessInfo.processInfo.environment["TANDEM_FAILOVER_ROUNDS"].flatMap(Int.init) ?? 20
    static let deadTime = ProcessInfo.processInfo.environment["TANDEM_FAILOVER_DEAD_TIME"] ?? "2s"

    func startCluster() throws -> TwoNodeCluster {
        let cluster = try TwoNodeCluster(protocol: "C", size: "256MiB", witness: true, deadTime: Self.deadTime)
        try cluster.startWitness()
        try cluster.startInSyncWithPrimaryA()
        return cluster
    }

    @Test("SIGKILL of the primary, repeated: every acknowledged FUA block reads back from the new primary")
    func killPrimary_noAcknowledgedWriteLost() throws {
        let cluster = try startCluster()
        var gaps: [Double] = []
        var reportedGaps: [Double] = []
        for round in 1...Self.rounds {
            let primary = try #require(cluster.primary())
            let survivor = primary == "a" ? "b" : "a"
            let writer = NumberedWriter(cluster: cluster, blocks: 65536, start: primary)
            let thread = Thread { writer.run() }
            thread.start()
            try cluster.waitFor("writes on \(primary)") { writer.count >= 50 }
            let killedAt = Date()
            cluster.crash(primary)
            try cluster.waitFor("writes on \(survivor) after the kill", seconds: 30) {
                writer.lock.withLock { writer.acknowledged.contains { $0.node == survivor && $0.at > killedAt } }
            }
            usleep(100_000)
            writer.stop()
            while thread.isExecuting || !thread.isFinished { usleep(10_000) }
            let lost = try writer.lostBlocks(readingFrom: survivor)
            #expect(lost.isEmpty, "round \(round): \(lost.count) acknowledged blocks lost, first \(lost.prefix(5))")
            let gap = writer.gap(movingTo: survivor, after: killedAt)
            if let gap { gaps.append(gap) }
            // The survivor's own account of the failover: why, and the client-visible gap as the
            // contract defines it, which the writer has just measured from outside.
            var record: FailoverRecord?
            try cluster.waitFor("\(survivor) to record the failover's gap", seconds: 10) {
                let history: FailoverHistoryReply = try cluster.control(survivor).get(APIPath.failovers)
                record = history.failovers.last
                return record?.clientVisibleGapSeconds != nil
            }
            #expect(record?.reason == .peerSilent, "\(String(describing: record))")
            if let gap, let reported = record?.clientVisibleGapSeconds {
                reportedGaps.append(reported)
                #expect(abs(reported - gap) < 0.25, "round \(round): reported \(reported) s, the writer saw \(gap) s")
            }
            try cluster.start(primary)
            try cluster.waitInSync()
        }
        gaps.sort()
        let text = gaps.map { String(format: "%.3f", $0) }.joined(separator: " ")
        print("failover gaps (s, sorted) over \(gaps.count) kills, dead-time \(Self.deadTime): \(text)")
        print(
            "as the survivors reported them: \(reportedGaps.map { String(format: "%.3f", $0) }.joined(separator: " "))")
        #expect(gaps.count == Self.rounds)
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("SIGSTOP of the primary for three dead times: after SIGCONT it completes no write, and resets")
    func frozenPrimary_completesNothingAfterTheTakeover() throws {
        let cluster = try startCluster()
        let writer = NumberedWriter(cluster: cluster, blocks: 65536, start: "a")
        // The frozen node's own client: it keeps its connection and reports every reply it gets.
        let client = try NBDTestClient(port: cluster.nbdPorts["a"]!)
        try client.greet()
        try client.go(export: "vol0")
        #expect(try client.write(NumberedWriter.content(1), at: 0, fua: true) == 0)
        try cluster.freeze("a")
        let stoppedAt = Date()
        try client.sendRequest(
            .write, cookie: 99, offset: 4096, length: 4096, flags: .fua,
            payload: ByteBuffer(bytes: [UInt8](repeating: 7, count: 4096)))
        let thread = Thread { writer.run() }
        writer.target = "b"
        writer.fixed = true
        thread.start()
        try cluster.waitFor("b takes writes while a is stopped", seconds: 20) {
            writer.lock.withLock { writer.acknowledged.contains { $0.node == "b" } }
        }
        let takeover = writer.lock.withLock { writer.acknowledged.first { $0.node == "b" }!.at }
        // Three dead times in all, then wake it.
        let deadSeconds = Double(Self.deadTime.dropLast()) ?? 2
        let remaining = 3 * deadSeconds - Date().timeIntervalSince(stoppedAt)
        if remaining > 0 { usleep(UInt32(remaining * 1_000_000)) }
        cluster.signal("a", SIGCONT)
        var successesAfterTakeover = 0
        while let reply = try? client.receiveReply() {
            if reply.error == 0, Date() > takeover { successesAfterTakeover += 1 }
        }
        #expect(successesAfterTakeover == 0, "the old primary acknowledged \(successesAfterTakeover) writes")
        try cluster.waitFor("a resets itself", seconds: 10) { !cluster.isRunning("a") }
        let resetLog = try String(contentsOfFile: "\(cluster.directory.path)/a/a.reset-log", encoding: .utf8)
        #expect(resetLog.contains("HA reset"))
        // The reset log and the journal name addresses, failures and reasons: the owner's alone.
        for file in ["a.reset-log", "a.events"] {
            let mode =
                try FileManager.default.attributesOfItem(atPath: "\(cluster.directory.path)/a/\(file)")[
                    .posixPermissions] as? Int
            #expect(mode == 0o600, "\(file) has mode \(String(mode ?? 0, radix: 8))")
        }
        writer.stop()
        while !thread.isFinished { usleep(10_000) }
        #expect(try writer.lostBlocks(readingFrom: "b").isEmpty)
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("witness stopped: nothing fails over and the cluster says so; secondary killed: the primary serves on")
    func witnessDown_thenSecondaryDown() throws {
        let cluster = try startCluster()
        cluster.stopWitness()
        usleep(5_000_000)
        #expect(cluster.primary() == "a")
        let view = try cluster.cluster("a")
        let heard = view.witness.lastHeardSecondsAgo ?? .infinity
        #expect(heard > 2, "the witness was heard \(heard) s ago although it is stopped")
        #expect(view.quorum)
        // Bring the witness back, then lose the secondary.
        try cluster.startWitness()
        usleep(3_000_000)
        cluster.crash("b")
        let writer = NumberedWriter(cluster: cluster, blocks: 65536, start: "a")
        let thread = Thread { writer.run() }
        thread.start()
        try cluster.waitFor("a keeps taking writes without b", seconds: 20) { writer.count >= 100 }
        writer.stop()
        while !thread.isFinished { usleep(10_000) }
        #expect(writer.lock.withLock { writer.acknowledged.allSatisfy { $0.node == "a" } })
        #expect(cluster.primary() == "a")
        #expect(cluster.view("a")?.connection != .connected)
        cluster.stop("a")
        cluster.stopWitness()
    }

    @Test("node standby hands the role over without losing a write; the peer's standby is asked through this node")
    func plannedSwitchover() throws {
        let cluster = try startCluster()
        let writer = NumberedWriter(cluster: cluster, blocks: 65536, start: "a")
        let thread = Thread { writer.run() }
        thread.start()
        try cluster.waitFor("writes on a") { writer.count >= 50 }
        // With a witness, only the decider sets roles.
        let byHand = try Tools.run(
            try Tools.tandemBinary(), ["volume", "primary", "vol0", "--node", "b", "--config", cluster.config])
        #expect(byHand.status != 0)
        #expect(byHand.combined.contains("tandem node standby"), "\(byHand.combined)")
        #expect(cluster.view("b")?.role == .secondary)
        let switchedAt = Date()
        let output = try Tools.run(try Tools.tandemBinary(), ["node", "standby", "a", "--config", cluster.config])
        #expect(output.status == 0, "\(output.combined)")
        try cluster.waitFor("writes on b", seconds: 20) {
            writer.lock.withLock { writer.acknowledged.contains { $0.node == "b" } }
        }
        writer.stop()
        while !thread.isFinished { usleep(10_000) }
        #expect(try writer.lostBlocks(readingFrom: "b").isEmpty)
        let gap = writer.gap(movingTo: "b", after: switchedAt) ?? .infinity
        print(String(format: "planned switchover gap: %.3f s", gap))
        #expect(cluster.primary() == "b")

        // And back, run on a alone: a's agent asks b for standby over the membership links and
        // answers once b's heartbeat shows it.
        let tandem = try Tools.tandemBinary()
        let online = try Tools.run(tandem, ["node", "online", "a", "--config", cluster.config])
        #expect(online.status == 0, "\(online.combined)")
        let remote = try Tools.run(tandem, ["node", "standby", "b", "--node", "a", "--config", cluster.config])
        #expect(remote.status == 0, "\(remote.combined)")
        try cluster.waitFor("a primary again", seconds: 20) { cluster.primary() == "a" }
        let status = try Tools.run(tandem, ["node", "status", "b", "--config", cluster.config])
        #expect(status.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "standby")
        let back = try Tools.run(tandem, ["node", "online", "b", "--node", "a", "--config", cluster.config])
        #expect(back.status == 0, "\(back.combined)")
        let now = try Tools.run(tandem, ["node", "status", "b", "--config", cluster.config])
        #expect(now.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "online")
        let unknown = try Tools.run(tandem, ["node", "standby", "c", "--node", "a", "--config", cluster.config])
        #expect(unknown.status != 0)
        #expect(unknown.combined.contains("no node named \"c\""), "\(unknown.combined)")
        let events = try Tools.check(tandem, ["events", "--config", cluster.config, "--node", "b"]).standardOutput
        #expect(events.contains("standby requested by a"), "\(events)")
        #expect(events.contains("online requested by a"), "\(events)")
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }
}
