import TandemWire

/// What the server does with one transmission request: a pure decision, tested on its own.
enum NBDRequestCheck {
    /// The outcome for a request.
    enum Verdict: Equatable {
        /// Reply with this error and do nothing else.
        case reject(NBD.ErrorCode)
        /// Finish what is in flight, then close.
        case disconnect
        case read
        /// Write the payload; `durable` means reply only after it is on stable storage (FUA).
        case write(durable: Bool)
        case writeZeroes(durable: Bool, mayDeallocate: Bool)
        case trim(durable: Bool)
        case flush
    }

    /// Checks a request against the export's size, its read-only flag and the request-size limit.
    ///
    /// Out-of-range reads and trims get `EINVAL`, out-of-range writes `ENOSPC` (as `doc/proto.md`
    /// asks), changes to a read-only export `EPERM`, commands this server does not advertise `EINVAL`.
    static func verdict(for request: NBDRequest, export: NBDExport, maximumRequestBytes: Int) -> Verdict {
        guard let type = request.type else { return .reject(.invalid) }
        // A flag the command does not take is refused as the protocol says, never ignored: a
        // client that asked for something (DF, REQ_ONE, a flag from a later version) must not
        // believe it got it.
        guard allowedFlags(type).isSuperset(of: request.flags) else { return .reject(.invalid) }
        let end = request.offset.addingReportingOverflow(UInt64(request.length))
        let inRange = !end.overflow && end.partialValue <= export.sizeBytes
        let durable = request.flags.contains(.fua)
        switch type {
        case .disconnect:
            return .disconnect
        case .flush:
            return .flush
        case .read:
            guard Int(request.length) <= maximumRequestBytes else { return .reject(.invalid) }
            return inRange ? .read : .reject(.invalid)
        case .write:
            if export.readOnly { return .reject(.notPermitted) }
            return inRange ? .write(durable: durable) : .reject(.noSpace)
        case .writeZeroes:
            if export.readOnly { return .reject(.notPermitted) }
            if request.flags.contains(.fastZero) { return .reject(.notSupported) }
            guard inRange else { return .reject(.noSpace) }
            return .writeZeroes(durable: durable, mayDeallocate: !request.flags.contains(.noHole))
        case .trim:
            if export.readOnly { return .reject(.notPermitted) }
            return inRange ? .trim(durable: durable) : .reject(.invalid)
        case .cache, .blockStatus, .resize:
            return .reject(.invalid)
        }
    }

    /// The flags each command may carry here: FUA on the commands that change data (and on FLUSH,
    /// where it means nothing more), NO_HOLE and FAST_ZERO on WRITE_ZEROES. DF and REQ_ONE belong
    /// to structured replies and block status, which this server does not offer.
    static func allowedFlags(_ type: NBD.CommandType) -> NBD.CommandFlags {
        switch type {
        case .write, .trim, .flush: return .fua
        case .writeZeroes: return [.fua, .noHole, .fastZero]
        case .read, .disconnect, .cache, .blockStatus, .resize: return []
        }
    }
}
