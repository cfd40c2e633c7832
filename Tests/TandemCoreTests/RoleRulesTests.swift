import TandemCore
import Testing

@Suite struct RoleRulesTests {
    static func facts(
        role: VolumeRole = .secondary, disk: DiskState = .upToDate, connection: ConnectionState = .connected,
        linked: Bool = true, peerRole: VolumeRole? = .secondary, splitBrain: Bool = false, fresh: Bool = false,
        epoch: UInt64 = 3, knownPeerEpoch: UInt64 = 4
    ) -> RoleRules.Facts {
        RoleRules.Facts(
            role: role, disk: disk, connection: connection, linked: linked, peerRole: peerRole,
            inSplitBrain: splitBrain, fresh: fresh, epoch: epoch, knownPeerEpoch: knownPeerEpoch)
    }

    static func refusal(_ result: Result<RoleRules.Change, RoleRefusal>) -> String? {
        if case .failure(let refusal) = result { return refusal.description }
        return nil
    }

    @Test func aPromotionIsRefusedBesideAPrimary_onACopyNotUpToDate_andInSplitBrain() {
        #expect(
            Self.refusal(RoleRules.change(to: .primary, epoch: nil, volume: "v", Self.facts(peerRole: .primary)))
                == "the peer is primary for v; demote it first (two primaries are never allowed)")
        #expect(
            Self.refusal(RoleRules.change(to: .primary, epoch: 9, volume: "v", Self.facts(disk: .outdated)))
                == "v is outdated here; it cannot serve as primary")
        #expect(
            Self.refusal(RoleRules.change(to: .primary, epoch: nil, volume: "v", Self.facts(splitBrain: true)))
                == "v is in split brain; resolve it first")
        // Apart from the peer, a split brain recorded earlier does not stop it (membership decides).
        #expect(
            Self.refusal(
                RoleRules.change(
                    to: .primary, epoch: nil, volume: "v",
                    Self.facts(connection: .connecting, linked: false, peerRole: nil, splitBrain: true))) == nil)
    }

    @Test func aPromotionTakesAnEpochAboveEveryOneSeen_andANewGenerationWhenApart() {
        #expect(
            RoleRules.change(to: .primary, epoch: nil, volume: "v", Self.facts())
                == .success(.promote(epoch: 5, fenceEpoch: nil, generation: nil)))
        #expect(
            RoleRules.change(
                to: .primary, epoch: 7, volume: "v", Self.facts(connection: .connecting, linked: false, peerRole: nil))
                == .success(.promote(epoch: 7, fenceEpoch: 7, generation: .independentChanges)))
        #expect(
            RoleRules.change(to: .primary, epoch: nil, volume: "v", Self.facts(fresh: true))
                == .success(.promote(epoch: 5, fenceEpoch: nil, generation: .first)))
        // Already primary: a newer epoch from membership is carried, an older one changes nothing.
        #expect(
            RoleRules.change(to: .primary, epoch: 8, volume: "v", Self.facts(role: .primary))
                == .success(.carryEpoch(8)))
        #expect(RoleRules.change(to: .primary, epoch: 2, volume: "v", Self.facts(role: .primary)) == .success(.none))
        #expect(
            RoleRules.change(to: .secondary, epoch: nil, volume: "v", Self.facts(role: .primary)) == .success(.demote))
    }

    @Test func onlyASecondaryApartBecomesOutdated_andOnlyAnOutdatedCopyIsForced() {
        #expect(RoleRules.mayMarkOutdated(Self.facts(connection: .connecting, linked: false)))
        #expect(!RoleRules.mayMarkOutdated(Self.facts()), "a connected copy: the connection decides")
        #expect(!RoleRules.mayMarkOutdated(Self.facts(role: .primary, connection: .standAlone)))
        #expect(!RoleRules.mayMarkOutdated(Self.facts(disk: .inconsistent, connection: .standAlone)))
        #expect(RoleRules.mayForceUpToDate(Self.facts(disk: .outdated)))
        #expect(!RoleRules.mayForceUpToDate(Self.facts(disk: .inconsistent)))
    }

    @Test func anOutdatedCopyIsClearedOnlyBesideItsPrimaryWithNothingMarked() {
        var facts = Self.facts(disk: .outdated, peerRole: .primary)
        facts.peerMarkedBytes = 0
        #expect(RoleRules.mayClearOutdated(facts))
        facts.markedBytes = 4096
        #expect(!RoleRules.mayClearOutdated(facts))
        facts.markedBytes = 0
        facts.peerMarkedBytes = nil
        #expect(!RoleRules.mayClearOutdated(facts), "the peer's marks unheard")
    }
}
