import CTandemLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Runs an agent's program with a deadline: its own process group (so a timeout ends everything
/// it started), stdin from /dev/null, stdout and stderr captured up to a bound.
///
/// The wait ends when the program exits, not when its output closes: a start command may leave a
/// daemon behind that still holds the pipe.
public enum ProcessRunner {
    /// What a run ended with.
    public struct Outcome: Sendable, Equatable {
        /// The exit status, or `nil` when the program was killed at its deadline or by a signal.
        public var status: Int32?
        /// stdout and stderr interleaved, at most `outputLimit` bytes.
        public var output: String
        public var timedOut: Bool
        /// Why it could not be started at all.
        public var spawnError: String?

        /// The last line of output, for messages.
        public var lastLine: String {
            output.split(separator: "\n").last.map(String.init) ?? ""
        }
    }

    public static let outputLimit = 64 << 10

    /// Runs `executable` with `arguments` and exactly `environment`; waits at most `timeout`.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String], timeout: Duration
    ) async -> Outcome {
        // A thread of its own: the wait blocks, and must not take a thread that async work needs.
        await withCheckedContinuation { done in
            startThread {
                done.resume(returning: runBlocking(executable, arguments, environment: environment, timeout: timeout))
            }
        }
    }

    /// The agent's own PATH, for programs named without a directory.
    public static var defaultEnvironment: [String: String] {
        ["PATH": String(cString: getenv("PATH") ?? strdup("/usr/sbin:/usr/bin:/sbin:/bin")), "LANG": "C"]
    }

    public static func runBlocking(
        _ executable: String, _ arguments: [String], environment: [String: String], timeout: Duration
    ) -> Outcome {
        var pipe: [Int32] = [-1, -1]
        guard ctandem_pipe_cloexec(&pipe) == 0 else {
            return Outcome(status: nil, output: "", timedOut: false, spawnError: "pipe: \(errorText())")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 2)
        // The agent's sockets and files stay out of the agents it runs.
        _ = ctandem_spawn_closefrom(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        var spawned = posix_spawnp(&pid, executable, &actions, &attributes, argv, envp)
        // ETXTBSY: some process still holds the program open for writing, typically a child another
        // thread forked while the file was being written, which lets go of it when it execs. It
        // passes within milliseconds: try again a few times before reporting it.
        for _ in 0..<20 where spawned == ETXTBSY {
            usleep(10_000)
            spawned = posix_spawnp(&pid, executable, &actions, &attributes, argv, envp)
        }
        close(pipe[1])
        guard spawned == 0 else {
            close(pipe[0])
            return Outcome(
                status: nil, output: "", timedOut: false, spawnError: String(cString: strerror(spawned)))
        }
        let deadline = ContinuousClock.now + timeout
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var status: Int32 = 0
        var exited = false
        var timedOut = false
        var open = true
        while !exited {
            if open {
                var poller = pollfd(fd: pipe[0], events: Int16(POLLIN), revents: 0)
                if poll(&poller, 1, 20) > 0 {
                    let count = read(pipe[0], &buffer, buffer.count)
                    if count > 0 {
                        if output.count < outputLimit { output += buffer[0..<min(count, outputLimit - output.count)] }
                    } else if count == 0 {
                        open = false
                    }
                }
            } else {
                usleep(5_000)
            }
            let waited = waitpid(pid, &status, WNOHANG)
            if waited == pid {
                exited = true
            } else if waited < 0, errno == ECHILD {
                // Collected by someone else in this process: it ended, its status is lost.
                close(pipe[0])
                return Outcome(
                    status: nil, output: String(decoding: output, as: UTF8.self), timedOut: false,
                    spawnError: "its exit status was collected elsewhere in this process")
            } else if ContinuousClock.now > deadline {
                kill(-pid, SIGKILL)
                waitpid(pid, &status, 0)
                exited = true
                timedOut = true
            }
        }
        // What the program wrote before it exited; a daemon it left behind may keep the pipe open.
        _ = fcntl(pipe[0], F_SETFL, O_NONBLOCK)
        while open {
            let count = read(pipe[0], &buffer, buffer.count)
            guard count > 0 else { break }
            if output.count < outputLimit { output += buffer[0..<min(count, outputLimit - output.count)] }
        }
        close(pipe[0])
        let exitedNormally = (status & 0x7f) == 0
        return Outcome(
            status: timedOut || !exitedNormally ? nil : (status >> 8) & 0xff,
            output: String(decoding: output, as: UTF8.self), timedOut: timedOut, spawnError: nil)
    }

    static func errorText() -> String { String(cString: strerror(errno)) }

    /// Runs `work` on a new detached POSIX thread.
    static func startThread(_ work: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable {
            let work: @Sendable () -> Void
            init(_ work: @escaping @Sendable () -> Void) { self.work = work }
        }
        let box = Unmanaged.passRetained(Box(work)).toOpaque()
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        defer { pthread_attr_destroy(&attributes) }
        let created = pthread_create(
            &thread, &attributes,
            { pointer in
                guard let pointer else { return nil }
                let box = Unmanaged<Box>.fromOpaque(pointer).takeRetainedValue()
                box.work()
                return nil
            }, box)
        if created != 0 {
            Unmanaged<Box>.fromOpaque(box).takeRetainedValue().work()
        }
    }
}
