import Foundation
import NIOCore
import TandemCore
import TandemWire

/// The parser a run exercises, named by `TANDEM_FUZZ_TARGET`.
enum FuzzTarget: String, CaseIterable {
    /// The NBD client stream: client flags, options, requests and write payloads, fed in pieces.
    case nbd
    /// The peer link's frames, fed in pieces; every frame decoded must encode back to itself.
    case peer
    /// Membership datagrams; every message decoded must encode to the same bytes.
    case membership
    /// The TOML reader.
    case toml
    /// The whole config reader: TOML and every check made of the values.
    case config

    static let current: FuzzTarget = {
        let name = ProcessInfo.processInfo.environment["TANDEM_FUZZ_TARGET"] ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            let known = allCases.map(\.rawValue).joined(separator: ", ")
            FileHandle.standardError.write(Data("set TANDEM_FUZZ_TARGET to one of: \(known)\n".utf8))
            exit(2)
        }
        return target
    }()
}

/// One input, as libFuzzer hands it over.
func fuzzOne(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = start.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    switch FuzzTarget.current {
    case .nbd: fuzzNBD(bytes)
    case .peer: fuzzPeer(bytes)
    case .membership: fuzzMembership(bytes)
    case .toml: _ = try? TOMLDocument.parse(String(decoding: bytes, as: UTF8.self))
    case .config: _ = try? Configuration.parse(text: String(decoding: bytes, as: UTF8.self), file: "fuzz.toml")
    }
    return 0
}

/// The first byte chooses how the rest is cut into the pieces a socket would deliver.
private func pieces(_ bytes: [UInt8]) -> [ByteBuffer] {
    guard let first = bytes.first else { return [] }
    let size = Int(first % 64) + 1
    return stride(from: 1, to: bytes.count, by: size).map { start in
        ByteBuffer(bytes: bytes[start..<min(start + size, bytes.count)])
    }
}

/// Runs `decode` over the stream as it arrives, as the server's read loop does: until it needs
/// more bytes, or throws (which closes the connection). A message decoded without taking a byte
/// would loop forever, so that is a failure too.
private func drive<Decoder: NIOSingleStepByteToMessageDecoder>(
    _ decoder: inout Decoder, _ bytes: [UInt8], _ received: (Decoder.InboundOut) -> Void
) {
    var buffer = ByteBuffer()
    for var piece in pieces(bytes) {
        buffer.writeBuffer(&piece)
        while true {
            let before = buffer.readableBytes
            let message: Decoder.InboundOut?
            do {
                message = try decoder.decode(buffer: &buffer)
            } catch {
                return
            }
            guard let message else { break }
            precondition(buffer.readableBytes < before, "a message decoded from no bytes")
            received(message)
        }
    }
    _ = try? decoder.decodeLast(buffer: &buffer, seenEOF: true)
}

private func fuzzNBD(_ bytes: [UInt8]) {
    var decoder = NBDClientFrameDecoder(maximumWriteBytes: 1 << 16)
    var admitted = 0
    decoder.admit = { cost, _ in
        // Refuse now and then, as a server short of memory does; the stream must stay whole.
        admitted += 1
        return cost < 40_000 || admitted % 3 != 0
    }
    drive(&decoder, bytes) { message in
        if case .option(let option) = message { _ = NBDExportInfoRequest(parsing: option.data) }
        if case .request(let request) = message, let payload = request.payload {
            precondition(payload.count == Int(request.length), "a write's payload differs from its length")
        }
    }
}

private func fuzzPeer(_ bytes: [UInt8]) {
    var decoder = PeerFrameDecoder(maximumBodyBytes: 1 << 16)
    drive(&decoder, bytes) { frame in
        var again = PeerFrameDecoder(maximumBodyBytes: 1 << 17)
        var encoded = ByteBuffer()
        for var piece in PeerCodec.encode(frame) { encoded.writeBuffer(&piece) }
        let decoded = try? again.decode(buffer: &encoded)
        precondition(decoded == frame, "a decoded peer frame does not survive encoding")
    }
}

private func fuzzMembership(_ bytes: [UInt8]) {
    guard let message = try? MembershipCodec.decode(bytes, cluster: "fuzz") else { return }
    let encoded = MembershipCodec.encode(message, cluster: "fuzz")
    precondition(
        (try? MembershipCodec.decode(encoded, cluster: "fuzz")) == message,
        "a decoded membership message does not survive encoding")
}
