import ArgumentParser
import Foundation
import NIOHTTP1
import TandemAPI
import TandemCore

/// Sends a mode command to the node's agent and prints both nodes' modes and statuses.
extension NodeOptions {
    func runMode(_ method: HTTPMethod, _ path: String, _ body: (some Encodable)? = nil as String?) throws {
        try call(method, path, body, as: ModesView.self) { modes in
            for (label, value) in [
                ("LocalNode   ", modes.localNode), ("LocalMode   ", modes.localMode.rawValue),
                ("LocalStatus ", modes.localStatus.rawValue), ("RemoteNode  ", modes.remoteNode),
                ("RemoteMode  ", modes.remoteMode?.rawValue ?? "-"),
                ("RemoteStatus", modes.remoteStatus?.rawValue ?? "-"),
            ] {
                print("\(label) \(value)")
            }
            if let blocker = modes.failedStartup { print("Blocked      failed-startup: \(blocker)") }
        }
    }
}

struct ModeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mode",
        abstract: "Set this node's mode: default (HA monitoring on), single, config, locked; without one, show both.",
        discussion: """
            single and config need the peer locked or certified down (tandem peerdown); locked keeps the node \
            out of every role while the peer runs in any mode.
            """)
    @OptionGroup var options: NodeOptions
    @Argument(help: "default, single, config or locked.") var mode: String?
    func run() async throws {
        guard let mode else { return try options.runMode(.GET, APIPath.modes) }
        guard let value = NodeMode(rawValue: mode), value != .peerdown else {
            throw fail("expected: mode default|single|config|locked, found \(mode)")
        }
        try options.runMode(.PUT, APIPath.modes, SetModeRequest(mode: value))
    }
}

/// The one-word mode commands share one shape.
protocol SimpleModeCommand: AsyncParsableCommand {
    static var word: String { get }
    var options: NodeOptions { get }
}

extension SimpleModeCommand {
    func run() async throws { try options.runMode(.POST, APIPath.modeCommand(Self.word)) }
}

struct PeerdownCommand: SimpleModeCommand {
    static let word = "peerdown"
    static let configuration = CommandConfiguration(
        commandName: word,
        abstract: "Certify that the peer is down (powered off): this node may then run without it.")
    @OptionGroup var options: NodeOptions
}

struct PeerupCommand: SimpleModeCommand {
    static let word = "peerup"
    static let configuration = CommandConfiguration(commandName: word, abstract: "Erase the peerdown certification.")
    @OptionGroup var options: NodeOptions
}

struct ClearCommand: SimpleModeCommand {
    static let word = "clear"
    static let configuration = CommandConfiguration(
        commandName: word, abstract: "Clear the failed-startup blocker (left by an HA reset).")
    @OptionGroup var options: NodeOptions
}

struct StartCommand: SimpleModeCommand {
    static let word = "start"
    static let configuration = CommandConfiguration(
        commandName: word, abstract: "Start the pair: this node primary, the peer secondary, both in default mode.")
    @OptionGroup var options: NodeOptions
}

struct StopCommand: SimpleModeCommand {
    static let word = "stop"
    static let configuration = CommandConfiguration(
        commandName: word, abstract: "Stop the pair without an HA reset: both nodes default mode and stopped.")
    @OptionGroup var options: NodeOptions
}

struct ForceResetCommand: SimpleModeCommand {
    static let word = "force-reset"
    static let configuration = CommandConfiguration(
        commandName: word, abstract: "Reset this node at once (an HA reset); only in default mode.")
    @OptionGroup var options: NodeOptions
}
