import Synchronization
import TandemReplication
import TandemStorage
import TandemWire

/// A volume as NBD clients see it: a name, a size, flags, and the replicated volume behind it.
public struct NBDExport: Sendable {
    /// The name clients ask for.
    public var name: String
    /// The volume behind the export.
    public var volume: ReplicatedVolume

    /// Creates an export.
    public init(name: String, volume: ReplicatedVolume) {
        self.name = name
        self.volume = volume
    }

    /// Size in bytes.
    public var sizeBytes: UInt64 { volume.store.sizeBytes }

    /// Whether writes are refused now: a read-only volume, or a node that is not an up-to-date primary.
    public var readOnly: Bool { volume.configuration.readOnly || volume.store.isReadOnly || !volume.acceptsWrites }

    /// The transmission flags advertised for this export.
    public var transmissionFlags: NBD.TransmissionFlags {
        // Multi-conn is safe: every connection shares one descriptor and a flush is fdatasync,
        // which covers writes completed on any connection.
        var flags: NBD.TransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .canMultiConn]
        if readOnly {
            flags.insert(.readOnly)
        } else {
            flags.formUnion([.sendTrim, .sendWriteZeroes])
        }
        return flags
    }
}

/// Which exports are offered now. An export that an `nbd-export` resource manages is offered
/// only while that resource runs; every other export always is.
public final class ExportGate: Sendable {
    private let hidden: Mutex<Set<String>>

    public init(hidden: Set<String> = []) { self.hidden = Mutex(hidden) }

    public func isOffered(_ name: String) -> Bool { hidden.withLock { !$0.contains(name) } }

    public func setOffered(_ name: String, _ offered: Bool) {
        hidden.withLock { hidden in
            if offered {
                hidden.remove(name)
            } else {
                hidden.insert(name)
            }
        }
    }
}

/// The exports one server offers, looked up by name; the first is the default export.
public struct NBDExportTable: Sendable {
    /// Exports in config order.
    public private(set) var all: [NBDExport]
    /// Which of them are offered now.
    public let gate: ExportGate

    /// Creates a table; export names must be unique (the config guarantees it).
    public init(_ exports: [NBDExport], gate: ExportGate = ExportGate()) {
        precondition(Set(exports.map(\.name)).count == exports.count, "duplicate NBD export names")
        self.all = exports
        self.gate = gate
    }

    /// The exports offered now, in config order.
    public var exports: [NBDExport] { all.filter { gate.isOffered($0.name) } }

    /// The export called `name` if it is offered; an empty name means the default (first) export.
    public func export(named name: String) -> NBDExport? {
        let offered = exports
        return name.isEmpty ? offered.first : offered.first { $0.name == name }
    }
}
