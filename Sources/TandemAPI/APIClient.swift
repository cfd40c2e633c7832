import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Calls a node's management API (`/v1` on HTTP/1.1): over its local control socket, or over the
/// network with TLS (the server checked against the cluster's authority) and a bearer token.
///
/// One connection per call, closed after the reply: the CLI makes one or two calls, and a test's
/// poll loop must not share a connection that an agent's restart broke.
public struct APIClient: Sendable {
    /// Where the agent listens.
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case unixSocket(path: String)
        /// Plain HTTP: for an API that `[api] plain-http` keeps on loopback.
        case http(host: String, port: Int)
        /// TLS 1.2 or later; the server's certificate must chain to `authority` (a PEM file) and
        /// name the host.
        case https(host: String, port: Int, authority: String)

        public var description: String {
            switch self {
            case .unixSocket(let path): return path
            case .http(let host, let port): return "http://\(Self.bracketed(host)):\(port)"
            case .https(let host, let port, _): return "https://\(Self.bracketed(host)):\(port)"
            }
        }

        /// `https://HOST:PORT` or `http://HOST:PORT`; nil for anything else.
        public static func parse(_ url: String, authority: String) -> Endpoint? {
            let secure = url.hasPrefix("https://")
            guard secure || url.hasPrefix("http://") else { return nil }
            var rest = Substring(url.dropFirst(secure ? 8 : 7))
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            let host: Substring
            let portText: Substring?
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { return nil }
                host = rest[rest.index(after: rest.startIndex)..<close]
                let after = rest[rest.index(after: close)...]
                portText = after.hasPrefix(":") ? after.dropFirst() : (after.isEmpty ? nil : "x")
            } else if let colon = rest.lastIndex(of: ":") {
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
            } else {
                host = rest
                portText = nil
            }
            let port = portText.map { Int($0) } ?? 7443
            guard !host.isEmpty, !host.contains("/"), let port, (1...65535).contains(port) else { return nil }
            return secure
                ? .https(host: String(host), port: port, authority: authority) : .http(host: String(host), port: port)
        }

        static func bracketed(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }
    }

    /// The call did not get a reply from the agent, or the reply was not one of the contract's.
    public struct Unreachable: Error, CustomStringConvertible {
        public var description: String
    }

    public let endpoint: Endpoint
    /// The bearer token sent with every call, for the network API.
    public var token: String?
    /// How long a call may take, from connecting to the end of the reply.
    public var timeout: TimeAmount
    /// The largest reply read; a larger one fails the call.
    public var replyLimit = 16 << 20

    public init(_ endpoint: Endpoint, token: String? = nil, timeout: TimeAmount = .seconds(30)) {
        self.endpoint = endpoint
        self.token = token
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

    /// `GET path` whose 2xx body is handed to `chunk` piece by piece as it arrives, with no time
    /// limit (an event stream); returns when the server ends it. A refusal's body is collected.
    public func stream(
        _ path: String, headers: [(String, String)] = [], chunk: @escaping @Sendable (ByteBuffer) -> Void
    ) async throws -> Reply {
        try await send(.GET, path, body: nil, headers: headers, streaming: chunk).get()
    }

    private func send(
        _ method: HTTPMethod, _ path: String, body: [UInt8]?, headers: [(String, String)] = [],
        streaming: (@Sendable (ByteBuffer) -> Void)? = nil
    ) -> EventLoopFuture<Reply> {
        let group = MultiThreadedEventLoopGroup.singleton
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Reply.self)
        let limit = replyLimit
        let tls: NIOSSLContext?
        var serverName: String?
        if case .https(let host, _, let authority) = endpoint {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            configuration.trustRoots = .file(authority)
            do {
                tls = try NIOSSLContext(configuration: configuration)
            } catch {
                return eventLoop.makeFailedFuture(
                    Unreachable(description: "cannot use the cluster's authority \(authority): \(error)"))
            }
            // An IP address is checked against the certificate's addresses, a name against its names.
            var scratch = [UInt8](repeating: 0, count: 16)
            let isAddress = inet_pton(AF_INET, host, &scratch) == 1 || inet_pton(AF_INET6, host, &scratch) == 1
            serverName = isAddress ? nil : host
        } else {
            tls = nil
        }
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { [serverName] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        ReplyCollector(promise: promise, limit: limit, streaming: streaming))
                }
            }
        let connecting: EventLoopFuture<any Channel>
        let hostHeader: String
        switch endpoint {
        case .unixSocket(let socketPath):
            connecting = bootstrap.connect(unixDomainSocketPath: socketPath)
            hostHeader = "localhost"
        case .http(let host, let port), .https(let host, let port, _):
            connecting = bootstrap.connect(host: host, port: port)
            hostHeader = "\(Endpoint.bracketed(host)):\(port)"
        }
        let endpoint = endpoint
        let token = token
        connecting.whenFailure { error in
            promise.fail(
                Unreachable(description: "cannot reach the agent at \(endpoint): \(error) (is `tandem agent` running?)")
            )
        }
        connecting.whenSuccess { channel in
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
            head.headers.add(name: "Host", value: hostHeader)
            head.headers.add(name: "Connection", value: "close")
            if let token { head.headers.add(name: "Authorization", value: "Bearer \(token)") }
            for (name, value) in headers { head.headers.add(name: name, value: value) }
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
        let deadline =
            streaming != nil
            ? nil
            : eventLoop.scheduleTask(in: timeout) {
                promise.fail(Unreachable(description: "no reply from the agent at \(endpoint) within \(timeout)"))
            }
        promise.futureResult.whenComplete { _ in
            deadline?.cancel()
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
    private let streaming: (@Sendable (ByteBuffer) -> Void)?
    private var status: HTTPResponseStatus?
    private var body: [UInt8] = []

    init(promise: EventLoopPromise<APIClient.Reply>, limit: Int, streaming: (@Sendable (ByteBuffer) -> Void)?) {
        self.promise = promise
        self.limit = limit
        self.streaming = streaming
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status
        case .body(let buffer):
            if let streaming, let status, (200..<300).contains(Int(status.code)) {
                streaming(buffer)
                return
            }
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
    public static let tokens = "/v1/tokens"
    public static let eventStream = "/v1/events/stream"
    public static func job(_ id: String) -> String { "/v1/jobs/\(escape(id))" }
    public static func token(_ key: String) -> String { "/v1/tokens/\(escape(key))" }

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
