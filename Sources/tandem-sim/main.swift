import Foundation
import TandemCore
import TandemSim

// Searches seeds of the data-path simulator (the real replication engine under faults):
//   tandem-sim [--from SEED] [--count N] [--protocol a|b|c|all] [--no-secondary-power-loss]
// Runs until N seeds pass (0: no end) or one fails, whose trace it prints; exits 1 then.
//   tandem-sim --engine-cost [WRITES]
// Measures what the engine's rules cost per replicated 4 KiB write, without I/O: the primary's
// steps (written, then the peer's acknowledgement) and the secondary's (the peer's write, then
// its local write's end), 16 writes in flight, for each protocol.

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
    case "--engine-cost":
        measureEngineCost(writes: arguments.next().flatMap { Int($0) } ?? 2_000_000)
        exit(0)
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

/// Nanoseconds of the engine's own work per replicated write, primary and secondary apart.
func measureEngineCost(writes: Int) {
    let bitmap = WriteIntentBitmap(volumeBytes: 1 << 30, regionBytes: 64 << 10)
    let connected = { (role: VolumeRole) in
        ReplicationEngine.Context(role: role, epoch: 1, connection: .connected, linked: true, replicating: true)
    }
    for replicationProtocol in [Configuration.ReplicationProtocol.a, .b, .c] {
        var primary = ReplicationEngine(replicationProtocol: replicationProtocol, bitmap: bitmap)
        var secondary = ReplicationEngine(replicationProtocol: replicationProtocol, bitmap: bitmap)
        let primaryContext = connected(.primary)
        let secondaryContext = connected(.secondary)
        var completed = 0
        var sequences: [UInt64] = []
        sequences.reserveCapacity(16)
        let clock = ContinuousClock()
        var secondaryTime = Duration.zero
        let start = clock.now
        for write in 0..<writes {
            let offset = UInt64(write % 262_144) * 4096
            primary.on(.written(IORequest(UInt64(write)), offset: offset, length: 4096, flags: 0), primaryContext)
            for directive in primary.ready {
                switch directive {
                case .sendWrite(_, let sequence, _, _, _, _): sequences.append(sequence)
                case .complete: completed += 1
                default: break
                }
            }
            primary.ready.removeAll(keepingCapacity: true)
            guard sequences.count == 16 else { continue }
            // The peer takes the 16 writes in flight and answers them, in order.
            let secondaryStart = clock.now
            for sequence in sequences {
                secondary.on(.peerWrite(sequence: sequence, epoch: 1, fenceEpoch: 1, flags: 0), secondaryContext)
                secondary.on(.peerWriteApplied(sequence: sequence, flags: 0, failed: nil), secondaryContext)
                secondary.ready.removeAll(keepingCapacity: true)
            }
            secondaryTime += secondaryStart.duration(to: clock.now)
            for sequence in sequences {
                if replicationProtocol == .b { primary.on(.ack(sequence: sequence, .received), primaryContext) }
                primary.on(.ack(sequence: sequence, .written), primaryContext)
                for directive in primary.ready { if case .complete = directive { completed += 1 } }
                primary.ready.removeAll(keepingCapacity: true)
            }
            sequences.removeAll(keepingCapacity: true)
        }
        let total = start.duration(to: clock.now)
        func nanoseconds(_ duration: Duration) -> Double {
            Double(duration.components.seconds) * 1e9 + Double(duration.components.attoseconds) / 1e9
        }
        let perWrite = nanoseconds(total - secondaryTime) / Double(writes)
        let perPeerWrite = nanoseconds(secondaryTime) / Double(writes)
        print(
            "protocol \(replicationProtocol.rawValue): \(String(format: "%.0f", perWrite)) ns per write on the primary, "
                + "\(String(format: "%.0f", perPeerWrite)) ns on the secondary (\(completed) of \(writes) completed)")
    }
}
