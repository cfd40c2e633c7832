import Foundation
import Testing

/// What the shells around the pure deciders may not do, checked in their source: read a clock of
/// their own, drop the failure of a durable write, or grow a decision loop again.
@Suite struct ShellDisciplineTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The replication and membership shells.
    static let shells = [
        "Sources/TandemReplication/ReplicatedVolume.swift",
        "Sources/TandemReplication/ReplicatedVolume+Peer.swift",
        "Sources/TandemReplication/ReplicatedVolume+Verify.swift",
        "Sources/TandemAgent/Membership/MembershipService.swift",
        "Sources/TandemAgent/Membership/MembershipService+Modes.swift",
    ]

    static func lines(_ file: String) throws -> [(number: Int, text: String)] {
        let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
        return text.split(separator: "\n", omittingEmptySubsequences: false).enumerated().map { ($0 + 1, String($1)) }
            .filter { !$0.1.trimmingCharacters(in: .whitespaces).hasPrefix("//") }
    }

    @Test func theShellsReadTimeOnlyThroughTheirInjectedClock() throws {
        let clockReadings = try Regex(#"ContinuousClock\.now|SuspendingClock|NIODeadline\.now|\bDate\(\)|[^\w]\.now\b"#)
        for file in Self.shells {
            for (number, text) in try Self.lines(file) where text.contains(clockReadings) {
                Issue.record("\(file):\(number) reads a clock of its own: \(text)")
            }
        }
    }

    @Test func noDurableWriteHasItsFailureDropped() throws {
        let dropped = try Regex(
            #"(try\?|_ =)[^\n]*(persist|storeMetadata|storeModes|AtomicFile\.replace|MetadataFile\.store|setRole|\.flush\(|\.store\()"#
        )
        let files =
            Self.shells + [
                "Sources/TandemAgent/Membership/WitnessService.swift",
                "Sources/TandemAgent/Resources/ResourceService.swift",
            ]
        for file in files {
            for (number, text) in try Self.lines(file) where text.contains(dropped) {
                Issue.record("\(file):\(number) drops the failure of a durable write: \(text)")
            }
        }
    }

    @Test func theMembershipLoopStaysShort() throws {
        let lines = try Self.lines("Sources/TandemAgent/Membership/MembershipService.swift").map(\.text)
        let start = try #require(lines.firstIndex { $0.contains("public func run() async throws {") })
        var depth = 0
        var end = start
        for index in start..<lines.count {
            depth += lines[index].filter { $0 == "{" }.count - lines[index].filter { $0 == "}" }.count
            if depth == 0 {
                end = index
                break
            }
        }
        #expect(end > start)
        #expect(end - start + 1 <= 80, "MembershipService.run() is \(end - start + 1) lines; at most 80")
    }
}
