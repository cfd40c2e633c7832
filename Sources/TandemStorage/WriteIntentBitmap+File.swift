import TandemCore

/// The bitmap's file: magic, region size, volume size, words, CRC-32C.
extension WriteIntentBitmap {
    private static let magic = Array("TNDMBMAP".utf8)

    /// The file's bytes: magic, region size, volume size, words, CRC-32C.
    public func encoded() -> [UInt8] {
        var bytes = Self.magic
        for value in [regionBytes, volumeBytes] + words {
            withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
        }
        withUnsafeBytes(of: CRC32C.checksum(bytes).bigEndian) { bytes += $0 }
        return bytes
    }

    /// Parses a bitmap file; `nil` when it is torn, corrupt or of another shape.
    public static func decode(_ bytes: [UInt8], volumeBytes: UInt64) -> WriteIntentBitmap? {
        guard bytes.count >= 28, Array(bytes[0..<8]) == magic else { return nil }
        var reader = ByteReader(bytes: bytes, index: bytes.count - 4)
        guard reader.peekUInt32() == CRC32C.checksum(bytes[0..<(bytes.count - 4)]) else { return nil }
        reader.index = 8
        guard let regionBytes = reader.uint64(), let storedVolumeBytes = reader.uint64(),
            storedVolumeBytes == volumeBytes, regionBytes > 0, regionBytes & (regionBytes - 1) == 0
        else { return nil }
        guard (bytes.count - 28) % 8 == 0 else { return nil }
        let words = (0..<(bytes.count - 28) / 8).map { _ in reader.uint64()! }
        return WriteIntentBitmap(volumeBytes: volumeBytes, regionBytes: regionBytes, words: words)
    }

    /// Replaces the file at `path` atomically.
    public func store(path: String) throws(MetadataError) {
        try AtomicFile.replace(path: path, bytes: encoded())
    }

    /// Reads the file at `path`: `nil` if absent; a torn or corrupt file is an error, never a clean bitmap.
    public static func load(path: String, volumeBytes: UInt64) throws(MetadataError) -> WriteIntentBitmap? {
        guard let bytes = try AtomicFile.read(path: path) else { return nil }
        guard let bitmap = decode(bytes, volumeBytes: volumeBytes) else {
            throw .corrupt(path: path, reason: "bitmap does not parse or its checksum is wrong")
        }
        return bitmap
    }
}
