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
    }

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

    /// Hands freed heap memory back to the system, on a pool thread, at most once a second.
    func trimSoon() {
        let now = ContinuousClock.now
        let due = state.withLock { state in
            guard state.lastTrim.map({ now - $0 >= .seconds(1) }) ?? true else { return false }
            state.lastTrim = now
            return true
        }
        if due { NIOThreadPool.singleton.submit { _ in _ = ctandem_malloc_trim() } }
    }

    /// Forgets a waiter whose connection closed.
    func forget(_ waiter: ObjectIdentifier) {
        _ = state.withLock { $0.waiters.removeValue(forKey: waiter) }
    }
}
