import CTandemLinux
import Synchronization
import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

/// What a monitor found.
public enum MonitorResult: Sendable, Equatable {
    case running
    case notRunning
    case failed(String)
}

/// The code that starts, stops and watches one resource. Every call obeys the resource's
/// timeout for that action; a failure comes back as a reason an administrator can act on.
public protocol ResourceAgent: Sendable {
    var spec: ResourceSpec { get }
    /// Checks the settings before anything starts; `nil` when they are usable.
    func validate() async -> String?
    /// `nil` when the resource runs.
    func start() async -> String?
    /// `nil` when the resource is stopped. A failure here means it may still hold the volume.
    func stop() async -> String?
    func monitor() async -> MonitorResult
}

/// Builds the agent for a spec; built-in kinds that belong to the daemon (volume, nbd-export)
/// come from `builtIn`.
public enum ResourceAgents {
    ///
    /// `peerAddresses` are the peer node's own addresses (its node and heartbeat addresses): an
    /// `ip` resource that finds its floating address still answered from one of their MACs takes
    /// it over (the peer's agent died or froze with its host alive); `note` tells the journal.
    public static func make(
        _ spec: ResourceSpec, peerAddresses: [String] = [], note: @escaping @Sendable (String) -> Void = { _ in },
        builtIn: (ResourceSpec) -> (any ResourceAgent)?
    ) -> any ResourceAgent {
        switch spec.type {
        case .ocf: return OCFAgent(spec: spec)
        case .exec: return ExecAgent(spec: spec)
        case .ip: return IPAgent(spec: spec, peerAddresses: peerAddresses, note: note)
        case .filesystem: return FilesystemAgent(spec: spec)
        case .systemd: return SystemdAgent(spec: spec)
        case .volume, .nbdExport:
            return builtIn(spec) ?? ClosureAgent(spec: spec, start: { nil }, stop: { nil }, monitor: { .running })
        }
    }

    /// Whether `path` names an executable file; the reason when not.
    static func checkExecutable(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return "\(path) is missing" }
        guard (info.st_mode & S_IFMT) == S_IFREG else { return "\(path) is not a regular file" }
        guard access(path, X_OK) == 0 else { return "\(path) is not executable" }
        return nil
    }

    /// Finds `name` in PATH.
    static func which(_ name: String) -> String? {
        let path = ProcessRunner.defaultEnvironment["PATH"] ?? ""
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    /// A failure message from a run: the exit status or the timeout, and the last line printed.
    static func describe(_ action: String, _ outcome: ProcessRunner.Outcome, timeout: Duration) -> String {
        if let error = outcome.spawnError { return "\(action) could not run: \(error)" }
        if outcome.timedOut { return "\(action) did not finish within \(Units.formatDuration(timeout)) and was killed" }
        let status = outcome.status.map { "exited with \($0)" } ?? "was killed by a signal"
        let line = outcome.lastLine
        return line.isEmpty ? "\(action) \(status)" : "\(action) \(status): \(line)"
    }
}

/// An agent made of three closures: the daemon's own resources.
public struct ClosureAgent: ResourceAgent {
    public let spec: ResourceSpec
    let startAction: @Sendable () async -> String?
    let stopAction: @Sendable () async -> String?
    let monitorAction: @Sendable () async -> MonitorResult

    public init(
        spec: ResourceSpec, start: @escaping @Sendable () async -> String?,
        stop: @escaping @Sendable () async -> String?, monitor: @escaping @Sendable () async -> MonitorResult
    ) {
        self.spec = spec
        self.startAction = start
        self.stopAction = stop
        self.monitorAction = monitor
    }

    public func validate() async -> String? { nil }
    public func start() async -> String? { await startAction() }
    public func stop() async -> String? { await stopAction() }
    public func monitor() async -> MonitorResult { await monitorAction() }
}

/// `exec`: the administrator's own start, stop and status commands, run by /bin/sh. Status exits
/// 0 when running, 3 (LSB) or 7 (OCF) when stopped; anything else is a failure.
public struct ExecAgent: ResourceAgent {
    public let spec: ResourceSpec

    func run(_ key: String, timeout: Duration) async -> ProcessRunner.Outcome {
        await ProcessRunner.run(
            "/bin/sh", ["-c", spec.parameters[key] ?? "false"],
            environment: ProcessRunner.defaultEnvironment.merging(["TANDEM_RESOURCE": spec.name]) { $1 },
            timeout: timeout)
    }

    public func validate() async -> String? {
        for key in ["start", "stop", "status"] {
            guard let command = spec.parameters[key], !command.isEmpty else { return "\(key) command is empty" }
            let program = String(command.split(separator: " ").first ?? "")
            if program.hasPrefix("/"), let problem = ResourceAgents.checkExecutable(program) {
                return "\(key) command: \(problem)"
            }
        }
        return nil
    }

    public func start() async -> String? {
        let outcome = await run("start", timeout: spec.startTimeout)
        return outcome.status == 0 ? nil : ResourceAgents.describe("start", outcome, timeout: spec.startTimeout)
    }

    public func stop() async -> String? {
        let outcome = await run("stop", timeout: spec.stopTimeout)
        return outcome.status == 0 ? nil : ResourceAgents.describe("stop", outcome, timeout: spec.stopTimeout)
    }

    public func monitor() async -> MonitorResult {
        let outcome = await run("status", timeout: spec.monitorTimeout)
        switch outcome.status {
        case 0: return .running
        case 3, 7: return .notRunning
        default: return .failed(ResourceAgents.describe("status", outcome, timeout: spec.monitorTimeout))
        }
    }
}

/// `ocf`: an Open Cluster Framework agent, called as Pacemaker calls it.
public struct OCFAgent: ResourceAgent {
    public let spec: ResourceSpec

    public static let root = "/usr/lib/ocf"

    /// The OCF API's exit codes and their meaning.
    public static func meaning(_ status: Int32) -> String {
        switch status {
        case 0: return "OCF_SUCCESS"
        case 1: return "OCF_ERR_GENERIC (generic error)"
        case 2: return "OCF_ERR_ARGS (invalid parameters)"
        case 3: return "OCF_ERR_UNIMPLEMENTED (action not implemented)"
        case 4: return "OCF_ERR_PERM (insufficient permissions)"
        case 5: return "OCF_ERR_INSTALLED (required software missing)"
        case 6: return "OCF_ERR_CONFIGURED (invalid configuration)"
        case 7: return "OCF_NOT_RUNNING"
        case 8: return "OCF_RUNNING_MASTER"
        case 9: return "OCF_FAILED_MASTER"
        default: return "exit status \(status), outside the OCF API"
        }
    }

    /// `heartbeat:Dummy` → /usr/lib/ocf/resource.d/heartbeat/Dummy; `Dummy` means provider
    /// heartbeat; an absolute path is taken as it is.
    public var path: String {
        let agent = spec.parameters["agent"] ?? ""
        if agent.hasPrefix("/") { return agent }
        let parts = agent.split(separator: ":", maxSplits: 1).map(String.init)
        return parts.count == 2
            ? "\(Self.root)/resource.d/\(parts[0])/\(parts[1])" : "\(Self.root)/resource.d/heartbeat/\(agent)"
    }

    var environment: [String: String] {
        var environment = ProcessRunner.defaultEnvironment
        let agent = spec.parameters["agent"] ?? ""
        let parts = agent.split(separator: ":", maxSplits: 1).map(String.init)
        environment["OCF_ROOT"] = Self.root
        environment["OCF_FUNCTIONS_DIR"] = "\(Self.root)/lib/heartbeat"
        environment["OCF_RA_VERSION_MAJOR"] = "1"
        environment["OCF_RA_VERSION_MINOR"] = "1"
        environment["OCF_RESOURCE_INSTANCE"] = spec.name
        environment["OCF_RESOURCE_TYPE"] = String(path.split(separator: "/").last ?? "")
        environment["OCF_RESOURCE_PROVIDER"] = parts.count == 2 ? parts[0] : "heartbeat"
        for (key, value) in spec.parameters where key.hasPrefix("params.") {
            environment["OCF_RESKEY_\(key.dropFirst("params.".count))"] = value
        }
        return environment
    }

    func call(_ action: String, timeout: Duration) async -> ProcessRunner.Outcome {
        var environment = environment
        let milliseconds = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
        environment["OCF_RESKEY_CRM_meta_timeout"] = String(milliseconds)
        if action == "monitor" {
            environment["OCF_RESKEY_CRM_meta_interval"] = String(
                spec.monitorInterval.components.seconds * 1000)
        }
        return await ProcessRunner.run(path, [action], environment: environment, timeout: timeout)
    }

    func failure(_ action: String, _ outcome: ProcessRunner.Outcome, timeout: Duration) -> String {
        guard let status = outcome.status, outcome.spawnError == nil else {
            return ResourceAgents.describe(action, outcome, timeout: timeout)
        }
        let line = outcome.lastLine
        return "\(action) returned \(Self.meaning(status))" + (line.isEmpty ? "" : ": \(line)")
    }

    /// The parameters the agent's meta-data marks required, or why the meta-data is unusable.
    static func requiredParameters(metadata: String) -> Result<[String], ValidationFailure> {
        guard metadata.contains("<resource-agent"), metadata.contains("</resource-agent>") else {
            let start = metadata.prefix(60).replacing("\n", with: " ")
            return .failure(ValidationFailure(reason: "meta-data is not an OCF resource-agent document: \"\(start)\""))
        }
        var required: [String] = []
        for chunk in metadata.split(separator: "<parameter ").dropFirst() {
            let tag = chunk.prefix { $0 != ">" }
            guard tag.contains("required=\"1\""), let nameStart = tag.firstRange(of: "name=\"") else { continue }
            let name = tag[nameStart.upperBound...].prefix { $0 != "\"" }
            required.append(String(name))
        }
        return .success(required)
    }

    public struct ValidationFailure: Error, Sendable {
        public var reason: String
    }

    public func validate() async -> String? {
        if let problem = ResourceAgents.checkExecutable(path) { return "OCF agent \(problem)" }
        let metadata = await call("meta-data", timeout: spec.monitorTimeout)
        guard metadata.status == 0 else { return failure("meta-data", metadata, timeout: spec.monitorTimeout) }
        switch Self.requiredParameters(metadata: metadata.output) {
        case .failure(let failure): return failure.reason
        case .success(let required):
            let missing = required.filter { spec.parameters["params.\($0)"] == nil }
            if !missing.isEmpty { return "required parameter missing: \(missing.joined(separator: ", "))" }
        }
        let validation = await call("validate-all", timeout: spec.monitorTimeout)
        if validation.status == 0 || validation.status == 3 { return nil }
        return failure("validate-all", validation, timeout: spec.monitorTimeout)
    }

    public func start() async -> String? {
        let outcome = await call("start", timeout: spec.startTimeout)
        return outcome.status == 0 ? nil : failure("start", outcome, timeout: spec.startTimeout)
    }

    public func stop() async -> String? {
        let outcome = await call("stop", timeout: spec.stopTimeout)
        return outcome.status == 0 ? nil : failure("stop", outcome, timeout: spec.stopTimeout)
    }

    public func monitor() async -> MonitorResult {
        let outcome = await call("monitor", timeout: spec.monitorTimeout)
        switch outcome.status {
        case 0, 8: return .running
        case 7: return .notRunning
        default: return .failed(failure("monitor", outcome, timeout: spec.monitorTimeout))
        }
    }
}

/// Runs a system tool with the resource's timeout.
struct Tool {
    let timeout: Duration

    func run(_ name: String, _ arguments: [String]) async -> ProcessRunner.Outcome {
        await ProcessRunner.run(
            ResourceAgents.which(name) ?? name, arguments, environment: ProcessRunner.defaultEnvironment,
            timeout: timeout)
    }
}

/// `ip`: a floating address added to an interface and announced with gratuitous ARP (IPv4) so
/// that switches and clients learn its new place at once.
///
/// Before adding an IPv4 address it asks who answers for it (duplicate address detection, 300 ms).
/// An answer from another host refuses the start. An answer from the peer node's MAC is the
/// peer's leftover: its agent died or froze while its kernel kept the address. The resource runs
/// only on a primary, which quorum promoted after the peer's lease ended, so the address is taken
/// over and announced repeatedly (as keepalived does) until the peer's host drops it (its
/// restarted agent or its watchdog reset). IPv6 addresses are added without either step: the
/// kernel's own duplicate address detection applies, and no unsolicited neighbour advertisement
/// is sent yet.
public struct IPAgent: ResourceAgent {
    public let spec: ResourceSpec
    /// The peer node's addresses, whose MAC on `interface` identifies the peer's leftovers.
    public var peerAddresses: [String] = []
    /// Tells the journal what the agent found and did beyond starting (a takeover).
    public var note: @Sendable (String) -> Void = { _ in }
    /// The gratuitous ARP rounds after a start, while they run: a stop ends them, so that a node
    /// that gave the address up does not go on announcing it.
    let announcements = Announcements()

    public init(
        spec: ResourceSpec, peerAddresses: [String] = [], note: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.spec = spec
        self.peerAddresses = peerAddresses
        self.note = note
    }

    /// How long duplicate address detection waits for an answer, and its probes.
    static let probeTimeoutMilliseconds: Int32 = 300
    static let probes: Int32 = 3
    static let probeIntervalMilliseconds: Int32 = 100
    /// Gratuitous ARP after a start: this many right away, 200 ms apart, and as many again a
    /// second and three seconds later, while the peer's host may still answer for the address.
    static let announcementRounds: [Duration] = [.zero, .seconds(1), .seconds(3)]
    static let announcementsPerRound = 3

    /// `10.0.0.50/24` → ("10.0.0.50", 24); a bare address takes /32 (/128 for IPv6).
    var address: (host: String, prefix: Int)? {
        let text = spec.parameters["address"] ?? ""
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        let host = parts[0]
        var probe = in6_addr()
        let isV6 = host.contains(":")
        guard inet_pton(isV6 ? AF_INET6 : AF_INET, host, &probe) == 1 else { return nil }
        let limit = isV6 ? 128 : 32
        guard parts.count == 2 else { return (host, limit) }
        guard let prefix = Int(parts[1]), (0...limit).contains(prefix) else { return nil }
        return (host, prefix)
    }

    var interface: String { spec.parameters["interface"] ?? "" }

    /// The interfaces that hold the address now.
    func holders() async -> [String]? {
        guard let address else { return nil }
        let outcome = await Tool(timeout: spec.monitorTimeout).run("ip", ["-o", "addr", "show"])
        guard outcome.status == 0 else { return nil }
        return outcome.output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 3, fields[3].split(separator: "/").first.map(String.init) == address.host else {
                return nil
            }
            return String(fields[1])
        }
    }

    public func validate() async -> String? {
        guard address != nil else { return "address \"\(spec.parameters["address"] ?? "")\" is not an IP address" }
        guard !interface.isEmpty else { return "interface is required for an ip resource" }
        guard ResourceAgents.which("ip") != nil else { return "the ip tool (iproute2) is missing" }
        let link = await Tool(timeout: spec.monitorTimeout).run("ip", ["link", "show", "dev", interface])
        guard link.status == 0 else { return "interface \(interface) does not exist" }
        return nil
    }

    /// Who answers ARP for `host` on the interface: its MAC, `nil` when nobody; a failure of the
    /// probe itself as `.failure`.
    func answering(_ host: String) -> Result<String?, ProbeFailure> {
        var target = in_addr()
        guard inet_pton(AF_INET, host, &target) == 1 else { return .success(nil) }
        var mac: [UInt8] = Array(repeating: 0, count: 6)
        let found = ctandem_arp_probe(
            interface, target.s_addr, Self.probes, Self.probeIntervalMilliseconds, Self.probeTimeoutMilliseconds, &mac)
        if found < 0 { return .failure(ProbeFailure(reason: String(cString: strerror(errno)))) }
        return .success(
            found == 1
                ? mac.map { byte in
                    let digits = String(byte, radix: 16)
                    return byte < 16 ? "0" + digits : digits
                }.joined(separator: ":") : nil)
    }

    /// Why duplicate address detection could not run.
    struct ProbeFailure: Error {
        var reason: String
    }

    /// Whether the MAC that answers for the floating address is the peer's: the one its own
    /// addresses answer from on the same interface.
    func isPeer(_ mac: String) -> Bool {
        peerAddresses.contains { peer in
            if case .success(let peerMAC?) = answering(peer) { return peerMAC == mac }
            return false
        }
    }

    public func start() async -> String? {
        guard let address else { return "address is not an IP address" }
        let tool = Tool(timeout: spec.startTimeout)
        if let holders = await holders(), !holders.isEmpty {
            if holders.contains(interface) { return nil }
            return "\(address.host) is already in use on \(holders.joined(separator: ", ")) of this host"
        }
        let isV6 = address.host.contains(":")
        var takenOver: String?
        if !isV6, spec.parameters["probe-duplicates"] != "false" {
            switch answering(address.host) {
            case .failure(let failure):
                return "duplicate address probe on \(interface) failed: \(failure.reason)"
            case .success(let mac?):
                guard isPeer(mac) else {
                    return "\(address.host) is already in use: another host on \(interface) answers ARP for it (\(mac))"
                }
                takenOver = mac
            case .success(nil):
                break
            }
        }
        let family = isV6 ? "-6" : "-4"
        let added = await tool.run(
            "ip", [family, "addr", "add", "\(address.host)/\(address.prefix)", "dev", interface])
        guard added.status == 0 else {
            return ResourceAgents.describe("ip addr add", added, timeout: spec.startTimeout)
        }
        if let takenOver {
            note(
                "\(address.host) was still answered by the peer's host (\(takenOver) on \(interface)) after its "
                    + "lease ended; taken over and announced")
        }
        if !isV6 { announce(address.host) }
        return nil
    }

    /// Gratuitous ARP in rounds: the address serves already, so nothing waits for them. The task
    /// is owned by `announcements`, which a stop cancels.
    func announce(_ host: String) {
        var value = in_addr()
        guard inet_pton(AF_INET, host, &value) == 1 else { return }
        let interface = interface
        let raw = value.s_addr
        announcements.replace(
            with: Task.detached {
                for round in Self.announcementRounds {
                    do {
                        try await Task.sleep(for: round == .zero ? .zero : round - .milliseconds(600))
                        for index in 0..<Self.announcementsPerRound {
                            if index > 0 { try await Task.sleep(for: .milliseconds(200)) }
                            _ = ctandem_arp_announce(interface, raw)
                        }
                    } catch {
                        return  // cancelled: the address was given up
                    }
                }
            })
    }

    /// The announcement task of one address.
    final class Announcements: Sendable {
        private let task = Mutex<Task<Void, Never>?>(nil)

        func replace(with next: Task<Void, Never>) {
            task.withLock { current in
                current?.cancel()
                current = next
            }
        }

        func cancel() { task.withLock { $0?.cancel() } }
    }

    public func stop() async -> String? {
        announcements.cancel()
        guard let address else { return nil }
        guard let holders = await holders() else { return "cannot list the addresses of this host" }
        guard holders.contains(interface) else { return nil }
        let removed = await Tool(timeout: spec.stopTimeout).run(
            "ip", ["addr", "del", "\(address.host)/\(address.prefix)", "dev", interface])
        return removed.status == 0 ? nil : ResourceAgents.describe("ip addr del", removed, timeout: spec.stopTimeout)
    }

    /// Removes the address at once, from a thread that may not return to async work (an HA reset
    /// about to exit): `nil` when it is gone or was not there.
    public func releaseBlocking() -> String? {
        announcements.cancel()
        guard let address else { return nil }
        let removed = ProcessRunner.runBlocking(
            ResourceAgents.which("ip") ?? "ip", ["addr", "del", "\(address.host)/\(address.prefix)", "dev", interface],
            environment: ProcessRunner.defaultEnvironment, timeout: .seconds(2))
        // `ip` says "Cannot assign requested address" (exit 2) when the address was not there.
        if removed.status == 0 || removed.output.contains("Cannot assign requested address") { return nil }
        return ResourceAgents.describe("ip addr del", removed, timeout: .seconds(2))
    }

    public func monitor() async -> MonitorResult {
        guard let holders = await holders() else { return .failed("cannot list the addresses of this host") }
        return holders.contains(interface) ? .running : .notRunning
    }
}

/// `filesystem`: an optional check, a mount, and an unmount that ends whatever still holds it.
public struct FilesystemAgent: ResourceAgent {
    public let spec: ResourceSpec

    var device: String { spec.parameters["device"] ?? "" }
    var directory: String { spec.parameters["directory"] ?? "" }

    /// Whether `directory` is mounted now, from /proc/self/mounts.
    func mounted() -> Bool {
        guard let file = fopen("/proc/self/mounts", "r") else { return false }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let fields = String(cString: line).split(separator: " ")
            if fields.count > 1, fields[1] == directory { return true }
        }
        return false
    }

    public func validate() async -> String? {
        guard directory.hasPrefix("/") else { return "directory must be an absolute path" }
        guard !device.isEmpty else { return "device is empty" }
        return nil
    }

    public func start() async -> String? {
        if mounted() { return nil }
        let tool = Tool(timeout: spec.startTimeout)
        if spec.parameters["check"] == "true", device.hasPrefix("/") {
            let check = await tool.run("fsck", ["-a", device])
            // fsck: 0 clean, 1 errors corrected; anything else needs an administrator.
            if let status = check.status, status > 1 {
                return ResourceAgents.describe("fsck", check, timeout: spec.startTimeout)
            }
        }
        mkdir(directory, 0o755)
        var arguments: [String] = []
        if let type = spec.parameters["fstype"] { arguments += ["-t", type] }
        if let options = spec.parameters["options"] { arguments += ["-o", options] }
        let mount = await tool.run("mount", arguments + [device, directory])
        return mount.status == 0 ? nil : ResourceAgents.describe("mount", mount, timeout: spec.startTimeout)
    }

    public func stop() async -> String? {
        guard mounted() else { return nil }
        let tool = Tool(timeout: spec.stopTimeout)
        var last = await tool.run("umount", [directory])
        if last.status == 0 { return nil }
        // Busy: end the processes that hold it, then try again.
        for signal in ["TERM", "KILL"] {
            _ = await tool.run("fuser", ["-k", "-\(signal)", "-m", directory])
            usleep(500_000)
            last = await tool.run("umount", [directory])
            if last.status == 0 { return nil }
        }
        return ResourceAgents.describe("umount", last, timeout: spec.stopTimeout)
    }

    public func monitor() async -> MonitorResult { mounted() ? .running : .notRunning }
}

/// `systemd`: a unit started, stopped and watched through systemctl.
public struct SystemdAgent: ResourceAgent {
    public let spec: ResourceSpec
    var unit: String { spec.parameters["unit"] ?? "" }

    public func validate() async -> String? {
        guard ResourceAgents.which("systemctl") != nil else { return "systemctl is missing" }
        let known = await Tool(timeout: spec.monitorTimeout).run("systemctl", ["cat", "--", unit])
        return known.status == 0 ? nil : "unit \(unit) is unknown to systemd"
    }

    public func start() async -> String? {
        let outcome = await Tool(timeout: spec.startTimeout).run("systemctl", ["start", "--", unit])
        return outcome.status == 0
            ? nil : ResourceAgents.describe("systemctl start", outcome, timeout: spec.startTimeout)
    }

    public func stop() async -> String? {
        let outcome = await Tool(timeout: spec.stopTimeout).run("systemctl", ["stop", "--", unit])
        return outcome.status == 0 ? nil : ResourceAgents.describe("systemctl stop", outcome, timeout: spec.stopTimeout)
    }

    public func monitor() async -> MonitorResult {
        let outcome = await Tool(timeout: spec.monitorTimeout).run("systemctl", ["is-active", "--", unit])
        switch outcome.output.trimmingSpaces {
        case "active", "reloading", "activating": return .running
        case "inactive", "deactivating": return .notRunning
        default: return .failed("unit \(unit) is \(outcome.output.trimmingSpaces)")
        }
    }
}

extension String {
    var trimmingSpaces: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
