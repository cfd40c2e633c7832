import Synchronization

/// Whether a reply to a client may leave this node now: the node's membership side sets the
/// lease's end, the data path asks before every reply. Membership owns time; the data path only
/// reads this gate, from any thread, with one atomic load and one reading of the clock.
///
/// A node without a lease (a lone node, or one the membership has not limited yet) answers
/// always; once `end(at:)` names an instant, nothing is acknowledged at or after it.
public final class LeaseGate: Sendable {
    /// The lease's end in nanoseconds after `ShellClock.origin`; `Int64.max`: none.
    private let deadline = Atomic<Int64>(Int64.max)
    /// The time since `ShellClock.origin`, on the same clock as the instants `end(at:)` takes.
    private let now: @Sendable () -> Duration

    public init(now: @escaping @Sendable () -> Duration = { ShellClock.system.sinceOrigin() }) {
        self.now = now
    }

    /// From `end` (time since `ShellClock.origin`) on, nothing is acknowledged; `nil` lifts the end.
    public func end(at end: Duration?) {
        deadline.store(end.map(Self.nanoseconds) ?? Int64.max, ordering: .releasing)
    }

    /// Whether a reply may leave now.
    public var holds: Bool {
        let deadline = deadline.load(ordering: .acquiring)
        return deadline == Int64.max || Self.nanoseconds(now()) < deadline
    }

    /// Whole nanoseconds of `duration`.
    public static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }
}
