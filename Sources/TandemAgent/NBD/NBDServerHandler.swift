import Logging
import NIOCore
import NIOPosix
import TandemCore
import TandemReplication
import TandemStorage
import TandemWire

/// Settings shared by every connection of one NBD server.
public struct NBDServerSettings: Sendable {
    /// Largest request payload, advertised as the maximum block size.
    public var maximumRequestBytes: Int
    /// Requests one connection may have in flight before the server stops reading from it.
    public var maximumInFlight: Int
    /// Options one connection may send before it is closed (bounds a chatty or hostile client).
    public var maximumOptions: Int = 1024
    /// How long a withdrawn export's connection waits for its requests in flight before it closes.
    public var withdrawalGrace = TimeAmount.seconds(5)
    /// How long a client may take from connecting to choosing its export (qemu-nbd's 10 s): one
    /// that never finishes negotiating must not hold a connection slot (CVE-2024-7409's lesson).
    public var negotiationDeadline = TimeAmount.seconds(10)

    /// Creates settings.
    public init(maximumRequestBytes: Int, maximumInFlight: Int) {
        self.maximumRequestBytes = maximumRequestBytes
        self.maximumInFlight = maximumInFlight
    }
}

/// One NBD connection: negotiation, then transmission.
///
/// Reads and writes run inline on the connection's event loop (they hit the page cache and take
/// microseconds); `fdatasync` for FLUSH and FUA runs on the thread pool and its reply is sent when
/// it completes, so replies may leave out of order. A malformed frame or a protocol violation
/// closes this connection only, with the reason in the log.
final class NBDServerHandler: ChannelDuplexHandler {
    typealias InboundIn = NBDClientMessage
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        case greeting
        case negotiating
        case transmitting(NBDExport)
        case closed
    }

    private let exports: NBDExportTable
    private let settings: NBDServerSettings
    private var logger: Logger
    private var phase = Phase.greeting
    private var padExportNameReply = true
    private var optionCount = 0
    /// Requests received whose replies are not yet written.
    private var inFlight = 0
    /// Whether a `read()` from downstream is being held back (too much in flight or not writable).
    private var readPending = false
    private var disconnectRequested = false
    /// The export was withdrawn: requests still arriving are answered `NBD_ESHUTDOWN`.
    private var withdrawn = false
    /// Whether `channelRead` is on the stack (replies made now are flushed at `channelReadComplete`).
    private var insideRead = false
    /// Whether a task to flush replies that completed outside `channelRead` is queued on the loop.
    private var flushScheduled = false
    /// This connection's entry in the export gate, while it transmits.
    private var session: Int?

    init(exports: NBDExportTable, settings: NBDServerSettings, logger: Logger) {
        self.exports = exports
        self.settings = settings
        self.logger = logger
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        logger[metadataKey: "client"] = "\(context.remoteAddress.map { "\($0)" } ?? "unix")"
        logger.debug("NBD client connected")
        var greeting = context.channel.allocator.buffer(capacity: 18)
        greeting.writeNBDGreeting(flags: [.fixedNewstyle, .noZeroes])
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        context.eventLoop.assumeIsolated().scheduleTask(in: settings.negotiationDeadline) {
            switch self.phase {
            case .greeting, .negotiating:
                self.close(
                    context: context, reason: "negotiation did not finish within \(self.settings.negotiationDeadline)")
            case .transmitting, .closed:
                break
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let session { exports.gate.release(session) }
        session = nil
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is NBDExportWithdrawn else { return context.fireUserInboundEventTriggered(event) }
        guard case .transmitting = phase, !disconnectRequested else { return }
        logger.notice("export withdrawn: closing the connection once its \(inFlight) requests in flight are answered")
        // As the protocol asks of a server that shuts down: the requests in flight are answered,
        // any that arrive meanwhile get NBD_ESHUTDOWN (the client is to disconnect on it), and the
        // connection closes when the last reply is written. A request that never completes (say,
        // a peer that stopped answering) does not hold the connection past the grace period.
        disconnectRequested = true
        withdrawn = true
        guard inFlight > 0 else { return context.close(promise: nil) }
        context.eventLoop.assumeIsolated().scheduleTask(in: settings.withdrawalGrace) {
            if case .closed = self.phase { return }
            self.close(
                context: context,
                reason: "requests still in flight \(self.settings.withdrawalGrace) after the export was withdrawn")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        insideRead = true
        defer { insideRead = false }
        switch unwrapInboundIn(data) {
        case .clientFlags(let rawValue):
            onClientFlags(rawValue, context: context)
        case .option(let option):
            onOption(option, context: context)
        case .request(let request):
            onRequest(request, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        close(context: context, reason: "\(error)")
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        releaseHeldRead(context: context)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if inFlight >= settings.maximumInFlight || !context.channel.isWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    private func releaseHeldRead(context: ChannelHandlerContext) {
        guard readPending, inFlight < settings.maximumInFlight, context.channel.isWritable else { return }
        readPending = false
        context.read()
    }

    private func close(context: ChannelHandlerContext, reason: String) {
        if case .closed = phase { return }
        phase = .closed
        logger.warning("closing NBD connection: \(reason)")
        context.close(promise: nil)
    }

    // MARK: Negotiation

    private func onClientFlags(_ rawValue: UInt32, context: ChannelHandlerContext) {
        let flags = NBD.ClientFlags(rawValue: rawValue)
        guard flags.subtracting([.fixedNewstyle, .noZeroes]).isEmpty else {
            close(context: context, reason: "client sent unknown flags 0x\(String(rawValue, radix: 16))")
            return
        }
        padExportNameReply = !flags.contains(.noZeroes)
        phase = .negotiating
    }

    private func onOption(_ option: NBDOption, context: ChannelHandlerContext) {
        guard case .negotiating = phase else {
            close(context: context, reason: "option \(option.rawType) sent outside negotiation")
            return
        }
        optionCount += 1
        guard optionCount <= settings.maximumOptions else {
            close(context: context, reason: "more than \(settings.maximumOptions) options")
            return
        }
        var reply = context.channel.allocator.buffer(capacity: 64)
        defer { if reply.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(reply), promise: nil) } }
        switch option.type {
        case .exportName?:
            onExportName(option, reply: &reply, context: context)
        case .abort?:
            reply.writeNBDOptionReply(option: option.rawType, type: .ack, payload: ByteBuffer())
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in channel.close(promise: nil) }
            reply.clear()
            phase = .closed
        case .list?:
            guard option.data.readableBytes == 0 else {
                reply.writeNBDOptionError(option: option.rawType, type: .errorInvalid, message: "LIST takes no data")
                return
            }
            for export in exports.exports {
                reply.writeNBDServerListEntry(option: option.rawType, exportName: export.name)
            }
            reply.writeNBDOptionReply(option: option.rawType, type: .ack, payload: ByteBuffer())
        case .info?, .go?:
            onInfoOrGo(option, reply: &reply, context: context)
        case .peekExport?, .startTLS?, .structuredReply?, .listMetaContext?, .setMetaContext?, .extendedHeaders?, nil:
            reply.writeNBDOptionError(
                option: option.rawType, type: .errorUnsupported, message: "option \(option.rawType) is not supported")
        }
    }

    private func onExportName(_ option: NBDOption, reply: inout ByteBuffer, context: ChannelHandlerContext) {
        var data = option.data
        let name = data.readString(length: data.readableBytes) ?? ""
        guard let (export, session) = exports.admit(name, channel: context.channel) else {
            // The protocol gives EXPORT_NAME no way to report an error other than closing.
            close(context: context, reason: "client asked for unknown export \(UntrustedText.quoted(name))")
            return
        }
        reply.writeNBDExportNameReply(
            sizeBytes: export.sizeBytes, flags: export.transmissionFlags, padWithZeroes: padExportNameReply)
        enterTransmission(export, session: session)
    }

    private func onInfoOrGo(_ option: NBDOption, reply: inout ByteBuffer, context: ChannelHandlerContext) {
        guard let request = NBDExportInfoRequest(parsing: option.data) else {
            reply.writeNBDOptionError(option: option.rawType, type: .errorInvalid, message: "malformed INFO/GO data")
            return
        }
        // GO makes this connection a user of the export; INFO only looks.
        let admitted: (export: NBDExport, session: Int?)? =
            option.type == .go
            ? exports.admit(request.exportName, channel: context.channel).map { ($0.export, $0.session) }
            : exports.export(named: request.exportName).map { ($0, nil) }
        guard let (export, session) = admitted else {
            reply.writeNBDOptionError(
                option: option.rawType, type: .errorUnknown,
                message: "no export named \(UntrustedText.quoted(request.exportName))")
            return
        }
        reply.writeNBDInfoExport(
            option: option.rawType, sizeBytes: export.sizeBytes, flags: export.transmissionFlags)
        reply.writeNBDInfoBlockSize(
            option: option.rawType, minimum: 1, preferred: 4096, maximum: UInt32(settings.maximumRequestBytes))
        if request.requestedInfo.contains(NBD.InfoType.name.rawValue) {
            reply.writeNBDInfoName(option: option.rawType, exportName: export.name)
        }
        reply.writeNBDOptionReply(option: option.rawType, type: .ack, payload: ByteBuffer())
        if let session { enterTransmission(export, session: session) }
    }

    private func enterTransmission(_ export: NBDExport, session: Int) {
        self.session = session
        logger[metadataKey: "export"] = "\(export.name)"
        logger.debug("NBD client entered transmission")
        phase = .transmitting(export)
    }

    // MARK: Transmission

    private func onRequest(_ request: NBDRequest, context: ChannelHandlerContext) {
        guard case .transmitting(let export) = phase else {
            if case .closed = phase { return }
            close(context: context, reason: "request sent before negotiation finished")
            return
        }
        guard !disconnectRequested else {
            if withdrawn, request.type != .disconnect {
                reply(error: .shutdown, cookie: request.cookie, context: context)
            }
            return
        }
        switch NBDRequestCheck.verdict(for: request, export: export, maximumRequestBytes: settings.maximumRequestBytes)
        {
        case .reject(let error):
            reply(error: error, cookie: request.cookie, context: context)
        case .disconnect:
            disconnectRequested = true
            if inFlight == 0 { context.close(promise: nil) }
        case .read:
            performRead(request, export: export, context: context)
        case .writeZeroes(let durable, _):
            performUpdate(request, export: export, context: context) { completion in
                export.volume.writeZeroes(
                    offset: request.offset, length: UInt64(request.length), fua: durable, trim: false,
                    completion: completion)
            }
        case .trim(let durable):
            performUpdate(request, export: export, context: context) { completion in
                export.volume.writeZeroes(
                    offset: request.offset, length: UInt64(request.length), fua: durable, trim: true,
                    completion: completion)
            }
        case .write(let durable):
            let payload = request.payload!
            performUpdate(request, export: export, context: context) { completion in
                export.volume.write(offset: request.offset, payload: payload, fua: durable, completion: completion)
            }
        case .flush:
            performUpdate(request, export: export, context: context) { completion in
                export.volume.flush(completion: completion)
            }
        }
    }

    /// Threads for reads that must wait for the device: a read the page cache cannot answer leaves
    /// the event loop, so one cold read never holds up the connection's other requests.
    static let readPool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 16)
        pool.start()
        return pool
    }()

    /// Answers from the page cache on the loop; what is not cached is read on `readPool` and
    /// answered when it arrives (NBD replies may come in any order).
    private func performRead(_ request: NBDRequest, export: NBDExport, context: ChannelHandlerContext) {
        let length = Int(request.length)
        var buffer = context.channel.allocator.buffer(capacity: 16 + length)
        buffer.writeNBDSimpleReply(error: .none, cookie: request.cookie)
        let cached = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { pointer in
            export.volume.readCached(
                into: UnsafeMutableRawBufferPointer(rebasing: pointer[0..<length]), at: request.offset)
        }
        if cached == length { return sendRead(buffer, cookie: request.cookie, export: export, context: context) }
        inFlight += 1
        let rest = length - cached
        let offset = request.offset + UInt64(cached)
        let volume = export.volume
        let started = buffer
        let read = Self.readPool.runIfActive(eventLoop: context.eventLoop) { () throws -> ByteBuffer in
            var reply = started
            try reply.writeWithUnsafeMutableBytes(minimumWritableBytes: rest) { pointer in
                try volume.read(into: UnsafeMutableRawBufferPointer(rebasing: pointer[0..<rest]), at: offset)
                return rest
            }
            return reply
        }
        read.assumeIsolated().whenComplete { result in
            self.inFlight -= 1
            switch result {
            case .success(let reply):
                self.sendRead(reply, cookie: request.cookie, export: export, context: context)
            case .failure(let error):
                self.logger.error("read failed: \(error)")
                self.reply(error: Self.nbdError(for: error), cookie: request.cookie, context: context)
            }
            self.flushLater(context: context)
        }
    }

    private func sendRead(_ buffer: ByteBuffer, cookie: UInt64, export: NBDExport, context: ChannelHandlerContext) {
        guard export.volume.mayAcknowledge else { return reply(error: .io, cookie: cookie, context: context) }
        guard case .transmitting = phase else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    /// Starts a change on the volume and replies when its completion runs: at once when the
    /// volume completes inline, later (from another thread) when it waits for the peer or a flush.
    private func performUpdate(
        _ request: NBDRequest, export: NBDExport, context: ChannelHandlerContext,
        _ start: (@escaping @Sendable (Result<Void, StorageError>) -> Void) -> Void
    ) {
        inFlight += 1
        let promise = context.eventLoop.makePromise(of: Void.self)
        start { result in promise.completeWith(result.mapError { $0 as any Error }) }
        let cookie = request.cookie
        promise.futureResult.assumeIsolated().whenComplete { result in
            self.inFlight -= 1
            switch result {
            case .success where !export.volume.mayAcknowledge:
                // The lease ended: this node may no longer be the only one serving the volume.
                self.reply(error: .io, cookie: cookie, context: context)
            case .success:
                self.reply(error: .none, cookie: cookie, context: context)
            case .failure(let error):
                self.logger.error("write failed: \(error)")
                self.reply(error: Self.nbdError(for: error), cookie: cookie, context: context)
            }
            self.flushLater(context: context)
        }
    }

    /// Inside channelRead a reply leaves with the batch at channelReadComplete. Replies that
    /// complete later (a batch of the peer's acknowledgements completes many at once) leave
    /// together from one task queued behind them on the loop: one system call, not one each.
    private func flushLater(context: ChannelHandlerContext) {
        guard !insideRead, !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            context.flush()
            self.afterAsynchronousReply(context: context)
        }
    }

    private func afterAsynchronousReply(context: ChannelHandlerContext) {
        if disconnectRequested, inFlight == 0 {
            context.close(promise: nil)
            return
        }
        releaseHeldRead(context: context)
    }

    /// The NBD error a failed request is answered with. A full file system is `ENOSPC`, which a
    /// client can tell from a failing disk (QEMU's default `werror=enospc` pauses the guest until
    /// space is freed, where `EIO` reaches the guest's file system); a read-only one is `EPERM`;
    /// anything else `EIO`.
    static func nbdError(for error: any Error) -> NBD.ErrorCode {
        switch (error as? StorageError)?.errno?.rawValue {
        case ENOSPC?, EDQUOT?: .noSpace
        case EROFS?, EPERM?, EACCES?: .notPermitted
        default: .io
        }
    }

    private func reply(error: NBD.ErrorCode, cookie: UInt64, context: ChannelHandlerContext) {
        guard case .transmitting = phase else { return }
        var buffer = context.channel.allocator.buffer(capacity: 16)
        buffer.writeNBDSimpleReply(error: error, cookie: cookie)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }
}
