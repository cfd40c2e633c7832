/// The witness's part of membership: a voter that holds no data, answers heartbeats so that nodes
/// know it is there, and remembers which node is outdated. Pure: time is passed in.
public struct WitnessController: Sendable {
    public private(set) var voter: Voter
    /// When each node was last heard.
    public private(set) var lastHeard: [String: Duration] = [:]
    /// The last heartbeat of each node.
    public private(set) var heartbeats: [String: Heartbeat] = [:]

    /// A witness starting at `now` with the record it had persisted.
    public init(name: String, nodes: [String], leaseTime: Duration, record: VoterRecord, now: Duration) {
        voter = Voter(name: name, nodes: nodes, leaseTime: leaseTime, record: record, now: now)
    }

    /// Answers a message; a `.persist` action must be carried out before the sends after it.
    public mutating func receive(_ message: MembershipMessage, now: Duration) -> [MembershipAction] {
        guard voter.nodes.contains(message.sender) else { return [] }
        lastHeard[message.sender] = now
        let before = voter.record
        var reply: MembershipMessage?
        switch message {
        case .heartbeat(let heartbeat):
            heartbeats[heartbeat.sender] = heartbeat
            reply = .heartbeat(
                Heartbeat(
                    sender: voter.name, epoch: voter.record.epoch, isPrimary: false, standby: false, dataReady: false,
                    peerInSync: false))
        case .leaseRequest(let request):
            reply = .leaseReply(voter.renew(request, at: now))
        case .voteRequest(let request):
            reply = .voteReply(voter.vote(request, at: now))
        case .release(let sender, let epoch, let peerInSync):
            voter.release(sender: sender, epoch: epoch, peerInSync: peerInSync)
        case .leaseReply, .voteReply, .modeRequest:
            break
        }
        var actions: [MembershipAction] = []
        if voter.record != before { actions.append(.persist(voter.record)) }
        if let reply { actions.append(.send(reply, to: .node(message.sender))) }
        return actions
    }
}
