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
    /// The extents in the log, each with its writes in flight, in a list ordered by last use whose
    /// links are slot numbers: a write costs one hash lookup however many extents the log keeps (up
    /// to 65,536), where an array kept in order cost a search and a move of the whole array.
    private var slots: [Slot] = []
    /// The slot of each extent in the log.
    private var slotOf: [UInt64: Int] = [:]
    /// Slots left empty by dropped extents, for reuse.
    private var freeSlots: [Int] = []
    /// The slots of the least and the most recently used extent (-1: the log is empty).
    private var oldest = -1
    private var newest = -1

    private struct Slot: Sendable, Equatable {
        var extent: UInt64
        var older: Int
        var newer: Int
        /// Writes in flight; an extent with writes in flight is never dropped.
        var writes: Int
    }

    /// An empty log.
    public init(extentBytes: UInt64 = 4 << 20, capacity: Int = 1024) {
        precondition(extentBytes > 0 && capacity > 0, "activity log needs a positive extent size and capacity")
        self.extentBytes = extentBytes
        self.capacity = capacity
    }

    /// Extents in the log, least recently used first.
    public var extents: [UInt64] {
        var ordered: [UInt64] = []
        ordered.reserveCapacity(slotOf.count)
        var next = oldest
        while next >= 0 {
            ordered.append(slots[next].extent)
            next = slots[next].newer
        }
        return ordered
    }

    /// How many extents the log holds.
    public var count: Int { slotOf.count }

    /// Two logs are equal when they hold the same extents in the same order, each with as many
    /// writes in flight (wherever their slots are).
    public static func == (left: ActivityLog, right: ActivityLog) -> Bool {
        guard left.extentBytes == right.extentBytes, left.capacity == right.capacity, left.count == right.count
        else { return false }
        var (one, other) = (left.oldest, right.oldest)
        while one >= 0, other >= 0 {
            let (a, b) = (left.slots[one], right.slots[other])
            guard a.extent == b.extent, a.writes == b.writes else { return false }
            (one, other) = (a.newer, b.newer)
        }
        return one < 0 && other < 0
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

    /// Records a write starting on `[offset, offset + length)`. A write of no bytes touches no
    /// extent: it is neither counted here nor in `end`.
    public mutating func begin(offset: UInt64, length: UInt64) -> Admission {
        var admission = Admission()
        guard length > 0 else { return admission }
        for extent in extents(offset: offset, length: length) {
            if let slot = slotOf[extent] {
                slots[slot].writes += 1
                if slot != newest {
                    unlink(slot)
                    append(slot)
                }
                continue
            }
            admission.added.append(extent)
            let entry = Slot(extent: extent, older: -1, newer: -1, writes: 1)
            let slot: Int
            if let free = freeSlots.popLast() {
                slot = free
                slots[slot] = entry
            } else {
                slot = slots.count
                slots.append(entry)
            }
            slotOf[extent] = slot
            append(slot)
        }
        // From the least recently used on, past extents with writes in flight.
        var candidate = oldest
        while slotOf.count > capacity, candidate >= 0 {
            let slot = candidate
            candidate = slots[slot].newer
            guard slots[slot].writes == 0 else { continue }
            unlink(slot)
            slotOf[slots[slot].extent] = nil
            freeSlots.append(slot)
            admission.dropped.append(slots[slot].extent)
        }
        return admission
    }

    /// Records a write on `[offset, offset + length)` finished (on both nodes, or marked).
    public mutating func end(offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        for extent in extents(offset: offset, length: length) {
            guard let slot = slotOf[extent], slots[slot].writes > 0 else {
                preconditionFailure("activity log: end without begin on extent \(extent)")
            }
            slots[slot].writes -= 1
        }
    }

    /// Empties the log (after a clean shutdown made the bitmap durable).
    public mutating func clear() {
        precondition(slotOf.values.allSatisfy { slots[$0].writes == 0 }, "activity log cleared with writes in flight")
        slots = []
        slotOf = [:]
        freeSlots = []
        oldest = -1
        newest = -1
    }

    /// Makes the extent in `slot` the most recently used (it is not in the list).
    private mutating func append(_ slot: Int) {
        slots[slot].older = newest
        slots[slot].newer = -1
        if newest >= 0 { slots[newest].newer = slot } else { oldest = slot }
        newest = slot
    }

    /// Takes the extent in `slot` out of the list (its slot stays).
    private mutating func unlink(_ slot: Int) {
        let (older, newer) = (slots[slot].older, slots[slot].newer)
        if older >= 0 { slots[older].newer = newer } else { oldest = newer }
        if newer >= 0 { slots[newer].older = older } else { newest = older }
    }
}
