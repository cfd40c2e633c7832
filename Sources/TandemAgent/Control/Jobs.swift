import Synchronization
import TandemAPI
import TandemCore

/// The node's background jobs: the last 256, with their steps; each start and end is written to
/// the journal.
public final class JobRegistry: Sendable {
    fileprivate struct Entry {
        var view: JobView
        var task: Task<Void, Never>?
        /// Whether a cancel may stop it now (a step that is safe to leave half done).
        var cancellable: Bool
        var cancel: (@Sendable () async -> Void)?
    }

    private let entries = Mutex<[String: Entry]>([:])
    private let order = Mutex<[String]>([])
    private let record: @Sendable (String) -> Void
    static let limit = 256

    /// `record` writes a line to the journal.
    public init(record: @escaping @Sendable (String) -> Void = { _ in }) {
        self.record = record
    }

    public var all: [JobView] {
        let ids = order.withLock { $0 }
        return entries.withLock { entries in ids.compactMap { entries[$0]?.view } }
    }

    public func job(_ id: String) -> JobView? { entries.withLock { $0[id]?.view } }

    /// Starts `work` as a job; returns it as queued.
    func start(
        kind: String, target: String, caller: String,
        _ work: @escaping @Sendable (JobContext) async throws(ManagementAPI.Refusal) -> Void
    ) -> JobView {
        var generator = SystemRandomNumberGenerator()
        let id = TokenStore.hex((0..<8).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let view = JobView(
            id: id, kind: kind, target: target, state: .queued, result: nil, caller: caller,
            createdAt: WallClock.secondsSinceEpoch(), finishedAt: nil, steps: [], error: nil)
        entries.withLock { $0[id] = Entry(view: view, task: nil, cancellable: true, cancel: nil) }
        let dropped = order.withLock { order -> [String] in
            order.append(id)
            guard order.count > Self.limit else { return [] }
            let excess = Array(order.prefix(order.count - Self.limit))
            order.removeFirst(excess.count)
            return excess
        }
        entries.withLock { entries in for old in dropped { entries[old] = nil } }
        record("job \(id) \(kind) of \(target) by \(caller): queued")
        let context = JobContext(id: id, registry: self)
        let task = Task {
            update(id) { $0.view.state = .running }
            do throws(ManagementAPI.Refusal) {
                try await work(context)
                finish(id, .success, error: nil)
            } catch {
                let result: JobView.Outcome =
                    error.status == .requestTimeout ? .timedOut : (Task.isCancelled ? .cancelled : .failed)
                finish(id, result, error: error.error)
            }
        }
        entries.withLock { $0[id]?.task = task }
        return view
    }

    /// Cancels a job where that is safe; the refusal says why not.
    public func cancel(_ id: String) async throws(ManagementAPI.Refusal) -> JobView {
        let (entry, allowed) = entries.withLock { entries -> (Entry?, Bool) in
            guard let entry = entries[id] else { return (nil, false) }
            return (entry, entry.view.state != .finished && entry.cancellable)
        }
        guard let entry else { throw ManagementAPI.Refusal(.notFound, "no job \(UntrustedText.quoted(id))") }
        guard entry.view.state != .finished else { return entry.view }
        guard allowed else {
            throw .conflict(
                "job \(id) cannot be cancelled now: its step \(entry.view.steps.last?.name ?? "") is under way",
                correction: "wait for it to finish, then undo it (for a standby: `tandem node online`)")
        }
        await entry.cancel?()
        entry.task?.cancel()
        finish(id, .cancelled, error: APIError(message: "cancelled"))
        return job(id) ?? entry.view
    }

    fileprivate func update(_ id: String, _ change: (inout Entry) -> Void) {
        entries.withLock { entries in
            guard var entry = entries[id], entry.view.state != .finished else { return }
            change(&entry)
            entries[id] = entry
        }
    }

    private func finish(_ id: String, _ result: JobView.Outcome, error: APIError?) {
        let now = WallClock.secondsSinceEpoch()
        var finished: JobView?
        update(id) { entry in
            entry.view.state = .finished
            entry.view.result = result
            entry.view.finishedAt = now
            entry.view.error = error
            if let last = entry.view.steps.indices.last, entry.view.steps[last].finishedAt == nil {
                entry.view.steps[last].finishedAt = now
            }
            finished = entry.view
        }
        if let finished {
            record(
                "job \(id) \(finished.kind) of \(finished.target): \(result.rawValue)"
                    + (error.map { ": \($0.message)" } ?? ""))
        }
    }
}

/// What a running job tells its registry.
struct JobContext: Sendable {
    let id: String
    let registry: JobRegistry

    /// Ends the current step and begins `name`; `cancel` (nil: not safe) is how a cancel stops it.
    func step(_ name: String, cancel: (@Sendable () async -> Void)? = nil, cancellable: Bool = false) {
        let now = WallClock.secondsSinceEpoch()
        registry.update(id) { entry in
            if let last = entry.view.steps.indices.last { entry.view.steps[last].finishedAt = now }
            entry.view.steps.append(JobStep(name: name, startedAt: now, finishedAt: nil, message: nil))
            entry.cancellable = cancellable || cancel != nil
            entry.cancel = cancel
        }
    }

    /// Sets the current step's message (progress, or what it waits for).
    func note(_ message: String) {
        registry.update(id) { entry in
            if let last = entry.view.steps.indices.last { entry.view.steps[last].message = message }
        }
    }
}

extension ManagementAPI {
    /// Standby or online of `node` as a job: the request, then the wait until the role has moved.
    func nodeStateJob(_ standby: Bool, node: String, caller: String, jobs: JobRegistry) -> JobView {
        jobs.start(kind: standby ? "node-standby" : "node-online", target: node, caller: caller) {
            (job) throws(ManagementAPI.Refusal) in
            job.step(standby ? "ask \(node) to hand the primary role over" : "make \(node) eligible again")
            _ = try await self.setStandby(standby, node: node, caller: caller)
            guard standby else { return }
            job.step("wait until the other node is primary")
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                if self.roleMoved(awayFrom: node) {
                    job.note("the other node is primary")
                    return
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
            throw ManagementAPI.Refusal(.requestTimeout, "the other node did not become primary within 60 s")
        }
    }

    /// An online verify as a job: start, then progress until every region was compared.
    func verifyJob(volume name: String, caller: String, jobs: JobRegistry) throws(ManagementAPI.Refusal) -> JobView {
        _ = try volume(name, .verifyStart, caller: caller)
        return jobs.start(kind: "volume-verify", target: name, caller: caller) { (job) throws(ManagementAPI.Refusal) in
            job.step(
                "compare every region with the peer",
                cancel: { _ = try? self.volume(name, .verifyStop, caller: "\(caller), cancelling its job") })
            while true {
                guard let view = self.status().volume(name) else { return }
                if let verify = view.verify {
                    job.note("\(verify.percent)% compared, \(verify.outOfSyncOffsets.count) regions differ")
                } else {
                    let last = view.lastVerify
                    job.note(
                        "\(last?.checkedRegions ?? 0) regions compared, \(last?.outOfSyncOffsets.count ?? 0) differ")
                    if last?.stopped == true { throw ManagementAPI.Refusal(.conflict, "the verify was stopped") }
                    return
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }
}
