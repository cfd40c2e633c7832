import ArgumentParser
import Logging
import TandemAgent
import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

struct LabCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Run a whole local cluster on loopback, with file-backed volumes, until Ctrl-C.",
        discussion: "Today the lab is one node serving one volume over NBD; the peer and witness join it later.")

    @Option(help: "Working folder for the config, backing files and sockets.")
    var directory: String = "./tandem-lab"

    @Option(help: "Size of the lab's volume.")
    var size: String = "1GiB"

    @Option(help: "TCP port of the NBD server on 127.0.0.1.")
    var port: Int = 10809

    @Option(help: "Log level.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        guard Units.parseByteCount(size) != nil else {
            throw fail("--size: expected a size such as 1GiB, found \(size)")
        }
        let directory = absolute(self.directory)
        for folder in [directory, "\(directory)/state"] where access(folder, F_OK) != 0 {
            guard mkdir(folder, 0o755) == 0 else {
                throw fail("cannot create \(folder): \(String(cString: strerror(errno)))")
            }
        }
        let configPath = "\(directory)/tandem.toml"
        try TextFile.write(
            ConfigTemplate.lab(directory: directory, sizeText: size, port: port), to: configPath, mode: 0o644)
        let level = logLevel
        LoggingSystem.bootstrap { name in
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tandem.lab")
        let configuration: Configuration
        do {
            configuration = try ConfigFile.load(path: configPath)
        } catch {
            throw fail("the lab's config is invalid:\n\(error)")
        }
        do {
            let agent = try Agent.prepare(configuration: configuration, nodeName: "lab-a", logger: logger)
            try await agent.run { _ in printGuide(directory: directory, configPath: configPath) }
        } catch let error as AgentError {
            throw fail("cannot start the lab: \(error)")
        }
    }

    private func printGuide(directory: String, configPath: String) {
        let url = "nbd://127.0.0.1:\(port)/vol0"
        print(
            """

            Tandem lab is running: node lab-a serves volume vol0 (\(size)) over NBD.
              config    \(configPath)
              backing   \(directory)/vol0.img
              NBD       \(url)   and   nbd+unix:///vol0?socket=\(directory)/nbd.sock

            Try it from another terminal:
              nbdinfo \(url)
              qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \(url)
              qemu-img convert -n -O raw some-image.raw \(url)
              fio --name=lab --ioengine=nbd --uri=\(url) --rw=randwrite --bs=4k --iodepth=16 --size=256M

            Press Ctrl-C to stop everything the lab started.
            """)
        fflush(nil)
    }

    private func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: 4096)
        let cwd = getcwd(&buffer, buffer.count).map { _ in String(cString: buffer) } ?? "."
        let trimmed = path.hasPrefix("./") ? String(path.dropFirst(2)) : path
        return "\(cwd)/\(trimmed)"
    }
}
