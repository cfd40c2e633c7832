import Foundation
import Testing

@testable import TandemCore

/// Trace tests of the node loop, in the style of etcd's datadriven `testdata/*.txt`: each file is a
/// script of inputs, each followed by `----` and the actions the loop returned, one per line. A
/// change of behaviour shows as a readable diff of the file; `TANDEM_REWRITE_TRACES=1` writes the
/// actual output back into the files (review the diff before committing it).
///
/// Commands (times are absolute, `t=1.5s`; a command without one happens at the last time):
///
///     config name=a peer=b precedence=2 peer-precedence=1 witness fence heartbeat=500ms dead=2s
///            [failback failback-delay=D cooldown=D]
///     boot [standby] [mode=locked] [peerdown] [blocked=TEXT] [epoch=N holder=NODE] [outdated=NODE]
///     facts [ready] [insync]                         what the volumes say from now on
///     tick [t=T] [heard=T]                           heard: replication link last active
///     ticks from=T to=T every=D                      ticks, each action prefixed by its time
///     hb from=NODE [epoch=N] [primary] [standby] [ready] [insync] [mode=M] [link=L]
///     lease-reply from=NODE id=N epoch=N (granted|refused) known=N [outdated]
///     vote-request from=NODE id=N epoch=N [pre]
///     vote-reply from=NODE id=N epoch=N (granted|refused) known=N [pre] [reason=TEXT]
///     release from=NODE epoch=N [insync]
///     ask from=NODE request=standby|online|start|stop|unlock
///     standby on|off id=N       peer-standby on|off id=N       force id=N
///     mode default|single|config|locked|peerdown|peerup|clear|start|stop|report id=N
///     fenced ok|failed output=TEXT
///     fail-store reason=TEXT                         the next mode record cannot be stored
///     state                                          role, epoch, standby, mode, lease
@Suite struct NodeLoopTraceTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("testdata/nodeloop")

    static var files: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".txt") }
            .sorted()
    }

    @Test func theTraceFilesAreThere() {
        for name in ["failover", "failback", "standby", "fence", "start-stop", "peerdown", "store-failure"] {
            #expect(Self.files.contains("\(name).txt"), "testdata/nodeloop/\(name).txt is missing")
        }
    }

    @Test(arguments: files)
    func trace(_ file: String) throws {
        var script = TraceScript()
        try TraceFile.check(Self.directory.appendingPathComponent(file).path) { try script.run($0) }
    }
}

/// One command of a trace file with the output it expects.
struct TraceBlock {
    var leading: String
    var command: String
    var expected: [String]
    var line: Int
}

enum TraceFile {
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs every command of the trace at `path` through `run` and expects the output the file
    /// holds; with `TANDEM_REWRITE_TRACES=1`, writes the actual output back into the file.
    static func check(_ path: String, _ run: (String) throws -> [String]) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var rewritten = ""
        for block in try blocks(text) {
            rewritten += block.leading
            var actual: [String]
            do {
                actual = try run(block.command)
            } catch {
                actual = ["error: \(error)"]
            }
            rewritten += block.command + "\n----\n" + actual.map { $0 + "\n" }.joined()
            let expected = block.expected.joined(separator: "\n")
            #expect(
                actual == block.expected,
                "\(path):\(block.line): \(block.command)\n--- expected\n\(expected)\n--- actual\n\(actual.joined(separator: "\n"))"
            )
        }
        if ProcessInfo.processInfo.environment["TANDEM_REWRITE_TRACES"] == "1" {
            try rewritten.write(toFile: path, atomically: true, encoding: .utf8)
        }
    }

    /// Splits a file into blocks: comment and blank lines, one command line, `----`, the expected
    /// lines up to a blank line or the end.
    static func blocks(_ text: String) throws -> [TraceBlock] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var blocks: [TraceBlock] = []
        var index = 0
        var leading = ""
        while index < lines.count {
            let line = lines[index]
            if line.isEmpty || line.hasPrefix("#") {
                if index < lines.count - 1 || !line.isEmpty { leading += line + "\n" }
                index += 1
                continue
            }
            guard index + 1 < lines.count, lines[index + 1] == "----" else {
                throw Malformed(description: "line \(index + 1): a command must be followed by ----")
            }
            var expected: [String] = []
            var end = index + 2
            while end < lines.count, !lines[end].isEmpty {
                expected.append(lines[end])
                end += 1
            }
            blocks.append(TraceBlock(leading: leading, command: line, expected: expected, line: index + 1))
            leading = ""
            index = end
        }
        return blocks
    }
}

/// A command's words: a verb, bare flags and `key=value` pairs (a value runs to the end of the
/// line when its key is `output`, `reason` or `blocked`).
struct TraceCommand {
    var verb: String
    var flags: Set<String> = []
    var values: [String: String] = [:]

    init(_ line: String) {
        var rest = Substring(line)
        var words: [Substring] = []
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " }
            if let equals = rest.firstIndex(of: "="), ["output", "reason", "blocked"].contains(String(rest[..<equals]))
            {
                words.append(rest)
                break
            }
            let word = rest.prefix { $0 != " " }
            if !word.isEmpty { words.append(word) }
            rest = rest.dropFirst(word.count)
        }
        verb = words.first.map(String.init) ?? ""
        for word in words.dropFirst() {
            if let equals = word.firstIndex(of: "=") {
                values[String(word[..<equals])] = String(word[word.index(after: equals)...])
            } else {
                flags.insert(String(word))
            }
        }
    }

    func string(_ key: String) throws -> String {
        guard let value = values[key] else { throw TraceFile.Malformed(description: "\(verb) needs \(key)=") }
        return value
    }

    func integer(_ key: String, default fallback: UInt64? = nil) throws -> UInt64 {
        guard let text = values[key] else {
            if let fallback { return fallback }
            throw TraceFile.Malformed(description: "\(verb) needs \(key)=")
        }
        guard let value = UInt64(text) else { throw TraceFile.Malformed(description: "\(key)=\(text) is no number") }
        return value
    }

    func duration(_ key: String) throws -> Duration? {
        guard let text = values[key] else { return nil }
        return try TraceCommand.duration(text)
    }

    static func duration(_ text: String) throws -> Duration {
        for (suffix, scale) in [("ms", 0.001), ("s", 1.0)] where text.hasSuffix(suffix) {
            if let number = Double(text.dropLast(suffix.count)) { return .milliseconds(Int64(number * scale * 1000)) }
        }
        throw TraceFile.Malformed(description: "\(text) is no duration (say 500ms or 1.5s)")
    }

    var id: RequestID { RequestID(UInt64(values["id"] ?? "0") ?? 0) }
}

/// Runs a trace as the membership shell would: it feeds the loop, and a mode record that cannot
/// be stored puts the loop back and feeds `.modesNotStored`, as `MembershipService.run()` does.
struct TraceScript {
    var settings = MembershipSettings(
        name: "a", precedence: 2, peer: "b", peerPrecedence: 1, links: ["l1", "replication"],
        heartbeatInterval: .milliseconds(500), deadTime: .seconds(2), hasWitness: true)
    var loop: NodeLoop?
    var now: Duration = .zero
    var facts = NodeController.LocalFacts(dataReady: true, peerInSync: false)
    var storeFailure: String?

    mutating func run(_ line: String) throws -> [String] {
        let command = TraceCommand(line)
        if let time = try command.duration("t") { now = time }
        switch command.verb {
        case "config":
            settings = MembershipSettings(
                name: command.values["name"] ?? "a", precedence: Int(command.values["precedence"] ?? "2") ?? 2,
                peer: command.values["peer"] ?? "b", peerPrecedence: Int(command.values["peer-precedence"] ?? "1") ?? 1,
                links: ["l1", "replication"],
                heartbeatInterval: try command.duration("heartbeat") ?? .milliseconds(500),
                deadTime: try command.duration("dead") ?? .seconds(2), hasWitness: command.flags.contains("witness"),
                failoverCooldown: try command.duration("cooldown") ?? .seconds(60),
                failbackAuto: command.flags.contains("failback"),
                failbackDelay: try command.duration("failback-delay") ?? .seconds(30))
            settings.hasFence = command.flags.contains("fence")
            return []
        case "boot":
            var record = VoterRecord()
            record.epoch = try command.integer("epoch", default: 0)
            record.holder = command.values["holder"]
            if let outdated = command.values["outdated"] { record.outdated = [outdated] }
            let modes = ModeRecord(
                mode: NodeMode(rawValue: command.values["mode"] ?? "default") ?? .default,
                peerCertifiedDown: command.flags.contains("peerdown"), failedStartup: command.values["blocked"])
            let loop = NodeLoop(
                settings: settings, record: record, standby: command.flags.contains("standby"), modes: modes, now: now)
            self.loop = loop
            return loop.start().map(TraceRender.action)
        case "facts":
            facts = .init(dataReady: command.flags.contains("ready"), peerInSync: command.flags.contains("insync"))
            return []
        case "fail-store":
            storeFailure = try command.string("reason")
            return []
        case "ticks":
            guard let from = try command.duration("from"), let to = try command.duration("to"),
                let every = try command.duration("every"), every > .zero
            else { throw TraceFile.Malformed(description: "ticks needs from=, to= and every=") }
            var lines: [String] = []
            now = from
            while now <= to {
                lines += try feed(.tick(replicationHeardAt: nil)).map { "\(TraceRender.time(now)) \($0)" }
                now += every
            }
            now = to
            return lines
        case "state":
            guard let loop else { throw TraceFile.Malformed(description: "boot first") }
            let controller = loop.controller
            return [
                "role \(controller.role.rawValue) epoch \(controller.epoch) standby \(loop.standby) "
                    + "mode \(loop.modes.mode.rawValue) lease \(controller.leaseUntil.map(TraceRender.time) ?? "none")"
            ]
        default:
            return try feed(try Self.input(command))
        }
    }

    /// Feeds one input as the shell does, with a store failure when one is armed.
    private mutating func feed(_ first: NodeLoop.Input) throws -> [String] {
        guard var loop else { throw TraceFile.Malformed(description: "boot first") }
        var lines: [String] = []
        var next: NodeLoop.Input? = first
        while let input = next {
            let before = loop
            let actions = loop.on(input, facts: facts, now: now)
            next = nil
            for action in actions {
                lines.append(TraceRender.action(action))
                if case .storeModes = action, let reason = storeFailure {
                    storeFailure = nil
                    lines.append("  (not stored: the loop is put back)")
                    loop = before
                    next = .modesNotStored(reason: reason, input: input)
                    break
                }
            }
        }
        self.loop = loop
        return lines
    }

    static func input(_ command: TraceCommand) throws -> NodeLoop.Input {
        let from = command.values["from"] ?? "b"
        switch command.verb {
        case "tick":
            return .tick(replicationHeardAt: try command.duration("heard"))
        case "hb":
            let heartbeat = Heartbeat(
                sender: from, epoch: try command.integer("epoch", default: 0),
                isPrimary: command.flags.contains("primary"),
                standby: command.flags.contains("standby"), dataReady: command.flags.contains("ready"),
                peerInSync: command.flags.contains("insync"),
                mode: NodeMode(rawValue: command.values["mode"] ?? "default") ?? .default)
            return .datagram(.heartbeat(heartbeat), link: from == "witness" ? nil : command.values["link"] ?? "l1")
        case "lease-reply":
            return .datagram(
                .leaseReply(
                    LeaseReply(
                        sender: from, epoch: try command.integer("epoch"), id: try command.integer("id"),
                        granted: command.flags.contains("granted"),
                        knownEpoch: try command.integer("known", default: 0),
                        peerOutdatedRecorded: command.flags.contains("outdated"))), link: nil)
        case "vote-request":
            return .datagram(
                .voteRequest(
                    VoteRequest(
                        sender: from, epoch: try command.integer("epoch"), id: try command.integer("id"),
                        preVote: command.flags.contains("pre"))), link: from == "witness" ? nil : "l1")
        case "vote-reply":
            return .datagram(
                .voteReply(
                    VoteReply(
                        sender: from, epoch: try command.integer("epoch"), id: try command.integer("id"),
                        granted: command.flags.contains("granted"),
                        knownEpoch: try command.integer("known", default: 0),
                        reason: command.values["reason"] ?? "", preVote: command.flags.contains("pre"))),
                link: from == "witness" ? nil : "l1")
        case "release":
            return .datagram(
                .release(
                    sender: from, epoch: try command.integer("epoch"), peerInSync: command.flags.contains("insync")),
                link: "l1")
        case "ask":
            guard let request = ModeRequest(rawValue: try command.string("request")) else {
                throw TraceFile.Malformed(description: "no such request")
            }
            return .datagram(.modeRequest(sender: from, request: request), link: "l1")
        case "standby":
            return .standby(command.flags.contains("on"), command.id)
        case "peer-standby":
            return .peerStandby(command.flags.contains("on"), command.id)
        case "force":
            return .force(command.id)
        case "fenced":
            return .fenced(command.flags.contains("ok"), command.values["output"] ?? "")
        case "mode":
            let word = command.flags.first ?? "report"
            let commands: [String: ModeCommand] = [
                "peerdown": .peerdown, "peerup": .peerup, "clear": .clear, "start": .start, "stop": .stop,
            ]
            if word == "report" { return .mode(nil, command.id) }
            if let modeCommand = commands[word] { return .mode(modeCommand, command.id) }
            guard let mode = NodeMode(rawValue: word) else { throw TraceFile.Malformed(description: "no mode \(word)") }
            return .mode(.set(mode), command.id)
        default:
            throw TraceFile.Malformed(description: "unknown command \(command.verb)")
        }
    }
}

/// Actions as trace lines.
enum TraceRender {
    static func time(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000)s" : "\(milliseconds)ms"
    }

    static func yes(_ flag: Bool, _ word: String) -> String { flag ? " \(word)" : "" }

    static func message(_ message: MembershipMessage) -> String {
        switch message {
        case .heartbeat(let h):
            return "heartbeat epoch=\(h.epoch)\(yes(h.isPrimary, "primary"))\(yes(h.standby, "standby"))"
                + "\(yes(h.dataReady, "ready"))\(yes(h.peerInSync, "insync")) mode=\(h.mode.rawValue)"
        case .leaseRequest(let r):
            return "lease-request id=\(r.id) epoch=\(r.epoch)\(yes(r.peerInSync, "insync"))"
        case .leaseReply(let r):
            return "lease-reply id=\(r.id) epoch=\(r.epoch) \(r.granted ? "granted" : "refused") known=\(r.knownEpoch)"
                + yes(r.peerOutdatedRecorded, "outdated")
        case .voteRequest(let r):
            return "vote-request id=\(r.id) epoch=\(r.epoch)\(yes(r.preVote, "pre"))"
        case .voteReply(let r):
            return "vote-reply id=\(r.id) epoch=\(r.epoch) \(r.granted ? "granted" : "refused") known=\(r.knownEpoch)"
                + yes(r.preVote, "pre") + (r.reason.isEmpty ? "" : " reason=\(r.reason)")
        case .release(_, let epoch, let peerInSync):
            return "release epoch=\(epoch)\(yes(peerInSync, "insync"))"
        case .modeRequest(_, let request):
            return "mode-request \(request.rawValue)"
        }
    }

    static func action(_ action: MembershipAction) -> String {
        switch action {
        case .send(let message, let destination):
            let to: String
            switch destination {
            case .peer: to = "peer"
            case .witness: to = "witness"
            case .node(let name): to = name
            }
            return "send \(to) \(self.message(message))"
        case .persist(let record):
            return "persist epoch=\(record.epoch) holder=\(record.holder ?? "-")"
                + (record.outdated.isEmpty ? "" : " outdated=\(record.outdated.sorted().joined(separator: ","))")
        case .promote(let epoch): return "promote epoch=\(epoch)"
        case .demote(let reason, let drain): return "demote\(yes(drain, "drain")): \(reason)"
        case .leaseUntil(let until): return "lease-until \(until.map(time) ?? "none")"
        case .completeWithoutPeer(let allowed): return "complete-without-peer \(allowed)"
        case .observeEpoch(let epoch): return "observe-epoch \(epoch)"
        case .reset(let reason): return "reset: \(reason)"
        case .event(let text): return "event: \(text)"
        case .dataOutdated(let marked): return "data-outdated \(marked)"
        case .storeModes(let record):
            return "store-modes mode=\(record.mode.rawValue)\(yes(record.peerCertifiedDown, "peerdown"))"
                + (record.failedStartup.map { " blocked=\($0)" } ?? "")
        case .runFence: return "run-fence"
        case .groups(.stopAll): return "groups stop-all"
        case .groups(.role(let role)): return "groups role \(role.rawValue)"
        case .groups(.monitoring(let on)): return "groups monitoring \(on)"
        case .answer(let id, .done): return "answer \(id) done"
        case .answer(let id, .refused(let reason)): return "answer \(id) refused: \(reason)"
        case .answer(let id, .modes(let view)):
            return "answer \(id) modes local=\(view.localMode.rawValue)/\(view.localStatus.rawValue) "
                + "remote=\(view.remoteMode?.rawValue ?? "?")/\(view.remoteStatus?.rawValue ?? "?")"
                + yes(view.peerCertifiedDown, "peerdown")
        case .forceUpToDate: return "force-up-to-date"
        case .releaseHeldWrites: return "release-held-writes"
        }
    }
}
