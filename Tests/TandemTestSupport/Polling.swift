import Foundation

/// The one way tests wait: poll a condition until it holds or a deadline passes. No test sleeps
/// a fixed time to let something settle.
public enum Polling {
    /// Whether `condition` held within `seconds`, polled every `every`.
    public static func until(
        seconds: Double, every: Duration = .milliseconds(100), _ condition: () throws -> Bool
    ) rethrows -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < deadline {
            if try condition() { return true }
            let (whole, fraction) = every.components
            usleep(useconds_t(whole * 1_000_000 + fraction / 1_000_000_000_000))
        }
        return try condition()
    }

    /// The same, for async tests: sleeps the task between polls (never blocks a thread of the
    /// cooperative pool).
    public static func eventually(
        seconds: Double, every: Duration = .milliseconds(20), _ condition: () async throws -> Bool
    ) async throws -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: every)
        }
        return try await condition()
    }
}
