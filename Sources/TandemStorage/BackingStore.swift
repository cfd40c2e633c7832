import CTandemLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A failed storage operation, with the path and the operating system's reason.
public struct StorageError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file or device.
    public var path: String
    /// What was being done (`pwrite`, `fdatasync`, `open`, …).
    public var operation: String
    /// The reason.
    public var reason: String
    /// The errno, when the failure came from the operating system.
    public var errno: Errno?

    /// Creates an error.
    public init(path: String, operation: String, reason: String, errno: Errno? = nil) {
        self.path = path
        self.operation = operation
        self.reason = reason
        self.errno = errno
    }

    init(path: String, operation: String, errno: Errno) {
        self.init(path: path, operation: operation, reason: String(describing: errno), errno: errno)
    }

    /// `open /path: No such file or directory`.
    public var description: String { "\(operation) \(path): \(reason)" }
}

/// The bytes of a volume on this node: a regular file or a block device, read and written with
/// `pread`/`pwrite`, made durable with `fdatasync`.
///
/// Every method may be called from any thread at once: the descriptor never changes and the
/// kernel serialises overlapping writes.
public final class BackingStore: Sendable {
    /// The file or device.
    public let path: String
    /// The size exported, in bytes.
    public let sizeBytes: UInt64
    /// Whether `path` is a block device rather than a regular file.
    public let isBlockDevice: Bool
    /// Whether writes are refused.
    public let isReadOnly: Bool
    private let descriptor: FileDescriptor

    private init(path: String, sizeBytes: UInt64, isBlockDevice: Bool, isReadOnly: Bool, descriptor: FileDescriptor) {
        self.path = path
        self.sizeBytes = sizeBytes
        self.isBlockDevice = isBlockDevice
        self.isReadOnly = isReadOnly
        self.descriptor = descriptor
    }

    deinit {
        try? descriptor.close()
    }

    /// A new descriptor for the same open file (`dup`), owned by the caller: for sending the
    /// file's bytes to a socket (`sendfile`). Close-on-exec is set.
    public func duplicateDescriptor() throws(StorageError) -> CInt {
        let copy = fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw StorageError(path: path, operation: "dup", errno: Errno(rawValue: errno)) }
        return copy
    }

    /// Whether `path` names an existing block device.
    public static func isBlockDevice(path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFBLK
    }

    /// Opens the backing store at `path`.
    ///
    /// A missing regular file is created with `sizeBytes` when `create` is true (first use). An
    /// existing file must be exactly `sizeBytes` long: Tandem never truncates data on its own. A block
    /// device must be at least `sizeBytes` long; `nil` takes the whole device or file.
    public static func open(
        path: String, sizeBytes: UInt64?, create: Bool, readOnly: Bool
    ) throws(StorageError) -> BackingStore {
        let exists = access(path, F_OK) == 0
        if !exists {
            guard create else { throw StorageError(path: path, operation: "open", reason: "does not exist") }
            guard let sizeBytes else {
                throw StorageError(
                    path: path, operation: "create", reason: "does not exist and the config sets no size")
            }
            try createFile(path: path, sizeBytes: sizeBytes)
        }
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(
                FilePath(path), readOnly ? .readOnly : .readWrite, options: [.closeOnExec])
        } catch {
            throw StorageError(path: path, operation: "open", reason: String(describing: error))
        }
        do throws(StorageError) {
            let (actualBytes, isBlock) = try measure(descriptor, path: path)
            let exported = sizeBytes ?? actualBytes
            if isBlock ? actualBytes < exported : actualBytes != exported {
                throw StorageError(
                    path: path, operation: "open",
                    reason: "is \(actualBytes) bytes but the volume is \(exported) bytes; "
                        + "Tandem does not resize backing storage on its own")
            }
            return BackingStore(
                path: path, sizeBytes: exported, isBlockDevice: isBlock, isReadOnly: readOnly, descriptor: descriptor)
        } catch {
            try? descriptor.close()
            throw error
        }
    }

    private static func createFile(path: String, sizeBytes: UInt64) throws(StorageError) {
        do {
            let created = try FileDescriptor.open(
                FilePath(path), .readWrite, options: [.create, .exclusiveCreate, .closeOnExec],
                permissions: [.ownerReadWrite])
            defer { try? created.close() }
            guard ftruncate(created.rawValue, off_t(sizeBytes)) == 0 else {
                throw StorageError(path: path, operation: "ftruncate", errno: Errno(rawValue: Glibc.errno))
            }
            guard fsync(created.rawValue) == 0 else {
                throw StorageError(path: path, operation: "fsync", errno: Errno(rawValue: Glibc.errno))
            }
        } catch let error as StorageError {
            throw error
        } catch {
            throw StorageError(path: path, operation: "create", reason: String(describing: error))
        }
        try fsyncDirectory(of: path)
    }

    private static func measure(_ descriptor: FileDescriptor, path: String) throws(StorageError) -> (UInt64, Bool) {
        var info = stat()
        guard fstat(descriptor.rawValue, &info) == 0 else {
            throw StorageError(path: path, operation: "fstat", errno: Errno(rawValue: Glibc.errno))
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            return (UInt64(info.st_size), false)
        case S_IFBLK:
            var bytes: UInt64 = 0
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            guard ioctl(descriptor.rawValue, 0x8008_1272, &bytes) == 0 else {
                throw StorageError(path: path, operation: "ioctl(BLKGETSIZE64)", errno: Errno(rawValue: Glibc.errno))
            }
            return (bytes, true)
        default:
            throw StorageError(path: path, operation: "open", reason: "is neither a regular file nor a block device")
        }
    }

    // MARK: I/O

    /// Fills `buffer` from `offset`; the range must lie inside the volume.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(StorageError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "read past the end of \(path)")
        var done = 0
        while done < buffer.count {
            let count = pread(
                descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if Glibc.errno == EINTR { continue }
                throw StorageError(path: path, operation: "pread", errno: Errno(rawValue: Glibc.errno))
            }
            if count == 0 {
                // A regular file shorter than its volume size reads as zeroes past its end.
                UnsafeMutableRawBufferPointer(rebasing: buffer[done...]).initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            done += count
        }
    }

    /// Reads from `offset` only what the page cache holds, without waiting for the device: returns
    /// how many leading bytes of `buffer` were filled (0 when the first byte is not cached, or when
    /// the file cannot say). The caller reads the rest with `read(into:at:)` where it may block.
    public func readCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Int {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "read past the end of \(path)")
        var done = 0
        while done < buffer.count {
            let count = ctandem_pread_cached(
                descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if count < 0, Glibc.errno == EINTR { continue }
            guard count > 0 else { break }
            done += count
        }
        return done
    }

    /// Writes `bytes` at `offset`; the range must lie inside the volume. Not durable until `flush()`.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(StorageError) {
        precondition(!isReadOnly, "write to read-only backing store \(path)")
        precondition(offset + UInt64(bytes.count) <= sizeBytes, "write past the end of \(path)")
        var done = 0
        while done < bytes.count {
            let count = pwrite(
                descriptor.rawValue, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if Glibc.errno == EINTR { continue }
                throw StorageError(path: path, operation: "pwrite", errno: Errno(rawValue: Glibc.errno))
            }
            done += count
        }
    }

    /// Makes every completed write durable (`fdatasync`).
    public func flush() throws(StorageError) {
        while fdatasync(descriptor.rawValue) != 0 {
            if Glibc.errno == EINTR { continue }
            throw StorageError(path: path, operation: "fdatasync", errno: Errno(rawValue: Glibc.errno))
        }
    }

    /// Drops a range's clean pages from the page cache and starts writing back its dirty ones.
    ///
    /// For what a resync or verify read or wrote in bulk: the kernel caches a file read ahead, or
    /// written in large pieces, in large folios, and every later 4 KiB write into such a folio walks
    /// all its blocks (on Linux 6.18 with ext4, a copy just fully synced took 4 KiB random writes at
    /// half the rate of a cold one). It is advice: nothing is lost, and a failure changes nothing.
    public func dropCachedPages(in range: Range<UInt64>) {
        guard !range.isEmpty else { return }
        _ = posix_fadvise(
            descriptor.rawValue, off_t(range.lowerBound), off_t(range.count), POSIX_FADV_DONTNEED)
    }

    /// Discards a range. Where the file system cannot punch holes the range is left as it is,
    /// which the NBD protocol allows: a trimmed range's contents are unspecified.
    public func trim(offset: UInt64, length: UInt64) throws(StorageError) {
        precondition(offset + length <= sizeBytes, "trim past the end of \(path)")
        guard length > 0 else { return }
        let mode = CTANDEM_FALLOC_PUNCH_HOLE | CTANDEM_FALLOC_KEEP_SIZE
        if ctandem_fallocate(descriptor.rawValue, mode, off_t(offset), off_t(length)) != 0 {
            let error = Glibc.errno
            guard error == EOPNOTSUPP || error == ENOSYS else {
                throw StorageError(path: path, operation: "fallocate(PUNCH_HOLE)", errno: Errno(rawValue: error))
            }
        }
    }

    /// Makes a range read back as zeroes: by punching a hole when `mayDeallocate`, else by
    /// `CTANDEM_FALLOC_ZERO_RANGE`, else by writing zeroes.
    public func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool) throws(StorageError) {
        precondition(!isReadOnly, "write to read-only backing store \(path)")
        precondition(offset + length <= sizeBytes, "write past the end of \(path)")
        guard length > 0 else { return }
        let modes =
            mayDeallocate
            ? [
                CTANDEM_FALLOC_PUNCH_HOLE | CTANDEM_FALLOC_KEEP_SIZE,
                CTANDEM_FALLOC_ZERO_RANGE | CTANDEM_FALLOC_KEEP_SIZE,
            ]
            : [CTANDEM_FALLOC_ZERO_RANGE | CTANDEM_FALLOC_KEEP_SIZE]
        for mode in modes where ctandem_fallocate(descriptor.rawValue, mode, off_t(offset), off_t(length)) == 0 {
            return
        }
        let chunkBytes = 1 << 20
        let zeroes = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkBytes, alignment: 4096)
        defer { zeroes.deallocate() }
        zeroes.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let count = Int(min(UInt64(chunkBytes), length - done))
            try write(UnsafeRawBufferPointer(rebasing: zeroes[..<count]), at: offset + done)
            done += UInt64(count)
        }
    }
}

/// Makes a rename or creation in `path`'s directory durable.
func fsyncDirectory(of path: String) throws(StorageError) {
    let directory = FilePath(path).removingLastComponent()
    let directoryPath = directory.isEmpty ? "." : directory.string
    let descriptor = Glibc.open(directoryPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard descriptor >= 0 else {
        throw StorageError(path: directoryPath, operation: "open directory", errno: Errno(rawValue: Glibc.errno))
    }
    defer { Glibc.close(descriptor) }
    guard fsync(descriptor) == 0 else {
        throw StorageError(path: directoryPath, operation: "fsync directory", errno: Errno(rawValue: Glibc.errno))
    }
}
