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

/// An attacker on the network against a primary with a peer and a witness: memory stays bounded,
/// slots cannot be held, real clients are served throughout and nothing fails over.
@Suite(.serialized) struct HostileClientTests {
    static let rssLimit = 128 << 20
    static var crowdScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/idle-crowd.py").path
    }

    @Test func hostileClients_boundedMemory_realClientsServed_noFailover() throws {
        let cluster = try TwoNodeCluster(protocol: "C", size: "64MiB", witness: true)
        try cluster.startWitness()
        try cluster.startInSyncWithPrimaryA()
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
        // Each attack is measured on its own: this one's connection goes before the next.
        reader.hangUp()
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

        // 4. A thousand idle connections and four slowloris ones, held by a helper process so that
        //    this one keeps its descriptors below 1024; real clients are served meanwhile.
        let crowd = Process()
        crowd.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        crowd.arguments = [Self.crowdScript, "\(port)", "--idle", "1000", "--slow", "4", "--hold", "13"]
        let said = Pipe()
        crowd.standardOutput = said
        try Tools.launch(crowd)
        defer { if crowd.isRunning { crowd.terminate() } }
        let output = DataCollector(said.fileHandleForReading)
        let ready = Date().addingTimeInterval(60)
        while !output.snapshot().contains("ready"), crowd.isRunning, Date() < ready { usleep(50_000) }
        try #require(output.snapshot().contains("ready"), "the crowd did not gather: \(output.snapshot())")
        for round in 0..<3 {
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
        let report = output.text(waitingAtMost: 60).trimmingCharacters(in: .whitespacesAndNewlines)
        let closedLine = report.split(separator: "\n").last.map(String.init) ?? ""
        print("hostile: \(closedLine) of the newest idle and the slowloris connections by the negotiation deadline")

        #expect(reads < Self.rssLimit, "pipelined reads took the primary to \(reads >> 20) MiB")
        #expect(writes < Self.rssLimit, "half-sent writes took the primary to \(writes >> 20) MiB")
        #expect(closing < Self.rssLimit, "closing the half writes took the primary to \(closing >> 20) MiB")
        #expect(frames < Self.rssLimit, "peer-port frames took the primary to \(frames >> 20) MiB")
        #expect(closedLine == "closed 36 of 36", "\(report)")
        // Nothing failed over and the pair is still in sync.
        #expect(cluster.isRunning("a") && cluster.isRunning("b"))
        #expect(cluster.primary() == "a")
        try cluster.waitInSync(seconds: 30)
        try Tools.check("qemu-io", ["-f", "raw", "-c", "read -P 0x42 0 1M", cluster.uri("a")])
    }
}
