import Logging
import TandemReplication

/// Where what a volume reports goes: the log, at the caller's level, and the node's event journal
/// (kind `volume`), so that `tandem events` shows replication's decisions (a resync and its end, a
/// split brain, an online verify's result, an administrator's command) beside membership's.
public struct VolumeEvents: Sendable {
    let journal: EventJournal
    let logger: Logger

    public init(journal: EventJournal, logger: Logger) {
        self.journal = journal
        self.logger = logger
    }

    /// Logs and journals each event. `durable` for one that must outlive a crash (data discarded).
    public func record(_ events: [ReplicationEvent], level: Logger.Level = .info, durable: Bool = false) {
        for event in events { record(event.description, level: level, durable: durable) }
    }

    public func record(_ message: String, level: Logger.Level = .info, durable: Bool = false) {
        logger.log(level: level, "\(message)")
        journal.append(.volume, message, durable: durable)
    }
}
