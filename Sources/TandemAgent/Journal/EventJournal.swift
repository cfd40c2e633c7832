import Logging
import Synchronization
import TandemAPI

#if canImport(Glibc)
    import Glibc
#endif

/// The node's event journal: one JSON object per line in `STATE-DIR/NODE.events`, appended with
/// `O_APPEND`. Decisions, failovers, mode changes, resource failures and reset reasons go here.
///
/// An event that matters after a crash (a promotion, a demotion, a mode change, a failover, a reset)
/// is fsync'd before `append` returns; routine ones are left to the page cache. The file is bounded:
/// past `limit` bytes it is renamed to `NODE.events.1` (replacing the older one) and a new one starts.
public final class EventJournal: Sendable {
    /// What an event is about.
    public typealias Kind = JournalEntry.Kind

    public let path: String
    /// The same entries, live, for the API's event stream.
    public let bus = EventBus()
    private let node: String
    private let limit: Int
    private let logger: Logger
    private let state: Mutex<(descriptor: Int32, size: Int, sequence: UInt64)>

    /// Opens (creating) the journal of `node` in `directory`.
    public init(directory: String, node: String, logger: Logger, limit: Int = 16 << 20) throws(AgentError) {
        self.path = "\(directory)/\(node).events"
        self.node = node
        self.limit = limit
        self.logger = logger
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw .io("cannot open the event journal \(path): \(String(cString: strerror(errno)))")
        }
        // The journal names addresses, failures and reset reasons: the owner's alone, also when an
        // earlier version created it readable by everyone.
        fchmod(descriptor, 0o600)
        var info = stat()
        fstat(descriptor, &info)
        state = Mutex((descriptor, Int(info.st_size), 0))
    }

    deinit {
        _ = state.withLock { close($0.descriptor) }
    }

    /// Appends one event. `durable` makes it reach stable storage before returning. A journal
    /// that cannot be written is logged and never stops the agent.
    public func append(_ kind: Kind, _ message: String, durable: Bool = false) {
        let entry = JournalEntry(time: Self.timestamp(), node: node, kind: kind, message: message)
        defer { bus.publish(entry) }
        guard let encoded = try? APICoding.encoder().encode(entry) else { return }
        let line = Array(encoded) + [UInt8(ascii: "\n")]
        state.withLock { state in
            if state.size + line.count > limit { rotate(&state) }
            let written = line.withUnsafeBytes { write(state.descriptor, $0.baseAddress, $0.count) }
            if written != line.count {
                logger.error("event journal \(path): write failed: \(String(cString: strerror(errno)))")
                return
            }
            state.size += line.count
            state.sequence += 1
            if durable, fdatasync(state.descriptor) != 0 {
                logger.error("event journal \(path): fdatasync failed: \(String(cString: strerror(errno)))")
            }
        }
    }

    private func rotate(_ state: inout (descriptor: Int32, size: Int, sequence: UInt64)) {
        fdatasync(state.descriptor)
        guard rename(path, path + ".1") == 0 else { return }
        let fresh = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fresh >= 0 else { return }
        close(state.descriptor)
        state.descriptor = fresh
        state.size = 0
    }

    /// UTC time with milliseconds, ISO 8601.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(parts.tm_year + 1900)-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2))."
            + "\(pad(now.tv_nsec / 1_000_000, 3))Z"
    }
}

/// The time of day, for records an administrator reads; never for a decision.
enum WallClock {
    /// Seconds since the Unix epoch.
    static func secondsSinceEpoch() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
