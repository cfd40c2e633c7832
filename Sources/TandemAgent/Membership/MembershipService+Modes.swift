import TandemCore
import TandemStorage

/// Administrator modes: `NodeLoop` decides them, the shell stores them in `NODE.modes`.
extension MembershipService {
    public typealias ModeCommand = TandemCore.ModeCommand
    public typealias ModeRefusal = TandemCore.ModeRefusal

    public typealias ModeView = TandemCore.ModeView

    static func loadModes(path: String) throws(AgentError) -> ModeRecord {
        let bytes: [UInt8]?
        do {
            bytes = try AtomicFile.read(path: path)
        } catch {
            throw .unsupported("cannot read \(path): \(error)")
        }
        guard let bytes else { return ModeRecord() }
        guard let record = ModeRecord.decode(bytes) else {
            throw .unsupported(
                "the mode file \(path) is torn or altered; check it, then remove it to start in default mode")
        }
        return record
    }
}
