/// How fast a resync may send, and when it must wait. Pure: every decision takes `now` (a
/// `Duration` on the shell's clock), so tests and the simulator drive it without sleeping.
///
/// Three rules: a token bucket at the configured rate (at most a tenth of a second of budget
/// accumulates, so a pause never turns into a burst); the lower `resync-min-rate` while clients
/// wrote within `clientActivityWindow`, so the resync gives way to them; and after the peer refused
/// a block, a back-off from one second doubling to a minute, so the same blocks do not go round
/// and round while its disk fails.
public struct ResyncPacer: Sendable, Equatable {
    /// `resync-rate` (`nil`: none) and `resync-min-rate` (`nil`: clients get no precedence).
    public var rate: UInt64?
    public var minimumRate: UInt64?
    private var tokens: Double = 0
    private var refilledAt: Duration
    /// After a refusal: no block leaves before this.
    public private(set) var pausedUntil: Duration?
    /// The current back-off; zero when the peer writes its blocks.
    public private(set) var pause: Duration = .zero

    /// How long after the last client write the resync still keeps to `minimumRate`.
    public static let clientActivityWindow = Duration.milliseconds(500)

    public init(rate: UInt64?, minimumRate: UInt64?, now: Duration) {
        self.rate = rate
        self.minimumRate = minimumRate
        refilledAt = now
    }

    /// The rate limit at `now`: `minimumRate` while clients write (and for the window after),
    /// `rate` (or none) otherwise.
    public func limit(lastClientWrite: Duration?, now: Duration) -> UInt64? {
        guard let minimumRate, let last = lastClientWrite, now - last < Self.clientActivityWindow else { return rate }
        return min(minimumRate, rate ?? .max)
    }

    /// What `take` allows.
    public enum Grant: Sendable, Equatable {
        case send
        /// Not now. `wake`: when to try again (`nil`: an acknowledgement in flight will).
        case wait(wake: Duration?)
    }

    /// Whether `bytes` may leave now. `idle`: nothing is in flight, so only a wake-up moves the
    /// resync on, and a block larger than the whole budget may go alone.
    public mutating func take(_ bytes: UInt64, idle: Bool, lastClientWrite: Duration?, now: Duration) -> Grant {
        guard let limit = limit(lastClientWrite: lastClientWrite, now: now) else { return .send }
        let rate = Double(limit)
        let elapsed = now - refilledAt
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        tokens = min(rate / 10, tokens + rate * seconds)
        refilledAt = now
        let wanted = Double(bytes)
        if tokens >= wanted || (tokens >= 0 && idle && wanted > rate / 10) {
            tokens -= wanted
            return .send
        }
        guard idle else { return .wait(wake: nil) }
        let waitSeconds = min(max((wanted - tokens) / rate, 0.001), 1.0)
        return .wait(wake: .nanoseconds(Int64(waitSeconds * 1e9)))
    }

    /// Whether a back-off holds the resync at `now`.
    public enum Hold: Sendable, Equatable {
        case none
        /// Still waiting, for this long.
        case waiting(Duration)
        /// The back-off just ended: start again from the first marked region (the refused ones
        /// are behind the cursor).
        case ended
    }

    public mutating func hold(now: Duration) -> Hold {
        guard let until = pausedUntil else { return .none }
        guard now >= until else { return .waiting(until - now) }
        pausedUntil = nil
        return .ended
    }

    /// The peer refused a block: the back-off starts or doubles. `nil` while one runs already
    /// (refusals of blocks that were in flight add nothing); else the new back-off.
    public mutating func refused(now: Duration) -> Duration? {
        if let until = pausedUntil, now < until { return nil }
        pause = min(max(pause * 2, .seconds(1)), .seconds(60))
        pausedUntil = now + pause
        return pause
    }

    /// The peer wrote a block: whether that ends a stall (a back-off that ran out).
    public mutating func accepted() -> Bool {
        guard pause > .zero, pausedUntil == nil else { return false }
        pause = .zero
        return true
    }
}
