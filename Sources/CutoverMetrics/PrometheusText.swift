import CutoverSystem

/// Builds Prometheus text exposition format 0.0.4: each family once, with its HELP and TYPE
/// lines before its samples; label values escaped (backslash, double quote, newline).
package struct PrometheusText {
    package private(set) var text = ""
    private var declared = Set<String>()

    package init() {}

    package enum Kind: String {
        case counter, gauge, histogram
    }

    package mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        guard declared.insert(name).inserted else { return }
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
    }

    mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String> = [:], _ value: Double) {
        sample(name, labels.map { ($0.key, $0.value) }, value)
    }

    package mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{"
            text += labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",")
            text += "}"
        }
        text += " \(Self.format(value))\n"
    }

    /// A histogram from non-cumulative bucket counts (the last one is +Inf): cumulative
    /// `_bucket` lines, then `_sum` and `_count`.
    package mutating func histogram(_ name: String, _ labels: [(String, String)], bounds: [Double], counts: [UInt64], sum: Double) {
        var cumulative: UInt64 = 0
        for (index, count) in counts.enumerated() {
            cumulative += count
            let bound = index < bounds.count ? Self.format(bounds[index]) : "+Inf"
            sample(name + "_bucket", labels + [("le", bound)], Double(cumulative))
        }
        sample(name + "_sum", labels, sum)
        sample(name + "_count", labels, Double(cumulative))
    }

    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }

    static func escapeLabel(_ value: String) -> String {
        Escaping.escaped(value, .prometheusLabel)
    }

    static func escapeHelp(_ value: String) -> String {
        Escaping.escaped(value, .prometheusHelp)
    }
}
