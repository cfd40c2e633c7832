import TandemCore

/// The datagram form of membership messages.
///
/// Layout: magic `TDMB`, version 4, the cluster name, the message type, then its fields (integers
/// big-endian, strings as a one-byte length and UTF-8, booleans as one byte 0 or 1). The shell
/// appends the sender's incarnation and sequence number (see `ReplayGuard`) and an HMAC over all
/// of it; a datagram that does not parse to its last byte is refused.
public enum MembershipCodec {
    static let magic: [UInt8] = Array("TDMB".utf8)
    static let version: UInt8 = 4

    /// Why a datagram was refused.
    public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String

        public init(description: String) { self.description = description }
    }

    /// Encodes `message` for `cluster`.
    public static func encode(_ message: MembershipMessage, cluster: String) -> [UInt8] {
        var writer = Writer()
        writer.bytes.append(contentsOf: magic)
        writer.bytes.append(version)
        writer.string(cluster)
        switch message {
        case .heartbeat(let heartbeat):
            writer.bytes.append(1)
            writer.string(heartbeat.sender)
            writer.integer(heartbeat.epoch)
            for flag in [heartbeat.isPrimary, heartbeat.standby, heartbeat.dataReady, heartbeat.peerInSync] {
                writer.boolean(flag)
            }
            writer.string(heartbeat.mode.rawValue)
        case .leaseRequest(let request):
            writer.bytes.append(2)
            writer.string(request.sender)
            writer.integer(request.epoch)
            writer.integer(request.id)
            writer.boolean(request.peerInSync)
        case .leaseReply(let reply):
            writer.bytes.append(3)
            writer.string(reply.sender)
            writer.integer(reply.epoch)
            writer.integer(reply.id)
            writer.boolean(reply.granted)
            writer.integer(reply.knownEpoch)
            writer.boolean(reply.peerOutdatedRecorded)
        case .voteRequest(let request):
            writer.bytes.append(4)
            writer.string(request.sender)
            writer.integer(request.epoch)
            writer.integer(request.id)
            writer.boolean(request.preVote)
        case .voteReply(let reply):
            writer.bytes.append(5)
            writer.string(reply.sender)
            writer.integer(reply.epoch)
            writer.integer(reply.id)
            writer.boolean(reply.granted)
            writer.integer(reply.knownEpoch)
            writer.string(reply.reason)
            writer.boolean(reply.preVote)
        case .release(let sender, let epoch, let peerInSync):
            writer.bytes.append(6)
            writer.string(sender)
            writer.integer(epoch)
            writer.boolean(peerInSync)
        case .modeRequest(let sender, let request):
            writer.bytes.append(7)
            writer.string(sender)
            writer.string(request.rawValue)
        }
        return writer.bytes
    }

    /// Decodes a datagram (without its HMAC) for `cluster`.
    public static func decode(_ bytes: [UInt8], cluster: String) throws(DecodeError) -> MembershipMessage {
        var reader = Reader(bytes: bytes)
        guard Array(try reader.take(4)) == magic else {
            throw DecodeError(description: "not a Tandem membership datagram")
        }
        let version = try reader.byte()
        guard version == Self.version else { throw DecodeError(description: "membership version \(version)") }
        let name = try reader.string()
        guard name == cluster else { throw DecodeError(description: "from cluster \"\(name)\"") }
        let type = try reader.byte()
        let message: MembershipMessage
        switch type {
        case 1:
            message = .heartbeat(
                Heartbeat(
                    sender: try reader.string(), epoch: try reader.integer(), isPrimary: try reader.boolean(),
                    standby: try reader.boolean(), dataReady: try reader.boolean(), peerInSync: try reader.boolean(),
                    mode: try reader.mode()))
        case 2:
            message = .leaseRequest(
                LeaseRequest(
                    sender: try reader.string(), epoch: try reader.integer(), id: try reader.integer(),
                    peerInSync: try reader.boolean()))
        case 3:
            message = .leaseReply(
                LeaseReply(
                    sender: try reader.string(), epoch: try reader.integer(), id: try reader.integer(),
                    granted: try reader.boolean(), knownEpoch: try reader.integer(),
                    peerOutdatedRecorded: try reader.boolean()))
        case 4:
            message = .voteRequest(
                VoteRequest(
                    sender: try reader.string(), epoch: try reader.integer(), id: try reader.integer(),
                    preVote: try reader.boolean()))
        case 5:
            message = .voteReply(
                VoteReply(
                    sender: try reader.string(), epoch: try reader.integer(), id: try reader.integer(),
                    granted: try reader.boolean(), knownEpoch: try reader.integer(), reason: try reader.string(),
                    preVote: try reader.boolean()))
        case 6:
            message = .release(
                sender: try reader.string(), epoch: try reader.integer(), peerInSync: try reader.boolean())
        case 7:
            let sender = try reader.string()
            let name = try reader.string()
            guard let request = ModeRequest(rawValue: name) else {
                throw DecodeError(description: "unknown mode request \(UntrustedText.quoted(name))")
            }
            message = .modeRequest(sender: sender, request: request)
        default:
            throw DecodeError(description: "unknown membership message type \(type)")
        }
        guard reader.isAtEnd else { throw DecodeError(description: "\(bytes.count - reader.position) trailing bytes") }
        return message
    }

    struct Writer {
        var bytes: [UInt8] = []

        mutating func integer(_ value: UInt64) {
            for shift in stride(from: 56, through: 0, by: -8) {
                bytes.append(UInt8(truncatingIfNeeded: value >> shift))
            }
        }

        mutating func boolean(_ value: Bool) { bytes.append(value ? 1 : 0) }

        mutating func string(_ value: String) {
            let utf8 = Array(value.utf8.prefix(255))
            bytes.append(UInt8(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    struct Reader {
        let bytes: [UInt8]
        var position = 0

        var isAtEnd: Bool { position == bytes.count }

        mutating func mode() throws(DecodeError) -> NodeMode {
            let text = try string()
            guard let mode = NodeMode(rawValue: text) else {
                throw DecodeError(description: "unknown mode \"\(text)\"")
            }
            return mode
        }

        mutating func take(_ count: Int) throws(DecodeError) -> ArraySlice<UInt8> {
            guard bytes.count - position >= count else { throw DecodeError(description: "truncated datagram") }
            defer { position += count }
            return bytes[position..<position + count]
        }

        mutating func byte() throws(DecodeError) -> UInt8 { try take(1).first! }

        mutating func integer() throws(DecodeError) -> UInt64 {
            try take(8).reduce(0) { $0 << 8 | UInt64($1) }
        }

        mutating func boolean() throws(DecodeError) -> Bool {
            switch try byte() {
            case 0: return false
            case 1: return true
            case let other: throw DecodeError(description: "boolean field holds \(other)")
            }
        }

        mutating func string() throws(DecodeError) -> String {
            let count = Int(try byte())
            guard let text = String(validating: try take(count), as: UTF8.self) else {
                throw DecodeError(description: "string field is not UTF-8")
            }
            return text
        }
    }
}
