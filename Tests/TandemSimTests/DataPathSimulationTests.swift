import TandemCore
import Testing

@testable import TandemSim

@Suite("The replication engine under simulated faults")
struct DataPathSimulationTests {
    static func run(
        _ seeds: ClosedRange<UInt64>, _ configure: (inout DataPathSimulation.Options, UInt64) -> Void
    ) -> (failures: [DataPathSimulation.Report], faults: Int, writes: Int) {
        var failures: [DataPathSimulation.Report] = []
        var faults = 0
        var writes = 0
        for seed in seeds {
            var options = DataPathSimulation.Options()
            configure(&options, seed)
            var simulation = DataPathSimulation(seed: seed, options: options)
            let report = simulation.run()
            faults += report.faults
            writes += report.completedWrites
            if !report.violations.isEmpty { failures.append(report) }
        }
        return (failures, faults, writes)
    }

    static let protocols: [Configuration.ReplicationProtocol] = [.a, .b, .c]

    @Test("1,200 seeds over protocols A, B and C keep every invariant")
    func seeds() {
        let (failures, faults, writes) = Self.run(1...1200) { options, seed in
            options.replicationProtocol = Self.protocols[Int(seed % 3)]
        }
        print("data path: 1200 seeds, \(faults) faults, \(writes) completed writes")
        let first = failures.first.map {
            "seed \($0.seed): \($0.violations.joined(separator: "; ")) — replay with "
                + "`swift run tandem-sim --from \($0.seed) --count 1`\n" + $0.trace.joined(separator: "\n")
        }
        #expect(failures.isEmpty, "\(failures.count) failing seeds; first: \(first ?? "")")
        // The scenarios must exercise the engine, not sit still.
        #expect(faults > 1200 * 5)
        #expect(writes > 1200 * 100)
    }

    /// Engines broken on purpose: the checker must catch each within the CI seed budget.
    @Test(
        "the checker catches a broken engine",
        arguments: [
            ("completesBeforePeerWrote", "completed under protocol C while B lacks it"),
            ("forgetsInFlightOnDisconnect", "nothing marks it"),
            ("clearsBitWhenSent", "nothing marks it"),
        ])
    func checkerCatches(_ defect: String, _ violation: String) {
        let defects: ReplicationEngine.Defects =
            switch defect {
            case "completesBeforePeerWrote": .completesBeforePeerWrote
            case "forgetsInFlightOnDisconnect": .forgetsInFlightOnDisconnect
            default: .clearsBitWhenSent
            }
        let (failures, _, _) = Self.run(1...100) { options, _ in
            options.replicationProtocol = .c
            options.defects = defects
        }
        let caught = failures.filter { $0.violations.contains { $0.contains(violation) } }
        #expect(!caught.isEmpty, "the checker never caught an engine that \(defect)")
    }

    @Test("the same seed gives the same run")
    func deterministic() {
        var first = DataPathSimulation(seed: 7)
        var second = DataPathSimulation(seed: 7)
        #expect(first.run().trace == second.run().trace)
    }
}
