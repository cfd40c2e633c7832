/// One bit per region of a volume: set when the region may differ from the peer's copy.
///
/// The bitmap is a value (its file format lives in TandemStorage); a caller persists it before
/// acknowledging a write that set a new bit, so a crash never forgets a region that changed
/// without the peer.
public struct WriteIntentBitmap: Sendable, Equatable {
    /// Bytes per bit.
    public let regionBytes: UInt64
    /// Size of the volume tracked.
    public let volumeBytes: UInt64
    /// The bits, 64 regions to a word, region 0 in the lowest bit of the first.
    public private(set) var words: [UInt64]
    /// Number of set bits.
    public private(set) var dirtyRegionCount: Int = 0
    /// How many times a bit went from clear to set in this value's life (not stored): a caller
    /// that persisted the bitmap at one count knows, at the same count, that nothing was marked
    /// since. Clearing never moves it.
    public private(set) var markCount: UInt64 = 0

    /// A clean bitmap for a volume of `volumeBytes`.
    public init(volumeBytes: UInt64, regionBytes: UInt64 = 64 << 10) {
        precondition(regionBytes > 0 && regionBytes & (regionBytes - 1) == 0, "region size must be a power of two")
        self.regionBytes = regionBytes
        self.volumeBytes = volumeBytes
        let regions = Int((volumeBytes + regionBytes - 1) / regionBytes)
        words = Array(repeating: 0, count: (regions + 63) / 64)
    }

    /// The bitmap with `words` as its bits; `nil` when their count does not fit the shape.
    public init?(volumeBytes: UInt64, regionBytes: UInt64, words: [UInt64]) {
        self.init(volumeBytes: volumeBytes, regionBytes: regionBytes)
        guard words.count == self.words.count else { return nil }
        self.words = words
        dirtyRegionCount = words.reduce(0) { $0 + $1.nonzeroBitCount }
    }

    /// Regions in the volume.
    public var regionCount: Int { Int((volumeBytes + regionBytes - 1) / regionBytes) }

    /// Bytes covered by set bits (the last region counts only up to the volume's end).
    public var dirtyBytes: UInt64 {
        dirtyRegions.reduce(0) { total, region in
            let range = range(ofRegion: region)
            return total + (range.upperBound - range.lowerBound)
        }
    }

    /// Marks every region touching `[offset, offset + length)`; returns whether any bit was newly set.
    @discardableResult
    public mutating func mark(offset: UInt64, length: UInt64) -> Bool {
        guard length > 0 else { return false }
        precondition(offset + length <= volumeBytes, "mark past the end of the volume")
        var changed = false
        for region in Int(offset / regionBytes)...Int((offset + length - 1) / regionBytes) {
            let (word, bit) = (region / 64, UInt64(1) << UInt64(region % 64))
            if words[word] & bit == 0 {
                words[word] |= bit
                dirtyRegionCount += 1
                markCount += 1
                changed = true
            }
        }
        return changed
    }

    /// Clears every region (the mark count stays).
    public mutating func clearAll() {
        for index in words.indices { words[index] = 0 }
        dirtyRegionCount = 0
    }

    /// Marks every region (a full resync).
    public mutating func markAll() {
        mark(offset: 0, length: volumeBytes)
    }

    /// Clears one region.
    public mutating func clear(region: Int) {
        let (word, bit) = (region / 64, UInt64(1) << UInt64(region % 64))
        if words[word] & bit != 0 {
            words[word] &= ~bit
            dirtyRegionCount -= 1
        }
    }

    /// Whether `region` is set.
    public func isDirty(region: Int) -> Bool {
        words[region / 64] & (UInt64(1) << UInt64(region % 64)) != 0
    }

    /// Set regions in ascending order.
    public var dirtyRegions: [Int] {
        var regions: [Int] = []
        regions.reserveCapacity(dirtyRegionCount)
        for (index, word) in words.enumerated() where word != 0 {
            var remaining = word
            while remaining != 0 {
                let bit = remaining.trailingZeroBitCount
                regions.append(index * 64 + bit)
                remaining &= remaining - 1
            }
        }
        return regions
    }

    /// The byte ranges of the set regions, adjacent regions joined, in ascending order.
    public var dirtyRanges: [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        for region in dirtyRegions {
            let range = self.range(ofRegion: region)
            if let last = ranges.last, last.upperBound == range.lowerBound {
                ranges[ranges.count - 1] = last.lowerBound..<range.upperBound
            } else {
                ranges.append(range)
            }
        }
        return ranges
    }

    /// Whether no region that holds a byte of `bytes` is set.
    public func isClear(overlapping bytes: Range<UInt64>) -> Bool {
        guard !bytes.isEmpty else { return true }
        let regions = Int(bytes.lowerBound / regionBytes)..<Int((bytes.upperBound - 1) / regionBytes + 1)
        return regions.clamped(to: 0..<regionCount).allSatisfy { !isDirty(region: $0) }
    }

    /// The first set region at or after `start`.
    public func nextDirtyRegion(from start: Int) -> Int? {
        var region = start
        while region < regionCount {
            let word = words[region / 64] >> UInt64(region % 64)
            if word != 0 { return region + word.trailingZeroBitCount }
            region = (region / 64 + 1) * 64
        }
        return nil
    }

    /// The byte range of `region`, clipped to the volume.
    public func range(ofRegion region: Int) -> Range<UInt64> {
        let start = UInt64(region) * regionBytes
        return start..<min(start + regionBytes, volumeBytes)
    }

    /// Sets every bit the other bitmap has set (both must describe the same volume).
    public mutating func formUnion(_ other: WriteIntentBitmap) {
        precondition(
            other.regionBytes == regionBytes && other.volumeBytes == volumeBytes, "bitmaps of different shapes")
        for index in words.indices { words[index] |= other.words[index] }
        let before = dirtyRegionCount
        dirtyRegionCount = words.reduce(0) { $0 + $1.nonzeroBitCount }
        markCount += UInt64(dirtyRegionCount - before)
    }

    /// Two bitmaps are equal when they have the same shape and the same bits set.
    public static func == (left: WriteIntentBitmap, right: WriteIntentBitmap) -> Bool {
        left.regionBytes == right.regionBytes && left.volumeBytes == right.volumeBytes && left.words == right.words
    }
}
