import NIOCore
import TandemCore

/// Frames of the peer link between two agents.
///
/// Every frame is a 12-byte header (magic `TNDP`, type, three reserved bytes, body length) and a
/// body. Integers are big-endian, strings are a 16-bit length and UTF-8 bytes. A frame that does
/// not parse closes the connection; the agent reconnects.
public enum PeerFrame: Equatable, Sendable {
    /// First frame from each side: who it is, and a fresh nonce to authenticate against.
    case hello(PeerHello)
    /// HMAC-SHA256 over both nonces and the sender's name, keyed by the cluster secret.
    case authenticate(proof: [UInt8])
    /// The acceptor verified the dialer: the link is up.
    case welcome
    /// A volume's state as its sender sees it; sent after `welcome` and whenever it changes.
    case volumeState(PeerVolumeState)
    /// A replicated write from the primary.
    case data(PeerWrite)
    /// The peer's answer to `data`, `flush` or `resyncData`.
    case ack(PeerAck)
    /// Make every write received so far durable, then acknowledge.
    case flush(volume: UInt16, sequence: UInt64)
    /// A block of a resync, from source to target.
    case resyncData(PeerWrite)
    /// The source has sent every block; the target adopts the source's generations.
    case resyncDone(volume: UInt16, generations: [UInt64])
    /// Keep-alive; the other side answers `pong` with the same value.
    case ping(UInt64)
    /// Answer to `ping`.
    case pong(UInt64)
    /// The sender's write-intent bitmap file for a volume, so that the two can be united.
    case bitmap(volume: UInt16, bytes: [UInt8])
    /// Online verify: the digest of one region on the sender.
    case verifyRequest(PeerVerify)
    /// Whether the receiver's region has the same digest.
    case verifyReply(volume: UInt16, sequence: UInt64, equal: Bool)
    /// A cluster-wide document the nodes keep alike (kind 1: the management API's token list),
    /// sent when the link comes up and whenever it changes.
    case document(kind: UInt8, bytes: [UInt8])

    /// The write a `data` or `resyncData` frame carries.
    public var write: PeerWrite? {
        switch self {
        case .data(let write), .resyncData(let write): return write
        default: return nil
        }
    }

    /// This `data` or `resyncData` frame with `payload` in place of its own.
    public func replacingPayload(with payload: NBDPayload) -> PeerFrame {
        switch self {
        case .data(var write):
            write.payload = payload
            return .data(write)
        case .resyncData(var write):
            write.payload = payload
            return .resyncData(write)
        default:
            return self
        }
    }

    /// The frame type byte.
    var typeCode: UInt8 {
        switch self {
        case .hello: return 1
        case .authenticate: return 2
        case .welcome: return 3
        case .volumeState: return 4
        case .data: return 5
        case .ack: return 6
        case .flush: return 7
        case .resyncData: return 8
        case .resyncDone: return 9
        case .ping: return 10
        case .pong: return 11
        case .bitmap: return 12
        case .verifyRequest: return 13
        case .verifyReply: return 14
        case .document: return 15
        }
    }
}

/// The `hello` frame.
public struct PeerHello: Equatable, Sendable {
    /// The peer-protocol version this build speaks.
    public static let currentVersion: UInt16 = 3

    public var version: UInt16
    public var clusterName: String
    public var nodeName: String
    /// 32 random bytes.
    public var nonce: [UInt8]

    public init(version: UInt16 = currentVersion, clusterName: String, nodeName: String, nonce: [UInt8]) {
        self.version = version
        self.clusterName = clusterName
        self.nodeName = nodeName
        self.nonce = nonce
    }
}

/// A volume's state in a `volumeState` frame.
public struct PeerVolumeState: Equatable, Sendable {
    /// The volume's index in the config (both nodes share the config).
    public var volume: UInt16
    public var name: String
    public var sizeBytes: UInt64
    /// current, bitmap, history0, history1.
    public var generations: [UInt64]
    /// The sender's role (code 0 secondary, 1 primary on the wire).
    public var role: VolumeRole
    /// The sender's disk state (code 0 upToDate, 1 inconsistent, 2 outdated on the wire).
    public var diskState: DiskState
    /// Bytes marked in the sender's write-intent bitmap.
    public var outOfSyncBytes: UInt64
    /// The sender's promotion epoch.
    public var epoch: UInt64
    /// The replication protocol the sender's config names for the volume ("A", "B" or "C").
    public var replicationProtocol: String

    public init(
        volume: UInt16, name: String, sizeBytes: UInt64, generations: [UInt64], role: VolumeRole, diskState: DiskState,
        outOfSyncBytes: UInt64, epoch: UInt64, replicationProtocol: String
    ) {
        self.replicationProtocol = replicationProtocol
        self.volume = volume
        self.name = name
        self.sizeBytes = sizeBytes
        self.generations = generations
        self.role = role
        self.diskState = diskState
        self.outOfSyncBytes = outOfSyncBytes
        self.epoch = epoch
    }
}

/// A replicated or resync write.
public struct PeerWrite: Equatable, Sendable {
    public var volume: UInt16
    public var sequence: UInt64
    /// The sender's epoch: a receiver refuses writes from an older one.
    public var epoch: UInt64
    public var offset: UInt64
    /// Bit 0: FUA (durable before the written acknowledgement).
    public var flags: UInt8
    public var payload: NBDPayload

    public init(volume: UInt16, sequence: UInt64, epoch: UInt64, offset: UInt64, flags: UInt8, payload: NBDPayload) {
        self.volume = volume
        self.sequence = sequence
        self.epoch = epoch
        self.offset = offset
        self.flags = flags
        self.payload = payload
    }
}

/// One region's digest for online verify: only digests cross the network.
public struct PeerVerify: Equatable, Sendable {
    public var volume: UInt16
    public var sequence: UInt64
    public var offset: UInt64
    public var length: UInt32
    public var digest: [UInt8]

    public init(volume: UInt16, sequence: UInt64, offset: UInt64, length: UInt32, digest: [UInt8]) {
        self.volume = volume
        self.sequence = sequence
        self.offset = offset
        self.length = length
        self.digest = digest
    }
}

/// An acknowledgement.
public struct PeerAck: Equatable, Sendable {
    /// What is acknowledged.
    public typealias Kind = PeerAckKind

    public var volume: UInt16
    public var sequence: UInt64
    public var kind: Kind

    public init(volume: UInt16, sequence: UInt64, kind: Kind) {
        self.volume = volume
        self.sequence = sequence
        self.kind = kind
    }
}

/// Why a peer frame could not be decoded.
public enum PeerWireError: Error, Equatable, Sendable, CustomStringConvertible {
    case badMagic(UInt32)
    case unknownType(UInt8)
    case frameTooLarge(length: UInt32, limit: Int)
    case malformedBody(type: UInt8)
    case truncatedFrame(bytesLeft: Int)

    public var description: String {
        switch self {
        case .badMagic(let magic): return "peer frame starts with 0x\(String(magic, radix: 16)), not TNDP"
        case .unknownType(let type): return "unknown peer frame type \(type)"
        case .frameTooLarge(let length, let limit): return "peer frame of \(length) bytes exceeds \(limit)"
        case .malformedBody(let type): return "malformed body in peer frame type \(type)"
        case .truncatedFrame(let left): return "peer connection closed in the middle of a frame (\(left) bytes)"
        }
    }
}

/// Peer-frame encoding.
public enum PeerCodec {
    /// `TNDP`.
    public static let magic: UInt32 = 0x544E_4450
    /// Header bytes before the body.
    public static let headerBytes = 12

    /// Encodes `frame` as buffers to write in order; write payloads are passed through, not copied.
    public static func encode(_ frame: PeerFrame, allocator: ByteBufferAllocator = ByteBufferAllocator())
        -> [ByteBuffer]
    {
        var buffer = allocator.buffer(capacity: 64)
        let trailing = encode(frame, appendingTo: &buffer)
        return [buffer] + trailing
    }

    /// Appends `frame`'s header and body to `buffer` and returns the write payload's pieces, which
    /// must follow in the stream (passed through, not copied). Many frames can share one buffer,
    /// and so one write.
    public static func encode(_ frame: PeerFrame, appendingTo buffer: inout ByteBuffer) -> [ByteBuffer] {
        let trailing = frame.write?.payload.pieces ?? []
        appendFrame(frame, to: &buffer, trailingBytes: trailing.reduce(0) { $0 + $1.readableBytes })
        return trailing
    }

    /// Encodes a `data` or `resyncData` frame without its payload: the caller sends the
    /// `payloadBytes` bytes (taken from elsewhere, such as the local copy) right after it. The
    /// write's own payload is ignored.
    public static func encodeHead(
        of frame: PeerFrame, payloadBytes: Int, allocator: ByteBufferAllocator = ByteBufferAllocator()
    )
        -> ByteBuffer
    {
        var buffer = allocator.buffer(capacity: 64)
        encodeHead(of: frame, payloadBytes: payloadBytes, appendingTo: &buffer)
        return buffer
    }

    /// `encodeHead(of:payloadBytes:allocator:)`, appended to `buffer`.
    public static func encodeHead(of frame: PeerFrame, payloadBytes: Int, appendingTo buffer: inout ByteBuffer) {
        guard frame.write != nil else {
            preconditionFailure("only write frames have a payload to send apart: \(frame)")
        }
        appendFrame(frame, to: &buffer, trailingBytes: payloadBytes)
    }

    /// The header, then the body; the header's length counts the body and `trailingBytes`.
    private static func appendFrame(_ frame: PeerFrame, to buffer: inout ByteBuffer, trailingBytes: Int) {
        let start = buffer.writerIndex
        buffer.writeMultipleIntegers(magic, frame.typeCode, UInt8(0), UInt16(0), UInt32(0))
        switch frame {
        case .hello(let hello):
            buffer.writeInteger(hello.version)
            buffer.writePeerString(hello.clusterName)
            buffer.writePeerString(hello.nodeName)
            buffer.writePeerBytes(hello.nonce)
        case .authenticate(let proof):
            buffer.writePeerBytes(proof)
        case .welcome:
            break
        case .volumeState(let state):
            buffer.writeInteger(state.volume)
            buffer.writePeerString(state.name)
            buffer.writeInteger(state.sizeBytes)
            buffer.writeInteger(UInt8(state.generations.count))
            for generation in state.generations { buffer.writeInteger(generation) }
            buffer.writeMultipleIntegers(
                state.role.wireCode, state.diskState.wireCode, state.outOfSyncBytes, state.epoch)
            buffer.writePeerString(state.replicationProtocol)
        case .data(let write), .resyncData(let write):
            buffer.writeMultipleIntegers(write.volume, write.sequence, write.epoch, write.offset, write.flags)
        case .ack(let ack):
            buffer.writeMultipleIntegers(ack.volume, ack.sequence, ack.kind.rawValue)
        case .flush(let volume, let sequence):
            buffer.writeMultipleIntegers(volume, sequence)
        case .resyncDone(let volume, let generations):
            buffer.writeInteger(volume)
            buffer.writeInteger(UInt8(generations.count))
            for generation in generations { buffer.writeInteger(generation) }
        case .ping(let value), .pong(let value):
            buffer.writeInteger(value)
        case .bitmap(let volume, let bytes):
            buffer.writeInteger(volume)
            buffer.writeInteger(UInt32(bytes.count))
            buffer.writeBytes(bytes)
        case .verifyRequest(let verify):
            buffer.writeMultipleIntegers(verify.volume, verify.sequence, verify.offset, verify.length)
            buffer.writePeerBytes(verify.digest)
        case .verifyReply(let volume, let sequence, let equal):
            buffer.writeMultipleIntegers(volume, sequence, UInt8(equal ? 1 : 0))
        case .document(let kind, let bytes):
            buffer.writeInteger(kind)
            buffer.writeInteger(UInt32(bytes.count))
            buffer.writeBytes(bytes)
        }
        let bodyBytes = buffer.writerIndex - start - headerBytes
        buffer.setInteger(UInt32(bodyBytes + trailingBytes), at: start + 8)
    }
}

/// The largest frame body a peer connection accepts now. A connection starts at the handshake's
/// size and its handler raises it once the peer has proved it holds the cluster secret, so a host
/// that merely reaches the port can make the node buffer no more than a few kilobytes.
public final class PeerFrameLimit {
    /// Bytes of the largest body accepted.
    public var maximumBodyBytes: Int

    /// Handshake frames (names, a nonce, a proof) fit in this many bytes.
    public static let handshakeBytes = 16 << 10

    /// Creates a limit.
    public init(bytes: Int) {
        self.maximumBodyBytes = bytes
    }
}

/// Splits the peer byte stream into frames. Returns `nil` without moving the reader index when a
/// frame is incomplete.
public struct PeerFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = PeerFrame

    private let limit: PeerFrameLimit
    private var maximumBodyBytes: Int { limit.maximumBodyBytes }
    /// A write whose fields arrived and whose payload is still arriving.
    private var pending: PendingWrite?

    private struct PendingWrite {
        var type: UInt8
        var write: PeerWrite
        var payload: PayloadCollector
    }

    /// Bytes of a write frame's body before its payload: volume, sequence, epoch, offset, flags.
    private static let writeFieldBytes = 2 + 8 + 8 + 8 + 1

    /// `maximumBodyBytes` bounds every frame (the largest write plus its header fields).
    public init(maximumBodyBytes: Int) {
        self.limit = PeerFrameLimit(bytes: maximumBodyBytes)
    }

    /// A decoder whose limit its owner may change between frames.
    public init(limit: PeerFrameLimit) {
        self.limit = limit
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> PeerFrame? {
        if pending != nil { return continueWrite(&buffer) }
        guard
            let (magic, type, _, _, length) = buffer.getMultipleIntegers(
                at: buffer.readerIndex, as: (UInt32, UInt8, UInt8, UInt16, UInt32).self)
        else { return nil }
        guard magic == PeerCodec.magic else { throw PeerWireError.badMagic(magic) }
        guard Int(length) <= maximumBodyBytes else {
            throw PeerWireError.frameTooLarge(length: length, limit: maximumBodyBytes)
        }
        if type == 5 || type == 8 { return try startWrite(type: type, length: Int(length), &buffer) }
        guard buffer.readableBytes >= PeerCodec.headerBytes + Int(length) else {
            buffer.reserveCapacity(minimumWritableBytes: PeerCodec.headerBytes + Int(length) - buffer.readableBytes)
            return nil
        }
        buffer.moveReaderIndex(forwardBy: PeerCodec.headerBytes)
        var body = buffer.readSlice(length: Int(length))!
        guard let frame = try Self.parseBody(type: type, body: &body), body.readableBytes == 0 else {
            throw PeerWireError.malformedBody(type: type)
        }
        return frame
    }

    /// Writes take their payload as slices of the receive buffers, so a large write is never
    /// copied into a growing buffer; the frame is yielded when its last byte is in.
    private mutating func startWrite(type: UInt8, length: Int, _ buffer: inout ByteBuffer) throws -> PeerFrame? {
        guard length >= Self.writeFieldBytes else { throw PeerWireError.malformedBody(type: type) }
        guard buffer.readableBytes >= PeerCodec.headerBytes + Self.writeFieldBytes else { return nil }
        buffer.moveReaderIndex(forwardBy: PeerCodec.headerBytes)
        let (volume, sequence, epoch, offset, flags) = buffer.readMultipleIntegers(
            as: (UInt16, UInt64, UInt64, UInt64, UInt8).self)!
        let write = PeerWrite(
            volume: volume, sequence: sequence, epoch: epoch, offset: offset, flags: flags,
            payload: NBDPayload(ByteBuffer()))
        pending = PendingWrite(
            type: type, write: write, payload: PayloadCollector(length: length - Self.writeFieldBytes))
        return continueWrite(&buffer)
    }

    private mutating func continueWrite(_ buffer: inout ByteBuffer) -> PeerFrame? {
        guard var write = pending else { preconditionFailure("continueWrite without a pending write") }
        guard let payload = write.payload.take(from: &buffer) else {
            pending = write
            return nil
        }
        pending = nil
        write.write.payload = payload
        return write.type == 5 ? .data(write.write) : .resyncData(write.write)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> PeerFrame? {
        if let frame = try decode(buffer: &buffer) { return frame }
        if let pending { throw PeerWireError.truncatedFrame(bytesLeft: pending.payload.bytesLeft) }
        if buffer.readableBytes > 0 { throw PeerWireError.truncatedFrame(bytesLeft: buffer.readableBytes) }
        return nil
    }

    private static func parseBody(type: UInt8, body: inout ByteBuffer) throws -> PeerFrame? {
        switch type {
        case 1:
            guard let version = body.readInteger(as: UInt16.self), let cluster = body.readPeerString(),
                let node = body.readPeerString(), let nonce = body.readPeerBytes()
            else { return nil }
            return .hello(PeerHello(version: version, clusterName: cluster, nodeName: node, nonce: nonce))
        case 2:
            return body.readPeerBytes().map { .authenticate(proof: $0) }
        case 3:
            return .welcome
        case 4:
            guard let volume = body.readInteger(as: UInt16.self), let name = body.readPeerString(),
                let size = body.readInteger(as: UInt64.self), let generations = body.readGenerations(),
                let (roleCode, diskCode, outOfSync, epoch) = body.readMultipleIntegers(
                    as: (UInt8, UInt8, UInt64, UInt64).self),
                let role = VolumeRole(wireCode: roleCode), let disk = DiskState(wireCode: diskCode),
                let replicationProtocol = body.readPeerString()
            else { return nil }
            return .volumeState(
                PeerVolumeState(
                    volume: volume, name: name, sizeBytes: size, generations: generations, role: role,
                    diskState: disk, outOfSyncBytes: outOfSync, epoch: epoch, replicationProtocol: replicationProtocol))
        case 5, 8:
            guard
                let (volume, sequence, epoch, offset, flags) = body.readMultipleIntegers(
                    as: (UInt16, UInt64, UInt64, UInt64, UInt8).self)
            else { return nil }
            let payload = NBDPayload(body.readSlice(length: body.readableBytes)!)
            let write = PeerWrite(
                volume: volume, sequence: sequence, epoch: epoch, offset: offset, flags: flags, payload: payload)
            return type == 5 ? .data(write) : .resyncData(write)
        case 6:
            guard let (volume, sequence, kindByte) = body.readMultipleIntegers(as: (UInt16, UInt64, UInt8).self),
                let kind = PeerAck.Kind(rawValue: kindByte)
            else { return nil }
            return .ack(PeerAck(volume: volume, sequence: sequence, kind: kind))
        case 7:
            return body.readMultipleIntegers(as: (UInt16, UInt64).self).map { .flush(volume: $0.0, sequence: $0.1) }
        case 9:
            guard let volume = body.readInteger(as: UInt16.self), let generations = body.readGenerations() else {
                return nil
            }
            return .resyncDone(volume: volume, generations: generations)
        case 10:
            return body.readInteger(as: UInt64.self).map { .ping($0) }
        case 11:
            return body.readInteger(as: UInt64.self).map { .pong($0) }
        case 12:
            guard let volume = body.readInteger(as: UInt16.self), let count = body.readInteger(as: UInt32.self),
                let bytes = body.readBytes(length: Int(count))
            else { return nil }
            return .bitmap(volume: volume, bytes: bytes)
        case 13:
            guard
                let (volume, sequence, offset, length) = body.readMultipleIntegers(
                    as: (UInt16, UInt64, UInt64, UInt32).self),
                let digest = body.readPeerBytes()
            else { return nil }
            return .verifyRequest(
                PeerVerify(volume: volume, sequence: sequence, offset: offset, length: length, digest: digest))
        case 14:
            guard let (volume, sequence, equal) = body.readMultipleIntegers(as: (UInt16, UInt64, UInt8).self),
                equal <= 1
            else { return nil }
            return .verifyReply(volume: volume, sequence: sequence, equal: equal == 1)
        case 15:
            guard let kind = body.readInteger(as: UInt8.self), let count = body.readInteger(as: UInt32.self),
                let bytes = body.readBytes(length: Int(count))
            else { return nil }
            return .document(kind: kind, bytes: bytes)
        default:
            throw PeerWireError.unknownType(type)
        }
    }
}

extension ByteBuffer {
    fileprivate mutating func writePeerString(_ text: String) {
        let bytes = Array(text.utf8.prefix(Int(UInt16.max)))
        writePeerBytes(bytes)
    }

    fileprivate mutating func writePeerBytes(_ bytes: [UInt8]) {
        writeInteger(UInt16(bytes.count))
        writeBytes(bytes)
    }

    fileprivate mutating func readPeerBytes() -> [UInt8]? {
        guard let length = readInteger(as: UInt16.self) else { return nil }
        return readBytes(length: Int(length))
    }

    fileprivate mutating func readPeerString() -> String? {
        readPeerBytes().map { String(decoding: $0, as: UTF8.self) }
    }

    fileprivate mutating func readGenerations() -> [UInt64]? {
        guard let count = readInteger(as: UInt8.self), count <= 4 else { return nil }
        var generations: [UInt64] = []
        for _ in 0..<count {
            guard let generation = readInteger(as: UInt64.self) else { return nil }
            generations.append(generation)
        }
        return generations
    }
}
