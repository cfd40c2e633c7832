import Foundation
import TandemCore
import TandemSim
import Testing

@Suite("Simulated cluster under faults")
struct SimulationTests {
    /// `TANDEM_SIM_SEED=N swift test --filter TandemSimTests` replays one seed and prints its trace.
    static let replaySeed = ProcessInfo.processInfo.environment["TANDEM_SIM_SEED"].flatMap { UInt64($0) }

    @Test("1,000 seeded scenarios keep every invariant")
    func thousandSeeds() {
        let seeds: [UInt64] = Self.replaySeed.map { [$0] } ?? Array(1...1000)
        var failures: [String] = []
        var promotions = 0
        var writes = 0
        var faults = 0
        for seed in seeds {
            let report = Self.onBigStack {
                var simulation = Simulation(seed: seed)
                return simulation.run()
            }
            promotions += report.promotions
            writes += report.acknowledgedWrites
            faults += report.faults
            if !report.violations.isEmpty || Self.replaySeed != nil {
                let text =
                    "seed \(seed): \(report.violations.joined(separator: "; ")) — replay with "
                    + "TANDEM_SIM_SEED=\(seed) swift test --filter TandemSimTests\n"
                    + report.trace.joined(separator: "\n")
                if report.violations.isEmpty { print(text) } else { failures.append(text) }
            }
        }
        print(
            "simulated \(seeds.count) scenarios: \(faults) faults, \(promotions) promotions, \(writes) acknowledged writes"
        )
        #expect(failures.isEmpty, "\(failures.count) failing seeds; first: \(failures.first ?? "")")
        if Self.replaySeed == nil {
            // The scenarios must exercise failover, not only sit still.
            #expect(promotions > seeds.count)
            #expect(writes > seeds.count * 100)
        }
    }

    /// Runs `work` on a thread of its own with a 64 MiB stack: the optimised simulator keeps large
    /// values on the stack, and the test pool's threads have small ones.
    static func onBigStack<T>(_ work: @escaping () -> T) -> T {
        nonisolated(unsafe) var result: T?
        nonisolated(unsafe) let body = work
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            result = body()
            done.signal()
        }
        thread.stackSize = 64 << 20
        thread.start()
        done.wait()
        return result!
    }

    /// Shells broken on purpose, to show that the checker notices what each breaks.
    enum BrokenShell: String, CaseIterable, Sendable {
        case keepsServingAfterItsLeaseEnded, acknowledgesWritesThePeerRefused
    }

    @Test("the checker catches a broken shell", arguments: BrokenShell.allCases)
    func checkerCatches(_ shell: BrokenShell) {
        var options = Simulation.Options()
        let seeds: ClosedRange<UInt64>
        let violation: String
        switch shell {
        case .keepsServingAfterItsLeaseEnded:
            options.shellIgnoresDemotion = true
            (seeds, violation) = (1...50, "two nodes can complete writes")
        case .acknowledgesWritesThePeerRefused:
            options.shellAcknowledgesRefusedWrites = true
            (seeds, violation) = (1...200, "voter records hold")
        }
        let caught = seeds.filter { seed in
            var simulation = Simulation(seed: seed, options: options)
            return simulation.run().violations.contains { $0.contains(violation) }
        }
        #expect(!caught.isEmpty, "the checker never caught a shell that \(shell.rawValue)")
    }

    @Test("the same seed gives the same run")
    func deterministic() {
        var first = Simulation(seed: 42)
        var second = Simulation(seed: 42)
        let one = first.run()
        let two = second.run()
        #expect(one.trace == two.trace)
        #expect(one.acknowledgedWrites == two.acknowledgedWrites)
    }
}
