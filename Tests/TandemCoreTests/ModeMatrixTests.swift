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

    @Test("mode commands: what each may do, and why a refusal")
    func rules() throws {
        func apply(_ command: ModeCommand, _ record: ModeRecord = ModeRecord(), remote: NodeMode?, alive: Bool = true)
            -> Result<ModeChange, ModeRefusal>
        {
            ModeRules.apply(command, to: record, remote: remote, peerAlive: alive)
        }
        #expect(try apply(.set(.single), remote: .locked).get().record.mode == .single)
        #expect(try apply(.set(.config), remote: .peerdown, alive: false).get().record.mode == .config)
        #expect(
            apply(.set(.single), remote: nil, alive: false)
                == .failure(
                    ModeRefusal(
                        "the peer is silent and its mode unknown: certify it down with `tandem peerdown` or lock it")))
        #expect(
            apply(.set(.config), remote: .default)
                == .failure(ModeRefusal("config mode needs the peer locked or certified down (peer is default)")))
        #expect(
            apply(.set(.default), remote: .single)
                == .failure(ModeRefusal("the peer is in single mode: this node must be locked while it is")))
        #expect(try apply(.set(.locked), remote: .single).get().record.mode == .locked)
        #expect(
            apply(.peerdown, remote: .default)
                == .failure(
                    ModeRefusal("the peer is alive (heartbeats arrive); peerdown certifies a peer that is powered off"))
        )
        #expect(try apply(.peerdown, remote: nil, alive: false).get().record.peerCertifiedDown)
        let certified = ModeRecord(mode: .single, peerCertifiedDown: true)
        #expect(try apply(.peerup, certified, remote: .peerdown, alive: false).get().record.peerCertifiedDown == false)
        let blocked = ModeRecord(failedStartup: "HA reset: x")
        #expect(
            apply(.start, blocked, remote: .default)
                == .failure(ModeRefusal("blocked by failed-startup (HA reset: x); run `tandem clear` first")))
        #expect(try apply(.clear, blocked, remote: .default).get().record.failedStartup == nil)
        let start = try? apply(.start, remote: .locked).get()
        #expect(start?.standby == false && start?.peerRequest == .start && start?.record.mode == .default)
        // A locked node that cannot hear its peer stays locked until the peer is certified down.
        let locked = ModeRecord(mode: .locked)
        let blind = ModeRefusal(
            "the peer is silent and its mode unknown (it may run alone in single or config mode): "
                + "certify it down with `tandem peerdown` before leaving locked mode")
        #expect(apply(.set(.default), locked, remote: nil, alive: false) == .failure(blind))
        #expect(apply(.start, locked, remote: nil, alive: false) == .failure(blind))
        #expect(try apply(.set(.default), locked, remote: .peerdown, alive: false).get().record.mode == .default)
        #expect(try apply(.start, locked, remote: .default).get().record.mode == .default)
        #expect(try apply(.start, remote: nil, alive: false).get().record.mode == .default, "not locked: may start")
        let stop = try? apply(.stop, remote: .default).get()
        #expect(stop?.standby == true && stop?.peerRequest == .stop && stop?.record.mode == .config)
    }

    @Test("standby is refused in single and config mode; online is refused while failed-startup blocks")
    func standbyRefusal() {
        #expect(ModeRules.standbyRefusal(true, record: ModeRecord(), node: "a") == nil)
        #expect(ModeRules.standbyRefusal(false, record: ModeRecord(mode: .single), node: "a") == nil)
        #expect(
            ModeRules.standbyRefusal(true, record: ModeRecord(mode: .single), node: "a")?.reason
                == "a is in single mode: HA monitoring is off, there is no handover")
        #expect(ModeRules.standbyRefusal(true, record: ModeRecord(mode: .config), node: "a") != nil)
        let blocked = ModeRecord(failedStartup: "HA reset: x")
        #expect(ModeRules.standbyRefusal(false, record: blocked, node: "a")?.reason.contains("tandem clear") == true)
        #expect(ModeRules.standbyRefusal(true, record: blocked, node: "a") == nil)
    }

    @Test("a peer certified down that talks again ends the certification and single or config mode")
    func peerTalked() {
        #expect(ModeRules.peerTalked(ModeRecord(mode: .single)) == nil)
        #expect(
            ModeRules.peerTalked(ModeRecord(mode: .config, peerCertifiedDown: true))
                == ModeRecord(mode: .default, peerCertifiedDown: false))
        #expect(
            ModeRules.peerTalked(ModeRecord(mode: .locked, peerCertifiedDown: true))
                == ModeRecord(mode: .locked, peerCertifiedDown: false))
    }
}
