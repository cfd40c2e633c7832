import NIOCore
import NIOTestUtils
import Testing

@testable import TandemWire

private func option(_ type: NBD.OptionType, _ data: ByteBuffer = ByteBuffer()) -> NBDClientMessage {
    .option(NBDOption(rawType: type.rawValue, data: data))
}

private func request(
    _ type: NBD.CommandType, cookie: UInt64, offset: UInt64, length: UInt32, flags: NBD.CommandFlags = [],
    payload: ByteBuffer? = nil
) -> NBDRequest {
    NBDRequest(
        flags: flags, rawType: type.rawValue, cookie: cookie, offset: offset, length: length,
        payload: payload.map(NBDPayload.init))
}

private func encode(_ messages: [NBDClientMessage]) -> ByteBuffer {
    var buffer = ByteBuffer()
    for message in messages {
        switch message {
        case .clientFlags(let rawValue): buffer.writeInteger(rawValue)
        case .option(let option): buffer.writeNBDOption(type: option.rawType, data: option.data)
        case .request(let request): buffer.writeNBDRequest(request)
        }
    }
    return buffer
}

@Suite struct NBDClientFrameDecoderTests {
    private static let session: [NBDClientMessage] = {
        var goData = ByteBuffer()
        goData.writeNBDExportInfoRequest(NBDExportInfoRequest(exportName: "vol0", requestedInfo: [3]))
        return [
            option(.list),
            option(.structuredReply),
            option(.go, goData),
            .request(
                request(.write, cookie: 1, offset: 4096, length: 5, flags: .fua, payload: ByteBuffer(string: "hello"))),
            .request(request(.read, cookie: 2, offset: 4096, length: 5)),
            .request(request(.flush, cookie: 3, offset: 0, length: 0)),
            .request(request(.write, cookie: 4, offset: 0, length: 0, payload: ByteBuffer())),
            .request(request(.disconnect, cookie: 5, offset: 0, length: 0)),
        ]
    }()

    @Test func decode_byteByByteAndInBatches_yieldsEveryFrame() throws {
        let input = encode(Self.session)
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [(input, Self.session)],
            decoderFactory: { NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false) })
    }

    @Test func decode_clientFlagsComeFirst_thenFramesByMagic() throws {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 1 << 20)
        var buffer = ByteBuffer(bytes: [0, 0])
        #expect(try decoder.decode(buffer: &buffer) == nil)
        buffer.writeBytes([0, 3])
        buffer.writeImmutableBuffer(encode([option(.abort)]))
        #expect(try decoder.decode(buffer: &buffer) == .clientFlags(rawValue: 3))
        #expect(try decoder.decode(buffer: &buffer) == option(.abort))
        #expect(buffer.readableBytes == 0)
    }

    @Test func decode_manySessionsAtOnce() throws {
        let pairs = (0..<8).map { _ in (encode(Self.session), Self.session) }
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: pairs,
            decoderFactory: { NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false) })
    }

    @Test func decode_badMagic_throws() {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false)
        var buffer = ByteBuffer(bytes: [0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 0])
        #expect(throws: NBDWireError.badMagic(0xDEAD_BEEF)) { try decoder.decode(buffer: &buffer) }
    }

    @Test func decode_optionWithHugeLength_throwsBeforeBuffering() {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false)
        var buffer = ByteBuffer()
        buffer.writeMultipleIntegers(NBD.optionMagic, UInt32(7), UInt32.max)
        #expect(throws: NBDWireError.optionTooLong(type: 7, length: UInt32.max)) { try decoder.decode(buffer: &buffer) }
    }

    @Test func decode_writeOverTheLimit_throwsBeforeBuffering() {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 4096, expectClientFlags: false)
        var buffer = ByteBuffer()
        buffer.writeNBDRequest(request(.write, cookie: 9, offset: 0, length: 4097))
        #expect(throws: NBDWireError.writeTooLarge(length: 4097, limit: 4096)) { try decoder.decode(buffer: &buffer) }
    }

    @Test func decode_oversizedReadIsPassedOnForTheServerToRefuse() throws {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 4096, expectClientFlags: false)
        var buffer = ByteBuffer()
        buffer.writeNBDRequest(request(.read, cookie: 9, offset: 0, length: 1 << 30))
        #expect(try decoder.decode(buffer: &buffer) == .request(request(.read, cookie: 9, offset: 0, length: 1 << 30)))
    }

    @Test func decode_partialHeader_leavesTheReaderIndex_thenPayloadIsTakenAsItArrives() throws {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false)
        let frame = encode([
            .request(request(.write, cookie: 1, offset: 0, length: 8, payload: ByteBuffer(string: "12345678")))
        ])
        var buffer = frame.getSlice(at: 0, length: 20)!
        #expect(try decoder.decode(buffer: &buffer) == nil)
        #expect(buffer.readerIndex == 0, "a partial header must not move the reader index")
        var rest = frame.getSlice(at: 0, length: 31)!
        #expect(try decoder.decode(buffer: &rest) == nil)
        #expect(rest.readableBytes == 0, "payload bytes are taken as they arrive")
        var last = frame.getSlice(at: 31, length: 5)!
        let decoded = try decoder.decode(buffer: &last)
        guard case .request(let write)? = decoded else {
            Issue.record("expected the write, got \(String(describing: decoded))")
            return
        }
        #expect(write.payload?.pieces.count == 2)
        #expect(write.payload?.contiguous == ByteBuffer(string: "12345678"))
    }

    @Test func decodeLast_truncatedFrame_throws() throws {
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false)
        var buffer = encode([
            .request(request(.write, cookie: 1, offset: 0, length: 8, payload: ByteBuffer(string: "12345678")))
        ])
        buffer.moveWriterIndex(to: buffer.writerIndex - 3)
        #expect(try decoder.decode(buffer: &buffer) == nil)
        #expect(throws: NBDWireError.truncatedFrame(bytesLeft: 3)) {
            try decoder.decodeLast(buffer: &buffer, seenEOF: true)
        }
        var header = ByteBuffer(bytes: [0x25, 0x60, 0x95])
        var fresh = NBDClientFrameDecoder(maximumWriteBytes: 1 << 20, expectClientFlags: false)
        #expect(throws: NBDWireError.truncatedFrame(bytesLeft: 3)) {
            try fresh.decodeLast(buffer: &header, seenEOF: true)
        }
    }

    @Test func decode_randomGarbage_eitherThrowsOrYieldsWellFormedFrames() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5000 {
            var decoder = NBDClientFrameDecoder(maximumWriteBytes: 65536, expectClientFlags: false)
            let length = Int.random(in: 0..<200, using: &generator)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Half the time start with a valid magic so the length checks are exercised too.
            if Bool.random(using: &generator), bytes.count >= 4 {
                bytes.replaceSubrange(0..<4, with: [0x25, 0x60, 0x95, 0x13])
            }
            var buffer = ByteBuffer(bytes: bytes)
            while true {
                let before = buffer.readableBytes
                guard let message = try? decoder.decode(buffer: &buffer) else { break }
                #expect(buffer.readableBytes < before, "a decoded frame must consume bytes")
                if case .request(let decoded) = message, decoded.type == .write {
                    #expect(decoded.payload?.count == Int(decoded.length))
                }
            }
        }
    }
}

@Suite struct NBDEncodingTests {
    @Test func greeting_isTheFixedNewstyleLayout() {
        var buffer = ByteBuffer()
        buffer.writeNBDGreeting(flags: [.fixedNewstyle, .noZeroes])
        #expect(Array(buffer.readableBytesView) == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
    }

    @Test func simpleReply_layout() {
        var buffer = ByteBuffer()
        buffer.writeNBDSimpleReply(error: .noSpace, cookie: 0x0102_0304_0506_0708)
        #expect(Array(buffer.readableBytesView) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 1, 2, 3, 4, 5, 6, 7, 8])
    }

    @Test func optionReply_layout() {
        var buffer = ByteBuffer()
        buffer.writeNBDInfoExport(option: 7, sizeBytes: 1 << 30, flags: [.hasFlags, .sendFlush])
        let expected: [UInt8] =
            [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 12]
            + [0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 5]
        #expect(Array(buffer.readableBytesView) == expected)
    }

    @Test func exportNameReply_padsUnlessNoZeroes() {
        var padded = ByteBuffer()
        padded.writeNBDExportNameReply(sizeBytes: 512, flags: .hasFlags, padWithZeroes: true)
        #expect(padded.readableBytes == 8 + 2 + 124)
        var bare = ByteBuffer()
        bare.writeNBDExportNameReply(sizeBytes: 512, flags: .hasFlags, padWithZeroes: false)
        #expect(bare.readableBytes == 10)
    }

    @Test func exportInfoRequest_roundTripsAndRejectsBadLengths() {
        var data = ByteBuffer()
        let original = NBDExportInfoRequest(exportName: "vol0", requestedInfo: [1, 3])
        data.writeNBDExportInfoRequest(original)
        #expect(NBDExportInfoRequest(parsing: data) == original)
        var trailing = data
        trailing.writeInteger(UInt8(0))
        #expect(NBDExportInfoRequest(parsing: trailing) == nil)
        var lying = ByteBuffer()
        lying.writeInteger(UInt32(100))
        lying.writeString("vol0")
        #expect(NBDExportInfoRequest(parsing: lying) == nil)
    }
}
