import CTandemLinux
import NIOPosix
import Synchronization

/// The bytes every NBD connection of one server may hold at once for requests received and
/// replies not yet written: write payloads from their header to their completion, read replies
/// from their allocation to their last byte leaving.
///
/// A connection reserves a request's bytes before the request is taken off the stream. When the
/// pool is short it stops decoding and reading (its client's bytes wait in the kernel, not here)
/// and registers to be woken when bytes are returned. A client that never sends the rest of a
/// write or never reads its replies is closed at the connection's deadlines, which returns what it
/// held; until then it holds no more than its own budget.
final class NBDMemoryPool: Sendable {
    /// Bytes the pool may lend.
    let limit: Int
    private let state = Mutex<State>(State())

    private struct State {
        var used = 0
        /// The most lent since the pool was last empty.
        var highWater = 0
        var waiters: [ObjectIdentifier: @Sendable () -> Void] = [:]
        var lastTrim: ContinuousClock.Instant?
        /// A trim asked for within the interval of the last is made once the interval is over.
        var trailingTrim = false
    }

    /// The shortest time between two trims.
    static let trimInterval = Duration.milliseconds(250)

    /// Once this much was lent, an empty pool hands the freed pages back to the system: glibc
    /// keeps freed heap memory for reuse, so a burst of hostile clients would otherwise leave the
    /// agent large long after they are gone.
    static let trimAfterBytes = 8 << 20

    init(limit: Int) {
        precondition(limit > 0, "a memory pool needs a positive limit")
        self.limit = limit
    }

    /// Bytes lent now.
    var used: Int { state.withLock { $0.used } }

    /// Lends `bytes` if the pool has them; otherwise registers `wake` under `waiter`, to be called
    /// once (from whichever thread returns bytes) when some are returned.
    func reserve(_ bytes: Int, waiter: ObjectIdentifier, wake: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { state in
            guard state.used + bytes <= limit else {
                state.waiters[waiter] = wake
                return false
            }
            state.used += bytes
            state.highWater = max(state.highWater, state.used)
            return true
        }
    }

    /// Returns `bytes` and wakes every waiter (each tries again; those still short register again).
    func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        let (waiters, trim) = state.withLock { state in
            state.used -= bytes
            precondition(state.used >= 0, "NBD memory pool returned more than it lent")
            let trim = state.used == 0 && state.highWater >= Self.trimAfterBytes
            if state.used == 0 { state.highWater = 0 }
            defer { state.waiters = [:] }
            return (Array(state.waiters.values), trim)
        }
        for wake in waiters { wake() }
        if trim { trimSoon() }
    }

    /// Hands freed heap memory back to the system, on a pool thread, at most once per
    /// `trimInterval`. One asked for sooner is not dropped but made at the end of the interval: a
    /// crowd of connections that hang up one after another frees its buffers on several event
    /// loops (several malloc arenas) within a few hundred milliseconds, and the last of them must be
    /// trimmed too.
    func trimSoon() {
        let now = ContinuousClock.now
        let wait = state.withLock { state -> Duration? in
            if let last = state.lastTrim, now - last < Self.trimInterval {
                guard !state.trailingTrim else { return nil }
                state.trailingTrim = true
                return Self.trimInterval - (now - last)
            }
            state.lastTrim = now
            return .zero
        }
        guard let wait else { return }
        if wait == .zero {
            NIOThreadPool.singleton.submit { _ in _ = ctandem_malloc_trim() }
            return
        }
        MultiThreadedEventLoopGroup.singleton.next().scheduleTask(in: .nanoseconds(Int64(wait / .nanoseconds(1)))) {
            self.state.withLock {
                $0.trailingTrim = false
                $0.lastTrim = ContinuousClock.now
            }
            NIOThreadPool.singleton.submit { _ in _ = ctandem_malloc_trim() }
        }
    }

    /// Forgets a waiter whose connection closed.
    func forget(_ waiter: ObjectIdentifier) {
        _ = state.withLock { $0.waiters.removeValue(forKey: waiter) }
    }
}
