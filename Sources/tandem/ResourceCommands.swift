import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import TandemAPI
import TandemAgent
import TandemCore

struct ResourceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resource", abstract: "Resources of the node's groups: status, cleanup, refresh.",
        subcommands: [ResourceStatus.self, Cleanup.self, Refresh.self])

    struct ResourceStatus: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "Every resource: group, type, where it runs, state, fail count.")
        @OptionGroup var options: NodeOptions
        func run() async throws { try options.runForResources(.GET, APIPath.status) }
    }

    struct Cleanup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forget the failures of a resource (all when none is named) and start what may run again.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The resource.") var name: String?
        func run() async throws {
            try options.runForResources(.POST, APIPath.resourceCleanup, CleanupRequest(resource: name))
        }
    }

    struct Refresh: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Probe every resource with its monitor and correct the recorded state.")
        @OptionGroup var options: NodeOptions
        func run() async throws { try options.runForResources(.POST, APIPath.resourceRefresh) }
    }
}

extension NodeOptions {
    /// Calls `method path` and prints the node's resources.
    func runForResources(_ method: HTTPMethod, _ path: String, _ body: (some Encodable)? = nil as String?) throws {
        try call(method, path, body, as: StatusReply.self) { reply in
            if reply.resources.isEmpty { print("node \(reply.node): no resources") }
            let rows =
                [["RESOURCE", "GROUP", "TYPE", "RUN-ON", "STATE", "FAILS", "LAST FAILURE"]]
                + reply.resources.map { resource in
                    [
                        resource.name, resource.group, resource.type, resource.runOn.rawValue, resource.state.rawValue,
                        String(resource.failCount), resource.lastFailure ?? "-",
                    ]
                }
            let widths = (0..<6).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                let padded = row.enumerated().map { index, cell in
                    index < 6 ? cell.padding(toLength: widths[index], withPad: " ", startingAt: 0) : cell
                }
                print(padded.joined(separator: "  "))
            }
        }
    }
}

struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "The node's event journal: decisions, failovers, mode changes, resource failures, resets.")

    @OptionGroup var options: NodeOptions
    @Flag(help: "Keep printing events as they are appended.") var follow = false
    @Option(help: "Print only the last N events first.") var last: Int?

    func run() async throws {
        if options.remote != nil { return try await runRemote() }
        let (name, directory) = try options.stateDirectory()
        let path = "\(directory)/\(name).events"
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw fail("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        var pending = Data()
        var lines: [String] = []
        func take(_ data: Data) -> [String] {
            pending.append(data)
            var complete: [String] = []
            while let newline = pending.firstIndex(of: 0x0A) {
                complete.append(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                pending = Data(pending[(newline + 1)...])
            }
            return complete
        }
        lines = take(handle.readDataToEndOfFile())
        if let last { lines = Array(lines.suffix(max(0, last))) }
        for line in lines { emit(line) }
        while follow {
            try await Task.sleep(for: .milliseconds(200))
            for line in take(handle.readDataToEndOfFile()) { emit(line) }
        }
    }

    /// Reads the node's live event stream (`GET /v1/events/stream`) over `--server`: what the node
    /// holds, then, with `--follow`, every new event, reconnecting after the last one seen.
    func runRemote() async throws {
        let client = try options.client()
        let command = self
        // Following, each event is printed as it arrives; else the last ones once the node sent all.
        let parser = EventStreamParser(keep: !follow) { line in if command.follow { command.emit(line) } }
        repeat {
            let reply: APIClient.Reply
            do {
                reply = try await client.stream(
                    APIPath.eventStream + (follow ? "" : "?follow=false"),
                    headers: [("Last-Event-ID", String(parser.lastID))]
                ) { chunk in parser.feed(chunk) }
            } catch let error as APIClient.Unreachable {
                guard follow else { throw fail(error.description) }
                FileHandleOutput.standardError("events: \(error); reconnecting")
                try await Task.sleep(for: .seconds(1))
                continue
            }
            if !(200..<300).contains(Int(reply.status.code)) {
                let refusal = (try? APICoding.decoder().decode(APIError.self, from: Data(reply.body)))
                throw fail("refused: \(refusal.map { "\($0)" } ?? "\(reply.status)")")
            }
            if !follow {
                let lines = parser.take()
                for line in last.map({ Array(lines.suffix(max(0, $0))) }) ?? lines { emit(line) }
            } else {
                try await Task.sleep(for: .milliseconds(200))
            }
        } while follow
    }

    /// Prints one journal line; a damaged line is shown as it is, marked.
    func emit(_ line: String) {
        if options.json {
            print(line)
            return
        }
        guard let entry = try? APICoding.decoder().decode(JournalEntry.self, from: Data(line.utf8)) else {
            print("(damaged line) \(line)")
            return
        }
        let kind = entry.kind.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)
        print("\(entry.time)  \(entry.node)  \(kind) \(entry.message)")
        fflush(nil)
    }
}

/// Splits a Server-Sent Events stream into its events' data lines, remembering the last id.
final class EventStreamParser: @unchecked Sendable {
    private let lock = NSLock()
    private var pending = ""
    private var lines: [String] = []
    private var last: UInt64 = 0
    private let keep: Bool
    private let onEvent: @Sendable (String) -> Void

    /// `keep`: hold the lines for `take()` as well.
    init(keep: Bool, onEvent: @escaping @Sendable (String) -> Void) {
        self.keep = keep
        self.onEvent = onEvent
    }

    /// The id of the last event seen, for `Last-Event-ID` (0: none).
    var lastID: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return last
    }

    func feed(_ chunk: ByteBuffer) {
        var complete: [String] = []
        lock.lock()
        pending += String(buffer: chunk)
        while let end = pending.range(of: "\n\n") {
            let block = pending[..<end.lowerBound]
            pending = String(pending[end.upperBound...])
            var id: UInt64?
            var data: String?
            for line in block.split(separator: "\n") {
                if line.hasPrefix("id: ") { id = UInt64(line.dropFirst(4)) }
                if line.hasPrefix("data: ") { data = String(line.dropFirst(6)) }
            }
            if let id, let data, id > last {
                last = id
                if keep { lines.append(data) }
                complete.append(data)
            }
        }
        lock.unlock()
        for line in complete { onEvent(line) }
    }

    /// The data lines parsed so far, each once.
    func take() -> [String] {
        lock.lock()
        defer { lock.unlock() }
        defer { lines.removeAll() }
        return lines
    }
}
