import Foundation
import Testing

@testable import TandemCore

/// Trace tests of the resync rules (`testdata/resync/*.txt`), in the format of the node loop's:
/// a command, `----`, the output. Every decision is also taken from the peer's side, with the
/// arguments swapped; the two must mirror each other, and the trace says so.
///
///     decide local=GENERATIONS peer=GENERATIONS [local-inconsistent] [peer-inconsistent]
///            [local-dirty] [peer-dirty] [local-primary] [peer-primary] [local-preferred]
///     victim policy=POLICY local=BYTES/EPOCH[/primary] peer=BYTES/EPOCH[/primary]
///     apart GENERATIONS new=HEX          the copy changes without its peer
///     resynced GENERATIONS               this copy was a completed resync's source
///
/// Generations are written as status shows them: `current:bitmap:history0:history1` in hex.
@Suite struct SyncDecisionTraceTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("testdata/resync")

    static var files: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".txt") }
            .sorted()
    }

    @Test func theTraceFilesAreThere() {
        #expect(Self.files.contains("connect.txt"))
        #expect(Self.files.contains("split-brain.txt"))
    }

    @Test(arguments: files)
    func trace(_ file: String) throws {
        try TraceFile.check(Self.directory.appendingPathComponent(file).path) { try Self.run(TraceCommand($0)) }
    }

    static func generations(_ text: String) throws -> DataGenerations {
        let parts = try text.split(separator: ":").map { part -> UInt64 in
            guard let value = UInt64(part, radix: 16) else {
                throw TraceFile.Malformed(description: "\(text) is no generations (say B2:A1:0:0)")
            }
            return value
        }
        guard (1...4).contains(parts.count) else { throw TraceFile.Malformed(description: "\(text): 1 to 4 parts") }
        let padded = parts + Array(repeating: 0, count: 4 - parts.count)
        return DataGenerations(current: padded[0], bitmap: padded[1], history: padded[2...].filter { $0 != 0 })
    }

    static func describe(_ decision: SyncDecision) -> String {
        func side(_ side: PeerSide) -> String { side == .local ? "this copy" : "the peer's copy" }
        switch decision {
        case .noSync: return "no sync: the copies hold the same data"
        case .partialResync(let source): return "partial resync from \(side(source))"
        case .fullResync(let source): return "full resync from \(side(source))"
        case .splitBrain(let cover): return "split brain (bitmaps \(cover ? "cover" : "do not cover") the divergence)"
        case .unrelated: return "unrelated copies"
        case .awaitingInitialSource: return "awaiting the initial source"
        }
    }

    static func mirrored(_ decision: SyncDecision) -> SyncDecision {
        switch decision {
        case .partialResync(let source): return .partialResync(source: source.other)
        case .fullResync(let source): return .fullResync(source: source.other)
        default: return decision
        }
    }

    static func divergence(_ text: String) throws -> SplitBrainPolicy.Divergence {
        let parts = text.split(separator: "/").map(String.init)
        guard parts.count >= 2, let bytes = UInt64(parts[0]), let epoch = UInt64(parts[1]) else {
            throw TraceFile.Malformed(description: "\(text) is no divergence (say 4096/3 or 4096/3/primary)")
        }
        return .init(changedBytes: bytes, promotedEpoch: epoch, isPrimary: parts.count > 2 && parts[2] == "primary")
    }

    static func run(_ command: TraceCommand) throws -> [String] {
        switch command.verb {
        case "decide":
            let local = try generations(try command.string("local"))
            let peer = try generations(try command.string("peer"))
            let flags = command.flags
            let marks = Marks(
                localDirty: flags.contains("local-dirty"), peerDirty: flags.contains("peer-dirty"),
                localPrimary: flags.contains("local-primary"), peerPrimary: flags.contains("peer-primary"),
                localPreferred: flags.contains("local-preferred"))
            let here = SyncDecision.decide(
                local: local, peer: peer, localInconsistent: flags.contains("local-inconsistent"),
                peerInconsistent: flags.contains("peer-inconsistent"), marks: marks)
            let there = SyncDecision.decide(
                local: peer, peer: local, localInconsistent: flags.contains("peer-inconsistent"),
                peerInconsistent: flags.contains("local-inconsistent"), marks: marks.mirrored)
            return [
                "here: \(describe(here))", "peer: \(describe(there))",
                mirrored(here) == there ? "mirrored" : "NOT MIRRORED: the two sides disagree",
            ]
        case "victim":
            guard let policy = SplitBrainPolicy(rawValue: try command.string("policy")) else {
                throw TraceFile.Malformed(description: "no such policy")
            }
            let local = try divergence(try command.string("local"))
            let peer = try divergence(try command.string("peer"))
            let here = policy.victim(local: local, peer: peer)
            let there = policy.victim(local: peer, peer: local)
            let said = here.map { $0 == .local ? "discards this copy's changes" : "discards the peer's changes" }
            return [
                said ?? "stays disconnected: an administrator decides",
                here?.other == there ? "mirrored" : "NOT MIRRORED: the two sides disagree",
            ]
        case "apart":
            let generations = try generations(command.flags.first ?? "")
            guard let fresh = UInt64(try command.string("new"), radix: 16) else {
                throw TraceFile.Malformed(description: "new= is hex")
            }
            return ["\(generations.startingIndependentChanges(newCurrent: fresh))"]
        case "resynced":
            return ["\(try generations(command.flags.first ?? "").afterResyncAsSource())"]
        default:
            throw TraceFile.Malformed(description: "unknown command \(command.verb)")
        }
    }
}
