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
}
