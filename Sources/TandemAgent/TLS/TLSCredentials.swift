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
    private let peerContexts: Mutex<(accepting: NIOSSLContext, dialing: NIOSSLContext)?>

    /// A file of pre-shared keys the NBD server uses instead of its certificate, if any.
    private let pskFile: String?

    /// Loads the credentials; the error names the file and how to make it.
    public init(
        directory: String, node: String, requireClientCertificates: Bool, pskFile: String? = nil,
        peerLink: Bool = false
    ) throws(AgentError) {
        self.directory = directory
        self.requireClientCertificates = requireClientCertificates
        self.pskFile = pskFile
        self.serverContext = Mutex(
            try Self.loadNBD(
                directory: directory, node: node, requireClientCertificates: requireClientCertificates,
                pskFile: pskFile))
        self.peerContexts = Mutex(peerLink ? try Self.loadPeer(directory: directory, node: node) : nil)
        self.node = node
    }

    private let node: String

    /// The context for a server-side handshake now.
    public var server: NIOSSLContext { serverContext.withLock { $0 } }

    /// The contexts of the peer link: both ends present their node certificate and require the
    /// other's, signed by the cluster's authority (the name is checked after the handshake).
    var peer: (accepting: NIOSSLContext, dialing: NIOSSLContext)? { peerContexts.withLock { $0 } }

    /// Reads the files again; on failure the credentials in use stay.
    public func reload() throws(AgentError) {
        let fresh = try Self.loadNBD(
            directory: directory, node: node, requireClientCertificates: requireClientCertificates, pskFile: pskFile)
        let peer = self.peer == nil ? nil : try Self.loadPeer(directory: directory, node: node)
        serverContext.withLock { $0 = fresh }
        peerContexts.withLock { $0 = peer }
    }

    /// The NBD server's context: from the pre-shared keys if there are any, else the certificate.
    static func loadNBD(
        directory: String, node: String, requireClientCertificates: Bool, pskFile: String?
    ) throws(AgentError) -> NIOSSLContext {
        if let pskFile { return try loadPSK(file: pskFile) }
        return try loadServer(directory: directory, node: node, requireClientCertificates: requireClientCertificates)
    }

    /// The NBD server's context for pre-shared keys: TLS 1.2 (BoringSSL offers PSK only there)
    /// with ECDHE-PSK suites, which GnuTLS clients (libnbd, QEMU) offer too.
    static func loadPSK(file: String) throws(AgentError) -> NIOSSLContext {
        let keys = try PSKFile.read(path: file)
        var configuration = TLSConfiguration.makePreSharedKeyConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = .tlsv12
        configuration.cipherSuites = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA:ECDHE-PSK-AES128-CBC-SHA"
        configuration.pskHint = "tandem"
        configuration.pskServerProvider = { context in
            guard let key = keys[context.clientIdentity], key.count <= context.maxPSKLength else {
                throw AgentError.unsupported("unknown PSK identity")
            }
            var secure = NIOSSLSecureBytes()
            secure.append(contentsOf: key)
            return PSKServerIdentityResponse(key: secure)
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw .unsupported("cannot make a TLS context from the keys in \(file): \(error)")
        }
    }

    static func loadPeer(
        directory: String, node: String
    ) throws(AgentError) -> (accepting: NIOSSLContext, dialing: NIOSSLContext) {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile("\(directory)/server-cert.pem").map {
                NIOSSLCertificateSource.certificate($0)
            }
            let key = NIOSSLPrivateKeySource.privateKey(
                try NIOSSLPrivateKey(file: "\(directory)/server-key.pem", format: .pem))
            var accepting = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
            var dialing = TLSConfiguration.makeClientConfiguration()
            dialing.certificateChain = chain
            dialing.privateKey = key
            accepting.minimumTLSVersion = .tlsv13
            dialing.minimumTLSVersion = .tlsv13
            accepting.certificateVerification = .noHostnameVerification
            dialing.certificateVerification = .noHostnameVerification
            accepting.trustRoots = .file("\(directory)/ca-cert.pem")
            dialing.trustRoots = .file("\(directory)/ca-cert.pem")
            return (try NIOSSLContext(configuration: accepting), try NIOSSLContext(configuration: dialing))
        } catch {
            throw .unsupported(
                "cannot load the peer link's TLS credentials of \(node) from \(directory) (\(error)); "
                    + "`tandem cert issue \(node)` writes them, and the folder is copied to the node")
        }
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
