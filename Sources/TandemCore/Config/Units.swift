/// Parsing of the sizes and durations administrators write in the config file.
public enum Units {
    /// Parses a size such as `"100GiB"`, `"512KiB"`, `"4096"` (bytes) or `"1.5TB"`.
    ///
    /// Binary units (KiB, MiB, GiB, TiB, PiB) are powers of 1024, decimal ones (KB, MB, GB, TB, PB) of
    /// 1000; `B` or no unit means bytes. Returns `nil` for anything else, or for a size that does not fit.
    public static func parseByteCount(_ text: String) -> UInt64? {
        let trimmed = text.filter { $0 != " " && $0 != "_" }
        let numberEnd = trimmed.firstIndex { !($0.isNumber || $0 == ".") } ?? trimmed.endIndex
        let number = trimmed[..<numberEnd]
        let unit = trimmed[numberEnd...].lowercased()
        let multipliers: [String: Double] = [
            "": 1, "b": 1,
            "k": 0x1p10, "kib": 0x1p10, "m": 0x1p20, "mib": 0x1p20, "g": 0x1p30, "gib": 0x1p30,
            "t": 0x1p40, "tib": 0x1p40, "p": 0x1p50, "pib": 0x1p50,
            "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15,
        ]
        guard !number.isEmpty, let multiplier = multipliers[unit] else { return nil }
        if let whole = UInt64(number) {
            let (product, overflow) = whole.multipliedReportingOverflow(by: UInt64(multiplier))
            return overflow ? nil : product
        }
        guard let fraction = Double(number) else { return nil }
        let bytes = (fraction * multiplier).rounded()
        guard bytes >= 0, bytes < 1.8e19 else { return nil }
        return UInt64(bytes)
    }

    /// Parses a duration such as `"200ms"`, `"2s"`, `"1m30s"`, `"1.5s"`, `"500us"` or `"1h"`.
    ///
    /// A bare number is refused: a duration in the config file always says its unit.
    public static func parseDuration(_ text: String) -> Duration? {
        var rest = Substring(text.filter { $0 != " " })
        guard !rest.isEmpty else { return nil }
        // Seconds, in a Double: a value that does not fit a `Duration` (or is absurd) is refused
        // here, before the conversion that would trap.
        var totalSeconds = 0.0
        let units: [(String, Double)] = [
            ("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600),
        ]
        while !rest.isEmpty {
            let numberEnd = rest.firstIndex { !($0.isNumber || $0 == ".") } ?? rest.endIndex
            guard let value = Double(rest[..<numberEnd]), value.isFinite else { return nil }
            rest = rest[numberEnd...]
            let unitEnd = rest.firstIndex { $0.isNumber || $0 == "." } ?? rest.endIndex
            let unitName = String(rest[..<unitEnd])
            guard let unit = units.first(where: { $0.0 == unitName })?.1 else { return nil }
            totalSeconds += value * unit
            guard totalSeconds <= longestDurationSeconds else { return nil }
            rest = rest[unitEnd...]
        }
        let whole = totalSeconds.rounded(.down)
        let nanoseconds = ((totalSeconds - whole) * 1e9).rounded()
        return .seconds(Int64(whole)) + .nanoseconds(Int64(nanoseconds))
    }

    /// The longest duration the config takes: a hundred years, far beyond any timeout, far below
    /// what `Duration` holds.
    public static let longestDurationSeconds = 100.0 * 365 * 86_400

    /// Formats a byte count with a binary unit, for humans (`"1.5 GiB"`).
    public static func formatByteCount(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var unitIndex = 0
        while value >= 1024, unitIndex < units.count - 1 {
            value /= 1024
            unitIndex += 1
        }
        if unitIndex == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        let text = rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
        return "\(text) \(units[unitIndex])"
    }

    /// Formats a duration for humans: `"250ms"`, `"2s"`, `"1.5s"`, `"3m20s"`.
    public static func formatDuration(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        if milliseconds < 1000 { return "\(milliseconds)ms" }
        if milliseconds < 60_000 {
            return milliseconds % 1000 == 0
                ? "\(milliseconds / 1000)s" : "\(Double(milliseconds / 100) / 10)s"
        }
        let seconds = milliseconds / 1000
        return seconds % 60 == 0 ? "\(seconds / 60)m" : "\(seconds / 60)m\(seconds % 60)s"
    }
}
