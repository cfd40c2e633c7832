import Logging
import TandemCore
import TandemStorage
import TandemTestSupport
import TandemWire
import Testing

@testable import TandemAgent

@Suite struct MembershipTransportTests {
    static let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    static let heartbeat = MembershipMessage.heartbeat(
        Heartbeat(sender: "a", epoch: 3, isPrimary: true, standby: false, dataReady: true, peerInSync: true))
    static let stop = MembershipMessage.modeRequest(sender: "a", request: .stop)

    func transport(_ name: String = "a", incarnation: UInt64, secret: [UInt8] = secret) -> MembershipTransport {
        MembershipTransport(
            cluster: "c", name: name, secret: secret, incarnation: incarnation, logger: Logger(label: "test.membership")
        )
    }

    func refusal(_ result: Result<MembershipMessage, MembershipCodec.DecodeError>) -> String? {
        if case .failure(let error) = result { return error.description }
        return nil
    }

    /// `sender` says something to `receiver`, is challenged, and learns the receiver's incarnation.
    func introduce(_ sender: MembershipTransport, to receiver: MembershipTransport) {
        var challenges: [[UInt8]] = []
        _ = receiver.open(sender.seal(Self.heartbeat, to: receiver.name)) { _, challenge in challenges.append(challenge)
        }
        for challenge in challenges { _ = sender.open(challenge) }
    }

    @Test func aRecordedDatagramSentAgain_isRefused_andAnEarlierRunsDatagramsToo() throws {
        let sender = transport(incarnation: 7)
        let receiver = transport("b", incarnation: 1)
        introduce(sender, to: receiver)
        let recorded = sender.seal(Self.stop, to: "b")
        #expect(try receiver.open(recorded).get() == Self.stop)
        #expect(refusal(receiver.open(recorded))?.contains("replayed") == true)
        // The same message sealed again is a new datagram.
        #expect(try receiver.open(sender.seal(Self.stop, to: "b")).get() == Self.stop)
        // The sender restarts: its new run is heard, and from then on the old run's datagrams are not.
        let earlier = sender.seal(Self.heartbeat, to: "b")
        let restarted = transport(incarnation: 8)
        introduce(restarted, to: receiver)
        #expect(try receiver.open(restarted.seal(Self.heartbeat, to: "b")).get() == Self.heartbeat)
        #expect(refusal(receiver.open(earlier))?.contains("earlier run") == true)
    }

    /// Finding 6: datagrams recorded before the receiver restarted are refused by its new run
    /// (which remembers no sequence numbers), the sender learns the new run from one challenge, and
    /// its datagrams are heard again.
    @Test func datagramsRecordedBeforeTheReceiverRestarted_areRefused_andOneChallengeRestoresTheSender() throws {
        let sender = transport(incarnation: 4)
        let receiver = transport("witness", incarnation: 1)
        introduce(sender, to: receiver)
        let recorded = (0..<3).map { _ in sender.seal(Self.stop, to: "witness") }
        #expect(try receiver.open(recorded[0]).get() == Self.stop)
        let restarted = transport("witness", incarnation: 2)
        var challenges: [(String, [UInt8])] = []
        for datagram in recorded {
            let result = restarted.open(datagram) { challenges.append(($0, $1)) }
            #expect(refusal(result)?.contains("sealed before this run started") == true)
        }
        // One challenge, however many datagrams were replayed in a burst, addressed to the sender.
        #expect(challenges.count == 1)
        #expect(challenges.first?.0 == "a")
        #expect(refusal(sender.open(challenges[0].1))?.contains("challenge from") == true)
        #expect(try restarted.open(sender.seal(Self.heartbeat, to: "witness")).get() == Self.heartbeat)
        for datagram in recorded { #expect(refusal(restarted.open(datagram)) != nil) }
        // A stranger's challenge fails authentication and teaches nothing.
        let stranger = transport("witness", incarnation: 99, secret: Array("another secret, of 32 bytes.....".utf8))
        #expect(refusal(sender.open(stranger.challenge(to: "a")))?.contains("failed authentication") == true)
        #expect(try restarted.open(sender.seal(Self.heartbeat, to: "witness")).get() == Self.heartbeat)
    }

    @Test func aChangedNumberOrAWrongSecret_failsAuthentication() {
        let receiver = transport(incarnation: 1)
        var tampered = transport(incarnation: 7).seal(Self.heartbeat, to: "a")
        // The echo's last byte sits just before the 32-byte code.
        tampered[tampered.count - 33] ^= 1
        #expect(refusal(receiver.open(tampered))?.contains("failed authentication") == true)
        let stranger = transport(incarnation: 9, secret: Array("another secret, of 32 bytes.....".utf8))
        #expect(
            refusal(receiver.open(stranger.seal(Self.heartbeat, to: "a")))?.contains("failed authentication") == true)
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
