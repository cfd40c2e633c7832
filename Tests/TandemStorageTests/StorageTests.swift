import TandemTestSupport
import Testing

@testable import TandemCore
@testable import TandemStorage

#if canImport(Glibc)
    import Glibc
#endif

private func fileSize(_ path: String) -> Int? {
    var info = stat()
    return stat(path, &info) == 0 ? Int(info.st_size) : nil
}

private func allocatedBytes(_ path: String) -> Int {
    var info = stat()
    stat(path, &info)
    return Int(info.st_blocks) * 512
}

private func volume(_ directory: TemporaryDirectory, name: String = "vol0", size: UInt64? = 1 << 20)
    -> Configuration.Volume
{
    Configuration.Volume(
        name: name, protocol: .c, sizeBytes: size, backing: "\(directory.path)/\(name).img", metadata: nil,
        nbdExport: name, readOnly: false)
}

@Suite struct WriteIntentBitmapTests {
    @Test func dirtyRanges_joinAdjacentRegions_andIsClearLooksOnlyAtTheRegionsItOverlaps() {
        var bitmap = WriteIntentBitmap(volumeBytes: 10 << 16 + 100, regionBytes: 1 << 16)
        _ = bitmap.mark(offset: 1 << 16, length: 2 << 16)
        _ = bitmap.mark(offset: 5 << 16, length: 1)
        _ = bitmap.mark(offset: 10 << 16, length: 1)
        let expected: [Range<UInt64>] = [1 << 16..<3 << 16, 5 << 16..<6 << 16, 10 << 16..<10 << 16 + 100]
        #expect(bitmap.dirtyRanges == expected)
        #expect(bitmap.isClear(overlapping: 3 << 16..<5 << 16))
        #expect(!bitmap.isClear(overlapping: 3 << 16..<5 << 16 + 1), "one byte of region 5")
        #expect(!bitmap.isClear(overlapping: 3 << 16 - 1..<4 << 16), "the last byte of region 2")
        #expect(bitmap.isClear(overlapping: 11 << 16..<20 << 16), "regions past the end are clear")
        #expect(bitmap.isClear(overlapping: 5 << 16..<5 << 16), "an empty range")
        bitmap.clearAll()
        #expect(bitmap.dirtyRanges.isEmpty)
    }
}

@Suite struct BackingStoreTests {
    @Test func open_missingFile_createsItAtTheConfiguredSize() throws {
        let directory = TemporaryDirectory()
        let store = try BackingStore.open(
            path: "\(directory.path)/a.img", sizeBytes: 1 << 20, create: true, readOnly: false)
        #expect(store.sizeBytes == 1 << 20)
        #expect(!store.isBlockDevice)
        #expect(fileSize("\(directory.path)/a.img") == 1 << 20)
    }

    @Test func open_missingFileWithoutCreate_isRefused() {
        let directory = TemporaryDirectory()
        #expect(throws: StorageError.self) {
            try BackingStore.open(path: "\(directory.path)/none.img", sizeBytes: 4096, create: false, readOnly: false)
        }
    }

    @Test func open_existingFileOfAnotherSize_isRefusedAndLeftAlone() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/a.img"
        _ = try BackingStore.open(path: path, sizeBytes: 8192, create: true, readOnly: false)
        do {
            _ = try BackingStore.open(path: path, sizeBytes: 4096, create: true, readOnly: false)
            Issue.record("a size mismatch must be refused")
        } catch {
            #expect(error.description.contains("is 8192 bytes but the volume is 4096 bytes"))
        }
        #expect(fileSize(path) == 8192)
    }

    @Test func writeThenRead_returnsTheSameBytes() throws {
        let directory = TemporaryDirectory()
        let store = try BackingStore.open(
            path: "\(directory.path)/a.img", sizeBytes: 1 << 20, create: true, readOnly: false)
        let pattern = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try pattern.withUnsafeBytes { try store.write($0, at: 12_345) }
        try store.flush()
        var readBack = [UInt8](repeating: 0, count: pattern.count)
        try readBack.withUnsafeMutableBytes { try store.read(into: $0, at: 12_345) }
        #expect(readBack == pattern)
    }

    @Test func trimAndWriteZeroes_readBackAsZeroes() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/a.img"
        let store = try BackingStore.open(path: path, sizeBytes: 4 << 20, create: true, readOnly: false)
        let ones = [UInt8](repeating: 0xFF, count: 4 << 20)
        try ones.withUnsafeBytes { try store.write($0, at: 0) }
        try store.flush()
        let before = allocatedBytes(path)
        try store.writeZeroes(offset: 1 << 20, length: 1 << 20, mayDeallocate: true)
        try store.writeZeroes(offset: 2 << 20, length: 1 << 20, mayDeallocate: false)
        try store.trim(offset: 3 << 20, length: 1 << 20)
        var readBack = [UInt8](repeating: 1, count: 2 << 20)
        try readBack.withUnsafeMutableBytes { try store.read(into: $0, at: 1 << 20) }
        #expect(readBack.allSatisfy { $0 == 0 })
        var first = [UInt8](repeating: 0, count: 1 << 20)
        try first.withUnsafeMutableBytes { try store.read(into: $0, at: 0) }
        #expect(first.allSatisfy { $0 == 0xFF }, "bytes outside the zeroed ranges must be untouched")
        #expect(allocatedBytes(path) < before, "punching holes must give space back")
    }
}

@Suite struct MetadataFileTests {
    private let sample = VolumeMetadata(
        volumeName: "vol0", volumeID: 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210, sizeBytes: 1 << 30,
        generations: .init(current: 7, bitmap: 5, history: (3, 1)))

    @Test func storeThenLoad_roundTrips() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/vol0.meta"
        try MetadataFile.store(sample, path: path)
        #expect(try MetadataFile.load(path: path) == sample)
        #expect(access(path + ".tmp", F_OK) != 0, "the temporary file must be renamed away")
    }

    @Test func inconsistentFlag_roundTrips_andFormat1FilesAreStillRead() throws {
        var flagged = sample
        flagged.inconsistent = true
        #expect(try MetadataFile.decode(MetadataFile.encode(flagged), path: "m") == flagged)
        // A format-1 file: the same layout without the flags word.
        var bytes = Array(MetadataFile.encode(sample).dropLast(4 + 8))
        bytes.replaceSubrange(8..<12, with: [0, 0, 0, 1])
        let payloadLength = UInt32(bytes.count - 16)
        bytes.replaceSubrange(12..<16, with: withUnsafeBytes(of: payloadLength.bigEndian) { Array($0) })
        bytes += withUnsafeBytes(of: CRC32C.checksum(bytes).bigEndian) { Array($0) }
        #expect(try MetadataFile.decode(bytes, path: "m") == sample)
    }

    @Test func load_missingFile_isNil() throws {
        #expect(try MetadataFile.load(path: "/tmp/does-not-exist.tandem-meta") == nil)
    }

    @Test func decode_everyTruncation_isRefused() {
        let bytes = MetadataFile.encode(sample)
        for length in 0..<bytes.count {
            #expect(throws: MetadataError.self) { try MetadataFile.decode(Array(bytes[0..<length]), path: "m") }
        }
    }

    @Test func decode_everySingleBitFlip_isRefused() {
        let bytes = MetadataFile.encode(sample)
        for index in bytes.indices {
            var damaged = bytes
            damaged[index] ^= 0x10
            #expect(throws: MetadataError.self) { try MetadataFile.decode(damaged, path: "m") }
        }
    }

    @Test func load_tornFile_isRefusedWithAClearMessage() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/vol0.meta"
        try MetadataFile.store(sample, path: path)
        truncate(path, 30)
        do {
            _ = try MetadataFile.load(path: path)
            Issue.record("a torn file must be refused")
        } catch {
            #expect(error.description.contains("is torn or corrupt"))
            #expect(error.description.contains("refusing to use it"))
        }
    }
}

@Suite struct LocalVolumeTests {
    @Test func open_firstUse_createsBackingAndMetadata_thenReopensTheSameIdentity() throws {
        let directory = TemporaryDirectory()
        let config = volume(directory)
        let first = try LocalVolume.open(
            config, stateDirectory: directory.path, newGeneration: { 42 }, newVolumeID: { 99 })
        #expect(first.metadataPath == "\(directory.path)/vol0.img.tandem-meta")
        #expect(first.metadata.generations.current == 42)
        let second = try LocalVolume.open(
            config, stateDirectory: directory.path, newGeneration: { 1 }, newVolumeID: { 2 })
        #expect(second.metadata == first.metadata)
    }

    @Test func open_metadataOfAnotherVolume_isRefused() throws {
        let directory = TemporaryDirectory()
        var config = volume(directory)
        _ = try LocalVolume.open(config, stateDirectory: directory.path, newGeneration: { 1 }, newVolumeID: { 1 })
        config.name = "other"
        config.metadata = "\(directory.path)/vol0.img.tandem-meta"
        #expect(throws: LocalVolumeError.self) {
            try LocalVolume.open(config, stateDirectory: directory.path, newGeneration: { 1 }, newVolumeID: { 1 })
        }
    }

    @Test func open_backingMissingWhileMetadataExists_isRefused() throws {
        let directory = TemporaryDirectory()
        let config = volume(directory)
        _ = try LocalVolume.open(config, stateDirectory: directory.path, newGeneration: { 1 }, newVolumeID: { 1 })
        unlink(config.backing)
        #expect(throws: LocalVolumeError.self) {
            try LocalVolume.open(config, stateDirectory: directory.path, newGeneration: { 1 }, newVolumeID: { 1 })
        }
        #expect(access(config.backing, F_OK) != 0, "a lost backing file must not be silently re-created")
    }
}

@Suite struct CRC32CTests {
    @Test func knownVectors() {
        // RFC 3720, appendix B.4.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        let whole = CRC32C.checksum(Array("123456789".utf8))
        let split = CRC32C.checksum(Array("6789".utf8), seed: CRC32C.checksum(Array("12345".utf8)))
        #expect(whole == split)
    }
}

@Suite struct ActivityLogTests {
    @Test func extentsAreKeptByLastUse_andTheLeastRecentlyUsedIdleOneIsDropped() {
        var log = ActivityLog(extentBytes: 1 << 20, capacity: 3)
        #expect(log.begin(offset: 0, length: 1) == .init(added: [0]))
        #expect(log.begin(offset: 1 << 20, length: 2 << 20) == .init(added: [1, 2]), "a write across two extents")
        #expect(log.begin(offset: 0, length: 1) == .init(), "an extent already in the log costs nothing")
        #expect(log.extents == [1, 2, 0], "least recently used first")
        #expect(log.count == 3)
        log.end(offset: 1 << 20, length: 2 << 20)
        // Extent 0 has two writes in flight and 1, 2 none: the oldest idle extent goes.
        #expect(log.begin(offset: 3 << 20, length: 1) == .init(added: [3], dropped: [1]))
        #expect(log.extents == [2, 0, 3])
        #expect(log.begin(offset: 4 << 20, length: 1) == .init(added: [4], dropped: [2]))
        // Nothing idle: the log grows past its capacity rather than drop an extent in use.
        #expect(log.begin(offset: 5 << 20, length: 1) == .init(added: [5]))
        #expect(log.extents == [0, 3, 4, 5])
        log.end(offset: 0, length: 1)
        #expect(log.begin(offset: 0, length: 1) == .init(), "one write still in flight on extent 0")
        log.end(offset: 0, length: 1)
        log.end(offset: 0, length: 1)
        for extent in [3, 4, 5] as [UInt64] { log.end(offset: extent << 20, length: 1) }
        #expect(log.extents == [3, 4, 5, 0])
        #expect(log.begin(offset: 6 << 20, length: 1) == .init(added: [6], dropped: [3, 4]), "back to its capacity")
        #expect(log.extents == [5, 0, 6])
        log.end(offset: 6 << 20, length: 1)
        var same = ActivityLog(extentBytes: 1 << 20, capacity: 3)
        for extent in [5, 0, 6] as [UInt64] {
            _ = same.begin(offset: extent << 20, length: 1)
            same.end(offset: extent << 20, length: 1)
        }
        #expect(log == same, "equal by extents, order and writes in flight, whatever their slots")
        _ = same.begin(offset: 6 << 20, length: 1)
        #expect(log != same)
        log.clear()
        #expect(log.extents.isEmpty && log.count == 0)
        #expect(log.begin(offset: 7 << 20, length: 1) == .init(added: [7]))
        #expect(log.extents == [7])
    }

    @Test func aLargeLog_keepsItsOrderOverManyWrites() {
        // Against a plain array model of the same rules, over writes that hit, miss and evict.
        var log = ActivityLog(extentBytes: 1, capacity: 512)
        var model: [UInt64] = []
        var state: UInt64 = 7
        for _ in 0..<20_000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let extent = (state >> 33) % 700
            let admission = log.begin(offset: extent, length: 1)
            log.end(offset: extent, length: 1)
            var expected = ActivityLog.Admission()
            if let index = model.firstIndex(of: extent) { model.remove(at: index) } else { expected.added = [extent] }
            model.append(extent)
            if model.count > 512 { expected.dropped = [model.removeFirst()] }
            #expect(admission == expected)
        }
        #expect(log.extents == model)
    }
}

@Suite struct ActivityLogFileTests {
    /// A log holding `extents` (1 MiB each, room for four).
    func log(_ extents: [UInt64]) -> ActivityLog {
        var log = ActivityLog(extentBytes: 1 << 20, capacity: 4)
        for extent in extents {
            _ = log.begin(offset: extent << 20, length: 1)
            log.end(offset: extent << 20, length: 1)
        }
        return log
    }

    @Test func newestWholeSlotCounts_aTornOneLeavesTheOtherRecord() {
        let slot = ActivityLog.slotBytes(extentCount: 4)
        let older = log([1, 2]).encodedSlot(sequence: 7, slotBytes: slot)
        let newer = log([1, 2, 3]).encodedSlot(sequence: 8, slotBytes: slot)
        #expect(ActivityLog.decodeExtents(newer + older)?.extents == [1, 2, 3])
        #expect(ActivityLog.decodeExtents(older + newer)?.extents == [1, 2, 3])
        // Every cut of the newer record's update (its slot holds the start of it, then the old bytes).
        let previous = log([5]).encodedSlot(sequence: 6, slotBytes: slot)
        for cut in 1..<slot {
            let torn = Array(newer[0..<cut]) + Array(previous[cut...])
            let decoded = ActivityLog.decodeExtents(torn + older)?.extents
            #expect(decoded == [1, 2, 3] || decoded == [1, 2], "cut at \(cut): \(String(describing: decoded))")
        }
        var flipped = newer
        flipped[40] ^= 1
        #expect(ActivityLog.decodeExtents(flipped + older)?.extents == [1, 2], "a damaged record is passed over")
        #expect(ActivityLog.decodeExtents(flipped + flipped) == nil, "no whole record: corrupt")
        #expect(ActivityLog.decodeExtents([UInt8](repeating: 0, count: 2 * slot)) == nil)
    }

    @Test func firstFormatFiles_areStillRead() {
        var bytes = ActivityLog.firstFormatMagic
        for value: UInt64 in [1 << 20, 2, 4, 9] { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
        withUnsafeBytes(of: CRC32C.checksum(bytes).bigEndian) { bytes += $0 }
        #expect(ActivityLog.decodeExtents(bytes)?.extents == [4, 9])
    }

    @Test func overwrite_changesOnlyItsRange_andNeedsAnExistingFile() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/slots"
        try AtomicFile.replace(path: path, bytes: [UInt8](repeating: 1, count: 16))
        try DurableFile.overwrite(path: path, offset: 8, bytes: [2, 2])
        #expect(try AtomicFile.read(path: path) == [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1])
        #expect(throws: StorageError.self) { try DurableFile.overwrite(path: path + "-absent", offset: 0, bytes: [1]) }
    }
}

@Suite struct ModesFileTests {
    @Test("the mode file round-trips, and a torn or altered one is refused")
    func record() {
        let record = ModeRecord(mode: .config, peerCertifiedDown: true, failedStartup: "HA reset: x")
        let bytes = record.encoded()
        #expect(ModeRecord.decode(bytes) == record)
        #expect(ModeRecord.decode(ModeRecord().encoded()) == ModeRecord())
        for cut in [1, bytes.count / 2, bytes.count - 1] { #expect(ModeRecord.decode(Array(bytes.prefix(cut))) == nil) }
        var altered = bytes
        altered[20] ^= 0x01
        #expect(ModeRecord.decode(altered) == nil)
    }
}
