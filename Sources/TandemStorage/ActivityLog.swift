import TandemCore

/// The extents of a volume that may have writes in flight, persisted before those writes start.
///
/// After a crash every extent in the log is treated as changed (marked in the write-intent bitmap),
/// because a write there may have reached one copy and not the other. Keeping the set small but
/// warm bounds that resync; a write to an extent already in the log costs nothing extra, a write to
/// a cold extent costs one small in-place write and `fdatasync`.
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

    /// The first format (magic, extent size, count, extents, CRC-32C): still read, no longer written.
    static let firstFormatMagic = Array("TNDMALOG".utf8)
    private static let slotMagic = Array("TNDMALG2".utf8)

    /// Bytes of one slot of the log file when it holds at most `extentCount` extents.
    public static func slotBytes(extentCount: Int) -> Int { 36 + extentCount * 8 }

    /// Where the record numbered `sequence` goes: the slot the record before it did not use.
    public static func slotOffset(sequence: UInt64, slotBytes: Int) -> Int64 {
        Int64(sequence % 2) * Int64(slotBytes)
    }

    /// A whole log file: this record in its slot, the other slot empty.
    public func encodedFile(sequence: UInt64, slotBytes: Int) -> [UInt8] {
        let record = encodedSlot(sequence: sequence, slotBytes: slotBytes)
        let empty = [UInt8](repeating: 0, count: slotBytes)
        return Self.slotOffset(sequence: sequence, slotBytes: slotBytes) == 0 ? record + empty : empty + record
    }

    /// One slot of the log file: magic, sequence, extent size, count, extents, CRC-32C, then zeroes
    /// up to `slotBytes`. The file holds two slots and each update overwrites the older one in
    /// place, so a torn update leaves the previous record whole; the newest whole record counts.
    public func encodedSlot(sequence: UInt64, slotBytes: Int) -> [UInt8] {
        var bytes = Self.slotMagic
        for value in [sequence, extentBytes, UInt64(extents.count)] + extents {
            withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
        }
        withUnsafeBytes(of: CRC32C.checksum(bytes).bigEndian) { bytes += $0 }
        precondition(bytes.count <= slotBytes, "activity log record larger than its slot")
        return bytes + [UInt8](repeating: 0, count: slotBytes - bytes.count)
    }

    /// The extents recorded in a log file (two slots, or the first format), or `nil` when no
    /// record in it is whole.
    public static func decodeExtents(_ bytes: [UInt8]) -> (extentBytes: UInt64, extents: [UInt64])? {
        if bytes.count >= 8, Array(bytes[0..<8]) == firstFormatMagic { return decodeFirstFormat(bytes) }
        guard bytes.count >= 2 * slotBytes(extentCount: 0), bytes.count % 2 == 0 else { return nil }
        let half = bytes.count / 2
        let records = [decodeSlot(Array(bytes[0..<half])), decodeSlot(Array(bytes[half...]))].compactMap { $0 }
        guard let newest = records.max(by: { $0.sequence < $1.sequence }) else { return nil }
        return (newest.extentBytes, newest.extents)
    }

    /// One slot's record, or `nil` when it is empty, torn or corrupt.
    static func decodeSlot(_ bytes: [UInt8]) -> (sequence: UInt64, extentBytes: UInt64, extents: [UInt64])? {
        guard bytes.count >= slotBytes(extentCount: 0), Array(bytes[0..<8]) == slotMagic else { return nil }
        var reader = ByteReader(bytes: bytes, index: 8)
        guard let sequence = reader.uint64(), let extentBytes = reader.uint64(), let count = reader.uint64(),
            extentBytes > 0, count <= UInt64((bytes.count - slotBytes(extentCount: 0)) / 8)
        else { return nil }
        let end = 32 + Int(count) * 8
        reader.index = end
        guard reader.peekUInt32() == CRC32C.checksum(bytes[0..<end]) else { return nil }
        reader.index = 32
        return (sequence, extentBytes, (0..<count).map { _ in reader.uint64()! })
    }

    private static func decodeFirstFormat(_ bytes: [UInt8]) -> (extentBytes: UInt64, extents: [UInt64])? {
        guard bytes.count >= 28 else { return nil }
        var reader = ByteReader(bytes: bytes, index: bytes.count - 4)
        guard reader.peekUInt32() == CRC32C.checksum(bytes[0..<(bytes.count - 4)]) else { return nil }
        reader.index = 8
        guard let extentBytes = reader.uint64(), let count = reader.uint64(), extentBytes > 0,
            bytes.count == 28 + Int(count) * 8
        else { return nil }
        return (extentBytes, (0..<count).map { _ in reader.uint64()! })
    }
}
