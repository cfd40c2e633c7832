/// Where a resource runs.
public enum RunOn: String, Sendable, Equatable, CaseIterable, Codable {
    /// Only on the primary (the default).
    case primary
    /// Only on the secondary: a service kept warm on the standby.
    case secondary
    /// On both nodes.
    case both

    /// Whether a node in `role` runs it.
    public func runs(on role: ClusterRole) -> Bool {
        switch self {
        case .primary: return role == .primary
        case .secondary: return role == .secondary
        case .both: return true
        }
    }
}

/// A resource's settings, typed: what the config's strings mean once checked.
public struct ResourceSpec: Sendable, Equatable {
    /// Unique within the cluster: the `name` key, or `GROUP-TYPE-INDEX`.
    public var name: String
    public var group: String
    public var type: Configuration.ResourceType
    public var parameters: [String: String]
    public var monitorInterval: Duration
    public var startTimeout: Duration
    public var stopTimeout: Duration
    public var monitorTimeout: Duration
    public var runOn: RunOn
    /// Restarts in place allowed within `restartWindow` before the group fails over.
    public var maxRestarts: Int
    public var restartWindow: Duration

    /// The defaults of the keys a resource may leave out.
    public static let defaultMonitorInterval = Duration.seconds(10)
    public static let defaultTimeout = Duration.seconds(20)
    public static let defaultMaxRestarts = 3
    public static let defaultRestartWindow = Duration.seconds(300)

    /// The typed view of `resource`, the `index`th of `group`; `nil` with the first problem's
    /// key and reason when a value does not parse.
    public static func make(group: String, index: Int, resource: Configuration.Resource) -> Result<
        ResourceSpec, ResourceSpecError
    > {
        let parameters = resource.parameters
        func duration(_ key: String, _ fallback: Duration) -> Result<Duration, ResourceSpecError> {
            guard let text = parameters[key] else { return .success(fallback) }
            guard let value = Units.parseDuration(text), value > .zero else {
                return .failure(
                    ResourceSpecError(key: key, reason: "expected a duration such as \"10s\", found \"\(text)\""))
            }
            return .success(value)
        }
        do {
            let runOnText = parameters["run-on"] ?? "primary"
            guard let runOn = RunOn(rawValue: runOnText) else {
                throw ResourceSpecError(
                    key: "run-on", reason: "expected primary, secondary or both, found \"\(runOnText)\"")
            }
            var maxRestarts = defaultMaxRestarts
            if let text = parameters["max-restarts"] {
                guard let value = Int(text), value >= 0 else {
                    throw ResourceSpecError(
                        key: "max-restarts", reason: "expected a count of 0 or more, found \"\(text)\"")
                }
                maxRestarts = value
            }
            return .success(
                ResourceSpec(
                    name: parameters["name"] ?? "\(group)-\(resource.type.rawValue)-\(index)", group: group,
                    type: resource.type, parameters: parameters,
                    monitorInterval: try duration("monitor-interval", defaultMonitorInterval).get(),
                    startTimeout: try duration("start-timeout", defaultTimeout).get(),
                    stopTimeout: try duration("stop-timeout", defaultTimeout).get(),
                    monitorTimeout: try duration("monitor-timeout", defaultTimeout).get(), runOn: runOn,
                    maxRestarts: maxRestarts, restartWindow: try duration("restart-window", defaultRestartWindow).get())
            )
        } catch let error as ResourceSpecError {
            return .failure(error)
        } catch {
            return .failure(ResourceSpecError(key: "", reason: "\(error)"))
        }
    }

    /// Every resource of `configuration`, typed, in group and start order.
    public static func all(in configuration: Configuration) -> [ResourceSpec] {
        configuration.groups.flatMap { group in
            group.resources.enumerated().compactMap { index, resource in
                try? make(group: group.name, index: index, resource: resource).get()
            }
        }
    }
}

/// A resource key whose value does not parse.
public struct ResourceSpecError: Error, Sendable, Equatable {
    public var key: String
    public var reason: String
}

/// What to do when a resource's monitor failed: restart it where it is, or move its group.
///
/// Restarts are counted within a sliding window: the `maxRestarts + 1`th failure inside
/// `restartWindow` moves the group to the peer.
public struct RestartPolicy: Sendable, Equatable {
    public enum Decision: Sendable, Equatable {
        /// Stop it and start it again here after `delay`; `attempt` counts from 1.
        case restart(attempt: Int, delay: Duration)
        /// Too many failures: the group goes to the peer.
        case failover(failures: Int)
    }

    public let maxRestarts: Int
    public let window: Duration
    /// Failure times inside the window, oldest first.
    public private(set) var failures: [Duration] = []
    /// Every failure since the last cleanup, as administrators see it.
    public private(set) var failCount = 0

    public init(maxRestarts: Int, window: Duration) {
        self.maxRestarts = maxRestarts
        self.window = window
    }

    /// The wait before the first restart; each further one within the window waits twice as long,
    /// up to `maxRestartDelay`. A resource that fails because of something outside it (the peer's
    /// address still answering, a device not yet there) gets time for that to clear, instead of
    /// using up its restarts within milliseconds.
    public static let firstRestartDelay = Duration.milliseconds(500)
    public static let maxRestartDelay = Duration.seconds(30)

    /// The wait before restart `attempt` (from 1).
    public static func restartDelay(attempt: Int) -> Duration {
        let doublings = min(max(attempt - 1, 0), 16)
        return min(firstRestartDelay * (1 << doublings), maxRestartDelay)
    }

    /// Records a failure at `now` and decides.
    public mutating func failed(at now: Duration) -> Decision {
        failures.removeAll { now - $0 >= window }
        failures.append(now)
        failCount += 1
        guard failures.count <= maxRestarts else { return .failover(failures: failures.count) }
        return .restart(attempt: failures.count, delay: Self.restartDelay(attempt: failures.count))
    }

    /// Forgets every failure (`tandem resource cleanup`).
    public mutating func cleanup() {
        failures = []
        failCount = 0
    }
}
