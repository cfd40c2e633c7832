import Foundation
import Synchronization
import TandemTestSupport
import Testing

@Suite(.serialized) struct ReplicationProcessTests {
    @Test(arguments: ["A", "B", "C"])
    func writesThroughNBD_leaveBothBackingFilesIdentical(replication: String) throws {
        let cluster = try TwoNodeCluster(protocol: replication, size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        // Two connections at once over the same bytes: small writes travel with their frames,
        // writes of 64 KiB and more are sent from the primary's file, so overlapping writes from
        // both must still end identical on both copies.
        try Tools.check(
            "fio",
            [
                "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--size=64M", "--randrepeat=0",
                "--name=small", "--bs=4k", "--iodepth=16", "--io_size=16M",
                "--name=large", "--bsrange=64k-1m", "--iodepth=8", "--io_size=48M",
            ])
        try Tools.check(
            "qemu-io",
            [
                "-f", "raw", "-c", "write -f -P 0x5c 1M 256k", "-c", "write -z 2M 64k", "-c", "flush", cluster.uri("a"),
            ])
        try cluster.waitFor("identical copies under protocol \(replication)", seconds: 30) { try cluster.identical() }
        let refused = try Tools.run("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4k", cluster.uri("b")])
        #expect(refused.status != 0, "the secondary must refuse client writes")
        #expect(try cluster.stopBothAndCompare())
    }

    /// A cluster whose peer link runs over mutual TLS, with certificates from `tandem cert issue`;
    /// `swapped` gives node b node a's certificate.
    private func tlsCluster(swapped: Bool = false) throws -> (TwoNodeCluster, TemporaryDirectory) {
        let tls = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "64MiB", clusterExtra: "peer-tls = \"on\"\ntls-dir = \"\(tls.path)\"")
        let tandem = try Tools.tandemBinary()
        try Tools.check(
            tandem,
            [
                "init", "--output", "\(tls.path)/unused.toml", "--secret", "\(tls.path)/unused.secret", "--tls-dir",
                tls.path,
            ])
        for node in ["a", "b"] { try Tools.check(tandem, ["cert", "issue", node, "-c", cluster.config]) }
        if swapped {
            for file in ["server-cert.pem", "server-key.pem"] {
                try FileManager.default.removeItem(atPath: "\(tls.path)/b/\(file)")
                try FileManager.default.copyItem(atPath: "\(tls.path)/a/\(file)", toPath: "\(tls.path)/b/\(file)")
            }
        }
        return (cluster, tls)
    }

    @Test func peerLinkOverMutualTLS_replicatesToIdenticalCopies() throws {
        let (cluster, tls) = try tlsCluster()
        try cluster.startInSyncWithPrimaryA()
        try Tools.check(
            "fio",
            [
                "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--size=64M", "--randrepeat=0",
                "--name=small", "--bs=4k", "--iodepth=16", "--io_size=8M",
                "--name=large", "--bsrange=64k-1m", "--iodepth=8", "--io_size=32M",
            ])
        try cluster.waitFor("identical copies over TLS", seconds: 30) { try cluster.identical() }
        #expect(cluster.log("a").contains("over TLS"), "\(cluster.log("a").suffix(2000))")
        #expect(try cluster.stopBothAndCompare())
        _ = tls
    }

    @Test func peerLinkOverTLS_refusesACertificateThatNamesAnotherNode() throws {
        let (cluster, tls) = try tlsCluster(swapped: true)
        try cluster.start("a")
        try cluster.start("b")
        try cluster.waitFor("a refusing b's certificate", seconds: 30) {
            (cluster.log("a") + cluster.log("b")).contains("does not name node")
        }
        // Node a never takes a link from the node that shows a's own certificate.
        #expect(!cluster.log("a").contains("peer link to b established"), "\(cluster.log("a").suffix(2000))")
        _ = tls
    }

    /// Finding 9: an idle replication link is heard through its keep-alives, so `status` does not
    /// show it silent for as long as no write crossed it.
    @Test func idleReplicationLink_isHeardThroughItsKeepAlives() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.startInSyncWithPrimaryA()
        sleep(3)
        let ages = try cluster.cluster("a").peer.links.map { ($0.name, $0.lastHeardSecondsAgo ?? -1) }
        let replication = try #require(ages.first { $0.0.contains("replication") }, "links: \(ages)")
        #expect(replication.1 >= 0 && replication.1 < 1.5, "links: \(ages)")
    }

    /// Finding 9, on the HTTP control socket: bytes that are not HTTP close that one connection, a
    /// connection that sends nothing is closed after the idle timeout, a caller that is neither
    /// root nor the state directory's owner is refused by its peer credentials, and the agent
    /// answers everyone else throughout.
    @Test func controlSocket_refusesGarbage_idleConnections_andOtherUsers() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.startInSyncWithPrimaryA()
        let garbage = try cluster.controlConnection("a", seconds: 15)
        defer { close(garbage) }
        _ = Array("status\nstandby\n".utf8).withUnsafeBytes { send(garbage, $0.baseAddress, $0.count, 0) }
        let answer = String(decoding: TwoNodeCluster.readToEnd(garbage), as: UTF8.self)
        #expect(answer.isEmpty || answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
        #expect(!cluster.log("a").contains("standby by administrator"), "a line ran: \(cluster.log("a"))")
        #expect(try cluster.ask("a").node == "a", "the agent answers after a malformed request")

        let idle = try cluster.controlConnection("a", seconds: 20)
        defer { close(idle) }
        let started = Date()
        #expect(TwoNodeCluster.readToEnd(idle).isEmpty)
        let waited = Date().timeIntervalSince(started)
        #expect(waited > 8 && waited < 14, "closed after \(waited) s")

        // The socket file keeps strangers out; opened to everyone, the peer credentials still do.
        let socket = cluster.controlSocket("a")
        var info = stat()
        #expect(stat(socket, &info) == 0 && info.st_mode & 0o777 == 0o600, "mode \(String(info.st_mode, radix: 8))")
        #expect(chmod(socket, 0o666) == 0)
        for folder in [cluster.directory.path, "\(cluster.directory.path)/a"] { chmod(folder, 0o711) }
        let stranger = try Tools.run(
            "/usr/bin/setpriv",
            [
                "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sS", "--unix-socket", socket,
                "-w", "\n%{http_code}", "http://localhost/v1/status",
            ])
        #expect(stranger.standardOutput.hasSuffix("403"), "\(stranger.combined)")
        #expect(stranger.standardOutput.contains("may not administer this node"), "\(stranger.combined)")
        let root = try Tools.run(
            "/usr/bin/curl", ["-sS", "--unix-socket", socket, "-w", "\n%{http_code}", "http://localhost/v1/status"])
        #expect(root.standardOutput.hasSuffix("200"), "\(root.combined)")
    }

    @Test func peerLink_takesTheConfiguredCongestionControl_oneTheKernelRefusesLeavesItsDefault() throws {
        let systemDefault = try String(contentsOfFile: "/proc/sys/net/ipv4/tcp_congestion_control", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let available = try String(
            contentsOfFile: "/proc/sys/net/ipv4/tcp_available_congestion_control", encoding: .utf8
        ).split(whereSeparator: \.isWhitespace).map(String.init)
        // One other than the default, so the check below cannot pass by the default alone.
        guard let other = available.first(where: { $0 != systemDefault }) else {
            Issue.record("this kernel offers no TCP congestion control but \(systemDefault); the test needs two")
            return
        }
        let configured = try TwoNodeCluster(
            protocol: "C", size: "16MiB", clusterExtra: "peer-congestion-control = \"\(other)\"")
        try configured.startInSyncWithPrimaryA()
        #expect(try configured.peerLinkCongestionControls() == [other, other])

        let refused = try TwoNodeCluster(
            protocol: "C", size: "16MiB", clusterExtra: "peer-congestion-control = \"no_such_control\"")
        try refused.startInSyncWithPrimaryA()
        #expect(try refused.peerLinkCongestionControls() == [systemDefault, systemDefault])
        for node in ["a", "b"] {
            #expect(
                refused.log(node).contains("refused TCP congestion control \"no_such_control\""),
                "\(node) logged: \(refused.log(node))")
        }
        // The link works on the default.
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x3d 0 1M", refused.uri("a")])
        #expect(try refused.stopBothAndCompare())
    }

    /// Any client could send these: a write, write-zeroes or trim of length 0 was counted in the
    /// activity log when it began and never when it ended, so the next clean stop failed the log's
    /// precondition (SIGILL) and the node restarted as after a crash.
    @Test func zeroLengthWriteZeroesAndTrim_leaveTheActivityLogEmpty_andTheNodeStopsCleanly() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.startInSyncWithPrimaryA()
        let client = try NBDTestClient(port: cluster.nbdPorts["a"]!)
        try client.greet()
        _ = try client.go(export: "vol0")
        #expect(try client.write([], at: 4096) == 0)
        #expect(try client.command(.writeZeroes, offset: 8192, length: 0) == 0)
        #expect(try client.command(.trim, offset: 12288, length: 0) == 0)
        #expect(try client.write([UInt8](repeating: 7, count: 4096), at: 0, fua: true) == 0)
        cluster.stop("a")
        #expect(cluster.exitStatus("a") == 0, "a clean stop; the log ends: \(cluster.log("a").suffix(1500))")
        cluster.stop("b")
    }

    @Test func secondaryStopped_onePercentWritten_resyncMovesAtMostTwiceTheDirtiedBytes() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "1GiB")
        try cluster.startInSyncWithPrimaryA(seconds: 300)
        let fullSeconds = try cluster.status("a").lastResync?.seconds ?? 0
        cluster.stop("b")
        try cluster.waitFor("a to notice b is gone") { cluster.view("a")?.connection == .connecting }
        // 1% of the volume, rounded up to whole 64 KiB writes (fio writes whole blocks).
        let dirtied = ((1 << 30) / 100 + 65535) / 65536 * 65536
        try Tools.check(
            "fio",
            [
                "--name=onepercent", "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--bs=64k",
                "--iodepth=8", "--size=1G", "--io_size=\(dirtied)", "--randrepeat=0",
            ])
        let marked = Int(cluster.view("a")?.outOfSyncBytes ?? 0)
        #expect(marked > 0 && marked <= dirtied, "marked \(marked) bytes for \(dirtied) written")
        let receivedBefore = Int(cluster.view("b")?.resyncedBytesTotal ?? 0)
        #expect(receivedBefore == 0, "a restarted agent counts from zero")
        // As during the full sync, no client has written for the last half second: the printed
        // times then compare the same thing (a resync right after a client's write keeps to
        // resync-min-rate).
        usleep(1_000_000)
        try cluster.start("b")
        try cluster.waitInSync()
        let moved = Int(cluster.view("b")?.resyncedBytesTotal ?? 0)
        let partialSeconds = try cluster.status("a").lastResync?.seconds ?? 0
        print(
            "resync after 1% written: moved \(moved) bytes for \(dirtied) dirtied; full sync \(fullSeconds) s, partial \(partialSeconds) s"
        )
        #expect(moved > 0 && moved <= 2 * dirtied, "moved \(moved) bytes for \(dirtied) dirtied")
        #expect(try cluster.stopBothAndCompare())
    }

    /// With 16 extents the activity log reaches 64 MiB of the 256: most writes wait for a log write,
    /// and a crash then finds whatever the group commits had made durable.
    @Test(arguments: [nil, 16])
    func primaryKilledMidStream_afterRestartAndResync_copiesAreIdentical(activityLogExtents: Int?) throws {
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "256MiB",
            volumeExtra: activityLogExtents.map { "activity-log-extents = \($0)" } ?? "")
        try cluster.startInSyncWithPrimaryA()
        let stream = Process()
        stream.executableURL = URL(fileURLWithPath: try Tools.path(of: "fio"))
        stream.arguments = [
            "--name=stream", "--ioengine=nbd", "--uri=\(cluster.uri("a"))", "--rw=randwrite", "--bs=16k",
            "--iodepth=32", "--size=256M", "--time_based", "--runtime=30",
        ]
        stream.standardOutput = FileHandle.nullDevice
        stream.standardError = FileHandle.nullDevice
        try Tools.launch(stream)
        try cluster.waitFor("writes to be flowing") { (cluster.view("a")?.epoch ?? 0) > 0 }
        usleep(1_500_000)
        let waits = cluster.view("a").map { Int($0.activityLogWaits) } ?? -1
        cluster.crash("a")
        Tools.wait(stream)
        if activityLogExtents != nil {
            #expect(waits > 1000, "writes beyond the log's reach should have waited for log writes, counted \(waits)")
        }
        try cluster.start("a")
        try cluster.waitInSync()
        #expect(cluster.log("a").contains("marked for resync"), "the activity log must be replayed after a crash")
        #expect(try cluster.stopBothAndCompare())
    }

    @Test func splitBrain_isReportedWithDivergedBytes_andResolveDiscardLocalMakesCopiesIdentical() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        cluster.stop("b")
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0xaa 0 1M", cluster.uri("a")])
        cluster.stop("a")
        try cluster.start("b")
        try cluster.volume("b", ["primary", "vol0"])
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0xbb 8M 2M", cluster.uri("b")])
        try cluster.start("a")
        try cluster.waitFor("split brain on both nodes") {
            try cluster.status("a").splitBrain != nil && cluster.status("b").splitBrain != nil
        }
        let report = try cluster.status("a").splitBrain
        #expect(report?.localChangedBytes == 1 << 20)
        #expect(report?.peerChangedBytes == 2 << 20)
        let table = try cluster.volume("a", ["status"]).standardOutput
        #expect(table.contains("SPLIT BRAIN"), "\(table)")
        #expect(try cluster.volume("a", ["resolve", "vol0"]).status != 0, "resolve needs --discard-local")
        try cluster.volume("a", ["resolve", "vol0", "--discard-local"])
        try cluster.waitInSync()
        // The journal keeps what was found and what was discarded, in that order.
        let journal = try cluster.events("a")
        let found = journal.range(of: "vol0: split brain: this node changed 1048576 bytes, the peer 2097152 bytes")
        let resolved = journal.range(
            of: "split brain on vol0 resolved by discarding this node's changes: 1048576 bytes changed here, "
                + "2097152 on the peer")
        #expect(found != nil && resolved != nil, "\(journal)")
        if let found, let resolved { #expect(found.lowerBound < resolved.lowerBound, "\(journal)") }
        #expect(try cluster.events("b").contains("vol0: resync as source"), "the survivor's journal shows its resync")
        #expect(try cluster.stopBothAndCompare())
    }

    @Test func onlineVerify_findsTheBlockCorruptedBehindTandemsBack_andResyncRepairsIt() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB")
        try cluster.startInSyncWithPrimaryA()
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 0 16M", cluster.uri("a")])
        try cluster.waitFor("identical copies") { try cluster.identical() }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: cluster.backing("b")))
        try handle.seek(toOffset: 5 * 65536 + 4096)
        try handle.write(contentsOf: Data(repeating: 0xEE, count: 4096))
        try handle.close()
        #expect(try !cluster.identical())
        try cluster.volume("a", ["verify", "start", "vol0"])
        try cluster.waitFor("the verify to finish") {
            (try cluster.status("a")).lastVerify?.finished == true
        }
        let result = try cluster.status("a").lastVerify
        #expect(result?.outOfSyncOffsets == [5 * 65536], "exactly the corrupted 64 KiB region")
        try cluster.waitInSync()
        let finished =
            "vol0: online verify finished: 1024 of 1024 regions compared, 1 out of sync (offset+length: 327680+65536)"
        #expect(cluster.log("a").contains(finished))
        #expect(try cluster.events("a").contains(finished), "the verify's result belongs in the event journal too")
        #expect(try cluster.stopBothAndCompare())
    }

    /// The secondary's file system fills up during the initial full sync. The resync waits (a
    /// second, then two, four... up to a minute) with the reason in the status and the journal,
    /// rather than sending the refused blocks round and round; once there is room it goes on.
    @Test func aSecondaryWhoseDiskIsFull_makesTheResyncWaitWithTheReason_andItEndsOnceThereIsRoom() throws {
        guard getuid() == 0 else {
            throw Tools.Failure(description: "this test needs root: it mounts a tmpfs in a mount namespace")
        }
        let disks = TemporaryDirectory()
        let cluster = try TwoNodeCluster(
            protocol: "C", size: "32MiB", backing: "\(disks.path)/{node}-disk/vol0.img")
        for node in ["a", "b"] {
            try FileManager.default.createDirectory(
                atPath: "\(disks.path)/\(node)-disk", withIntermediateDirectories: true)
        }
        try cluster.start("a")
        try cluster.start("b", tmpfs: (directory: "\(disks.path)/b-disk", size: "8m"))
        try cluster.volume("a", ["primary", "vol0"])
        var reason = ""
        try cluster.waitFor("the resync to wait") {
            reason = (try cluster.status("a")).resync?.stalled ?? ""
            return !reason.isEmpty
        }
        #expect(reason.hasPrefix("the peer could not write the block at offset "), "\(reason)")
        #expect(
            cluster.log("b").contains(
                "cannot write the peer's resync data: pwrite \(cluster.backing("b")): No space left on device"),
            "\(cluster.log("b"))")
        // b knows its copy lacks the blocks it could not write.
        #expect((cluster.view("b")?.outOfSyncBytes ?? 0) > 0, "b counts itself in sync")
        // Waiting, not spinning: over three seconds the two agents use a fraction of a core.
        let pids = try ["a", "b"].map { node in
            try #require(cluster.pid(node), "\(node)'s agent is not running")
        }
        let before = try pids.map(cpuTicks).reduce(0, +)
        usleep(3_000_000)
        let spent = try pids.map(cpuTicks).reduce(0, +) - before
        #expect(spent < Int(sysconf(Int32(_SC_CLK_TCK))), "the agents spent \(spent) clock ticks in 3 s")
        let journal = try cluster.events("a")
        #expect(journal.contains("vol0: resync waits: the peer could not write the block at offset "), "\(journal)")
        // Room again (the tmpfs grown from inside b's mount namespace): the next try goes on.
        try Tools.check(
            "nsenter", ["-t", "\(pids[1])", "-m", "mount", "-o", "remount,size=64m", "\(disks.path)/b-disk"])
        try cluster.waitInSync()
        #expect(try cluster.events("a").contains("vol0: resync goes on: the peer writes its blocks again"))
        #expect(cluster.log("b").contains("vol0: writes of the peer's data go through again"))
        let copyOfB = "/proc/\(pids[1])/root\(cluster.backing("b"))"
        #expect(FileManager.default.contentsEqual(atPath: cluster.backing("a"), andPath: copyOfB))
    }

    /// User and system time of a process so far, in clock ticks (from /proc/PID/stat).
    private func cpuTicks(_ pid: Int32) throws -> Int {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // The fields after the command's closing parenthesis; utime and stime are the 14th and
        // 15th of the line, the 12th and 13th after it.
        guard let close = stat.lastIndex(of: ")") else { throw Tools.Failure(description: "unreadable \(stat)") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else {
            throw Tools.Failure(description: "unreadable /proc/\(pid)/stat: \(stat)")
        }
        return user + system
    }

    @Test func aSecondWitnessOnTheSameRecord_refusesToStart() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB", witness: true)
        try cluster.startWitness()
        defer { cluster.stopWitness() }
        let second = try Tools.run(
            try Tools.tandemBinary(), ["witness", "--config", cluster.config], timeout: .seconds(30))
        #expect(second.status == 1)
        #expect(
            second.standardError.contains("another witness is running (process ")
                && second.standardError.contains("/witness/witness.lock)"), "\(second.standardError)")
    }

    /// The node's port taken over TCP (the peer link's listener) or over UDP by a socket that allows
    /// sharing it, as another agent's did (the heartbeats: sharing would split them between the
    /// two). With the peer link and membership running, the failure must still end the agent.
    @Test(arguments: [
        (Int32(SOCK_STREAM.rawValue), "cannot listen for the peer link on 127.0.0.1:"),
        (Int32(SOCK_DGRAM.rawValue), "cannot listen for membership datagrams on UDP 127.0.0.1:"),
    ])
    func anAgentWhosePortIsTaken_exitsNamingIt(type: Int32, said: String) throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        let port = cluster.peerPorts["a"]!
        let stream = type == Int32(SOCK_STREAM.rawValue)
        guard let taken = boundLoopbackSocket(port: port, type: type, reuseAddress: !stream),
            !stream || listen(taken, 1) == 0
        else { throw Tools.Failure(description: "cannot take 127.0.0.1:\(port)") }
        defer { close(taken) }
        let output = try Tools.run(
            try Tools.tandemBinary(), ["agent", "--config", cluster.config, "--node", "a"], timeout: .seconds(30))
        #expect(output.status == 1)
        #expect(output.standardError.contains("\(said)\(port): "), "\(output.standardError)")
    }

    @Test func wrongSharedSecret_isRefusedWithTheReason_andNothingReplicates() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "16MiB")
        try cluster.start("a")
        // b reads another secret: each side must refuse the other's proof.
        try "ffffffffffffffffffffffffffffffff\n".write(
            toFile: "\(cluster.directory.path)/secret", atomically: true, encoding: .utf8)
        try cluster.start("b")
        try cluster.waitFor("the handshake to be refused") {
            (cluster.log("a") + cluster.log("b")).contains("failed authentication (wrong shared secret?)")
        }
        #expect(cluster.view("a")?.connection == .connecting)
        #expect(cluster.view("b")?.connection == .connecting)
        #expect(cluster.view("a") != nil && cluster.view("a")?.peerRole == nil)
    }
}
