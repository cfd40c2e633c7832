import NIOCore

/// A frame a client sends to an NBD server.
public enum NBDClientMessage: Equatable, Sendable {
    /// The 32-bit client flags that follow the server's greeting.
    case clientFlags(rawValue: UInt32)
    /// An option during negotiation.
    case option(NBDOption)
    /// A command during transmission.
    case request(NBDRequest)
}

/// An option request: `IHAVEOPT`, the option type, and its data.
public struct NBDOption: Equatable, Sendable {
    /// The option type as sent, which may be one this server does not know.
    public var rawType: UInt32
    /// The option's data.
    public var data: ByteBuffer

    /// The known option type, if any.
    public var type: NBD.OptionType? { NBD.OptionType(rawValue: rawType) }

    /// Creates an option.
    public init(rawType: UInt32, data: ByteBuffer) {
        self.rawType = rawType
        self.data = data
    }
}

/// A transmission request; writes carry their payload.
public struct NBDRequest: Equatable, Sendable {
    /// Command flags as sent.
    public var flags: NBD.CommandFlags
    /// The command type as sent, which may be one this server does not know.
    public var rawType: UInt16
    /// The client's opaque handle, echoed in the reply.
    public var cookie: UInt64
    /// Byte offset into the export.
    public var offset: UInt64
    /// Byte length of the command.
    public var length: UInt32
    /// The data of a write.
    public var payload: NBDPayload?

    /// The known command type, if any.
    public var type: NBD.CommandType? { NBD.CommandType(rawValue: rawType) }

    /// Creates a request.
    public init(
        flags: NBD.CommandFlags, rawType: UInt16, cookie: UInt64, offset: UInt64, length: UInt32,
        payload: NBDPayload? = nil
    ) {
        self.flags = flags
        self.rawType = rawType
        self.cookie = cookie
        self.offset = offset
        self.length = length
        self.payload = payload
    }
}

/// The data of a write as it arrived: one or more slices of the receive buffers, never copied.
public struct NBDPayload: Equatable, Sendable {
    /// The slices in order.
    public private(set) var pieces: [ByteBuffer]
    /// Total bytes.
    public private(set) var count: Int

    /// A payload of one buffer.
    public init(_ buffer: ByteBuffer) {
        pieces = [buffer]
        count = buffer.readableBytes
    }

    init(pieces: [ByteBuffer]) {
        self.pieces = pieces
        count = pieces.reduce(0) { $0 + $1.readableBytes }
    }

    /// All bytes in one buffer (copies when the payload arrived in pieces).
    public var contiguous: ByteBuffer {
        guard pieces.count != 1 else { return pieces[0] }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(count)
        for piece in pieces { buffer.writeImmutableBuffer(piece) }
        return buffer
    }

    /// Payloads are equal when their bytes are, however they were split.
    public static func == (left: NBDPayload, right: NBDPayload) -> Bool {
        left.count == right.count && left.contiguous == right.contiguous
    }
}

/// Collects a payload of known length from whatever bytes arrive, as slices of the receive
/// buffers: a large write is never copied into one growing buffer.
struct PayloadCollector {
    private var pieces: [ByteBuffer] = []
    /// Bytes still to come.
    private(set) var bytesLeft: Int

    init(length: Int) {
        bytesLeft = length
    }

    /// Takes what `buffer` holds of the payload; returns the payload once its last byte is in.
    mutating func take(from buffer: inout ByteBuffer) -> NBDPayload? {
        let available = min(bytesLeft, buffer.readableBytes)
        if available > 0 {
            pieces.append(buffer.readSlice(length: available)!)
            bytesLeft -= available
        }
        guard bytesLeft == 0 else { return nil }
        return pieces.isEmpty ? NBDPayload(ByteBuffer()) : NBDPayload(pieces: pieces)
    }
}

/// Why a client's byte stream cannot be decoded; the connection is then closed.
public enum NBDWireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A frame did not start with `IHAVEOPT` or the request magic.
    case badMagic(UInt32)
    /// An option announced more data than any option may carry.
    case optionTooLong(type: UInt32, length: UInt32)
    /// A write announced a payload over the server's request-size limit.
    case writeTooLarge(length: UInt32, limit: Int)
    /// The connection ended in the middle of a frame.
    case truncatedFrame(bytesLeft: Int)

    /// A reason fit for the log.
    public var description: String {
        switch self {
        case .badMagic(let magic):
            return "frame starts with 0x\(String(magic, radix: 16)), which is neither an option nor a request"
        case .optionTooLong(let type, let length):
            return "option \(type) announces \(length) bytes of data (limit \(NBD.maximumOptionBytes))"
        case .writeTooLarge(let length, let limit):
            return "write of \(length) bytes exceeds the request limit of \(limit) bytes"
        case .truncatedFrame(let bytesLeft):
            return "connection closed in the middle of a frame (\(bytesLeft) bytes unread)"
        }
    }
}

/// Splits the client's byte stream into `NBDClientMessage`s.
///
/// The first 4 bytes are the client flags; after that every frame announces its kind by its magic,
/// so the decoder needs no knowledge of the negotiation phase: the server checks that an option or
/// a request arrived when it may. When more bytes are needed it returns `nil` without moving the
/// reader index, except inside a write's payload, which it takes as it arrives (see `NBDPayload`).
public struct NBDClientFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = NBDClientMessage

    private var awaitingClientFlags: Bool
    private let maximumWriteBytes: Int
    /// Asked before a READ or WRITE is taken off the stream, with the bytes it will hold (see
    /// `bufferCost`); when it answers false the request stays unread and decoding stops until the
    /// owner processes the stream again. A server bounds its memory this way before it decodes.
    public var admit: ((_ bytes: Int, _ isWrite: Bool) -> Bool)?
    /// A write whose header arrived and whose payload is still arriving.
    private var pendingWrite: PendingWrite?

    private struct PendingWrite {
        var request: NBDRequest
        var payload: PayloadCollector
    }

    /// Creates a decoder; `expectClientFlags` is false for a stream that starts after the greeting
    /// exchange (tests of one phase).
    public init(maximumWriteBytes: Int, expectClientFlags: Bool = true) {
        self.maximumWriteBytes = maximumWriteBytes
        self.awaitingClientFlags = expectClientFlags
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> NBDClientMessage? {
        if awaitingClientFlags {
            guard let flags = buffer.readInteger(as: UInt32.self) else { return nil }
            awaitingClientFlags = false
            return .clientFlags(rawValue: flags)
        }
        if pendingWrite != nil { return continueWrite(&buffer) }
        guard let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        switch magic {
        case UInt32(truncatingIfNeeded: NBD.optionMagic >> 32):
            return try decodeOption(&buffer)
        case NBD.requestMagic:
            return try decodeRequest(&buffer)
        default:
            throw NBDWireError.badMagic(magic)
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> NBDClientMessage? {
        if let message = try decode(buffer: &buffer) { return message }
        if let pending = pendingWrite { throw NBDWireError.truncatedFrame(bytesLeft: pending.payload.bytesLeft) }
        if buffer.readableBytes > 0 { throw NBDWireError.truncatedFrame(bytesLeft: buffer.readableBytes) }
        return nil
    }

    private func decodeOption(_ buffer: inout ByteBuffer) throws -> NBDClientMessage? {
        let start = buffer.readerIndex
        guard let (magic, type, length) = buffer.getMultipleIntegers(at: start, as: (UInt64, UInt32, UInt32).self)
        else { return nil }
        guard magic == NBD.optionMagic else { throw NBDWireError.badMagic(UInt32(truncatingIfNeeded: magic >> 32)) }
        guard length <= NBD.maximumOptionBytes else { throw NBDWireError.optionTooLong(type: type, length: length) }
        guard buffer.readableBytes >= 16 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        let data = buffer.readSlice(length: Int(length))!
        return .option(NBDOption(rawType: type, data: data))
    }

    private mutating func decodeRequest(_ buffer: inout ByteBuffer) throws -> NBDClientMessage? {
        let start = buffer.readerIndex
        guard
            let (_, flags, type, cookie, offset, length) = buffer.getMultipleIntegers(
                at: start, as: (UInt32, UInt16, UInt16, UInt64, UInt64, UInt32).self)
        else { return nil }
        let request = NBDRequest(
            flags: NBD.CommandFlags(rawValue: flags), rawType: type, cookie: cookie, offset: offset, length: length)
        let isWrite = type == NBD.CommandType.write.rawValue
        if isWrite, Int(length) > maximumWriteBytes {
            throw NBDWireError.writeTooLarge(length: length, limit: maximumWriteBytes)
        }
        let cost = Self.bufferCost(rawType: type, length: length, maximumRequestBytes: maximumWriteBytes)
        if cost > 0, let admit, !admit(cost, isWrite) { return nil }
        guard isWrite else {
            buffer.moveReaderIndex(forwardBy: 28)
            return .request(request)
        }
        buffer.moveReaderIndex(forwardBy: 28)
        // Take the payload as slices of whatever has arrived, so that a large write is never copied
        // into a growing buffer; the request is yielded once the last byte is in.
        pendingWrite = PendingWrite(request: request, payload: PayloadCollector(length: Int(length)))
        return continueWrite(&buffer)
    }

    /// The bytes a request holds in a server from the moment it is decoded until it is answered:
    /// a write's payload, a read's reply. Requests over the size limit hold nothing (they are
    /// refused), nor do commands without data.
    public static func bufferCost(rawType: UInt16, length: UInt32, maximumRequestBytes: Int) -> Int {
        guard Int(length) <= maximumRequestBytes else { return 0 }
        switch NBD.CommandType(rawValue: rawType) {
        case .read?, .write?: return Int(length)
        default: return 0
        }
    }

    private mutating func continueWrite(_ buffer: inout ByteBuffer) -> NBDClientMessage? {
        guard var pending = pendingWrite else { preconditionFailure("continueWrite without a pending write") }
        guard let payload = pending.payload.take(from: &buffer) else {
            pendingWrite = pending
            return nil
        }
        pendingWrite = nil
        pending.request.payload = payload
        return .request(pending.request)
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the information wanted.
public struct NBDExportInfoRequest: Equatable, Sendable {
    /// The export's name; empty means the default export.
    public var exportName: String
    /// The information types the client asked for.
    public var requestedInfo: [UInt16]

    /// Parses the option's data; `nil` when its lengths are inconsistent.
    public init?(parsing data: ByteBuffer) {
        var data = data
        guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= NBD.maximumStringBytes,
            let name = data.readString(length: Int(nameLength)),
            let count = data.readInteger(as: UInt16.self),
            data.readableBytes == Int(count) * 2
        else { return nil }
        exportName = name
        requestedInfo = (0..<count).map { _ in data.readInteger(as: UInt16.self)! }
    }

    /// Creates a request (used by clients and tests).
    public init(exportName: String, requestedInfo: [UInt16]) {
        self.exportName = exportName
        self.requestedInfo = requestedInfo
    }
}
