import ArgumentParser
import Foundation
import Logging
import TandemAPI
import TandemAgent
import TandemCore

struct WitnessCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "witness", abstract: "Run the witness, the third voter, until SIGTERM or SIGINT.")

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        let logger = options.makeLogger(label: "tandem.witness")
        let configuration: Configuration
        do {
            configuration = try ConfigFile.load(path: options.config)
        } catch {
            throw fail("invalid config:\n\(error)")
        }
        var expanded = configuration
        expanded.cluster.stateDirectory = configuration.cluster.stateDirectory.replacing("{node}", with: "witness")
        do {
            let service = try WitnessService(configuration: expanded, logger: logger)
            try await Agent.runServices([service], logger: logger)
        } catch let error as AgentError {
            throw fail("cannot start the witness: \(error)")
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "The whole cluster at a glance: quorum, nodes, links, the witness, volumes, the last failover.")

    @OptionGroup var options: NodeOptions

    func run() async throws { try options.runStatus(cluster: true) }
}

extension NodeOptions {
    /// Runs `standby` or `online` for `name`: on its own agent when that agent runs on this machine,
    /// else through the agent of this machine's node (`--node`, or the host name), which asks its
    /// peer and answers once the peer's heartbeat shows the new state.
    func runNodeState(_ action: String, of name: String) throws {
        var options = self
        if remote == nil, node == nil || node == name {
            options.node = name
            if FileManager.default.fileExists(atPath: try options.socketPath()) || node == name {
                return try options.run(APIPath.node(name, action), cluster: true)
            }
            options.node = nil
        }
        try options.run(APIPath.node(name, action), cluster: true)
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node", abstract: "Node states: standby (planned switchover), online, status.",
        subcommands: [Standby.self, Online.self, NodeStatus.self])

    struct Standby: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hand the primary role to the peer (drain, flush, demote, promote) and keep out of it.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The node: this one, or its peer (asked through this node's agent).") var name: String

        func run() async throws { try options.runNodeState("standby", of: name) }
    }

    struct Online: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make the node eligible for the primary role again.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The node: this one, or its peer (asked through this node's agent).") var name: String

        func run() async throws { try options.runNodeState("online", of: name) }
    }

    struct NodeStatus: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "Print online, standby or offline.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The node.") var name: String

        func run() async throws {
            var options = options
            options.node = name
            do {
                let reply = try options.client().get(APIPath.status, as: StatusReply.self)
                print(reply.cluster?.state.rawValue ?? "online")
            } catch is APIClient.Unreachable {
                print("offline")
            }
        }
    }
}

struct FailoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover",
        abstract: "Promote a node by hand when the cluster cannot decide on its own (no witness).")

    @OptionGroup var options: NodeOptions
    @Flag(help: "Required: promote without quorum.") var force = false
    @Flag(help: "Do not ask for confirmation.") var yes = false
    @Argument(help: "The node to promote.") var name: String

    func run() async throws {
        guard force else {
            throw fail("a cluster with a witness fails over on its own; use `tandem node standby` to switch over")
        }
        if !yes {
            print(
                """
                Promoting \(name) without quorum. If the other node is still running and serving, both will
                accept writes and the copies will diverge (split brain); writes acknowledged by the other node
                after its last sync are not on \(name). Make sure the other node is powered off.
                Type the node's name to go on:
                """, terminator: " ")
            guard readLine()?.trimmingCharacters(in: .whitespaces) == name else { throw fail("not confirmed") }
        }
        var options = options
        options.node = name
        try options.run(
            APIPath.node(name, "force-primary"), ForcePrimaryRequest(confirm: ForcePrimaryRequest.risk), cluster: true)
    }
}
