import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import TandemAPI
import TandemAgent
import TandemReplication
import TandemStorage
import TandemTestSupport
import Testing

@testable import TandemCore

/// The management routes without sockets: every route of a single node (one volume, no peer) and
/// every way a request can be refused, each with the contract's error body.
@Suite("Management API routes")
struct ManagementRouterTests {
    /// Admits everyone as "test", as a listener's admission would after its own check.
    struct AdmitAll: RouterMiddleware {
        typealias Context = APIRequestContext
        func handle(
            _ request: Request, context: Context, next: (Request, Context) async throws -> Response
        ) async throws -> Response {
            var context = context
            context.caller = "test"
            return try await next(request, context)
        }
    }

    /// Refuses everyone, as the control socket does a stranger.
    struct RefuseAll: RouterMiddleware {
        typealias Context = APIRequestContext
        func handle(
            _ request: Request, context: Context, next: (Request, Context) async throws -> Response
        ) async throws -> Response {
            throw ManagementAPI.Refusal(.forbidden, "not you")
        }
    }

    let directory = TemporaryDirectory()

    /// A node with one volume `vol0` and no peer.
    func singleNode() throws -> ManagementAPI {
        let logger = Logger(label: "test")
        let volume = Configuration.Volume(
            name: "vol0", protocol: .c, sizeBytes: 4 << 20, backing: "\(directory.path)/vol0.img", metadata: nil,
            nbdExport: "vol0", readOnly: false)
        let local = try LocalVolume.open(
            volume, stateDirectory: directory.path, newGeneration: { DataGenerations.created }, newVolumeID: { 1 })
        let replicated = try ReplicatedVolume(
            index: 0, local: local, peerConfigured: false, runBlocking: { $0() })
        let journal = try EventJournal(directory: directory.path, node: "solo", logger: logger)
        return ManagementAPI(
            nodeName: "solo", volumes: [replicated], events: VolumeEvents(journal: journal, logger: logger),
            logger: logger)
    }

    func application(_ api: ManagementAPI, admission: some RouterMiddleware<APIRequestContext> = AdmitAll())
        -> some ApplicationProtocol
    {
        Application(router: ManagementRouter.build(api, admission: admission))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ response: TestResponse) throws -> T {
        try APICoding.decoder().decode(T.self, from: Data(buffer: response.body))
    }

    /// The response is an `APIError` with `status`; returns it.
    @discardableResult
    static func refusal(_ response: TestResponse, _ status: HTTPResponse.Status) throws -> APIError {
        #expect(response.status == status, "\(String(buffer: response.body))")
        #expect(response.headers[.contentType] == "application/json")
        return try decode(APIError.self, response)
    }

    @Test("status and failovers answer with the contract's types")
    func reads() async throws {
        try await application(try singleNode()).test(.router) { client in
            try await client.execute(uri: "/v1/status", method: .get) { response in
                #expect(response.status == .ok)
                let status = try Self.decode(StatusReply.self, response)
                #expect(status.node == "solo")
                #expect(status.cluster == nil && status.modes == nil && status.resources.isEmpty)
                #expect(status.volumes.map(\.name) == ["vol0"])
                #expect(status.volumes.first?.role == .secondary)
                #expect(status.volumes.first?.protocol == "C")
            }
            try await client.execute(uri: "/v1/failovers", method: .get) { response in
                let history = try Self.decode(FailoverHistoryReply.self, response)
                #expect(history == FailoverHistoryReply(node: "solo", failovers: []))
            }
        }
    }

    @Test("volume actions: primary, secondary, and refusals for what the state does not allow")
    func volumeActions() async throws {
        try await application(try singleNode()).test(.router) { client in
            try await client.execute(uri: "/v1/volumes/vol0/primary", method: .post) { response in
                #expect(response.status == .ok, "\(String(buffer: response.body))")
                let role = try Self.decode(StatusReply.self, response).volume("vol0")?.role
                #expect(role == .primary)
            }
            try await client.execute(uri: "/v1/volumes/vol0/secondary", method: .post) { response in
                let role = try Self.decode(StatusReply.self, response).volume("vol0")?.role
                #expect(role == .secondary)
            }
            try await client.execute(uri: "/v1/volumes/vol0/resolve", method: .post) { response in
                try Self.refusal(response, .conflict)
            }
            try await client.execute(uri: "/v1/volumes/vol0/verify", method: .post) { response in
                try Self.refusal(response, .conflict)
            }
            try await client.execute(uri: "/v1/volumes/vol0/verify", method: .delete) { response in
                try Self.refusal(response, .conflict)
            }
            try await client.execute(uri: "/v1/volumes/nope%0A/primary", method: .post) { response in
                let error = try Self.refusal(response, .notFound)
                #expect(error.message.contains("no volume named"), "\(error)")
                #expect(!error.message.contains("\n"), "an untrusted name is escaped: \(error)")
                #expect(error.correction?.contains("vol0") == true)
            }
        }
    }

    @Test("pair-only actions on a node without a peer are refused with 409 and say why")
    func pairOnly() async throws {
        try await application(try singleNode()).test(.router) { client in
            for (uri, method) in [
                ("/v1/modes", HTTPRequest.Method.get), ("/v1/modes/peerdown", .post), ("/v1/modes/peerup", .post),
                ("/v1/modes/clear", .post), ("/v1/modes/start", .post), ("/v1/modes/stop", .post),
                ("/v1/modes/force-reset", .post), ("/v1/nodes/solo/standby", .post), ("/v1/nodes/solo/online", .post),
            ] {
                try await client.execute(uri: uri, method: method) { response in
                    let error = try Self.refusal(response, .conflict)
                    #expect(error.message.contains("no peer"), "\(uri): \(error)")
                }
            }
            try await client.execute(
                uri: "/v1/modes", method: .put, body: ByteBuffer(string: #"{"mode":"single"}"#)
            ) { response in try Self.refusal(response, .conflict) }
            try await client.execute(
                uri: "/v1/nodes/solo/force-primary", method: .post,
                body: ByteBuffer(string: #"{"confirm":"\#(ForcePrimaryRequest.risk)"}"#)
            ) { response in try Self.refusal(response, .conflict) }
            try await client.execute(
                uri: "/v1/resources/cleanup", method: .post, body: ByteBuffer(string: #"{"resource":null}"#)
            ) { response in
                let message = try Self.refusal(response, .conflict).message
                #expect(message == "this node runs no resources")
            }
            try await client.execute(uri: "/v1/resources/refresh", method: .post) { response in
                try Self.refusal(response, .conflict)
            }
        }
    }

    @Test("bad requests: unknown route, malformed or wrong body, oversized body, unknown mode command")
    func badRequests() async throws {
        try await application(try singleNode()).test(.router) { client in
            try await client.execute(uri: "/v1/nothing", method: .get) { response in
                let message = try Self.refusal(response, .notFound).message
                #expect(message.contains("no such route"))
            }
            try await client.execute(uri: "/v1/modes", method: .put, body: ByteBuffer(string: "{not json")) {
                response in try Self.refusal(response, .badRequest)
            }
            try await client.execute(uri: "/v1/modes", method: .put, body: ByteBuffer(string: #"{"mode":"fast"}"#)) {
                response in try Self.refusal(response, .badRequest)
            }
            try await client.execute(uri: "/v1/modes", method: .put, body: ByteBuffer(string: #"{"mood":"single"}"#)) {
                response in
                let message = try Self.refusal(response, .badRequest).message
                #expect(message.contains("mode"), "the field is named")
            }
            try await client.execute(
                uri: "/v1/modes", method: .put, body: ByteBuffer(string: #"{"mode":"peerdown"}"#)
            ) { response in try Self.refusal(response, .badRequest) }
            try await client.execute(
                uri: "/v1/resources/cleanup", method: .post,
                body: ByteBuffer(string: #"{"resource":""# + String(repeating: "x", count: 70_000) + #""}"#)
            ) { response in try Self.refusal(response, .contentTooLarge) }
            try await client.execute(uri: "/v1/modes/explode", method: .post) { response in
                try Self.refusal(response, .notFound)
            }
        }
    }

    @Test("forced promotion: the body must confirm the risk word for word")
    func forcePrimaryConfirmation() async throws {
        try await application(try singleNode()).test(.router) { client in
            try await client.execute(
                uri: "/v1/nodes/solo/force-primary", method: .post, body: ByteBuffer(string: #"{}"#)
            ) { response in
                let message = try Self.refusal(response, .badRequest).message
                #expect(message.contains("confirm"))
            }
        }
    }

    @Test("a listener's admission runs before every route")
    func admissionFirst() async throws {
        let api = try singleNode()
        try await application(api, admission: RefuseAll()).test(.router) { client in
            for uri in ["/v1/status", "/v1/failovers", "/v1/nothing"] {
                try await client.execute(uri: uri, method: .get) { response in
                    let message = try Self.refusal(response, .forbidden).message
                    #expect(message == "not you", "\(uri)")
                }
            }
            try await client.execute(uri: "/v1/volumes/vol0/primary", method: .post) { response in
                try Self.refusal(response, .forbidden)
            }
        }
        // Nothing ran: the volume is still secondary.
        #expect(api.status().volume("vol0")?.role == .secondary)
    }
}
