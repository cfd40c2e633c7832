import Foundation
import TandemAPI
import TandemTestSupport
import Testing

/// The management API over real TLS, called with curl (a client nobody here wrote) and with the
/// CLI's `--server`: every way a call is refused gets its status, and the agent serves on.
@Suite("Management API over HTTPS", .serialized)
struct APIProcessTests {
    /// A pair whose nodes serve the API on 127.0.0.1 with certificates from the cluster's authority.
    func startPair() throws -> (TwoNodeCluster, TemporaryDirectory) {
        let tls = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "16MiB", witness: true, clusterExtra: "tls-dir = \"\(tls.path)\"", api: true)
        let tandem = try Tools.tandemBinary()
        try Tools.check(
            tandem,
            [
                "init", "--output", "\(tls.path)/unused.toml", "--secret", "\(tls.path)/unused.secret", "--tls-dir",
                tls.path,
            ]
        )
        for node in ["a", "b"] { try Tools.check(tandem, ["cert", "issue", node, "-c", cluster.config]) }
        try cluster.startWitness()
        try cluster.startInSyncWithPrimaryA()
        return (cluster, tls)
    }

    /// `tandem token create` on `node`'s control socket; the token.
    func token(_ cluster: TwoNodeCluster, _ node: String, role: String, name: String, expires: String? = nil)
        throws -> String
    {
        let output = try Tools.check(
            try Tools.tandemBinary(),
            ["token", "create", "--role", role, "--name", name, "--config", cluster.config, "--node", node]
                + (expires.map { ["--expires", $0] } ?? []))
        let token = output.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("tdm_") && token.count == 68, "\(output.combined)")
        return token
    }

    /// curl against node `node`'s API; the status code and the body.
    func curl(
        _ cluster: TwoNodeCluster, _ tls: TemporaryDirectory, _ node: String, _ method: String, _ path: String,
        token: String? = nil, body: String? = nil
    ) throws -> (code: Int, body: String) {
        var arguments = [
            "-sS", "--max-time", "20", "--cacert", "\(tls.path)/ca-cert.pem", "-X", method, "-w", "\n%{http_code}",
            "https://127.0.0.1:\(cluster.apiPorts[node]!)\(path)",
        ]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        if let body {
            let file = "\(tls.path)/body-\(UInt32.random(in: 0...UInt32.max))"
            try body.write(toFile: file, atomically: true, encoding: .utf8)
            arguments += ["-H", "Content-Type: application/json", "--data-binary", "@\(file)"]
        }
        let output = try Tools.run("curl", arguments)
        let lines = output.standardOutput.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? -1, lines.dropLast().joined(separator: "\n"))
    }

    @Test("no, wrong or expired token 401; viewer on an admin action 403; oversized 413; malformed 400")
    func refusals_eachWithItsStatus_andTheAgentServesOn() throws {
        let (cluster, tls) = try startPair()
        let admin = try token(cluster, "a", role: "admin", name: "root-admin")
        let viewer = try token(cluster, "a", role: "viewer", name: "watcher")
        let brief = try token(cluster, "a", role: "admin", name: "brief", expires: "1s")
        sleep(2)

        #expect(try curl(cluster, tls, "a", "GET", "/v1/status").code == 401)
        #expect(
            try curl(cluster, tls, "a", "GET", "/v1/status", token: "tdm_" + String(repeating: "0", count: 64)).code
                == 401)
        let expired = try curl(cluster, tls, "a", "GET", "/v1/status", token: brief)
        #expect(expired.code == 401)
        #expect(!expired.body.contains("expired"), "a 401 says nothing more: \(expired.body)")
        let read = try curl(cluster, tls, "a", "GET", "/v1/status", token: viewer)
        #expect(read.code == 200, "\(read.body)")
        let status = try APICoding.decoder().decode(StatusReply.self, from: Data(read.body.utf8))
        #expect(status.node == "a" && status.cluster?.role == .primary)
        let forbidden = try curl(cluster, tls, "a", "POST", "/v1/nodes/a/standby", token: viewer)
        #expect(forbidden.code == 403, "\(forbidden.body)")
        #expect(forbidden.body.contains("operator"), "\(forbidden.body)")
        #expect(try curl(cluster, tls, "a", "PUT", "/v1/modes", token: admin, body: "{not json").code == 400)
        let unknownField = try curl(cluster, tls, "a", "PUT", "/v1/modes", token: admin, body: #"{"mood":"x"}"#)
        #expect(unknownField.code == 400 && unknownField.body.contains("mode"), "\(unknownField.body)")
        let big = #"{"resource":""# + String(repeating: "x", count: 100_000) + #""}"#
        #expect(try curl(cluster, tls, "a", "POST", "/v1/resources/cleanup", token: admin, body: big).code == 413)
        #expect(cluster.log("a").contains("management API: expired token brief from 127.0.0.1"), "\(cluster.log("a"))")

        // A client that connects, finishes the handshake, sends half a request line and stops is
        // dropped; the agent answers everyone else meanwhile.
        let slow = try Tools.run(
            "python3",
            [
                "-c",
                """
                import socket, ssl, time
                context = ssl.create_default_context(cafile="\(tls.path)/ca-cert.pem")
                raw = socket.create_connection(("127.0.0.1", \(cluster.apiPorts["a"]!)))
                conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
                conn.sendall(b"GET /v1/sta")
                start = time.time()
                conn.settimeout(30)
                try:
                    data = conn.recv(100)
                except Exception as error:
                    data = b""
                print(round(time.time() - start, 1))
                """,
            ])
        let waited = Double(slow.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        #expect(waited >= 8 && waited < 15, "the slow client was dropped after \(waited) s: \(slow.combined)")
        #expect(try curl(cluster, tls, "a", "GET", "/v1/status", token: viewer).code == 200)

        // After ten failures in a minute an address is told to wait.
        for _ in 0..<12 { _ = try curl(cluster, tls, "a", "GET", "/v1/status", token: "tdm_wrong") }
        #expect(try curl(cluster, tls, "a", "GET", "/v1/status", token: admin).code == 429)

        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("node standby through node b's API moves the role; the audit trail names the token and address")
    func standbyThroughTheOtherNode_isAudited() throws {
        let (cluster, tls) = try startPair()
        let admin = try token(cluster, "b", role: "operator", name: "ops-on-b")
        let tokenFile = "\(tls.path)/token"
        try admin.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let tandem = try Tools.tandemBinary()
        let remote = [
            "--server", "https://127.0.0.1:\(cluster.apiPorts["b"]!)", "--token-file", tokenFile, "--ca",
            "\(tls.path)/ca-cert.pem",
        ]
        let status = try Tools.run(tandem, ["status"] + remote)
        #expect(status.status == 0 && status.standardOutput.contains("node b"), "\(status.combined)")
        let standby = try Tools.run(tandem, ["node", "standby", "a"] + remote)
        #expect(standby.status == 0, "\(standby.combined)")
        try cluster.waitFor("b primary", seconds: 30) { cluster.primary() == "b" }
        let json = try Tools.run(tandem, ["status", "--json"] + remote)
        let reply = try APICoding.decoder().decode(StatusReply.self, from: Data(json.standardOutput.utf8))
        #expect(reply.cluster?.failovers.last?.reason == .handover, "\(json.standardOutput)")
        let journal = try Tools.check(tandem, ["events", "--config", cluster.config, "--node", "b"]).standardOutput
        #expect(
            journal.contains("POST \"/v1/nodes/a/standby\" by token ops-on-b (operator) from 127.0.0.1: 200"),
            "\(journal)")
        // A wrong server certificate authority is refused before any token is sent.
        let otherCA = TemporaryDirectory()
        try Tools.check(
            tandem,
            [
                "init", "--output", "\(otherCA.path)/x.toml", "--secret", "\(otherCA.path)/x.secret", "--tls-dir",
                otherCA.path,
            ]
        )
        let wrongCA = try Tools.run(
            tandem,
            [
                "status", "--server", "https://127.0.0.1:\(cluster.apiPorts["b"]!)", "--token-file", tokenFile, "--ca",
                "\(otherCA.path)/ca-cert.pem",
            ])
        #expect(wrongCA.status != 0, "\(wrongCA.combined)")
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }
}
