import Foundation
import Testing

/// Stateful fuzzing through a real client against a real replicated primary: random valid and
/// invalid requests over several connections (`scripts/nbd-model-fuzz.py`, libnbd), every reply
/// checked against a model of the export, then both copies compared. Bounded for CI; the seed
/// changes every day and is printed, and `TANDEM_NBD_FUZZ_SECONDS` / `TANDEM_NBD_FUZZ_SEED`
/// lengthen or replay a run.
@Suite struct NBDModelFuzzTests {
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/nbd-model-fuzz.py").path
    }

    @Test func randomValidAndInvalidRequests_matchTheModel_andBothCopiesAgree() throws {
        let environment = ProcessInfo.processInfo.environment
        let seconds = environment["TANDEM_NBD_FUZZ_SECONDS"] ?? "20"
        let seed = environment["TANDEM_NBD_FUZZ_SEED"] ?? "\(Int(Date().timeIntervalSince1970) / 86_400)"
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        let run = try Tools.run(
            "/usr/bin/python3", [Self.script, cluster.uri("a"), "--seconds", seconds, "--seed", seed],
            timeout: .seconds(Int64(seconds)! + 120))
        print(run.combined.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(run.status == 0, "\(run.combined)")
        #expect(run.standardOutput.contains("the export matches the model"), "\(run.combined)")
        try cluster.waitFor("identical copies after the fuzz run", seconds: 30) { try cluster.identical() }
        #expect(try cluster.stopBothAndCompare())
    }
}
