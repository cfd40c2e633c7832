import Foundation

/// Runs programs nobody here wrote (qemu-io, nbdinfo, fio, …) and the `tandem` binary itself.
enum Tools {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    struct Output {
        var status: Int32
        var standardOutput: String
        var standardError: String
        var combined: String { standardOutput + standardError }
    }

    /// The Debian package that provides each tool, for the error when one is missing.
    private static let packages = [
        "qemu-io": "qemu-utils", "qemu-img": "qemu-utils", "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin",
        "fio": "fio", "nbdkit": "nbdkit", "ss": "iproute2", "nft": "nftables", "haproxy": "haproxy",
        "promtool": "prometheus", "curl": "curl",
    ]

    /// The absolute path of `name` on PATH; a missing tool is a failure naming its package, never a skip.
    static func path(of name: String) throws -> String {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for directory in directories + ["/usr/sbin", "/sbin"] {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        let package = packages[name].map { " (Debian package \($0); scripts/test installs it)" } ?? ""
        throw Failure(description: "required tool \(name) is not installed\(package)")
    }

    /// The `tandem` executable built with the tests.
    static func tandemBinary() throws -> String {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let candidates = [
            executable.appendingPathComponent("tandem").path,
            FileManager.default.currentDirectoryPath + "/.build/debug/tandem",
        ]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw Failure(
                description: "the tandem binary was not built (looked in \(candidates)); run `swift build` first")
        }
        return found
    }

    /// Runs `name` with `arguments`, waits at most `timeout`, and returns what it printed.
    ///
    /// What the child prints goes to two temporary files, not pipes: a pipe's write end is
    /// inherited by any child another test spawns meanwhile (an agent that lives for minutes), and
    /// the read end then waits for that child's exit, so the suite collected thousands of open
    /// pipes, and `Process.run()` crashed once the descriptors passed 1024.
    @discardableResult
    static func run(_ name: String, _ arguments: [String], timeout: Duration = .seconds(120)) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: name.hasPrefix("/") ? name : try path(of: name))
        process.arguments = arguments
        let base = "\(NSTemporaryDirectory())tandem-tool-\(UUID().uuidString)"
        let (outputPath, errorPath) = (base + ".out", base + ".err")
        defer {
            try? FileManager.default.removeItem(atPath: outputPath)
            try? FileManager.default.removeItem(atPath: errorPath)
        }
        guard FileManager.default.createFile(atPath: outputPath, contents: nil),
            FileManager.default.createFile(atPath: errorPath, contents: nil),
            let output = FileHandle(forWritingAtPath: outputPath), let error = FileHandle(forWritingAtPath: errorPath)
        else { throw Failure(description: "cannot create the output files \(base).out and .err") }
        process.standardOutput = output
        process.standardError = error
        do {
            try launch(process)
        } catch let failure {
            try? output.close()
            try? error.close()
            throw failure
        }
        try? output.close()
        try? error.close()
        guard wait(process, timeout: timeout) else {
            kill(process.processIdentifier, SIGKILL)
            wait(process, timeout: .seconds(10))
            throw Failure(description: "\(name) \(arguments.joined(separator: " ")) did not finish within \(timeout)")
        }
        let printed = { (path: String) in
            String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
        }
        return Output(status: status(process), standardOutput: printed(outputPath), standardError: printed(errorPath))
    }

    /// Serialises `Process.run()`: Foundation's process launching misbehaved when the suite's
    /// many tests started children at the same moment (a child's exit went unnoticed, a launch
    /// crashed copying its arguments), so launches happen one at a time.
    private static let launching = NSLock()

    /// Starts `process`, one launch at a time.
    static func launch(_ process: Process) throws {
        try launching.withLock { try process.run() }
    }

    /// Waits until `process` has ended, at most `timeout`; whether it did.
    @discardableResult
    static func wait(_ process: Process, timeout: Duration = .seconds(60)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !process.isRunning { return true }
            usleep(5_000)
        }
        return false
    }

    /// Sends SIGKILL to `pid` if it is still one of our `tandem` processes (not a zombie, not a
    /// number reused by something else).
    static func killIfOurs(_ pid: Int32) {
        guard pid > 0,
            let commandLine = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
            commandLine.contains("tandem"), getppid() != pid
        else { return }
        kill(pid, SIGKILL)
    }

    /// The exit status of an ended process.
    static func status(_ process: Process) -> Int32 { process.terminationStatus }

    /// A process's resident set size in bytes (`VmRSS`).
    static func residentBytes(of pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
        else { throw Tools.Failure(description: "no VmRSS in /proc/\(pid)/status") }
        return kib * 1024
    }

    /// Runs a tool and fails unless it exits with 0.
    @discardableResult
    static func check(_ name: String, _ arguments: [String], timeout: Duration = .seconds(120)) throws -> Output {
        let output = try run(name, arguments, timeout: timeout)
        guard output.status == 0 else {
            throw Failure(
                description:
                    "\(name) \(arguments.joined(separator: " ")) exited with \(output.status):\n\(output.combined)")
        }
        return output
    }
}

/// Drains a pipe on a background thread so a chatty child never blocks on a full pipe.
final class DataCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                lock.lock()
                data.append(chunk)
                lock.unlock()
            }
            done.signal()
        }
    }

    private var finished = false

    /// What the pipe delivered so far, without waiting for the writer to close it.
    func snapshot() -> String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    /// Everything the pipe delivered, once every writer closed it or `seconds` passed (a process
    /// spawned at the same moment may have inherited the write end); may be called again.
    func text(waitingAtMost seconds: Double = 15) -> String {
        lock.lock()
        let alreadyFinished = finished
        lock.unlock()
        if !alreadyFinished, done.wait(timeout: .now() + seconds) == .success {
            lock.lock()
            finished = true
            lock.unlock()
        }
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Random bytes written to a file, for copy round trips.
func writeRandomFile(path: String, bytes: Int) throws -> Data {
    var generator = SystemRandomNumberGenerator()
    var data = Data(count: bytes)
    data.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for index in words.indices { words[index] = generator.next() }
    }
    try data.write(to: URL(fileURLWithPath: path))
    return data
}
