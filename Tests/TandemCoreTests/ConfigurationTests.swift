import Foundation
import Testing

@testable import TandemCore

private let validConfig = """
    [cluster]
    name = "media"
    secret-file = "/etc/tandem/secret"

    [[node]]
    name = "box-a"
    address = "10.0.0.1"
    heartbeat = ["10.0.0.1", "192.168.50.1"]
    precedence = 10

    [[node]]
    name = "box-b"
    address = "10.0.0.2"
    precedence = 20
    nbd-listen = ["[::1]:10810", "unix:/run/tandem/nbd.sock"]

    [witness]
    address = "10.0.0.3"

    [timing]
    heartbeat-interval = "200ms"
    dead-time = "2s"

    [[volume]]
    name = "vol0"
    protocol = "C"
    size = "100GiB"
    backing = "/dev/md0"
    nbd-export = "vol0"

    [[group]]
    name = "storage"
    failback = "manual"
    resources = [
      { type = "volume", volume = "vol0" },
      { type = "ip", address = "10.0.0.50/24", interface = "eth0" },
      { type = "ocf", agent = "heartbeat:Filesystem", params = { device = "/dev/nbd0", fstype = "xfs" } },
    ]
    """

/// Parses `text`, expecting failure, and returns the issues.
private func issues(_ text: String) -> [ConfigIssue] {
    do {
        _ = try Configuration.parse(text: text, file: "/etc/tandem/tandem.toml")
        Issue.record("expected the config to be refused")
        return []
    } catch {
        return error.issues
    }
}

/// `validConfig` with `old` replaced by `new` (which must occur).
private func mutated(_ old: String, _ new: String) -> String {
    precondition(validConfig.contains(old), "fixture does not contain \(old)")
    return validConfig.replacingOccurrences(of: old, with: new)
}

@Suite struct ConfigurationTests {
    @Test func parse_validConfig_buildsTheModel() throws {
        let configuration = try Configuration.parse(text: validConfig, file: "t.toml")
        #expect(configuration.cluster.name == "media")
        #expect(configuration.nodes.map(\.name) == ["box-a", "box-b"])
        #expect(configuration.nodes[0].heartbeat == ["10.0.0.1", "192.168.50.1"])
        #expect(configuration.nodes[1].heartbeat == ["10.0.0.2"])
        #expect(configuration.nodes[0].nbdListen == [.tcp(host: "10.0.0.1", port: 10809)])
        #expect(
            configuration.nodes[1].nbdListen == [.tcp(host: "::1", port: 10810), .unix(path: "/run/tandem/nbd.sock")])
        #expect(configuration.witness == .init(address: "10.0.0.3", port: 7790))
        #expect(configuration.timing.heartbeatInterval == .milliseconds(200))
        #expect(configuration.timing.deadTime == .seconds(2))
        #expect(configuration.volumes[0].sizeBytes == 100 << 30)
        #expect(configuration.volumes[0].protocol == .c)
        #expect(configuration.groups[0].resources.map(\.type) == [.volume, .ip, .ocf])
        #expect(configuration.groups[0].resources[2].parameters["params.device"] == "/dev/nbd0")
        #expect(configuration.limits == .defaults)
    }

    @Test func parse_templates_areValid() throws {
        let example = try Configuration.parse(text: ConfigTemplate.example(secretFile: "/etc/tandem/secret"), file: "e")
        #expect(example.nodes.count == 2)
        let lab = try Configuration.parse(
            text: ConfigTemplate.lab(directory: "/tmp/lab", sizeText: "1GiB", port: 10809), file: "l")
        #expect(lab.volumes[0].sizeBytes == 1 << 30)
    }

    @Test func unknownKey_namesLineKeyAndSuggestion() {
        let found = issues(mutated("precedence = 20", "precedance = 20"))
        #expect(found.count == 1)
        #expect(found.first?.line == 14)
        #expect(found.first?.key == "node[1].precedance")
        #expect(found.first?.message.contains("did you mean \"precedence\"") == true)
    }

    @Test func unknownSection_isReported() {
        let found = issues(validConfig + "\n[extra]\nkey = 1\n")
        #expect(found.map(\.key) == ["extra"])
    }

    @Test func wrongType_namesExpectedAndFound() {
        let found = issues(mutated("precedence = 10", "precedence = \"ten\""))
        #expect(found.count == 1)
        #expect(found.first?.line == 9)
        #expect(found.first?.key == "node[0].precedence")
        #expect(found.first?.message == "expected an integer, found a string")
    }

    @Test func duplicateNodeName_pointsAtTheSecond() {
        let found = issues(mutated("name = \"box-b\"", "name = \"box-a\""))
        #expect(found.count == 1)
        #expect(found.first?.line == 12)
        #expect(found.first?.key == "node[1].name")
        #expect(found.first?.message == "duplicate node name \"box-a\" (first defined on line 6)")
    }

    @Test func duplicateVolumeName_isReported() {
        let second =
            "\n[[volume]]\nname = \"vol0\"\nsize = \"1GiB\"\nbacking = \"/srv/b.img\"\nnbd-export = \"other\"\n"
        let found = issues(validConfig + second)
        #expect(found.map(\.key) == ["volume[1].name"])
        #expect(found.first?.line == 40)
    }

    @Test func badSize_isReported() {
        let found = issues(mutated("size = \"100GiB\"", "size = \"100 gigs\""))
        #expect(found.count == 1)
        #expect(found.first?.line == 27)
        #expect(found.first?.key == "volume[0].size")
        #expect(found.first?.message.contains("expected a size such as \"100GiB\"") == true)
    }

    @Test func badDuration_isReported() {
        let found = issues(mutated("dead-time = \"2s\"", "dead-time = \"2\""))
        #expect(found.map(\.key) == ["timing.dead-time"])
        #expect(found.first?.line == 22)
        #expect(found.first?.message.contains("expected a duration such as \"200ms\"") == true)
    }

    @Test func deadTimeShorterThanThreeIntervals_isRefused() {
        let found = issues(mutated("dead-time = \"2s\"", "dead-time = \"300ms\""))
        #expect(found.map(\.key) == ["timing.dead-time"])
    }

    @Test func nodeReferencedButNotDefined_isReported() {
        let found = issues(mutated("failback = \"manual\"", "failback = \"manual\"\nnodes = [\"box-a\", \"box-c\"]"))
        #expect(found.count == 1)
        #expect(found.first?.key == "group[0].nodes")
        #expect(found.first?.line == 34)
        #expect(found.first?.message == "node \"box-c\" is referenced but not defined by any [[node]]")
    }

    @Test func volumeReferencedButNotDefined_isReported() {
        let found = issues(
            mutated("{ type = \"volume\", volume = \"vol0\" }", "{ type = \"volume\", volume = \"vol9\" }"))
        #expect(found.map(\.key) == ["group[0].resources[0].volume"])
        #expect(found.first?.line == 35)
    }

    @Test func unknownResourceType_listsKnownOnes() {
        let found = issues(mutated("type = \"ip\"", "type = \"vip\""))
        #expect(found.map(\.key) == ["group[0].resources[1].type"])
        #expect(found.first?.message.contains("expected one of volume, nbd-export, ip") == true)
    }

    @Test func missingRequiredKeys_areEachReported() {
        let found = issues(mutated("backing = \"/dev/md0\"", "protocol2 = \"x\""))
        #expect(Set(found.map(\.key)) == ["volume[0].protocol2", "volume[0].backing"])
    }

    @Test func missingClusterSection_isReported() {
        let found = issues("[[node]]\nname = \"a\"\naddress = \"127.0.0.1\"\n")
        #expect(found.map(\.key) == ["cluster"])
        #expect(found.first?.line == nil)
    }

    @Test func badProtocolAndRelativeBacking_areBothReported() {
        let text = mutated("protocol = \"C\"", "protocol = \"D\"").replacingOccurrences(
            of: "backing = \"/dev/md0\"", with: "backing = \"md0\"")
        let found = issues(text)
        #expect(found.map(\.key) == ["volume[0].protocol", "volume[0].backing"])
    }

    @Test func syntaxError_namesLineAndColumn() {
        let found = issues(mutated("address = \"10.0.0.3\"", "address = 10.0.0.3"))
        #expect(found.count == 1)
        #expect(found.first?.line == 18)
        #expect(found.first?.message.contains("column 11") == true)
    }

    @Test func errorDescription_startsWithFileAndLine() {
        do {
            _ = try Configuration.parse(
                text: mutated("precedence = 10", "precedence = -1"), file: "/etc/tandem/tandem.toml")
            Issue.record("expected an error")
        } catch {
            #expect(
                error.description
                    == "/etc/tandem/tandem.toml:9: node[0].precedence: expected an integer from 0 to 1000000, found -1")
        }
    }

    @Test func nbdLimits_areBounded() {
        let found = issues(validConfig + "\n[limits]\nnbd-max-request = \"3MiB\"\nnbd-max-in-flight = 0\n")
        #expect(found.map(\.key) == ["limits.nbd-max-request", "limits.nbd-max-in-flight"])
    }

    @Test func resyncRateAndSplitBrainPolicy_areParsedAndChecked() throws {
        let good = try Configuration.parse(
            text: mutated(
                "nbd-export = \"vol0\"",
                "nbd-export = \"vol0\"\nresync-rate = \"100MiB/s\"\nsplit-brain = \"discard-least-changes\""),
            file: "t")
        #expect(good.volumes[0].resyncRateBytesPerSecond == 100 << 20)
        #expect(good.volumes[0].splitBrainPolicy == .discardLeastChanges)
        let found = issues(mutated("nbd-export = \"vol0\"", "resync-rate = \"fast\"\nsplit-brain = \"coin-toss\""))
        #expect(found.map(\.key) == ["volume[0].resync-rate", "volume[0].split-brain"])
    }

    @Test func resyncMinRate_defaultsTo64MiBPerSecond_andMayNotExceedTheResyncRate() throws {
        let plain = try Configuration.parse(text: validConfig, file: "t")
        #expect(plain.volumes[0].resyncMinRateBytesPerSecond == 64 << 20)
        let set = try Configuration.parse(
            text: mutated("nbd-export = \"vol0\"", "nbd-export = \"vol0\"\nresync-min-rate = \"8MiB/s\""), file: "t")
        #expect(set.volumes[0].resyncMinRateBytesPerSecond == 8 << 20)
        let found = issues(
            mutated("nbd-export = \"vol0\"", "resync-rate = \"10MiB/s\"\nresync-min-rate = \"20MiB/s\""))
        #expect(found.map(\.key) == ["volume[0].resync-min-rate"])
        #expect(found.first?.message.contains("at most resync-rate") == true)
    }

    @Test func activityLogExtents_defaultsTo1024_andIsBounded() throws {
        #expect(try Configuration.parse(text: validConfig, file: "t").volumes[0].activityLogExtents == 1024)
        let set = try Configuration.parse(
            text: mutated("nbd-export = \"vol0\"", "nbd-export = \"vol0\"\nactivity-log-extents = 64"), file: "t")
        #expect(set.volumes[0].activityLogExtents == 64)
        let found = issues(mutated("nbd-export = \"vol0\"", "activity-log-extents = 4"))
        #expect(found.map(\.key) == ["volume[0].activity-log-extents"])
        #expect(found.first?.message == "expected an integer from 16 to 65536, found 4")
        #expect(found.first?.line != nil)
    }

    @Test func peerCongestionControl_defaultsToCubic_systemKeepsTheKernels_badNamesAreReported() throws {
        #expect(try Configuration.parse(text: validConfig, file: "t").cluster.peerCongestionControl == "cubic")
        let secretLine = "secret-file = \"/etc/tandem/secret\""
        func set(_ value: String) -> String {
            mutated(secretLine, "\(secretLine)\npeer-congestion-control = \"\(value)\"")
        }
        #expect(try Configuration.parse(text: set("reno"), file: "t").cluster.peerCongestionControl == "reno")
        #expect(try Configuration.parse(text: set("system"), file: "t").cluster.peerCongestionControl == nil)
        for bad in ["", "cubic; reboot", "a-name-far-too-long", "../bbr"] {
            let found = issues(set(bad))
            #expect(found.map(\.key) == ["cluster.peer-congestion-control"], "\(bad)")
            #expect(found.first?.line == 4)
            #expect(
                found.first?.message
                    == (bad.isEmpty
                        ? "must not be empty"
                        : "expected \"system\" or a TCP congestion control's name (such as \"cubic\"), found \"\(bad)\"")
            )
        }
    }

    @Test func watchdog_isAnAbsolutePath_namedWithItsLine() throws {
        #expect(try Configuration.parse(text: validConfig, file: "t").cluster.watchdog == nil)
        let secretLine = "secret-file = \"/etc/tandem/secret\""
        let armed = mutated(secretLine, "\(secretLine)\nwatchdog = \"/dev/watchdog\"")
        #expect(try Configuration.parse(text: armed, file: "t").cluster.watchdog == "/dev/watchdog")
        let found = issues(mutated(secretLine, "\(secretLine)\nwatchdog = \"dev/watchdog\""))
        #expect(found.map(\.key) == ["cluster.watchdog"])
        #expect(found.first?.line == 4)
        #expect(found.first?.message == "expected an absolute path, found \"dev/watchdog\"")
    }

    @Test func badListenAddress_isReported() {
        let found = issues(mutated("nbd-listen = [\"[::1]:10810\"", "nbd-listen = [\"host:99999\""))
        #expect(found.map(\.key) == ["node[1].nbd-listen"])
    }
}

@Suite struct UnitsTests {
    @Test func byteCounts() {
        #expect(Units.parseByteCount("100GiB") == 100 << 30)
        #expect(Units.parseByteCount("512KiB") == 512 << 10)
        #expect(Units.parseByteCount("4096") == 4096)
        #expect(Units.parseByteCount("1.5GiB") == 3 << 29)
        #expect(Units.parseByteCount("2TB") == 2_000_000_000_000)
        #expect(Units.parseByteCount("1 MiB") == 1 << 20)
        #expect(Units.parseByteCount("") == nil)
        #expect(Units.parseByteCount("GiB") == nil)
        #expect(Units.parseByteCount("10 gigs") == nil)
        #expect(Units.parseByteCount("-1GiB") == nil)
        #expect(Units.parseByteCount("99999999999PiB") == nil)
    }

    @Test func aThirdNode_andANanosecondHeartbeat_areRefusedByName() {
        let third = validConfig + "\n[[node]]\nname = \"box-c\"\naddress = \"10.0.0.9\"\n"
        let found = issues(third)
        #expect(found.contains { $0.key == "node[2]" && $0.message.contains("between two nodes") }, "\(found)")
        let tiny = issues(mutated("heartbeat-interval = \"200ms\"", "heartbeat-interval = \"1ns\""))
        #expect(
            tiny.contains { $0.key == "timing.heartbeat-interval" && $0.message.hasPrefix("must be at least 10ms") })
    }

    /// Finding 7: every address is an IP address, named by key when it is not.
    @Test func addressesThatAreNotIPAddresses_areRefusedByKey() {
        let bad = issues(
            mutated("address = \"10.0.0.1\"", "address = \"not an address\"")
                .replacingOccurrences(of: "address = \"10.0.0.3\"", with: "address = \"::::::\"")
                .replacingOccurrences(of: "\"192.168.50.1\"]", with: "\"192.168.50.300\"]")
                .replacingOccurrences(of: "\"[::1]:10810\"", with: "\"nowhere:10810\""))
        for key in ["node[0].address", "witness.address", "node[0].heartbeat", "node[1].nbd-listen"] {
            #expect(bad.contains { $0.key == key && $0.message.contains("expected an IP address") }, "\(key): \(bad)")
        }
        let ipv6Witness = mutated("address = \"10.0.0.3\"", "address = \"fd00::3\"")
        #expect((try? Configuration.parse(text: ipv6Witness, file: "tandem.toml")) != nil)
    }

    @Test func hostileValues_areRefused_notTrapped() {
        // Each of these trapped (SIGILL) or overflowed the stack (SIGSEGV) in the reader before.
        #expect(Units.parseDuration("10000000000000000000000000h") == nil)
        #expect(Units.parseDuration("876000h") == .seconds(876_000 * 3600))
        #expect(Units.parseDuration("876001h") == nil)
        let deepArray = "x = " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: TOMLSyntaxError.self) { try TOMLDocument.parse(deepArray) }
        let deepTable = "x = " + String(repeating: "{a=", count: 100_000) + "1" + String(repeating: "}", count: 100_000)
        #expect(throws: TOMLSyntaxError.self) { try TOMLDocument.parse(deepTable) }
        let longKey = (0..<8000).map { "k\($0)" }.joined(separator: ".") + " = 1"
        let started = ContinuousClock.now
        #expect(throws: TOMLSyntaxError.self) { try TOMLDocument.parse(longKey) }
        #expect(ContinuousClock.now - started < .seconds(1), "refused at once, not after quadratic work")
        // Nesting a config needs still parses.
        #expect((try? TOMLDocument.parse("x = [[1, 2], [{ a = { b = [3] } }]]")) != nil)
    }

    @Test func durations() {
        #expect(Units.parseDuration("200ms") == .milliseconds(200))
        #expect(Units.parseDuration("2s") == .seconds(2))
        #expect(Units.parseDuration("1m30s") == .seconds(90))
        #expect(Units.parseDuration("1.5s") == .milliseconds(1500))
        #expect(Units.parseDuration("500us") == .microseconds(500))
        #expect(Units.parseDuration("1h") == .seconds(3600))
        #expect(Units.parseDuration("2") == nil)
        #expect(Units.parseDuration("ms") == nil)
        #expect(Units.parseDuration("2 fortnights") == nil)
    }

    @Test func formatting() {
        #expect(Units.formatByteCount(512) == "512 B")
        #expect(Units.formatByteCount(1 << 30) == "1 GiB")
        #expect(Units.formatByteCount(3 << 29) == "1.5 GiB")
    }
}
