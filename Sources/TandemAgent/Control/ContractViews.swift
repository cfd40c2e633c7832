import TandemAPI
import TandemCore
import TandemReplication
import TandemResources

// The agent's state as the contract shows it. Only this file turns internal types into replies.

extension Duration {
    /// In seconds, as the contract carries durations.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

extension ClusterView {
    init(_ snapshot: MembershipService.Snapshot) {
        let heartbeat = snapshot.peerHeartbeat
        self.init(
            role: snapshot.role, epoch: snapshot.epoch, state: snapshot.standby ? .standby : .online,
            quorum: snapshot.hasQuorum, leaseRemainingSeconds: snapshot.leaseRemaining?.seconds,
            peer: PeerView(
                name: heartbeat?.sender, alive: snapshot.peerAlive,
                role: heartbeat.map { $0.isPrimary ? .primary : .secondary },
                state: heartbeat.map { $0.standby ? .standby : .online }, epoch: heartbeat?.epoch,
                links: snapshot.links.map { LinkView(name: $0.0, lastHeardSecondsAgo: $0.1?.seconds) }),
            witness: WitnessView(
                configured: snapshot.witnessConfigured, lastHeardSecondsAgo: snapshot.witnessHeardAgo?.seconds),
            automaticFailover: snapshot.automaticFailoverBlocker ?? "on", recordedOutdated: snapshot.recordedOutdated,
            events: snapshot.events, failovers: snapshot.failovers)
    }
}

extension ModesView {
    init(_ view: ModeView, node: String, peer: String) {
        self.init(
            localNode: node, localMode: view.localMode, localStatus: view.localStatus, remoteNode: peer,
            remoteMode: view.remoteMode, remoteStatus: view.remoteStatus, peerCertifiedDown: view.peerCertifiedDown,
            failedStartup: view.failedStartup)
    }
}

extension ResourceView {
    init(_ resource: GroupManager.ResourceStatus) {
        self.init(
            name: resource.name, group: resource.group, type: resource.type, runOn: resource.runOn,
            state: State(rawValue: resource.state.rawValue) ?? .invalid, failCount: resource.failCount,
            lastFailure: resource.lastFailure)
    }
}

extension VolumeView {
    init(_ status: ReplicatedVolume.Status) {
        self.init(
            name: status.name, role: status.role, connection: status.connection, disk: status.disk,
            protocol: status.protocolName, outOfSyncBytes: status.outOfSyncBytes,
            generations: status.generations.description, epoch: status.epoch,
            resyncedBytesTotal: status.resyncedBytesTotal, activityLogWrites: status.activityLogWrites,
            activityLogDataFlushes: status.activityLogDataFlushes, activityLogWaits: status.activityLogWaits,
            peerRole: status.peerRole, peerDisk: status.peerDisk, resync: status.resync.map(ResyncView.init),
            lastResync: status.lastResync.map(ResyncView.init), verify: status.verify.map(VerifyView.init),
            lastVerify: status.lastVerify.map(VerifyView.init),
            splitBrain: status.splitBrain.map {
                SplitBrainView(localChangedBytes: $0.localChangedBytes, peerChangedBytes: $0.peerChangedBytes)
            })
    }
}

extension ResyncView {
    init(_ progress: ReplicatedVolume.ResyncProgress) {
        let seconds = ((progress.finishedAt ?? .now) - progress.startedAt).seconds
        let rate = seconds > 0 ? Double(progress.doneBytes) / seconds : 0
        let left = progress.totalBytes > progress.doneBytes ? progress.totalBytes - progress.doneBytes : 0
        self.init(
            source: progress.source == .local ? .local : .peer, percent: (progress.percent * 10).rounded() / 10,
            doneBytes: progress.doneBytes, totalBytes: progress.totalBytes, bytesLeft: left,
            seconds: (seconds * 1000).rounded() / 1000,
            etaSeconds: rate > 0 && progress.finishedAt == nil ? (Double(left) / rate).rounded() : nil,
            stalled: progress.stalled)
    }
}

extension VerifyView {
    init(_ verify: ReplicatedVolume.VerifyProgress) {
        let seconds = ((verify.finishedAt ?? .now) - verify.startedAt).seconds
        self.init(
            percent: (verify.percent * 10).rounded() / 10, checkedRegions: verify.checkedRegions,
            totalRegions: verify.totalRegions, regionBytes: verify.regionBytes,
            outOfSyncOffsets: verify.outOfSyncRegions.map { UInt64($0) * verify.regionBytes },
            finished: verify.finishedAt != nil, stopped: verify.stopped, seconds: (seconds * 1000).rounded() / 1000)
    }
}
