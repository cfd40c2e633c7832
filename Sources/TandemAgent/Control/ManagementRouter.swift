import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import TandemAPI
import TandemCore

/// The context of one management request: who called, as the listener identified them.
public struct APIRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection, for the listener's own checks (the control socket's peer credentials).
    public let channel: any Channel
    /// Who called, for the log and the journal; set by the listener's admission middleware.
    public var caller = "an unidentified caller"
    /// What the caller may do; the admission middleware sets it.
    public var role: APIRole = .viewer

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// Bodies are small JSON documents; anything larger is refused with 413 before it is read.
    public var maxUploadSize: Int { 64 << 10 }
    public var requestDecoder: JSONDecoder { APICoding.decoder() }
    public var responseEncoder: JSONEncoder { APICoding.encoder() }
}

extension ManagementAPI.Refusal: HTTPResponseError {
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        try ManagementRouter.errorResponse(error, status: status)
    }
}

/// `/v1` on any listener: the routes of the management contract over `ManagementAPI`.
public enum ManagementRouter {
    /// The router for `api`; `admission` identifies (and may refuse) each caller first, and every
    /// call that is not a read is written to `audit` with its caller and outcome.
    public static func build(
        _ api: ManagementAPI, admission: some RouterMiddleware<APIRequestContext>,
        audit: @escaping @Sendable (String) -> Void = { _ in }, tokens: TokenStore? = nil, events: EventBus? = nil,
        metrics: MetricsExporter? = nil, jobs: JobRegistry = JobRegistry()
    ) -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        router.middlewares.add(ErrorMiddleware())
        router.middlewares.add(admission)
        router.middlewares.add(AuditMiddleware(audit: audit))
        let v1 = router.group("v1")

        v1.get("status") { _, context in
            try need(.viewer, context)
            return api.status()
        }
        v1.get("failovers") { _, context in
            try need(.viewer, context)
            return FailoverHistoryReply(node: api.nodeName, failovers: api.failovers())
        }

        v1.get("modes") { _, context in
            try need(.viewer, context)
            return try await api.modes()
        }
        v1.put("modes") { request, context in
            try need(.admin, context)
            let body = try await decode(SetModeRequest.self, request, context)
            guard body.mode != .peerdown else {
                throw ManagementAPI.Refusal(
                    .badRequest, "mode: peerdown is not set, it is certified",
                    correction: "use POST /v1/modes/peerdown on the surviving node")
            }
            return try await api.mode(.set(body.mode), caller: context.caller)
        }
        v1.post("modes/:command") { _, context in
            try need(.admin, context)
            let word = context.parameters.get("command") ?? ""
            let commands: [String: ModeCommand] = [
                "peerdown": .peerdown, "peerup": .peerup, "clear": .clear, "start": .start, "stop": .stop,
            ]
            if word == "force-reset" { return try await api.forceReset(caller: context.caller) }
            guard let command = commands[word] else {
                throw ManagementAPI.Refusal(
                    .notFound, "no mode command \(UntrustedText.quoted(word))",
                    correction: "one of: \((commands.keys.sorted() + ["force-reset"]).joined(separator: ", "))")
            }
            return try await api.mode(command, caller: context.caller)
        }

        for (action, standby) in [("standby", true), ("online", false)] {
            v1.post("nodes/:node/\(action)") { request, context in
                try need(.operator, context)
                let node = try context.parameters.require("node")
                if wantsJob(request) {
                    return accepted(api.nodeStateJob(standby, node: node, caller: context.caller, jobs: jobs))
                }
                return try await api.setStandby(standby, node: node, caller: context.caller).response(
                    from: request, context: context)
            }
        }
        v1.post("nodes/:node/force-primary") { request, context in
            try need(.admin, context)
            let body = try await decode(ForcePrimaryRequest.self, request, context)
            return try await api.forcePrimary(
                node: try context.parameters.require("node"), confirm: body.confirm, caller: context.caller)
        }

        for action in [ManagementAPI.VolumeAction.primary, .secondary, .resolve] {
            v1.post("volumes/:volume/\(action.rawValue)") { _, context in
                try need(.admin, context)
                return try api.volume(try context.parameters.require("volume"), action, caller: context.caller)
            }
        }
        v1.post("volumes/:volume/verify") { request, context in
            try need(.operator, context)
            let volume = try context.parameters.require("volume")
            if wantsJob(request) {
                return accepted(try api.verifyJob(volume: volume, caller: context.caller, jobs: jobs))
            }
            return try api.volume(volume, .verifyStart, caller: context.caller).response(
                from: request, context: context)
        }
        v1.delete("volumes/:volume/verify") { _, context in
            try need(.operator, context)
            return try api.volume(try context.parameters.require("volume"), .verifyStop, caller: context.caller)
        }

        v1.post("resources/cleanup") { request, context in
            try need(.operator, context)
            let body = try await decode(CleanupRequest.self, request, context)
            return try await api.cleanup(body.resource, caller: context.caller)
        }
        v1.post("resources/refresh") { _, context in
            try need(.operator, context)
            return try await api.refresh(caller: context.caller)
        }

        v1.get("jobs") { _, context in
            try need(.viewer, context)
            return JobList(jobs: jobs.all)
        }
        v1.get("jobs/:id") { _, context in
            try need(.viewer, context)
            let id = try context.parameters.require("id")
            guard let job = jobs.job(id) else {
                throw ManagementAPI.Refusal(.notFound, "no job \(UntrustedText.quoted(id))")
            }
            return job
        }
        v1.delete("jobs/:id") { _, context in
            try need(.operator, context)
            return try await jobs.cancel(try context.parameters.require("id"))
        }
        if let tokens { addTokenRoutes(v1, tokens: tokens) }
        if let events { addEventStream(v1, events: events) }
        if let metrics {
            // Prometheus scrapes with a viewer token (`authorization: credentials_file` in its config).
            router.get("metrics") { _, context in
                try need(.viewer, context)
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.scrape())))
            }
        }
        return router
    }

    /// `GET /v1/events/stream`: Server-Sent Events, one per journal entry (`id` its number,
    /// `event` its kind, `data` the entry as JSON), resumed after `Last-Event-ID`; a comment every
    /// 15 s keeps idle connections and proxies open.
    private static func addEventStream(_ v1: RouterGroup<APIRequestContext>, events: EventBus) {
        v1.get("events/stream") { request, context in
            try need(.viewer, context)
            let last = request.headers[values: HTTPField.Name("Last-Event-ID")!].first.flatMap { UInt64($0) }
            if request.uri.queryParameters.get("follow") == "false" {
                // What the node still holds, then the end: `tandem events` without --follow.
                let held = events.recent(after: last ?? 0).map(sse)
                return Response(
                    status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                    body: ResponseBody(contentsOf: held))
            }
            guard let stream = events.subscribe(after: last) else {
                throw ManagementAPI.Refusal(
                    .serviceUnavailable, "too many event streams are open (\(events.subscriberLimit))",
                    correction: "close one, or poll GET /v1/status")
            }
            let body = ResponseBody { writer in
                // One queue for the writer: the events and the keep-alive comments.
                let (out, sink) = AsyncStream.makeStream(
                    of: ByteBuffer.self, bufferingPolicy: .bufferingOldest(events.queueLimit + 16))
                let forward = Task {
                    for await event in stream { sink.yield(sse(event)) }
                    sink.finish()
                }
                let keepAlive = Task {
                    while !Task.isCancelled {
                        try await Task.sleep(for: .seconds(15))
                        sink.yield(ByteBuffer(string: ": keep-alive\n\n"))
                    }
                }
                defer {
                    forward.cancel()
                    keepAlive.cancel()
                }
                try await writer.write(ByteBuffer(string: ": tandem events\n\n"))
                // A stream never ends on its own: the agent's shutdown ends it, or a stopping agent
                // would wait for its clients.
                try await withGracefulShutdownHandler {
                    for await chunk in out { try await writer.write(chunk) }
                } onGracefulShutdown: {
                    sink.finish()
                }
                try await writer.finish(nil)
            }
            return Response(
                status: .ok,
                headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
        }
    }

    private static func addTokenRoutes(_ v1: RouterGroup<APIRequestContext>, tokens: TokenStore) {
        v1.get("tokens") { _, context in
            try need(.admin, context)
            return tokens.list
        }
        v1.post("tokens") { request, context in
            try need(.admin, context)
            let body = try await decode(CreateTokenRequest.self, request, context)
            if let seconds = body.expiresInSeconds, !(seconds > 0 && seconds <= 10 * 365 * 86400) {
                throw ManagementAPI.Refusal(.badRequest, "expiresInSeconds: expected more than 0 and at most ten years")
            }
            do throws(TokenStore.Failure) {
                let created = try tokens.create(
                    name: body.name, role: body.role, expiresIn: body.expiresInSeconds,
                    now: WallClock.secondsSinceEpoch())
                return EditedResponse(status: .created, response: created)
            } catch {
                switch error {
                case .duplicateName: throw ManagementAPI.Refusal(.conflict, error.description)
                case .notStored(let reason):
                    throw ManagementAPI.Refusal(.internalServerError, "the token was not stored", cause: reason)
                default: throw ManagementAPI.Refusal(.badRequest, "name: \(error)")
                }
            }
        }
        v1.delete("tokens/:key") { _, context in
            try need(.admin, context)
            let key = try context.parameters.require("key")
            do throws(TokenStore.Failure) {
                try tokens.revoke(key)
            } catch {
                if case .unknown = error { throw ManagementAPI.Refusal(.notFound, error.description) }
                throw ManagementAPI.Refusal(.internalServerError, "the token was not revoked", cause: "\(error)")
            }
            return tokens.list
        }
    }

    /// Whether the caller asked for a job (`Prefer: respond-async`, RFC 7240) instead of waiting.
    static func wantsJob(_ request: Request) -> Bool {
        request.headers[values: HTTPField.Name("Prefer")!].contains { $0.contains("respond-async") }
    }

    /// 202 with the job and where to follow it.
    static func accepted(_ job: JobView) -> Response {
        let data = (try? APICoding.encoder().encode(job)) ?? Data()
        return Response(
            status: .accepted, headers: [.contentType: "application/json", .location: "/v1/jobs/\(job.id)"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// One event in the Server-Sent Events format.
    static func sse(_ event: EventBus.Event) -> ByteBuffer {
        let data = (try? APICoding.encoder().encode(event.entry)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return ByteBuffer(string: "id: \(event.id)\nevent: \(event.entry.kind.rawValue)\ndata: \(data)\n\n")
    }

    /// Refuses a caller whose role is below `role`.
    static func need(_ role: APIRole, _ context: APIRequestContext) throws(ManagementAPI.Refusal) {
        guard context.role >= role else {
            throw ManagementAPI.Refusal(
                .forbidden, "this needs the \(role.rawValue) role; the caller has \(context.role.rawValue)")
        }
    }

    /// Reads a JSON body, given 10 s to arrive (408 after that).
    static func decode<T: Decodable & Sendable>(
        _ type: T.Type, _ request: Request, _ context: APIRequestContext
    ) async throws -> T {
        try await withThrowingTaskGroup(of: T.self) { group in
            group.addTask { try await request.decode(as: T.self, context: context) }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                throw ManagementAPI.Refusal(.requestTimeout, "the request body did not arrive within 10 s")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    static func errorResponse(_ error: APIError, status: HTTPResponse.Status) throws -> Response {
        let data = try APICoding.encoder().encode(error)
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Every error leaves as the contract's `APIError`: a refusal with its own status, the
/// framework's (no route, a body too large or malformed) with theirs, anything else as 500.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let refusal as ManagementAPI.Refusal {
            return try ManagementRouter.errorResponse(refusal.error, status: refusal.status)
        } catch let error as HTTPError {
            let message =
                switch error.status {
                case .notFound: "no such route: \(request.method) \(UntrustedText.quoted(request.uri.path))"
                case .contentTooLarge: "the request body is larger than \(context.maxUploadSize) bytes"
                default: error.body ?? error.status.reasonPhrase
                }
            return try ManagementRouter.errorResponse(APIError(message: message), status: error.status)
        } catch is NIOTooManyBytesError {
            return try ManagementRouter.errorResponse(
                APIError(message: "the request body is larger than \(context.maxUploadSize) bytes"),
                status: .contentTooLarge)
        } catch {
            context.logger.error("management request failed: \(error)")
            return try ManagementRouter.errorResponse(
                APIError(message: "internal error", cause: "\(error)"), status: .internalServerError)
        }
    }
}

/// Records every call that is not a read: what, by whom, and how it ended.
struct AuditMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext
    let audit: @Sendable (String) -> Void

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard request.method != .get, request.method != .head else { return try await next(request, context) }
        let what = "\(request.method) \(UntrustedText.quoted(request.uri.path, limit: 128)) by \(context.caller)"
        do {
            let response = try await next(request, context)
            audit("\(what): \(response.status.code)")
            return response
        } catch let refusal as ManagementAPI.Refusal {
            audit("\(what): \(refusal.status.code) \(refusal.error.message)")
            throw refusal
        } catch {
            audit("\(what): failed: \(error)")
            throw error
        }
    }
}

// The contract's replies, sent as JSON.
extension TokenList: ResponseEncodable {}
extension JobView: ResponseEncodable {}
extension JobList: ResponseEncodable {}
extension CreatedToken: ResponseEncodable {}
extension StatusReply: ResponseEncodable {}
extension ModesView: ResponseEncodable {}
extension FailoverHistoryReply: ResponseEncodable {}
