import TandemCore

/// The extents of a volume that may have writes in flight, persisted before those writes start.
///
/// After a crash every extent in the log is treated as changed (marked in the write-intent bitmap),
/// because a write there may have reached one copy and not the other. Keeping the set small but
/// warm bounds that resync; a write to an extent already in the log costs nothing extra, a write to
/// a cold extent costs one small atomic file write.
public struct ActivityLog: Sendable, Equatable {
    /// Bytes per extent.
    public let extentBytes: UInt64
    /// Extents kept before the least recently used idle one is dropped.
    public let capacity: Int
    /// Extents in the log, least recently used first.
    public private(set) var extents: [UInt64] = []
    /// Writes in flight per extent; an extent with writes in flight is never dropped.
    private var inFlight: [UInt64: Int] = [:]

    /// An empty log.
    public init(extentBytes: UInt64 = 4 << 20, capacity: Int = 1024) {
        precondition(extentBytes > 0 && capacity > 0, "activity log needs a positive extent size and capacity")
        self.extentBytes = extentBytes
        self.capacity = capacity
    }

    /// The extents a byte range touches.
    public func extents(offset: UInt64, length: UInt64) -> ClosedRange<UInt64> {
        (offset / extentBytes)...((offset + max(length, 1) - 1) / extentBytes)
    }

    /// What `begin` changed.
    public struct Admission: Sendable, Equatable {
        /// Extents that were not in the log: the log must be persisted before the write starts.
        public var added: [UInt64] = []
        /// Extents dropped to make room: their bitmap bits must be durable before the log is.
        public var dropped: [UInt64] = []
    }

    /// Records a write starting on `[offset, offset + length)`.
    public mutating func begin(offset: UInt64, length: UInt64) -> Admission {
        var admission = Admission()
        for extent in extents(offset: offset, length: length) {
            inFlight[extent, default: 0] += 1
            if let index = extents.firstIndex(of: extent) {
                extents.remove(at: index)
            } else {
                admission.added.append(extent)
            }
            extents.append(extent)
        }
        while extents.count > capacity, let index = extents.firstIndex(where: { (inFlight[$0] ?? 0) == 0 }) {
            admission.dropped.append(extents.remove(at: index))
        }
        return admission
    }

    /// Records a write on `[offset, offset + length)` finished (on both nodes, or marked).
    public mutating func end(offset: UInt64, length: UInt64) {
        for extent in extents(offset: offset, length: length) {
            guard let count = inFlight[extent] else {
                preconditionFailure("activity log: end without begin on extent \(extent)")
            }
            inFlight[extent] = count == 1 ? nil : count - 1
        }
    }

    /// Empties the log (after a clean shutdown made the bitmap durable).
    public mutating func clear() {
        precondition(inFlight.isEmpty, "activity log cleared with writes in flight")
        extents = []
    }

    // MARK: Persistence

    private static let magic = Array("TNDMALOG".utf8)

    /// The file's bytes: magic, extent size, count, extents, CRC-32C.
    public func encoded() -> [UInt8] {
        var bytes = Self.magic
        for value in [extentBytes, UInt64(extents.count)] + extents {
            withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
        }
        withUnsafeBytes(of: CRC32C.checksum(bytes).bigEndian) { bytes += $0 }
        return bytes
    }

    /// The extents recorded in a log file, or `nil` when it is torn or corrupt.
    public static func decodeExtents(_ bytes: [UInt8]) -> (extentBytes: UInt64, extents: [UInt64])? {
        guard bytes.count >= 28, Array(bytes[0..<8]) == magic else { return nil }
        var reader = ByteReader(bytes: bytes, index: bytes.count - 4)
        guard reader.peekUInt32() == CRC32C.checksum(bytes[0..<(bytes.count - 4)]) else { return nil }
        reader.index = 8
        guard let extentBytes = reader.uint64(), let count = reader.uint64(), extentBytes > 0,
            bytes.count == 28 + Int(count) * 8
        else { return nil }
        return (extentBytes, (0..<count).map { _ in reader.uint64()! })
    }
}
