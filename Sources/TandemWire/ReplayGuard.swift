/// Refuses membership datagrams that were already received, or that come from an earlier run of
/// their sender: a recorded "stop" or lease reply sent again by someone on the network must not
/// act a second time.
///
/// Every datagram carries its sender's incarnation (a counter the sender raises, durably, at each
/// start) and a sequence number that its run raises with every datagram. Per sender the guard keeps
/// the current incarnation, the highest sequence seen and which of the 64 below it arrived, so
/// datagrams reordered across links still pass once (as in IPsec's anti-replay window).
///
/// What a receiver keeps here is lost when it restarts, so the transport also makes every datagram
/// name the receiver's incarnation as its sender last heard it: one recorded before the receiver's
/// latest start names an older one and is refused however new it looks (see `MembershipTransport`).
public struct ReplayGuard: Sendable {
    /// How far behind the highest sequence a datagram may arrive.
    public static let windowSize: UInt64 = 64

    private struct Sender {
        var incarnation: UInt64
        var highest: UInt64
        /// Bit `i` set: sequence `highest - i` arrived.
        var seen: UInt64
    }

    private var senders: [String: Sender] = [:]

    public init() {}

    /// The incarnation last heard from `name`, if any.
    public func incarnation(of name: String) -> UInt64? {
        senders[name]?.incarnation
    }

    /// Records that `name` runs at `incarnation` without admitting any datagram of it (heard from a
    /// datagram refused for another reason, or from a challenge); an older incarnation is ignored.
    public mutating func note(sender name: String, incarnation: UInt64) {
        guard let known = senders[name]?.incarnation, known >= incarnation else {
            senders[name] = Sender(incarnation: incarnation, highest: 0, seen: 0)
            return
        }
    }

    /// Records the datagram and returns `nil`, or returns why it is refused.
    public mutating func admit(sender name: String, incarnation: UInt64, sequence: UInt64) -> String? {
        guard var sender = senders[name], incarnation <= sender.incarnation else {
            // The first datagram heard from `name`, or its first since it started again.
            senders[name] = Sender(incarnation: incarnation, highest: sequence, seen: 1)
            return nil
        }
        guard incarnation == sender.incarnation else {
            return "from an earlier run of \(name) (incarnation \(incarnation), now \(sender.incarnation))"
        }
        if sequence > sender.highest {
            let shift = sequence - sender.highest
            sender.seen = shift >= Self.windowSize ? 1 : sender.seen << shift | 1
            sender.highest = sequence
        } else {
            let behind = sender.highest - sequence
            guard behind < Self.windowSize else {
                return "sequence \(sequence) of \(name) is too old (highest \(sender.highest))"
            }
            let bit: UInt64 = 1 << behind
            guard sender.seen & bit == 0 else { return "sequence \(sequence) of \(name) was already received" }
            sender.seen |= bit
        }
        senders[name] = sender
        return nil
    }
}
