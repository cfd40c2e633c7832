import HTTPTypes
import Logging
import TandemAPI
import TandemCore
import TandemReplication
import TandemResources

/// What the management plane can do on this node, in the contract's types; the router maps
/// routes to it, and nothing here knows HTTP beyond the status of a refusal.
public final class ManagementAPI: Sendable {
    /// A refused or failed call: the contract's error and the HTTP status it is sent with.
    public struct Refusal: Error, Equatable {
        public var status: HTTPResponse.Status
        public var error: APIError

        public init(_ status: HTTPResponse.Status, _ message: String, cause: String? = nil, correction: String? = nil) {
            self.status = status
            self.error = APIError(message: message, cause: cause, correction: correction)
        }

        /// The cluster's state does not allow it now.
        static func conflict(_ message: String, correction: String? = nil) -> Refusal {
            Refusal(.conflict, message, correction: correction)
        }
    }

    let nodeName: String
    private let volumes: [ReplicatedVolume]
    let membership: MembershipService?
    private let groups: GroupManager?
    private let reset: HAReset?
    private let afterCleanup: @Sendable () async -> Void
    private let volumeEvents: VolumeEvents
    private let logger: Logger

    public init(
        nodeName: String, volumes: [ReplicatedVolume], membership: MembershipService? = nil,
        groups: GroupManager? = nil, reset: HAReset? = nil, afterCleanup: @escaping @Sendable () async -> Void = {},
        events: VolumeEvents, logger: Logger
    ) {
        self.nodeName = nodeName
        self.volumes = volumes
        self.membership = membership
        self.groups = groups
        self.reset = reset
        self.afterCleanup = afterCleanup
        self.volumeEvents = events
        self.logger = logger
    }

    // MARK: Reads

    /// This node's volumes, cluster view, resources and modes.
    public func status() -> StatusReply {
        StatusReply(
            node: nodeName, cluster: membership.map { ClusterView($0.snapshot) },
            volumes: volumes.map { VolumeView($0.status) }, resources: groups?.status.map(ResourceView.init) ?? [],
            modes: membership?.snapshot.modes.map { ModesView($0, node: nodeName, peer: membership?.peerName ?? "") })
    }

    /// Both nodes' modes.
    public func modes() async throws(Refusal) -> ModesView {
        try await mode(nil, caller: "")
    }

    /// This node's promotions, oldest first.
    public func failovers() -> [FailoverRecord] {
        membership?.snapshot.failovers ?? []
    }

    // MARK: Modes

    /// A mode command (`nil`: none, only read the modes); `caller` names who asked, for the log.
    public func mode(_ command: ModeCommand?, caller: String) async throws(Refusal) -> ModesView {
        let membership = try pair()
        if let command { logger.notice("\(command.name) by \(caller)") }
        switch await membership.mode(command) {
        case .success(let view): return ModesView(view, node: nodeName, peer: membership.peerName ?? "")
        case .failure(let refusal): throw .conflict(refusal.reason)
        }
    }

    /// `force-reset`: resets this node at once, only in default mode.
    public func forceReset(caller: String) async throws(Refusal) -> ModesView {
        let membership = try pair()
        guard case .success(let view) = await membership.mode(nil), view.localMode == .default else {
            throw .conflict("force-reset is allowed only in default mode")
        }
        guard let reset else { throw .conflict("this node has no HA reset configured") }
        logger.critical("force-reset by \(caller)")
        reset.reset(reason: "force-reset by \(caller)")
        return ModesView(view, node: nodeName, peer: membership.peerName ?? "")
    }

    // MARK: Nodes

    /// Puts `node` (this one or its peer) in standby, or back online.
    public func setStandby(_ standby: Bool, node: String, caller: String) async throws(Refusal) -> StatusReply {
        let membership = try pair()
        let action = standby ? "standby" : "online"
        if node == nodeName {
            logger.notice("\(action) by \(caller)")
            try refuse(await membership.setStandby(standby))
        } else {
            guard node == membership.peerName else { throw unknownNode(node) }
            logger.notice("\(action) of \(node) by \(caller)")
            try refuse(await membership.setPeerStandby(standby))
        }
        return status()
    }

    /// Promotes this node without quorum; `confirm` must name the risk.
    public func forcePrimary(node: String, confirm: String, caller: String) async throws(Refusal) -> StatusReply {
        let membership = try pair()
        guard node == nodeName else {
            if node == membership.peerName {
                throw .conflict(
                    "a forced promotion runs on the node to promote", correction: "ask \(node)'s own agent")
            }
            throw unknownNode(node)
        }
        guard confirm == ForcePrimaryRequest.risk else {
            throw Refusal(
                .badRequest, "confirm: not confirmed",
                cause: "a forced promotion may leave two primaries serving diverging copies",
                correction: "set \"confirm\" to \"\(ForcePrimaryRequest.risk)\"")
        }
        logger.notice("force-primary by \(caller)")
        try refuse(await membership.forcePromote())
        return status()
    }

    // MARK: Volumes

    /// What an administrator can do to one volume.
    public enum VolumeAction: String, Sendable, CaseIterable {
        case primary, secondary, resolve
        case verifyStart = "verify-start"
        case verifyStop = "verify-stop"
    }

    public func volume(_ name: String, _ action: VolumeAction, caller: String) throws(Refusal) -> StatusReply {
        guard let volume = volumes.first(where: { $0.configuration.name == name }) else {
            throw Refusal(
                .notFound, "no volume named \(UntrustedText.quoted(name))",
                correction: "the volumes on \(nodeName): \(volumes.map(\.configuration.name).joined(separator: ", "))")
        }
        if action == .primary || action == .secondary, let membership, membership.failsOverOnItsOwn {
            throw .conflict(
                "the cluster decider holds the primary role (a witness or a fence command is configured)",
                correction: "move it with `tandem node standby NODE`; `volume primary|secondary` is for clusters "
                    + "without automatic failover")
        }
        do {
            switch action {
            case .primary: try volume.setRole(.primary)
            case .secondary: try volume.setRole(.secondary)
            case .verifyStart: volumeEvents.record(try volume.startVerify(), level: .notice)
            case .verifyStop: volumeEvents.record(try volume.stopVerify(), level: .notice)
            case .resolve:
                let report = try volume.resolveSplitBrain()
                volumeEvents.record(
                    "split brain on \(name) resolved by discarding this node's changes: "
                        + "\(report.localChangedBytes) bytes changed here, \(report.peerChangedBytes) on the peer",
                    level: .notice, durable: true)
            }
        } catch {
            throw .conflict(error.description)
        }
        // A role or a resolve matters after a crash; a verify's start or stop does not.
        volumeEvents.record(
            "\(name): \(action.rawValue) by \(caller)", level: .notice,
            durable: action != .verifyStart && action != .verifyStop)
        return status()
    }

    // MARK: Resources

    /// Clears the failures of `resource` (or of every resource) and starts what they stopped.
    public func cleanup(_ resource: String?, caller: String) async throws(Refusal) -> StatusReply {
        guard let groups else { throw .conflict("this node runs no resources") }
        logger.notice("resource-cleanup \(resource ?? "") by \(caller)")
        if let refused = await groups.cleanup(resource) { throw .conflict(refused) }
        // A node that a group's failures put in standby is eligible again.
        await afterCleanup()
        return status()
    }

    /// Probes every resource again.
    public func refresh(caller: String) async throws(Refusal) -> StatusReply {
        guard let groups else { throw .conflict("this node runs no resources") }
        logger.notice("resource-refresh by \(caller)")
        await groups.refresh()
        return status()
    }

    /// Whether the primary role has left `node` for the other one.
    func roleMoved(awayFrom node: String) -> Bool {
        guard let snapshot = membership?.snapshot else { return false }
        if node == nodeName { return snapshot.role != .primary && snapshot.peerHeartbeat?.isPrimary == true }
        return snapshot.role == .primary
    }

    // MARK: Helpers

    private func pair() throws(Refusal) -> MembershipService {
        guard let membership else { throw .conflict("this node has no peer: modes and roles apply to a pair") }
        return membership
    }

    private func refuse(_ refusal: String?) throws(Refusal) {
        if let refusal { throw .conflict(refusal) }
    }

    private func unknownNode(_ node: String) -> Refusal {
        Refusal(
            .notFound, "no node named \(UntrustedText.quoted(node))",
            correction: "this node is \(nodeName)" + (membership?.peerName.map { ", its peer \($0)" } ?? ""))
    }
}
