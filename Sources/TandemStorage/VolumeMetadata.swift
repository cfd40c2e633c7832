import SystemPackage
import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

/// The identity of a volume's data, kept in a metadata file beside the backing store.
public struct VolumeMetadata: Sendable, Equatable {
    /// The layout version this code writes; format 1 (no flags) is still read.
    public static let currentFormat: UInt32 = 2

    /// The volume's name in the config.
    public var volumeName: String
    /// A random identifier fixed when the volume was first created.
    public var volumeID: UInt128
    /// The volume's size in bytes.
    public var sizeBytes: UInt64
    /// Data-generation identifiers: which history this copy of the data belongs to.
    public var generations: Generations
    /// The copy is the target of an unfinished resync: partly old, partly new, never a source.
    public var inconsistent: Bool
    /// Quorum recorded that this copy lacks writes a primary acknowledged: it may not serve, nor
    /// survive a split brain, until a resync from the peer.
    public var outdated: Bool = false

    /// Creates metadata.
    public init(
        volumeName: String, volumeID: UInt128, sizeBytes: UInt64, generations: Generations, inconsistent: Bool = false,
        outdated: Bool = false
    ) {
        self.volumeName = volumeName
        self.volumeID = volumeID
        self.sizeBytes = sizeBytes
        self.generations = generations
        self.inconsistent = inconsistent
        self.outdated = outdated
    }

    /// Data-generation identifiers (current, bitmap, history), as DRBD keeps them.
    public struct Generations: Sendable, Equatable {
        /// The generation of the data as it is now.
        public var current: UInt64
        /// The generation when the write-intent bitmap started tracking (0 when not tracking).
        public var bitmap: UInt64
        /// The two generations before `current`, newest first.
        public var history: (UInt64, UInt64)

        /// Creates generations.
        public init(current: UInt64, bitmap: UInt64 = 0, history: (UInt64, UInt64) = (0, 0)) {
            self.current = current
            self.bitmap = bitmap
            self.history = history
        }

        public static func == (left: Generations, right: Generations) -> Bool {
            left.current == right.current && left.bitmap == right.bitmap && left.history == right.history
        }
    }
}

/// Why a metadata file was refused.
public enum MetadataError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file is shorter or longer than its header says, or has a bad checksum: never trusted.
    case corrupt(path: String, reason: String)
    /// The file was written by a newer Tandem.
    case unsupportedFormat(path: String, format: UInt32)
    /// The file or its directory could not be read or written.
    case storage(StorageError)

    /// A message for the administrator.
    public var description: String {
        switch self {
        case .corrupt(let path, let reason):
            return "metadata file \(path) is torn or corrupt (\(reason)); refusing to use it. "
                + "Move it aside to re-create the volume's identity, which makes the next connection a full resync"
        case .unsupportedFormat(let path, let format):
            return
                "metadata file \(path) has format \(format); this Tandem reads format \(VolumeMetadata.currentFormat)"
        case .storage(let error):
            return error.description
        }
    }
}

/// Reads and atomically replaces metadata files.
///
/// Layout (big-endian): `TNDMMETA` magic, format (4), payload length (4), payload, CRC-32C (4) of
/// everything before it. A file whose length, magic or checksum disagrees is refused.
public enum MetadataFile {
    private static let magic = Array("TNDMMETA".utf8)

    /// Reads `path`; `nil` when it does not exist.
    public static func load(path: String) throws(MetadataError) -> VolumeMetadata? {
        guard let bytes = try AtomicFile.read(path: path) else { return nil }
        return try decode(bytes, path: path)
    }

    /// Replaces `path` with `metadata`: write a temporary file, fsync it, rename it over `path`,
    /// fsync the directory. A crash leaves either the old or the new file, never a mix.
    public static func store(_ metadata: VolumeMetadata, path: String) throws(MetadataError) {
        try AtomicFile.replace(path: path, bytes: encode(metadata))
    }

    /// The bytes of the file for `metadata`.
    public static func encode(_ metadata: VolumeMetadata) -> [UInt8] {
        var payload: [UInt8] = []
        let name = Array(metadata.volumeName.utf8)
        append(UInt32(name.count), to: &payload)
        payload += name
        append(UInt64(truncatingIfNeeded: metadata.volumeID >> 64), to: &payload)
        append(UInt64(truncatingIfNeeded: metadata.volumeID), to: &payload)
        append(metadata.sizeBytes, to: &payload)
        append(metadata.generations.current, to: &payload)
        append(metadata.generations.bitmap, to: &payload)
        append(metadata.generations.history.0, to: &payload)
        append(metadata.generations.history.1, to: &payload)
        append(UInt64((metadata.inconsistent ? 1 : 0) | (metadata.outdated ? 2 : 0)), to: &payload)
        var bytes = magic
        append(VolumeMetadata.currentFormat, to: &bytes)
        append(UInt32(payload.count), to: &bytes)
        bytes += payload
        append(CRC32C.checksum(bytes), to: &bytes)
        return bytes
    }

    /// Parses and checks the bytes of a metadata file.
    public static func decode(_ bytes: [UInt8], path: String) throws(MetadataError) -> VolumeMetadata {
        guard bytes.count >= 20 else { throw .corrupt(path: path, reason: "only \(bytes.count) bytes long") }
        guard Array(bytes[0..<8]) == magic else { throw .corrupt(path: path, reason: "no Tandem metadata header") }
        var reader = ByteReader(bytes: bytes, index: 8)
        let format = reader.uint32()!
        let payloadLength = Int(reader.uint32()!)
        guard bytes.count == 16 + payloadLength + 4 else {
            throw .corrupt(
                path: path, reason: "\(bytes.count) bytes long, the header announces \(16 + payloadLength + 4)")
        }
        let stored = ByteReader(bytes: bytes, index: bytes.count - 4).peekUInt32()!
        let computed = CRC32C.checksum(bytes[0..<(bytes.count - 4)])
        guard stored == computed else {
            let hex = { (value: UInt32) in "0x" + String(value, radix: 16) }
            throw .corrupt(path: path, reason: "checksum \(hex(stored)) stored, \(hex(computed)) computed")
        }
        guard format == 1 || format == VolumeMetadata.currentFormat else {
            throw .unsupportedFormat(path: path, format: format)
        }
        guard let nameLength = reader.uint32(), let name = reader.bytes(Int(nameLength)),
            let idHigh = reader.uint64(), let idLow = reader.uint64(), let size = reader.uint64(),
            let current = reader.uint64(), let bitmap = reader.uint64(),
            let history0 = reader.uint64(), let history1 = reader.uint64()
        else { throw .corrupt(path: path, reason: "payload shorter than its fields") }
        var flags: UInt64 = 0
        if format >= 2 {
            guard let stored = reader.uint64() else {
                throw .corrupt(path: path, reason: "payload shorter than its fields")
            }
            flags = stored
        }
        return VolumeMetadata(
            volumeName: String(decoding: name, as: UTF8.self),
            volumeID: UInt128(idHigh) << 64 | UInt128(idLow),
            sizeBytes: size,
            generations: .init(current: current, bitmap: bitmap, history: (history0, history1)),
            inconsistent: flags & 1 != 0, outdated: flags & 2 != 0
        )
    }

    private static func append<Integer: FixedWidthInteger>(_ value: Integer, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
    }
}

/// Reads big-endian integers from a byte array.
struct ByteReader {
    let bytes: [UInt8]
    var index: Int

    func peekUInt32() -> UInt32? {
        guard index + 4 <= bytes.count else { return nil }
        return bytes[index..<index + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func uint32() -> UInt32? {
        defer { index += 4 }
        return peekUInt32()
    }

    mutating func uint64() -> UInt64? {
        guard index + 8 <= bytes.count else { return nil }
        defer { index += 8 }
        return bytes[index..<index + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func bytes(_ count: Int) -> [UInt8]? {
        guard index + count <= bytes.count else { return nil }
        defer { index += count }
        return Array(bytes[index..<index + count])
    }
}

/// Small files replaced atomically: write a temporary file, fsync it, rename it over the target,
/// fsync the directory. A crash leaves the old file or the new one, never a mix.
public enum AtomicFile {
    /// Replaces `path` with `bytes`.
    public static func replace(path: String, bytes: [UInt8]) throws(MetadataError) {
        let temporary = path + ".tmp"
        do {
            let descriptor = try FileDescriptor.open(
                FilePath(temporary), .writeOnly, options: [.create, .truncate, .closeOnExec],
                permissions: [.ownerReadWrite])
            do {
                _ = try descriptor.writeAll(bytes)
                guard fsync(descriptor.rawValue) == 0 else { throw Errno(rawValue: errno) }
                try descriptor.close()
            } catch {
                try? descriptor.close()
                throw error
            }
        } catch {
            throw .storage(StorageError(path: temporary, operation: "write", reason: String(describing: error)))
        }
        guard rename(temporary, path) == 0 else {
            throw .storage(StorageError(path: path, operation: "rename", errno: Errno(rawValue: errno)))
        }
        do {
            try fsyncDirectory(of: path)
        } catch {
            throw .storage(error)
        }
    }

    /// The whole file (at most 64 MiB), or `nil` when it does not exist.
    public static func read(path: String) throws(MetadataError) -> [UInt8]? {
        guard access(path, F_OK) == 0 else { return nil }
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            defer { try? descriptor.close() }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = try chunk.withUnsafeMutableBytes { try descriptor.read(into: $0) }
                if count == 0 { return bytes }
                bytes += chunk[0..<count]
                guard bytes.count <= 64 << 20 else {
                    throw MetadataError.corrupt(path: path, reason: "over 64 MiB long")
                }
            }
        } catch let error as MetadataError {
            throw error
        } catch {
            throw .storage(StorageError(path: path, operation: "read", reason: String(describing: error)))
        }
    }
}

/// Small files written in place: not atomic, so the caller's format must survive a torn write.
public enum DurableFile {
    /// Overwrites `bytes.count` bytes of the existing file at `path` from `offset`, then
    /// `fdatasync`s it.
    public static func overwrite(path: String, offset: Int64, bytes: [UInt8]) throws(StorageError) {
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.closeOnExec])
            defer { try? descriptor.close() }
            _ = try descriptor.writeAll(toAbsoluteOffset: offset, bytes)
            guard fdatasync(descriptor.rawValue) == 0 else { throw Errno(rawValue: errno) }
        } catch {
            throw StorageError(path: path, operation: "overwrite", reason: String(describing: error))
        }
    }
}
