/// Role of a node for one volume.
public enum VolumeRole: String, Sendable, Equatable, Codable {
    case primary
    case secondary

    /// Its code in the peer protocol.
    public var wireCode: UInt8 { self == .primary ? 1 : 0 }

    /// Decodes a peer's code; `nil` for a code no version of Tandem sends.
    public init?(wireCode: UInt8) {
        switch wireCode {
        case 0: self = .secondary
        case 1: self = .primary
        default: return nil
        }
    }
}

/// Connection state of a volume, as administrators know it.
public enum ConnectionState: String, Sendable, Equatable, Codable {
    case standAlone
    case connecting
    case connected
    case syncSource
    case syncTarget
}

/// Disk state of one node's copy.
public enum DiskState: String, Sendable, Equatable, Codable {
    case upToDate
    case inconsistent
    case outdated

    /// Its code in the peer protocol.
    public var wireCode: UInt8 {
        switch self {
        case .upToDate: return 0
        case .inconsistent: return 1
        case .outdated: return 2
        }
    }

    /// Decodes a peer's code; `nil` for a code no version of Tandem sends.
    public init?(wireCode: UInt8) {
        switch wireCode {
        case 0: self = .upToDate
        case 1: self = .inconsistent
        case 2: self = .outdated
        default: return nil
        }
    }
}
