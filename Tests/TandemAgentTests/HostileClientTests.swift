import Foundation
import NIOCore
import TandemTestSupport
import TandemWire
import Testing

/// The largest resident set the primary's agent had while `body` ran, sampled every 20 ms.
private func peakResidentBytes(of pid: Int32, during seconds: Double, _ body: () throws -> Void) throws -> Int {
    var peak = try Tools.residentBytes(of: pid)
    try body()
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        peak = max(peak, try Tools.residentBytes(of: pid))
        usleep(20_000)
    }
    return peak
}

/// Raises this process's open-files soft limit (the agents inherit it) to at least `count`.
private func raiseOpenFilesLimit(to count: Int) throws {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    guard limit.rlim_max >= rlim_t(count) else {
        throw Tools.Failure(description: "the open-files hard limit is \(limit.rlim_max); this test needs \(count)")
    }
    if limit.rlim_cur < rlim_t(count) {
        limit.rlim_cur = limit.rlim_max
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            throw Tools.Failure(description: "setrlimit(RLIMIT_NOFILE): \(String(cString: strerror(errno)))")
        }
    }
}

/// An attacker on the network against a primary with a peer and a witness: memory stays bounded,
/// slots cannot be held, real clients are served throughout and nothing fails over.
@Suite(.serialized) struct HostileClientTests {
    static let rssLimit = 128 << 20

    @Test func hostileClients_boundedMemory_realClientsServed_noFailover() throws {
        try raiseOpenFilesLimit(to: 4096)
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB", witness: true)
        try cluster.startWitness()
        try cluster.start("a")
        try cluster.start("b")
        try cluster.waitFor("a primary") { cluster.primary() == "a" }
        try cluster.waitInSync()
        let pid = try #require(cluster.pid("a"))
        let port = cluster.nbdPorts["a"]!
        try Tools.check("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 0 4M", cluster.uri("a")])
        let idle = try Tools.residentBytes(of: pid)
        print("hostile: primary RSS at rest \(idle >> 20) MiB")

        // 1. One client pipelines 48 reads of 32 MiB (1.5 GiB of replies) and never reads them.
        let reader = try NBDTestClient(port: port)
        try reader.greet()
        try reader.go(export: "vol0")
        let reads = try peakResidentBytes(of: pid, during: 3) {
            var requests = ByteBuffer()
            for cookie in 0..<48 {
                requests.writeNBDRequest(
                    NBDRequest(flags: [], rawType: 0, cookie: UInt64(cookie), offset: 0, length: 32 << 20))
            }
            try reader.send(requests)
        }
        print("hostile: 48 pipelined 32 MiB reads not read: peak RSS \(reads >> 20) MiB")
        try Tools.check("qemu-io", ["-f", "raw", "-c", "read -P 0x3c 0 4M", cluster.uri("a")])

        // 2. Sixteen clients each send a 32 MiB write but its last byte.
        var writers: [NBDTestClient] = []
        let writes = try peakResidentBytes(of: pid, during: 3) {
            for _ in 0..<16 {
                let writer = try NBDTestClient(port: port)
                try writer.greet()
                try writer.go(export: "vol0")
                var header = ByteBuffer()
                header.writeMultipleIntegers(
                    NBD.requestMagic, UInt16(0), UInt16(1), UInt64(1), UInt64(0), UInt32(32 << 20))
                try writer.send(header)
                _ = writer.push([UInt8](repeating: 0x77, count: (32 << 20) - 1), within: .milliseconds(150))
                writers.append(writer)
            }
        }
        print("hostile: 16 half-sent 32 MiB writes: peak RSS \(writes >> 20) MiB")
        try Tools.check("qemu-io", ["-f", "raw", "-c", "read -P 0x3c 0 4M", cluster.uri("a")])
        let closing = try peakResidentBytes(of: pid, during: 2) { writers.removeAll() }
        print("hostile: the 16 half-sent writes closed: peak RSS \(closing >> 20) MiB")
        _ = reader

        // 3. Sixteen unauthenticated connections to the peer port announce 64 MiB write frames.
        var intruders: [NBDTestClient] = []
        let frames = try peakResidentBytes(of: pid, during: 3) {
            for _ in 0..<16 {
                let intruder = try NBDTestClient(port: cluster.peerPorts["a"]!)
                var header = ByteBuffer()
                header.writeMultipleIntegers(PeerCodec.magic, UInt8(5), UInt8(0), UInt16(0), UInt32(64 << 20))
                try? intruder.send(header)
                _ = intruder.push([UInt8](repeating: 0x55, count: 64 << 20), within: .milliseconds(150))
                intruders.append(intruder)
            }
        }
        print("hostile: 16 unauthenticated peer connections announcing 64 MiB frames: peak RSS \(frames >> 20) MiB")
        intruders.removeAll()

        // 4. A thousand idle connections and four slowloris ones; real clients are served meanwhile.
        var crowd: [NBDTestClient] = []
        for _ in 0..<1000 { crowd.append(try NBDTestClient(port: port)) }
        // Real clients come after the whole crowd has been taken in (see `admitted`).
        for connection in crowd { connection.admitted() }
        let slow = try (0..<4).map { _ in try NBDTestClient(port: port) }
        let crowdStarted = Date()
        for round in 0..<3 {
            for client in slow { _ = client.push([0], within: .milliseconds(10)) }
            try Tools.check("nbdinfo", ["--size", cluster.uri("a")])
            let pattern = String(format: "0x%02x", 0x40 + round)
            try Tools.check(
                "qemu-io",
                ["-f", "raw", "-c", "write -P \(pattern) 0 1M", "-c", "read -P \(pattern) 0 1M", cluster.uri("a")])
            usleep(500_000)
        }
        let crowdPeak = try Tools.residentBytes(of: pid)
        print("hostile: 1,000 idle and 4 slowloris connections: RSS \(crowdPeak >> 20) MiB, real clients served")
        // Whatever of the crowd still stands is closed at the 10 s negotiation deadline.
        let waited = Date().timeIntervalSince(crowdStarted)
        let stillOpen = crowd.suffix(32) + slow
        let closed = stillOpen.filter { $0.closedWithin(milliseconds: Int((12 - waited) * 1000) + 500) }.count
        print("hostile: \(closed) of the \(stillOpen.count) newest idle connections closed by the negotiation deadline")
        crowd.removeAll()

        #expect(reads < Self.rssLimit, "pipelined reads took the primary to \(reads >> 20) MiB")
        #expect(writes < Self.rssLimit, "half-sent writes took the primary to \(writes >> 20) MiB")
        #expect(closing < Self.rssLimit, "closing the half writes took the primary to \(closing >> 20) MiB")
        #expect(frames < Self.rssLimit, "peer-port frames took the primary to \(frames >> 20) MiB")
        #expect(closed == stillOpen.count)
        // Nothing failed over and the pair is still in sync.
        #expect(cluster.isRunning("a") && cluster.isRunning("b"))
        #expect(cluster.primary() == "a")
        try cluster.waitInSync(seconds: 30)
        try Tools.check("qemu-io", ["-f", "raw", "-c", "read -P 0x42 0 1M", cluster.uri("a")])
    }
}
