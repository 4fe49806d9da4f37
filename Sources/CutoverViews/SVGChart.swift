import Glibc  // log10

/// Inline SVG charts, drawn on the server: the status page's time series and the benchmark
/// report's percentile curves and switch timelines. Plain SVG 1.1 text — no script, no external
/// font or stylesheet — so a page or a file works offline and in any browser. Every label
/// goes through `Format.html`.
public enum SVGChart {
    public struct Series: Sendable {
        public var name: String
        /// A CSS color.
        public var color: String
        public var values: [Double?]
        public var dashed: Bool

        public init(name: String, color: String, values: [Double?], dashed: Bool = false) {
            self.name = name
            self.color = color
            self.values = values
            self.dashed = dashed
        }
    }

    public static let blue = "#2563eb"
    public static let green = "#16a34a"
    public static let gray = "#6b7280"
    public static let red = "#dc2626"

    public static func color(named name: String) -> String {
        name == "blue" ? blue : name == "green" ? green : gray
    }

    struct Frame {
        let width: Double
        let height: Double
        let left = 56.0
        let right = 12.0
        let top = 26.0
        let bottom = 30.0

        var plotWidth: Double { width - left - right }
        var plotHeight: Double { height - top - bottom }
    }

    /// Lines over time, one value per step, oldest left; gaps where a value is nil.
    /// `xLabels` name the left and right ends ("-5m", "now").
    public static func lines(title: String, series: [Series], width: Int = 560, height: Int = 200, yLabel: (Double) -> String,
                             xLabels: (String, String), floor: Double = 0) -> String {
        let frame = Frame(width: Double(width), height: Double(height))
        let count = series.map(\.values.count).max() ?? 0
        let top = niceCeiling(max(floor, series.flatMap { $0.values.compactMap { $0 } }.max() ?? 0))
        var svg = open(frame, title: title)
        svg += axes(frame, top: top, yLabel: yLabel, xLabels: xLabels)
        for line in series {
            svg += path(line.values, count: count, frame: frame, top: top, color: line.color, dashed: line.dashed)
        }
        svg += legend(frame, series.map { ($0.name, $0.color) })
        return svg + "</svg>"
    }

    /// Values stacked over time (requests by color): a switch shows as one band giving way to
    /// the other.
    public static func stacked(title: String, series: [Series], width: Int = 560, height: Int = 200, yLabel: (Double) -> String,
                               xLabels: (String, String)) -> String {
        let frame = Frame(width: Double(width), height: Double(height))
        let count = series.map(\.values.count).max() ?? 0
        var totals = [Double](repeating: 0, count: count)
        for line in series {
            for (index, value) in line.values.enumerated() { totals[index] += value ?? 0 }
        }
        let top = niceCeiling(totals.max() ?? 0)
        var svg = open(frame, title: title)
        svg += axes(frame, top: top, yLabel: yLabel, xLabels: xLabels)
        var base = [Double](repeating: 0, count: count)
        for line in series {
            guard count > 0 else { break }
            var upper: [(Double, Double)] = []
            var lower: [(Double, Double)] = []
            for index in 0..<count {
                let value = index < line.values.count ? (line.values[index] ?? 0) : 0
                let x = xPosition(index, count: count, frame: frame)
                lower.append((x, yPosition(base[index], top: top, frame: frame)))
                base[index] += value
                upper.append((x, yPosition(base[index], top: top, frame: frame)))
            }
            let points = (upper + lower.reversed()).map { "\(number($0.0)),\(number($0.1))" }.joined(separator: " ")
            svg += "<polygon points=\"\(points)\" fill=\"\(line.color)\" fill-opacity=\"0.55\" stroke=\"\(line.color)\" stroke-width=\"1\"/>"
        }
        svg += legend(frame, series.map { ($0.name, $0.color) })
        return svg + "</svg>"
    }

    /// Latency by percentile, HdrHistogram style: the x axis in "nines" (50 %, 90 %, 99 %,
    /// 99.9 %, …, each the same width), latency on y. `points` are (percentile, microseconds).
    public static func percentiles(title: String, curves: [(name: String, color: String, points: [(percentile: Double, micros: Double)])],
                                   width: Int = 720, height: Int = 360) -> String {
        let frame = Frame(width: Double(width), height: Double(height))
        let maxNines = 5.0  // 99.999 %
        func x(_ percentile: Double) -> Double {
            let nines = min(maxNines, -log10(max(1e-9, 1 - percentile / 100)))
            return frame.left + nines / maxNines * frame.plotWidth
        }
        let top = niceCeiling(curves.flatMap { $0.points.map(\.micros) }.max() ?? 0)
        var svg = open(frame, title: title)
        svg += yAxis(frame, top: top, yLabel: { Format.duration(micros: Int($0)) })
        for (label, percentile) in [("0%", 0.0), ("90%", 90), ("99%", 99), ("99.9%", 99.9), ("99.99%", 99.99), ("99.999%", 99.999)] {
            let position = x(percentile)
            svg += "<line x1=\"\(number(position))\" y1=\"\(number(frame.top))\" x2=\"\(number(position))\" y2=\"\(number(frame.top + frame.plotHeight))\" stroke=\"#e5e7eb\"/>"
            svg += text(label, x: position, y: frame.top + frame.plotHeight + 16, anchor: "middle")
        }
        svg += text("percentile", x: frame.left + frame.plotWidth / 2, y: frame.height - 2, anchor: "middle")
        for curve in curves {
            let points = curve.points.map { "\(number(x($0.percentile))),\(number(yPosition($0.micros, top: top, frame: frame)))" }
            svg += "<polyline points=\"\(points.joined(separator: " "))\" fill=\"none\" stroke=\"\(curve.color)\" stroke-width=\"2\"/>"
        }
        svg += legend(frame, curves.map { ($0.name, $0.color) })
        return svg + "</svg>"
    }

    /// One switch timeline: answers per time bucket stacked by color, the switch commands as
    /// vertical marks. `buckets` are (blue, green, failed) counts; `marks` bucket indexes.
    public static func timeline(title: String, buckets: [(blue: Int, green: Int, failed: Int)], bucketMs: Int, marks: [Int],
                                width: Int = 360, height: Int = 200) -> String {
        let frame = Frame(width: Double(width), height: Double(height))
        let count = buckets.count
        let top = niceCeiling(Double(buckets.map { $0.blue + $0.green + $0.failed }.max() ?? 0))
        var svg = open(frame, title: title)
        svg += yAxis(frame, top: top, yLabel: { String(Int($0)) })
        let barWidth = count == 0 ? 0 : frame.plotWidth / Double(count)
        for (index, bucket) in buckets.enumerated() {
            var base = 0.0
            for (value, color) in [(bucket.blue, blue), (bucket.green, green), (bucket.failed, red)] where value > 0 {
                let y0 = yPosition(base, top: top, frame: frame)
                base += Double(value)
                let y1 = yPosition(base, top: top, frame: frame)
                svg += "<rect x=\"\(number(frame.left + Double(index) * barWidth))\" y=\"\(number(y1))\" width=\"\(number(max(0.5, barWidth)))\" height=\"\(number(y0 - y1))\" fill=\"\(color)\"/>"
            }
        }
        for mark in marks {
            let x = frame.left + (Double(mark) + 0.5) * barWidth
            svg += "<line x1=\"\(number(x))\" y1=\"\(number(frame.top))\" x2=\"\(number(x))\" y2=\"\(number(frame.top + frame.plotHeight))\" stroke=\"#111827\" stroke-dasharray=\"3,2\"/>"
        }
        svg += text("0", x: frame.left, y: frame.top + frame.plotHeight + 16, anchor: "start")
        svg += text("\(count * bucketMs) ms", x: frame.left + frame.plotWidth, y: frame.top + frame.plotHeight + 16, anchor: "end")
        svg += text("answers per \(bucketMs) ms; dashed: switch", x: frame.left + frame.plotWidth / 2, y: frame.height - 2, anchor: "middle")
        svg += legend(frame, [("blue", blue), ("green", green), ("failed", red)])
        return svg + "</svg>"
    }

    // MARK: Parts

    private static func open(_ frame: Frame, title: String) -> String {
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(number(frame.width)) \(number(frame.height))\" width=\"\(number(frame.width))\" height=\"\(number(frame.height))\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">"
            + "<title>\(Format.html(title))</title><rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>"
            + text(title, x: frame.left, y: 15, anchor: "start", weight: "bold")
    }

    private static func axes(_ frame: Frame, top: Double, yLabel: (Double) -> String, xLabels: (String, String)) -> String {
        yAxis(frame, top: top, yLabel: yLabel)
            + text(xLabels.0, x: frame.left, y: frame.top + frame.plotHeight + 16, anchor: "start")
            + text(xLabels.1, x: frame.left + frame.plotWidth, y: frame.top + frame.plotHeight + 16, anchor: "end")
    }

    private static func yAxis(_ frame: Frame, top: Double, yLabel: (Double) -> String) -> String {
        var svg = ""
        for step in 0...4 {
            let value = top * Double(step) / 4
            let y = yPosition(value, top: top, frame: frame)
            svg += "<line x1=\"\(number(frame.left))\" y1=\"\(number(y))\" x2=\"\(number(frame.left + frame.plotWidth))\" y2=\"\(number(y))\" stroke=\"\(step == 0 ? "#9ca3af" : "#e5e7eb")\"/>"
            svg += text(yLabel(value), x: frame.left - 4, y: y + 4, anchor: "end")
        }
        return svg
    }

    private static func path(_ values: [Double?], count: Int, frame: Frame, top: Double, color: String, dashed: Bool) -> String {
        var segments: [[String]] = [[]]
        for (index, value) in values.enumerated() {
            guard let value else {
                if !(segments.last?.isEmpty ?? true) { segments.append([]) }
                continue
            }
            segments[segments.count - 1].append("\(number(xPosition(index, count: count, frame: frame))),\(number(yPosition(value, top: top, frame: frame)))")
        }
        var svg = ""
        for segment in segments where !segment.isEmpty {
            let points = segment.count == 1 ? [segment[0], segment[0]] : segment
            svg += "<polyline points=\"\(points.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\"\(dashed ? " stroke-dasharray=\"4,3\"" : "")/>"
        }
        return svg
    }

    private static func legend(_ frame: Frame, _ entries: [(String, String)]) -> String {
        var svg = ""
        var x = frame.left + frame.plotWidth
        for (name, color) in entries.reversed() {
            let label = Format.html(name)
            x -= Double(label.count) * 6 + 22
            svg += "<rect x=\"\(number(x))\" y=\"7\" width=\"10\" height=\"10\" fill=\"\(color)\"/>"
            svg += text(name, x: x + 13, y: 16, anchor: "start")
        }
        return svg
    }

    private static func text(_ content: String, x: Double, y: Double, anchor: String, weight: String? = nil) -> String {
        "<text x=\"\(number(x))\" y=\"\(number(y))\" text-anchor=\"\(anchor)\"\(weight.map { " font-weight=\"\($0)\"" } ?? "") fill=\"#111827\">\(Format.html(content))</text>"
    }

    static func xPosition(_ index: Int, count: Int, frame: Frame) -> Double {
        frame.left + (count <= 1 ? 0 : Double(index) / Double(count - 1) * frame.plotWidth)
    }

    static func yPosition(_ value: Double, top: Double, frame: Frame) -> Double {
        frame.top + frame.plotHeight - (top <= 0 ? 0 : min(1, max(0, value / top)) * frame.plotHeight)
    }

    /// 1, 2, 2.5 or 5 times a power of ten, at least `value` (a scale that reads).
    static func niceCeiling(_ value: Double) -> Double {
        guard value > 0, value.isFinite else { return 1 }
        var magnitude = 1.0
        while magnitude * 10 <= value { magnitude *= 10 }
        while magnitude > value { magnitude /= 10 }
        for factor in [1.0, 2, 2.5, 5, 10] where magnitude * factor >= value { return magnitude * factor }
        return magnitude * 10
    }

    static func number(_ value: Double) -> String {
        Format.decimal(value, places: 1)
    }
}

