/// One frame of `cutover top`: a pure function from the figures (and the terminal's size) to
/// lines. No I/O here: the command fetches, this draws, the tests compare.
public enum TopFrame {
    public struct Context: Sendable {
        public var width: Int
        public var height: Int
        /// ANSI colors (a terminal that has them, `NO_COLOR` unset).
        public var colors: Bool
        /// Where the figures come from (the admin socket), shown in the title.
        public var source: String
        /// Why the last fetch failed; the last good figures stay on screen under it.
        public var fetchError: String?
        /// The prompt being answered (replaces the key footer), and the last action's outcome.
        public var prompt: String?
        public var message: String?
        /// Hide the key footer (`--once`: nothing to press).
        public var keys: Bool

        public init(width: Int = 100, height: Int = 30, colors: Bool = false, source: String = "", fetchError: String? = nil,
                    prompt: String? = nil, message: String? = nil, keys: Bool = true) {
            self.width = width
            self.height = height
            self.colors = colors
            self.source = source
            self.fetchError = fetchError
            self.prompt = prompt
            self.message = message
            self.keys = keys
        }
    }

    public static let footer = "s switch  r rollback  p pause  u resume  w weight  q quit"

    public static func render(_ overview: Overview?, _ context: Context) -> [String] {
        let width = max(20, context.width)
        var lines: [StyledLine] = []
        var title = StyledLine()
        title.add("cutover top", .bold)
        title.add("  \(context.source)")
        if let overview { title.add("  \(Format.timeOfDay(overview.time))") }
        lines.append(title)
        if let error = context.fetchError {
            var line = StyledLine()
            line.add("cannot fetch: \(error)", .alert)
            lines.append(line)
        }
        guard let overview else {
            return finish(lines, context: context, width: width)
        }
        lines.append(header(overview))
        if let last = overview.lastSwitch {
            var line = StyledLine()
            line.add("last switch \(Format.timeOfDay(last.at)) ")
            line.add(last.from, .color(last.from))
            line.add("→")
            line.add(last.to, .color(last.to))
            line.add(last.drainedAt.map { ", old color drained \(Format.timeOfDay($0))" } ?? ", old color draining")
            lines.append(line)
        }
        if let release = overview.release {
            var line = StyledLine()
            line.add("release ", .bold)
            line.add("\(release.plan) → ")
            line.add(release.candidate, .color(release.candidate))
            line.add(" step \(release.step)/\(release.steps) \(release.phase.replacingOccurrences(of: "_", with: " ")), held \(Format.elapsed(ms: release.heldMs))",
                     release.phase == "rolled_back" ? .alert : .plain)
            if !release.waitingFor.isEmpty { line.add(", waiting for \(release.waitingFor)") }
            lines.append(line)
        }
        var readiness = StyledLine()
        for (index, color) in overview.colors.enumerated() {
            if index > 0 { readiness.add("   ") }
            readiness.add(color.name, .color(color.name))
            readiness.add(color.ready ? " ready" : " not ready", color.ready ? .plain : .alert)
            if !color.ready, let reason = color.reasons.first { readiness.add(" (\(reason))", .dim) }
        }
        lines.append(readiness)
        lines.append(StyledLine())
        lines += table(overview, width: width)
        for app in overview.apps {
            guard let shadow = app.shadow else { continue }
            var line = StyledLine()
            line.add("shadow \(app.name): mirror \(Format.share(basisPoints: shadow.mirrorBasisPoints)), \(shadow.compared) compared, diff ")
            line.add(Format.percent(shadow.diffRate), shadow.diffRate > 0 ? .alert : .plain)
            line.add(" (status \(Format.percent(shadow.statusRate)), headers \(Format.percent(shadow.headersRate)), body \(Format.percent(shadow.bodyRate)))")
            if shadow.candidateFailed > 0 { line.add(", candidate failed \(shadow.candidateFailed)", .alert) }
            if !shadow.topHeaders.isEmpty { line.add("; headers: \(shadow.topHeaders.joined(separator: ", "))", .dim) }
            lines.append(line)
        }
        if !overview.audit.isEmpty {
            lines.append(StyledLine())
            for entry in overview.audit.suffix(3) {
                var line = StyledLine()
                line.add("\(Format.timeOfDay(entry.time)) ", .dim)
                line.add(entry.event, .bold)
                if let from = entry.from, let to = entry.to { line.add(" \(from)→\(to)") } else if let to = entry.to { line.add(" \(to)") }
                line.add(" by \(entry.user)")
                if let reason = entry.reason { line.add(": \(reason)", .dim) }
                lines.append(line)
            }
        }
        return finish(lines, context: context, width: width)
    }

    /// The title, the body cut to the height, then the message and the keys (or the prompt)
    /// on the last lines.
    private static func finish(_ body: [StyledLine], context: Context, width: Int) -> [String] {
        var bottom: [StyledLine] = []
        if let message = context.message {
            var line = StyledLine()
            line.add(message, message.hasPrefix("error") ? .alert : .bold)
            bottom.append(line)
        }
        if let prompt = context.prompt {
            var line = StyledLine()
            line.add(prompt, .bold)
            bottom.append(line)
        } else if context.keys {
            var line = StyledLine()
            line.add(footer, .inverse)
            bottom.append(line)
        }
        let room = max(1, context.height - bottom.count)
        var lines = Array(body.prefix(room))
        if context.keys || context.prompt != nil {
            while lines.count < room { lines.append(StyledLine()) }
        }
        lines += bottom
        return lines.map { $0.rendered(width: width, colors: context.colors) }
    }

    private static func header(_ overview: Overview) -> StyledLine {
        var line = StyledLine()
        line.add("active ")
        line.add(overview.active, .color(overview.active))
        if let previous = overview.previous { line.add("  previous \(previous)") }
        let canaries = overview.apps.filter { $0.candidateBasisPoints > 0 }
        if !canaries.isEmpty {
            line.add("  candidate ")
            let candidate = canaries[0].candidate
            line.add(candidate, .color(candidate))
            let shares = canaries.map { "\($0.name) \(Format.share(basisPoints: $0.candidateBasisPoints))" }
            line.add(" " + shares.joined(separator: ", "))
        }
        let pinned = overview.apps.flatMap { app in app.pinned.filter { $0.value > 0 }.map { "\(app.name)→\($0.key) \($0.value)" } }
        if !pinned.isEmpty { line.add("  pins " + pinned.sorted().joined(separator: ", ")) }
        line.add("  generation \(overview.generation)")
        return line
    }

    // MARK: The table

    private struct Column: Sendable {
        let title: String
        let width: Int
        let priority: Int
        let value: @Sendable (Overview.App, Overview.Row, Overview.ColorState?) -> (String, Style)
    }

    private static let columns: [Column] = [
        Column(title: "SHARE", width: 7, priority: 0) { _, row, _ in (Format.share(basisPoints: row.shareBasisPoints), .plain) },
        Column(title: "RPS", width: 7, priority: 0) { _, row, _ in (Format.rate(row.requestsPerSecond), .plain) },
        Column(title: "2XX", width: 7, priority: 4) { _, row, _ in (Format.count(row.ok2xx), .plain) },
        Column(title: "4XX", width: 6, priority: 5) { _, row, _ in (Format.count(row.client4xx), .plain) },
        Column(title: "5XX", width: 6, priority: 3) { _, row, _ in (Format.count(row.server5xx), row.server5xx > 0 ? .alert : .plain) },
        Column(title: "5XX%", width: 7, priority: 0) { _, row, _ in (Format.percent(row.serverErrorRate), row.serverErrorRate > 0 ? .alert : .plain) },
        Column(title: "P50", width: 8, priority: 2) { _, row, _ in (row.requests == 0 ? "-" : Format.duration(micros: row.p50), .plain) },
        Column(title: "P95", width: 8, priority: 1) { _, row, _ in (row.requests == 0 ? "-" : Format.duration(micros: row.p95), .plain) },
        Column(title: "P99", width: 8, priority: 0) { _, row, _ in (row.requests == 0 ? "-" : Format.duration(micros: row.p99), .plain) },
        Column(title: "INFL", width: 5, priority: 6) { _, _, color in (color?.inflight.map(String.init) ?? "-", .plain) },
        Column(title: "CONN", width: 5, priority: 6) { _, _, color in (color?.upstreamConnections.map(String.init) ?? "-", .plain) },
        Column(title: "UP", width: 5, priority: 1) { _, row, _ in
            ("\(row.serversUp)/\(row.servers.count)", row.serversUp < row.servers.count ? .alert : .plain)
        },
    ]

    private static func table(_ overview: Overview, width: Int) -> [StyledLine] {
        let appWidth = min(16, max(3, overview.apps.map { $0.name.count }.max() ?? 3)) + 1
        let colorWidth = 6
        // Columns by priority until the line is full; the sparklines take what is left.
        var chosen = Set<Int>()
        var used = appWidth + colorWidth
        for priority in 0...6 {
            for (index, column) in columns.enumerated() where column.priority == priority && used + column.width <= width {
                chosen.insert(index)
                used += column.width
            }
        }
        let room = width - used
        let sparkWidth = room >= 2 * 10 + 2 ? min(60, (room - 2) / 2) : 0
        var header = StyledLine()
        header.add(pad("APP", appWidth) + pad("COLOR", colorWidth), .bold)
        for (index, column) in columns.enumerated() where chosen.contains(index) { header.add(padLeft(column.title, column.width - 1) + " ", .bold) }
        if sparkWidth > 0 {
            header.add(" " + pad("P99 \(overview.apps.first?.rows.first?.series.p99.count ?? 60)s", sparkWidth + 1), .bold)
            header.add(pad("5XX%", sparkWidth), .bold)
        }
        var lines = [header]
        for app in overview.apps {
            for row in app.rows {
                var line = StyledLine()
                line.add(pad(Format.terminal(app.name), appWidth))
                line.add(pad(row.color, colorWidth), .color(row.color))
                let colorState = overview.colors.first { $0.name == row.color }
                for (index, column) in columns.enumerated() where chosen.contains(index) {
                    let (text, style) = column.value(app, row, colorState)
                    line.add(padLeft(text, column.width - 1), style)
                    line.add(" ")
                }
                if sparkWidth > 0 {
                    line.add(" ")
                    line.add(Sparkline.render(row.series.p99, width: sparkWidth), .color(row.color))
                    line.add(" ")
                    let errors = Sparkline.render(row.series.serverErrorRate, width: sparkWidth, floor: 0.01)
                    line.add(errors, row.series.serverErrorRate.contains { ($0 ?? 0) > 0 } ? .alert : .dim)
                }
                lines.append(line)
            }
            for row in app.rows {
                for server in row.servers where server.health != "up" || server.drained {
                    var line = StyledLine()
                    line.add("  \(Format.terminal(app.name)) \(row.color) \(Format.terminal(server.name)) \(server.health)\(server.drained ? " (drained)" : "")",
                             server.health == "up" ? .dim : .alert)
                    if let result = server.lastResult { line.add(": \(Format.terminal(result))", .dim) }
                    lines.append(line)
                }
            }
        }
        return lines
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? String(text.prefix(max(0, width - 1))) + " " : text + String(repeating: " ", count: width - text.count)
    }

    static func padLeft(_ text: String, _ width: Int) -> String {
        text.count >= width ? String(text.prefix(width)) : String(repeating: " ", count: width - text.count) + text
    }
}

/// Unicode block sparklines: one character per bucket of seconds, scaled to the series' max.
public enum Sparkline {
    static let blocks: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]

    /// `values` squeezed into `width` characters (each the max of its seconds); a bucket with
    /// no sample is a space. `floor` is the smallest full scale (a 5xx rate of 0.1 % must not
    /// fill the line).
    public static func render(_ values: [Double?], width: Int, floor: Double = 0) -> String {
        guard width > 0 else { return "" }
        guard !values.isEmpty else { return String(repeating: " ", count: width) }
        var buckets: [Double?] = []
        let count = min(width, values.count)
        for bucket in 0..<count {
            let start = bucket * values.count / count
            let end = max(start + 1, (bucket + 1) * values.count / count)
            let present = values[start..<end].compactMap { $0 }
            buckets.append(present.max())
        }
        let top = max(floor, buckets.compactMap { $0 }.max() ?? 0)
        var text = String(repeating: " ", count: width - count)
        for value in buckets {
            guard let value else {
                text.append(" ")
                continue
            }
            guard top > 0, value > 0 else {
                text.append(blocks[0])
                continue
            }
            let level = Int((value / top * Double(blocks.count - 1)).rounded(.up))
            text.append(blocks[min(blocks.count - 1, max(1, level))])
        }
        return text
    }
}

/// Text with styles, cut to a width by visible characters before any escape is added.
struct StyledLine {
    private var parts: [(String, Style)] = []

    /// Every text is cleaned of control characters here: a name or reason from the proxy
    /// cannot move the cursor or retitle the terminal.
    mutating func add(_ text: String, _ style: Style = .plain) { parts.append((Format.terminal(text), style)) }

    func rendered(width: Int, colors: Bool) -> String {
        var out = ""
        var left = width
        for (text, style) in parts where left > 0 {
            let piece = text.count > left ? String(text.prefix(left)) : text
            left -= piece.count
            if colors, let code = style.ansi { out += "\u{1B}[\(code)m" + piece + "\u{1B}[0m" } else { out += piece }
        }
        if !colors {
            while out.hasSuffix(" ") { out.removeLast() }
        }
        return out
    }
}

enum Style: Sendable {
    case plain, bold, dim, alert, inverse
    case color(String)

    var ansi: String? {
        switch self {
        case .plain: return nil
        case .bold: return "1"
        case .dim: return "2"
        case .alert: return "1;31"
        case .inverse: return "7"
        case .color(let name): return name == "blue" ? "1;34" : name == "green" ? "1;32" : nil
        }
    }
}
