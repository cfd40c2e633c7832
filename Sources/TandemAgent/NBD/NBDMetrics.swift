import Synchronization

/// What the NBD server counts for `/metrics`: connections open now, and requests and bytes by
/// operation since the agent started. Relaxed atomics: one increment per request on the data path.
public final class NBDMetrics: Sendable {
    public enum Operation: String, Sendable, CaseIterable {
        case read, write
        case writeZeroes = "write_zeroes"
        case trim, flush

        /// Its tally's place, without searching `allCases` on the data path.
        var index: Int {
            switch self {
            case .read: 0
            case .write: 1
            case .writeZeroes: 2
            case .trim: 3
            case .flush: 4
            }
        }
    }

    private final class Tally: Sendable {
        let requests = Atomic<UInt64>(0)
        let bytes = Atomic<UInt64>(0)
    }

    public let connections = Atomic<Int>(0)
    private let tallies = Operation.allCases.map { _ in Tally() }

    public init() {}

    func count(_ operation: Operation, bytes length: UInt64) {
        let tally = tallies[operation.index]
        tally.requests.add(1, ordering: .relaxed)
        tally.bytes.add(length, ordering: .relaxed)
    }

    /// Requests and bytes of `operation` so far.
    public func totals(_ operation: Operation) -> (requests: UInt64, bytes: UInt64) {
        let tally = tallies[operation.index]
        return (tally.requests.load(ordering: .relaxed), tally.bytes.load(ordering: .relaxed))
    }
}
