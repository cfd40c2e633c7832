import NIOCore
import NIOSSL
import X509

/// Checks that a peer link's TLS certificate belongs to the peer node: its subject alternative
/// names hold the node's name, as `tandem cert issue NODE` writes it. The chain itself was
/// verified against the cluster's authority in the handshake.
enum PeerIdentity {
    /// The certificate the other end presented on `channel`: nil when it presented none; throws
    /// when the channel has no TLS session or the certificate cannot be read.
    static func presented(on channel: any Channel) throws -> Certificate? {
        guard let presented = try channel.pipeline.syncOperations.nioSSL_peerCertificate() else { return nil }
        return try Certificate(derEncoded: try presented.toDERBytes())
    }

    /// The common name of the certificate the other end presented on `channel`, if any.
    static func commonName(of channel: any Channel) -> String? {
        guard let certificate = try? presented(on: channel) else { return nil }
        for name in certificate.subject {
            for attribute in name where attribute.type == .RDNAttributeType.commonName {
                return String(attribute.value)
            }
        }
        return nil
    }

    /// Why the certificate on `channel` does not name `peer`, or nil when it does.
    static func refusal(of channel: any Channel, peer: String) -> String? {
        do {
            guard let certificate = try presented(on: channel) else { return "the peer presented no certificate" }
            let names = try certificate.extensions.subjectAlternativeNames.map(Array.init) ?? []
            guard names.contains(.dnsName(peer)) else {
                return "the peer's certificate does not name node \"\(peer)\" (subject \(certificate.subject))"
            }
            return nil
        } catch {
            return "the peer's TLS certificate cannot be read: \(error)"
        }
    }
}
