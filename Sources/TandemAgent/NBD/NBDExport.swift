import NIOCore
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

/// Which exports are offered now, and the connections using each. An export that an
/// `nbd-export` resource manages is offered only while that resource runs; every other export
/// always is. Withdrawing an export closes its connections once their requests are answered, so
/// that clients reconnect (through the floating address, to whichever node serves it next)
/// instead of talking to a node that stopped serving.
public final class ExportGate: Sendable {
    private struct State {
        var hidden: Set<String>
        var sessions: [Int: (export: String, channel: any Channel)] = [:]
        var nextSession = 0
    }

    private let state: Mutex<State>

    public init(hidden: Set<String> = []) { self.state = Mutex(State(hidden: hidden)) }

    public func isOffered(_ name: String) -> Bool { state.withLock { !$0.hidden.contains(name) } }

    /// Offers `name` again, or hides it from new clients without closing its connections.
    public func setOffered(_ name: String, _ offered: Bool) {
        state.withLock { state in
            if offered {
                state.hidden.remove(name)
            } else {
                state.hidden.insert(name)
            }
        }
    }

    /// Records `channel` as using `export`, if the export is offered at this instant; returns the
    /// session to pass to `release`, or `nil` when the export was withdrawn.
    func admit(_ export: String, channel: any Channel) -> Int? {
        state.withLock { state in
            guard !state.hidden.contains(export) else { return nil }
            state.nextSession += 1
            state.sessions[state.nextSession] = (export, channel)
            return state.nextSession
        }
    }

    /// Forgets a session whose connection closed.
    func release(_ session: Int) {
        _ = state.withLock { $0.sessions.removeValue(forKey: session) }
    }

    /// Connections now using `export`.
    public func connections(to export: String) -> Int {
        state.withLock { $0.sessions.values.filter { $0.export == export }.count }
    }

    /// Hides `name` from new clients, asks each of its connections to close once the requests it
    /// has in flight are answered (it reads no new ones), and returns when all of them are closed.
    public func withdraw(_ name: String) async {
        let channels = state.withLock { state in
            state.hidden.insert(name)
            return state.sessions.values.filter { $0.export == name }.map(\.channel)
        }
        for channel in channels {
            channel.pipeline.fireUserInboundEventTriggered(NBDExportWithdrawn())
        }
        for channel in channels {
            try? await channel.closeFuture.get()
        }
    }
}

/// Sent down a connection's pipeline when its export is withdrawn.
struct NBDExportWithdrawn {}

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

    /// Looks up `name` as `export(named:)` does and records `channel` as its user, in one step
    /// with the check that the export is still offered.
    func admit(_ name: String, channel: any Channel) -> (export: NBDExport, session: Int)? {
        guard let export = export(named: name), let session = gate.admit(export.name, channel: channel) else {
            return nil
        }
        return (export, session)
    }
}
