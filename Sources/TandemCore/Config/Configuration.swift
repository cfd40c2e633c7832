/// The validated cluster configuration: one file, the same on every node.
///
/// Build it with `Configuration.parse(text:file:)`, which reports every problem it finds at once
/// as a `ConfigError` naming the file, the line and the key.
public struct Configuration: Sendable, Equatable {
    /// `[cluster]`.
    public var cluster: Cluster
    /// `[[node]]`, in file order.
    public var nodes: [Node]
    /// `[witness]`, if any.
    public var witness: Witness?
    /// `[timing]`.
    public var timing: Timing
    /// `[limits]`.
    public var limits: Limits
    /// `[[volume]]`, in file order.
    public var volumes: [Volume]
    /// `[[group]]`, in file order.
    public var groups: [Group]
    /// `[api]`: the management API's settings shared by both nodes.
    public var api = API()

    /// The node called `name`.
    public func node(named name: String) -> Node? {
        nodes.first { $0.name == name }
    }

    /// The volume called `name`.
    public func volume(named name: String) -> Volume? {
        volumes.first { $0.name == name }
    }

    /// The groups that may run on `node`: those that name no nodes, and those that name it.
    public func groups(on node: String) -> [Group] {
        groups.filter { $0.nodes.isEmpty || $0.nodes.contains(node) }
    }

    /// `[cluster]`: identity and shared settings.
    public struct Cluster: Sendable, Equatable {
        /// The cluster's name; peers with another name are refused.
        public var name: String
        /// The file holding the shared secret that authenticates peers.
        public var secretFile: String?
        /// Where the agent keeps its state (modes, journal, metadata of block-device volumes).
        public var stateDirectory: String
        /// What a node does when it must stop serving and cannot prove it stopped in time.
        public var haReset: ResetAction = .reboot
        /// Run as `COMMAND NODE ADDRESS` to power a silent primary off; exit status 0 means the node
        /// is certainly off. Stands in for the witness: without one, a fenced peer is replaced.
        public var fenceCommand: String? = nil
        /// The TCP congestion control of the peer link's connections (`TCP_CONGESTION`); nil keeps
        /// the system's default. BBR, the default of some distributions, paces every send with a
        /// timer, which a dedicated replication link pays for and gains nothing from.
        public var peerCongestionControl: String? = "cubic"
        /// The watchdog device the agent arms and feeds (`/dev/watchdog`), `nil` for none. When
        /// the agent dies or freezes, the host resets before the peer takes over.
        public var watchdog: String? = nil
        /// The TLS folder (see the README): the cluster's authority and each node's certificate.
        /// May contain `{node}`.
        public var tlsDirectory: String = "/etc/tandem/tls"
        /// Whether NBD clients that use TLS must present a certificate the cluster's authority signed.
        public var nbdClientCertificates: ClientCertificates = .none
        /// Whether the peer link runs over mutual TLS with the nodes' certificates. Off, its frames
        /// are authenticated at the handshake only and travel in clear (a dedicated back-to-back link).
        public var peerTLS: Bool = false
        /// A file of pre-shared keys (`identity:hexkey` lines, as GnuTLS's psktool writes them):
        /// when set, NBD over TLS uses these keys instead of certificates, in TLS 1.2.
        public var nbdTLSPSKFile: String? = nil
        /// With client certificates required: the only clients served, by their certificate's
        /// common name (as `tandem cert client NAME` writes it); empty serves every signed client.
        public var nbdClientNames: [String] = []
    }

    /// `[cluster] nbd-client-certificates`.
    public enum ClientCertificates: String, Sendable, Equatable {
        /// The server does not ask for one.
        case none
        /// A client without one signed by the cluster's authority is refused in the handshake.
        case required
    }

    /// `[[node]] tls`: what the node's NBD server offers (the protocol's NOTLS, SELECTIVETLS and
    /// FORCEDTLS).
    public enum TLSMode: String, Sendable, Equatable {
        /// No TLS; STARTTLS is refused as unsupported.
        case off
        /// Clients may start TLS or not.
        case allow
        /// Every option before STARTTLS is refused with NBD_REP_ERR_TLS_REQD.
        case require
    }

    /// The HA reset's action.
    public enum ResetAction: String, Sendable, Equatable {
        /// Reboot the machine (production).
        case reboot
        /// Exit the agent process (lab and tests).
        case exit
    }

    /// `[[node]]`: one server.
    public struct Node: Sendable, Equatable {
        /// Unique name.
        public var name: String
        /// Host of the peer link.
        public var address: String
        /// TCP port of the peer link.
        public var port: Int
        /// Addresses that carry heartbeats; every link must be silent before the node is dead.
        public var heartbeat: [String]
        /// Lower is preferred as primary.
        public var precedence: Int
        /// Where this node's NBD server listens.
        public var nbdListen: [ListenAddress]
        /// TLS on this node's NBD server.
        public var tls: TLSMode = .off
        /// Where this node serves the management API over HTTPS (`api-listen`); empty: only on its
        /// control socket.
        public var apiListen: [(host: String, port: Int)] = []
        /// Where this node answers load balancers' health checks (`health-listen`, plain HTTP,
        /// unauthenticated: they reveal only a role); empty: nowhere.
        public var healthListen: [(host: String, port: Int)] = []

        public static func == (left: Node, right: Node) -> Bool {
            left.name == right.name && left.address == right.address && left.port == right.port
                && left.heartbeat == right.heartbeat && left.precedence == right.precedence
                && left.nbdListen == right.nbdListen && left.tls == right.tls
                && left.apiListen.map { "\($0.host):\($0.port)" } == right.apiListen.map { "\($0.host):\($0.port)" }
                && left.healthListen.map { "\($0.host):\($0.port)" }
                    == right.healthListen.map { "\($0.host):\($0.port)" }
        }
    }

    /// `[api]`: the management API.
    public struct API: Sendable, Equatable {
        /// Serve plain HTTP instead of HTTPS; allowed only when every `api-listen` is a loopback
        /// address.
        public var plainHTTP = false

        public init(plainHTTP: Bool = false) { self.plainHTTP = plainHTTP }
    }

    /// `[witness]`: the third voter.
    public struct Witness: Sendable, Equatable {
        /// Host of the witness.
        public var address: String
        /// Port of the witness.
        public var port: Int
    }

    /// `[timing]`: failure detection.
    public struct Timing: Sendable, Equatable {
        /// How often heartbeats are sent on every link.
        public var heartbeatInterval: Duration
        /// How long every link must be silent before the peer is declared dead.
        public var deadTime: Duration
        /// How long a node that never heard its peer waits before it contends alone (without a witness).
        public var waitForPeer: Duration = .seconds(30)
        /// At most one automatic failover with a living primary (a failback) per this period.
        public var failoverCooldown: Duration = .seconds(60)
        /// How long the preferred node must be healthy and in sync before `failback = "auto"` returns the role.
        public var failbackDelay: Duration = .seconds(30)
    }

    /// `[limits]`: the bounds every queue and request obeys.
    public struct Limits: Sendable, Equatable {
        /// Largest NBD request payload accepted (and advertised as the maximum block size).
        public var nbdMaxRequestBytes: Int
        /// Requests one NBD connection may have in flight before the server stops reading from it.
        public var nbdMaxInFlight: Int
        /// NBD connections transmitting at once; a client that finishes negotiating past it is closed.
        public var nbdMaxConnections: Int
        /// Bytes all NBD connections together may hold for write payloads received and read
        /// replies not yet sent; one connection may hold half of it (and always one request).
        public var nbdMaxBufferedBytes: Int

        /// The defaults.
        public static let defaults = Limits(
            nbdMaxRequestBytes: 32 << 20,
            nbdMaxInFlight: 64,
            nbdMaxConnections: 128,
            nbdMaxBufferedBytes: 64 << 20
        )
    }

    /// `[[volume]]`: a replicated block device.
    public struct Volume: Sendable, Equatable {
        /// Unique name.
        public var name: String
        /// Replication guarantee.
        public var `protocol`: ReplicationProtocol
        /// Size in bytes; `nil` means "the size of the existing backing device".
        public var sizeBytes: UInt64?
        /// A file (created on first use) or a block device.
        public var backing: String
        /// The metadata file; `nil` means the default place next to the backing file.
        public var metadata: String?
        /// The NBD export name.
        public var nbdExport: String
        /// Whether the export refuses writes.
        public var readOnly: Bool
        /// What to do when both copies changed on their own.
        public var splitBrainPolicy: SplitBrainPolicy = .disconnect
        /// Most bytes per second a resync may send (`nil`: bounded only by its window of blocks in flight).
        public var resyncRateBytesPerSecond: UInt64? = nil
        /// Most bytes per second a resync may send while clients write to the volume: client
        /// writes come first, and the resync takes the rest of the link once they pause.
        public var resyncMinRateBytesPerSecond: UInt64? = Volume.defaultResyncMinRate
        /// Extents of 4 MiB the activity log keeps (`activity-log-extents`). More extents: fewer log
        /// writes for writes spread wide, and more to resync after a primary's crash.
        public var activityLogExtents: Int = Volume.defaultActivityLogExtents

        /// `resync-min-rate` when the config does not set it.
        public static let defaultResyncMinRate: UInt64 = 64 << 20
        /// `activity-log-extents` when the config does not set it: 4 GiB.
        public static let defaultActivityLogExtents = 1024
        /// The values `activity-log-extents` may take.
        public static let activityLogExtentsRange = 16...65536
    }

    /// `[[group]]`: resources that run together on one node.
    public struct Group: Sendable, Equatable {
        /// Unique name.
        public var name: String
        /// Whether the primary role goes back to the preferred node on its own.
        public var failback: Failback
        /// The nodes that may run the group (all when empty).
        public var nodes: [String]
        /// Resources in start order.
        public var resources: [Resource]
    }

    /// One resource of a group.
    public struct Resource: Sendable, Equatable {
        /// The agent kind.
        public var type: ResourceType
        /// The remaining settings, as strings.
        public var parameters: [String: String]

        public init(type: ResourceType, parameters: [String: String]) {
            self.type = type
            self.parameters = parameters
        }
    }

    /// The agent kinds Tandem knows.
    public enum ResourceType: String, Sendable, Equatable, CaseIterable {
        case volume
        case nbdExport = "nbd-export"
        case ip
        case filesystem
        case systemd
        case exec
        case ocf

        /// Keys that must be given for this kind.
        var requiredKeys: [String] {
            switch self {
            case .volume, .nbdExport: return ["volume"]
            case .ip: return ["address"]
            case .filesystem: return ["device", "directory"]
            case .systemd: return ["unit"]
            case .exec: return ["start", "stop", "status"]
            case .ocf: return ["agent"]
            }
        }

        /// Keys that may be given for this kind.
        var optionalKeys: [String] {
            let common = [
                "name", "monitor-interval", "start-timeout", "stop-timeout", "monitor-timeout", "run-on",
                "max-restarts",
                "restart-window",
            ]
            switch self {
            case .volume, .nbdExport: return common
            case .ip: return common + ["interface", "probe-duplicates"]
            case .filesystem: return common + ["fstype", "options", "check"]
            case .systemd, .exec: return common
            case .ocf: return common + ["params"]
            }
        }
    }

    /// Replication protocol of a volume.
    public enum ReplicationProtocol: String, Sendable, Equatable {
        /// Acknowledged after the local write; replication is asynchronous.
        case a = "A"
        /// Acknowledged when the peer received the write.
        case b = "B"
        /// Acknowledged when both nodes wrote it (synchronous).
        case c = "C"
    }

    /// Failback policy of a group.
    public enum Failback: String, Sendable, Equatable {
        case manual
        case auto
    }
}

/// An address a server listens on: TCP host and port, or a Unix socket path.
public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses `"host:port"`, `"[v6]:port"` or `"unix:/path"`; `defaultPort` applies when none is given.
    public static func parse(_ text: String, defaultPort: Int) -> ListenAddress? {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            return path.hasPrefix("/") ? .unix(path: path) : nil
        }
        guard let (host, port) = splitHostPort(text, defaultPort: defaultPort) else { return nil }
        return .tcp(host: host, port: port)
    }

    /// Splits `"host:port"` or `"[v6]:port"`; a bare host takes `defaultPort`.
    public static func splitHostPort(_ text: String, defaultPort: Int) -> (String, Int)? {
        var host = Substring(text)
        var portText: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let after = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else if host.filter({ $0 == ":" }).count == 1, let colon = host.firstIndex(of: ":") {
            portText = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        guard !host.isEmpty, !host.contains(" ") else { return nil }
        guard let portText else { return (String(host), defaultPort) }
        guard let port = Int(portText), (0...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// `host:port` or `unix:/path`.
    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}
