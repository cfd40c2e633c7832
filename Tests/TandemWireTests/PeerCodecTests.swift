import NIOCore
import NIOTestUtils
import TandemCore
import Testing

@testable import TandemWire

@Suite struct PeerCodecTests {
    private static let frames: [PeerFrame] = [
        .hello(PeerHello(clusterName: "media", nodeName: "box-a", nonce: Array(0..<32))),
        .authenticate(proof: Array(repeating: 0xAB, count: 32)),
        .welcome,
        .volumeState(
            PeerVolumeState(
                volume: 1, name: "vol0", sizeBytes: 1 << 30, generations: [9, 8, 7, 6], role: .primary,
                diskState: .upToDate,
                outOfSyncBytes: 65536, epoch: 3, replicationProtocol: "B")),
        .data(
            PeerWrite(
                volume: 0, sequence: 42, epoch: 3, offset: 4096, flags: 1,
                payload: NBDPayload(ByteBuffer(string: "data")))),
        .ack(PeerAck(volume: 0, sequence: 42, kind: .written)),
        .ack(PeerAck(volume: 0, sequence: 44, kind: .failed)),
        .flush(volume: 0, sequence: 43),
        .resyncData(
            PeerWrite(
                volume: 0, sequence: 1, epoch: 3, offset: 0, flags: 0, payload: NBDPayload(ByteBuffer(string: "r")))),
        .resyncDone(volume: 0, generations: [1, 0, 2, 3]),
        .ping(7),
        .pong(7),
        .bitmap(volume: 2, bytes: [1, 2, 3]),
        .verifyRequest(PeerVerify(volume: 1, sequence: 9, offset: 65536, length: 65536, digest: [7, 7, 7])),
        .verifyReply(volume: 1, sequence: 9, equal: false),
        .document(kind: 1, bytes: Array(#"{"version":1,"tokens":[]}"#.utf8)),
    ]

    private static func encoded(_ frames: [PeerFrame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames {
            for var piece in PeerCodec.encode(frame) { buffer.writeBuffer(&piece) }
        }
        return buffer
    }

    @Test func everyFrame_roundTrips_byteByByteAndInBatches() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [(Self.encoded(Self.frames), Self.frames)],
            decoderFactory: { PeerFrameDecoder(maximumBodyBytes: 1 << 20) })
    }

    @Test func writeFrameHead_followedByItsPayload_isTheWholeFrame() throws {
        for frame in Self.frames {
            guard let write = frame.write else { continue }
            var split = PeerCodec.encodeHead(
                of: frame.replacingPayload(with: NBDPayload(ByteBuffer())), payloadBytes: write.payload.count)
            for var piece in write.payload.pieces { split.writeBuffer(&piece) }
            #expect(split == Self.encoded([frame]), "\(frame)")
        }
    }

    @Test func framesAppendedToOneBuffer_withTheirPayloadsAfterEach_areTheSameStream() throws {
        // A buffer that already holds bytes: each frame's length is set where its header went.
        var shared = ByteBuffer(string: "prefix")
        var stream = ByteBuffer()
        for frame in Self.frames {
            let pieces = PeerCodec.encode(frame, appendingTo: &shared)
            guard !pieces.isEmpty else { continue }
            stream.writeImmutableBuffer(shared)
            shared.clear()
            for piece in pieces { stream.writeImmutableBuffer(piece) }
        }
        stream.writeImmutableBuffer(shared)
        #expect(stream.readString(length: 6) == "prefix")
        #expect(stream == Self.encoded(Self.frames))
    }

    @Test func badMagic_unknownType_andOversizedFrames_throw() {
        var decoder = PeerFrameDecoder(maximumBodyBytes: 1024)
        var badMagic = ByteBuffer(bytes: Array("GET / HTTP/1.1\r\n".utf8))
        #expect(throws: PeerWireError.self) { try decoder.decode(buffer: &badMagic) }
        var unknown = ByteBuffer()
        unknown.writeMultipleIntegers(PeerCodec.magic, UInt8(200), UInt8(0), UInt16(0), UInt32(0))
        #expect(throws: PeerWireError.unknownType(200)) { try decoder.decode(buffer: &unknown) }
        var huge = ByteBuffer()
        huge.writeMultipleIntegers(PeerCodec.magic, UInt8(5), UInt8(0), UInt16(0), UInt32(4096))
        #expect(throws: PeerWireError.frameTooLarge(length: 4096, limit: 1024)) { try decoder.decode(buffer: &huge) }
    }

    /// Finding 4: before the peer is authenticated a frame may be no larger than the handshake
    /// needs; the owner raises the limit between frames once it has verified the peer.
    @Test func frameLimit_startsAtTheHandshakeSize_andRisesWhenTheOwnerRaisesIt() throws {
        let limit = PeerFrameLimit(bytes: PeerFrameLimit.handshakeBytes)
        var decoder = PeerFrameDecoder(limit: limit)
        var announced = ByteBuffer()
        announced.writeMultipleIntegers(PeerCodec.magic, UInt8(5), UInt8(0), UInt16(0), UInt32(64 << 20))
        var first = announced
        #expect(throws: PeerWireError.frameTooLarge(length: 64 << 20, limit: PeerFrameLimit.handshakeBytes)) {
            try decoder.decode(buffer: &first)
        }
        limit.maximumBodyBytes = 65 << 20
        var second = announced
        #expect(try decoder.decode(buffer: &second) == nil, "the write's fields have not arrived yet")
    }

    @Test func bodyShorterOrLongerThanItsFields_isMalformed() {
        var decoder = PeerFrameDecoder(maximumBodyBytes: 1024)
        var short = ByteBuffer()
        short.writeMultipleIntegers(PeerCodec.magic, UInt8(6), UInt8(0), UInt16(0), UInt32(3), UInt16(0), UInt8(1))
        #expect(throws: PeerWireError.malformedBody(type: 6)) { try decoder.decode(buffer: &short) }
        var long = ByteBuffer()
        long.writeMultipleIntegers(PeerCodec.magic, UInt8(3), UInt8(0), UInt16(0), UInt32(1), UInt8(9))
        #expect(throws: PeerWireError.malformedBody(type: 3)) { try decoder.decode(buffer: &long) }
    }

    /// Role and disk state are decoded once, into Core's enums: a code no version sends is a
    /// malformed frame, not a guess.
    @Test func volumeState_withAnUnknownRoleOrDiskCode_isMalformed() throws {
        let state = PeerVolumeState(
            volume: 0, name: "v", sizeBytes: 4096, generations: [1, 0, 0, 0], role: .secondary,
            diskState: .outdated, outOfSyncBytes: 0, epoch: 1, replicationProtocol: "C")
        let good = Self.encoded([.volumeState(state)])
        // Where the codes are: the one byte that differs when only the role does.
        var primary = state
        primary.role = .primary
        let other = Self.encoded([.volumeState(primary)])
        let roleAt = try #require(
            (0..<good.readableBytes).first {
                good.getInteger(at: $0, as: UInt8.self) != other.getInteger(at: $0, as: UInt8.self)
            })
        #expect(good.getInteger(at: roleAt + 1, as: UInt8.self) == 2, "the disk code follows the role's")
        for (offset, code) in [(roleAt, UInt8(2)), (roleAt + 1, UInt8(3))] {
            var bad = good
            bad.setInteger(code, at: offset)
            var decoder = PeerFrameDecoder(maximumBodyBytes: 1024)
            #expect(throws: PeerWireError.malformedBody(type: 4)) { try decoder.decode(buffer: &bad) }
        }
    }

    @Test func randomGarbage_neverCrashes_andNeverYieldsWithoutConsuming() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5000 {
            var decoder = PeerFrameDecoder(maximumBodyBytes: 4096)
            var bytes = (0..<Int.random(in: 0..<120, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            if bytes.count >= 5 {
                bytes.replaceSubrange(0..<4, with: [0x54, 0x4E, 0x44, 0x50])
                bytes[4] = UInt8.random(in: 1...14, using: &generator)
            }
            var buffer = ByteBuffer(bytes: bytes)
            while let before = Optional(buffer.readableBytes), (try? decoder.decode(buffer: &buffer)) != nil {
                #expect(buffer.readableBytes < before)
            }
        }
    }
}
