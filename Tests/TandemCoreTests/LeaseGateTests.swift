import TandemCore
import Testing

@Suite struct LeaseGateTests {
    @Test func aGateWithoutAnEndHolds_andOneWithAnEndHoldsOnlyBeforeIt() {
        let hand = ManualClockHand()
        let gate = LeaseGate(now: { ShellClock.manual(hand).sinceOrigin() })
        #expect(gate.holds)
        let now = ShellClock.manual(hand).sinceOrigin()
        gate.end(at: now + .milliseconds(5))
        #expect(gate.holds)
        hand.advance(by: .milliseconds(4))
        #expect(gate.holds)
        hand.advance(by: .milliseconds(1))
        #expect(!gate.holds, "the lease's end itself is past it")
        gate.end(at: nil)
        #expect(gate.holds)
        gate.end(at: now)
        #expect(!gate.holds, "an end in the past stops every reply at once")
    }
}
