import NIOCore
import TandemWire

#if canImport(Glibc)
    import Glibc
#endif

/// A blocking NBD client over a plain socket, written for tests: it sends exactly the bytes a test
/// asks for, including malformed ones, and every read times out.
final class NBDTestClient {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let socket: Int32

    /// Connects to `host:port` over TCP; `connectTimeout` bounds the connect itself (SYN
    /// retransmissions back off for seconds when nobody answers for the address).
    init(port: Int, host: String = "127.0.0.1", connectTimeout: Int? = nil) throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        if let connectTimeout {
            var timeout = timeval(tv_sec: connectTimeout / 1000, tv_usec: Int((connectTimeout % 1000) * 1000))
            setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            // deinit closes the socket: a throwing init of a class still runs it. Closing here too
            // would close whatever descriptor took the number in the meantime.
            throw Failure(description: "connect to \(host):\(port): \(String(cString: strerror(errno)))")
        }
        setTimeout(seconds: 10)
    }

    /// Connects to a Unix socket.
    init(unixPath: String) throws {
        socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(unixPath.utf8) + [0])
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            // deinit closes the socket: a throwing init of a class still runs it. Closing here too
            // would close whatever descriptor took the number in the meantime.
            throw Failure(description: "connect to \(unixPath): \(String(cString: strerror(errno)))")
        }
        setTimeout(seconds: 10)
    }

    /// Ends the connection now (the descriptor itself is closed at deinit).
    func hangUp() {
        Glibc.shutdown(socket, Int32(SHUT_RDWR))
    }

    deinit {
        close(socket)
    }

    private func setTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    // MARK: Raw bytes

    func send(_ buffer: ByteBuffer) throws {
        let bytes = Array(buffer.readableBytesView)
        var done = 0
        while done < bytes.count {
            let count = bytes[done...].withUnsafeBytes {
                Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard count > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
            done += count
        }
    }

    /// Waits until the server has taken this connection in: it sends its greeting once it has (or
    /// closes the connection at once, when it had to make room). Connections are set up on several
    /// event loops, so the server may take them in a different order from the one they were made
    /// in; a test about which ones it closes waits for each first.
    func admitted() {
        _ = try? receive(18)
    }

    /// Sends as much of `bytes` as the server takes within `limit` without blocking; returns the
    /// count sent (a hostile client that stops when the server stops reading).
    func push(_ bytes: [UInt8], within limit: Duration) -> Int {
        let deadline = ContinuousClock.now + limit
        var done = 0
        while done < bytes.count, ContinuousClock.now < deadline {
            let count = bytes[done...].withUnsafeBytes {
                Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if count > 0 {
                done += count
            } else if count < 0, errno == EAGAIN || errno == EWOULDBLOCK {
                var descriptor = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
                _ = poll(&descriptor, 1, 20)
            } else {
                break
            }
        }
        return done
    }

    /// Reads exactly `count` bytes; throws on timeout or end of stream.
    func receive(_ count: Int) throws -> ByteBuffer {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes[done...].withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            guard got > 0 else {
                throw Failure(
                    description: got == 0
                        ? "connection closed by the server" : "recv: \(String(cString: strerror(errno)))")
            }
            done += got
        }
        return ByteBuffer(bytes: bytes)
    }

    /// Whether the server closed the connection (reads end of stream within the timeout).
    func serverClosed() -> Bool {
        var byte: UInt8 = 0
        while true {
            let got = recv(socket, &byte, 1, 0)
            if got == 0 { return true }
            if got < 0 { return errno == ECONNRESET }
        }
    }

    /// Whether the server closes the connection within `milliseconds` (bytes it sends meanwhile,
    /// such as the greeting, are read and dropped).
    func closedWithin(milliseconds: Int) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(milliseconds)
        var bytes = [UInt8](repeating: 0, count: 512)
        while ContinuousClock.now < deadline {
            var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let left = deadline - ContinuousClock.now
            let wait = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
            guard poll(&descriptor, 1, max(wait, 1)) > 0 else { continue }
            let got = recv(socket, &bytes, bytes.count, Int32(MSG_DONTWAIT))
            if got == 0 { return true }
            if got < 0, errno == ECONNRESET { return true }
        }
        return false
    }

    // MARK: Negotiation

    /// Reads the greeting and sends client flags.
    func greet(clientFlags: UInt32 = 3) throws {
        var greeting = try receive(18)
        guard greeting.readInteger(as: UInt64.self) == NBD.initialMagic,
            greeting.readInteger(as: UInt64.self) == NBD.optionMagic
        else { throw Failure(description: "bad greeting") }
        var flags = ByteBuffer()
        flags.writeInteger(clientFlags)
        try send(flags)
    }

    struct OptionReply {
        var type: UInt32
        var data: ByteBuffer
    }

    /// Sends an option and collects replies up to and including the first that is not `NBD_REP_INFO`
    /// or `NBD_REP_SERVER`.
    func option(_ type: UInt32, data: ByteBuffer = ByteBuffer()) throws -> [OptionReply] {
        var request = ByteBuffer()
        request.writeNBDOption(type: type, data: data)
        try send(request)
        var replies: [OptionReply] = []
        while true {
            var header = try receive(20)
            let (magic, option, replyType, length) = header.readMultipleIntegers(
                as: (UInt64, UInt32, UInt32, UInt32).self)!
            guard magic == NBD.optionReplyMagic, option == type else { throw Failure(description: "bad option reply") }
            replies.append(OptionReply(type: replyType, data: try receive(Int(length))))
            if replyType != NBD.OptionReplyType.info.rawValue, replyType != NBD.OptionReplyType.server.rawValue {
                return replies
            }
        }
    }

    /// The reply types to `NBD_OPT_GO` for `export` (the last one ends the option).
    func goReplyTypes(export: String) throws -> [UInt32] {
        var data = ByteBuffer()
        data.writeNBDExportInfoRequest(NBDExportInfoRequest(exportName: export, requestedInfo: []))
        return try option(NBD.OptionType.go.rawValue, data: data).map(\.type)
    }

    /// Negotiates with `NBD_OPT_GO`; returns the export's size and flags.
    @discardableResult
    func go(export: String) throws -> (size: UInt64, flags: NBD.TransmissionFlags) {
        var data = ByteBuffer()
        data.writeNBDExportInfoRequest(NBDExportInfoRequest(exportName: export, requestedInfo: []))
        let replies = try option(NBD.OptionType.go.rawValue, data: data)
        guard replies.last?.type == NBD.OptionReplyType.ack.rawValue else {
            throw Failure(description: "GO refused with reply type 0x\(String(replies.last?.type ?? 0, radix: 16))")
        }
        for reply in replies where reply.type == NBD.OptionReplyType.info.rawValue {
            var info = reply.data
            if info.readInteger(as: UInt16.self) == NBD.InfoType.export.rawValue {
                let (size, flags) = info.readMultipleIntegers(as: (UInt64, UInt16).self)!
                return (size, NBD.TransmissionFlags(rawValue: flags))
            }
        }
        throw Failure(description: "GO acknowledged without NBD_INFO_EXPORT")
    }

    // MARK: Transmission

    struct Reply {
        var error: UInt32
        var cookie: UInt64
        var data: ByteBuffer
    }

    func sendRequest(
        _ type: NBD.CommandType, cookie: UInt64, offset: UInt64, length: UInt32, flags: NBD.CommandFlags = [],
        payload: ByteBuffer? = nil
    ) throws {
        var buffer = ByteBuffer()
        buffer.writeNBDRequest(
            NBDRequest(
                flags: flags, rawType: type.rawValue, cookie: cookie, offset: offset, length: length,
                payload: payload.map(NBDPayload.init)))
        try send(buffer)
    }

    /// Reads one simple reply; `readLength` is the data length expected when it is a successful read.
    func receiveReply(readLength: (UInt64) -> Int = { _ in 0 }) throws -> Reply {
        var header = try receive(16)
        let (magic, error, cookie) = header.readMultipleIntegers(as: (UInt32, UInt32, UInt64).self)!
        guard magic == NBD.simpleReplyMagic else {
            throw Failure(description: "bad reply magic 0x\(String(magic, radix: 16))")
        }
        let length = error == 0 ? readLength(cookie) : 0
        return Reply(error: error, cookie: cookie, data: length > 0 ? try receive(length) : ByteBuffer())
    }

    func write(_ bytes: [UInt8], at offset: UInt64, cookie: UInt64 = 1, fua: Bool = false) throws -> UInt32 {
        try sendRequest(
            .write, cookie: cookie, offset: offset, length: UInt32(bytes.count), flags: fua ? .fua : [],
            payload: ByteBuffer(bytes: bytes))
        return try receiveReply().error
    }

    func read(at offset: UInt64, length: Int, cookie: UInt64 = 2) throws -> (error: UInt32, data: [UInt8]) {
        try sendRequest(.read, cookie: cookie, offset: offset, length: UInt32(length))
        let reply = try receiveReply { _ in length }
        return (reply.error, Array(reply.data.readableBytesView))
    }

    func command(_ type: NBD.CommandType, offset: UInt64 = 0, length: UInt32 = 0, flags: NBD.CommandFlags = []) throws
        -> UInt32
    {
        try sendRequest(type, cookie: 7, offset: offset, length: length, flags: flags)
        return try receiveReply().error
    }
}
