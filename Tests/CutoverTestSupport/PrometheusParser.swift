import Foundation

/// A strict reader of Prometheus text exposition format 0.0.4, as a scraper sees it: every
/// rule it checks throws with the line that broke it. Returns the samples by series.
package struct PrometheusExposition {
    package struct Series: Hashable, CustomStringConvertible {
        package let name: String
        package let labels: [String: String]
        package var description: String {
            name + "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",") + "}"
        }
    }

    package struct Violation: Error, CustomStringConvertible {
        package let description: String
    }

    package private(set) var samples: [Series: Double] = [:]
    package private(set) var types: [String: String] = [:]
    package private(set) var helps: [String: String] = [:]

    package func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples[Series(name: name, labels: labels)]
    }

    package init(_ text: String) throws {
        guard text.hasSuffix("\n") else { throw Violation(description: "the exposition must end with a newline") }
        var finishedFamilies = Set<String>()
        var currentFamily: String? = nil
        var order: [Series] = []
        for (index, line) in text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            func fail(_ why: String) -> Violation { Violation(description: "line \(index + 1) '\(line)': \(why)") }
            if line.isEmpty { throw fail("empty line") }
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                guard parts.count >= 3, parts[0] == "#", parts[1] == "HELP" || parts[1] == "TYPE" else {
                    continue  // a plain comment
                }
                let name = String(parts[2])
                guard Self.isMetricName(name) else { throw fail("bad metric name") }
                if finishedFamilies.contains(name) || (currentFamily != nil && currentFamily != name && samplesSeen(of: name, order)) {
                    throw fail("metadata after the family's samples")
                }
                if parts[1] == "HELP" {
                    guard helps[name] == nil else { throw fail("second HELP for \(name)") }
                    helps[name] = parts.count > 3 ? String(parts[3]) : ""
                } else {
                    guard types[name] == nil else { throw fail("second TYPE for \(name)") }
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                        throw fail("bad TYPE")
                    }
                    guard !samplesSeen(of: name, order) else { throw fail("TYPE after samples of \(name)") }
                    types[name] = String(parts[3])
                }
                if let current = currentFamily, current != name { finishedFamilies.insert(current) }
                currentFamily = name
                continue
            }
            let (series, value) = try Self.parseSample(line, fail: fail)
            let family = Self.family(of: series.name, types: types)
            guard types[family] != nil else { throw fail("sample before its family's TYPE") }
            if let current = currentFamily, current != family {
                finishedFamilies.insert(current)
            }
            if finishedFamilies.contains(family) { throw fail("samples of \(family) are not contiguous") }
            currentFamily = family
            guard samples[series] == nil else { throw fail("duplicate series") }
            if types[family] == "counter" && !(value >= 0) { throw fail("negative counter") }
            samples[series] = value
            order.append(series)
        }
        try checkHistograms(order)
    }

    private func samplesSeen(of family: String, _ order: [Series]) -> Bool {
        order.contains { Self.family(of: $0.name, types: types) == family }
    }

    static func family(of name: String, types: [String: String]) -> String {
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let base = String(name.dropLast(suffix.count))
            if types[base] == "histogram" || types[base] == "summary" { return base }
        }
        return name
    }

    /// Buckets ascending by `le`, cumulative, ending at +Inf equal to `_count`; `_sum` present.
    private func checkHistograms(_ order: [Series]) throws {
        for (family, type) in types where type == "histogram" {
            var groups: [[String: String]: [(le: Double, value: Double)]] = [:]
            for series in order where series.name == family + "_bucket" {
                guard let le = series.labels["le"] else { throw Violation(description: "\(series): bucket without le") }
                var rest = series.labels
                rest["le"] = nil
                let bound = le == "+Inf" ? Double.infinity : Double(le)
                guard let bound else { throw Violation(description: "\(series): bad le") }
                groups[rest, default: []].append((bound, samples[series]!))
            }
            for (labels, buckets) in groups {
                for pair in zip(buckets, buckets.dropFirst()) {
                    guard pair.0.le < pair.1.le else { throw Violation(description: "\(family)\(labels): le not ascending") }
                    guard pair.0.value <= pair.1.value else { throw Violation(description: "\(family)\(labels): buckets not cumulative") }
                }
                guard buckets.last?.le == .infinity else { throw Violation(description: "\(family)\(labels): no +Inf bucket") }
                guard let count = samples[Series(name: family + "_count", labels: labels)],
                      samples[Series(name: family + "_sum", labels: labels)] != nil
                else { throw Violation(description: "\(family)\(labels): _sum or _count missing") }
                guard count == buckets.last!.value else { throw Violation(description: "\(family)\(labels): +Inf bucket ≠ _count") }
            }
        }
    }

    /// [a-zA-Z_:][a-zA-Z0-9_:]*
    static func isMetricName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        func letter(_ b: UInt8) -> Bool { (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x3A }
        guard let first = bytes.first, letter(first) else { return false }
        return bytes.allSatisfy { letter($0) || ($0 >= 0x30 && $0 <= 0x39) }
    }

    /// [a-zA-Z_][a-zA-Z0-9_]*
    static func isLabelName(_ name: String) -> Bool {
        !name.contains(":") && isMetricName(name)
    }

    private static func parseSample(_ line: Substring, fail: (String) -> Violation) throws -> (Series, Double) {
        var index = line.startIndex
        while index < line.endIndex, line[index] != "{", line[index] != " " { index = line.index(after: index) }
        let name = String(line[line.startIndex..<index])
        guard isMetricName(name) else { throw fail("bad metric name") }
        var labels: [String: String] = [:]
        if index < line.endIndex, line[index] == "{" {
            index = line.index(after: index)
            while true {
                guard index < line.endIndex else { throw fail("unterminated labels") }
                if line[index] == "}" { index = line.index(after: index); break }
                var nameEnd = index
                while nameEnd < line.endIndex, line[nameEnd] != "=" { nameEnd = line.index(after: nameEnd) }
                let label = String(line[index..<nameEnd])
                guard isLabelName(label), nameEnd < line.endIndex else { throw fail("bad label name '\(label)'") }
                index = line.index(after: nameEnd)
                guard index < line.endIndex, line[index] == "\"" else { throw fail("label value not quoted") }
                index = line.index(after: index)
                var value = ""
                while true {
                    guard index < line.endIndex else { throw fail("unterminated label value") }
                    let character = line[index]
                    if character == "\"" { index = line.index(after: index); break }
                    if character == "\\" {
                        index = line.index(after: index)
                        guard index < line.endIndex else { throw fail("dangling escape") }
                        switch line[index] {
                        case "\\": value.append("\\")
                        case "\"": value.append("\"")
                        case "n": value.append("\n")
                        default: throw fail("bad escape in label value")
                        }
                    } else {
                        value.append(character)
                    }
                    index = line.index(after: index)
                }
                guard labels[label] == nil else { throw fail("duplicate label \(label)") }
                labels[label] = value
                guard index < line.endIndex else { throw fail("unterminated labels") }
                if line[index] == "," { index = line.index(after: index) } else if line[index] != "}" { throw fail("expected , or }") }
            }
        }
        guard index < line.endIndex, line[index] == " " else { throw fail("no space before the value") }
        let rest = line[line.index(after: index)...].split(separator: " ")
        guard rest.count == 1 || rest.count == 2 else { throw fail("bad value/timestamp") }
        let text = String(rest[0])
        let value: Double
        switch text {
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        case "NaN": value = .nan
        default:
            guard let parsed = Double(text) else { throw fail("bad value") }
            value = parsed
        }
        return (Series(name: name, labels: labels), value)
    }
}
