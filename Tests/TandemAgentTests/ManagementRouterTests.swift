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
    /// Admits everyone as "test" with `role`, as a listener's admission would after its own check.
    struct AdmitAll: RouterMiddleware {
        typealias Context = APIRequestContext
        var role = APIRole.admin
        func handle(
            _ request: Request, context: Context, next: (Request, Context) async throws -> Response
        ) async throws -> Response {
            var context = context
            context.caller = "test"
            context.role = role
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

    @Test("roles: a viewer only reads, an operator also switches over and verifies, only an admin changes modes")
    func roles() async throws {
        let admin: [(String, HTTPRequest.Method)] = [
            ("/v1/modes/stop", .post), ("/v1/modes/force-reset", .post), ("/v1/volumes/vol0/primary", .post),
            ("/v1/volumes/vol0/resolve", .post), ("/v1/tokens", .get), ("/v1/tokens/x", .delete),
        ]
        let operatorRoutes: [(String, HTTPRequest.Method)] = [
            ("/v1/nodes/solo/standby", .post), ("/v1/nodes/solo/online", .post), ("/v1/volumes/vol0/verify", .post),
            ("/v1/volumes/vol0/verify", .delete), ("/v1/resources/refresh", .post),
        ]
        let api = try singleNode()
        let tokens = try TokenStore(path: "\(directory.path)/solo.tokens", node: "solo")
        for role in APIRole.allCases {
            let router = ManagementRouter.build(api, admission: AdmitAll(role: role), tokens: tokens)
            try await Application(router: router).test(.router) { client in
                try await client.execute(uri: "/v1/status", method: .get) { response in
                    #expect(response.status == .ok, "\(role) reads")
                }
                for (uri, method) in admin + operatorRoutes {
                    let allowed = admin.contains { $0 == (uri, method) } ? role == .admin : role >= .operator
                    try await client.execute(uri: uri, method: method) { response in
                        if allowed {
                            #expect(response.status != .forbidden, "\(role) may \(method) \(uri)")
                        } else {
                            let message = try Self.refusal(response, .forbidden).message
                            #expect(message.contains("needs the"), "\(role) \(method) \(uri): \(message)")
                        }
                    }
                }
            }
        }
        // Nothing a refused caller asked for happened.
        #expect(api.status().volume("vol0")?.role == .primary, "only the admin's primary ran")
    }

    @Test("tokens: created once, listed without their secret, refused when unknown or expired, revoked")
    func tokenLifecycle() throws {
        let tokens = try TokenStore(path: "\(directory.path)/solo.tokens", node: "solo")
        let made = try tokens.create(name: "ops", role: .operator, expiresIn: 60, now: 1000)
        #expect(made.token.hasPrefix("tdm_") && made.token.count == 68)
        #expect(throws: TokenStore.Failure.duplicateName("ops")) {
            try tokens.create(name: "ops", role: .admin, expiresIn: nil, now: 1000)
        }
        #expect(throws: TokenStore.Failure.badName("a b")) {
            try tokens.create(name: "a b", role: .admin, expiresIn: nil, now: 1000)
        }
        #expect(tokens.authenticate(made.token, now: 1010) == .success(made.record))
        #expect(tokens.authenticate(made.token, now: 1060) == .failure(.expired(name: "ops")))
        #expect(tokens.authenticate(made.token + "0", now: 1010) == .failure(.unknown))
        let file = try String(contentsOfFile: tokens.path, encoding: .utf8)
        #expect(!file.contains(made.token.dropFirst(4)), "only the hash is stored")
        var info = stat()
        #expect(stat(tokens.path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        // Read again from the file, as after a restart.
        let again = try TokenStore(path: tokens.path, node: "solo")
        #expect(again.list == tokens.list && again.list.version == 1)
        try again.revoke(made.record.id)
        #expect(again.list.tokens.isEmpty && again.list.version == 2)
        #expect(again.authenticate(made.token, now: 1010) == .failure(.unknown))
        #expect(throws: TokenStore.Failure.unknown("ops")) { try again.revoke("ops") }
    }

    @Test("token lists merge: the newer wins, a tie goes to the node that sorts first, a bad list changes nothing")
    func tokenListMerge() throws {
        let a = try TokenStore(path: "\(directory.path)/a.tokens", node: "a")
        let b = try TokenStore(path: "\(directory.path)/b.tokens", node: "b")
        let one = try a.create(name: "one", role: .viewer, expiresIn: nil, now: 1)
        #expect(b.merge(a.document, from: "a") == .adopted(version: 1, added: ["one"], removed: []))
        #expect(b.authenticate(one.token, now: 2) == .success(one.record))
        #expect(a.merge(b.document, from: "b") == .kept, "the same list")
        // Apart, each node makes a token: the same version, different lists.
        let fromA = try a.create(name: "made-on-a", role: .admin, expiresIn: nil, now: 3)
        let fromB = try b.create(name: "made-on-b", role: .admin, expiresIn: nil, now: 3)
        #expect(a.merge(b.document, from: "b") == .kept, "a sorts first and keeps its list")
        #expect(b.merge(a.document, from: "a") == .adopted(version: 2, added: ["made-on-a"], removed: ["made-on-b"]))
        #expect(b.authenticate(fromA.token, now: 4) == .success(fromA.record))
        #expect(b.authenticate(fromB.token, now: 4) == .failure(.unknown))
        // A revocation on b, newer, reaches a.
        try b.revoke("one")
        #expect(a.merge(b.document, from: "b") == .adopted(version: 3, added: [], removed: ["one"]))
        #expect(a.authenticate(one.token, now: 5) == .failure(.unknown))
        // Hostile documents change nothing.
        let before = a.list
        for bad in [
            Array("{".utf8),
            Array(
                #"{"version":9,"tokens":[{"record":{"id":"x","name":"a b","role":"admin","createdAt":0,"createdOn":"b"},"sha256":"00"}]}"#
                    .utf8),
        ] {
            guard case .refused = a.merge(bad, from: "b") else {
                Issue.record("a malformed list was not refused")
                continue
            }
        }
        #expect(a.list == before)
    }

    @Test("the event stream without follow: what the node holds after Last-Event-ID, as Server-Sent Events")
    func eventStreamHeld() async throws {
        let bus = EventBus(capacity: 4)
        for index in 1...6 {
            bus.publish(JournalEntry(time: "t\(index)", node: "solo", kind: .volume, message: "event \(index)"))
        }
        let router = ManagementRouter.build(try singleNode(), admission: AdmitAll(role: .viewer), events: bus)
        try await Application(router: router).test(.router) { client in
            try await client.execute(
                uri: "/v1/events/stream?follow=false", method: .get, headers: [HTTPField.Name("Last-Event-ID")!: "4"]
            ) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "text/event-stream")
                let text = String(buffer: response.body)
                #expect(text.hasPrefix("id: 5\nevent: volume\ndata: {"), "\(text)")
                #expect(text.contains("id: 6\n") && !text.contains("id: 4\n"), "\(text)")
            }
            try await client.execute(uri: "/v1/events/stream?follow=false", method: .get) { response in
                // The ring keeps the last four.
                #expect(String(buffer: response.body).components(separatedBy: "id: ").count - 1 == 4)
            }
        }
        // A subscriber that falls behind by more than its queue is cut off; it resumes from the ring.
        let small = EventBus(capacity: 2, queueLimit: 1, subscriberLimit: 1)
        let stream = try #require(small.subscribe(after: nil))
        #expect(small.subscribe(after: nil) == nil, "one subscriber at most")
        for index in 1...10 { small.publish(JournalEntry(time: "t", node: "n", kind: .api, message: "\(index)")) }
        var received: [UInt64] = []
        for await event in stream { received.append(event.id) }
        #expect(received == [1, 2, 3], "the queue held three, then the stream ended: \(received)")
        #expect(small.subscriberCount == 0)
    }

    @Test("jobs: Prefer respond-async answers 202 with a Location; the job fails with the refusal; 404 unknown")
    func jobs() async throws {
        let jobs = JobRegistry()
        let router = ManagementRouter.build(try singleNode(), admission: AdmitAll(role: .operator), jobs: jobs)
        try await Application(router: router).test(.router) { client in
            var id = ""
            try await client.execute(
                uri: "/v1/nodes/solo/standby", method: .post, headers: [HTTPField.Name("Prefer")!: "respond-async"]
            ) { response in
                #expect(response.status == .accepted)
                let job = try Self.decode(JobView.self, response)
                #expect(response.headers[.location] == "/v1/jobs/\(job.id)")
                #expect(job.kind == "node-standby" && job.target == "solo" && job.caller == "test")
                id = job.id
            }
            var finished: JobView?
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                try await client.execute(uri: "/v1/jobs/\(id)", method: .get) { response in
                    let job = try Self.decode(JobView.self, response)
                    if job.state == .finished { finished = job }
                }
                if finished != nil { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(finished?.result == .failed, "\(String(describing: finished))")
            #expect(finished?.error?.message.contains("no peer") == true)
            #expect(finished?.steps.map(\.name) == ["ask solo to hand the primary role over"])
            try await client.execute(uri: "/v1/jobs", method: .get) { response in
                let listed = try Self.decode(JobList.self, response).jobs.map(\.id)
                #expect(listed == [id])
            }
            try await client.execute(uri: "/v1/jobs/0123456789abcdef", method: .get) { response in
                try Self.refusal(response, .notFound)
            }
            try await client.execute(uri: "/v1/jobs/\(id)", method: .delete) { response in
                let result = try Self.decode(JobView.self, response).result
                #expect(result == .failed, "a finished job stays as it ended")
            }
            // A verify on a node without a peer is refused before any job exists.
            try await client.execute(
                uri: "/v1/volumes/vol0/verify", method: .post, headers: [HTTPField.Name("Prefer")!: "respond-async"]
            ) { response in try Self.refusal(response, .conflict) }
        }
        #expect(jobs.all.count == 1)
    }
}
