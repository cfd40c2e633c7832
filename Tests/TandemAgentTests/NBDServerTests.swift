import Logging
import NIOCore
import TandemTestSupport
import Testing

@testable import TandemAgent
@testable import TandemCore
@testable import TandemReplication
@testable import TandemStorage
@testable import TandemWire

private let errorNotPermitted: UInt32 = 1
private let errorInvalid: UInt32 = 22
private let errorNoSpace: UInt32 = 28

@Suite struct NBDNegotiationTests {
    /// A client that connects and never finishes negotiating held its slot forever; now the
    /// server closes it at the deadline, and a client that chose its export is left alone.
    @Test func negotiationThatNeverFinishes_isClosedAtTheDeadline() async throws {
        try await withTestServer(negotiationDeadline: .milliseconds(300)) { server in
            let silent = try NBDTestClient(port: server.port)
            let halfway = try NBDTestClient(port: server.port)
            try halfway.greet()
            let served = try NBDTestClient(port: server.port)
            try served.greet()
            _ = try served.go(export: "vol0")
            let started = ContinuousClock.now
            #expect(silent.serverClosed(), "closed after the greeting it never answered")
            #expect(halfway.serverClosed(), "closed between options")
            #expect(ContinuousClock.now - started < .seconds(5))
            try await Task.sleep(for: .milliseconds(200))
            #expect(try served.write([1, 2, 3, 4], at: 0) == 0, "the client in transmission is served on")
        }
    }

    /// Finding 3: a write whose payload stops arriving is closed, which returns the memory it
    /// reserved, and other clients are served meanwhile.
    @Test func writePayloadThatStopsArriving_isClosed_andOthersAreServed() async throws {
        let adjust: (inout NBDServerSettings) -> Void = { $0.payloadIdleLimit = .milliseconds(400) }
        try await withTestServer(adjust: adjust) { server in
            let stalled = try NBDTestClient(port: server.port)
            try stalled.greet()
            _ = try stalled.go(export: "vol0")
            var header = ByteBuffer()
            header.writeMultipleIntegers(NBD.requestMagic, UInt16(0), UInt16(1), UInt64(9), UInt64(0), UInt32(1 << 20))
            try stalled.send(header)
            try stalled.send(ByteBuffer(bytes: [UInt8](repeating: 1, count: 1000)))
            let other = try NBDTestClient(port: server.port)
            try other.greet()
            _ = try other.go(export: "vol0")
            #expect(try other.write([5], at: 4096) == 0)
            #expect(stalled.closedWithin(milliseconds: 5000), "the stalled write is closed")
            #expect(try other.read(at: 4096, length: 1).data == [5])
        }
    }

    /// Finding 2: a client that pipelines reads and never reads the replies holds no more than its
    /// budget and is closed at the stall deadline; others are served meanwhile.
    @Test func readsWhoseRepliesAreNeverRead_areBoundedThenClosed() async throws {
        var limits = Configuration.Limits.defaults
        limits.nbdMaxRequestBytes = 1 << 20
        limits.nbdMaxBufferedBytes = 8 << 20
        let adjust: (inout NBDServerSettings) -> Void = { $0.replyStallDeadline = .milliseconds(500) }
        try await withTestServer(limits: limits, adjust: adjust) { server in
            let greedy = try NBDTestClient(port: server.port)
            try greedy.greet()
            _ = try greedy.go(export: "vol0")
            var requests = ByteBuffer()
            for cookie in 0..<64 {
                requests.writeNBDRequest(
                    NBDRequest(flags: [], rawType: 0, cookie: UInt64(cookie), offset: 0, length: 1 << 20))
            }
            try greedy.send(requests)
            let other = try NBDTestClient(port: server.port)
            try other.greet()
            _ = try other.go(export: "vol0")
            #expect(try other.write([6], at: 0) == 0)
            try await Task.sleep(for: .seconds(2))
            // Draining now finds the end of the stream: the server gave up on this client.
            #expect(greedy.closedWithin(milliseconds: 5000), "the client that read no replies was closed")
            #expect(try other.read(at: 0, length: 1).data == [6])
        }
    }

    /// `tandem init` listens on each group's floating address, which a node holds only while
    /// primary: the listener binds it beforehand (IP_FREEBIND). Nothing is sent to it.
    @Test func listener_bindsAnAddressTheHostDoesNotHoldYet() async throws {
        var logger = Logger(label: "test.nbd")
        logger.logLevel = .critical
        let server = NBDServer(
            listen: [.tcp(host: "192.0.2.77", port: 0)], exports: NBDExportTable([]), limits: .defaults,
            logger: logger)
        let bound = try await server.start()
        #expect(bound.first?.ipAddress == "192.0.2.77")
        await server.stop()
    }

    @Test func list_namesEveryExport() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            let replies = try client.option(NBD.OptionType.list.rawValue)
            let names = replies.filter { $0.type == NBD.OptionReplyType.server.rawValue }.map { reply -> String in
                var data = reply.data
                let length = data.readInteger(as: UInt32.self)!
                return data.readString(length: Int(length))!
            }
            #expect(names == ["vol0", "ro"])
            #expect(replies.last?.type == NBD.OptionReplyType.ack.rawValue)
        }
    }

    @Test func unknownAndUnsupportedOptions_getErrUnsup_andNegotiationContinues() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            for type in [NBD.OptionType.structuredReply.rawValue, NBD.OptionType.startTLS.rawValue, 999] {
                #expect(try client.option(type).map(\.type) == [NBD.OptionReplyType.errorUnsupported.rawValue])
            }
            let (size, flags) = try client.go(export: "vol0")
            #expect(size == 64 << 20)
            #expect(
                flags.isSuperset(of: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn]))
        }
    }

    @Test func go_unknownExport_getsErrUnknown_thenAValidGoSucceeds() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            #expect(try client.goReplyTypes(export: "nope") == [NBD.OptionReplyType.errorUnknown.rawValue])
            var malformed = ByteBuffer()
            malformed.writeInteger(UInt32(50))
            #expect(
                try client.option(NBD.OptionType.info.rawValue, data: malformed).map(\.type) == [
                    NBD.OptionReplyType.errorInvalid.rawValue
                ])
            #expect(try client.go(export: "").size == 64 << 20, "the empty name is the default export")
        }
    }

    @Test func info_reportsSizeFlagsAndBlockSizes_withoutEnteringTransmission() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            var data = ByteBuffer()
            data.writeNBDExportInfoRequest(
                NBDExportInfoRequest(exportName: "ro", requestedInfo: [NBD.InfoType.name.rawValue]))
            let replies = try client.option(NBD.OptionType.info.rawValue, data: data)
            #expect(replies.count == 4)
            var export = replies[0].data
            #expect(export.readMultipleIntegers(as: (UInt16, UInt64).self)! == (0, 1 << 20))
            #expect(NBD.TransmissionFlags(rawValue: export.readInteger()!).contains(.readOnly))
            var blockSize = replies[1].data
            #expect(
                blockSize.readMultipleIntegers(as: (UInt16, UInt32, UInt32, UInt32).self)! == (3, 1, 4096, 32 << 20))
            #expect(replies.last?.type == NBD.OptionReplyType.ack.rawValue)
            #expect(try client.go(export: "vol0").size == 64 << 20, "INFO must leave the client negotiating")
        }
    }

    @Test func exportName_oldOption_answersWithPaddingUnlessNoZeroes() async throws {
        try await withTestServer { server in
            for (clientFlags, replyBytes) in [(UInt32(1), 134), (UInt32(3), 10)] {
                let client = try NBDTestClient(port: server.port)
                try client.greet(clientFlags: clientFlags)
                var request = ByteBuffer()
                request.writeNBDOption(type: NBD.OptionType.exportName.rawValue, data: ByteBuffer(string: "vol0"))
                try client.send(request)
                var reply = try client.receive(replyBytes)
                #expect(reply.readInteger(as: UInt64.self) == 64 << 20)
                #expect(try client.write([1, 2, 3], at: 0) == 0)
            }
        }
    }

    @Test func exportName_unknownExport_closesTheConnection() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            var request = ByteBuffer()
            request.writeNBDOption(type: NBD.OptionType.exportName.rawValue, data: ByteBuffer(string: "missing"))
            try client.send(request)
            #expect(client.serverClosed())
        }
    }

    @Test func abort_isAcknowledgedThenClosed() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            #expect(try client.option(NBD.OptionType.abort.rawValue).map(\.type) == [NBD.OptionReplyType.ack.rawValue])
            #expect(client.serverClosed())
        }
    }

    @Test func unknownClientFlags_closeTheConnection() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet(clientFlags: 0x80)
            #expect(client.serverClosed())
        }
    }
}

@Suite struct NBDTransmissionTests {
    @Test func writeThenRead_roundTripsAndReachesTheBackingFile() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            let data = patternBytes(count: 128 << 10, seed: 3)
            #expect(try client.write(data, at: 1 << 20, fua: true) == 0)
            #expect(try client.command(.flush) == 0)
            let readBack = try client.read(at: 1 << 20, length: data.count)
            #expect(readBack.error == 0)
            #expect(readBack.data == data)
            var onDisk = [UInt8](repeating: 0, count: data.count)
            try onDisk.withUnsafeMutableBytes { try server.stores["vol0"]!.read(into: $0, at: 1 << 20) }
            #expect(onDisk == data)
        }
    }

    @Test func outOfRangeAndForbiddenRequests_getTheProtocolsErrors() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            let size: UInt64 = 64 << 20
            #expect(try client.read(at: size - 100, length: 200).error == errorInvalid)
            #expect(try client.write([0, 0], at: size - 1) == errorNoSpace)
            #expect(
                try client.read(at: UInt64.max - 10, length: 100).error == errorInvalid, "offset + length overflows")
            #expect(try client.command(.trim, offset: size, length: 4096) == errorInvalid)
            #expect(try client.command(.writeZeroes, offset: size - 4096, length: 8192) == errorNoSpace)
            #expect(try client.read(at: 0, length: 64 << 20).error == errorInvalid, "a read over the request limit")
            #expect(try client.command(.blockStatus, length: 4096) == errorInvalid)
            #expect(try client.command(.cache, length: 4096) == errorInvalid)
            #expect(try client.read(at: size - 4096, length: 4096).error == 0, "the last block is in range")
            #expect(try client.read(at: 0, length: 0).error == 0)

            let readOnly = try NBDTestClient(port: server.port)
            try readOnly.greet()
            #expect(try readOnly.go(export: "ro").flags.contains(.readOnly))
            #expect(try readOnly.write([1], at: 0) == errorNotPermitted)
            #expect(try readOnly.command(.trim, length: 4096) == errorNotPermitted)
            #expect(try readOnly.command(.writeZeroes, length: 4096) == errorNotPermitted)
            #expect(try readOnly.read(at: 0, length: 4096).error == 0)
        }
    }

    @Test func trimAndWriteZeroes_readBackAsZeroes() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            #expect(try client.write([UInt8](repeating: 0xEE, count: 1 << 20), at: 0) == 0)
            #expect(try client.command(.writeZeroes, offset: 0, length: 4096, flags: .fua) == 0)
            #expect(try client.command(.writeZeroes, offset: 4096, length: 4096, flags: .noHole) == 0)
            #expect(try client.read(at: 0, length: 8192).data == [UInt8](repeating: 0, count: 8192))
            #expect(try client.read(at: 8192, length: 4096).data == [UInt8](repeating: 0xEE, count: 4096))
            #expect(try client.command(.trim, offset: 1 << 19, length: 1 << 19) == 0)
        }
    }

    @Test func pipelinedRequests_allAnswered_evenBeyondTheInFlightBound() async throws {
        var limits = Configuration.Limits.defaults
        limits.nbdMaxInFlight = 2
        try await withTestServer(limits: limits) { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            var expected: Set<UInt64> = []
            for cookie in UInt64(1)...64 {
                let payload = ByteBuffer(bytes: patternBytes(count: 4096, seed: UInt8(cookie)))
                let flags: NBD.CommandFlags = cookie % 3 == 0 ? .fua : []
                try client.sendRequest(
                    .write, cookie: cookie, offset: cookie * 4096, length: 4096, flags: flags, payload: payload)
                expected.insert(cookie)
            }
            try client.sendRequest(.flush, cookie: 1000, offset: 0, length: 0)
            expected.insert(1000)
            var answered: Set<UInt64> = []
            for _ in expected {
                let reply = try client.receiveReply()
                #expect(reply.error == 0)
                answered.insert(reply.cookie)
            }
            #expect(answered == expected)
            #expect(try client.read(at: 10 * 4096, length: 4096).data == patternBytes(count: 4096, seed: 10))
        }
    }

    @Test func manyClientsAtOnce_eachSeesItsOwnWrites() async throws {
        try await withTestServer { server in
            let clients = try (0..<24).map { _ in try NBDTestClient(port: server.port) }
            for client in clients {
                try client.greet()
                try client.go(export: "vol0")
            }
            for (index, client) in clients.enumerated() {
                let payload = ByteBuffer(bytes: patternBytes(count: 65536, seed: UInt8(index)))
                try client.sendRequest(
                    .write, cookie: UInt64(index), offset: UInt64(index) << 16, length: 65536, payload: payload)
            }
            for (index, client) in clients.enumerated() {
                #expect(try client.receiveReply().cookie == UInt64(index))
            }
            for (index, client) in clients.enumerated().reversed() {
                #expect(
                    try client.read(at: UInt64(index) << 16, length: 65536).data
                        == patternBytes(count: 65536, seed: UInt8(index)))
            }
        }
    }

    @Test func unixSocket_servesTheSameExports() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(unixPath: server.unixPath)
            try client.greet()
            try client.go(export: "vol0")
            #expect(try client.write([9, 8, 7], at: 4096) == 0)
            #expect(try client.read(at: 4096, length: 3).data == [9, 8, 7])
        }
    }

    @Test func disconnect_closesAfterPendingReplies() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            try client.sendRequest(
                .write, cookie: 5, offset: 0, length: 4, flags: .fua, payload: ByteBuffer(bytes: [1, 2, 3, 4]))
            try client.sendRequest(.disconnect, cookie: 6, offset: 0, length: 0)
            #expect(try client.receiveReply().cookie == 5)
            #expect(client.serverClosed())
        }
    }

    @Test func withdrawnExport_closesItsConnectionsOnceAnswered_otherExportsKeepServing() async throws {
        // FUA writes wait for their flush here until the test lets them go: the request is then
        // certainly in flight when the export is withdrawn.
        let flushes = AsyncStream<@Sendable () -> Void>.makeStream()
        let holdFlushes: @Sendable (@escaping @Sendable () -> Void) -> Void = { work in
            flushes.continuation.yield(work)
        }
        // A grace far longer than the test, however slowly a loaded machine runs it.
        try await withTestServer(runBlocking: holdFlushes, withdrawalGrace: .seconds(600)) { server in
            func connect(_ export: String) throws -> NBDTestClient {
                let client = try NBDTestClient(port: server.port)
                try client.greet()
                try client.go(export: export)
                return client
            }
            let busy = try connect("vol0")
            let idle = try connect("vol0")
            let other = try connect("ro")
            #expect(server.gate.connections(to: "vol0") == 2)
            try busy.sendRequest(
                .write, cookie: 5, offset: 0, length: 4, flags: .fua, payload: ByteBuffer(bytes: [1, 2, 3, 4]))
            var pending = flushes.stream.makeAsyncIterator()
            let flush = await pending.next()
            let withdrawal = Task { await server.gate.withdraw("vol0") }
            // Waits without blocking a thread: the withdrawal runs on the same pool.
            for _ in 0..<12000 where server.gate.connections(to: "vol0") != 1 {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(idle.serverClosed(), "a connection with nothing in flight closes at once")
            #expect(server.gate.connections(to: "vol0") == 1, "the busy one waits for its request")
            try busy.sendRequest(.read, cookie: 6, offset: 0, length: 4)
            let refused = try busy.receiveReply()
            #expect(refused.cookie == 6 && refused.error == 108, "a request after the withdrawal gets NBD_ESHUTDOWN")
            flush?()
            await withdrawal.value
            #expect(server.gate.connections(to: "vol0") == 0)
            #expect(try busy.receiveReply().cookie == 5, "the request in flight is answered before the close")
            #expect(busy.serverClosed())
            #expect(try other.read(at: 0, length: 4).error == 0, "the other export keeps serving")
            let late = try NBDTestClient(port: server.port)
            try late.greet()
            #expect(try late.goReplyTypes(export: "vol0") == [NBD.OptionReplyType.errorUnknown.rawValue])
            server.gate.setOffered("vol0", true)
            #expect(try late.go(export: "vol0").size == 64 << 20)
            #expect(try late.read(at: 0, length: 4).data == [1, 2, 3, 4])
        }
    }

    @Test func connectionLimit_refusesAClientPastTheLimitOfThoseTransmitting() async throws {
        var limits = Configuration.Limits.defaults
        limits.nbdMaxConnections = 2
        try await withTestServer(limits: limits) { server in
            let first = try NBDTestClient(port: server.port)
            let second = try NBDTestClient(port: server.port)
            try first.greet()
            try second.greet()
            try first.go(export: "vol0")
            try second.go(export: "vol0")
            let third = try NBDTestClient(port: server.port)
            try third.greet()
            #expect(throws: NBDTestClient.Failure.self) { try third.go(export: "vol0") }
            #expect(try first.write([1], at: 0) == 0)
            #expect(try second.read(at: 0, length: 1).data == [1])
        }
    }

    /// Idle connections cannot lock clients out: past the cap of those negotiating, a new
    /// connection closes the oldest one, and one that finished negotiating is never closed for it.
    @Test func idleConnectionsPastTheNegotiatingCap_closeTheOldest_andRealClientsAreServed() async throws {
        let adjust: (inout NBDServerSettings) -> Void = { $0.maximumNegotiating = 4 }
        try await withTestServer(negotiationDeadline: .seconds(3600), adjust: adjust) { server in
            let settled = try NBDTestClient(port: server.port)
            try settled.greet()
            try settled.go(export: "vol0")
            var idle: [NBDTestClient] = []
            for _ in 0..<12 {
                let connection = try NBDTestClient(port: server.port)
                connection.admitted()
                idle.append(connection)
            }
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            #expect(try client.write([7], at: 0) == 0)
            #expect(try settled.read(at: 0, length: 1).data == [7])
            // The oldest idle connections were closed; the newest still stand (the client above
            // arrived after them and closed none of them by finishing).
            #expect(idle[0].closedWithin(milliseconds: 2000))
            #expect(!idle[11].closedWithin(milliseconds: 300))
        }
    }
}

@Suite struct NBDBadInputTests {
    /// A second client that must keep working whatever the first one sends.
    private func bystander(_ server: TestServer) throws -> NBDTestClient {
        let client = try NBDTestClient(port: server.port)
        try client.greet()
        try client.go(export: "vol0")
        #expect(try client.write([0x42], at: 0) == 0)
        return client
    }

    @Test(arguments: [
        ("garbage after negotiation", [UInt8](repeating: 0xAB, count: 64), true),
        ("garbage during negotiation", Array("GET / HTTP/1.1\r\n\r\n".utf8), false),
    ])
    func garbage_closesOnlyThatConnection(name: String, bytes: [UInt8], negotiated: Bool) async throws {
        try await withTestServer { server in
            let other = try bystander(server)
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            if negotiated { try client.go(export: "vol0") }
            try client.send(ByteBuffer(bytes: bytes))
            #expect(client.serverClosed(), "\(name) must close the connection")
            #expect(try other.read(at: 0, length: 1).data == [0x42])
            #expect(try other.write([0x43], at: 1) == 0)
        }
    }

    @Test func oversizedWrite_closesTheConnection_othersKeepWorking() async throws {
        try await withTestServer { server in
            let other = try bystander(server)
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            try client.sendRequest(.write, cookie: 1, offset: 0, length: UInt32(64 << 20))
            #expect(client.serverClosed())
            #expect(try other.read(at: 0, length: 1).data == [0x42])
        }
    }

    @Test func requestBeforeNegotiation_closesTheConnection() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.sendRequest(.read, cookie: 1, offset: 0, length: 512)
            #expect(client.serverClosed())
        }
    }

    @Test func optionAfterNegotiation_closesTheConnection() async throws {
        try await withTestServer { server in
            let client = try NBDTestClient(port: server.port)
            try client.greet()
            try client.go(export: "vol0")
            var request = ByteBuffer()
            request.writeNBDOption(type: NBD.OptionType.list.rawValue, data: ByteBuffer())
            try client.send(request)
            #expect(client.serverClosed())
        }
    }

    @Test func truncatedFrameThenHangUp_leavesTheServerServing() async throws {
        try await withTestServer { server in
            do {
                let client = try NBDTestClient(port: server.port)
                try client.greet()
                try client.go(export: "vol0")
                var partial = ByteBuffer()
                partial.writeNBDRequest(NBDRequest(flags: [], rawType: 1, cookie: 1, offset: 0, length: 4096))
                partial.writeBytes([1, 2, 3])
                try client.send(partial)
            }
            _ = try bystander(server)
        }
    }
}

@Suite struct NBDRequestCheckTests {
    private let export: NBDExport
    private let readOnly: NBDExport
    private let directory = TemporaryDirectory()

    init() throws {
        let directory = self.directory
        func open(_ name: String, readOnly: Bool) throws -> NBDExport {
            let volume = Configuration.Volume(
                name: name, protocol: .c, sizeBytes: 1 << 20, backing: "\(directory.path)/\(name).img", metadata: nil,
                nbdExport: name, readOnly: readOnly)
            let local = try LocalVolume.open(
                volume, stateDirectory: directory.path, newGeneration: { 4 }, newVolumeID: { 1 })
            let replicated = try ReplicatedVolume(index: 0, local: local, peerConfigured: false, runBlocking: { $0() })
            try replicated.setRole(.primary)
            return NBDExport(name: name, volume: replicated)
        }
        export = try open("a", readOnly: false)
        readOnly = try open("b", readOnly: true)
    }

    private func verdict(
        _ type: NBD.CommandType, _ offset: UInt64, _ length: UInt32, _ flags: NBD.CommandFlags = [],
        readOnly: Bool = false
    ) -> NBDRequestCheck.Verdict {
        let request = NBDRequest(flags: flags, rawType: type.rawValue, cookie: 0, offset: offset, length: length)
        return NBDRequestCheck.verdict(
            for: request, export: readOnly ? self.readOnly : export, maximumRequestBytes: 65536)
    }

    @Test func table() {
        let size: UInt64 = 1 << 20
        #expect(verdict(.read, 0, 4096) == .read)
        #expect(verdict(.read, size - 4096, 4096) == .read)
        #expect(verdict(.read, size - 4095, 4096) == .reject(.invalid))
        #expect(verdict(.read, 0, 65537) == .reject(.invalid))
        #expect(verdict(.write, 0, 4096) == .write(durable: false))
        #expect(verdict(.write, 0, 4096, .fua) == .write(durable: true))
        #expect(verdict(.write, size, 1) == .reject(.noSpace))
        #expect(verdict(.write, 0, 1, readOnly: true) == .reject(.notPermitted))
        #expect(verdict(.writeZeroes, 0, 4096) == .writeZeroes(durable: false, mayDeallocate: true))
        #expect(verdict(.writeZeroes, 0, 4096, [.noHole, .fua]) == .writeZeroes(durable: true, mayDeallocate: false))
        #expect(verdict(.writeZeroes, 0, 4096, .fastZero) == .reject(.notSupported))
        #expect(verdict(.trim, 0, 4096) == .trim(durable: false))
        #expect(verdict(.trim, size, 4096) == .reject(.invalid))
        #expect(verdict(.trim, 0, 4096, readOnly: true) == .reject(.notPermitted))
        #expect(verdict(.flush, 0, 0) == .flush)
        #expect(verdict(.flush, 0, 0, readOnly: true) == .flush)
        #expect(verdict(.disconnect, 0, 0) == .disconnect)
        #expect(verdict(.cache, 0, 4096) == .reject(.invalid))
        #expect(verdict(.read, UInt64.max, 2) == .reject(.invalid))
        let unknown = NBDRequest(flags: [], rawType: 99, cookie: 0, offset: 0, length: 0)
        #expect(NBDRequestCheck.verdict(for: unknown, export: export, maximumRequestBytes: 65536) == .reject(.invalid))
        // Flags a command does not take are refused (EINVAL), never ignored.
        #expect(verdict(.read, 0, 4096, .dontFragment) == .reject(.invalid))
        #expect(verdict(.read, 0, 4096, .fua) == .reject(.invalid))
        #expect(verdict(.write, 0, 4096, .noHole) == .reject(.invalid))
        #expect(verdict(.trim, 0, 4096, .requestOne) == .reject(.invalid))
        #expect(verdict(.write, 0, 4096, NBD.CommandFlags(rawValue: 1 << 9)) == .reject(.invalid))
        #expect(verdict(.flush, 0, 0, .fua) == .flush)
    }
}
