import TandemCore

/// A volume's local half: its backing store and its metadata, opened and checked against the config.
public struct LocalVolume: Sendable {
    /// The volume's settings.
    public let configuration: Configuration.Volume
    /// The bytes.
    public let store: BackingStore
    /// The identity as read from (or first written to) the metadata file.
    public let metadata: VolumeMetadata
    /// Where the metadata lives.
    public let metadataPath: String

    /// Where the metadata file of `volume` lives when the config does not say: next to a backing
    /// file, or in the state directory for a block device.
    public static func defaultMetadataPath(for volume: Configuration.Volume, stateDirectory: String) -> String {
        if let path = volume.metadata { return path }
        if BackingStore.isBlockDevice(path: volume.backing) { return "\(stateDirectory)/\(volume.name).tandem-meta" }
        return volume.backing + ".tandem-meta"
    }

    /// Opens the volume, creating the backing file and metadata on first use.
    ///
    /// Refuses a metadata file that is corrupt or belongs to another volume or size, and a backing
    /// file that is missing while its metadata exists (the data would be silently replaced by zeroes).
    public static func open(
        _ volume: Configuration.Volume,
        stateDirectory: String,
        newGeneration: () -> UInt64,
        newVolumeID: () -> UInt128
    ) throws(LocalVolumeError) -> LocalVolume {
        let metadataPath = defaultMetadataPath(for: volume, stateDirectory: stateDirectory)
        let existing: VolumeMetadata?
        do {
            existing = try MetadataFile.load(path: metadataPath)
        } catch {
            throw .metadata(error)
        }
        let store: BackingStore
        do {
            store = try BackingStore.open(
                path: volume.backing, sizeBytes: volume.sizeBytes ?? existing?.sizeBytes,
                create: existing == nil, readOnly: volume.readOnly)
        } catch {
            throw .storage(error)
        }
        if let existing {
            guard existing.volumeName == volume.name else {
                throw .mismatch(
                    "metadata file \(metadataPath) belongs to volume \"\(existing.volumeName)\", not \"\(volume.name)\""
                )
            }
            guard existing.sizeBytes == store.sizeBytes else {
                throw .mismatch(
                    "metadata file \(metadataPath) records \(existing.sizeBytes) bytes, the volume is \(store.sizeBytes) bytes"
                )
            }
            return LocalVolume(configuration: volume, store: store, metadata: existing, metadataPath: metadataPath)
        }
        let metadata = VolumeMetadata(
            volumeName: volume.name, volumeID: newVolumeID(), sizeBytes: store.sizeBytes,
            generations: .init(current: newGeneration()))
        do {
            try MetadataFile.store(metadata, path: metadataPath)
        } catch {
            throw .metadata(error)
        }
        return LocalVolume(configuration: volume, store: store, metadata: metadata, metadataPath: metadataPath)
    }
}

/// Why a volume could not be opened.
public enum LocalVolumeError: Error, Sendable, CustomStringConvertible {
    case metadata(MetadataError)
    case storage(StorageError)
    case mismatch(String)

    /// A message for the administrator.
    public var description: String {
        switch self {
        case .metadata(let error): return error.description
        case .storage(let error): return error.description
        case .mismatch(let message): return message
        }
    }
}
