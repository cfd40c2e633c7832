import Foundation
import Synchronization
import TandemCore
import TandemTestSupport
import Testing

@testable import TandemResources

/// A group manager with hooks that record what it asked for.
final class Recorder: Sendable {
    let events = Mutex<[String]>([])
    let failovers = Mutex<[String]>([])
    let resets = Mutex<[String]>([])
    /// What the failover hook answers: `nil`, handed over; else why the peer cannot take it.
    let failoverRefusal: String?

    init(failoverRefusal: String? = nil) {
        self.failoverRefusal = failoverRefusal
    }

    var hooks: GroupManager.Hooks {
        GroupManager.Hooks(
            event: { message, _ in self.events.withLock { $0.append(message) } },
            failover: { reason in
                self.failovers.withLock { $0.append(reason) }
                return self.failoverRefusal
            },
            reset: { reason in self.resets.withLock { $0.append(reason) } })
    }

    /// Generous: the whole suite runs at once on two cores, and process tests hold threads.
    func waitFor(_ what: String, seconds: Double = 90, _ condition: () -> Bool) async throws {
        if try await Polling.eventually(seconds: seconds, { condition() }) { return }
        throw ResourceTestFailure(description: "timed out waiting for \(what); events: \(events.withLock { $0 })")
    }
}

@Suite struct GroupManagerTests {
    /// An exec resource that appends `start NAME` and `stop NAME` to a shared log and runs while
    /// its flag file exists.
    func logged(_ name: String, _ directory: TemporaryDirectory, extra: [String: String] = [:]) throws -> ResourceSpec {
        let flag = "\(directory.path)/\(name).flag"
        let log = "\(directory.path)/order.log"
        return try spec(
            .exec,
            [
                "name": name, "start": "echo start \(name) >> \(log); touch \(flag)",
                "stop": "echo stop \(name) >> \(log); rm -f \(flag)", "status": "test -e \(flag) || exit 3",
                "monitor-interval": "100ms",
            ].merging(extra) { $1 })
    }

    func order(_ directory: TemporaryDirectory) -> [String] {
        ((try? String(contentsOfFile: "\(directory.path)/order.log", encoding: .utf8)) ?? "")
            .split(separator: "\n").map(String.init)
    }

    @Test func group_startsInOrder_stopsInReverse_andRunOnIsObeyed() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder()
        let agents: [any ResourceAgent] = [
            ExecAgent(spec: try logged("first", directory)),
            ExecAgent(spec: try logged("second", directory)),
            ExecAgent(spec: try logged("warm", directory, extra: ["run-on": "both"])),
            ExecAgent(spec: try logged("standby-only", directory, extra: ["run-on": "secondary"])),
        ]
        let manager = GroupManager(agents: agents, hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.secondary)
        #expect(order(directory) == ["start warm", "start standby-only"])
        await manager.setRole(.primary)
        #expect(
            order(directory) == [
                "start warm", "start standby-only", "stop standby-only", "start first", "start second",
            ])
        #expect(manager.status.map(\.state) == [.running, .running, .running, .stopped])
        await manager.stopAll()
        #expect(order(directory).suffix(3) == ["stop warm", "stop second", "stop first"])
        manager.finish()
        await runner.value
        #expect(recorder.failovers.withLock { $0 }.isEmpty)
    }

    /// The limit is far above what the test needs: with the whole suite running on two cores, the
    /// process tests hold the shared threads for minutes at a time. It turns a hang into a failure.
    @Test(.timeLimit(.minutes(10))) func requestsAfterTheLoopHasFinished_areAnsweredAtOnce() async throws {
        let manager = GroupManager(agents: [], hooks: Recorder().hooks)
        let runner = Task { await manager.run() }
        manager.finish()
        await runner.value
        // Before, each of these waited forever for a loop that would never take it.
        await manager.stopAll()
        await manager.setRole(.primary)
        await manager.refresh()
        #expect(await manager.cleanup(nil) == "the resource manager has stopped")
    }

    @Test func monitorFailure_restartsInPlace_thenFailsOverPastMaxRestarts() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder()
        let agents: [any ResourceAgent] = [
            ExecAgent(spec: try logged("base", directory)),
            // A window far longer than the test: with the whole suite starving the monitors,
            // minutes can pass between two failures, and a failure outside the window is forgotten.
            ExecAgent(spec: try logged("app", directory, extra: ["max-restarts": "2", "restart-window": "1h"])),
            ExecAgent(spec: try logged("after", directory)),
        ]
        let manager = GroupManager(agents: agents, hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.primary)
        for attempt in 1...2 {
            try FileManager.default.removeItem(atPath: "\(directory.path)/app.flag")
            try await recorder.waitFor("restart \(attempt)") {
                manager.status[1].failCount == attempt && manager.status[1].state == .running
                    && manager.status[2].state == .running
            }
        }
        // The restart stopped what comes after the failed resource and started it again; the
        // resource before it was left alone.
        let restarts = order(directory).dropFirst(3)
        #expect(Array(restarts.prefix(4)) == ["stop after", "stop app", "start app", "start after"])
        #expect(!order(directory).contains("stop base"))
        try FileManager.default.removeItem(atPath: "\(directory.path)/app.flag")
        try await recorder.waitFor("the failover") { !recorder.failovers.withLock { $0 }.isEmpty }
        let reason = recorder.failovers.withLock { $0[0] }
        #expect(reason.contains("resource app failed 3 times within 60m (max-restarts 2)"), "\(reason)")
        #expect(manager.status.map(\.state) == [.stopped, .failed, .stopped])
        #expect(order(directory).suffix(3) == ["stop after", "stop app", "stop base"])
        // Cleanup forgets the failures and starts the group again.
        #expect(await manager.cleanup("app") == nil)
        #expect(manager.status.map(\.state) == [.running, .running, .running])
        #expect(manager.status[1].failCount == 0)
        #expect(await manager.cleanup("nothing-like-it") == "no resource named nothing-like-it")
        let events = recorder.events.withLock { $0 }
        #expect(events.contains { $0.contains("resource app failed: monitor found it not running; restart 1 of 2") })
        #expect(events.contains { $0.hasPrefix("fail counts cleared for app") })
        await manager.stopAll()
        manager.finish()
        await runner.value
    }

    @Test func restartDelays_doubleFromHalfASecond_upToHalfAMinute() {
        let delays = (1...9).map { RestartPolicy.restartDelay(attempt: $0) }
        #expect(
            delays == [
                .milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(30),
                .seconds(30), .seconds(30),
            ])
        var policy = RestartPolicy(maxRestarts: 2, window: .seconds(60))
        #expect(policy.failed(at: .seconds(1)) == .restart(attempt: 1, delay: .milliseconds(500)))
        #expect(policy.failed(at: .seconds(2)) == .restart(attempt: 2, delay: .seconds(1)))
        #expect(policy.failed(at: .seconds(3)) == .failover(failures: 3))
    }

    @Test func aGroupThePeerCannotTake_staysStoppedHere_andSaysWhichCommandStartsIt() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder(failoverRefusal: "b is not heard from")
        let agents: [any ResourceAgent] = [
            ExecAgent(spec: try logged("app", directory, extra: ["max-restarts": "1", "restart-window": "1h"]))
        ]
        let manager = GroupManager(agents: agents, hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.primary)
        let started = ContinuousClock.now
        try FileManager.default.removeItem(atPath: "\(directory.path)/app.flag")
        try await recorder.waitFor("the restart") {
            manager.status[0].failCount == 1 && manager.status[0].state == .running
        }
        #expect(ContinuousClock.now - started >= RestartPolicy.firstRestartDelay, "the restart waited its delay")
        try FileManager.default.removeItem(atPath: "\(directory.path)/app.flag")
        try await recorder.waitFor("the refused failover") { !recorder.failovers.withLock { $0 }.isEmpty }
        try await recorder.waitFor("the reason in the status") {
            manager.status[0].lastFailure?.contains("`tandem resource cleanup app`") == true
        }
        #expect(manager.status[0].state == .failed)
        #expect(manager.status[0].lastFailure?.contains("b is not heard from") == true)
        #expect(recorder.events.withLock { $0 }.contains { $0.hasPrefix("group g stays stopped on this node") })
        await manager.stopAll()
        manager.finish()
        await runner.value
    }

    @Test func stopThatHangs_resetsTheNode_withTheReason() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder()
        let flag = "\(directory.path)/stuck.flag"
        let stuck = try spec(
            .exec,
            [
                "name": "stuck", "start": "touch \(flag)", "stop": "sleep 30", "status": "test -e \(flag) || exit 3",
                "stop-timeout": "300ms",
            ])
        let manager = GroupManager(agents: [ExecAgent(spec: stuck)], hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.primary)
        await manager.setRole(.secondary)
        let resets = recorder.resets.withLock { $0 }
        #expect(
            resets == ["resource stuck could not be stopped: stop did not finish within 300ms and was killed"],
            "\(resets)")
        manager.finish()
        await runner.value
    }

    @Test func invalidResource_isReported_andOnlyItsGroupStops() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder()
        let broken = try spec(
            .exec, ["name": "broken", "start": "/no/such/tool", "stop": "true", "status": "true"], group: "bad")
        let agents: [any ResourceAgent] = [ExecAgent(spec: broken), ExecAgent(spec: try logged("fine", directory))]
        let manager = GroupManager(agents: agents, hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.primary)
        #expect(manager.status.map(\.state) == [.invalid, .running])
        #expect(manager.status[0].lastFailure == "start command: /no/such/tool is missing")
        #expect(recorder.events.withLock { $0 }.contains { $0.contains("resource broken (exec) is invalid") })
        #expect(recorder.failovers.withLock { $0 }.isEmpty)
        await manager.stopAll()
        manager.finish()
        await runner.value
    }
}

@Suite struct GroupManagerProbeTests {
    @Test func refresh_correctsTheRecordedState() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder()
        let flag = "\(directory.path)/svc.flag"
        let service = try spec(
            .exec,
            [
                "name": "svc", "start": "touch \(flag)", "stop": "rm -f \(flag)", "status": "test -e \(flag) || exit 3",
                "monitor-interval": "1h",
            ])
        let manager = GroupManager(agents: [ExecAgent(spec: service)], hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.primary)
        #expect(manager.status[0].state == .running)
        // Stopped behind the manager's back; the hourly monitor has not noticed.
        try FileManager.default.removeItem(atPath: flag)
        await manager.refresh()
        // Found stopped, recorded so, then started again since it must run on a primary.
        #expect(recorder.events.withLock { $0 }.contains("refresh: svc was recorded running, is stopped"))
        #expect(manager.status[0].state == .running)
        #expect(FileManager.default.fileExists(atPath: flag))
        await manager.stopAll()
        manager.finish()
        await runner.value
    }

    @Test func monitoringOff_noticesNothing() async throws {
        let directory = TemporaryDirectory()
        let recorder = Recorder()
        let flag = "\(directory.path)/svc.flag"
        let service = try spec(
            .exec,
            [
                "name": "svc", "start": "touch \(flag)", "stop": "rm -f \(flag)", "status": "test -e \(flag) || exit 3",
                "monitor-interval": "50ms",
            ])
        let manager = GroupManager(agents: [ExecAgent(spec: service)], hooks: recorder.hooks)
        let runner = Task { await manager.run() }
        await manager.setRole(.primary)
        manager.setMonitoring(false)
        try FileManager.default.removeItem(atPath: flag)
        try await Task.sleep(for: .milliseconds(500))
        #expect(manager.status[0].failCount == 0)
        manager.setMonitoring(true)
        try await recorder.waitFor("the failure once monitoring is back") { manager.status[0].failCount == 1 }
        await manager.stopAll()
        manager.finish()
        await runner.value
    }

    @Test func filesystem_mountsAndUnmountsEvenWhileAProcessHoldsIt() async throws {
        guard getuid() == 0 else { throw ResourceTestFailure(description: "mounting needs root") }
        let directory = TemporaryDirectory()
        let mountPoint = "\(directory.path)/mnt"
        let agent = FilesystemAgent(
            spec: try spec(.filesystem, ["device": "tandem-test", "directory": mountPoint, "fstype": "tmpfs"]))
        #expect(await agent.validate() == nil)
        #expect(await agent.monitor() == .notRunning)
        #expect(await agent.start() == nil)
        #expect(await agent.monitor() == .running)
        // A process with its working directory on the mount keeps it busy.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sleep")
        holder.arguments = ["60"]
        holder.currentDirectoryURL = URL(fileURLWithPath: mountPoint)
        try holder.run()
        defer { if holder.isRunning { holder.terminate() } }
        #expect(await agent.stop() == nil)
        #expect(await agent.monitor() == .notRunning)
        // Ended: gone, or a zombie (its end is Foundation's to notice, which it may do late).
        var ended = false
        for _ in 0..<100 where !ended {
            let stat = (try? String(contentsOfFile: "/proc/\(holder.processIdentifier)/stat", encoding: .utf8)) ?? ""
            ended =
                !holder.isRunning || stat.isEmpty || stat.split(separator: ")").last?.split(separator: " ").first == "Z"
            if !ended { usleep(50_000) }
        }
        #expect(ended, "the process holding the mount was ended")
    }
}
