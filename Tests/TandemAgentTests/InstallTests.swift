import Foundation
import TandemTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Installed like a system tool: the files `scripts/install` puts in place, the units as systemd
/// reads them, and the readiness the units wait for.
@Suite("Installation and readiness", .serialized)
struct InstallTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    @Test("scripts/install stages the binary, completions and units; systemd-analyze verifies the units")
    func install_andVerifyTheUnits() throws {
        let stage = TemporaryDirectory()
        let output = try Tools.run(
            "/usr/bin/env",
            [
                "DESTDIR=\(stage.path)", "TANDEM_NO_MAN=1", "\(Self.root)/scripts/install", "--binary",
                try Tools.tandemBinary(),
            ])
        #expect(output.status == 0, "\(output.combined)")
        let bin = "\(stage.path)/usr/local/bin/tandem"
        #expect(FileManager.default.isExecutableFile(atPath: bin))
        #expect(try Tools.run(bin, ["--help"]).standardOutput.contains("token"))
        for (file, mark) in [
            ("usr/local/share/bash-completion/completions/tandem", "tandem"),
            ("usr/local/share/zsh/site-functions/_tandem", "#compdef tandem"),
            ("usr/local/share/fish/vendor_completions.d/tandem.fish", "tandem"),
        ] {
            let text = try String(contentsOfFile: "\(stage.path)/\(file)", encoding: .utf8)
            #expect(text.contains(mark) && text.contains("standby"), "\(file)")
        }
        // systemd reads the units as installed, with the staged binary where they expect tandem.
        let analyze = try Tools.path(of: "systemd-analyze")
        var units: [String] = []
        for unit in ["tandem-agent.service", "tandem-witness.service"] {
            var text = try String(contentsOfFile: "\(stage.path)/etc/systemd/system/\(unit)", encoding: .utf8)
            #expect(text.contains("Type=notify") && text.contains("LimitNOFILE=") && text.contains("Restart="))
            text = text.replacingOccurrences(of: "/usr/local/bin/tandem", with: bin)
            let path = "\(stage.path)/\(unit)"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            units.append(path)
        }
        let verified = try Tools.run(analyze, ["verify", "--man=no"] + units)
        #expect(verified.status == 0, "\(verified.combined)")
        #expect(!verified.combined.contains("Unknown key"), "\(verified.combined)")
    }

    /// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
    final class NotifySocket {
        let path: String
        let descriptor: Int32

        init(path: String) throws {
            self.path = path
            descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard bound == 0 else { throw Tools.Failure(description: "cannot bind \(path): \(errno)") }
            var timeout = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }

        /// The next datagram, or nil after 30 s.
        func receive() -> String? {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(descriptor, &buffer, buffer.count, 0)
            return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
        }

        deinit { close(descriptor) }
    }

    @Test("the agent says READY=1 once it serves and STOPPING=1 when it stops; the witness READY=1")
    func readiness_overNotifySocket() throws {
        let directory = TemporaryDirectory()
        let port = try freeLoopbackPort()
        let witnessPort = try freeLoopbackPort()
        let config = "\(directory.path)/tandem.toml"
        try """
        [cluster]
        name = "solo"
        state-dir = "\(directory.path)/state"

        [[node]]
        name = "solo"
        address = "127.0.0.1"
        nbd-listen = ["127.0.0.1:\(port)"]

        [[volume]]
        name = "vol0"
        protocol = "C"
        size = "4MiB"
        backing = "\(directory.path)/vol0.img"

        """.write(toFile: config, atomically: true, encoding: .utf8)
        // The witness votes between two nodes.
        let pair = "\(directory.path)/pair.toml"
        try "0123456789abcdef0123456789abcdef\n".write(
            toFile: "\(directory.path)/secret", atomically: true, encoding: .utf8)
        try """
        [cluster]
        name = "pair"
        secret-file = "\(directory.path)/secret"
        state-dir = "\(directory.path)/{node}"

        [[node]]
        name = "a"
        address = "127.0.0.1"
        port = \(try freeLoopbackPort())

        [[node]]
        name = "b"
        address = "127.0.0.1"
        port = \(try freeLoopbackPort())

        [witness]
        address = "127.0.0.1"
        port = \(witnessPort)

        """.write(toFile: pair, atomically: true, encoding: .utf8)
        for (arguments, expectStopping) in [
            (["agent", "--config", config, "--node", "solo"], true), (["witness", "--config", pair], false),
        ] {
            let notify = try NotifySocket(path: "\(directory.path)/notify-\(arguments[0])")
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try Tools.tandemBinary())
            process.arguments = arguments
            process.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": notify.path]) { $1 }
            process.standardError = FileHandle.nullDevice
            try Tools.launch(process)
            defer { if process.isRunning { process.terminate() } }
            let ready = notify.receive()
            #expect(ready?.hasPrefix("READY=1") == true, "\(arguments[0]): \(ready ?? "nothing within 30 s")")
            if arguments[0] == "agent" {
                // Ready means serving: the NBD port takes a client.
                #expect(try Tools.run("nbdinfo", ["--size", "nbd://127.0.0.1:\(port)/vol0"]).status == 0)
            }
            process.terminate()
            if expectStopping {
                let stopping = notify.receive()
                #expect(stopping == "STOPPING=1", "\(stopping ?? "nothing within 30 s")")
            }
            #expect(Tools.wait(process), "\(arguments[0]) stopped")
        }
    }
}
