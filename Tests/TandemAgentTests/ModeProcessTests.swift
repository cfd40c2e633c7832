import Foundation
import TandemAPI
import TandemTestSupport
import Testing

/// Administrator modes between two real agents and a witness.
@Suite("Administrator modes with real agents", .serialized)
struct ModeProcessTests {
    /// Runs `tandem WORDS --node NODE --json`; the modes (`nil` when refused) and the exit status.
    @discardableResult
    func mode(_ cluster: TwoNodeCluster, _ node: String, _ words: [String]) throws -> (
        modes: ModesView?, status: Int32, text: String
    ) {
        let output = try Tools.run(
            try Tools.tandemBinary(), words + ["--json", "--config", cluster.config, "--node", node])
        let modes = try? APICoding.decoder().decode(ModesView.self, from: Data(output.standardOutput.utf8))
        return (modes, output.status, output.combined)
    }

    func startPair() throws -> TwoNodeCluster {
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB", witness: true)
        try cluster.startWitness()
        try cluster.startInSyncWithPrimaryA()
        usleep(1_000_000)
        return cluster
    }

    @Test("mode changes obey the matrix, persist across a restart, and print both nodes")
    func modes_obeyTheMatrix_andPersist() throws {
        let cluster = try startPair()
        let refused = try mode(cluster, "a", ["mode", "single"])
        #expect(refused.status == 1)
        #expect(refused.text.contains("single mode needs the peer locked or certified down (peer is default)"))
        #expect(refused.modes == nil)
        #expect(try mode(cluster, "a", ["mode"]).modes?.localMode == .default)

        let locked = try mode(cluster, "b", ["mode", "locked"])
        #expect(locked.status == 0, "\(locked.text)")
        #expect(locked.modes?.localMode.rawValue == "locked")
        #expect(locked.modes?.localStatus.rawValue == "stopped")
        try cluster.waitFor("a sees b locked") {
            (try? mode(cluster, "a", ["mode"]))?.modes?.remoteMode?.rawValue == "locked"
        }
        let config = try mode(cluster, "a", ["mode", "config"])
        #expect(config.status == 0, "\(config.text)")
        #expect(config.modes?.localMode.rawValue == "config")
        #expect(config.modes?.localStatus.rawValue == "primary")
        #expect(config.modes?.remoteMode?.rawValue == "locked")
        // Leaving locked while the peer is in config mode would make a prohibited pair.
        try cluster.waitFor("b sees a in config mode") {
            (try? mode(cluster, "b", ["mode"]))?.modes?.remoteMode?.rawValue == "config"
        }
        let unlock = try mode(cluster, "b", ["mode", "default"])
        #expect(unlock.status == 1)
        #expect(unlock.text.contains("the peer is in config mode: this node must be locked while it is"))

        // Modes persist across an agent restart.
        cluster.stop("b")
        try cluster.start("b")
        try cluster.waitFor("b reports locked after its restart") {
            (try? mode(cluster, "b", ["mode"]))?.modes?.localMode.rawValue == "locked"
        }
        #expect(try mode(cluster, "a", ["mode", "default"]).status == 0)
        try cluster.waitFor("b sees a in default mode") {
            (try? mode(cluster, "b", ["mode"]))?.modes?.remoteMode?.rawValue == "default"
        }
        #expect(try mode(cluster, "b", ["mode", "default"]).status == 0)
        try cluster.waitFor("b running as secondary") {
            (try? mode(cluster, "b", ["mode"]))?.modes?.localStatus.rawValue == "running"
        }
        #expect(cluster.primary() == "a")
        let text = try Tools.run(
            try Tools.tandemBinary(), ["mode", "--config", cluster.config, "--node", "a"]
        ).standardOutput
        for key in ["LocalMode    default", "LocalStatus  primary", "RemoteMode   default", "RemoteStatus running"] {
            #expect(text.contains(key), "\(text)")
        }
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("peerdown: refused while the peer talks; a certified peer that returns erases it")
    func peerdown_andThePeerReturns() throws {
        let cluster = try startPair()
        let early = try mode(cluster, "a", ["peerdown"])
        #expect(early.status == 1)
        #expect(early.text.contains("the peer is alive"))
        cluster.stop("b")
        try cluster.waitFor("a no longer hears b", seconds: 10) {
            (try? mode(cluster, "a", ["mode"]))?.modes.map { $0.remoteMode == nil } == true
        }
        let certified = try mode(cluster, "a", ["peerdown"])
        #expect(certified.status == 0, "\(certified.text)")
        #expect(certified.modes?.remoteMode?.rawValue == "peerdown")
        #expect(certified.modes?.remoteStatus?.rawValue == "stopped")
        let single = try mode(cluster, "a", ["mode", "single"])
        #expect(single.status == 0, "\(single.text)")
        #expect(single.modes?.localMode.rawValue == "single")
        // In single mode the lease no longer binds: with the witness gone as well, no voter renews
        // it, and a still serves its clients.
        cluster.stopWitness()
        usleep(4_000_000)
        #expect(cluster.primary() == "a")
        let client = try NBDTestClient(port: cluster.nbdPorts["a"]!)
        try client.greet()
        try client.go(export: "vol0")
        #expect(try client.write([7, 7, 7, 7], at: 0, fua: true) == 0, "a write past the lease's end")
        let alone = try Tools.check(
            try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", "a"]
        ).standardOutput
        #expect(alone.contains("serves on in single mode"), "\(alone)")
        try cluster.startWitness()
        try cluster.start("b")
        try cluster.waitFor("a erases the certification", seconds: 10) {
            let modes = (try? mode(cluster, "a", ["mode"]))?.modes
            return modes?.peerCertifiedDown == false && modes?.localMode == .default
        }
        let events = try Tools.check(
            try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", "a"]
        ).standardOutput
        #expect(events.contains("the peer certified down is talking again: certification erased"), "\(events)")
        #expect(events.contains("mode command peerdown by administrator"))
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("stop leaves both nodes stopped in default mode; start makes this node primary, the peer secondary")
    func stopThenStart() throws {
        let cluster = try startPair()
        let stopped = try mode(cluster, "a", ["stop"])
        #expect(stopped.status == 0, "\(stopped.text)")
        try cluster.waitFor("both stopped", seconds: 20) {
            let modes = (try? mode(cluster, "a", ["mode"]))?.modes
            return modes?.localStatus == .stopped && modes?.remoteStatus == .stopped
                && modes?.localMode == .default && modes?.remoteMode == .default
        }
        #expect(cluster.primary() == nil)
        let journal = try Tools.check(
            try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", "a"]
        ).standardOutput
        #expect(journal.contains("now mode config"), "\(journal)")
        #expect(journal.contains("stop complete: both nodes stopped in default mode"), "\(journal)")
        #expect(
            try Tools.check(try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", "b"])
                .standardOutput.contains("stop requested by a: b stops its services, mode locked"))
        // Start from the other node: it becomes primary, a secondary.
        let started = try mode(cluster, "b", ["start"])
        #expect(started.status == 0, "\(started.text)")
        try cluster.waitFor("b primary, a running", seconds: 30) {
            let modes = (try? mode(cluster, "b", ["mode"]))?.modes
            return modes?.localStatus == .primary && modes?.remoteStatus == .running
        }
        #expect(cluster.primary() == "b")
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("force-reset only in default mode; the node then starts blocked until clear")
    func forceReset_thenFailedStartup_thenClear() throws {
        let cluster = try startPair()
        #expect(try mode(cluster, "b", ["mode", "locked"]).status == 0)
        let refused = try mode(cluster, "b", ["force-reset"])
        #expect(refused.status == 1)
        #expect(refused.text.contains("force-reset is allowed only in default mode"))
        #expect(try mode(cluster, "b", ["mode", "default"]).status == 0)
        _ = try? mode(cluster, "b", ["force-reset"])
        try cluster.waitFor("b resets", seconds: 10) { !cluster.isRunning("b") }
        let resetLog = try String(contentsOfFile: "\(cluster.directory.path)/b/b.reset-log", encoding: .utf8)
        #expect(resetLog.contains("HA reset: force-reset by administrator"))
        try cluster.start("b")
        let blocked = try mode(cluster, "b", ["mode"])
        let blocker = blocked.modes?.failedStartup ?? ""
        #expect(blocker.contains("force-reset by administrator"), "\(blocked.text)")
        #expect(blocked.modes?.localStatus.rawValue == "stopped")
        let online = try Tools.run(try Tools.tandemBinary(), ["node", "online", "b", "--config", cluster.config])
        #expect(online.status == 1)
        #expect(online.combined.contains("blocked by failed-startup"))
        let cleared = try mode(cluster, "b", ["clear"])
        #expect(cleared.status == 0, "\(cleared.text)")
        #expect(cleared.modes != nil && cleared.modes?.failedStartup == nil)
        try cluster.waitFor("b running again") {
            (try? mode(cluster, "b", ["mode"]))?.modes?.localStatus.rawValue == "running"
        }
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }
}
