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
///     pair local=SIDE peer=SIDE [resyncing] [discard-local] [local-preferred] [policy=POLICY]
///                                        the whole connect decision (`PeerPairing`), where a
///                                        SIDE is GENERATIONS[/primary][/outdated|/inconsistent]
///                                        [/marked=BYTES][/epoch=N][/size=BYTES][/protocol=P][/name=N]
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
        #expect(Self.files.contains("pairing.txt"))
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

    static func side(_ text: String) throws -> PeerPairing.Side {
        let parts = text.split(separator: "/").map(String.init)
        var side = PeerPairing.Side(
            name: "data", sizeBytes: 1 << 30, replicationProtocol: "C", generations: try generations(parts.first ?? ""),
            role: .secondary, disk: .upToDate, markedBytes: 0, epoch: 0)
        for part in parts.dropFirst() {
            let pair = part.split(separator: "=", maxSplits: 1).map(String.init)
            switch (pair[0], pair.count == 2 ? pair[1] : nil) {
            case ("primary", nil): side.role = .primary
            case ("outdated", nil): side.disk = .outdated
            case ("inconsistent", nil): side.disk = .inconsistent
            case ("marked", let value?): side.markedBytes = try number(value)
            case ("epoch", let value?): side.epoch = try number(value)
            case ("size", let value?): side.sizeBytes = try number(value)
            case ("protocol", let value?): side.replicationProtocol = value
            case ("name", let value?): side.name = value
            default: throw TraceFile.Malformed(description: "\(part) in \(text) is no side's fact")
            }
        }
        return side
    }

    static func number(_ text: String) throws -> UInt64 {
        guard let value = UInt64(text) else { throw TraceFile.Malformed(description: "\(text) is no number") }
        return value
    }

    static func describe(_ outcome: PeerPairing.Outcome) -> [String] {
        switch outcome {
        case .refuse(let differences): return ["not replicating:"] + differences
        case .keepResyncing: return ["a resync runs: nothing changes"]
        case .connect(let awaitingSource, let clearsOutdated):
            return [
                awaitingSource ? "connected, awaiting the initial source" : "connected in sync",
                clearsOutdated ? "this copy is no longer outdated" : nil,
            ].compactMap { $0 }
        case .resyncSource(let full): return ["resync as source\(full ? " (full)" : "")"]
        case .resyncTarget: return ["resync as target: this copy is inconsistent until it ends"]
        case .splitBrain(let found):
            let resolution: String
            switch found.resolution {
            case .leftForAdministrator: resolution = "left for an administrator"
            case .discardLocal: resolution = "this copy's changes are discarded: resync as target"
            case .discardPeer(let full):
                resolution = "the peer's changes are discarded: resync as source\(full ? " (full)" : "")"
            }
            return [
                "split brain: this copy changed \(found.localChangedBytes) bytes, the peer \(found.peerChangedBytes)"
                    + (found.resolvable ? "" : " (bitmaps do not cover it)"),
                resolution,
            ]
        case .unrelated: return ["unrelated copies: not replicating"]
        }
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
        case "pair":
            let local = try side(try command.string("local"))
            let peer = try side(try command.string("peer"))
            guard let policy = SplitBrainPolicy(rawValue: command.values["policy"] ?? "disconnect") else {
                throw TraceFile.Malformed(description: "no such policy")
            }
            let circumstances = PeerPairing.Circumstances(
                resyncing: command.flags.contains("resyncing"),
                preferredInTies: command.flags.contains("local-preferred"),
                discardLocal: command.flags.contains("discard-local"), policy: policy)
            return describe(PeerPairing.decide(local: local, peer: peer, circumstances: circumstances))
        case "resynced":
            return ["\(try generations(command.flags.first ?? "").afterResyncAsSource())"]
        default:
            throw TraceFile.Malformed(description: "unknown command \(command.verb)")
        }
    }
}
