import CutoverSystem
import CutoverViews

/// The benchmark report's pictures: latency by percentile and switch timelines, as SVG files
/// a Markdown page can embed. One run (`--plot`) or several proxies side by side (`plot`).
public enum BenchPlots {
    /// Line colors for the proxies of a comparison, in the order given.
    static let palette = ["#7c3aed", "#059669", "#d97706", "#db2777", "#0891b2"]

    /// Percentile curves of one or more `load --json` reports (their `percentile_curve`).
    public static func percentiles(title: String, reports: [(name: String, report: JSON)]) -> String {
        var curves: [(name: String, color: String, points: [(percentile: Double, micros: Double)])] = []
        for (index, entry) in reports.enumerated() {
            let points: [(percentile: Double, micros: Double)] = (entry.report["percentile_curve"]?.arrayValue ?? []).compactMap { point in
                guard let pair = point.arrayValue, pair.count == 2, let p = pair[0].doubleValue, let micros = pair[1].doubleValue else { return nil }
                return (p, micros)
            }
            curves.append((entry.name, palette[index % palette.count], points))
        }
        return SVGChart.percentiles(title: title, curves: curves)
    }

    /// Switch timelines side by side, each cut to `fromMs…toMs` around its first switch.
    public static func timelines(_ runs: [(name: String, timeline: SwitchTimeline)], fromMs: Int, toMs: Int) -> String {
        let panelWidth = 380
        let height = 220
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(panelWidth * max(1, runs.count))\" height=\"\(height)\" viewBox=\"0 0 \(panelWidth * max(1, runs.count)) \(height)\">"
        for (index, run) in runs.enumerated() {
            let (buckets, marks) = run.timeline.window(fromMs: fromMs, toMs: toMs)
            let panel = SVGChart.timeline(title: "\(run.name): answers by color", buckets: buckets, bucketMs: run.timeline.bucketMs, marks: marks,
                                          width: panelWidth, height: height)
            svg += "<svg x=\"\(index * panelWidth)\" " + panel.dropFirst("<svg ".count)
        }
        return svg + "</svg>\n"
    }

    /// The timeline of one `switch` run, cut to its first switches.
    public static func timeline(name: String, _ timeline: SwitchTimeline) -> String {
        timelines([(name, timeline)], fromMs: -200, toMs: 1_000)
    }
}
