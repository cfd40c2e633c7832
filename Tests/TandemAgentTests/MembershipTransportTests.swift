import Logging
import TandemCoordination
import TandemCore
import TandemStorage
import TandemTestSupport
import Testing

@testable import TandemAgent

@Suite struct MembershipTransportTests {
    static let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    static let heartbeat = MembershipMessage.heartbeat(
        Heartbeat(sender: "a", epoch: 3, isPrimary: true, standby: false, dataReady: true, peerInSync: true))
    static let stop = MembershipMessage.modeRequest(sender: "a", request: "stop")

    func transport(incarnation: UInt64, secret: [UInt8] = secret) -> MembershipTransport {
        MembershipTransport(
            cluster: "c", secret: secret, incarnation: incarnation, logger: Logger(label: "test.membership"))
    }

    func refusal(_ result: Result<MembershipMessage, MembershipCodec.DecodeError>) -> String? {
        if case .failure(let error) = result { return error.description }
        return nil
    }

    @Test func aRecordedDatagramSentAgain_isRefused_andAnEarlierRunsDatagramsToo() throws {
        let sender = transport(incarnation: 7)
        let receiver = transport(incarnation: 1)
        let recorded = sender.seal(Self.stop)
        #expect(try receiver.open(recorded).get() == Self.stop)
        #expect(refusal(receiver.open(recorded))?.contains("replayed") == true)
        // The same message sealed again is a new datagram.
        #expect(try receiver.open(sender.seal(Self.stop)).get() == Self.stop)
        // The sender restarts: its new run is heard, and from then on the old run's datagrams are not.
        let earlier = sender.seal(Self.heartbeat)
        let restarted = transport(incarnation: 8)
        #expect(try receiver.open(restarted.seal(Self.heartbeat)).get() == Self.heartbeat)
        #expect(refusal(receiver.open(earlier))?.contains("earlier run") == true)
    }

    @Test func aChangedNumberOrAWrongSecret_failsAuthentication() {
        let receiver = transport(incarnation: 1)
        var tampered = transport(incarnation: 7).seal(Self.heartbeat)
        // The sequence number's last byte sits just before the 32-byte code.
        tampered[tampered.count - 33] ^= 1
        #expect(refusal(receiver.open(tampered))?.contains("failed authentication") == true)
        let stranger = transport(incarnation: 9, secret: Array("another secret, of 32 bytes.....".utf8))
        #expect(refusal(receiver.open(stranger.seal(Self.heartbeat)))?.contains("failed authentication") == true)
        #expect(refusal(receiver.open([1, 2, 3]))?.contains("too short") == true)
    }

    @Test func theIncarnationGrowsWithEveryStart_andADamagedFileIsRefusedByName() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/a.incarnation"
        #expect(try MembershipTransport.nextIncarnation(path: path) == 1)
        #expect(try MembershipTransport.nextIncarnation(path: path) == 2)
        #expect(try AtomicFile.read(path: path) == Array("2\n".utf8))
        try AtomicFile.replace(path: path, bytes: Array("two".utf8))
        #expect {
            try MembershipTransport.nextIncarnation(path: path)
        } throws: { error in
            "\(error)".contains(path) && "\(error)".contains("incarnation")
        }
    }
}
