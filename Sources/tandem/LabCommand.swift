import ArgumentParser
import Foundation
import Logging
import TandemAPI
import TandemAgent
import TandemCore

struct LabCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Run a whole local cluster on loopback (two nodes and a witness) until Ctrl-C.",
        discussion: """
            Starts `tandem agent` for lab-a (127.0.0.1) and lab-b (127.0.0.2) and `tandem witness` (127.0.0.3), \
            with file-backed volumes in the working folder, waits until the pair is in sync, and prints what \
            to try next. Ctrl-C stops everything it started.
            """)

    @Option(help: "Working folder for the config, secret, backing files, state and logs.")
    var directory: String = "./tandem-lab"

    @Option(help: "Size of the lab's volume.")
    var size: String = "1GiB"

    @Option(help: "TCP port of each node's NBD server.")
    var port: Int = 10809

    @Option(help: "Dead time of the failure detector.")
    var deadTime: String = "2s"

    @Option(help: "TCP port of each node's management API (HTTPS); its health checks listen on the next one.")
    var apiPort: Int = 7443

    func run() async throws {
        guard Units.parseByteCount(size) != nil else {
            throw fail("--size: expected a size such as 1GiB, found \(size)")
        }
        let directory = URL(fileURLWithPath: self.directory).standardizedFileURL.path
        // A lab left running in this folder (its agents outlive a killed `tandem lab`) would answer
        // this one's status polls while this one's agents exit at once.
        for name in ["lab-a", "lab-b"] {
            if let pid = NodeLock.holder(directory: "\(directory)/state/\(name)", node: name) {
                throw fail(
                    "lab: \(name) of a lab in \(directory) is still running (process \(pid)); stop that lab's "
                        + "processes (`pkill -f \(directory)/tandem.toml`) or use another --directory")
            }
        }
        let files = FileManager.default
        for folder in [directory, "\(directory)/lab-a", "\(directory)/lab-b"] {
            try files.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        let secretPath = "\(directory)/secret"
        if !files.fileExists(atPath: secretPath) {
            let secret = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            try TextFile.write(secret + "\n", to: secretPath, mode: 0o600)
        }
        let configPath = "\(directory)/tandem.toml"
        try TextFile.write(
            ConfigTemplate.lab(directory: directory, sizeText: size, port: port, deadTime: deadTime, apiPort: apiPort),
            to: configPath, mode: 0o644)
        let configuration: Configuration
        do {
            configuration = try ConfigFile.load(path: configPath)
        } catch {
            throw fail("the lab's config is invalid:\n\(error)")
        }
        // The lab's own authority, and each node's certificate for its API (kept between runs).
        let tls = "\(directory)/tls"
        do {
            _ = try await ClusterCA.create(in: tls, cluster: "lab")
            for node in configuration.nodes {
                try await ClusterCA.issue(
                    directory: tls, commonName: node.name,
                    subjectNames: ClusterCA.subjectNames(of: node, in: configuration), isServer: true,
                    output: "\(tls)/\(node.name)")
            }
        } catch {
            throw fail("lab: cannot make the lab's TLS certificates: \(error)")
        }
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var children: [(String, Process)] = []
        for (name, arguments) in [
            ("witness", ["witness", "--config", configPath]),
            ("lab-a", ["agent", "--config", configPath, "--node", "lab-a"]),
            ("lab-b", ["agent", "--config", configPath, "--node", "lab-b"]),
        ] {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            let log = "\(directory)/\(name).log"
            guard files.createFile(atPath: log, contents: nil) else {
                throw fail("cannot create \(log)")
            }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            handle.seekToEndOfFile()
            process.standardError = handle
            process.standardOutput = handle
            try process.run()
            children.append((name, process))
        }
        print(
            "lab: started the witness, lab-a and lab-b (logs in \(directory)/*.log); waiting until the pair is in sync")
        guard let primary = await waitUntilInSync(directory: directory, children: children) else {
            for (_, process) in children where process.isRunning { process.terminate() }
            for (_, process) in children { process.waitUntilExit() }
            throw fail("lab: the cluster did not come up; see \(directory)/*.log")
        }
        let tokenPath = "\(directory)/admin.token"
        do {
            try await makeAdminToken(directory: directory, path: tokenPath)
        } catch {
            print("lab: no admin token for the API: \(error)")
        }
        printGuide(directory: directory, configPath: configPath, primary: primary, tokenPath: tokenPath)
        await waitForSignal()
        print("\nlab: stopping everything it started")
        for (_, process) in children where process.isRunning { process.terminate() }
        for (name, process) in children {
            process.waitUntilExit()
            print("lab: \(name) stopped (\(process.terminationStatus))")
        }
    }

    /// Polls both agents until one is primary and the other in sync; returns the primary's name, or
    /// `nil` when a child stopped (its log says why) or nothing came up within ten minutes.
    private func waitUntilInSync(directory: String, children: [(String, Process)]) async -> String? {
        let deadline = Date().addingTimeInterval(600)
        var lastReport = Date.distantPast
        while Date() < deadline {
            if let (name, process) = children.first(where: { !$0.1.isRunning }) {
                print("lab: \(name) stopped with status \(process.terminationStatus) before the pair was in sync")
                let log = (try? String(contentsOfFile: "\(directory)/\(name).log", encoding: .utf8)) ?? ""
                if let last = log.split(separator: "\n").last(where: { !$0.allSatisfy(\.isWhitespace) }) {
                    print("lab: its last words: \(last)")
                }
                return nil
            }
            for name in ["lab-a", "lab-b"] {
                let socket = ControlServer.socketPath(stateDirectory: "\(directory)/state/\(name)", node: name)
                guard let reply = try? await APIClient(.unixSocket(path: socket)).call(.GET, APIPath.status),
                    let volume = try? reply.decode(StatusReply.self).volumes.first
                else { continue }
                if volume.role == .primary, volume.connection == .connected, volume.peerDisk == .upToDate,
                    volume.outOfSyncBytes == 0
                {
                    return name
                }
                if let resync = volume.resync, Date().timeIntervalSince(lastReport) > 2 {
                    lastReport = Date()
                    print("lab: initial sync \(String(format: "%.0f", resync.percent))%")
                }
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return nil
    }

    private func waitForSignal() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let sources = [SIGINT, SIGTERM].map { DispatchSource.makeSignalSource(signal: $0, queue: .main) }
            let once = OnceFlag()
            for source in sources {
                source.setEventHandler {
                    guard once.set() else { return }
                    for source in sources { source.cancel() }
                    done.resume()
                }
                source.resume()
            }
        }
    }

    /// Makes the lab's admin token on lab-a (a new one each run) and writes it owner-only.
    private func makeAdminToken(directory: String, path: String) async throws {
        let socket = ControlServer.socketPath(stateDirectory: "\(directory)/state/lab-a", node: "lab-a")
        let client = APIClient(.unixSocket(path: socket))
        _ = try? await client.call(.DELETE, APIPath.token("lab-admin"))
        let request = try APICoding.encoder().encode(
            CreateTokenRequest(name: "lab-admin", role: .admin, expiresInSeconds: nil))
        let created = try await client.call(.POST, APIPath.tokens, body: Array(request)).decode(CreatedToken.self)
        try TextFile.write(created.token + "\n", to: path, mode: 0o600)
    }

    /// How the guide names this program: `tandem` when that is this binary on PATH (installed),
    /// else its absolute path (`swift run tandem lab` on a fresh clone), so every command works as
    /// printed.
    static func invocation() -> String {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        for folder in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = URL(fileURLWithPath: "\(folder)/tandem").resolvingSymlinksInPath().path
            if FileManager.default.isExecutableFile(atPath: candidate) {
                return candidate == executable ? "tandem" : executable
            }
        }
        return executable
    }

    private func printGuide(directory: String, configPath: String, primary: String, tokenPath: String) {
        let host = primary == "lab-a" ? "127.0.0.1" : "127.0.0.2"
        let tool = Self.invocation()
        print(
            """

            Tandem lab is running and in sync: \(primary) is primary for vol0 (\(size)), protocol C.
              config    \(configPath)
              lab-a     127.0.0.1 (NBD nbd://127.0.0.1:\(port)/vol0)   lab-b  127.0.0.2 (NBD nbd://127.0.0.2:\(port)/vol0)
              witness   127.0.0.3
              logs      \(directory)/lab-a.log  lab-b.log  witness.log

            Try it from another terminal:
              nbdinfo nbd://\(host):\(port)/vol0
              qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://\(host):\(port)/vol0
              \(tool) status --config \(configPath) --node lab-a
              watch -n 0.5 \(tool) status --config \(configPath) --node lab-b

            See a failover: kill the primary's agent and watch the other node take over within seconds:
              pkill -9 -f 'node \(primary)'
              \(tool) status --config \(configPath) --node \(primary == "lab-a" ? "lab-b" : "lab-a")
            Start it again (it rejoins as secondary and resyncs):
              \(tool) agent --config \(configPath) --node \(primary) 2>>\(directory)/\(primary).log &
            Planned switchover without data loss:
              \(tool) node standby --config \(configPath) \(primary)
            What each node decided, and the modes of both:
              \(tool) events --config \(configPath) --node lab-b --follow
              \(tool) mode --config \(configPath) --node lab-a

            The management API, on each node (HTTPS, the lab's authority in \(directory)/tls/ca-cert.pem):
              lab-a     https://127.0.0.1:\(apiPort)/v1/status   lab-b  https://127.0.0.2:\(apiPort)/v1/status
              token     \(tokenPath) (admin, works on both nodes)
              curl --cacert \(directory)/tls/ca-cert.pem -H "Authorization: Bearer $(cat \(tokenPath))" https://127.0.0.1:\(apiPort)/v1/status
              \(tool) status --server https://127.0.0.2:\(apiPort) --token-file \(tokenPath) --ca \(directory)/tls/ca-cert.pem
            Health checks for a load balancer (no token; 200 or 503):
              curl http://127.0.0.1:\(apiPort + 1)/health/primary    curl http://127.0.0.2:\(apiPort + 1)/health/primary
              curl http://127.0.0.1:\(apiPort + 1)/health/replica    curl http://127.0.0.2:\(apiPort + 1)/health/replica

            Press Ctrl-C to stop everything the lab started.
            """)
        fflush(nil)
    }
}

/// Set once, from any thread.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false

    /// True the first time only.
    func set() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if done { return false }
        done = true
        return true
    }
}
