import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
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
    /// Bytes one connection may hold for requests received and replies not yet written (at least
    /// one request of the largest size). Past it the server stops decoding and reading.
    public var connectionBudgetBytes: Int
    /// How long the payload of a write may take to arrive after its header, and how long it may
    /// go without a byte while the server is reading: a client that sends part of a write and
    /// stops must not hold the memory reserved for it (and keep others waiting for the pool).
    public var payloadDeadline = TimeAmount.seconds(60)
    public var payloadIdleLimit = TimeAmount.seconds(5)
    /// How long a connection may have replies waiting because its client does not read them.
    public var replyStallDeadline = TimeAmount.seconds(30)
    /// Connections still negotiating; a new one over this closes the oldest.
    public var maximumNegotiating = 32
    /// TLS as the protocol defines it (`NBD_OPT_STARTTLS`): off, offered, or required.
    public var tls = Configuration.TLSMode.off
    /// The credentials the handshake uses (required unless `tls` is off).
    public var tlsCredentials: TLSCredentials?
    /// The clients served over TLS, by their certificate's common name; empty serves every client
    /// the handshake accepted.
    public var allowedClientNames: Set<String> = []
    /// Where connections, requests and bytes are counted, if anywhere.
    public var metrics: NBDMetrics?

    /// Creates settings.
    public init(maximumRequestBytes: Int, maximumInFlight: Int, connectionBudgetBytes: Int? = nil) {
        self.maximumRequestBytes = maximumRequestBytes
        self.maximumInFlight = maximumInFlight
        self.connectionBudgetBytes = max(connectionBudgetBytes ?? 2 * maximumRequestBytes, maximumRequestBytes)
    }
}

/// One NBD connection: negotiation, then transmission.
///
/// Reads and writes run inline on the connection's event loop (they hit the page cache and take
/// microseconds); `fdatasync` for FLUSH and FUA runs on the thread pool and its reply is sent when
/// it completes, so replies may leave out of order. A malformed frame or a protocol violation
/// closes this connection only, with the reason in the log.
///
/// The handler decodes the byte stream itself so that it can stop before a request it has no
/// memory for: every READ and WRITE reserves its bytes from the connection's budget and the
/// server's pool when its header is decoded, and returns them when it is answered.
final class NBDServerHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
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
    private let pool: NBDMemoryPool
    private let admission: ConnectionAdmission
    private let refusals: RateLimitedLog
    private var logger: Logger
    private var processor: NIOSingleStepByteToMessageProcessor<NBDClientFrameDecoder>!
    private var context: ChannelHandlerContext?
    /// Bytes this connection holds from the pool.
    private var heldBytes = 0
    /// The decoder stopped before a request it could not reserve memory for.
    private var admissionBlocked = false
    /// Since when the payload of the write being decoded has been arriving (the stream carries one
    /// at a time), and whether a timer watches it.
    private var payloadSince: NIODeadline?
    private var payloadWatched = false
    /// What the pool calls, from any thread, when bytes come back while this connection waits.
    private var wake: (@Sendable () -> Void)?
    /// Counts the times the channel stopped being writable (a stall check compares it).
    private var unwritableEpisodes = 0
    /// When bytes last arrived.
    private var lastInbound = NIODeadline.now()
    /// Whether the connection switched to TLS (STARTTLS was acknowledged).
    private var tlsStarted = false
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

    init(
        exports: NBDExportTable, settings: NBDServerSettings, pool: NBDMemoryPool, admission: ConnectionAdmission,
        refusals: RateLimitedLog, logger: Logger
    ) {
        self.exports = exports
        self.settings = settings
        self.pool = pool
        self.admission = admission
        self.refusals = refusals
        self.logger = logger
        var decoder = NBDClientFrameDecoder(maximumWriteBytes: settings.maximumRequestBytes)
        decoder.admit = { [unowned self] bytes, isWrite in self.admit(bytes, isWrite: isWrite) }
        processor = NIOSingleStepByteToMessageProcessor(decoder)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        wake = { eventLoop.execute { loopBound.value.resumeDecoding() } }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        wake = nil
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        logger[metadataKey: "client"] = "\(context.remoteAddress.map { "\($0)" } ?? "unix")"
        logger.debug("NBD client connected")
        settings.metrics?.connections.add(1, ordering: .relaxed)
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
        settings.metrics?.connections.subtract(1, ordering: .relaxed)
        do {
            try processor.finishProcessing(seenEOF: true) { _ in }
        } catch {
            if case .closed = phase {} else { logger.notice("NBD client went away: \(error)") }
        }
        phase = .closed
        if let session { exports.gate.release(session) }
        session = nil
        pool.forget(ObjectIdentifier(self))
        // A connection that held megabytes leaves freed heap behind: hand it back to the system.
        let large = heldBytes + processor.unprocessedBytes >= NBDMemoryPool.trimAfterBytes / 8
        pool.release(heldBytes)
        heldBytes = 0
        if large { pool.trimSoon() }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls, !settings.allowedClientNames.isEmpty {
            let name = PeerIdentity.commonName(of: context.channel)
            guard let name, settings.allowedClientNames.contains(name) else {
                return close(
                    context: context,
                    reason:
                        "client certificate \(name.map { UntrustedText.quoted($0) } ?? "without a name") is not in nbd-client-names"
                )
            }
            logger[metadataKey: "certificate"] = "\(UntrustedText.quoted(name))"
            return
        }
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
        lastInbound = .now()
        decode(unwrapInboundIn(data), context: context)
    }

    private func decode(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        // A connection waiting for memory is not read from, except that SwiftNIO drains a socket
        // whose client hung up: what the kernel buffered (megabytes) would then pile up here.
        if admissionBlocked, processor.unprocessedBytes + bytes.readableBytes > Self.blockedBacklogBytes {
            return close(context: context, reason: "the client kept sending while its connection waited for memory")
        }
        insideRead = true
        defer { insideRead = false }
        do {
            try processor.process(buffer: bytes) { message in
                switch message {
                case .clientFlags(let rawValue):
                    onClientFlags(rawValue, context: context)
                case .option(let option):
                    onOption(option, context: context)
                case .request(let request):
                    if request.type == .write, request.payload != nil { payloadSince = nil }
                    onRequest(request, context: context)
                }
            }
        } catch {
            close(context: context, reason: "\(error)")
        }
    }

    // MARK: Memory

    /// Bytes a connection waiting for memory may have unread (one read cycle of 4 × 256 KiB).
    static let blockedBacklogBytes = 1 << 20

    /// Asked by the decoder before it takes a READ or WRITE off the stream.
    private func admit(_ bytes: Int, isWrite: Bool) -> Bool {
        guard !admissionBlocked, case .transmitting = phase,
            heldBytes == 0 || heldBytes + bytes <= settings.connectionBudgetBytes
        else {
            // Requests outside transmission are refused whole; nothing needs reserving for them.
            if case .transmitting = phase {
                admissionBlocked = true
                return false
            }
            return true
        }
        guard let wake, pool.reserve(bytes, waiter: ObjectIdentifier(self), wake: wake) else {
            admissionBlocked = true
            return false
        }
        heldBytes += bytes
        if isWrite { watchPayload() }
        return true
    }

    /// Returns a request's bytes to the pool and resumes a decoder that waited for them.
    private func release(_ bytes: Int) {
        guard bytes > 0, heldBytes > 0 else { return }
        let returned = min(bytes, heldBytes)
        heldBytes -= returned
        pool.release(returned)
        if admissionBlocked { resumeDecoding() }
    }

    private func cost(of request: NBDRequest) -> Int {
        NBDClientFrameDecoder.bufferCost(
            rawType: request.rawType, length: request.length, maximumRequestBytes: settings.maximumRequestBytes)
    }

    /// Runs the decoder again over the bytes it stopped at, then lets the socket be read again.
    private func resumeDecoding() {
        guard admissionBlocked, let context else { return }
        admissionBlocked = false
        decode(ByteBuffer(), context: context)
        context.flush()
        releaseHeldRead(context: context)
    }

    /// Notes that a write's payload is arriving and starts the watch if none runs. One timer per
    /// connection at most, which stops when no payload is pending: a timer per write would cost
    /// more than the write at tens of thousands a second.
    private func watchPayload() {
        payloadSince = .now()
        guard !payloadWatched else { return }
        payloadWatched = true
        checkPayload()
    }

    /// Closes the connection if the payload being received is older than its deadline, or no byte
    /// came for the idle limit while the server was asking for more.
    private func checkPayload() {
        guard let context else { return }
        context.eventLoop.assumeIsolated().scheduleTask(in: min(settings.payloadIdleLimit, .seconds(1))) {
            guard let since = self.payloadSince, case .transmitting = self.phase else {
                self.payloadWatched = false
                return
            }
            let now = NIODeadline.now()
            if now - since >= self.settings.payloadDeadline {
                self.close(
                    context: context,
                    reason: "a write's payload did not arrive within \(self.settings.payloadDeadline)")
            } else if !self.readPending, now - self.lastInbound >= self.settings.payloadIdleLimit {
                self.close(
                    context: context,
                    reason: "a write's payload stopped arriving for \(self.settings.payloadIdleLimit)")
            } else {
                self.checkPayload()
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        close(context: context, reason: "\(error)")
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            releaseHeldRead(context: context)
        } else {
            unwritableEpisodes += 1
            let episode = unwritableEpisodes
            context.eventLoop.assumeIsolated().scheduleTask(in: settings.replyStallDeadline) {
                guard self.unwritableEpisodes == episode, !context.channel.isWritable else { return }
                self.close(
                    context: context,
                    reason: "the client has not read its replies for \(self.settings.replyStallDeadline)")
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if mayRead(context: context) {
            context.read()
        } else {
            readPending = true
        }
    }

    private func mayRead(context: ChannelHandlerContext) -> Bool {
        !admissionBlocked && inFlight < settings.maximumInFlight && context.channel.isWritable
    }

    private func releaseHeldRead(context: ChannelHandlerContext) {
        guard readPending, mayRead(context: context) else { return }
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
        if option.type == .startTLS { return onStartTLS(option, context: context) }
        var reply = context.channel.allocator.buffer(capacity: 64)
        // FORCEDTLS: before TLS, nothing but STARTTLS and ABORT; EXPORT_NAME cannot be answered
        // with an error, so it closes. No option's effect survives into the encrypted session,
        // because none has any before it.
        if settings.tls == .require, !tlsStarted, option.type != .abort {
            guard option.type != .exportName else {
                return close(context: context, reason: "EXPORT_NAME before STARTTLS, and TLS is required")
            }
            reply.writeNBDOptionError(
                option: option.rawType, type: .errorTLSRequired, message: "TLS is required: send STARTTLS first")
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            return
        }
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

    /// STARTTLS: acknowledged in clear, then the TLS handler goes to the front of the pipeline and
    /// negotiation goes on inside it. Bytes the client sent after STARTTLS, before the handshake,
    /// are an injection attempt (they would be taken as sent under TLS) and close the connection.
    private func onStartTLS(_ option: NBDOption, context: ChannelHandlerContext) {
        var reply = context.channel.allocator.buffer(capacity: 64)
        defer { if reply.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(reply), promise: nil) } }
        guard settings.tls != .off, let credentials = settings.tlsCredentials else {
            return reply.writeNBDOptionError(
                option: option.rawType, type: .errorUnsupported, message: "TLS is not enabled on this server")
        }
        guard !tlsStarted else {
            return reply.writeNBDOptionError(
                option: option.rawType, type: .errorInvalid, message: "TLS is already in use")
        }
        guard option.data.readableBytes == 0 else {
            return reply.writeNBDOptionError(
                option: option.rawType, type: .errorInvalid, message: "STARTTLS takes no data")
        }
        guard processor.unprocessedBytes == 0 else {
            return close(context: context, reason: "client sent bytes after STARTTLS before the TLS handshake")
        }
        reply.writeNBDOptionReply(option: option.rawType, type: .ack, payload: ByteBuffer())
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        reply.clear()
        do {
            try context.pipeline.syncOperations.addHandler(
                NIOSSLServerHandler(context: credentials.server), position: .first)
        } catch {
            return close(context: context, reason: "cannot start TLS: \(error)")
        }
        tlsStarted = true
        logger.debug("NBD client started TLS")
    }

    private func onExportName(_ option: NBDOption, reply: inout ByteBuffer, context: ChannelHandlerContext) {
        var data = option.data
        let name = data.readString(length: data.readableBytes) ?? ""
        guard let (export, session) = exports.admit(name, channel: context.channel) else {
            // The protocol gives EXPORT_NAME no way to report an error other than closing.
            close(context: context, reason: "client asked for unknown export \(UntrustedText.quoted(name))")
            return
        }
        guard settle(session: session, context: context) else { return }
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
        if let session, !settle(session: session, context: context) { return }
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

    /// Counts the connection among those transmitting, or closes it when they are at their limit.
    private func settle(session: Int, context: ChannelHandlerContext) -> Bool {
        guard admission.settle(context.channel) else {
            exports.gate.release(session)
            phase = .closed
            refusals.log(logger, .warning, "refusing an NBD client: the limit of connections transmitting is reached")
            context.close(promise: nil)
            return false
        }
        return true
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
        let cost = cost(of: request)
        guard !disconnectRequested else {
            release(cost)
            if withdrawn, request.type != .disconnect {
                reply(error: .shutdown, cookie: request.cookie, context: context)
            }
            return
        }
        switch NBDRequestCheck.verdict(for: request, export: export, maximumRequestBytes: settings.maximumRequestBytes)
        {
        case .reject(let error):
            release(cost)
            reply(error: error, cookie: request.cookie, context: context)
        case .disconnect:
            disconnectRequested = true
            if inFlight == 0 { context.close(promise: nil) }
        case .read:
            settings.metrics?.count(.read, bytes: UInt64(request.length))
            performRead(request, holding: cost, export: export, context: context)
        case .writeZeroes(let durable, _):
            settings.metrics?.count(.writeZeroes, bytes: UInt64(request.length))
            performUpdate(request, export: export, context: context) { completion in
                export.volume.writeZeroes(
                    offset: request.offset, length: UInt64(request.length), fua: durable, trim: false,
                    completion: completion)
            }
        case .trim(let durable):
            settings.metrics?.count(.trim, bytes: UInt64(request.length))
            performUpdate(request, export: export, context: context) { completion in
                export.volume.writeZeroes(
                    offset: request.offset, length: UInt64(request.length), fua: durable, trim: true,
                    completion: completion)
            }
        case .write(let durable):
            settings.metrics?.count(.write, bytes: UInt64(request.length))
            let payload = request.payload!
            performUpdate(request, holding: cost, export: export, context: context) { completion in
                export.volume.write(offset: request.offset, payload: payload, fua: durable, completion: completion)
            }
        case .flush:
            settings.metrics?.count(.flush, bytes: 0)
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
    private func performRead(
        _ request: NBDRequest, holding cost: Int, export: NBDExport, context: ChannelHandlerContext
    ) {
        let length = Int(request.length)
        var buffer = context.channel.allocator.buffer(capacity: 16 + length)
        buffer.writeNBDSimpleReply(error: .none, cookie: request.cookie)
        let cached = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { pointer in
            export.volume.readCached(
                into: UnsafeMutableRawBufferPointer(rebasing: pointer[0..<length]), at: request.offset)
        }
        if cached == length {
            return sendRead(buffer, cookie: request.cookie, holding: cost, export: export, context: context)
        }
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
                self.sendRead(reply, cookie: request.cookie, holding: cost, export: export, context: context)
            case .failure(let error):
                self.release(cost)
                self.logger.error("read failed: \(error)")
                self.reply(error: Self.nbdError(for: error), cookie: request.cookie, context: context)
            }
            self.flushLater(context: context)
        }
    }

    /// Writes a read's reply; its bytes go back to the pool once the last of them has left.
    private func sendRead(
        _ buffer: ByteBuffer, cookie: UInt64, holding cost: Int, export: NBDExport, context: ChannelHandlerContext
    ) {
        guard export.volume.lease.holds, case .transmitting = phase else {
            release(cost)
            return reply(error: .io, cookie: cookie, context: context)
        }
        context.write(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in self.release(cost) }
    }

    /// Starts a change on the volume and replies when its completion runs: at once when the
    /// volume completes inline, later (from another thread) when it waits for the peer or a flush.
    private func performUpdate(
        _ request: NBDRequest, holding cost: Int = 0, export: NBDExport, context: ChannelHandlerContext,
        _ start: (@escaping @Sendable (Result<Void, StorageError>) -> Void) -> Void
    ) {
        inFlight += 1
        let promise = context.eventLoop.makePromise(of: Void.self)
        start { result in promise.completeWith(result.mapError { $0 as any Error }) }
        let cookie = request.cookie
        promise.futureResult.assumeIsolated().whenComplete { result in
            self.inFlight -= 1
            self.release(cost)
            switch result {
            case .success where !export.volume.lease.holds:
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
