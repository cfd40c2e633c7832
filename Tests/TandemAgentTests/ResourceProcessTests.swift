import Foundation
import TandemAPI
import TandemTestSupport
import Testing

/// Groups of resources run by two real agents and a witness: real OCF agents from Debian's
/// resource-agents, restarts, failover past max-restarts, the event journal, a stop that hangs.
@Suite("Resources with real agents", .serialized)
struct ResourceProcessTests {
    func requireDummy() throws {
        let path = "/usr/lib/ocf/resource.d/heartbeat/Dummy"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw Tools.Failure(description: "\(path) is missing: install Debian's resource-agents (scripts/test does)")
        }
    }

    /// The node's resources as `tandem resource status --json` prints them.
    func resources(_ cluster: TwoNodeCluster, _ node: String) throws -> [String: ResourceView] {
        let output = try Tools.run(
            try Tools.tandemBinary(), ["resource", "status", "--json", "--config", cluster.config, "--node", node])
        guard let reply = try? APICoding.decoder().decode(StatusReply.self, from: Data(output.standardOutput.utf8))
        else { throw Tools.Failure(description: "no resource status from \(node): \(output.combined)") }
        return Dictionary(uniqueKeysWithValues: reply.resources.map { ($0.name, $0) })
    }

    func state(_ cluster: TwoNodeCluster, _ node: String, _ resource: String) -> String? {
        (try? resources(cluster, node))?[resource]?.state.rawValue
    }

    func failCount(_ cluster: TwoNodeCluster, _ node: String, _ resource: String) -> Int? {
        (try? resources(cluster, node))?[resource]?.failCount
    }

    func events(_ cluster: TwoNodeCluster, _ node: String) throws -> String {
        try Tools.check(try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", node]).standardOutput
    }

    @Test("an OCF group starts, is monitored, restarts, then fails over past max-restarts; the journal shows it")
    func ocfGroup_restartsThenFailsOver() throws {
        try requireDummy()
        let directory = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "64MiB", witness: true,
            extra: """

                [[group]]
                name = "storage"
                resources = [
                  { type = "volume", volume = "vol0" },
                  { type = "ocf", name = "dummy", agent = "heartbeat:Dummy", monitor-interval = "300ms", max-restarts = 2, restart-window = "5m", params = { state = "\(directory.path)/{node}-dummy.state" } },
                  { type = "exec", name = "app", start = "touch \(directory.path)/{node}-app", stop = "rm -f \(directory.path)/{node}-app", status = "test -e \(directory.path)/{node}-app || exit 3", monitor-interval = "300ms" },
                ]
                """)
        try cluster.startWitness()
        try cluster.start("a")
        try cluster.start("b")
        try cluster.waitFor("a primary") { cluster.primary() == "a" }
        try cluster.waitFor("a runs the group") {
            ["volume", "dummy", "app"].allSatisfy { name in
                let full = name == "volume" ? "storage-volume-0" : name
                return state(cluster, "a", full) == "running"
            }
        }
        #expect(state(cluster, "b", "dummy") == "stopped")
        #expect(FileManager.default.fileExists(atPath: "\(directory.path)/a-dummy.state"))
        // The Dummy agent's monitor reports OCF_NOT_RUNNING once its state file is gone.
        for attempt in 1...2 {
            try FileManager.default.removeItem(atPath: "\(directory.path)/a-dummy.state")
            try cluster.waitFor("restart \(attempt) on a", seconds: 20) {
                failCount(cluster, "a", "dummy") == attempt && state(cluster, "a", "app") == "running"
                    && state(cluster, "a", "dummy") == "running"
            }
        }
        try FileManager.default.removeItem(atPath: "\(directory.path)/a-dummy.state")
        try cluster.waitFor("b primary after the third failure", seconds: 30) { cluster.primary() == "b" }
        try cluster.waitFor("b runs the group", seconds: 30) {
            state(cluster, "b", "dummy") == "running" && state(cluster, "b", "app") == "running"
        }
        #expect(state(cluster, "a", "dummy") == "failed")
        #expect(state(cluster, "a", "app") == "stopped")
        #expect(FileManager.default.fileExists(atPath: "\(directory.path)/b-dummy.state"))
        let journalA = try events(cluster, "a")
        for expected in [
            "resource dummy started", "restart 1 of 2", "restart 2 of 2", "resource dummy failed 3 times within 5m",
            "handing the primary role to the peer", "resource app stopped",
        ] {
            #expect(journalA.contains(expected), "a's journal lacks \"\(expected)\":\n\(journalA)")
        }
        #expect(try events(cluster, "b").contains("resource dummy started"))
        let cleanup = try Tools.run(
            try Tools.tandemBinary(), ["resource", "cleanup", "dummy", "--config", cluster.config, "--node", "a"])
        #expect(cleanup.status == 0, "\(cleanup.combined)")
        #expect(failCount(cluster, "a", "dummy") == 0)
        #expect(try events(cluster, "a").contains("fail counts cleared for dummy"))
        #expect(try events(cluster, "a").contains("fail counts cleared: a is online again"))
        #expect(try cluster.cluster("a").state == .online)
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
        // A clean stop ends every resource.
        #expect(!FileManager.default.fileExists(atPath: "\(directory.path)/b-dummy.state"))
        #expect(!FileManager.default.fileExists(atPath: "\(directory.path)/b-app"))
    }

    @Test("a resource whose stop hangs resets the node, and the reason is in the reset log")
    func hangingStop_resetsTheNode() throws {
        let directory = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "64MiB", witness: true,
            extra: """

                [[group]]
                name = "sticky"
                resources = [
                  { type = "exec", name = "stuck", start = "touch \(directory.path)/{node}", stop = "sleep 60", status = "test -e \(directory.path)/{node} || exit 3", stop-timeout = "1s" },
                ]
                """)
        try cluster.startWitness()
        try cluster.start("a")
        try cluster.start("b")
        try cluster.waitFor("a primary") { cluster.primary() == "a" }
        try cluster.waitFor("a runs stuck") { state(cluster, "a", "stuck") == "running" }
        // Until the witness has heard that b is in sync, b is outdated and gets no vote.
        try cluster.waitInSync()
        usleep(1_000_000)
        let output = try Tools.run(try Tools.tandemBinary(), ["node", "standby", "a", "--config", cluster.config])
        #expect(output.status == 0, "\(output.combined)")
        try cluster.waitFor("a resets itself", seconds: 20) { !cluster.isRunning("a") }
        let resetLog = try String(contentsOfFile: "\(cluster.directory.path)/a/a.reset-log", encoding: .utf8)
        #expect(
            resetLog.contains("HA reset: resource stuck could not be stopped: stop did not finish within 1s"),
            "\(resetLog)")
        try cluster.waitFor("b primary", seconds: 30) { cluster.primary() == "b" }
        cluster.stop("b")
        cluster.stopWitness()
    }
}
