import Foundation
import Testing

/// Clients nobody here wrote, against Tandem's NBD server.
@Suite struct InteropTests {
    @Test func qemuIO_writesPatternsAndReadsThemBack() async throws {
        try await withTestServer { server in
            let commands = [
                "write -P 0xab 0 1M", "write -f -P 0xcd 1M 64k", "write -z 2M 128k", "discard 4M 1M", "flush",
                "read -P 0xab 0 1M", "read -P 0xcd 1M 64k", "read -P 0 2M 128k", "read -P 0 8M 4k",
                "aio_write -P 0x11 16M 4k", "aio_write -P 0x22 17M 4k", "aio_flush",
                "read -P 0x11 16M 4k", "read -P 0x22 17M 4k",
            ]
            let arguments = ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [server.uri()]
            let output = try Tools.check("qemu-io", arguments)
            #expect(!output.combined.contains("Pattern verification failed"), "\(output.combined)")
            #expect(output.standardOutput.components(separatedBy: "read ").count - 1 == 6, "\(output.combined)")
            #expect(
                try Data(contentsOf: URL(fileURLWithPath: server.backing())).prefix(1 << 20)
                    == Data(repeating: 0xAB, count: 1 << 20))
        }
    }

    @Test func readsOfBytesNotInThePageCache_leaveTheLoop_andReturnTheFilesBytes() async throws {
        try await withTestServer { server in
            // Bytes written behind the server, made durable and dropped from the page cache: the
            // server must read them from the device (on its read pool), not from memory.
            let file = try FileHandle(forWritingTo: URL(fileURLWithPath: server.backing()))
            try file.write(contentsOf: Data(repeating: 0x5E, count: 4 << 20))
            try file.synchronize()
            #expect(posix_fadvise(file.fileDescriptor, 0, 0, Int32(POSIX_FADV_DONTNEED)) == 0)
            try file.close()
            let commands = [
                "read -P 0x5e 1M 4k",  // now cached
                "read -P 0x5e 0 4M",  // cold, cached and cold again in one request
                "aio_read -P 0x5e 0 64k", "aio_read -P 0x5e 2M 64k", "aio_read -P 0x5e 3M 4k", "aio_flush",
                "read -P 0 4M 4k",
            ]
            let output = try Tools.check("qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [server.uri()])
            #expect(!output.combined.contains("Pattern verification failed"), "\(output.combined)")
        }
    }

    @Test func qemuIO_mismatchIsDetected() async throws {
        try await withTestServer { server in
            let output = try Tools.run(
                "qemu-io", ["-f", "raw", "-c", "write -P 0x01 0 4k", "-c", "read -P 0x02 0 4k", server.uri()])
            #expect(output.combined.contains("Pattern verification failed"), "the check itself must be able to fail")
        }
    }

    @Test func qemuImgConvert_copiesInAndOutByteIdentical() async throws {
        try await withTestServer(sizeBytes: 16 << 20) { server in
            let source = "\(server.directory.path)/source.raw"
            let copy = "\(server.directory.path)/copy.raw"
            let original = try writeRandomFile(path: source, bytes: 16 << 20)
            try Tools.check("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, server.uri()])
            try Tools.check("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri(), copy])
            #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == original)
            #expect(try Data(contentsOf: URL(fileURLWithPath: server.backing())) == original)
            try Tools.check("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, server.uri()])
        }
    }

    @Test func nbdinfo_reportsSizeAndFlags() async throws {
        try await withTestServer(sizeBytes: 48 << 20) { server in
            let json = try Tools.check("nbdinfo", ["--json", server.uri()]).standardOutput
            let export = try exportInfo(json)
            #expect(export["export-size"] as? Int == 48 << 20)
            #expect(export["is_read_only"] as? Bool == false)
            for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"] {
                #expect(export[flag] as? Bool == true, "\(flag) in \(json)")
            }
            #expect(export["block_size_maximum"] as? Int == 32 << 20)
            let readOnly = try exportInfo(try Tools.check("nbdinfo", ["--json", server.uri("ro")]).standardOutput)
            #expect(readOnly["is_read_only"] as? Bool == true)
            #expect(readOnly["can_trim"] as? Bool == false)
            let list = try Tools.check("nbdinfo", ["--list", "--json", "nbd://127.0.0.1:\(server.port)"]).standardOutput
            #expect(list.contains("\"vol0\"") && list.contains("\"ro\""), "\(list)")
        }
    }

    @Test func nbdcopy_roundTripsARandomFile() async throws {
        try await withTestServer(sizeBytes: 32 << 20) { server in
            let source = "\(server.directory.path)/source.raw"
            let copy = "\(server.directory.path)/copy.raw"
            let original = try writeRandomFile(path: source, bytes: 32 << 20)
            try Tools.check("nbdcopy", [source, server.uri()])
            try Tools.check("nbdcopy", [server.uri(), copy])
            #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == original)
        }
    }

    @Test func nbdcopy_overUnixSocket() async throws {
        try await withTestServer(sizeBytes: 8 << 20) { server in
            let source = "\(server.directory.path)/source.raw"
            let copy = "\(server.directory.path)/copy.raw"
            let original = try writeRandomFile(path: source, bytes: 8 << 20)
            let uri = "nbd+unix:///vol0?socket=\(server.unixPath)"
            try Tools.check("nbdcopy", [source, uri])
            try Tools.check("nbdcopy", [uri, copy])
            #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == original)
        }
    }

    @Test(arguments: [("randwrite", "4k", "16"), ("write", "1M", "8"), ("randrw", "64k", "4")])
    func fio_verifyCRC32C_findsNoMismatch(pattern: String, blockSize: String, depth: String) async throws {
        try await withTestServer(sizeBytes: 64 << 20) { server in
            let output = try Tools.check(
                "fio",
                [
                    "--name=verify", "--ioengine=nbd", "--uri=\(server.uri())", "--rw=\(pattern)", "--bs=\(blockSize)",
                    "--iodepth=\(depth)", "--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                    "--verify_dump=0", "--verify_state_save=0", "--randrepeat=0",
                ])
            #expect(!output.combined.contains("verify: bad"), "\(output.combined)")
            #expect(output.combined.contains("err= 0"), "\(output.combined)")
        }
    }

    private func exportInfo(_ json: String) throws -> [String: Any] {
        let root = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        guard let exports = root?["exports"] as? [[String: Any]], let first = exports.first else {
            throw Tools.Failure(description: "nbdinfo printed no export: \(json)")
        }
        return first
    }
}
