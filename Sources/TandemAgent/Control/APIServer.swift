import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Synchronization
import TandemAPI
import TandemCore

/// The management API over the network: the same router as the control socket, on the node's
/// `api-listen` addresses, over TLS 1.2 or later with the node's certificate from the cluster's
/// authority (plain HTTP only where `[api] plain-http` allows it, on loopback), every call
/// authenticated by a bearer token.
public final class APIServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let tls: TLSConfiguration?
    private let api: ManagementAPI
    private let tokens: TokenStore
    private let audit: @Sendable (String) -> Void
    private let events: EventBus?
    private let metrics: MetricsExporter?
    private let jobs: JobRegistry
    private let logger: Logger

    /// `tls` nil serves plain HTTP (loopback only, which the config has checked).
    public init(
        host: String, port: Int, tls: TLSConfiguration?, api: ManagementAPI, tokens: TokenStore,
        audit: @escaping @Sendable (String) -> Void, events: EventBus? = nil, metrics: MetricsExporter? = nil,
        jobs: JobRegistry = JobRegistry(), logger: Logger
    ) {
        self.jobs = jobs
        self.events = events
        self.metrics = metrics
        self.host = host
        self.port = port
        self.tls = tls
        self.api = api
        self.tokens = tokens
        self.audit = audit
        self.logger = logger
    }

    /// The server's TLS settings from a node's TLS folder: its certificate and key.
    public static func tlsConfiguration(directory: String, node: String) throws(AgentError) -> TLSConfiguration {
        do {
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile("\(directory)/server-cert.pem").map {
                    .certificate($0)
                },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: "\(directory)/server-key.pem", format: .pem)))
            configuration.minimumTLSVersion = .tlsv12
            // A stopping agent waits at most this long for a client's close_notify (5 s by default,
            // which an open event stream's client made every stop pay).
            configuration.shutdownTimeout = .milliseconds(500)
            return configuration
        } catch {
            throw .unsupported(
                "cannot load the API's TLS credentials of \(node) from \(directory) (\(error)); "
                    + "`tandem cert issue \(node)` writes them, or set [api] plain-http on a loopback-only API")
        }
    }

    public func run() async throws {
        // A connection that sends nothing for 10 s is closed: a stuck client holds nothing for long.
        let http = HTTPServerBuilder.http1(configuration: .init(idleTimeout: .seconds(10)))
        let server = try tls.map { try HTTPServerBuilder.tls(http, tlsConfiguration: $0) } ?? http
        let router = ManagementRouter.build(
            api, admission: TokenAdmission(tokens: tokens, logger: logger), audit: audit, tokens: tokens,
            events: events, metrics: metrics, jobs: jobs)
        let application = Application(
            router: router, server: server,
            configuration: .init(address: .hostname(host, port: port), serverName: nil, backlog: 64),
            onServerRunning: { [logger, host, port, tls] _ in
                logger.notice("management API on \(tls == nil ? "http" : "https")://\(host):\(port)")
            }, logger: logger)
        try await application.run()
    }
}

/// Admits a caller of the network API by its bearer token: a missing, unknown or expired token
/// gets 401 with no detail; every failure is logged with the source address, and an address
/// that failed 10 times in a minute is answered 429 until the minute is over.
struct TokenAdmission: RouterMiddleware {
    typealias Context = APIRequestContext
    let tokens: TokenStore
    let logger: Logger
    let failures = FailureLimiter(limit: 10, window: 60)

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let source = Self.source(context.channel.remoteAddress)
        let now = WallClock.secondsSinceEpoch()
        guard failures.admits(source, now: now) else {
            throw ManagementAPI.Refusal(
                .tooManyRequests, "too many failed authentications from this address; try again in a minute")
        }
        let presented = request.headers[.authorization].flatMap { value -> String? in
            guard value.hasPrefix("Bearer ") else { return nil }
            return String(value.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        let refusal: String
        if let presented, presented.utf8.count <= 128 {
            switch tokens.authenticate(presented, now: now) {
            case .success(let record):
                var context = context
                context.caller = "token \(record.name) (\(record.role.rawValue)) from \(source)"
                context.role = record.role
                return try await next(request, context)
            case .failure(.expired(let name)): refusal = "expired token \(name)"
            case .failure(.unknown): refusal = "unknown token"
            }
        } else {
            refusal = presented == nil ? "no bearer token" : "oversized token"
        }
        if failures.fail(source, now: now) {
            logger.warning(
                "management API: \(refusal) from \(source) for \(request.method) \(UntrustedText.quoted(request.uri.path))"
            )
        }
        throw ManagementAPI.Refusal(.unauthorized, "unauthorized")
    }

    static func source(_ address: SocketAddress?) -> String {
        guard let address else { return "an unknown address" }
        return address.ipAddress ?? "\(address)"
    }
}

/// Counts authentication failures per source address within a window.
final class FailureLimiter: Sendable {
    private let limit: Int
    private let window: Double
    private let counts = Mutex<[String: (start: Double, count: Int)]>([:])

    init(limit: Int, window: Double) {
        self.limit = limit
        self.window = window
    }

    /// Whether `source` may try again now.
    func admits(_ source: String, now: Double) -> Bool {
        counts.withLock { counts in
            guard let entry = counts[source], now - entry.start < window else { return true }
            return entry.count < limit
        }
    }

    /// Counts one failure; returns whether it is among the first `limit` of its window (logged).
    func fail(_ source: String, now: Double) -> Bool {
        counts.withLock { counts in
            if counts.count > 4096 { counts = counts.filter { now - $0.value.start < window } }
            var entry = counts[source] ?? (now, 0)
            if now - entry.start >= window { entry = (now, 0) }
            entry.count += 1
            counts[source] = entry
            return entry.count <= limit
        }
    }
}
