import Logging
import NIOCore
import Synchronization

/// Which connections a listener holds, in two classes: those still proving themselves (an NBD
/// client negotiating, a peer before its `hello` is verified) and those that have.
///
/// Connections still proving themselves are capped, and a new one over the cap closes the oldest
/// of them: a host that opens a thousand idle or slowloris connections only ever holds the newest
/// few, and a real client, which negotiates in milliseconds, gets through between them. Settled
/// connections have their own cap and are never closed to admit another.
final class ConnectionAdmission: Sendable {
    /// What a listener does with a connection it has just accepted.
    enum Arrival {
        case admitted
        /// Admitted; the oldest unsettled connection is to be closed to make room.
        case admittedClosingOldest(any Channel)
    }

    private let unsettledLimit: Int
    private let settledLimit: Int
    private let state = Mutex<State>(State())

    private struct State {
        /// Unsettled connections in arrival order (the first is the oldest).
        var unsettled: [(id: ObjectIdentifier, channel: any Channel)] = []
        var settled: [ObjectIdentifier: any Channel] = [:]
    }

    init(unsettledLimit: Int, settledLimit: Int) {
        precondition(unsettledLimit > 0 && settledLimit > 0, "connection limits must be positive")
        self.unsettledLimit = unsettledLimit
        self.settledLimit = settledLimit
    }

    /// Records a newly accepted connection as unsettled.
    func arrive(_ channel: any Channel) -> Arrival {
        state.withLock { state in
            state.unsettled.append((ObjectIdentifier(channel), channel))
            guard state.unsettled.count > unsettledLimit else { return .admitted }
            return .admittedClosingOldest(state.unsettled.removeFirst().channel)
        }
    }

    /// Moves a connection that proved itself to the settled class; false when that class is full
    /// (the caller closes the connection) or the connection was already closed to make room.
    func settle(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        return state.withLock { state in
            guard let index = state.unsettled.firstIndex(where: { $0.id == id }) else { return false }
            state.unsettled.remove(at: index)
            guard state.settled.count < settledLimit else { return false }
            state.settled[id] = channel
            return true
        }
    }

    /// Forgets a connection that closed.
    func remove(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        state.withLock { state in
            state.settled.removeValue(forKey: id)
            state.unsettled.removeAll { $0.id == id }
        }
    }

    /// Connections held now, unsettled and settled.
    var counts: (unsettled: Int, settled: Int) {
        state.withLock { ($0.unsettled.count, $0.settled.count) }
    }

    /// Closes every connection.
    func closeAll() async {
        let open = state.withLock { $0.unsettled.map(\.channel) + Array($0.settled.values) }
        for channel in open {
            try? await channel.close()
        }
    }
}

/// A log line that a remote party can provoke at will (one per refused connection) is written at
/// most once a second, with the count of those left out since the last one.
final class RateLimitedLog: Sendable {
    private let interval: Duration
    private let state = Mutex<(last: ContinuousClock.Instant?, suppressed: Int)>((nil, 0))

    init(interval: Duration = .seconds(1)) {
        self.interval = interval
    }

    /// Logs `message` at `level` unless a line went out within the interval.
    func log(_ logger: Logger, _ level: Logger.Level, _ message: @autoclosure () -> String) {
        let now = ContinuousClock.now
        let suppressed: Int? = state.withLock { state in
            if let last = state.last, now - last < interval {
                state.suppressed += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.suppressed
        }
        guard let suppressed else { return }
        let more = suppressed > 0 ? " (and \(suppressed) more like it since the last line)" : ""
        logger.log(level: level, "\(message())\(more)")
    }
}
