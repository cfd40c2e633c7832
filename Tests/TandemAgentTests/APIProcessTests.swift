import Foundation
import NIOHTTP1
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
        token: String? = nil, body: String? = nil, headers: [String] = []
    ) throws -> (code: Int, body: String) {
        var arguments = [
            "-sS", "--max-time", "20", "--cacert", "\(tls.path)/ca-cert.pem", "-X", method, "-w", "\n%{http_code}",
            "https://127.0.0.1:\(cluster.apiPorts[node]!)\(path)",
        ]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        for header in headers { arguments += ["-H", header] }
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
        #expect(status.cluster?.failovers.map(\.reason) == [.start], "the first primary took the role at start")
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

        // Tokens are cluster-wide: one made on a works on b, and a revocation made while b was
        // down reaches b when it returns.
        try cluster.waitFor("a's token to work on b", seconds: 10) {
            try curl(cluster, tls, "b", "GET", "/v1/status", token: viewer).code == 200
        }
        cluster.stop("b")
        try Tools.check(
            try Tools.tandemBinary(), ["token", "revoke", "watcher", "--config", cluster.config, "--node", "a"])
        try cluster.start("b")
        try cluster.waitFor("the revocation to reach b", seconds: 30) {
            try curl(cluster, tls, "b", "GET", "/v1/status", token: viewer).code == 401
        }
        #expect(try curl(cluster, tls, "b", "GET", "/v1/status", token: admin).code == 200)

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
        // As a job: 202 at once, then its steps until the role has moved.
        let accepted = try Tools.run(
            "curl",
            [
                "-sS", "-D", "\(tls.path)/headers", "--cacert", "\(tls.path)/ca-cert.pem", "-H",
                "Authorization: Bearer \(admin)", "-H", "Prefer: respond-async", "-X", "POST", "-w", "\n%{http_code}",
                "https://127.0.0.1:\(cluster.apiPorts["b"]!)/v1/nodes/a/standby",
            ])
        #expect(accepted.standardOutput.hasSuffix("202"), "\(accepted.combined)")
        let headers = try String(contentsOfFile: "\(tls.path)/headers", encoding: .utf8).lowercased()
        let queued = try APICoding.decoder().decode(
            JobView.self, from: Data(accepted.standardOutput.split(separator: "\n").first!.utf8))
        #expect(headers.contains("location: /v1/jobs/\(queued.id)"), "\(headers)")
        var job = queued
        try cluster.waitFor("the standby job to finish", seconds: 60) {
            job = try APIClient(
                .https(host: "127.0.0.1", port: cluster.apiPorts["b"]!, authority: "\(tls.path)/ca-cert.pem"),
                token: admin
            ).get(APIPath.job(queued.id))
            return job.state == .finished
        }
        #expect(job.result == .success, "\(job)")
        #expect(job.kind == "node-standby" && job.target == "a" && job.caller.contains("ops-on-b"))
        #expect(
            job.steps.map(\.name) == ["ask a to hand the primary role over", "wait until the other node is primary"],
            "\(job.steps)")
        #expect(job.steps.allSatisfy { $0.finishedAt != nil && $0.finishedAt! >= $0.startedAt })
        #expect(cluster.primary() == "b")
        // Finished, it cannot be cancelled into anything else.
        let again = try APIClient(
            .https(host: "127.0.0.1", port: cluster.apiPorts["b"]!, authority: "\(tls.path)/ca-cert.pem"), token: admin
        ).send(.DELETE, APIPath.job(queued.id), as: JobView.self)
        #expect(again.result == .success)
        let json = try Tools.run(tandem, ["status", "--json"] + remote)
        let reply = try APICoding.decoder().decode(StatusReply.self, from: Data(json.standardOutput.utf8))
        #expect(reply.cluster?.failovers.last?.reason == .handover, "\(json.standardOutput)")
        let journal = try Tools.check(tandem, ["events", "--config", cluster.config, "--node", "b"]).standardOutput
        #expect(
            journal.contains("POST \"/v1/nodes/a/standby\" by token ops-on-b (operator) from 127.0.0.1: 202"),
            "\(journal)")
        #expect(journal.contains("job \(queued.id) node-standby of a: success"), "\(journal)")
        // The CLI's --server runs actions too.
        let online = try Tools.run(tandem, ["node", "online", "a"] + remote)
        #expect(online.status == 0, "\(online.combined)")
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

    @Test("every route's real replies, successes and errors, validate against docs/openapi.yaml")
    func realReplies_validateAgainstTheDocument() throws {
        let (cluster, tls) = try startPair()
        let admin = try token(cluster, "a", role: "admin", name: "documenter")
        let viewer = try token(cluster, "a", role: "viewer", name: "reader")
        let records = TemporaryDirectory()
        var count = 0
        var statuses: [String: Set<Int>] = [:]
        var lastBody: [String: Any] = [:]
        func record(
            _ method: String, _ path: String, token: String? = admin, body: String? = nil, prefer: Bool = false
        ) throws {
            let reply = try curl(
                cluster, tls, "a", method, path, token: token, body: body,
                headers: prefer ? ["Prefer: respond-async"] : [])
            let parsed = try JSONSerialization.jsonObject(with: Data(reply.body.utf8), options: [.fragmentsAllowed])
            lastBody = parsed as? [String: Any] ?? [:]
            let document: [String: Any] = ["method": method, "path": path, "status": reply.code, "body": parsed]
            count += 1
            try JSONSerialization.data(withJSONObject: document).write(
                to: URL(fileURLWithPath: "\(records.path)/\(count).json"))
            statuses["\(method) \(path)", default: []].insert(reply.code)
        }
        try record("GET", "/v1/status")
        try record("GET", "/v1/failovers")
        try record("GET", "/v1/modes")
        try record("PUT", "/v1/modes", body: #"{"mode":"default"}"#)
        try record("PUT", "/v1/modes", body: #"{"mode":"sideways"}"#)
        try record("POST", "/v1/modes/peerdown")
        try record("POST", "/v1/modes/peerup")
        try record("POST", "/v1/modes/clear")
        try record("POST", "/v1/modes/explode")
        try record("POST", "/v1/nodes/b/online")
        try record("POST", "/v1/nodes/c/standby")
        try record("POST", "/v1/nodes/a/force-primary", body: "{}")
        try record("POST", "/v1/volumes/vol0/secondary")
        try record("POST", "/v1/volumes/vol0/primary")
        try record("POST", "/v1/volumes/vol0/resolve")
        try record("POST", "/v1/volumes/vol0/verify")
        try record("DELETE", "/v1/volumes/vol0/verify")
        try record("POST", "/v1/volumes/vol0/verify", prefer: true)
        let jobID = try #require(lastBody["id"] as? String)
        try record("GET", "/v1/jobs")
        try record("GET", "/v1/jobs/\(jobID)")
        try record("DELETE", "/v1/jobs/\(jobID)")
        try record("GET", "/v1/jobs/0123456789abcdef")
        try record("POST", "/v1/nodes/b/standby", prefer: true)
        try record("POST", "/v1/volumes/nope/verify")
        try record("POST", "/v1/resources/cleanup", body: #"{"resource":null}"#)
        try record("POST", "/v1/resources/refresh")
        try record("GET", "/v1/tokens")
        try record("POST", "/v1/tokens", body: #"{"name":"spare","role":"viewer","expiresInSeconds":3600}"#)
        try record("POST", "/v1/tokens", body: #"{"name":"spare","role":"viewer"}"#)
        try record("DELETE", "/v1/tokens/spare")
        try record("DELETE", "/v1/tokens/spare")
        try record("GET", "/v1/status", token: nil)
        try record("GET", "/v1/tokens", token: viewer)
        try record("GET", "/v1/nothing")
        try record("PUT", "/v1/modes", body: "{")
        #expect(statuses["GET /v1/status"] == [200, 401])
        #expect(statuses["POST /v1/volumes/vol0/verify"] == [200, 202], "the verify started: \(statuses)")
        #expect(statuses["POST /v1/tokens"] == [201, 409])
        #expect(statuses["GET /v1/tokens"] == [200, 403])
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let files = (1...count).map { "\(records.path)/\($0).json" }
        let check = try Tools.run(
            "python3", ["\(root)/scripts/check-openapi.py", "\(root)/docs/openapi.yaml"] + files)
        #expect(check.status == 0, "\(check.combined)")
        #expect(check.standardOutput.contains("\(count) replies checked"), "\(check.combined)")
        cluster.stop("a")
        cluster.stop("b")
        cluster.stopWitness()
    }

    @Test("the event stream delivers b's takeover while a is killed; a client resumes after Last-Event-ID")
    func eventStream_deliversTheFailover() throws {
        let (cluster, tls) = try startPair()
        let viewer = try token(cluster, "b", role: "viewer", name: "watch-b")
        let output = "\(tls.path)/stream.txt"
        FileManager.default.createFile(atPath: output, contents: nil)
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: try Tools.path(of: "curl"))
        curl.arguments = [
            "-sS", "-N", "--cacert", "\(tls.path)/ca-cert.pem", "-H", "Authorization: Bearer \(viewer)",
            "https://127.0.0.1:\(cluster.apiPorts["b"]!)/v1/events/stream",
        ]
        curl.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        try Tools.launch(curl)
        defer { if curl.isRunning { curl.terminate() } }
        try cluster.waitFor("the stream to open", seconds: 10) {
            (try? String(contentsOfFile: output, encoding: .utf8))?.contains(": tandem events") == true
        }
        cluster.crash("a")
        try cluster.waitFor("b's takeover on the stream", seconds: 30) {
            (try? String(contentsOfFile: output, encoding: .utf8))?.contains("b is primary in epoch") == true
        }
        curl.terminate()
        let text = try String(contentsOfFile: output, encoding: .utf8)
        let blocks = text.components(separatedBy: "\n\n").filter { $0.hasPrefix("id: ") }
        let ids = blocks.compactMap { UInt64($0.dropFirst(4).prefix { $0.isNumber }) }
        #expect(!ids.isEmpty && ids == ids.sorted(), "ids in order: \(ids)")
        let takeover = try #require(blocks.first { $0.contains("b is primary in epoch") })
        #expect(takeover.contains("event: membership"), "\(takeover)")
        let data = try #require(takeover.split(separator: "\n").first { $0.hasPrefix("data: ") })
        let entry = try APICoding.decoder().decode(JournalEntry.self, from: Data(data.dropFirst(6).utf8))
        #expect(entry.node == "b" && entry.kind == .membership)

        // Resuming after the first event gives the rest again; the CLI reads it over --server.
        let first = try #require(ids.first)
        let resumed = try Tools.run(
            "curl",
            [
                "-sS", "--max-time", "10", "--cacert", "\(tls.path)/ca-cert.pem", "-H",
                "Authorization: Bearer \(viewer)",
                "-H", "Last-Event-ID: \(first)",
                "https://127.0.0.1:\(cluster.apiPorts["b"]!)/v1/events/stream?follow=false",
            ])
        #expect(!resumed.standardOutput.contains("id: \(first)\n"), "\(resumed.standardOutput.prefix(500))")
        #expect(resumed.standardOutput.contains("b is primary in epoch"), "\(resumed.combined.prefix(500))")
        let tokenFile = "\(tls.path)/viewer.token"
        try viewer.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let events = try Tools.run(
            try Tools.tandemBinary(),
            [
                "events", "--last", "50", "--server", "https://127.0.0.1:\(cluster.apiPorts["b"]!)", "--token-file",
                tokenFile, "--ca", "\(tls.path)/ca-cert.pem",
            ])
        #expect(events.status == 0 && events.standardOutput.contains("b is primary in epoch"), "\(events.combined)")
        // An open stream does not hold up the agent's stop.
        let open = Process()
        open.executableURL = curl.executableURL
        open.arguments = curl.arguments
        open.standardOutput = FileHandle.nullDevice
        try Tools.launch(open)
        defer { if open.isRunning { open.terminate() } }
        usleep(500_000)
        let stopping = Date()
        cluster.stop("b")
        let stopSeconds = Date().timeIntervalSince(stopping)
        #expect(stopSeconds < 5, "b took \(stopSeconds) s to stop with an event stream open")
        cluster.stopWitness()
    }
}
