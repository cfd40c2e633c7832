import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import TandemAPI
import TandemCore

/// The context of one management request: who called, as the listener identified them.
public struct APIRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection, for the listener's own checks (the control socket's peer credentials).
    public let channel: any Channel
    /// Who called, for the log and the journal; set by the listener's admission middleware.
    public var caller = "an unidentified caller"

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
    /// The router for `api`; `admission` identifies (and may refuse) each caller first.
    public static func build(
        _ api: ManagementAPI, admission: some RouterMiddleware<APIRequestContext>
    ) -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        router.middlewares.add(ErrorMiddleware())
        router.middlewares.add(admission)
        let v1 = router.group("v1")

        v1.get("status") { _, _ in api.status() }
        v1.get("failovers") { _, _ in FailoverHistoryReply(node: api.nodeName, failovers: api.failovers()) }

        v1.get("modes") { _, _ in try await api.modes() }
        v1.put("modes") { request, context in
            let body = try await request.decode(as: SetModeRequest.self, context: context)
            guard body.mode != .peerdown else {
                throw ManagementAPI.Refusal(
                    .badRequest, "mode: peerdown is not set, it is certified",
                    correction: "use POST /v1/modes/peerdown on the surviving node")
            }
            return try await api.mode(.set(body.mode), caller: context.caller)
        }
        v1.post("modes/:command") { _, context in
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

        v1.post("nodes/:node/standby") { _, context in
            try await api.setStandby(true, node: try context.parameters.require("node"), caller: context.caller)
        }
        v1.post("nodes/:node/online") { _, context in
            try await api.setStandby(false, node: try context.parameters.require("node"), caller: context.caller)
        }
        v1.post("nodes/:node/force-primary") { request, context in
            let body = try await request.decode(as: ForcePrimaryRequest.self, context: context)
            return try await api.forcePrimary(
                node: try context.parameters.require("node"), confirm: body.confirm, caller: context.caller)
        }

        for action in [ManagementAPI.VolumeAction.primary, .secondary, .resolve] {
            v1.post("volumes/:volume/\(action.rawValue)") { _, context in
                try api.volume(try context.parameters.require("volume"), action, caller: context.caller)
            }
        }
        v1.post("volumes/:volume/verify") { _, context in
            try api.volume(try context.parameters.require("volume"), .verifyStart, caller: context.caller)
        }
        v1.delete("volumes/:volume/verify") { _, context in
            try api.volume(try context.parameters.require("volume"), .verifyStop, caller: context.caller)
        }

        v1.post("resources/cleanup") { request, context in
            let body = try await request.decode(as: CleanupRequest.self, context: context)
            return try await api.cleanup(body.resource, caller: context.caller)
        }
        v1.post("resources/refresh") { _, context in try await api.refresh(caller: context.caller) }
        return router
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

// The contract's replies, sent as JSON.
extension StatusReply: ResponseEncodable {}
extension ModesView: ResponseEncodable {}
extension FailoverHistoryReply: ResponseEncodable {}
