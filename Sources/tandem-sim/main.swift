import Foundation
import TandemCore
import TandemSim

// Searches seeds of the data-path simulator (the real replication engine under faults):
//   tandem-sim [--from SEED] [--count N] [--protocol a|b|c|all] [--no-secondary-power-loss]
// Runs until N seeds pass (0: no end) or one fails, whose trace it prints; exits 1 then.

var from: UInt64 = 1
var count: UInt64 = 100_000
var protocols: [Configuration.ReplicationProtocol] = [.a, .b, .c]
var secondaryPowerLoss = true
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
    switch argument {
    case "--from": from = arguments.next().flatMap { UInt64($0) } ?? from
    case "--count": count = arguments.next().flatMap { UInt64($0) } ?? count
    case "--protocol":
        let name = arguments.next() ?? "all"
        protocols =
            name == "all"
            ? [.a, .b, .c] : [Configuration.ReplicationProtocol(rawValue: name.uppercased())].compactMap { $0 }
    case "--no-secondary-power-loss": secondaryPowerLoss = false
    default:
        FileHandle.standardError.write(Data("unknown argument \(argument)\n".utf8))
        exit(2)
    }
}

let started = Date()
var seed = from
var runs: UInt64 = 0
var faults = 0
var writes = 0
while count == 0 || runs < count {
    var options = DataPathSimulation.Options()
    options.replicationProtocol = protocols[Int(seed % UInt64(protocols.count))]
    options.secondaryPowerLoss = secondaryPowerLoss
    var simulation = DataPathSimulation(seed: seed, options: options)
    let report = simulation.run()
    faults += report.faults
    writes += report.completedWrites
    runs += 1
    if !report.violations.isEmpty {
        print(
            "seed \(seed) (protocol \(options.replicationProtocol.rawValue)): \(report.violations.joined(separator: "; "))"
        )
        print(report.trace.joined(separator: "\n"))
        exit(1)
    }
    if runs % 10_000 == 0 { print("\(runs) seeds, \(faults) faults, \(writes) completed writes") }
    seed &+= 1
}
let seconds = Date().timeIntervalSince(started)
print(
    "\(runs) seeds from \(from) passed in \(String(format: "%.1f", seconds)) s: \(faults) faults, "
        + "\(writes) completed writes")
