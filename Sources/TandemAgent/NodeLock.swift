import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps a second agent for the same node from starting while one runs: both would open the same
/// volumes, the second would take over the first's control socket, and both would answer the
/// peer's heartbeats. The witness takes one too.
///
/// The lock is a POSIX record lock (`fcntl(F_SETLK)`) on `<state-dir>/<node>.lock`, which holds the
/// owner's process id for an administrator to read. The kernel drops it when the process ends,
/// however it ends, so a crashed agent never leaves a stale lock behind. Record locks belong to the
/// process, so one process that prepares the same node twice (a test) does not refuse itself.
public enum NodeLock {
    /// Lock files this process holds, by path, with their descriptors (kept open: closing any
    /// descriptor of the file would drop the process's lock).
    private static let held = Mutex<[String: CInt]>([:])

    /// Takes the lock of `node` in `directory`, or says which process holds it; `what` names the
    /// program in that message (by default "agent for node NODE").
    static func acquire(directory: String, node: String, what: String? = nil) throws(AgentError) {
        let path = "\(directory)/\(node).lock"
        try held.withLock { (held) throws(AgentError) in
            guard held[path] == nil else { return }
            let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw .io("cannot open \(path): \(String(cString: strerror(errno)))") }
            var lock = wholeFile(F_WRLCK)
            guard fcntl(descriptor, F_SETLK, &lock) == 0 else {
                let error = errno
                var holder = wholeFile(F_WRLCK)
                let known = fcntl(descriptor, F_GETLK, &holder) == 0 && holder.l_type != Int16(F_UNLCK)
                close(descriptor)
                guard error == EAGAIN || error == EACCES else {
                    throw .io("cannot lock \(path): \(String(cString: strerror(error)))")
                }
                let owner = known ? "process \(holder.l_pid)" : "another process"
                let program = what ?? "agent for node \(node)"
                throw .io("another \(program) is running (\(owner) holds \(path)); stop it before starting one")
            }
            let text = Array("\(getpid())\n".utf8)
            _ = ftruncate(descriptor, 0)
            _ = text.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
            held[path] = descriptor
        }
    }

    /// The process that holds the lock of `node` in `directory`, if another process holds it.
    public static func holder(directory: String, node: String) -> pid_t? {
        let descriptor = open("\(directory)/\(node).lock", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var probe = wholeFile(F_WRLCK)
        guard fcntl(descriptor, F_GETLK, &probe) == 0, probe.l_type != Int16(F_UNLCK) else { return nil }
        return probe.l_pid
    }

    private static func wholeFile(_ type: CInt) -> flock {
        var lock = flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0
        return lock
    }
}
