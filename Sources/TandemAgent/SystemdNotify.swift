import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// The service manager's readiness protocol (sd_notify): a datagram to `$NOTIFY_SOCKET`, if set.
/// `Type=notify` units start their dependents only after `READY=1`.
public enum SystemdNotify {
    /// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…`); nothing happens without a socket.
    public static func send(_ state: String) {
        guard let variable = getenv("NOTIFY_SOCKET") else { return }
        var path = Array(String(cString: variable).utf8)
        guard !path.isEmpty, path.count < 108 else { return }
        // An abstract socket is written with a leading "@".
        if path[0] == UInt8(ascii: "@") { path[0] = 0 }
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + path.count)
        let message = Array(state.utf8)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                message.withUnsafeBytes { sendto(descriptor, $0.baseAddress, $0.count, 0, socketAddress, length) }
            }
        }
    }
}

/// Says `STOPPING=1` to the service manager and ends the live event streams when the agent begins
/// to stop, before the servers that stream them wait for their responses to end.
struct ShutdownAnnouncer: Service {
    let bus: EventBus?

    func run() async throws {
        try? await gracefulShutdown()
        SystemdNotify.send("STOPPING=1")
        bus?.close()
    }
}
