import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Calls a node's management API: over its local control socket (`/v1` on HTTP/1.1).
///
/// One connection per call, closed after the reply: the CLI makes one or two calls, and a test's
/// poll loop must not share a connection that an agent's restart broke.
public struct APIClient: Sendable {
    /// Where the agent listens.
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case unixSocket(path: String)

        public var description: String {
            switch self {
            case .unixSocket(let path): return path
            }
        }
    }

    /// The call did not get a reply from the agent, or the reply was not one of the contract's.
    public struct Unreachable: Error, CustomStringConvertible {
        public var description: String
    }

    public let endpoint: Endpoint
    /// How long a call may take, from connecting to the end of the reply.
    public var timeout: TimeAmount
    /// The largest reply read; a larger one fails the call.
    public var replyLimit = 16 << 20

    public init(_ endpoint: Endpoint, timeout: TimeAmount = .seconds(30)) {
        self.endpoint = endpoint
        self.timeout = timeout
    }

    /// An HTTP reply as it arrived.
    public struct Reply: Sendable {
        public var status: HTTPResponseStatus
        public var body: [UInt8]

        /// The body as `T` on a 2xx status; else the agent's `APIError`.
        public func decode<T: Decodable>(_ type: T.Type) throws -> T {
            guard (200..<300).contains(Int(status.code)) else {
                if let error = try? APICoding.decoder().decode(APIError.self, from: Data(body)) { throw error }
                throw Unreachable(description: "the agent answered \(status.code) \(status.reasonPhrase)")
            }
            do {
                return try APICoding.decoder().decode(T.self, from: Data(body))
            } catch {
                throw Unreachable(description: "the agent's reply is not a \(T.self): \(error)")
            }
        }
    }

    /// Sends one request and waits for its reply, blocking the calling thread (not an event loop).
    public func call(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil) throws -> Reply {
        try send(method, path, body: body).wait()
    }

    /// Sends one request.
    public func call(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil) async throws -> Reply {
        try await send(method, path, body: body).get()
    }

    /// `GET path` decoded as `T`.
    public func get<T: Decodable>(_ path: String, as type: T.Type = T.self) throws -> T {
        try call(.GET, path).decode(T.self)
    }

    /// `method path` with `request` as its JSON body, decoded as `T`.
    public func send<T: Decodable>(
        _ method: HTTPMethod, _ path: String, _ request: (some Encodable)? = nil as String?, as type: T.Type = T.self
    ) throws -> T {
        let body = try request.map { Array(try APICoding.encoder().encode($0)) }
        return try call(method, path, body: body).decode(T.self)
    }

    private func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?) -> EventLoopFuture<Reply> {
        let group = MultiThreadedEventLoopGroup.singleton
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Reply.self)
        let limit = replyLimit
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ReplyCollector(promise: promise, limit: limit))
                }
            }
        let connecting: EventLoopFuture<any Channel>
        switch endpoint {
        case .unixSocket(let socketPath): connecting = bootstrap.connect(unixDomainSocketPath: socketPath)
        }
        let endpoint = endpoint
        connecting.whenFailure { error in
            promise.fail(
                Unreachable(description: "cannot reach the agent at \(endpoint): \(error) (is `tandem agent` running?)")
            )
        }
        connecting.whenSuccess { channel in
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
            head.headers.add(name: "Host", value: "localhost")
            head.headers.add(name: "Connection", value: "close")
            if let body {
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: String(body.count))
            }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body {
                channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
            }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        let deadline = eventLoop.scheduleTask(in: timeout) {
            promise.fail(Unreachable(description: "no reply from the agent at \(endpoint) within \(timeout)"))
        }
        promise.futureResult.whenComplete { _ in
            deadline.cancel()
            connecting.whenSuccess { $0.close(promise: nil) }
        }
        return promise.futureResult
    }
}

/// Gathers one reply, bounded in bytes.
private final class ReplyCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<APIClient.Reply>
    private let limit: Int
    private var status: HTTPResponseStatus?
    private var body: [UInt8] = []

    init(promise: EventLoopPromise<APIClient.Reply>, limit: Int) {
        self.promise = promise
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status
        case .body(let buffer):
            guard body.count + buffer.readableBytes <= limit else {
                promise.fail(APIClient.Unreachable(description: "the agent's reply is larger than \(limit) bytes"))
                context.close(promise: nil)
                return
            }
            body += buffer.readableBytesView
        case .end:
            if let status { promise.succeed(APIClient.Reply(status: status, body: body)) }
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(APIClient.Unreachable(description: "the agent closed the connection before it answered"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(APIClient.Unreachable(description: "the agent's reply broke off: \(error)"))
        context.close(promise: nil)
    }
}

/// The contract's JSON: keys sorted so that replies compare and diff as text.
public enum APICoding {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }

    public static func decoder() -> JSONDecoder { JSONDecoder() }
}

/// The paths under `/v1`, written once for the router and the client.
public enum APIPath {
    public static let status = "/v1/status"
    public static let modes = "/v1/modes"
    public static func modeCommand(_ command: String) -> String { "/v1/modes/\(command)" }
    public static func node(_ node: String, _ action: String) -> String { "/v1/nodes/\(escape(node))/\(action)" }
    public static func volume(_ volume: String, _ action: String) -> String {
        "/v1/volumes/\(escape(volume))/\(action)"
    }
    public static let resourceCleanup = "/v1/resources/cleanup"
    public static let resourceRefresh = "/v1/resources/refresh"
    public static let failovers = "/v1/failovers"

    /// A name as one path segment: config names are letters, digits, `-`, `_` and `.`, and anything
    /// else is percent-encoded so that a hostile name cannot add a segment.
    static func escape(_ name: String) -> String {
        var result = ""
        for byte in name.utf8 {
            let scalar = Unicode.Scalar(byte)
            if scalar.properties.isASCIIHexDigit || ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar)
                || "-_.".unicodeScalars.contains(scalar)
            {
                result.unicodeScalars.append(scalar)
            } else {
                result += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return result
    }
}
