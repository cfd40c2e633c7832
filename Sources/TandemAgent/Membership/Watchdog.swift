import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The Linux watchdog device (`/dev/watchdog`, softdog or a hardware timer), armed by opening it
/// and fed by the membership loop's ticker while the node may serve.
///
/// Its timeout is whole seconds, shorter than the dead time less one heartbeat interval, so a host
/// whose agent died or froze resets before the peer can take over: its floating addresses, mounts
/// and exports are gone by then. A clean shutdown disarms it with the magic close ("V"); an HA
/// reset that exits leaves it armed, so the host resets as the reset intended.
///
/// A regular file stands in for the device in tests: the timeout ioctl fails there (tolerated),
/// and each feed rewrites its first byte, so a harness can watch its modification time.
final class Watchdog: Sendable {
    let path: String
    let timeoutSeconds: Int32
    private let descriptor: Int32
    private let isDevice: Bool
    /// Set once a refusal to feed was logged, so that it is said once.
    private let starving = Atomic<Bool>(false)
    private let logger: Logger

    /// `_IOWR('W', 6, int)`: sets the timeout, answering the one the device chose.
    static let setTimeoutRequest: UInt = 0xC004_5706

    /// The timeout for a dead time and heartbeat interval: whole seconds, at least one.
    static func timeout(deadTime: Duration, heartbeatInterval: Duration) -> Int32 {
        Int32(max(1, (deadTime - heartbeatInterval).components.seconds))
    }

    /// Opens (arms) the device; a device that cannot be opened refuses the start.
    init(path: String, timeoutSeconds: Int32, logger: Logger) throws(AgentError) {
        let descriptor = open(path, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw .io("cannot open the watchdog \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        fstat(descriptor, &info)
        self.path = path
        self.descriptor = descriptor
        self.isDevice = (info.st_mode & S_IFMT) == S_IFCHR
        self.logger = logger
        var timeout = timeoutSeconds
        if ioctl(descriptor, Self.setTimeoutRequest, &timeout) != 0 {
            if isDevice {
                let reason = String(cString: strerror(errno))
                logger.warning(
                    "watchdog \(path) refused a timeout of \(timeoutSeconds) s (\(reason)); it keeps its own")
            }
            timeout = timeoutSeconds
        }
        self.timeoutSeconds = timeout
        logger.notice("watchdog \(path) armed with a timeout of \(timeout) s")
    }

    /// Feeds the device, unless `refusal` says why it must be left to expire (said once).
    func feed(refusal: String?) {
        if let reason = refusal {
            if !starving.exchange(true, ordering: .relaxed) {
                logger.critical("watchdog \(path) no longer fed: \(reason)")
            }
            return
        }
        starving.store(false, ordering: .relaxed)
        var byte: UInt8 = 0x31
        if isDevice {
            _ = write(descriptor, &byte, 1)
        } else {
            _ = pwrite(descriptor, &byte, 1, 0)
            // Each feed must show: the modification time moves even when the byte is the same.
            _ = futimens(descriptor, nil)
        }
    }

    /// Disarms the device (magic close) on a clean shutdown.
    func disarm() {
        var byte = UInt8(ascii: "V")
        if isDevice { _ = write(descriptor, &byte, 1) }
        close(descriptor)
        logger.notice("watchdog \(path) disarmed")
    }
}
