/// One problem in a config file.
public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    /// The 1-based line, where known.
    public var line: Int?
    /// The key at fault, as a path (`node[1].precedence`).
    public var key: String
    /// What was wrong and what was expected.
    public var message: String

    /// Creates an issue.
    public init(line: Int?, key: String, message: String) {
        self.line = line
        self.key = key
        self.message = message
    }

    /// `line 12: node[1].precedence: expected an integer, found a string`.
    public var description: String {
        let place = line.map { "line \($0): " } ?? ""
        return key.isEmpty ? "\(place)\(message)" : "\(place)\(key): \(message)"
    }
}

/// A config file that cannot be used, with every problem found in it.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file's path as given.
    public var file: String
    /// The problems, in file order.
    public var issues: [ConfigIssue]

    /// Creates an error.
    public init(file: String, issues: [ConfigIssue]) {
        self.file = file
        self.issues = issues
    }

    /// One problem per line, each prefixed by `file:line:`.
    public var description: String {
        issues.map { issue in
            let place = issue.line.map { "\(file):\($0)" } ?? file
            let key = issue.key.isEmpty ? "" : "\(issue.key): "
            return "\(place): \(key)\(issue.message)"
        }.joined(separator: "\n")
    }
}

extension Configuration {
    /// Parses and validates a config file's text; `file` is used in error messages.
    public static func parse(text: String, file: String) throws(ConfigError) -> Configuration {
        let document: TOMLDocument
        do {
            document = try TOMLDocument.parse(text)
        } catch {
            let issue = ConfigIssue(line: error.line, key: "", message: "column \(error.column): \(error.message)")
            throw ConfigError(file: file, issues: [issue])
        }
        var reader = ConfigReader()
        let configuration = reader.readConfiguration(document.root)
        guard reader.issues.isEmpty, let configuration else {
            let sorted = reader.issues.enumerated().sorted { ($0.1.line ?? 0, $0.0) < ($1.1.line ?? 0, $1.0) }
            throw ConfigError(file: file, issues: sorted.map(\.1))
        }
        return configuration
    }
}

/// Reads typed values out of TOML tables, collecting every problem instead of stopping at the first.
struct ConfigReader {
    private(set) var issues: [ConfigIssue] = []
    /// Each node's `api-listen` line, for `[api]`'s checks that come after the nodes.
    private var apiListenLines: [String: Int] = [:]

    mutating func report(_ line: Int?, _ key: String, _ message: String) {
        issues.append(ConfigIssue(line: line, key: key, message: message))
    }

    // MARK: Sections

    /// The shortest heartbeat interval taken: the membership loop ticks every quarter interval
    /// (at most every 50 ms), and a nanosecond interval would only spin it.
    static let shortestHeartbeatInterval = Duration.milliseconds(10)

    mutating func readConfiguration(_ root: TOMLTable) -> Configuration? {
        checkKeys(
            root, path: "", allowed: ["cluster", "node", "witness", "timing", "limits", "volume", "group", "api"])
        let cluster = readCluster(table(root, "cluster", required: true))
        let nodeTables = tables(root, "node")
        let volumeTables = tables(root, "volume")
        let groupTables = tables(root, "group")
        let nodes = nodeTables.enumerated().compactMap { readNode($1, path: "node[\($0)]") }
        let witness = table(root, "witness", required: false).flatMap { readWitness($0) }
        let timing = readTiming(table(root, "timing", required: false))
        let limits = readLimits(table(root, "limits", required: false))
        let volumes = volumeTables.enumerated().compactMap { readVolume($1, path: "volume[\($0)]") }
        let groups = groupTables.enumerated().compactMap { readGroup($1, path: "group[\($0)]") }
        checkUnique(nodeTables, section: "node", what: "node name", key: "name")
        if nodeTables.count > 2 {
            // Until coordination for more than two nodes exists, a third node is a mistake here,
            // not something `tandem agent` finds out at start.
            report(
                nodeTables[2].line, "node[2]",
                "this version replicates between two nodes; the config has \(nodeTables.count)")
        }
        checkUnique(volumeTables, section: "volume", what: "volume name", key: "name")
        checkUnique(volumeTables, section: "volume", what: "NBD export", key: "nbd-export", fallbackKey: "name")
        checkUnique(groupTables, section: "group", what: "group name", key: "name")
        if nodeTables.isEmpty {
            report(root.line, "node", "at least one [[node]] is required")
        }
        checkReferences(groupTables: groupTables, nodeTables: nodeTables, volumeTables: volumeTables)
        let api = readAPI(table(root, "api", required: false), nodes: nodes)
        guard let cluster, let timing else { return nil }
        return Configuration(
            cluster: cluster, nodes: nodes, witness: witness, timing: timing, limits: limits,
            volumes: volumes, groups: groups, api: api
        )
    }

    private mutating func readCluster(_ table: TOMLTable?) -> Configuration.Cluster? {
        guard let table else { return nil }
        checkKeys(
            table, path: "cluster",
            allowed: [
                "name", "secret-file", "state-dir", "ha-reset", "fence-command", "peer-congestion-control",
                "watchdog", "tls-dir", "nbd-client-certificates", "peer-tls", "nbd-tls-psk-file", "nbd-client-names",
            ])
        let clientNames = stringArray(table, "nbd-client-names", path: "cluster") ?? []
        if !clientNames.isEmpty,
            string(table, "nbd-client-certificates", path: "cluster", required: false) != "required"
        {
            report(
                table["nbd-client-names"]?.line, "cluster.nbd-client-names",
                "takes effect only with nbd-client-certificates = \"required\"")
        }
        let pskFile = string(table, "nbd-tls-psk-file", path: "cluster", required: false)
        if let pskFile, !pskFile.hasPrefix("/") {
            report(
                table["nbd-tls-psk-file"]?.line, "cluster.nbd-tls-psk-file",
                "expected an absolute path, found \(UntrustedText.quoted(pskFile))")
        }
        let peerTLSText = string(table, "peer-tls", path: "cluster", required: false) ?? "off"
        if peerTLSText != "on", peerTLSText != "off" {
            report(
                table["peer-tls"]?.line, "cluster.peer-tls",
                "expected \"on\" or \"off\", found \(UntrustedText.quoted(peerTLSText))")
        }
        let tlsDirectory = string(table, "tls-dir", path: "cluster", required: false) ?? "/etc/tandem/tls"
        if !tlsDirectory.hasPrefix("/") {
            report(
                table["tls-dir"]?.line, "cluster.tls-dir",
                "expected an absolute path, found \(UntrustedText.quoted(tlsDirectory))")
        }
        let clientText = string(table, "nbd-client-certificates", path: "cluster", required: false) ?? "none"
        let clientCertificates = Configuration.ClientCertificates(rawValue: clientText)
        if clientCertificates == nil {
            report(
                table["nbd-client-certificates"]?.line, "cluster.nbd-client-certificates",
                "expected \"none\" or \"required\", found \(UntrustedText.quoted(clientText))")
        }
        let watchdog = string(table, "watchdog", path: "cluster", required: false)
        if let watchdog, !watchdog.hasPrefix("/") {
            report(
                table["watchdog"]?.line, "cluster.watchdog", "expected an absolute path, found \"\(watchdog)\"")
        }
        let fenceCommand = string(table, "fence-command", path: "cluster", required: false)
        if let fenceCommand, !fenceCommand.hasPrefix("/") {
            report(
                table["fence-command"]?.line, "cluster.fence-command",
                "expected an absolute path, found \"\(fenceCommand)\"")
        }
        let name = string(table, "name", path: "cluster", required: true)
        let secretFile = string(table, "secret-file", path: "cluster", required: false)
        let stateDirectory = string(table, "state-dir", path: "cluster", required: false) ?? "/var/lib/tandem"
        let resetText = string(table, "ha-reset", path: "cluster", required: false) ?? "reboot"
        let reset = Configuration.ResetAction(rawValue: resetText)
        if reset == nil {
            report(
                table["ha-reset"]?.line, "cluster.ha-reset", "expected \"reboot\" or \"exit\", found \"\(resetText)\"")
        }
        let congestionText = string(table, "peer-congestion-control", path: "cluster", required: false) ?? "cubic"
        // The kernel's names are at most 15 characters (TCP_CA_NAME_MAX less the terminator).
        if congestionText.count > 15 || !isName(congestionText) || congestionText.contains(".") {
            report(
                table["peer-congestion-control"]?.line, "cluster.peer-congestion-control",
                "expected \"system\" or a TCP congestion control's name (such as \"cubic\"), found \"\(congestionText)\""
            )
        }
        guard let name else { return nil }
        if let name = Optional(name), !isName(name) {
            report(table["name"]?.line, "cluster.name", "expected letters, digits, '-', '_' or '.', found \"\(name)\"")
        }
        return Configuration.Cluster(
            name: name, secretFile: secretFile, stateDirectory: stateDirectory, haReset: reset ?? .reboot,
            fenceCommand: fenceCommand, peerCongestionControl: congestionText == "system" ? nil : congestionText,
            watchdog: watchdog, tlsDirectory: tlsDirectory, nbdClientCertificates: clientCertificates ?? .none,
            peerTLS: peerTLSText == "on", nbdTLSPSKFile: pskFile, nbdClientNames: clientNames)
    }

    private mutating func readNode(_ table: TOMLTable, path: String) -> Configuration.Node? {
        checkKeys(
            table, path: path,
            allowed: [
                "name", "address", "port", "heartbeat", "precedence", "nbd-listen", "tls", "api-listen",
                "health-listen",
            ])
        let tlsText = string(table, "tls", path: path, required: false) ?? "off"
        let tls = Configuration.TLSMode(rawValue: tlsText)
        if tls == nil {
            report(
                table["tls"]?.line, "\(path).tls",
                "expected \"off\", \"allow\" or \"require\", found \(UntrustedText.quoted(tlsText))")
        }
        let name = string(table, "name", path: path, required: true)
        let address = string(table, "address", path: path, required: true)
        let port = integer(table, "port", path: path, range: 1...65535) ?? 7789
        let heartbeat = stringArray(table, "heartbeat", path: path)
        let precedence = integer(table, "precedence", path: path, range: 0...1_000_000) ?? 100
        let listenTexts = stringArray(table, "nbd-listen", path: path)
        if let name, !isName(name) {
            report(table["name"]?.line, "\(path).name", "expected letters, digits, '-', '_' or '.', found \"\(name)\"")
        }
        checkAddresses(table, "address", [address].compactMap { $0 }, path: path)
        checkAddresses(table, "heartbeat", heartbeat ?? [], path: path)
        var listen: [ListenAddress] = []
        for text in listenTexts ?? ["\(address ?? "127.0.0.1"):10809"] {
            guard let parsed = ListenAddress.parse(text, defaultPort: 10809) else {
                report(
                    table["nbd-listen"]?.line, "\(path).nbd-listen",
                    "expected \"host:port\" or \"unix:/absolute/path\", found \(UntrustedText.quoted(text))")
                continue
            }
            if case .tcp(let host, _) = parsed, !IPAddressText.isAddress(host) {
                report(
                    table["nbd-listen"]?.line, "\(path).nbd-listen",
                    "expected an IP address before the port, found \(UntrustedText.quoted(host))")
                continue
            }
            listen.append(parsed)
        }
        let apiListen = hostPorts(table, "api-listen", path: path, defaultPort: 7443)
        let healthListen = hostPorts(table, "health-listen", path: path, defaultPort: 7444)
        apiListenLines[name ?? ""] = table["api-listen"]?.line
        guard let name, let address else { return nil }
        return Configuration.Node(
            name: name, address: address, port: port, heartbeat: heartbeat ?? [address],
            precedence: precedence, nbdListen: listen, tls: tls ?? .off, apiListen: apiListen,
            healthListen: healthListen
        )
    }

    /// A list of `"IP-ADDRESS:PORT"`, each checked.
    private mutating func hostPorts(
        _ table: TOMLTable, _ key: String, path: String, defaultPort: Int
    ) -> [(host: String, port: Int)] {
        var result: [(host: String, port: Int)] = []
        for text in stringArray(table, key, path: path) ?? [] {
            guard let (host, port) = ListenAddress.splitHostPort(text, defaultPort: defaultPort),
                IPAddressText.isAddress(host), (1...65535).contains(port)
            else {
                report(
                    table[key]?.line, "\(path).\(key)",
                    "expected \"IP-ADDRESS:PORT\", found \(UntrustedText.quoted(text))")
                continue
            }
            result.append((host, port))
        }
        return result
    }

    private mutating func readAPI(_ table: TOMLTable?, nodes: [Configuration.Node]) -> Configuration.API {
        guard let table else { return Configuration.API() }
        checkKeys(table, path: "api", allowed: ["plain-http"])
        let plain = boolean(table, "plain-http", path: "api") ?? false
        if plain {
            for node in nodes {
                for listen in node.apiListen where !IPAddressText.isLoopback(listen.host) {
                    report(
                        apiListenLines[node.name] ?? table["plain-http"]?.line, "api.plain-http",
                        "plain HTTP is for loopback only, but node \(node.name) listens on \(listen.host): "
                            + "remove plain-http (the API then uses the node's TLS certificate)")
                }
            }
        }
        return Configuration.API(plainHTTP: plain)
    }

    /// Reports every entry of `key` that is not an IP address.
    private mutating func checkAddresses(_ table: TOMLTable, _ key: String, _ texts: [String], path: String) {
        for text in texts where !IPAddressText.isAddress(text) {
            report(table[key]?.line, "\(path).\(key)", "expected an IP address, found \(UntrustedText.quoted(text))")
        }
    }

    private mutating func readWitness(_ table: TOMLTable) -> Configuration.Witness? {
        checkKeys(table, path: "witness", allowed: ["address", "port"])
        let address = string(table, "address", path: "witness", required: true)
        checkAddresses(table, "address", [address].compactMap { $0 }, path: "witness")
        let port = integer(table, "port", path: "witness", range: 1...65535) ?? 7790
        return address.map { Configuration.Witness(address: $0, port: port) }
    }

    private mutating func readTiming(_ table: TOMLTable?) -> Configuration.Timing? {
        let table = table ?? TOMLTable(line: 0)
        checkKeys(
            table, path: "timing",
            allowed: ["heartbeat-interval", "dead-time", "wait-for-peer", "failover-cooldown", "failback-delay"])
        let interval = duration(table, "heartbeat-interval", path: "timing") ?? .milliseconds(200)
        let deadTime = duration(table, "dead-time", path: "timing") ?? .seconds(2)
        let waitForPeer = duration(table, "wait-for-peer", path: "timing") ?? .seconds(30)
        let cooldown = duration(table, "failover-cooldown", path: "timing") ?? .seconds(60)
        let failbackDelay = duration(table, "failback-delay", path: "timing") ?? .seconds(30)
        if interval < Self.shortestHeartbeatInterval {
            report(
                table["heartbeat-interval"]?.line, "timing.heartbeat-interval",
                "must be at least \(Units.formatDuration(Self.shortestHeartbeatInterval)) (a datagram per link "
                    + "per interval, and the membership loop's ticks), found \(Units.formatDuration(interval))")
        }
        if deadTime < interval * 3 {
            report(
                table["dead-time"]?.line, "timing.dead-time",
                "must be at least three heartbeat intervals (\(interval * 3)), found \(deadTime)")
        }
        return Configuration.Timing(
            heartbeatInterval: interval, deadTime: deadTime, waitForPeer: waitForPeer, failoverCooldown: cooldown,
            failbackDelay: failbackDelay)
    }

    private mutating func readLimits(_ table: TOMLTable?) -> Configuration.Limits {
        let table = table ?? TOMLTable(line: 0)
        let defaults = Configuration.Limits.defaults
        checkKeys(
            table, path: "limits",
            allowed: ["nbd-max-request", "nbd-max-in-flight", "nbd-max-connections", "nbd-max-buffered"])
        var maxRequest = defaults.nbdMaxRequestBytes
        if let bytes = byteCount(table, "nbd-max-request", path: "limits") {
            if bytes < 4096 || bytes > 128 << 20 || bytes & (bytes - 1) != 0 {
                report(
                    table["nbd-max-request"]?.line, "limits.nbd-max-request",
                    "expected a power of two between 4KiB and 128MiB, found \(bytes) bytes")
            } else {
                maxRequest = Int(bytes)
            }
        }
        // Two requests of the largest size at least, so that one connection is never starved by
        // the size of its own request.
        var buffered = max(defaults.nbdMaxBufferedBytes, 2 * maxRequest)
        if let bytes = byteCount(table, "nbd-max-buffered", path: "limits") {
            if bytes < 2 * UInt64(maxRequest) || bytes > 1 << 40 {
                report(
                    table["nbd-max-buffered"]?.line, "limits.nbd-max-buffered",
                    "expected between twice nbd-max-request (\(2 * maxRequest) bytes) and 1TiB, found \(bytes) bytes")
            } else {
                buffered = Int(bytes)
            }
        }
        return Configuration.Limits(
            nbdMaxRequestBytes: maxRequest,
            nbdMaxInFlight: integer(table, "nbd-max-in-flight", path: "limits", range: 1...4096)
                ?? defaults.nbdMaxInFlight,
            nbdMaxConnections: integer(table, "nbd-max-connections", path: "limits", range: 1...65536)
                ?? defaults.nbdMaxConnections,
            nbdMaxBufferedBytes: buffered
        )
    }

    private mutating func readVolume(_ table: TOMLTable, path: String) -> Configuration.Volume? {
        checkKeys(
            table, path: path,
            allowed: [
                "name", "protocol", "size", "backing", "metadata", "nbd-export", "read-only", "split-brain",
                "resync-rate", "resync-min-rate", "activity-log-extents",
            ])
        let name = string(table, "name", path: path, required: true)
        let protocolText = string(table, "protocol", path: path, required: false) ?? "C"
        let replication = Configuration.ReplicationProtocol(rawValue: protocolText.uppercased())
        if replication == nil {
            report(
                table["protocol"]?.line, "\(path).protocol", "expected \"A\", \"B\" or \"C\", found \"\(protocolText)\""
            )
        }
        let size = byteCount(table, "size", path: path)
        if let size, size == 0 || size % 512 != 0 {
            report(
                table["size"]?.line, "\(path).size", "expected a positive multiple of 512 bytes, found \(size) bytes")
        }
        let backing = string(table, "backing", path: path, required: true)
        if let backing, !backing.hasPrefix("/") {
            report(table["backing"]?.line, "\(path).backing", "expected an absolute path, found \"\(backing)\"")
        }
        let metadata = string(table, "metadata", path: path, required: false)
        let export = string(table, "nbd-export", path: path, required: false)
        let readOnly = boolean(table, "read-only", path: path) ?? false
        let resyncRate = rate(table, "resync-rate", path: path)
        let resyncMinRate = rate(table, "resync-min-rate", path: path)
        if let resyncRate, let resyncMinRate, resyncMinRate > resyncRate {
            report(
                table["resync-min-rate"]?.line, "\(path).resync-min-rate",
                "expected at most resync-rate (\(Units.formatByteCount(resyncRate))/s), found "
                    + "\(Units.formatByteCount(resyncMinRate))/s")
        }
        let activityLogExtents = integer(
            table, "activity-log-extents", path: path, range: Configuration.Volume.activityLogExtentsRange)
        let policyText = string(table, "split-brain", path: path, required: false) ?? "disconnect"
        let policy = SplitBrainPolicy(rawValue: policyText)
        if policy == nil {
            let known = SplitBrainPolicy.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            report(
                table["split-brain"]?.line, "\(path).split-brain", "expected one of \(known), found \"\(policyText)\"")
        }
        if let name, !isName(name) {
            report(table["name"]?.line, "\(path).name", "expected letters, digits, '-', '_' or '.', found \"\(name)\"")
        }
        guard let name, let backing, let replication else { return nil }
        return Configuration.Volume(
            name: name, protocol: replication, sizeBytes: size, backing: backing, metadata: metadata,
            nbdExport: export ?? name, readOnly: readOnly, splitBrainPolicy: policy ?? .disconnect,
            resyncRateBytesPerSecond: resyncRate,
            resyncMinRateBytesPerSecond: resyncMinRate ?? Configuration.Volume.defaultResyncMinRate,
            activityLogExtents: activityLogExtents ?? Configuration.Volume.defaultActivityLogExtents
        )
    }

    /// A rate such as `"100MiB/s"`, at least 1 MiB/s.
    private mutating func rate(_ table: TOMLTable, _ key: String, path: String) -> UInt64? {
        guard let value = table[key] else { return nil }
        guard case .string(let text) = value.value else {
            report(value.line, "\(path).\(key)", "expected a rate such as \"100MiB/s\", found \(value.value.typeName)")
            return nil
        }
        let perSecond = text.hasSuffix("/s") ? String(text.dropLast(2)) : text
        guard let bytes = Units.parseByteCount(perSecond), bytes >= 1 << 20 else {
            report(
                value.line, "\(path).\(key)",
                "expected a rate of at least 1MiB/s such as \"100MiB/s\", found \"\(text)\"")
            return nil
        }
        return bytes
    }

    private mutating func readGroup(_ table: TOMLTable, path: String) -> Configuration.Group? {
        checkKeys(table, path: path, allowed: ["name", "failback", "nodes", "resources"])
        let name = string(table, "name", path: path, required: true)
        let failbackText = string(table, "failback", path: path, required: false) ?? "manual"
        let failback = Configuration.Failback(rawValue: failbackText)
        if failback == nil {
            report(
                table["failback"]?.line, "\(path).failback",
                "expected \"manual\" or \"auto\", found \"\(failbackText)\"")
        }
        let nodes = stringArray(table, "nodes", path: path) ?? []
        var resources: [Configuration.Resource] = []
        switch table["resources"]?.value {
        case nil:
            break
        case .array(let elements)?:
            for (index, element) in elements.enumerated() {
                if let resource = readResource(element, path: "\(path).resources[\(index)]") {
                    resources.append(resource)
                }
            }
        case .some(let other):
            report(
                table["resources"]?.line, "\(path).resources", "expected an array of tables, found \(other.typeName)")
        }
        guard let name, let failback else { return nil }
        return Configuration.Group(name: name, failback: failback, nodes: nodes, resources: resources)
    }

    private mutating func readResource(_ node: TOMLNode, path: String) -> Configuration.Resource? {
        guard case .table(let table) = node.value else {
            report(node.line, path, "expected a table such as { type = \"ip\", ... }, found \(node.value.typeName)")
            return nil
        }
        let typeText = string(table, "type", path: path, required: true)
        guard let typeText else { return nil }
        guard let type = Configuration.ResourceType(rawValue: typeText) else {
            let known = Configuration.ResourceType.allCases.map(\.rawValue).joined(separator: ", ")
            report(table["type"]?.line, "\(path).type", "expected one of \(known), found \"\(typeText)\"")
            return nil
        }
        checkKeys(table, path: path, allowed: ["type"] + type.requiredKeys + type.optionalKeys)
        var parameters: [String: String] = [:]
        for key in table.keys where key != "type" {
            guard let value = table[key] else { continue }
            switch value.value {
            case .string(let text): parameters[key] = text
            case .integer(let number): parameters[key] = String(number)
            case .boolean(let flag): parameters[key] = String(flag)
            case .table(let inner) where key == "params":
                for innerKey in inner.keys {
                    guard case .string(let text)? = inner[innerKey]?.value else {
                        report(inner[innerKey]?.line, "\(path).params.\(innerKey)", "expected a string")
                        continue
                    }
                    parameters["params.\(innerKey)"] = text
                }
            default:
                report(value.line, "\(path).\(key)", "expected a string, found \(value.value.typeName)")
            }
        }
        for key in type.requiredKeys where table[key] == nil {
            report(table.line, "\(path).\(key)", "missing; a resource of type \"\(typeText)\" needs it")
        }
        let resource = Configuration.Resource(type: type, parameters: parameters)
        if case .failure(let error) = ResourceSpec.make(group: "", index: 0, resource: resource) {
            report(table[error.key]?.line ?? table.line, "\(path).\(error.key)", error.reason)
        }
        return resource
    }

    // MARK: Cross-checks

    /// Reports every table of a section whose `key` (or, when absent, `fallbackKey`) repeats an earlier one.
    private mutating func checkUnique(
        _ sectionTables: [TOMLTable], section: String, what: String, key: String, fallbackKey: String? = nil
    ) {
        var firstLines: [String: Int] = [:]
        for (index, table) in sectionTables.enumerated() {
            guard let node = table[key] ?? fallbackKey.flatMap({ table[$0] }), case .string(let name) = node.value
            else { continue }
            if let firstLine = firstLines[name] {
                report(
                    node.line, "\(section)[\(index)].\(key)",
                    "duplicate \(what) \"\(name)\" (first defined on line \(firstLine))")
            } else {
                firstLines[name] = node.line
            }
        }
    }

    /// Reports groups naming nodes or volumes that no section defines. Names are taken from the
    /// tables themselves, so a volume with an unrelated error is not also reported as undefined.
    private mutating func checkReferences(groupTables: [TOMLTable], nodeTables: [TOMLTable], volumeTables: [TOMLTable])
    {
        let names = { (tables: [TOMLTable]) -> Set<String> in
            Set(tables.compactMap { if case .string(let name)? = $0["name"]?.value { name } else { nil } })
        }
        let nodeNames = names(nodeTables)
        let volumeNames = names(volumeTables)
        for (groupIndex, table) in groupTables.enumerated() {
            if case .array(let nodes)? = table["nodes"]?.value {
                for case .string(let name) in nodes.map(\.value) where !nodeNames.contains(name) {
                    report(
                        table["nodes"]?.line, "group[\(groupIndex)].nodes",
                        "node \"\(name)\" is referenced but not defined by any [[node]]")
                }
            }
            guard case .array(let resources)? = table["resources"]?.value else { continue }
            for (index, resource) in resources.enumerated() {
                guard case .table(let settings) = resource.value, case .string(let volume)? = settings["volume"]?.value,
                    !volumeNames.contains(volume)
                else { continue }
                report(
                    resource.line, "group[\(groupIndex)].resources[\(index)].volume",
                    "volume \"\(volume)\" is referenced but not defined by any [[volume]]")
            }
        }
    }

    // MARK: Typed access

    private mutating func checkKeys(_ table: TOMLTable, path: String, allowed: [String]) {
        for key in table.keys where !allowed.contains(key) {
            let full = path.isEmpty ? key : "\(path).\(key)"
            let hint = closest(to: key, in: allowed).map { " (did you mean \"\($0)\"?)" } ?? ""
            report(table[key]?.line, full, "unknown key\(hint); expected one of \(allowed.joined(separator: ", "))")
        }
    }

    private mutating func table(_ root: TOMLTable, _ key: String, required: Bool) -> TOMLTable? {
        switch root[key]?.value {
        case .table(let table)?:
            return table
        case nil:
            if required { report(nil, key, "missing section [\(key)]") }
            return nil
        case .some(let other):
            report(root[key]?.line, key, "expected a table [\(key)], found \(other.typeName)")
            return nil
        }
    }

    private mutating func tables(_ root: TOMLTable, _ key: String) -> [TOMLTable] {
        switch root[key]?.value {
        case .array(let elements)?:
            return elements.compactMap { element in
                if case .table(let table) = element.value { return table }
                report(element.line, key, "expected [[\(key)]] tables, found \(element.value.typeName)")
                return nil
            }
        case nil:
            return []
        case .some(let other):
            report(root[key]?.line, key, "expected [[\(key)]] tables, found \(other.typeName)")
            return []
        }
    }

    mutating func string(_ table: TOMLTable, _ key: String, path: String, required: Bool) -> String? {
        switch table[key]?.value {
        case .string(let text)?:
            if text.isEmpty { report(table[key]?.line, "\(path).\(key)", "must not be empty") }
            return text.isEmpty ? nil : text
        case nil:
            if required { report(table.line == 0 ? nil : table.line, "\(path).\(key)", "missing; expected a string") }
            return nil
        case .some(let other):
            report(table[key]?.line, "\(path).\(key)", "expected a string, found \(other.typeName)")
            return nil
        }
    }

    mutating func integer(_ table: TOMLTable, _ key: String, path: String, range: ClosedRange<Int>) -> Int? {
        switch table[key]?.value {
        case .integer(let number)?:
            guard let value = Int(exactly: number), range.contains(value) else {
                report(
                    table[key]?.line, "\(path).\(key)",
                    "expected an integer from \(range.lowerBound) to \(range.upperBound), found \(number)")
                return nil
            }
            return value
        case nil:
            return nil
        case .some(let other):
            report(table[key]?.line, "\(path).\(key)", "expected an integer, found \(other.typeName)")
            return nil
        }
    }

    mutating func boolean(_ table: TOMLTable, _ key: String, path: String) -> Bool? {
        switch table[key]?.value {
        case .boolean(let flag)?: return flag
        case nil: return nil
        case .some(let other):
            report(table[key]?.line, "\(path).\(key)", "expected true or false, found \(other.typeName)")
            return nil
        }
    }

    mutating func stringArray(_ table: TOMLTable, _ key: String, path: String) -> [String]? {
        switch table[key]?.value {
        case .array(let elements)?:
            var strings: [String] = []
            for element in elements {
                guard case .string(let text) = element.value else {
                    report(
                        element.line, "\(path).\(key)",
                        "expected an array of strings, found \(element.value.typeName) in it")
                    continue
                }
                strings.append(text)
            }
            return strings
        case nil:
            return nil
        case .some(let other):
            report(table[key]?.line, "\(path).\(key)", "expected an array of strings, found \(other.typeName)")
            return nil
        }
    }

    mutating func byteCount(_ table: TOMLTable, _ key: String, path: String) -> UInt64? {
        switch table[key]?.value {
        case .string(let text)?:
            guard let bytes = Units.parseByteCount(text) else {
                report(
                    table[key]?.line, "\(path).\(key)",
                    "expected a size such as \"100GiB\", \"512MiB\" or \"4096\", found \"\(text)\"")
                return nil
            }
            return bytes
        case .integer(let number)? where number >= 0:
            return UInt64(number)
        case nil:
            return nil
        case .some(let other):
            report(table[key]?.line, "\(path).\(key)", "expected a size such as \"100GiB\", found \(other.typeName)")
            return nil
        }
    }

    mutating func duration(_ table: TOMLTable, _ key: String, path: String) -> Duration? {
        switch table[key]?.value {
        case .string(let text)?:
            guard let value = Units.parseDuration(text) else {
                report(
                    table[key]?.line, "\(path).\(key)",
                    "expected a duration such as \"200ms\", \"2s\" or \"1m30s\", found \"\(text)\"")
                return nil
            }
            return value
        case nil:
            return nil
        case .some(let other):
            report(table[key]?.line, "\(path).\(key)", "expected a duration such as \"2s\", found \(other.typeName)")
            return nil
        }
    }

    // MARK: Helpers

    private func isName(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 64
            && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    private func closest(to key: String, in candidates: [String]) -> String? {
        candidates.map { ($0, editDistance($0, key)) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }?.0
    }

    private func editDistance(_ left: String, _ right: String) -> Int {
        let a = Array(left)
        let b = Array(right)
        guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
