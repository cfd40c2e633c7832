import Crypto
import Foundation
import SwiftASN1
import TandemCore
import X509

/// The cluster's own certificate authority: it signs the node certificates the NBD server and the
/// peer link present, and the client certificates NBD clients may be asked for.
///
/// Files in the TLS folder (`[cluster] tls-dir`, `/etc/tandem/tls` by default):
///
/// - `ca-cert.pem`, `ca-key.pem`: the authority (the key is the owner's alone, and stays on the
///   machine that issues certificates);
/// - `NODE/ca-cert.pem`, `NODE/server-cert.pem`, `NODE/server-key.pem`: what node NODE needs,
///   copied to it as a folder;
/// - `clients/NAME/ca-cert.pem`, `client-cert.pem`, `client-key.pem`: a client's folder, in the
///   layout libnbd (`tls-certificates=`) and QEMU (`tls-creds-x509,dir=`) read.
///
/// Keys are ECDSA P-256. Node certificates name, as subject alternative names, the node's name and
/// every address it listens on or may hold (its address, heartbeat addresses, NBD listen
/// addresses and its groups' floating addresses): clients check the address they dialled against
/// them. Their key usage (digital signature, key encipherment), basic constraints (not an
/// authority) and extended key usage (server and client authentication) are what GnuTLS and
/// QEMU's checks ask of a server certificate.
public enum ClusterCA {
    /// Why a certificate could not be made.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// How long what `tandem init` and `tandem cert` make is valid.
    static let authorityLifetime: TimeInterval = 20 * 365 * 86_400
    static let certificateLifetime: TimeInterval = 5 * 365 * 86_400

    /// Creates the authority in `directory` unless one is there; returns whether it created one.
    @discardableResult
    public static func create(in directory: String, cluster: String) async throws -> Bool {
        let certificatePath = "\(directory)/ca-cert.pem"
        if FileManager.default.fileExists(atPath: certificatePath) { return false }
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Tandem cluster \(cluster)")
            CommonName("Tandem CA \(cluster)")
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey), notValidBefore: now - 3600,
            notValidAfter: now + authorityLifetime, issuer: name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: Certificate.PrivateKey(key))
        try write(key.pemRepresentation, to: "\(directory)/ca-key.pem", mode: 0o600)
        try write(try certificate.serializeAsPEM().pemString, to: certificatePath, mode: 0o644)
        return true
    }

    /// The addresses and names a node's certificate must cover.
    public static func subjectNames(of node: Configuration.Node, in configuration: Configuration) -> [String] {
        var names = [node.name, node.address] + node.heartbeat
        for listen in node.nbdListen {
            if case .tcp(let host, _) = listen, host != "0.0.0.0", host != "::" { names.append(host) }
        }
        for listen in node.apiListen where listen.host != "0.0.0.0" && listen.host != "::" {
            names.append(listen.host)
        }
        for group in configuration.groups(on: node.name) {
            for resource in group.resources where resource.type == .ip {
                if let address = resource.parameters["address"]?.split(separator: "/").first {
                    names.append(String(address))
                }
            }
        }
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }

    /// Issues a certificate signed by the authority in `directory`, for a node (`server-*.pem`) or
    /// a client (`client-*.pem`), and writes it with the authority's certificate to `output`.
    public static func issue(
        directory: String, commonName: String, subjectNames: [String], isServer: Bool, output: String
    ) async throws {
        let authorityKey: P256.Signing.PrivateKey
        let authority: Certificate
        do {
            authorityKey = try P256.Signing.PrivateKey(pemRepresentation: try read("\(directory)/ca-key.pem"))
            authority = try Certificate(pemEncoded: try read("\(directory)/ca-cert.pem"))
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(description: "the authority in \(directory) cannot be read: \(error)")
        }
        let key = P256.Signing.PrivateKey()
        let alternatives: [GeneralName] = subjectNames.map { name in
            if let bytes = addressBytes(name) { return .ipAddress(ASN1OctetString(contentBytes: bytes[...])) }
            return .dnsName(name)
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey), notValidBefore: now - 3600,
            notValidAfter: min(now + certificateLifetime, authority.notValidAfter), issuer: authority.subject,
            subject: try DistinguishedName { CommonName(commonName) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage(isServer ? [.serverAuth, .clientAuth] : [.clientAuth])
                if !alternatives.isEmpty { SubjectAlternativeNames(alternatives) }
            },
            issuerPrivateKey: Certificate.PrivateKey(authorityKey))
        let role = isServer ? "server" : "client"
        try write(try read("\(directory)/ca-cert.pem"), to: "\(output)/ca-cert.pem", mode: 0o644)
        try write(try certificate.serializeAsPEM().pemString, to: "\(output)/\(role)-cert.pem", mode: 0o644)
        try write(key.pemRepresentation, to: "\(output)/\(role)-key.pem", mode: 0o600)
    }

    /// The 4 or 16 bytes of an IP address written as text.
    static func addressBytes(_ text: String) -> [UInt8]? {
        guard IPAddressText.isAddress(text) else { return nil }
        if !text.contains(":") { return text.split(separator: ".").compactMap { UInt8($0) } }
        var storage = in6_addr()
        guard inet_pton(AF_INET6, text, &storage) == 1 else { return nil }
        return withUnsafeBytes(of: &storage) { Array($0) }
    }

    private static func read(_ path: String) throws -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw Failure(description: "cannot read \(path): \(error.localizedDescription)")
        }
    }

    /// Writes a file with `mode` from its creation (a key is never readable by others, not even
    /// for a moment), creating its folder (0755) if needed.
    private static func write(_ text: String, to path: String, mode: mode_t) throws {
        let folder = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        unlink(path)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard descriptor >= 0 else {
            throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        fchmod(descriptor, mode)
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ Glibc.write(descriptor, $0.baseAddress, $0.count) }) == bytes.count,
            fsync(descriptor) == 0
        else { throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}
