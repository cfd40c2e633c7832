import Testing

@testable import TandemCore

@Suite("Administrator modes")
struct ModeMatrixTests {
    /// Every pair the HA manager's documentation lists, with its verdict.
    static let listed: [(NodeMode, NodeMode, Bool)] = [
        (.default, .default, true), (.default, .locked, true), (.default, .peerdown, true),
        (.single, .peerdown, true), (.single, .locked, true), (.config, .peerdown, true), (.config, .locked, true),
        (.single, .default, false), (.single, .single, false), (.single, .config, false),
        (.config, .default, false), (.config, .single, false), (.config, .config, false),
    ]

    @Test("every listed pair", arguments: listed)
    func listedPair(local: NodeMode, remote: NodeMode, allowed: Bool) {
        #expect(ModeMatrix.allowed(local: local, remote: remote) == allowed, "\(local)-\(remote)")
    }

    @Test("locked-anything is allowed; peerdown-anything is prohibited")
    func lockedAndPeerdownRows() {
        for other in NodeMode.allCases {
            #expect(ModeMatrix.allowed(local: .locked, remote: other), "locked-\(other)")
            #expect(!ModeMatrix.allowed(local: .peerdown, remote: other), "peerdown-\(other)")
        }
    }

    @Test("the matrix is symmetric where neither side is peerdown")
    func symmetric() {
        let modes = NodeMode.allCases.filter { $0 != .peerdown }
        for local in modes {
            for remote in modes {
                #expect(
                    ModeMatrix.allowed(local: local, remote: remote) == ModeMatrix.allowed(local: remote, remote: local)
                )
            }
        }
    }

    @Test("a refusal says why")
    func reasons() {
        #expect(
            ModeMatrix.verdict(local: .single, remote: .default)
                == "single mode needs the peer locked or certified down (peer is default)")
        #expect(
            ModeMatrix.verdict(local: .default, remote: .config)
                == "the peer is in config mode: this node must be locked while it is")
    }

    @Test("the mode file round-trips, and a torn or altered one is refused")
    func record() {
        let record = ModeRecord(mode: .config, peerCertifiedDown: true, failedStartup: "HA reset: x")
        let bytes = record.encoded()
        #expect(ModeRecord.decode(bytes) == record)
        #expect(ModeRecord.decode(ModeRecord().encoded()) == ModeRecord())
        for cut in [1, bytes.count / 2, bytes.count - 1] { #expect(ModeRecord.decode(Array(bytes.prefix(cut))) == nil) }
        var altered = bytes
        altered[20] ^= 0x01
        #expect(ModeRecord.decode(altered) == nil)
    }
}
