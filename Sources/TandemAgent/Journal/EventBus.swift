import Synchronization
import TandemAPI

/// The node's live events: every journal entry, numbered, for the API's event stream.
///
/// The last `capacity` entries are kept, so that a client that reconnects with `Last-Event-ID`
/// gets what it missed; each subscriber has a bounded queue, and one that falls behind by more
/// than that is cut off (it reconnects and resumes from the ring).
public final class EventBus: Sendable {
    public struct Event: Sendable, Equatable {
        public var id: UInt64
        public var entry: JournalEntry
    }

    private struct State {
        var next: UInt64 = 1
        var ring: [Event] = []
        var subscribers: [UInt64: AsyncStream<Event>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
        var closed = false
    }

    private let state = Mutex(State())
    private let capacity: Int
    /// Events a subscriber may have queued before it is cut off.
    public let queueLimit: Int
    /// Subscribers at once; one more is refused.
    public let subscriberLimit: Int

    public init(capacity: Int = 1024, queueLimit: Int = 256, subscriberLimit: Int = 512) {
        self.capacity = capacity
        self.queueLimit = queueLimit
        self.subscriberLimit = subscriberLimit
    }

    /// Numbers `entry` and hands it to every subscriber.
    public func publish(_ entry: JournalEntry) {
        let behind = state.withLock { state -> [AsyncStream<Event>.Continuation] in
            let event = Event(id: state.next, entry: entry)
            state.next += 1
            state.ring.append(event)
            if state.ring.count > capacity { state.ring.removeFirst(state.ring.count - capacity) }
            var behind: [AsyncStream<Event>.Continuation] = []
            for (key, subscriber) in state.subscribers {
                if case .dropped = subscriber.yield(event) {
                    behind.append(subscriber)
                    state.subscribers[key] = nil
                }
            }
            return behind
        }
        // Outside the lock: finishing runs the stream's termination handler, which takes it.
        for subscriber in behind { subscriber.finish() }
    }

    /// The events after `lastID` still in the ring, then every new one; `nil` when too many
    /// subscribers are connected.
    public func subscribe(after lastID: UInt64?) -> AsyncStream<Event>? {
        state.withLock { state -> AsyncStream<Event>? in
            guard !state.closed, state.subscribers.count < subscriberLimit else { return nil }
            let (stream, continuation) = AsyncStream.makeStream(
                of: Event.self, bufferingPolicy: .bufferingOldest(queueLimit + capacity))
            if let lastID {
                for event in state.ring where event.id > lastID { continuation.yield(event) }
            }
            let key = state.nextSubscriber
            state.nextSubscriber += 1
            state.subscribers[key] = continuation
            continuation.onTermination = { [weak self] _ in
                self?.state.withLock { _ = $0.subscribers.removeValue(forKey: key) }
            }
            return stream
        }
    }

    /// The events after `lastID` still in the ring.
    public func recent(after lastID: UInt64) -> [Event] {
        state.withLock { $0.ring.filter { $0.id > lastID } }
    }

    /// Ends every stream and takes no more: the agent is stopping, and its HTTP servers wait for
    /// the responses they are sending.
    public func close() {
        let subscribers = state.withLock { state in
            state.closed = true
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        for subscriber in subscribers { subscriber.finish() }
    }

    /// Connected subscribers.
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }
}
