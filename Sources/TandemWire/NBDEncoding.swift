import NIOCore

extension ByteBuffer {
    // MARK: Server to client

    /// Writes the fixed-newstyle greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
    public mutating func writeNBDGreeting(flags: NBD.HandshakeFlags) {
        writeMultipleIntegers(NBD.initialMagic, NBD.optionMagic, flags.rawValue)
    }

    /// Writes an option reply whose data is `payload` (may be empty).
    public mutating func writeNBDOptionReply(option: UInt32, type: NBD.OptionReplyType, payload: ByteBuffer) {
        writeMultipleIntegers(NBD.optionReplyMagic, option, type.rawValue, UInt32(payload.readableBytes))
        writeImmutableBuffer(payload)
    }

    /// Writes an error reply to an option with a human-readable message.
    public mutating func writeNBDOptionError(option: UInt32, type: NBD.OptionReplyType, message: String) {
        let payload = ByteBuffer(string: String(message.utf8.prefix(NBD.maximumStringBytes))!)
        writeNBDOptionReply(option: option, type: type, payload: payload)
    }

    /// Writes `NBD_REP_SERVER` naming one export, for `NBD_OPT_LIST`.
    public mutating func writeNBDServerListEntry(option: UInt32, exportName: String) {
        var payload = ByteBuffer()
        payload.writeInteger(UInt32(exportName.utf8.count))
        payload.writeString(exportName)
        writeNBDOptionReply(option: option, type: .server, payload: payload)
    }

    /// Writes `NBD_REP_INFO` with `NBD_INFO_EXPORT`: size and transmission flags.
    public mutating func writeNBDInfoExport(option: UInt32, sizeBytes: UInt64, flags: NBD.TransmissionFlags) {
        var payload = ByteBuffer()
        payload.writeMultipleIntegers(NBD.InfoType.export.rawValue, sizeBytes, flags.rawValue)
        writeNBDOptionReply(option: option, type: .info, payload: payload)
    }

    /// Writes `NBD_REP_INFO` with `NBD_INFO_BLOCK_SIZE`.
    public mutating func writeNBDInfoBlockSize(option: UInt32, minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        var payload = ByteBuffer()
        payload.writeMultipleIntegers(NBD.InfoType.blockSize.rawValue, minimum, preferred, maximum)
        writeNBDOptionReply(option: option, type: .info, payload: payload)
    }

    /// Writes `NBD_REP_INFO` with `NBD_INFO_NAME`.
    public mutating func writeNBDInfoName(option: UInt32, exportName: String) {
        var payload = ByteBuffer()
        payload.writeInteger(NBD.InfoType.name.rawValue)
        payload.writeString(exportName)
        writeNBDOptionReply(option: option, type: .info, payload: payload)
    }

    /// Writes the reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless the client
    /// negotiated `NBD_FLAG_C_NO_ZEROES`.
    public mutating func writeNBDExportNameReply(sizeBytes: UInt64, flags: NBD.TransmissionFlags, padWithZeroes: Bool) {
        writeMultipleIntegers(sizeBytes, flags.rawValue)
        if padWithZeroes { writeRepeatingByte(0, count: 124) }
    }

    /// Writes a simple reply header; a successful read's data follows it.
    public mutating func writeNBDSimpleReply(error: NBD.ErrorCode, cookie: UInt64) {
        writeMultipleIntegers(NBD.simpleReplyMagic, error.rawValue, cookie)
    }

    // MARK: Client to server

    /// Writes an option request (clients and tests).
    public mutating func writeNBDOption(type: UInt32, data: ByteBuffer) {
        writeMultipleIntegers(NBD.optionMagic, type, UInt32(data.readableBytes))
        writeImmutableBuffer(data)
    }

    /// Writes the data of `NBD_OPT_INFO` or `NBD_OPT_GO`.
    public mutating func writeNBDExportInfoRequest(_ request: NBDExportInfoRequest) {
        writeInteger(UInt32(request.exportName.utf8.count))
        writeString(request.exportName)
        writeInteger(UInt16(request.requestedInfo.count))
        for info in request.requestedInfo { writeInteger(info) }
    }

    /// Writes a transmission request and, for writes, its payload (clients and tests).
    public mutating func writeNBDRequest(_ request: NBDRequest) {
        writeMultipleIntegers(
            NBD.requestMagic, request.flags.rawValue, request.rawType, request.cookie, request.offset, request.length)
        for piece in request.payload?.pieces ?? [] { writeImmutableBuffer(piece) }
    }
}
