import Prometheus
import Synchronization
import TandemAPI
import TandemCore
import TandemReplication
import TandemResources
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// `GET /metrics`: the node's state in Prometheus's text format, read from memory at each scrape.
///
/// Names start with `tandem_` and are in base units (seconds, bytes). Every state is a series per
/// possible value, 0 or 1, present from the first scrape: an alert on `== 1` never misses a series
/// that has not appeared yet. Series of a volume or a resource carry its `group` (empty when it is
/// in none).
public final class MetricsExporter: Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let volumes: [ReplicatedVolume]
    private let membership: MembershipService?
    private let groups: GroupManager?
    private let events: EventBus?
    private let nbd: NBDMetrics?
    private let volumeGroups: [String: String]
    private let certificateExpiry: Double?
    private let seen = Mutex<Seen>(Seen())

    /// What earlier scrapes counted, so that counters only grow.
    private struct Seen {
        var failovers: [FailoverRecord.Reason: Int] = [:]
        var nbd: [String: UInt64] = [:]
        var gapsRecorded: Set<UInt64> = []
    }

    public init(
        configuration: Configuration, node: String, volumes: [ReplicatedVolume], membership: MembershipService?,
        groups: GroupManager?, events: EventBus?, nbd: NBDMetrics? = nil
    ) {
        self.nbd = nbd
        self.volumes = volumes
        self.membership = membership
        self.groups = groups
        self.events = events
        var volumeGroups: [String: String] = [:]
        for group in configuration.groups(on: node) {
            for resource in group.resources {
                if let volume = resource.parameters["volume"] { volumeGroups[volume] = group.name }
            }
        }
        self.volumeGroups = volumeGroups
        certificateExpiry = Self.expiry(ofPEM: "\(configuration.cluster.tlsDirectory)/\(node)/server-cert.pem")
    }

    /// The exposition, updated from the node's state now.
    public func scrape() -> String {
        seen.withLock { seen in
            update(&seen)
            return registry.emitToString()
        }
    }

    private func gauge(_ name: String, _ unit: String = "", _ help: String, _ labels: [(String, String)] = [])
        -> Gauge
    {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(namespace: "tandem", metricName: name, unitName: unit, helpText: help),
            labels: labels)
    }

    private func flag(_ value: Bool) -> Double { value ? 1 : 0 }

    private func update(_ seen: inout Seen) {
        let now = WallClock.secondsSinceEpoch()
        let snapshot = membership?.snapshot
        // A node without a peer is primary when its volumes are.
        let role =
            snapshot?.role ?? (volumes.allSatisfy { $0.status.role == .primary } ? ClusterRole.primary : .secondary)
        for value in [ClusterRole.primary, .secondary, .candidate] {
            gauge("role", "", "1 for this node's cluster role", [("role", value.rawValue)]).set(flag(role == value))
        }
        gauge("standby", "", "1 while this node is in standby").set(flag(snapshot?.standby ?? false))
        gauge("quorum", "", "1 while this node counts a majority of voters").set(flag(snapshot?.hasQuorum ?? true))
        gauge("epoch", "", "The highest epoch this node knows").set(Double(snapshot?.epoch ?? 0))
        gauge("lease_remaining", "seconds", "Seconds left on this node's lease (0: none)")
            .set(max(0, snapshot?.leaseRemaining?.seconds ?? 0))
        gauge("peer_alive", "", "1 while the peer is heard on some link").set(flag(snapshot?.peerAlive ?? false))
        for (link, ago) in snapshot?.links ?? [] {
            gauge(
                "peer_last_seen_timestamp", "seconds", "When the peer was last heard on each link (0: never)",
                [("link", link)]
            ).set(ago.map { now - $0.seconds } ?? 0)
        }
        gauge("witness_configured", "", "1 when the cluster has a witness").set(
            flag(snapshot?.witnessConfigured ?? false))
        gauge("witness_last_seen_timestamp", "seconds", "When the witness was last heard (0: never)")
            .set(snapshot?.witnessHeardAgo.map { now - $0.seconds } ?? 0)
        gauge("automatic_failover_blocked", "", "1 while automatic failover is blocked")
            .set(flag(snapshot.map { $0.automaticFailoverBlocker != nil } ?? false))
        let modes = snapshot?.modes
        for mode in NodeMode.allCases {
            gauge("admin_mode", "", "1 for this node's administrator mode", [("mode", mode.rawValue)])
                .set(flag((modes?.localMode ?? .default) == mode))
        }
        gauge("failed_startup", "", "1 while the failed-startup blocker is set").set(flag(modes?.failedStartup != nil))

        for volume in volumes {
            let status = volume.status
            let labels = [("volume", status.name), ("group", volumeGroups[status.name] ?? "")]
            gauge("volume_out_of_sync", "bytes", "Bytes marked out of sync on this node", labels)
                .set(Double(status.outOfSyncBytes))
            for role in [VolumeRole.primary, .secondary] {
                gauge("volume_role", "", "1 for the volume's role here", labels + [("role", role.rawValue)])
                    .set(flag(status.role == role))
            }
            for disk in [DiskState.upToDate, .inconsistent, .outdated] {
                gauge(
                    "volume_disk_state", "", "1 for the state of this node's copy", labels + [("state", disk.rawValue)]
                )
                .set(flag(status.disk == disk))
            }
            for connection in [ConnectionState.standAlone, .connecting, .connected, .syncSource, .syncTarget] {
                gauge(
                    "volume_connection_state", "", "1 for the volume's replication connection",
                    labels + [("state", connection.rawValue)]
                ).set(flag(status.connection == connection))
            }
            gauge("volume_split_brain", "", "1 while the volume is in split brain", labels)
                .set(flag(status.splitBrain != nil))
            let resync = status.resync.map(ResyncView.init)
            gauge("volume_resync_remaining", "bytes", "Bytes the running resync still moves (0: none)", labels)
                .set(Double(resync?.bytesLeft ?? 0))
            gauge("volume_resync_rate", "bytes_per_second", "The running resync's average rate (0: none)", labels)
                .set(resync.map { $0.seconds > 0 ? Double($0.doneBytes) / $0.seconds : 0 } ?? 0)
            gauge("volume_verify_progress", "ratio", "The running verify's progress, 0 to 1 (0: none)", labels)
                .set((status.verify?.percent ?? 0) / 100)
            gauge("volume_resynced", "bytes", "Bytes this node received by resync since its agent started", labels)
                .set(Double(status.resyncedBytesTotal))
        }

        for resource in groups?.status ?? [] {
            let labels = [("resource", resource.name), ("group", resource.group)]
            for state in ResourceView.State.allCases {
                gauge("resource_state", "", "1 for the resource's state here", labels + [("state", state.rawValue)])
                    .set(flag(resource.state.rawValue == state.rawValue))
            }
            gauge("resource_fail_count", "", "The resource's failures within its restart window", labels)
                .set(Double(resource.failCount))
        }

        let history = snapshot?.failovers ?? []
        let totals = membership?.failoverTotals ?? [:]
        for reason in FailoverRecord.Reason.allCases {
            let counter = registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "tandem", metricName: "failovers", unitName: "total",
                    helpText: "Promotions of this node since its agent started, by reason"),
                labels: [("reason", reason.rawValue)])
            let now = totals[reason] ?? 0
            let before = seen.failovers[reason] ?? 0
            if now > before { counter.increment(by: Int64(now - before)) }
            seen.failovers[reason] = max(now, before)
        }
        let gaps = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "tandem", metricName: "failover_gap", unitName: "seconds",
                helpText: "Client-visible gap of each failover to this node, as the API defines it"),
            labels: [],
            buckets: [
                .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(2), .seconds(3), .seconds(5),
                .seconds(10), .seconds(30), .seconds(60),
            ])
        for record in history where !seen.gapsRecorded.contains(record.epoch) {
            guard let gap = record.clientVisibleGapSeconds else { continue }
            gaps.record(.nanoseconds(Int64(gap * 1e9)))
            seen.gapsRecorded.insert(record.epoch)
        }
        if let nbd {
            gauge("nbd_connections", "", "NBD client connections open now")
                .set(Double(nbd.connections.load(ordering: .relaxed)))
            for operation in NBDMetrics.Operation.allCases {
                let totals = nbd.totals(operation)
                for (name, unit, help, value) in [
                    ("nbd_requests", "total", "NBD requests received, by operation", totals.requests),
                    ("nbd", "bytes_total", "Bytes NBD requests asked to move, by operation", totals.bytes),
                ] {
                    let counter = registry.makeCounter(
                        descriptor: MetricNameDescriptor(
                            namespace: "tandem", metricName: name, unitName: unit, helpText: help),
                        labels: [("operation", operation.rawValue)])
                    let key = "\(name)/\(operation.rawValue)"
                    let before = seen.nbd[key] ?? 0
                    if value > before { counter.increment(by: Int64(value - before)) }
                    seen.nbd[key] = max(value, before)
                }
            }
        }
        gauge("event_stream_clients", "", "Clients connected to the live event stream")
            .set(Double(events?.subscriberCount ?? 0))
        gauge(
            "certificate_expiry_timestamp", "seconds", "When this node's TLS certificate expires (0: none)",
            [("certificate", "node")]
        ).set(certificateExpiry ?? 0)
    }

    static func expiry(ofPEM path: String) -> Double? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            let certificate = try? Certificate(pemEncoded: text)
        else { return nil }
        return certificate.notValidAfter.timeIntervalSince1970
    }
}
