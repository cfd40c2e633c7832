import Testing

@testable import TandemCore

@Suite struct SyncDecisionTests {
    typealias G = DataGenerations
    private static let fresh = G.fresh
    private static let a = G(current: 0xA1)
    private static let aTracking = G(current: 0xB2, bitmap: 0xA1)
    private static let aTrackingAgain = G(current: 0xC3, bitmap: 0xA1)
    private static let aSynced = G(current: 0xB2, history: [0xA1])
    private static let muchLater = G(current: 0xD4, history: [0xC3, 0xB2])
    private static let stranger = G(current: 0xE5, bitmap: 0xE0, history: [0xEF])
    private static let forkOld = G(current: 0xF6, history: [0xA1, 0x90])
    private static let forkOther = G(current: 0xF7, history: [0xA1, 0x90])

    /// Every outcome, each with the arguments in both orders: the peer must reach the mirrored decision.
    @Test(arguments: [
        (a, a, false, false, SyncDecision.noSync),
        (fresh, fresh, false, false, .awaitingInitialSource),
        (a, fresh, false, false, .fullResync(source: .local)),
        (aTracking, a, false, false, .partialResync(source: .local)),
        (aSynced, a, false, false, .fullResync(source: .local)),
        (muchLater, aSynced, false, false, .fullResync(source: .local)),
        (aTracking, aTrackingAgain, false, false, .splitBrain(bitmapsCover: true)),
        (forkOld, forkOther, false, false, .splitBrain(bitmapsCover: false)),
        (a, stranger, false, false, .unrelated),
        (a, a, true, false, .fullResync(source: .peer)),
        (aTracking, a, false, true, .partialResync(source: .local)),
        (a, a, true, true, .unrelated),
        (a, aTracking, true, false, .partialResync(source: .peer)),
        (fresh, a, true, false, .fullResync(source: .peer)),
    ])
    func decide_coversEveryOutcome_symmetrically(
        local: DataGenerations, peer: DataGenerations, localInconsistent: Bool, peerInconsistent: Bool,
        expected: SyncDecision
    ) {
        #expect(
            SyncDecision.decide(
                local: local, peer: peer, localInconsistent: localInconsistent, peerInconsistent: peerInconsistent)
                == expected)
        #expect(
            SyncDecision.decide(
                local: peer, peer: local, localInconsistent: peerInconsistent, peerInconsistent: localInconsistent)
                == mirrored(expected))
    }

    @Test(arguments: [
        (Marks(localDirty: true), SyncDecision.partialResync(source: .peer)),
        (Marks(peerDirty: true, localPrimary: true), .partialResync(source: .local)),
        (Marks(localDirty: true, localPrimary: true), .partialResync(source: .local)),
        (Marks(localDirty: true, peerDirty: true, localPreferred: true), .partialResync(source: .local)),
        (Marks(localDirty: true, peerDirty: true, localPreferred: false), .partialResync(source: .peer)),
        (Marks(localPrimary: true, localPreferred: true), .noSync),
    ])
    func decide_equalGenerationsWithMarks_copiesTheMarkedRegions(marks: Marks, expected: SyncDecision) {
        #expect(SyncDecision.decide(local: Self.a, peer: Self.a, marks: marks) == expected)
        #expect(SyncDecision.decide(local: Self.a, peer: Self.a, marks: marks.mirrored) == mirrored(expected))
    }

    @Test func generations_lifecycle_disconnectWriteReconnectResync() {
        let start = G(current: 0x100)
        let primary = start.startingIndependentChanges(newCurrent: 0x200)
        #expect(primary == G(current: 0x200, bitmap: 0x100))
        let again = primary.startingIndependentChanges(newCurrent: 0x300)
        #expect(again.bitmap == 0x100, "a second disconnect must not forget the older tracking point")
        #expect(SyncDecision.decide(local: again, peer: start) == .partialResync(source: .local))
        let source = again.afterResyncAsSource()
        let target = start.afterResyncAsTarget(from: again)
        #expect(source == target)
        #expect(source == G(current: 0x300, history: [0x100]))
        #expect(SyncDecision.decide(local: source, peer: target) == .noSync)
    }

    @Test func generations_describeAsHex() {
        #expect(G(current: 0xAB, bitmap: 0, history: [0x1]).description == "AB:0:1:0")
    }

    private func mirrored(_ decision: SyncDecision) -> SyncDecision {
        switch decision {
        case .partialResync(let source): return .partialResync(source: source.other)
        case .fullResync(let source): return .fullResync(source: source.other)
        case .noSync, .splitBrain, .unrelated, .awaitingInitialSource: return decision
        }
    }
}

@Suite struct SplitBrainPolicyTests {
    typealias D = SplitBrainPolicy.Divergence

    @Test(arguments: [
        (
            SplitBrainPolicy.disconnect, D(changedBytes: 0, promotedEpoch: 1), D(changedBytes: 9, promotedEpoch: 2),
            PeerSide?.none
        ),
        (.discardZeroChanges, D(changedBytes: 0, promotedEpoch: 1), D(changedBytes: 9, promotedEpoch: 2), .local),
        (.discardZeroChanges, D(changedBytes: 4, promotedEpoch: 1), D(changedBytes: 0, promotedEpoch: 2), .peer),
        (.discardZeroChanges, D(changedBytes: 4, promotedEpoch: 1), D(changedBytes: 9, promotedEpoch: 2), nil),
        (.discardZeroChanges, D(changedBytes: 0, promotedEpoch: 1), D(changedBytes: 0, promotedEpoch: 2), nil),
        (.discardYoungerPrimary, D(changedBytes: 4, promotedEpoch: 7), D(changedBytes: 9, promotedEpoch: 5), .local),
        (.discardYoungerPrimary, D(changedBytes: 4, promotedEpoch: 3), D(changedBytes: 9, promotedEpoch: 5), .peer),
        (.discardYoungerPrimary, D(changedBytes: 4, promotedEpoch: 5), D(changedBytes: 9, promotedEpoch: 5), nil),
        (.discardLeastChanges, D(changedBytes: 4, promotedEpoch: 1), D(changedBytes: 9, promotedEpoch: 2), .local),
        (.discardLeastChanges, D(changedBytes: 12, promotedEpoch: 1), D(changedBytes: 9, promotedEpoch: 2), .peer),
        (.discardLeastChanges, D(changedBytes: 9, promotedEpoch: 1), D(changedBytes: 9, promotedEpoch: 2), nil),
    ])
    func victim(policy: SplitBrainPolicy, local: D, peer: D, expected: PeerSide?) {
        #expect(policy.victim(local: local, peer: peer) == expected)
        #expect(policy.victim(local: peer, peer: local) == expected?.other, "both sides must agree")
    }

    @Test(arguments: [SplitBrainPolicy.discardZeroChanges, .discardYoungerPrimary, .discardLeastChanges])
    func victim_isNeverAServingPrimary(policy: SplitBrainPolicy) {
        let loser = D(changedBytes: 0, promotedEpoch: 9, isPrimary: true)
        let winner = D(changedBytes: 9, promotedEpoch: 1)
        #expect(policy.victim(local: loser, peer: winner) == nil)
        #expect(policy.victim(local: winner, peer: loser) == nil)
        var secondary = loser
        secondary.isPrimary = false
        #expect(policy.victim(local: secondary, peer: winner) == .local)
    }
}
