import Foundation
import NIOCore
import TandemTestSupport
import Testing

@testable import TandemAgent
@testable import TandemCore
@testable import TandemWire

/// An authority, a server certificate for 127.0.0.1 and a client's folder, made the way
/// `tandem init` and `tandem cert` make them.
private struct Credentials {
    let directory: TemporaryDirectory
    var authority: String { "\(directory.path)/tls" }
    var server: String { "\(authority)/node" }
    var client: String { "\(authority)/clients/tester" }
    /// A folder holding only the authority's certificate (a client with no certificate of its own).
    var anonymous: String { "\(directory.path)/anonymous" }

    static func make() async throws -> Credentials {
        let credentials = Credentials(directory: TemporaryDirectory())
        #expect(try await ClusterCA.create(in: credentials.authority, cluster: "test"))
        try await ClusterCA.issue(
            directory: credentials.authority, commonName: "node", subjectNames: ["node", "127.0.0.1"], isServer: true,
            output: credentials.server)
        try await ClusterCA.issue(
            directory: credentials.authority, commonName: "tester", subjectNames: [], isServer: false,
            output: credentials.client)
        try FileManager.default.createDirectory(atPath: credentials.anonymous, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: "\(credentials.authority)/ca-cert.pem", toPath: "\(credentials.anonymous)/ca-cert.pem")
        return credentials
    }

    func settings(_ mode: Configuration.TLSMode, clientCertificates: Bool = false) throws -> (inout NBDServerSettings)
        -> Void
    {
        let loaded = try TLSCredentials(directory: server, node: "node", requireClientCertificates: clientCertificates)
        return { settings in
            settings.tls = mode
            settings.tlsCredentials = loaded
        }
    }
}

@Suite struct NBDTLSTests {
    private func tlsURI(_ server: TestServer, certificates: String) -> String {
        "nbds://127.0.0.1:\(server.port)/vol0?tls-certificates=\(certificates)"
    }

    @Test func nbdinfoAndNbdcopy_overTLS_withTheClusterAuthority() async throws {
        let credentials = try await Credentials.make()
        try await withTestServer(sizeBytes: 16 << 20, adjust: try credentials.settings(.require)) { server in
            let info = try Tools.check("nbdinfo", ["--size", tlsURI(server, certificates: credentials.anonymous)])
            #expect(info.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "\(16 << 20)")
            let source = "\(server.directory.path)/source.raw"
            let copy = "\(server.directory.path)/copy.raw"
            let original = try writeRandomFile(path: source, bytes: 16 << 20)
            try Tools.check("nbdcopy", [source, tlsURI(server, certificates: credentials.client)])
            try Tools.check("nbdcopy", [tlsURI(server, certificates: credentials.client), copy])
            #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == original)
            // A client that trusts another authority refuses this server.
            let stranger = try await Credentials.make()
            let refused = try Tools.run("nbdinfo", ["--size", tlsURI(server, certificates: stranger.anonymous)])
            #expect(refused.status != 0, "\(refused.combined)")
        }
    }

    @Test func qemuIO_withTLSCredsX509_writesAndReadsBack() async throws {
        let credentials = try await Credentials.make()
        try await withTestServer(sizeBytes: 16 << 20, adjust: try credentials.settings(.require)) { server in
            try Tools.check(
                "qemu-io",
                [
                    "--object", "tls-creds-x509,id=tls0,dir=\(credentials.client),endpoint=client",
                    "--image-opts", "driver=nbd,host=127.0.0.1,port=\(server.port),export=vol0,tls-creds=tls0",
                    "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M",
                ])
        }
    }

    /// A plaintext client is refused, and no option works before STARTTLS (no downgrade).
    @Test func plaintextClients_andOptionsBeforeSTARTTLS_areRefused() async throws {
        let credentials = try await Credentials.make()
        try await withTestServer(adjust: try credentials.settings(.require)) { server in
            let plain = try Tools.run("nbdinfo", ["--size", server.uri()])
            #expect(plain.status != 0, "a plaintext client must not be served: \(plain.combined)")
            let raw = try NBDTestClient(port: server.port)
            try raw.greet()
            let tlsRequired = NBD.OptionReplyType.errorTLSRequired.rawValue
            #expect(try raw.goReplyTypes(export: "vol0") == [tlsRequired])
            #expect(try raw.option(NBD.OptionType.list.rawValue).map(\.type) == [tlsRequired])
            // EXPORT_NAME has no error reply: the connection closes.
            var exportName = ByteBuffer()
            exportName.writeNBDOption(type: NBD.OptionType.exportName.rawValue, data: ByteBuffer(string: "vol0"))
            try raw.send(exportName)
            #expect(raw.closedWithin(milliseconds: 3000))
            // Bytes sent behind STARTTLS, before the handshake, would be taken as sent under TLS.
            let injector = try NBDTestClient(port: server.port)
            try injector.greet()
            var frames = ByteBuffer()
            frames.writeNBDOption(type: NBD.OptionType.startTLS.rawValue, data: ByteBuffer())
            frames.writeNBDOption(type: NBD.OptionType.list.rawValue, data: ByteBuffer())
            try injector.send(frames)
            #expect(injector.closedWithin(milliseconds: 3000))
        }
    }

    /// CVE-2024-7409's lesson: a client that starts TLS and never finishes the handshake is closed
    /// at the negotiation deadline like any other.
    @Test func aTLSHandshakeThatNeverFinishes_isClosedAtTheNegotiationDeadline() async throws {
        let credentials = try await Credentials.make()
        let adjust = try credentials.settings(.require)
        try await withTestServer(negotiationDeadline: .milliseconds(500), adjust: adjust) { server in
            let stalled = try NBDTestClient(port: server.port)
            try stalled.greet()
            #expect(
                try stalled.option(NBD.OptionType.startTLS.rawValue).map(\.type) == [NBD.OptionReplyType.ack.rawValue])
            // No ClientHello follows.
            #expect(stalled.closedWithin(milliseconds: 5000))
            try Tools.check("nbdinfo", ["--size", tlsURI(server, certificates: credentials.anonymous)])
        }
    }

    @Test func allowMode_servesPlaintextAndTLS_andOffRefusesSTARTTLS() async throws {
        let credentials = try await Credentials.make()
        try await withTestServer(adjust: try credentials.settings(.allow)) { server in
            try Tools.check("nbdinfo", ["--size", server.uri()])
            try Tools.check("nbdinfo", ["--size", tlsURI(server, certificates: credentials.anonymous)])
        }
        try await withTestServer { server in
            let failed = try Tools.run("nbdinfo", ["--size", tlsURI(server, certificates: credentials.anonymous)])
            #expect(failed.status != 0)
            try Tools.check("nbdinfo", ["--size", server.uri()])
        }
    }

    /// TLS-PSK as libnbd (`tls-psk-file`) and QEMU (`tls-creds-psk`) use it: TLS 1.2, ECDHE-PSK.
    @Test func preSharedKeys_serveNbdinfoAndQemuIO_andAWrongKeyIsRefused() async throws {
        let directory = TemporaryDirectory()
        let keys = "\(directory.path)/keys.psk"
        try "tester:\(String(repeating: "5a", count: 32))\n".write(toFile: keys, atomically: true, encoding: .utf8)
        let wrong = "\(directory.path)/wrong/keys.psk"
        try FileManager.default.createDirectory(atPath: "\(directory.path)/wrong", withIntermediateDirectories: true)
        try "tester:\(String(repeating: "a5", count: 32))\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        let credentials = try TLSCredentials(
            directory: "\(directory.path)/none", node: "node", requireClientCertificates: false, pskFile: keys)
        let adjust: (inout NBDServerSettings) -> Void = { settings in
            settings.tls = .require
            settings.tlsCredentials = credentials
        }
        try await withTestServer(sizeBytes: 16 << 20, adjust: adjust) { server in
            let uri = "nbds://tester@127.0.0.1:\(server.port)/vol0?tls-psk-file=\(keys)"
            let info = try Tools.check("nbdinfo", ["--size", uri])
            #expect(info.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "\(16 << 20)")
            try Tools.check(
                "qemu-io",
                [
                    "--object", "tls-creds-psk,id=tls0,dir=\(directory.path),username=tester,endpoint=client",
                    "--image-opts", "driver=nbd,host=127.0.0.1,port=\(server.port),export=vol0,tls-creds=tls0",
                    "-c", "write -P 0x3d 0 256k", "-c", "read -P 0x3d 0 256k",
                ])
            let refused = try Tools.run(
                "nbdinfo", ["--size", "nbds://tester@127.0.0.1:\(server.port)/vol0?tls-psk-file=\(wrong)"])
            #expect(refused.status != 0, "\(refused.combined)")
        }
        #expect(throws: AgentError.self) { try PSKFile.parse("tester:zz\n", path: "keys.psk") }
        #expect(throws: AgentError.self) { try PSKFile.parse("tester:00\n", path: "keys.psk") }
        #expect(
            try PSKFile.parse("# keys\nalice:\(String(repeating: "01", count: 16))\n", path: "k")["alice"]?.count == 16)
    }

    @Test func requiredClientCertificates_refuseAClientWithout_andOneNotOnTheAllowList() async throws {
        let credentials = try await Credentials.make()
        let adjust = try credentials.settings(.require, clientCertificates: true)
        try await withTestServer(adjust: adjust) { server in
            let anonymous = try Tools.run("nbdinfo", ["--size", tlsURI(server, certificates: credentials.anonymous)])
            #expect(anonymous.status != 0, "\(anonymous.combined)")
            try Tools.check("nbdinfo", ["--size", tlsURI(server, certificates: credentials.client)])
        }
        let base = try credentials.settings(.require, clientCertificates: true)
        let allowOthers: (inout NBDServerSettings) -> Void = { settings in
            base(&settings)
            settings.allowedClientNames = ["backup"]
        }
        try await withTestServer(adjust: allowOthers) { server in
            let tester = try Tools.run("nbdinfo", ["--size", tlsURI(server, certificates: credentials.client)])
            #expect(tester.status != 0, "a client whose name is not on the list: \(tester.combined)")
        }
        let allowTester: (inout NBDServerSettings) -> Void = { settings in
            base(&settings)
            settings.allowedClientNames = ["tester"]
        }
        try await withTestServer(adjust: allowTester) { server in
            try Tools.check("nbdinfo", ["--size", tlsURI(server, certificates: credentials.client)])
        }
    }
}
