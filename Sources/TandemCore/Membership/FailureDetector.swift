/// Decides whether the peer is alive from what was heard on each link.
///
/// A peer is dead only when every link has been silent for `deadTime`: one broken cable must not
/// cause a failover. Pure: time is passed in, as a `Duration` since any fixed origin.
public struct FailureDetector: Sendable, Equatable {
    /// How long every link must be silent.
    public let deadTime: Duration
    /// The links, in config order (heartbeat addresses, plus the peer connection).
    public let links: [String]
    private var lastHeard: [String: Duration] = [:]

    /// A detector that has heard nothing yet.
    public init(links: [String], deadTime: Duration) {
        self.links = links
        self.deadTime = deadTime
    }

    /// Something arrived from the peer on `link`.
    public mutating func heard(on link: String, at now: Duration) {
        guard links.contains(link) else { return }
        lastHeard[link] = max(lastHeard[link] ?? now, now)
    }

    /// When the peer was last heard on `link`.
    public func lastHeard(on link: String) -> Duration? { lastHeard[link] }

    /// When the peer was last heard on any link.
    public var lastHeardAnywhere: Duration? { lastHeard.values.max() }

    /// Whether `link` carried something within the dead time.
    public func isLinkAlive(_ link: String, at now: Duration) -> Bool {
        guard let last = lastHeard[link] else { return false }
        return now - last < deadTime
    }

    /// Whether the peer is alive: some link carried something within the dead time.
    public func isAlive(at now: Duration) -> Bool {
        links.contains { isLinkAlive($0, at: now) }
    }
}
