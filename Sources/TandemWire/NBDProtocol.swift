/// Constants of the NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`), fixed newstyle only.
///
/// The server reads client traffic with `NBDClientFrameDecoder` and writes its own with the
/// `ByteBuffer.writeNBD…` encoders; both are pure byte codecs with no I/O.
public enum NBD {
    /// `NBDMAGIC`, the first 8 bytes the server sends.
    public static let initialMagic: UInt64 = 0x4e42_444d_4147_4943
    /// `IHAVEOPT`: greeting magic and the prefix of every option request.
    public static let optionMagic: UInt64 = 0x4948_4156_454f_5054
    /// Prefix of every option reply.
    public static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    /// Prefix of every transmission request.
    public static let requestMagic: UInt32 = 0x2560_9513
    /// Prefix of every simple reply.
    public static let simpleReplyMagic: UInt32 = 0x6744_6698
    /// Export names and other strings must be no longer than this.
    public static let maximumStringBytes = 4096
    /// Option payloads longer than this are refused without being buffered.
    public static let maximumOptionBytes: UInt32 = 16 * 1024

    /// Handshake flags sent by the server.
    public struct HandshakeFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
        public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
    }

    /// Flags sent by the client right after the greeting.
    public struct ClientFlags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
        public static let noZeroes = ClientFlags(rawValue: 1 << 1)
    }

    /// Per-export transmission flags.
    public struct TransmissionFlags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
        public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
        public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
        public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
        public static let rotational = TransmissionFlags(rawValue: 1 << 4)
        public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
        public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
        public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
        public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
        public static let sendResize = TransmissionFlags(rawValue: 1 << 9)
        public static let sendCache = TransmissionFlags(rawValue: 1 << 10)
        public static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
    }

    /// Option types a client may send during negotiation.
    public enum OptionType: UInt32, Sendable {
        case exportName = 1
        case abort = 2
        case list = 3
        case peekExport = 4
        case startTLS = 5
        case info = 6
        case go = 7
        case structuredReply = 8
        case listMetaContext = 9
        case setMetaContext = 10
        case extendedHeaders = 11
    }

    /// Option reply types.
    public enum OptionReplyType: UInt32, Sendable {
        case ack = 1
        case server = 2
        case info = 3
        case metaContext = 4
        case errorUnsupported = 0x8000_0001
        case errorPolicy = 0x8000_0002
        case errorInvalid = 0x8000_0003
        case errorPlatform = 0x8000_0004
        case errorTLSRequired = 0x8000_0005
        case errorUnknown = 0x8000_0006
        case errorShutdown = 0x8000_0007
        case errorBlockSizeRequired = 0x8000_0008
        case errorTooBig = 0x8000_0009
    }

    /// Information types of `NBD_OPT_INFO` and `NBD_OPT_GO`.
    public enum InfoType: UInt16, Sendable {
        case export = 0
        case name = 1
        case description = 2
        case blockSize = 3
    }

    /// Transmission commands.
    public enum CommandType: UInt16, Sendable {
        case read = 0
        case write = 1
        case disconnect = 2
        case flush = 3
        case trim = 4
        case cache = 5
        case writeZeroes = 6
        case blockStatus = 7
        case resize = 8
    }

    /// Per-command flags.
    public struct CommandFlags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fua = CommandFlags(rawValue: 1 << 0)
        public static let noHole = CommandFlags(rawValue: 1 << 1)
        public static let dontFragment = CommandFlags(rawValue: 1 << 2)
        public static let requestOne = CommandFlags(rawValue: 1 << 3)
        public static let fastZero = CommandFlags(rawValue: 1 << 4)
    }

    /// Error values carried in replies (they are errno values on Linux, but fixed by the protocol).
    public enum ErrorCode: UInt32, Sendable {
        case none = 0
        case notPermitted = 1
        case io = 5
        case noMemory = 12
        case invalid = 22
        case noSpace = 28
        case overflow = 75
        case notSupported = 95
        case shutdown = 108
    }
}
