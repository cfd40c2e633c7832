import NIOSSL
import Synchronization
import TandemCore

/// A node's TLS credentials: its certificate and key, and the cluster's authority, loaded from its
/// folder (`TLS-DIR/NODE/`, as `tandem cert issue NODE` writes it). `reload()` reads them again
/// (on `SIGHUP`); connections already in TLS keep what they started with.
public final class TLSCredentials: Sendable {
    /// The folder the files come from.
    public let directory: String
    private let requireClientCertificates: Bool
    private let serverContext: Mutex<NIOSSLContext>

    /// Loads the credentials; the error names the file and how to make it.
    public init(directory: String, node: String, requireClientCertificates: Bool) throws(AgentError) {
        self.directory = directory
        self.requireClientCertificates = requireClientCertificates
        self.serverContext = Mutex(
            try Self.loadServer(
                directory: directory, node: node, requireClientCertificates: requireClientCertificates))
        self.node = node
    }

    private let node: String

    /// The context for a server-side handshake now.
    public var server: NIOSSLContext { serverContext.withLock { $0 } }

    /// Reads the files again; on failure the credentials in use stay.
    public func reload() throws(AgentError) {
        let fresh = try Self.loadServer(
            directory: directory, node: node, requireClientCertificates: requireClientCertificates)
        serverContext.withLock { $0 = fresh }
    }

    static func loadServer(
        directory: String, node: String, requireClientCertificates: Bool
    ) throws(AgentError) -> NIOSSLContext {
        let (certificate, key, authority) =
            ("\(directory)/server-cert.pem", "\(directory)/server-key.pem", "\(directory)/ca-cert.pem")
        do {
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            configuration.minimumTLSVersion = .tlsv12
            if requireClientCertificates {
                configuration.certificateVerification = .noHostnameVerification
                configuration.trustRoots = .file(authority)
            }
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw .unsupported(
                "cannot load the TLS credentials of \(node) from \(directory) (\(error)); "
                    + "`tandem cert issue \(node)` writes them, and the folder is copied to the node")
        }
    }
}
