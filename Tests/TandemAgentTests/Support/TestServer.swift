import Logging
import NIOCore
import TandemAgent
import TandemCore
import TandemStorage

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory under /tmp, removed when the test ends.
final class TemporaryDirectory: Sendable {
    let path: String

    init() {
        var template = Array("/tmp/tandem-test.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    deinit {
        _ = system("rm -rf '\(path)'")
    }
}

/// An in-process NBD server on loopback serving file-backed exports from a temporary directory.
struct TestServer: Sendable {
    let directory: TemporaryDirectory
    let server: NBDServer
    let port: Int
    let unixPath: String
    let stores: [String: BackingStore]

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
    _ body: (TestServer) async throws -> Result
) async throws -> Result {
    let directory = TemporaryDirectory()
    var logger = Logger(label: "test.nbd")
    logger.logLevel = .critical
    let writable = try BackingStore.open(
        path: "\(directory.path)/vol0.img", sizeBytes: sizeBytes, create: true, readOnly: false)
    let readOnly = try BackingStore.open(
        path: "\(directory.path)/ro.img", sizeBytes: 1 << 20, create: true, readOnly: true)
    let exports = NBDExportTable([
        NBDExport(name: "vol0", store: writable, readOnly: false),
        NBDExport(name: "ro", store: readOnly, readOnly: true),
    ])
    let unixPath = "\(directory.path)/nbd.sock"
    let server = NBDServer(
        listen: [.tcp(host: "127.0.0.1", port: 0), .unix(path: unixPath)], exports: exports, limits: limits,
        logger: logger)
    let bound = try await server.start()
    guard let port = bound.first?.port else { throw NBDTestClient.Failure(description: "server bound no TCP port") }
    let testServer = TestServer(
        directory: directory, server: server, port: port, unixPath: unixPath,
        stores: ["vol0": writable, "ro": readOnly])
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
