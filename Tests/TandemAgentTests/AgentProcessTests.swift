import Foundation
import TandemTestSupport
import Testing

/// The `tandem` binary as an administrator runs it.
@Suite struct AgentProcessTests {
    private func writeConfig(
        _ directory: TemporaryDirectory, port: Int, size: String, backing: String? = nil, extra: String = ""
    ) throws -> String {
        let path = "\(directory.path)/tandem.toml"
        try """
        [cluster]
        name = "test"
        state-dir = "\(directory.path)"

        [[node]]
        name = "node-a"
        address = "127.0.0.1"
        nbd-listen = ["127.0.0.1:\(port)"]

        [[volume]]
        name = "vol0"
        size = "\(size)"
        backing = "\(backing ?? "\(directory.path)/vol0.img")"
        \(extra)
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func startAgent(config: String) throws -> (Process, DataCollector) {
        try launch(try Tools.tandemBinary(), ["agent", "--config", config, "--node", "node-a"], collecting: .error)
    }

    private enum Stream { case output, error }

    /// Launches a program, collecting one of its streams and discarding the other.
    private func launch(_ executable: String, _ arguments: [String], collecting: Stream) throws
        -> (Process, DataCollector)
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = collecting == .output ? pipe : FileHandle.nullDevice
        process.standardError = collecting == .error ? pipe : FileHandle.nullDevice
        try Tools.launch(process)
        return (process, DataCollector(pipe.fileHandleForReading))
    }

    /// Polls `nbdinfo` until the agent answers, for at most 20 seconds.
    private func waitUntilServing(_ uri: String, process: Process) throws {
        for _ in 0..<200 {
            guard process.isRunning else { throw Tools.Failure(description: "the agent exited early") }
            if try Tools.run("nbdinfo", ["--size", uri]).status == 0 { return }
            usleep(100_000)
        }
        throw Tools.Failure(description: "the agent did not serve \(uri) within 20 seconds")
    }

    @Test func agent_servesA10GiBVolume_inUnder64MiB_andStopsCleanlyOnSIGTERM() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let config = try writeConfig(directory, port: port, size: "10GiB")
        let (process, errors) = try startAgent(config: config)
        defer { if process.isRunning { process.terminate() } }
        let uri = "nbd://127.0.0.1:\(port)/vol0"
        try waitUntilServing(uri, process: process)
        try Tools.check(
            "fio",
            [
                "--name=spread", "--ioengine=nbd", "--uri=\(uri)", "--rw=randwrite", "--bs=64k", "--iodepth=16",
                "--size=10G", "--io_size=128M", "--numjobs=4", "--group_reporting",
            ])
        try Tools.check(
            "fio",
            [
                "--name=read", "--ioengine=nbd", "--uri=\(uri)", "--rw=randread", "--bs=1M", "--iodepth=8",
                "--size=10G", "--io_size=256M",
            ])
        let rss = try Tools.residentBytes(of: process.processIdentifier)
        print("agent resident memory serving a 10 GiB volume after 768 MiB of I/O: \(rss / 1024) KiB")
        #expect(rss < 64 << 20, "resident memory \(rss) bytes")
        process.terminate()
        Tools.wait(process)
        #expect(Tools.status(process) == 0, "exit status after SIGTERM; stderr:\n\(errors.text())")
        #expect(errors.text().contains("NBD server shutting down"))
    }

    @Test func agent_refusesToStart_whenMetadataIsCorrupt() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let config = try writeConfig(directory, port: port, size: "16MiB")
        try Tools.check(try Tools.tandemBinary(), ["config", "check", config])
        let (first, _) = try startAgent(config: config)
        try waitUntilServing("nbd://127.0.0.1:\(port)/vol0", process: first)
        first.terminate()
        Tools.wait(first)
        let metadata = "\(directory.path)/vol0.img.tandem-meta"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: metadata))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: metadata))
        let output = try Tools.run(
            try Tools.tandemBinary(), ["agent", "--config", config, "--node", "node-a"], timeout: .seconds(30))
        #expect(output.status == 1)
        #expect(
            output.standardError.contains("metadata file \(metadata) is torn or corrupt"), "\(output.standardError)")
    }

    @Test func aSecondAgentForTheSameNode_refusesToStart_andTheFirstKeepsServing() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let config = try writeConfig(directory, port: port, size: "16MiB")
        let (first, errors) = try startAgent(config: config)
        defer { if first.isRunning { first.terminate() } }
        let uri = "nbd://127.0.0.1:\(port)/vol0"
        try waitUntilServing(uri, process: first)
        let second = try Tools.run(
            try Tools.tandemBinary(), ["agent", "--config", config, "--node", "node-a"], timeout: .seconds(30))
        #expect(second.status == 1)
        #expect(
            second.standardError.contains(
                "another agent for node node-a is running (process \(first.processIdentifier) holds \(directory.path)/node-a.lock)"
            ), "\(second.standardError)")
        // The refused agent touched nothing: the first still has its control socket and clients.
        try Tools.check(try Tools.tandemBinary(), ["volume", "status", "--config", config, "--node", "node-a"])
        try Tools.check("nbdinfo", ["--size", uri])
        first.terminate()
        Tools.wait(first)
        #expect(Tools.status(first) == 0, "exit status after SIGTERM; stderr:\n\(errors.text())")
        // The lock goes with its process: the node starts again.
        let (again, _) = try startAgent(config: config)
        defer {
            again.terminate()
            Tools.wait(again)
        }
        try waitUntilServing(uri, process: again)
    }

    @Test func anAgentWhoseNBDAddressIsTaken_exitsNamingTheAddress() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        guard let taken = boundLoopbackSocket(port: port, type: Int32(SOCK_STREAM.rawValue)), listen(taken, 1) == 0
        else { throw Tools.Failure(description: "cannot listen on 127.0.0.1:\(port)") }
        defer { close(taken) }
        let config = try writeConfig(directory, port: port, size: "16MiB")
        let output = try Tools.run(
            try Tools.tandemBinary(), ["agent", "--config", config, "--node", "node-a"], timeout: .seconds(30))
        #expect(output.status == 1)
        #expect(
            output.standardError.contains("cannot listen for NBD clients on 127.0.0.1:\(port): "),
            "\(output.standardError)")
        #expect(output.standardError.contains("Address already in use"), "\(output.standardError)")
    }

    /// A backing file system that fills up: the client is told `ENOSPC`, which it can tell from a
    /// failing disk (QEMU's default `werror=enospc` pauses the guest until space is freed, where
    /// `EIO` reaches the guest's file system), and the agent serves on.
    @Test func aFullBackingFileSystem_isReportedAsNoSpace_andTheAgentServesOn() throws {
        guard getuid() == 0 else {
            throw Tools.Failure(description: "this test needs root: it mounts a tmpfs in a mount namespace")
        }
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let full = "\(directory.path)/full"
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: false)
        let config = try writeConfig(directory, port: port, size: "32MiB", backing: "\(full)/vol0.img")
        // An 8 MiB tmpfs in a mount namespace of the agent's own: nothing outside sees it, and it
        // goes with the agent (unshare and sh exec, so the agent keeps this process's pid).
        let (process, log) = try launch(
            "/usr/bin/unshare",
            [
                "--mount", "--propagation", "private", "sh", "-c",
                "mount -t tmpfs -o size=8m tmpfs \"$0\" && exec \"$1\" agent --config \"$2\" --node node-a",
                full, try Tools.tandemBinary(), config,
            ],
            collecting: .error)
        defer { if process.isRunning { process.terminate() } }
        let uri = "nbd://127.0.0.1:\(port)/vol0"
        try waitUntilServing(uri, process: process)
        let tooMuch = try Tools.run("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 16M", uri])
        #expect(tooMuch.status != 0)
        #expect(tooMuch.combined.contains("write failed: No space left on device"), "\(tooMuch.combined)")
        // Space that was allocated before the file system filled up still takes writes.
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x77 0 64k", "-c", "read -P 0x77 0 64k", uri])
        process.terminate()
        Tools.wait(process)
        #expect(log.text().contains("write failed: pwrite \(full)/vol0.img: No space left on device"), "\(log.text())")
    }

    @Test func configCheck_badFile_namesFileLineAndKey_andExitsNonZero() throws {
        let directory = TemporaryDirectory()
        let config = try writeConfig(directory, port: 10809, size: "1 gig", extra: "colour = \"blue\"")
        let output = try Tools.run(try Tools.tandemBinary(), ["config", "check", config])
        #expect(output.status == 1)
        #expect(
            output.standardError.contains("\(config):12: volume[0].size: expected a size such as"),
            "\(output.standardError)")
        #expect(output.standardError.contains("\(config):14: volume[0].colour: unknown key"), "\(output.standardError)")
        let missing = try Tools.run(try Tools.tandemBinary(), ["config", "check", "\(directory.path)/absent.toml"])
        #expect(missing.status == 1)
        #expect(missing.standardError.contains("absent.toml: cannot read: No such file or directory"))
    }

    @Test func init_writesAConfigThatChecksAndAPrivateSecret() throws {
        let directory = TemporaryDirectory()
        let config = "\(directory.path)/etc/tandem.toml"
        let secret = "\(directory.path)/etc/secret"
        try Tools.check(try Tools.tandemBinary(), ["init", "--output", config, "--secret", secret])
        try Tools.check(try Tools.tandemBinary(), ["config", "check", config])
        let attributes = try FileManager.default.attributesOfItem(atPath: secret)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(try String(contentsOfFile: secret, encoding: .utf8).count == 65)
        let again = try Tools.run(try Tools.tandemBinary(), ["init", "--output", config, "--secret", secret])
        #expect(again.status == 1, "init must not overwrite without --force")
        // The cluster's authority beside the config, its key the owner's alone; a node's
        // certificate names its own and its group's floating address.
        let tls = "\(directory.path)/etc/tls"
        let key = try FileManager.default.attributesOfItem(atPath: "\(tls)/ca-key.pem")
        #expect((key[.posixPermissions] as? Int) == 0o600)
        try Tools.check(try Tools.tandemBinary(), ["cert", "issue", "box-a", "-c", config])
        let nodeKey = try FileManager.default.attributesOfItem(atPath: "\(tls)/box-a/server-key.pem")
        #expect((nodeKey[.posixPermissions] as? Int) == 0o600)
        let text = try Tools.check(
            "openssl", ["x509", "-noout", "-text", "-in", "\(tls)/box-a/server-cert.pem"]
        ).standardOutput
        for name in ["DNS:box-a", "IP Address:10.0.0.1", "IP Address:192.168.50.1", "IP Address:10.0.0.50"] {
            #expect(text.contains(name), "\(name) missing from the certificate: \(text)")
        }
        #expect(text.contains("TLS Web Server Authentication") && text.contains("CA:FALSE"), "\(text)")
        try Tools.check(
            "openssl", ["verify", "-CAfile", "\(tls)/ca-cert.pem", "\(tls)/box-a/server-cert.pem"])
        let unknown = try Tools.run(try Tools.tandemBinary(), ["cert", "issue", "box-z", "-c", config])
        #expect(unknown.status == 1 && unknown.standardError.contains("box-z"), "\(unknown.combined)")
    }

    /// The agent serves NBD over TLS with the node's certificate, refuses plaintext clients when TLS
    /// is required, and reads its credentials again on SIGHUP.
    @Test func agent_withTLSRequired_servesTLSClients_refusesPlaintext_andReloadsOnSIGHUP() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let config = "\(directory.path)/tandem.toml"
        try """
        [cluster]
        name = "test"
        state-dir = "\(directory.path)"
        tls-dir = "\(directory.path)/tls"

        [[node]]
        name = "node-a"
        address = "127.0.0.1"
        nbd-listen = ["127.0.0.1:\(port)"]
        tls = "require"

        [[volume]]
        name = "vol0"
        size = "16MiB"
        backing = "\(directory.path)/vol0.img"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        try Tools.check(
            try Tools.tandemBinary(),
            [
                "init", "--output", "\(directory.path)/unused.toml", "--secret", "\(directory.path)/secret",
                "--tls-dir", "\(directory.path)/tls",
            ])
        try Tools.check(try Tools.tandemBinary(), ["cert", "issue", "node-a", "-c", config])
        try Tools.check(try Tools.tandemBinary(), ["cert", "client", "tester", "-c", config])
        let (process, errors) = try startAgent(config: config)
        defer { if process.isRunning { process.terminate() } }
        let uri = "nbds://127.0.0.1:\(port)/vol0?tls-certificates=\(directory.path)/tls/clients/tester"
        try waitUntilServing(uri, process: process)
        let original = try writeRandomFile(path: "\(directory.path)/source.raw", bytes: 16 << 20)
        try Tools.check("nbdcopy", ["\(directory.path)/source.raw", uri])
        try Tools.check("nbdcopy", [uri, "\(directory.path)/copy.raw"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: "\(directory.path)/copy.raw")) == original)
        #expect(try Tools.run("nbdinfo", ["--size", "nbd://127.0.0.1:\(port)/vol0"]).status != 0)
        kill(process.processIdentifier, SIGHUP)
        let deadline = Date().addingTimeInterval(10)
        while !errors.snapshot().contains("TLS credentials reloaded"), Date() < deadline { usleep(50_000) }
        #expect(errors.snapshot().contains("TLS credentials reloaded"), "\(errors.snapshot())")
        try Tools.check("nbdinfo", ["--size", uri])
        process.terminate()
        Tools.wait(process)
    }

    @Test func lab_servesItsVolume_printsTheGuide_andStopsOnCtrlC() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let (process, printed) = try launch(
            try Tools.tandemBinary(),
            ["lab", "--directory", "\(directory.path)/lab", "--size", "64MiB", "--port", "\(port)"],
            collecting: .output)
        defer { if process.isRunning { process.terminate() } }
        let uri = "nbd://127.0.0.1:\(port)/vol0"
        let deadline = Date().addingTimeInterval(90)
        while !printed.snapshot().contains("Tandem lab is running"), process.isRunning, Date() < deadline {
            usleep(100_000)
        }
        try #require(
            printed.snapshot().contains("Tandem lab is running and in sync: lab-a is primary"),
            "\(printed.snapshot())")
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", uri])
        // The secondary serves the same data, read-only.
        try Tools.check("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0x5a 0 1M", "nbd://127.0.0.2:\(port)/vol0"])
        // A second lab in the same folder refuses to start while this one's agents run.
        let second = try Tools.run(
            try Tools.tandemBinary(),
            ["lab", "--directory", "\(directory.path)/lab", "--size", "64MiB", "--port", "\(port)"],
            timeout: .seconds(30))
        #expect(second.status == 1)
        #expect(
            second.combined.contains("lab: lab-a of a lab in \(directory.path)/lab is still running (process "),
            "\(second.combined)")
        process.interrupt()
        Tools.wait(process)
        #expect(Tools.status(process) == 0)
        let text = printed.text()
        #expect(text.contains("pkill -9 -f 'node lab-a'"))
        for name in ["witness", "lab-a", "lab-b"] { #expect(text.contains("lab: \(name) stopped (0)"), "\(text)") }
    }
}
