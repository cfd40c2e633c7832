import Foundation
import Synchronization
import TandemCore
import TandemTestSupport
import Testing

@testable import TandemResources

func spec(
    _ type: Configuration.ResourceType, _ parameters: [String: String], group: String = "g", index: Int = 0
) throws -> ResourceSpec {
    try ResourceSpec.make(group: group, index: index, resource: .init(type: type, parameters: parameters)).get()
}

/// Fails with what is missing instead of skipping: these tests drive Debian's resource-agents.
func requireOCFAgent(_ name: String) throws {
    let path = "/usr/lib/ocf/resource.d/heartbeat/\(name)"
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw ResourceTestFailure(
            description: "\(path) is missing: install Debian's resource-agents (scripts/test does)")
    }
}

struct ResourceTestFailure: Error, CustomStringConvertible {
    var description: String
}

@Suite struct ProcessRunnerTests {
    @Test func timeout_killsTheWholeProcessGroup() async throws {
        let directory = TemporaryDirectory()
        let marker = "\(directory.path)/child.pid"
        let outcome = await ProcessRunner.run(
            "/bin/sh", ["-c", "sleep 30 & echo $! > \(marker); wait"], environment: ProcessRunner.defaultEnvironment,
            timeout: .milliseconds(500))
        #expect(outcome.timedOut)
        #expect(outcome.status == nil)
        let child = try #require(Int32(try String(contentsOfFile: marker, encoding: .utf8).filter(\.isNumber)))
        try await Task.sleep(for: .milliseconds(100))
        // Gone, or a zombie nobody reaped yet (its parent was killed too).
        let stat = (try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8)) ?? ""
        let state = stat.split(separator: ")").last?.split(separator: " ").first
        #expect(stat.isEmpty || state == "Z", "the background child \(child) survived the timeout: \(stat)")
    }

    @Test func aDaemonLeftBehind_doesNotHoldTheCallerUp() {
        // The blocking part alone, so that the figure is the runner's and not the test pool's.
        let started = ContinuousClock.now
        let outcome = ProcessRunner.runBlocking(
            "/bin/sh", ["-c", "sleep 3 & echo started; echo to-stderr >&2"],
            environment: ProcessRunner.defaultEnvironment, timeout: .seconds(10))
        #expect(outcome.status == 0)
        #expect(outcome.output.contains("started"))
        #expect(outcome.output.contains("to-stderr"))
        #expect(ContinuousClock.now - started < .seconds(2))
    }

    @Test func aProgramStillOpenForWritingBriefly_runsOnceItIsClosed() throws {
        // As when another thread forks while the program is being written: the child holds a
        // writable descriptor until it execs, and the kernel refuses to run the file (ETXTBSY).
        let directory = TemporaryDirectory()
        let program = "\(directory.path)/busy"
        let writer = open(program, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        try #require(writer >= 0)
        let script = Array("#!/bin/sh\necho ran\n".utf8)
        #expect(write(writer, script, script.count) == script.count)
        let closer = Thread {
            usleep(30_000)
            close(writer)
        }
        closer.start()
        let outcome = ProcessRunner.runBlocking(
            program, [], environment: ProcessRunner.defaultEnvironment, timeout: .seconds(5))
        #expect(outcome.spawnError == nil, "\(outcome.spawnError ?? "")")
        #expect(outcome.status == 0)
        #expect(outcome.output == "ran\n")
    }

    @Test func missingProgram_isReportedNotCrashed() async {
        let outcome = await ProcessRunner.run(
            "/nonexistent/agent", [], environment: [:], timeout: .seconds(1))
        #expect(outcome.spawnError != nil)
        #expect(outcome.status == nil)
    }
}

@Suite struct OCFAgentTests {
    @Test func dummy_validatesStartsIsMonitoredAndStops() async throws {
        try requireOCFAgent("Dummy")
        let directory = TemporaryDirectory()
        let state = "\(directory.path)/dummy.state"
        let agent = OCFAgent(spec: try spec(.ocf, ["agent": "heartbeat:Dummy", "params.state": state, "name": "d1"]))
        #expect(agent.path == "/usr/lib/ocf/resource.d/heartbeat/Dummy")
        #expect(await agent.validate() == nil)
        #expect(await agent.monitor() == .notRunning)
        #expect(await agent.start() == nil)
        #expect(FileManager.default.fileExists(atPath: state))
        #expect(await agent.monitor() == .running)
        try FileManager.default.removeItem(atPath: state)
        #expect(await agent.monitor() == .notRunning)
        #expect(await agent.start() == nil)
        #expect(await agent.stop() == nil)
        #expect(!FileManager.default.fileExists(atPath: state))
    }

    @Test func validateAll_failing_isReportedWithTheOCFMeaning() async throws {
        try requireOCFAgent("Dummy")
        let agent = OCFAgent(
            spec: try spec(.ocf, ["agent": "Dummy", "params.state": "/nonexistent-directory/dummy.state"]))
        let problem = try #require(await agent.validate())
        #expect(problem.contains("validate-all returned OCF_ERR_ARGS"), "\(problem)")
        #expect(problem.contains("is not writable"), "\(problem)")
    }

    @Test func requiredParameter_missing_isReportedByName() async throws {
        try requireOCFAgent("IPaddr2")
        let agent = OCFAgent(spec: try spec(.ocf, ["agent": "heartbeat:IPaddr2"]))
        let problem = try #require(await agent.validate())
        #expect(problem == "required parameter missing: ip", "\(problem)")
    }

    @Test func missing_notExecutable_andGarbage_areEachReported() async throws {
        let directory = TemporaryDirectory()
        let missing = OCFAgent(spec: try spec(.ocf, ["agent": "heartbeat:NoSuchAgent"]))
        #expect(await missing.validate() == "OCF agent /usr/lib/ocf/resource.d/heartbeat/NoSuchAgent is missing")

        let plain = "\(directory.path)/plain"
        try "#!/bin/sh\nexit 0\n".write(toFile: plain, atomically: true, encoding: .utf8)
        let notExecutable = OCFAgent(spec: try spec(.ocf, ["agent": plain]))
        #expect(await notExecutable.validate() == "OCF agent \(plain) is not executable")

        let garbage = "\(directory.path)/garbage"
        try "#!/bin/sh\necho 'hello \u{1}\u{2} not xml'\nexit 0\n".write(
            toFile: garbage, atomically: true, encoding: .utf8)
        chmod(garbage, 0o755)
        let problem = try #require(await OCFAgent(spec: try spec(.ocf, ["agent": garbage])).validate())
        #expect(problem.hasPrefix("meta-data is not an OCF resource-agent document"), "\(problem)")

        let failing = "\(directory.path)/failing"
        try "#!/bin/sh\necho 'broken install' >&2\nexit 5\n".write(toFile: failing, atomically: true, encoding: .utf8)
        chmod(failing, 0o755)
        let failure = try #require(await OCFAgent(spec: try spec(.ocf, ["agent": failing])).validate())
        #expect(failure == "meta-data returned OCF_ERR_INSTALLED (required software missing): broken install")
    }

    @Test func exitCodes_haveTheirOCFMeaning() {
        let names = (0...9).map { OCFAgent.meaning(Int32($0)).split(separator: " ")[0] }
        #expect(
            names == [
                "OCF_SUCCESS", "OCF_ERR_GENERIC", "OCF_ERR_ARGS", "OCF_ERR_UNIMPLEMENTED", "OCF_ERR_PERM",
                "OCF_ERR_INSTALLED", "OCF_ERR_CONFIGURED", "OCF_NOT_RUNNING", "OCF_RUNNING_MASTER", "OCF_FAILED_MASTER",
            ])
    }
}

@Suite struct ExecAndIPAgentTests {
    @Test func exec_statusCodes_mapToRunningStoppedAndFailed() async throws {
        let directory = TemporaryDirectory()
        let flag = "\(directory.path)/flag"
        let agent = ExecAgent(
            spec: try spec(
                .exec,
                [
                    "start": "touch \(flag)", "stop": "rm -f \(flag)",
                    "status": "test -e \(flag) || exit 3; grep -q broken \(flag) && exit 1; exit 0",
                ]))
        #expect(await agent.validate() == nil)
        #expect(await agent.monitor() == .notRunning)
        #expect(await agent.start() == nil)
        #expect(await agent.monitor() == .running)
        try "broken".write(toFile: flag, atomically: true, encoding: .utf8)
        #expect(await agent.monitor() == .failed("status exited with 1"))
        #expect(await agent.stop() == nil)
        #expect(await agent.monitor() == .notRunning)
    }

    @Test func exec_missingProgram_isReportedByValidate() async throws {
        let agent = ExecAgent(
            spec: try spec(.exec, ["start": "/no/such/program --go", "stop": "true", "status": "true"]))
        #expect(await agent.validate() == "start command: /no/such/program is missing")
    }

    @Test func ip_badAddressAndMissingInterface_areRefused() async throws {
        #expect(
            await IPAgent(spec: try spec(.ip, ["address": "10.0.0.300/24", "interface": "lo"])).validate()
                == "address \"10.0.0.300/24\" is not an IP address")
        #expect(
            await IPAgent(spec: try spec(.ip, ["address": "10.0.0.5/24", "interface": "no-such-if0"])).validate()
                == "interface no-such-if0 does not exist")
    }

    @Test func ip_alreadyOnAnotherInterface_isInUse() async throws {
        // 127.0.0.1 is on lo on every Linux host: claiming it for another interface is refused.
        let agent = IPAgent(spec: try spec(.ip, ["address": "127.0.0.1/8", "interface": "tandem-none0"]))
        let problem = try #require(await agent.start())
        #expect(problem == "127.0.0.1 is already in use on lo of this host", "\(problem)")
    }

    /// The gratuitous ARP rounds after a start belong to the agent: a stop ends them, so a node
    /// that gave the address up does not go on announcing it for seconds.
    @Test func ip_stop_endsTheAnnouncementsStillToCome() async throws {
        let agent = IPAgent(spec: try spec(.ip, ["address": "not-an-address", "interface": "lo"]))
        let rounds = Task<Void, Never>.detached { try? await Task.sleep(for: .seconds(30)) }
        agent.announcements.replace(with: rounds)
        #expect(!rounds.isCancelled)
        _ = await agent.stop()
        #expect(rounds.isCancelled)
    }
}
