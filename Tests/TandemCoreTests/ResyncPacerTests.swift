import Testing

@testable import TandemCore

/// The resync's pacing, driven by explicit times: no test here sleeps.
@Suite struct ResyncPacerTests {
    static let mib: UInt64 = 1 << 20

    @Test func withoutARate_everyBlockLeaves() {
        var pacer = ResyncPacer(rate: nil, minimumRate: nil, now: .zero)
        for block in 0..<100 {
            #expect(pacer.take(64 << 10, idle: false, lastClientWrite: nil, now: .milliseconds(block)) == .send)
        }
    }

    @Test func theBucketRefillsAtTheRate_andHoldsAtMostATenthOfASecond() {
        var pacer = ResyncPacer(rate: 10 * Self.mib, minimumRate: nil, now: .zero)
        // A second of quiet earns a tenth of a second's budget (1 MiB), not ten.
        let t = Duration.seconds(1)
        #expect(pacer.take(Self.mib, idle: false, lastClientWrite: nil, now: t) == .send)
        #expect(pacer.take(64 << 10, idle: false, lastClientWrite: nil, now: t) == .wait(wake: nil))
        // 10 ms later 100 KiB more have come in.
        #expect(pacer.take(64 << 10, idle: false, lastClientWrite: nil, now: t + .milliseconds(10)) == .send)
    }

    @Test func anIdleResync_isWokenWhenTheBudgetWillHaveCome_withinASecond() {
        var pacer = ResyncPacer(rate: Self.mib, minimumRate: nil, now: .zero)
        #expect(pacer.take(64 << 10, idle: true, lastClientWrite: nil, now: .milliseconds(100)) == .send)
        // 100 ms earned 100 KiB; 64 KiB went, so 26 KiB of the next 64 KiB are missing: 25 ms at 1 MiB/s.
        guard case .wait(let wake?) = pacer.take(64 << 10, idle: true, lastClientWrite: nil, now: .milliseconds(100))
        else {
            Issue.record("an idle resync must be given a wake-up")
            return
        }
        #expect(wake > .microseconds(24_900) && wake < .microseconds(25_100), "\(wake)")
        // A block larger than the whole budget goes alone once the bucket is not in debt.
        var slow = ResyncPacer(rate: 1000, minimumRate: nil, now: .zero)
        #expect(slow.take(Self.mib, idle: true, lastClientWrite: nil, now: .zero) == .send)
        #expect(slow.take(Self.mib, idle: true, lastClientWrite: nil, now: .seconds(5)) == .wait(wake: .seconds(1)))
    }

    @Test func clientsWritingWithinTheWindow_holdTheResyncToTheMinimumRate() {
        let pacer = ResyncPacer(rate: 100 * Self.mib, minimumRate: Self.mib, now: .zero)
        let wrote = Duration.seconds(10)
        #expect(pacer.limit(lastClientWrite: nil, now: wrote) == 100 * Self.mib)
        #expect(pacer.limit(lastClientWrite: wrote, now: wrote + .milliseconds(499)) == Self.mib)
        #expect(pacer.limit(lastClientWrite: wrote, now: wrote + ResyncPacer.clientActivityWindow) == 100 * Self.mib)
        let unlimited = ResyncPacer(rate: nil, minimumRate: Self.mib, now: .zero)
        #expect(unlimited.limit(lastClientWrite: wrote, now: wrote) == Self.mib)
        #expect(unlimited.limit(lastClientWrite: wrote, now: wrote + .seconds(1)) == nil)
    }

    @Test func refusals_backOffFromASecondDoublingToAMinute_andBlocksInFlightAddNothing() {
        var pacer = ResyncPacer(rate: nil, minimumRate: nil, now: .zero)
        var now = Duration.zero
        var pauses: [Duration] = []
        for _ in 0..<8 {
            guard let pause = pacer.refused(now: now) else {
                Issue.record("a refusal after the back-off ran out must back off again")
                return
            }
            pauses.append(pause)
            #expect(pacer.refused(now: now + .milliseconds(1)) == nil, "a block that was in flight adds nothing")
            #expect(pacer.hold(now: now + pause - .milliseconds(1)) == .waiting(.milliseconds(1)))
            now += pause
            #expect(pacer.hold(now: now) == .ended)
            #expect(pacer.hold(now: now) == ResyncPacer.Hold.none)
        }
        #expect(pauses.map { $0.components.seconds } == [1, 2, 4, 8, 16, 32, 60, 60])
        let ended = pacer.accepted()
        #expect(ended, "the first block written after the back-off ends the stall")
        let again = pacer.accepted()
        #expect(!again)
        #expect(pacer.refused(now: now) == .seconds(1), "after a stall ends the back-off starts over")
        let early = pacer.accepted()
        #expect(!early, "a block acknowledged while the back-off runs does not end it")
    }
}
