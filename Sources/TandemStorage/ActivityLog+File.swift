import TandemCore

/// The activity log's file format; the log itself is a Core model.
extension ActivityLog {
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
        let extents = self.extents
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
