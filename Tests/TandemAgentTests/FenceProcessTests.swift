import Foundation
import TandemAPI
import TandemTestSupport
import Testing

/// Without a witness, a fence command stands in for it: a silent primary is powered off (here:
/// its agent killed) and only then replaced.
@Suite("Fence command instead of a witness", .serialized)
struct FenceProcessTests {
    func cluster(fenceExit: Int, _ directory: TemporaryDirectory) throws -> TwoNodeCluster {
        let script = "\(directory.path)/fence"
        try """
        #!/bin/sh
        # Arguments: NODE ADDRESS. Exit 0 only when the node is certainly off.
        echo "$@" >> \(directory.path)/fenced
        [ \(fenceExit) -eq 0 ] && kill -9 "$(cat \(directory.path)/$1.pid)"
        echo "fenced $1 (exit \(fenceExit))"
        exit \(fenceExit)
        """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "64MiB", clusterExtra: "fence-command = \"\(script)\"")
        try cluster.start("a")
        try cluster.start("b")
        for node in ["a", "b"] {
            try "\(cluster.pid(node)!)".write(
                toFile: "\(directory.path)/\(node).pid", atomically: true, encoding: .utf8)
        }
        try cluster.waitFor("a primary") { cluster.primary() == "a" }
        try cluster.waitInSync()
        // The fence command stands in for the witness: automatic failover is on, and no voter
        // records b outdated.
        let view = try cluster.cluster("b")
        #expect(view.automaticFailover == "on", "\(view)")
        #expect(view.recordedOutdated.isEmpty, "\(view)")
        return cluster
    }

    @Test("a frozen primary is fenced, then the peer takes over without losing a write")
    func frozenPrimary_isFencedThenReplaced() throws {
        let directory = TemporaryDirectory()
        let cluster = try cluster(fenceExit: 0, directory)
        let writer = NumberedWriter(cluster: cluster, blocks: 65536, start: "a")
        let thread = Thread { writer.run() }
        thread.start()
        try cluster.waitFor("writes on a") { writer.count >= 50 }
        let frozenAt = Date()
        cluster.signal("a", SIGSTOP)
        try cluster.waitFor("writes on b after the fence", seconds: 30) {
            writer.lock.withLock { writer.acknowledged.contains { $0.node == "b" && $0.at > frozenAt } }
        }
        writer.stop()
        while !thread.isFinished { usleep(10_000) }
        #expect(!cluster.isRunning("a"), "the fence command should have ended a")
        #expect(try String(contentsOfFile: "\(directory.path)/fenced", encoding: .utf8) == "a 127.0.0.1\n")
        #expect(try writer.lostBlocks(readingFrom: "b").isEmpty)
        let events = try Tools.check(
            try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", "b"]
        ).standardOutput
        #expect(events.contains("fence command powered a off: exit 0: fenced a (exit 0)"), "\(events)")
        cluster.stop("b")
    }

    @Test("a fence command that fails moves nothing, and says so")
    func failedFence_movesNothing() throws {
        let directory = TemporaryDirectory()
        let cluster = try cluster(fenceExit: 1, directory)
        cluster.signal("a", SIGSTOP)
        try cluster.waitFor("the fence command ran twice", seconds: 30) {
            ((try? String(contentsOfFile: "\(directory.path)/fenced", encoding: .utf8)) ?? "")
                .split(separator: "\n").count >= 2
        }
        #expect(cluster.view("b")?.role == .secondary)
        let events = try Tools.check(
            try Tools.tandemBinary(), ["events", "--config", cluster.config, "--node", "b"]
        ).standardOutput
        #expect(events.contains("fence command failed, nothing moves: exit 1: fenced a (exit 1)"), "\(events)")
        cluster.signal("a", SIGCONT)
        cluster.stop("a")
        cluster.stop("b")
    }
}
