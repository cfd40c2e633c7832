import Synchronization
import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

/// Runs the groups of one node: starts each group's resources in order where the node's role
/// says they run, stops them in reverse, watches each with its monitor, restarts a failed one
/// in place up to its limit and then moves the group away.
///
/// Every change happens in one task, one command at a time (role changes, monitor results,
/// administrator commands), so that a start never races a stop. What it knows is published in
/// `status` at once.
public final class GroupManager: Sendable {
    /// What the manager asks of the rest of the daemon.
    public struct Hooks: Sendable {
        /// An event for the journal; `durable` when it matters after a crash.
        public var event: @Sendable (_ message: String, _ durable: Bool) -> Void
        /// The group cannot run here any more: hand the primary role to the peer. `nil` when it
        /// was handed over, else why not (the peer is dead, or cannot take it).
        public var failover: @Sendable (_ reason: String) async -> String?
        /// A stop failed: the resources may still hold the volume; reset this node.
        public var reset: @Sendable (_ reason: String) -> Void

        public init(
            event: @escaping @Sendable (String, Bool) -> Void, failover: @escaping @Sendable (String) async -> String?,
            reset: @escaping @Sendable (String) -> Void
        ) {
            self.event = event
            self.failover = failover
            self.reset = reset
        }
    }

    /// One resource as `tandem resource status` shows it.
    public struct ResourceStatus: Sendable, Equatable {
        public enum State: String, Sendable {
            case stopped, starting, running, stopping, failed, invalid
        }
        public var name: String
        public var group: String
        public var type: String
        public var runOn: RunOn
        public var state: State
        public var failCount: Int
        public var lastFailure: String?
    }

    enum Command {
        case role(ClusterRole, done: @Sendable () -> Void)
        case monitored(index: Int, generation: UInt64, result: MonitorResult)
        /// A restart's delay is over: start what may run.
        case retry
        case cleanup(String?, reply: @Sendable (String?) -> Void)
        case refresh(reply: @Sendable () -> Void)
        case stopAll(done: @Sendable () -> Void)
    }

    struct Entry {
        let agent: any ResourceAgent
        var state: ResourceStatus.State = .stopped
        var policy: RestartPolicy
        var lastFailure: String?
        /// Bumped on every start and stop, so that a monitor result from before is ignored.
        var generation: UInt64 = 0
        var invalidReason: String?
        /// When a restart after a failure may start it (the manager's clock).
        var restartAt: Duration?
        var spec: ResourceSpec { agent.spec }
    }

    private let hooks: Hooks
    private let commands: AsyncStream<Command>
    private let continuation: AsyncStream<Command>.Continuation
    private let published: Mutex<[ResourceStatus]>
    private let agents: [any ResourceAgent]
    private let clock = ContinuousClock()
    private let origin = ContinuousClock.now

    public init(agents: [any ResourceAgent], hooks: Hooks) {
        self.agents = agents
        self.hooks = hooks
        (commands, continuation) = AsyncStream.makeStream(of: Command.self, bufferingPolicy: .unbounded)
        published = Mutex(
            agents.map {
                ResourceStatus(
                    name: $0.spec.name, group: $0.spec.group, type: $0.spec.type.rawValue, runOn: $0.spec.runOn,
                    state: .stopped, failCount: 0, lastFailure: nil)
            })
    }

    /// Every resource, in group and start order.
    public var status: [ResourceStatus] { published.withLock { $0 } }

    /// Starts and stops resources for `role`; returns when done.
    public func setRole(_ role: ClusterRole) async {
        await continuation.request(orWhenEnded: ()) { done in .role(role, done: { done(()) }) }
    }

    /// Queues a role change without waiting for it: for callers that must not block, such as
    /// the membership loop. Requests are carried out in the order they were made.
    public func requestRole(_ role: ClusterRole) {
        continuation.yield(.role(role, done: {}))
    }

    /// Queues stopping every resource without waiting.
    public func requestStopAll() {
        continuation.yield(.stopAll(done: {}))
    }

    /// Stops every resource (the agent is shutting down or the node hands its role over).
    public func stopAll() async {
        await continuation.request(orWhenEnded: ()) { done in .stopAll(done: { done(()) }) }
    }

    /// Forgets the failures of `resource` (every resource when `nil`) and starts what may run
    /// again; `nil` on success, else why not.
    public func cleanup(_ resource: String?) async -> String? {
        await continuation.request(orWhenEnded: "the resource manager has stopped") { done in
            .cleanup(resource, reply: done)
        }
    }

    /// Probes every resource with its monitor and records what it finds.
    public func refresh() async {
        await continuation.request(orWhenEnded: ()) { done in .refresh(reply: { done(()) }) }
    }

    /// Validates every agent, then serves commands until `finish()`.
    public func run() async {
        var entries: [Entry] = []
        for agent in agents {
            var entry = Entry(
                agent: agent,
                policy: RestartPolicy(maxRestarts: agent.spec.maxRestarts, window: agent.spec.restartWindow)
            )
            if let problem = await agent.validate() {
                entry.state = .invalid
                entry.invalidReason = problem
                hooks.event("resource \(agent.spec.name) (\(agent.spec.type.rawValue)) is invalid: \(problem)", true)
            }
            entries.append(entry)
        }
        await probeLeftovers(&entries)
        publish(entries)
        var role: ClusterRole?
        let monitors = startMonitors()
        for await command in commands {
            switch command {
            case .role(let newRole, let done):
                role = newRole
                await converge(&entries, role: newRole)
                done()
            case .monitored(let index, let generation, let result):
                guard entries[index].generation == generation, entries[index].state == .running else { break }
                // A monitor that ran while monitoring was turned off (config mode) is not acted on.
                guard monitoring.withLock({ $0 }) else { break }
                guard result != .running else { break }
                let reason: String
                switch result {
                case .failed(let text): reason = text
                default: reason = "monitor found it not running"
                }
                await failed(&entries, index: index, reason: reason, role: role)
            case .retry:
                if let role { await converge(&entries, role: role) }
            case .cleanup(let name, let reply):
                let matching = entries.indices.filter { name == nil || entries[$0].spec.name == name }
                if matching.isEmpty {
                    reply("no resource named \(name ?? "")")
                    break
                }
                for index in matching {
                    entries[index].policy.cleanup()
                    entries[index].lastFailure = nil
                    entries[index].restartAt = nil
                    if entries[index].state == .failed { entries[index].state = .stopped }
                }
                hooks.event("fail counts cleared for \(name ?? "every resource")", false)
                if let role { await converge(&entries, role: role) }
                reply(nil)
            case .refresh(let reply):
                for index in entries.indices where entries[index].state != .invalid {
                    let found = await entries[index].agent.monitor()
                    let recorded = entries[index].state
                    let now: ResourceStatus.State =
                        found == .running ? .running : recorded == .failed ? .failed : .stopped
                    if now != recorded {
                        hooks.event(
                            "refresh: \(entries[index].spec.name) was recorded \(recorded.rawValue), is \(now.rawValue)",
                            false)
                        entries[index].state = now
                        entries[index].generation += 1
                    }
                }
                if let role { await converge(&entries, role: role) }
                reply()
            case .stopAll(let done):
                role = nil
                await stopGroups(&entries, where: { _ in true })
                done()
            }
            publish(entries)
        }
        // However the loop ended, a command asked from now on is answered at once.
        continuation.finish()
        monitors.cancel()
    }

    /// Before the first role: whatever an earlier run left running (an agent killed with its
    /// host alive keeps its floating addresses and mounts) is recorded as running, so that the
    /// first role stops what must not run here. The daemon's own kinds start stopped anyway.
    private func probeLeftovers(_ entries: inout [Entry]) async {
        for index in entries.indices where entries[index].state == .stopped {
            let spec = entries[index].spec
            guard spec.type != .volume, spec.type != .nbdExport else { continue }
            guard await entries[index].agent.monitor() == .running else { continue }
            entries[index].state = .running
            entries[index].generation += 1
            hooks.event(
                "resource \(spec.name) was found running at start (left by an earlier run); it is stopped unless "
                    + "this node's role runs it", true)
        }
    }

    /// Ends `run()`.
    public func finish() { continuation.finish() }

    /// One task that runs each resource's monitor at its interval while it is running.
    private func startMonitors() -> Task<Void, Never> {
        Task { [self] in
            await withTaskGroup(of: Void.self) { group in
                for index in agents.indices {
                    group.addTask { await self.monitorLoop(index) }
                }
            }
        }
    }

    private func monitorLoop(_ index: Int) async {
        let agent = agents[index]
        while !Task.isCancelled {
            try? await Task.sleep(for: agent.spec.monitorInterval)
            guard published.withLock({ $0[index].state == .running }), monitoring.withLock({ $0 }) else { continue }
            let before = generations.withLock { $0[index] ?? 0 }
            let result = await agent.monitor()
            continuation.yield(.monitored(index: index, generation: before, result: result))
        }
    }

    /// Whether monitors run (config mode turns HA monitoring off).
    private let monitoring = Mutex(true)

    /// Turns resource monitoring on or off; off, no failure is noticed, so nothing restarts or moves.
    public func setMonitoring(_ on: Bool) { monitoring.withLock { $0 = on } }

    /// Each resource's generation, for the monitor tasks.
    private let generations = Mutex<[Int: UInt64]>([:])

    /// Starts what must run for `role` and stops what must not, group by group.
    private func converge(_ entries: inout [Entry], role: ClusterRole) async {
        for group in groupNames(entries) {
            let members = entries.indices.filter { entries[$0].spec.group == group }
            // Stop, in reverse, what must not run here.
            for index in members.reversed() where !entries[index].spec.runOn.runs(on: role) {
                await stop(&entries, index: index)
            }
            // Start, in order, what must; the group stops at the first resource that cannot.
            for index in members where entries[index].spec.runOn.runs(on: role) {
                let state = entries[index].state
                if state == .running { continue }
                if let at = entries[index].restartAt, at > origin.duration(to: clock.now) {
                    // Waiting out a restart's delay: the `.retry` at its end starts the rest.
                    break
                }
                if state == .invalid || state == .failed {
                    let name = entries[index].spec.name
                    let fix =
                        state == .invalid
                        ? "correct its settings in the config and restart the agent"
                        : "once the cause is fixed, `tandem resource cleanup \(name)` starts it again"
                    hooks.event(
                        "group \(group) stops at \(name) (\(state.rawValue)): "
                            + (entries[index].invalidReason ?? entries[index].lastFailure ?? "") + "; \(fix)", false)
                    break
                }
                if !(await start(&entries, index: index)) {
                    await failed(
                        &entries, index: index, reason: entries[index].lastFailure ?? "start failed", role: role)
                    break
                }
            }
        }
    }

    private func groupNames(_ entries: [Entry]) -> [String] {
        var names: [String] = []
        for entry in entries where !names.contains(entry.spec.group) { names.append(entry.spec.group) }
        return names
    }

    @discardableResult
    private func start(_ entries: inout [Entry], index: Int) async -> Bool {
        let spec = entries[index].spec
        entries[index].state = .starting
        entries[index].restartAt = nil
        entries[index].generation += 1
        publish(entries)
        if let problem = await entries[index].agent.start() {
            entries[index].state = .failed
            entries[index].lastFailure = problem
            hooks.event("resource \(spec.name) failed to start: \(problem)", true)
            return false
        }
        entries[index].state = .running
        entries[index].generation += 1
        publish(entries)
        hooks.event("resource \(spec.name) started", false)
        return true
    }

    /// Stops one resource; a stop that fails or times out resets the node.
    private func stop(_ entries: inout [Entry], index: Int) async {
        let spec = entries[index].spec
        guard entries[index].state == .running || entries[index].state == .starting || entries[index].state == .failed
        else { return }
        let wasFailed = entries[index].state == .failed
        entries[index].state = .stopping
        entries[index].generation += 1
        publish(entries)
        if let problem = await entries[index].agent.stop() {
            let reason = "resource \(spec.name) could not be stopped: \(problem)"
            hooks.event(reason, true)
            hooks.reset(reason)
            return
        }
        // A failed resource stays failed, stopped or not, until an administrator cleans it up.
        entries[index].state = wasFailed ? .failed : .stopped
        hooks.event("resource \(spec.name) stopped", false)
    }

    private func stopGroups(_ entries: inout [Entry], where include: (String) -> Bool) async {
        for index in entries.indices.reversed() where include(entries[index].spec.group) {
            await stop(&entries, index: index)
        }
    }

    /// A resource failed: restart it (and the resources after it in its group) in place after the
    /// policy's delay, or, past its limit, stop the group and hand the role to the peer.
    private func failed(_ entries: inout [Entry], index: Int, reason: String, role: ClusterRole?) async {
        let spec = entries[index].spec
        let now = origin.duration(to: clock.now)
        let decision = entries[index].policy.failed(at: now)
        entries[index].lastFailure = reason
        let members = entries.indices.filter { entries[$0].spec.group == spec.group && $0 >= index }
        switch decision {
        case .restart(let attempt, let delay):
            hooks.event(
                "resource \(spec.name) failed: \(reason); restart \(attempt) of \(spec.maxRestarts) within "
                    + "\(Units.formatDuration(spec.restartWindow)) in \(Units.formatDuration(delay))", true)
            for member in members.reversed() { await stop(&entries, index: member) }
            for member in members where entries[member].state == .failed { entries[member].state = .stopped }
            entries[index].restartAt = now + delay
            publish(entries)
            // The loop stays free for role changes meanwhile; the retry only starts what the role
            // then wants. A thread of its own waits: a starved task pool must not hold a restart up.
            let microseconds = UInt32(
                clamping: delay.components.seconds * 1_000_000 + delay.components.attoseconds / 1_000_000_000_000)
            ProcessRunner.startThread { [continuation] in
                usleep(microseconds)
                continuation.yield(.retry)
            }
        case .failover(let failures):
            let message =
                "resource \(spec.name) failed \(failures) times within \(Units.formatDuration(spec.restartWindow)) "
                + "(max-restarts \(spec.maxRestarts)): group \(spec.group) fails over to the peer"
            hooks.event(message, true)
            await stopGroups(&entries, where: { $0 == spec.group })
            entries[index].state = .failed
            publish(entries)
            guard role == .primary, let refused = await hooks.failover(message) else { return }
            let stays =
                "group \(spec.group) stays stopped on this node: \(refused); once the cause is fixed, "
                + "`tandem resource cleanup \(spec.name)` starts it again"
            entries[index].lastFailure = "\(reason); \(stays)"
            hooks.event(stays, true)
        }
    }

    private func publish(_ entries: [Entry]) {
        let statuses = entries.map { entry in
            ResourceStatus(
                name: entry.spec.name, group: entry.spec.group, type: entry.spec.type.rawValue, runOn: entry.spec.runOn,
                state: entry.state, failCount: entry.policy.failCount,
                lastFailure: entry.invalidReason ?? entry.lastFailure)
        }
        published.withLock { $0 = statuses }
        generations.withLock { generations in
            for (index, entry) in entries.enumerated() { generations[index] = entry.generation }
        }
    }
}
