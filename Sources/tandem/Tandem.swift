import ArgumentParser
import Logging
import TandemAgent
import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

@main
struct Tandem: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem",
        abstract: "High-availability manager for replicated block storage.",
        subcommands: [
            AgentCommand.self, WitnessCommand.self, LabCommand.self, StatusCommand.self, NodeCommand.self,
            FailoverCommand.self, VolumeCommand.self, ResourceCommand.self, EventsCommand.self, ModeCommand.self,
            PeerdownCommand.self, PeerupCommand.self, ClearCommand.self, StartCommand.self, StopCommand.self,
            ForceResetCommand.self, ConfigCommand.self,
            InitCommand.self, CertCommand.self, TokenCommand.self,
        ]
    )
}

/// Options every command that reads the config file shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The config file.")
    var config: String = ConfigFile.defaultPath

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func makeLogger(label: String) -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { name in
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Prints a message to standard error and fails with exit code 1.
func fail(_ message: String) -> ExitCode {
    FileHandleOutput.standardError(message)
    return ExitCode.failure
}

enum FileHandleOutput {
    static func standardError(_ message: String) {
        let line = Array((message.hasSuffix("\n") ? message : message + "\n").utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Run the node's daemon until SIGTERM or SIGINT.")

    @OptionGroup var options: GlobalOptions

    @Option(help: "This node's name in the config (default: the host name).")
    var node: String?

    func run() async throws {
        let logger = options.makeLogger(label: "tandem.agent")
        let configuration: Configuration
        do {
            configuration = try ConfigFile.load(path: options.config)
        } catch {
            throw fail("invalid config:\n\(error)")
        }
        do {
            let agent = try Agent.prepare(
                configuration: configuration, nodeName: node ?? Agent.hostName(), logger: logger)
            try await agent.run()
        } catch let error as AgentError {
            throw fail("cannot start: \(error)")
        }
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Work with the config file.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a config file; every problem is printed with its line and key.")

        @Argument(help: "The config file.")
        var file: String = ConfigFile.defaultPath

        func run() async throws {
            do {
                let configuration = try ConfigFile.load(path: file)
                print(
                    "\(file): valid (cluster \"\(configuration.cluster.name)\", \(configuration.nodes.count) nodes, "
                        + "\(configuration.volumes.count) volumes, \(configuration.groups.count) groups)")
            } catch {
                throw fail(error.description)
            }
        }
    }
}

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a commented example config, a new random shared secret and the cluster's TLS authority.")

    @Option(help: "Where to write the config.")
    var output: String = ConfigFile.defaultPath

    @Option(help: "Where to write the shared secret.")
    var secret: String = "/etc/tandem/secret"

    @Option(help: "Where the cluster's TLS authority goes (default: tls/ beside the config).")
    var tlsDir: String?

    @Flag(help: "Replace existing files (an existing TLS authority is kept).")
    var force = false

    func run() async throws {
        for path in [output, secret] where !force && access(path, F_OK) == 0 {
            throw fail("\(path) exists; pass --force to replace it")
        }
        let folder = output.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let tls = tlsDir ?? "\(folder.isEmpty ? "." : folder)/tls"
        guard tls.hasPrefix("/") else { throw fail("--tls-dir must be an absolute path, found \(tls)") }
        let created: Bool
        do {
            try SecretFile.write(path: secret)
            try TextFile.write(ConfigTemplate.example(secretFile: secret, tlsDirectory: tls), to: output, mode: 0o644)
            created = try await ClusterCA.create(in: tls, cluster: "media")
        } catch {
            throw fail("\(error)")
        }
        print("wrote \(output) (edit it, then run `tandem config check \(output)`)")
        print("wrote \(secret) (copy it to every node, mode 0600)")
        print(
            created
                ? "wrote \(tls)/ca-cert.pem and ca-key.pem (the cluster's TLS authority; the key stays here, mode 0600)"
                : "kept the TLS authority in \(tls)")
        print("then, for each node: tandem cert issue NODE -c \(output)")
    }
}
