/// How figures read in the views: short, unit-bearing, the same in the terminal and the page.
public enum Format {
    /// Microseconds as µs, ms or s with at most three significant digits.
    public static func duration(micros value: Int) -> String {
        if value < 1_000 { return "\(value)µs" }
        if value < 1_000_000 { return decimal(Double(value) / 1_000, places: value < 10_000 ? 2 : value < 100_000 ? 1 : 0) + "ms" }
        return decimal(Double(value) / 1_000_000, places: value < 10_000_000 ? 2 : 1) + "s"
    }

    /// A rate (0…1) as a percentage with two decimals.
    public static func percent(_ rate: Double) -> String {
        decimal(rate * 100, places: 2) + "%"
    }

    /// Basis points (1/100 %) as a percentage: "10%", "2.5%", "0.01%".
    public static func share(basisPoints: Int) -> String {
        if basisPoints % 100 == 0 { return "\(basisPoints / 100)%" }
        var text = decimal(Double(basisPoints) / 100, places: 2)
        while text.hasSuffix("0") { text.removeLast() }
        return text + "%"
    }

    /// Requests per second: one decimal below 100, whole numbers above.
    public static func rate(_ value: Double) -> String {
        value < 100 ? decimal(value, places: 1) : String(Int(value.rounded()))
    }

    /// A count with a k or M suffix past 10,000.
    public static func count(_ value: Int) -> String {
        if value < 10_000 { return String(value) }
        if value < 10_000_000 { return decimal(Double(value) / 1_000, places: value < 100_000 ? 1 : 0) + "k" }
        return decimal(Double(value) / 1_000_000, places: 1) + "M"
    }

    /// Milliseconds as "45s", "4m15s", "2h03m".
    public static func elapsed(ms: Int) -> String {
        let seconds = max(0, ms) / 1_000
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3_600 { return "\(seconds / 60)m\(pad2(seconds % 60))s" }
        return "\(seconds / 3_600)h\(pad2(seconds / 60 % 60))m"
    }

    /// The time of day of an RFC 3339 timestamp ("2026-12-06T17:30:02.120Z" → "17:30:02").
    public static func timeOfDay(_ timestamp: String) -> String {
        guard let t = timestamp.firstIndex(of: "T") else { return timestamp }
        return String(timestamp[timestamp.index(after: t)...].prefix(8))
    }

    public static func decimal(_ value: Double, places: Int) -> String {
        guard value.isFinite else { return "-" }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        let whole = Int(scaled / scale)
        var text = (value < 0 && scaled > 0 ? "-" : "") + String(whole)
        if places > 0 {
            let fraction = Int(scaled) - whole * Int(scale)
            var digits = String(fraction)
            while digits.count < places { digits = "0" + digits }
            text += "." + digits
        }
        return text
    }

    private static func pad2(_ value: Int) -> String { value < 10 ? "0\(value)" : String(value) }

    /// Text for HTML element content and attribute values: `& < > " '` as entities, control
    /// characters dropped. Every name, reason and figure on the status page goes through here.
    public static func html(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\n", "\t": out.unicodeScalars.append(" ")
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F { continue }
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Text for a terminal: control characters (escape sequences a hostile server name could
    /// carry) become `?`.
    public static func terminal(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) ? "?" : $0 }))
    }
}
