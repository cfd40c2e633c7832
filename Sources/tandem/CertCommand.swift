import ArgumentParser
import TandemAgent
import TandemCore

/// `tandem cert`: certificates from the cluster's authority.
struct CertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert", abstract: "Issue TLS certificates from the cluster's authority.",
        subcommands: [Issue.self, Client.self])

    /// The config, or the exit that names what is wrong in it.
    static func load(_ path: String) throws -> Configuration {
        do {
            return try ConfigFile.load(path: path)
        } catch {
            throw fail(error.description)
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue NODE's certificate (NBD server and peer link) into TLS-DIR/NODE/.",
            discussion: """
                The certificate names the node and every address it listens on or may hold, its \
                groups' floating addresses included. Copy the folder to the node (to the same \
                path), then start the agent or send it SIGHUP.
                """)

        @Option(name: .shortAndLong, help: "The config file.")
        var config: String = ConfigFile.defaultPath

        @Argument(help: "The node, as named in the config.")
        var node: String

        func run() async throws {
            let configuration = try CertCommand.load(config)
            guard let entry = configuration.node(named: node) else {
                let known = configuration.nodes.map(\.name).joined(separator: ", ")
                throw fail("node \"\(node)\" is not defined in \(config) (known: \(known))")
            }
            let directory = configuration.cluster.tlsDirectory.replacing("{node}", with: node)
            let names = ClusterCA.subjectNames(of: entry, in: configuration)
            do {
                try await ClusterCA.issue(
                    directory: directory, commonName: node, subjectNames: names, isServer: true,
                    output: "\(directory)/\(node)")
            } catch {
                throw fail("\(error)")
            }
            print(
                "wrote \(directory)/\(node)/ (server-cert.pem, server-key.pem, ca-cert.pem) for \(names.joined(separator: ", "))"
            )
            print("copy the folder to \(node) at the same path")
        }
    }

    struct Client: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a client certificate into TLS-DIR/clients/NAME/ (for libnbd and QEMU).",
            discussion: """
                The folder is what `nbdinfo 'nbds://HOST/vol0?tls-certificates=DIR'` and QEMU's \
                `tls-creds-x509,dir=DIR,endpoint=client` read. Clients need one when \
                `nbd-client-certificates = "required"`; otherwise ca-cert.pem alone verifies the server.
                """)

        @Option(name: .shortAndLong, help: "The config file.")
        var config: String = ConfigFile.defaultPath

        @Argument(help: "The client's name (its certificate's common name).")
        var name: String

        func run() async throws {
            let configuration = try CertCommand.load(config)
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                throw fail("a client's name is letters, digits, '-', '_' or '.'")
            }
            let directory = configuration.cluster.tlsDirectory
            do {
                try await ClusterCA.issue(
                    directory: directory, commonName: name, subjectNames: [], isServer: false,
                    output: "\(directory)/clients/\(name)")
            } catch {
                throw fail("\(error)")
            }
            print("wrote \(directory)/clients/\(name)/ (client-cert.pem, client-key.pem, ca-cert.pem)")
        }
    }
}
