import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TandemCore
import TandemTestSupport
import Testing

@testable import TandemAgent

/// The load balancers' health checks: their verdicts from a node's state, the routes, and a real
/// HAProxy in front of a real pair that sends new NBD connections to the new primary.
@Suite("Health checks", .serialized)
struct HealthCheckTests {
    static func volume(_ role: VolumeRole, _ disk: DiskState = .upToDate, _ connection: ConnectionState = .connected)
        -> HealthState.Volume
    {
        HealthState.Volume(name: "vol0", role: role, disk: disk, connection: connection, outOfSyncBytes: 0)
    }

    @Test("primary: the role, a live lease where one binds, every volume primary, the group running")
    func primaryVerdicts() {
        var facts = HealthState.Facts(
            takenAt: .now, clusterRole: .primary, leaseRemaining: .seconds(3), leaseBinds: true,
            volumes: [Self.volume(.primary)], groupsRunning: ["storage": true, "media": false])
        #expect(HealthState.primary(facts, group: nil) == nil)
        #expect(HealthState.primary(facts, group: "storage") == nil)
        #expect(HealthState.primary(facts, group: "media") == "group media is not running here")
        #expect(HealthState.primary(facts, group: "other") != nil)
        facts.leaseRemaining = .zero
        #expect(HealthState.primary(facts, group: nil) == "this node holds no lease")
        facts.leaseBinds = false
        facts.leaseRemaining = nil
        #expect(HealthState.primary(facts, group: nil) == nil, "without a witness no lease binds")
        facts.volumes = [Self.volume(.secondary)]
        #expect(HealthState.primary(facts, group: nil) == "volume vol0 is secondary here")
        facts.clusterRole = .secondary
        #expect(HealthState.primary(facts, group: nil) == "this node is secondary")
        // A node without a peer is primary when its volumes are.
        #expect(
            HealthState.primary(HealthState.Facts(takenAt: .now, volumes: [Self.volume(.primary)]), group: nil) == nil)
    }

    @Test("replica: an up-to-date, connected secondary within the out-of-sync limit")
    func replicaVerdicts() {
        var facts = HealthState.Facts(takenAt: .now, clusterRole: .secondary, volumes: [Self.volume(.secondary)])
        #expect(HealthState.replica(facts, maxOutOfSync: 0) == nil)
        facts.volumes[0].outOfSyncBytes = 4096
        #expect(HealthState.replica(facts, maxOutOfSync: 0) != nil)
        #expect(HealthState.replica(facts, maxOutOfSync: 16 << 20) == nil)
        facts.volumes[0].disk = .inconsistent
        #expect(HealthState.replica(facts, maxOutOfSync: 16 << 20) == "volume vol0 is inconsistent")
        facts.volumes = [Self.volume(.secondary, .upToDate, .connecting)]
        #expect(HealthState.replica(facts, maxOutOfSync: 0) == "volume vol0 is connecting")
        facts.clusterRole = .primary
        #expect(HealthState.replica(facts, maxOutOfSync: 0) == "this node is primary")
    }

    @Test("routes: GET, HEAD and OPTIONS; 503 with the reason; stale state fails every check")
    func routes() async throws {
        let state = HealthState()
        try await Application(router: HealthServer.router(state)).test(.router) { client in
            try await client.execute(uri: "/health/live", method: .get) { response in
                #expect(response.status == .serviceUnavailable, "never refreshed")
            }
        }
        // The state's age is read on a clock of the test's: a suite that keeps this test waiting
        // for a thread must not make its facts stale.
        let base = ContinuousClock.now
        let later: @Sendable () -> ContinuousClock.Instant = { base + .milliseconds(500) }
        let refresher = HealthState.Facts(
            takenAt: base, clusterRole: .primary, leaseRemaining: .seconds(3), leaseBinds: true,
            volumes: [Self.volume(.primary)], groupsRunning: ["storage": true])
        state.store(refresher)
        try await Application(router: HealthServer.router(state, now: later)).test(.router) { client in
            for method in [HTTPRequest.Method.get, .head, .options] {
                try await client.execute(uri: "/health/primary", method: method) { response in
                    #expect(response.status == .ok, "\(method)")
                    #expect(String(buffer: response.body) == (method == .head ? "" : "ok\n"))
                }
            }
            try await client.execute(uri: "/health/primary?group=storage", method: .get) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/health/primary?group=nope", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
            }
            try await client.execute(uri: "/health/replica", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(String(buffer: response.body) == "this node is primary\n")
            }
            try await client.execute(uri: "/health/replica?max-out-of-sync=lots", method: .get) { response in
                #expect(response.status == .badRequest)
            }
            try await client.execute(uri: "/health/live", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
        var old = refresher
        old.takenAt = base - .seconds(3)
        state.store(old)
        try await Application(router: HealthServer.router(state, now: later)).test(.router) { client in
            for path in ["/health/primary", "/health/live"] {
                try await client.execute(uri: path, method: .get) { response in
                    #expect(response.status == .serviceUnavailable, "\(path) on stale state")
                }
            }
        }
    }

    /// HAProxy's TCP front end for NBD, checking each node's `/health/primary`.
    static func haproxyConfig(frontPort: Int, cluster: TwoNodeCluster) -> String {
        """
        global
            maxconn 64
        defaults
            mode tcp
            timeout connect 2s
            timeout client 30s
            timeout server 30s
        frontend nbd
            bind 127.0.0.1:\(frontPort)
            default_backend primaries
        backend primaries
            option httpchk
            http-check send meth GET uri /health/primary
            http-check expect status 200
            default-server inter 200ms fall 1 rise 1
            server a 127.0.0.1:\(cluster.nbdPorts["a"]!) check port \(cluster.healthPorts["a"]!)
            server b 127.0.0.1:\(cluster.nbdPorts["b"]!) check port \(cluster.healthPorts["b"]!)

        """
    }

    @Test("HAProxy with option httpchk sends new NBD connections to the new primary after a failover")
    func haproxy_followsThePrimary() throws {
        let haproxyPath = try Tools.path(of: "haproxy")
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB", witness: true, health: true)
        try cluster.startWitness()
        try cluster.startInSyncWithPrimaryA()
        func check(_ node: String, _ path: String) throws -> Int {
            let output = try Tools.run(
                "curl",
                [
                    "-s", "-o", "/dev/null", "-w", "%{http_code}",
                    "http://127.0.0.1:\(cluster.healthPorts[node]!)\(path)",
                ])
            return Int(output.standardOutput) ?? -1
        }
        try cluster.waitFor("the checks to settle", seconds: 10) {
            try check("a", "/health/primary") == 200 && check("b", "/health/replica") == 200
        }
        #expect(try check("b", "/health/primary") == 503)
        #expect(try check("a", "/health/replica") == 503)
        #expect(try check("a", "/health/live") == 200)

        let frontPort = try freeLoopbackPort()
        let config = "\(cluster.directory.path)/haproxy.cfg"
        try Self.haproxyConfig(frontPort: frontPort, cluster: cluster).write(
            toFile: config, atomically: true, encoding: .utf8)
        try Tools.check(haproxyPath, ["-c", "-f", config])
        let haproxy = Process()
        haproxy.executableURL = URL(fileURLWithPath: haproxyPath)
        haproxy.arguments = ["-f", config, "-db"]
        haproxy.standardOutput = FileHandle.nullDevice
        haproxy.standardError = FileHandle.nullDevice
        try Tools.launch(haproxy)
        defer {
            haproxy.terminate()
            haproxy.waitUntilExit()
        }
        let front = "nbd://127.0.0.1:\(frontPort)/vol0"
        // HAProxy starts with both servers up until their first checks: b, a secondary, refuses
        // writes until then.
        try cluster.waitFor("HAProxy to pass NBD writes to a", seconds: 10) {
            (try? Tools.run("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 0 1M", front]))?.status == 0
        }
        // Checked every 200 ms, b is down after its first check; then every connection goes to a.
        usleep(1_000_000)
        for _ in 0..<5 {
            try Tools.check("qemu-io", ["-f", "raw", "-c", "read -P 0x3c 0 1M", "-c", "write -P 0x3c 0 1M", front])
        }
        cluster.crash("a")
        try cluster.waitFor("b to take over", seconds: 30) { cluster.view("b")?.role == .primary }
        try cluster.waitFor("b's check to pass", seconds: 10) { try check("b", "/health/primary") == 200 }
        // A new connection through HAProxy reaches b, which holds what was written through a.
        try cluster.waitFor("HAProxy to pass NBD to b", seconds: 10) {
            (try? Tools.run("qemu-io", ["-f", "raw", "-c", "read -P 0x3c 0 1M", front]))?.status == 0
        }
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x4d 1M 1M", "-c", "read -P 0x4d 1M 1M", front])

        // b's metrics after the failover: promtool accepts the exposition, and it counts the takeover.
        let promtool = try Tools.path(of: "promtool")
        var scraped = ""
        try cluster.waitFor("b's metrics to count the failover and its gap", seconds: 10) {
            scraped = try Tools.check(
                "curl", ["-sS", "--unix-socket", cluster.controlSocket("b"), "http://localhost/metrics"]
            ).standardOutput
            return scraped.contains("tandem_failover_gap_seconds_count 1")
        }
        for series in [
            #"tandem_role{role="primary"} 1.0"#, #"tandem_role{role="secondary"} 0.0"#, "tandem_quorum 1.0",
            #"tandem_failovers_total{reason="peerSilent"} 1"#, #"tandem_failovers_total{reason="handover"} 0"#,
            #"tandem_admin_mode{mode="default"} 1.0"#, "tandem_failed_startup 0.0",
            #"tandem_volume_split_brain{volume="vol0",group=""} 0.0"#,
            #"tandem_volume_connection_state{volume="vol0",group="",state="connected"} 0.0"#,
        ] {
            #expect(scraped.contains(series + "\n"), "\(series) in\n\(scraped)")
        }
        // b served one 1 MiB read and one 1 MiB write and a read through HAProxy after the takeover.
        func value(_ series: String) -> Double? {
            scraped.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap {
                Double($0.split(separator: " ").last ?? "")
            }
        }
        #expect((value(#"tandem_nbd_requests_total{operation="read"}"#) ?? 0) >= 2, "\(scraped)")
        #expect((value(#"tandem_nbd_bytes_total{operation="write"}"#) ?? 0) >= 1_048_576, "\(scraped)")
        #expect(value(#"tandem_nbd_requests_total{operation="trim"}"#) != nil, "every operation from the start")
        #expect(value("tandem_nbd_connections") != nil)
        let file = "\(cluster.directory.path)/metrics.txt"
        try scraped.write(toFile: file, atomically: true, encoding: .utf8)
        let checked = try Tools.run("/bin/sh", ["-c", "\(promtool) check metrics < \(file)"])
        #expect(checked.status == 0, "\(checked.combined)")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("the shipped alert rules pass promtool and name only series the agent exports")
    func alertRules() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let rules = "\(root)/docs/monitoring/alerts.yaml"
        let checked = try Tools.run(try Tools.path(of: "promtool"), ["check", "rules", rules])
        #expect(checked.status == 0 && checked.combined.contains("SUCCESS: 8 rules found"), "\(checked.combined)")
        let text = try String(contentsOfFile: rules, encoding: .utf8)
        let exported = try String(
            contentsOfFile: "\(root)/Sources/TandemAgent/Control/MetricsExporter.swift", encoding: .utf8)
        let names = Set(text.matches(of: /tandem_[a-z_]+/).map { String($0.output) })
        for name in names {
            // tandem_X_UNIT is made from metricName "X" and unitName "UNIT".
            let known =
                exported.contains("\"\(name.dropFirst(7))\"")
                || ["_bytes", "_seconds", "_total"].contains { suffix in
                    name.hasSuffix(suffix) && exported.contains("\"\(name.dropFirst(7).dropLast(suffix.count))\"")
                }
            #expect(known, "\(name) is not exported")
        }
    }
}
