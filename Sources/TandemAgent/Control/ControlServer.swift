import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import TandemAPI

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's local control socket: the management API (`/v1`) over HTTP/1.1 on a Unix socket,
/// for the CLI on the node.
///
/// The socket file is the owner's alone, and every connection is checked again by its peer
/// credentials (SO_PEERCRED): only root or the owner of the state directory may call.
public final class ControlServer: Service, Sendable {
    private let path: String
    private let api: ManagementAPI
    private let tokens: TokenStore?
    private let audit: @Sendable (String) -> Void
    private let events: EventBus?
    private let metrics: MetricsExporter?
    private let jobs: JobRegistry
    private let allowedUser: uid_t
    private let logger: Logger

    /// The socket path for `node` under the config's state directory.
    public static func socketPath(stateDirectory: String, node: String) -> String {
        "\(stateDirectory)/\(node).control"
    }

    /// Creates the server; nothing is bound until `run()`. `stateDirectory`'s owner may call.
    public init(
        path: String, stateDirectory: String, api: ManagementAPI, tokens: TokenStore?,
        audit: @escaping @Sendable (String) -> Void, events: EventBus? = nil, metrics: MetricsExporter? = nil,
        jobs: JobRegistry = JobRegistry(), logger: Logger
    ) {
        self.jobs = jobs
        self.events = events
        self.metrics = metrics
        self.path = path
        self.api = api
        self.tokens = tokens
        self.audit = audit
        var info = stat()
        self.allowedUser = stat(stateDirectory, &info) == 0 ? info.st_uid : getuid()
        self.logger = logger
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        unlink(path)
        let router = ManagementRouter.build(
            api, admission: PeerCredentialAdmission(allowedUser: allowedUser), audit: audit, tokens: tokens,
            events: events, metrics: metrics, jobs: jobs)
        // The socket is created owner-only: set afterwards, its mode would leave a moment in which
        // anyone on the host could connect.
        let previous = umask(0o177)
        // A connection that sends nothing for 10 s is closed: a stuck client holds nothing for long.
        let application = Application(
            router: router, server: .http1(configuration: .init(idleTimeout: .seconds(10))),
            configuration: .init(address: .unixDomainSocket(path: path), serverName: nil, backlog: 32),
            onServerRunning: { [path] _ in
                umask(previous)
                chmod(path, 0o600)
            }, logger: logger)
        defer { unlink(path) }
        do {
            try await application.run()
        } catch {
            umask(previous)
            throw error
        }
    }
}

/// Admits a caller on the control socket by its peer credentials: root, or the user that owns the
/// state directory (the agent's own user when it does not run as root).
struct PeerCredentialAdmission: RouterMiddleware {
    typealias Context = APIRequestContext
    let allowedUser: uid_t

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let provider = context.channel as? any SocketOptionProvider,
            let credentials: PeerCredentials = try? await provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED)
            ).get()
        else {
            throw ManagementAPI.Refusal(.forbidden, "the caller's credentials cannot be read")
        }
        guard credentials.uid == 0 || credentials.uid == allowedUser else {
            context.logger.warning("control socket: refused uid \(credentials.uid) pid \(credentials.pid)")
            throw ManagementAPI.Refusal(
                .forbidden, "uid \(credentials.uid) may not administer this node",
                correction: "run as root or as the owner of the state directory")
        }
        var context = context
        context.caller = "administrator (uid \(credentials.uid), pid \(credentials.pid))"
        context.role = .admin
        return try await next(request, context)
    }
}

/// `struct ucred` as Linux lays it out (SO_PEERCRED), which Swift's Glibc module does not export.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
