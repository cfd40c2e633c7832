import Logging
import NIOCore
import NIOPosix
import TandemAgent
import TandemReplication
import TandemStorage
import TandemTestSupport

@testable import TandemCore

#if canImport(Glibc)
    import Glibc
#endif

/// An in-process NBD server on loopback serving file-backed exports from a temporary directory.
struct TestServer: Sendable {
    let directory: TemporaryDirectory
    let server: NBDServer
    let port: Int
    let unixPath: String
    let stores: [String: BackingStore]
    /// Which exports are offered, and their connections.
    let gate: ExportGate

    /// `nbd://127.0.0.1:PORT/NAME`.
    func uri(_ export: String = "vol0") -> String {
        "nbd://127.0.0.1:\(port)/\(export)"
    }

    /// The path of an export's backing file.
    func backing(_ export: String = "vol0") -> String {
        "\(directory.path)/\(export).img"
    }
}

/// Runs `body` against a server with a writable `vol0` of `sizeBytes` and a read-only `ro`.
func withTestServer<Result>(
    sizeBytes: UInt64 = 64 << 20,
    limits: Configuration.Limits = .defaults,
    runBlocking: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void = { work in
        NIOThreadPool.singleton.submit { _ in work() }
    },
    withdrawalGrace: TimeAmount = .seconds(5),
    negotiationDeadline: TimeAmount = .seconds(10),
    adjust: (inout NBDServerSettings) -> Void = { _ in },
    _ body: (TestServer) async throws -> Result
) async throws -> Result {
    let directory = TemporaryDirectory()
    var logger = Logger(label: "test.nbd")
    logger.logLevel = .critical
    func open(_ name: String, size: UInt64, readOnly: Bool) throws -> ReplicatedVolume {
        let volume = Configuration.Volume(
            name: name, protocol: .c, sizeBytes: size, backing: "\(directory.path)/\(name).img", metadata: nil,
            nbdExport: name, readOnly: readOnly)
        let local = try LocalVolume.open(
            volume, stateDirectory: directory.path, newGeneration: { DataGenerations.created }, newVolumeID: { 1 })
        let replicated = try ReplicatedVolume(
            index: 0, local: local, peerConfigured: false,
            runBlocking: runBlocking)
        try replicated.setRole(.primary)
        return replicated
    }
    let writable = try open("vol0", size: sizeBytes, readOnly: false)
    let readOnly = try open("ro", size: 1 << 20, readOnly: true)
    let gate = ExportGate()
    let exports = NBDExportTable(
        [
            NBDExport(name: "vol0", volume: writable),
            NBDExport(name: "ro", volume: readOnly),
        ], gate: gate)
    let unixPath = "\(directory.path)/nbd.sock"
    let server = NBDServer(
        listen: [.tcp(host: "127.0.0.1", port: 0), .unix(path: unixPath)], exports: exports, limits: limits,
        withdrawalGrace: withdrawalGrace, negotiationDeadline: negotiationDeadline, adjust: adjust,
        logger: logger)
    let bound = try await server.start()
    guard let port = bound.first?.port else { throw NBDTestClient.Failure(description: "server bound no TCP port") }
    let testServer = TestServer(
        directory: directory, server: server, port: port, unixPath: unixPath,
        stores: ["vol0": writable.store, "ro": readOnly.store], gate: gate)
    do {
        let result = try await body(testServer)
        await server.stop()
        return result
    } catch {
        await server.stop()
        throw error
    }
}

/// Deterministic bytes for a test pattern.
func patternBytes(count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
}
