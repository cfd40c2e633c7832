import Synchronization

/// Time as the shells read it. Injected, so that a test (or a simulator) moves it by hand;
/// `system` reads the machine's monotonic clock. The shells read time nowhere else.
public struct ShellClock: Sendable {
    public let now: @Sendable () -> ContinuousClock.Instant

    public init(now: @escaping @Sendable () -> ContinuousClock.Instant) { self.now = now }

    /// The machine's monotonic clock.
    public static let system = ShellClock { ContinuousClock.now }

    /// Where every node-local `Duration` timestamp (leases, heartbeats) counts from.
    public static let origin = ContinuousClock.now

    /// The time since `origin`: what the pure deciders take as `now`.
    public func sinceOrigin() -> Duration { Self.origin.duration(to: now()) }

    /// A clock that stands still until advanced.
    public static func manual(_ hand: ManualClockHand) -> ShellClock { ShellClock { hand.instant } }
}

/// The hand of a manual clock: tests advance it.
public final class ManualClockHand: Sendable {
    private let current: Mutex<ContinuousClock.Instant>

    public init(at start: ContinuousClock.Instant = ShellClock.origin) { current = Mutex(start) }

    public var instant: ContinuousClock.Instant { current.withLock { $0 } }

    public func advance(by duration: Duration) { current.withLock { $0 += duration } }
}
