/// The status page (`GET /` on the metrics listener): the same figures as `cutover top`, as
/// one HTML document with inline CSS and SVG. No script is needed — a `<meta refresh>` reloads
/// it — and nothing is fetched from elsewhere, so it works offline and with JavaScript off.
/// Read-only: no form, no link that changes anything. Every text from the proxy (app and server
/// names, reasons, audit records) is escaped by `Format.html`.
public enum StatusPage {
    public static func render(_ overview: Overview, refreshSeconds: Int = 5) -> String {
        var html = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta http-equiv="refresh" content="\(refreshSeconds)">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>cutover: \(Format.html(overview.active)) active</title>
            <style>\(style)</style></head><body>
            """
        html += header(overview)
        if let release = overview.release { html += releaseSection(release) }
        for app in overview.apps { html += appSection(app, overview: overview) }
        html += auditSection(overview.audit)
        html += "<footer>Figures of the last \(Format.html(overview.window)); charts: the last \(chartSeconds(overview)) s, one point a second. "
        html += "This page reloads every \(refreshSeconds) s. The same figures as JSON: <a href=\"/status.json\">/status.json</a>; "
        html += "Prometheus: <a href=\"/metrics\">/metrics</a>. Generated \(Format.html(overview.time)).</footer>"
        return html + "</body></html>\n"
    }

    static let style = """
        body{font-family:system-ui,sans-serif;margin:1.2em;color:#111827;background:#f9fafb}
        h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.2em 0 .4em}
        .blue{color:#2563eb;font-weight:bold}.green{color:#16a34a;font-weight:bold}
        .bad{color:#dc2626;font-weight:bold}.dim{color:#6b7280}
        table{border-collapse:collapse;background:#fff;margin:.3em 0}
        th,td{border:1px solid #e5e7eb;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}
        th{background:#f3f4f6}td.l,th.l{text-align:left}
        section{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:.6em 1em;margin:1em 0}
        .split{display:flex;height:1.4em;width:100%;max-width:560px;border-radius:4px;overflow:hidden;margin:.4em 0}
        .split div{color:#fff;font-size:.85em;line-height:1.4em;padding-left:.4em;white-space:nowrap}
        .charts{display:flex;flex-wrap:wrap;gap:.6em}.charts svg{border:1px solid #e5e7eb}
        footer{color:#6b7280;font-size:.85em;margin-top:1.5em}
        """

    private static func chartSeconds(_ overview: Overview) -> Int {
        overview.apps.first?.rows.first?.series.p99.count ?? 0
    }

    private static func colorSpan(_ name: String) -> String {
        "<span class=\"\(name == "blue" || name == "green" ? name : "dim")\">\(Format.html(name))</span>"
    }

    private static func header(_ overview: Overview) -> String {
        var html = "<header><h1>cutover</h1><p id=\"colors\">active <span data-figure=\"active\">\(colorSpan(overview.active))</span>"
        if let previous = overview.previous { html += " · previous \(colorSpan(previous))" }
        html += " · generation <span data-figure=\"generation\">\(overview.generation)</span>"
        for color in overview.colors {
            html += " · \(colorSpan(color.name)) "
            html += color.ready ? "ready" : "<span class=\"bad\">not ready</span>"
            if !color.ready, !color.reasons.isEmpty { html += " (\(Format.html(color.reasons.joined(separator: "; "))))" }
            if let inflight = color.inflight { html += ", \(inflight) in flight" }
            if let connections = color.upstreamConnections { html += ", \(connections) upstream connections" }
        }
        html += "</p>"
        if let last = overview.lastSwitch {
            html += "<p>last switch \(Format.html(last.at)): \(colorSpan(last.from)) → \(colorSpan(last.to)), "
            html += last.drainedAt.map { "old color drained \(Format.html($0))" } ?? "old color still draining"
            html += "</p>"
        }
        return html + "</header>"
    }

    private static func releaseSection(_ release: Overview.Release) -> String {
        var html = "<section id=\"release\"><h2>Release \(Format.html(release.plan)) → \(colorSpan(release.candidate))</h2><p>"
        html += "step <span data-figure=\"release-step\">\(release.step)/\(release.steps)</span>, "
        html += "<span data-figure=\"release-phase\"\(release.phase == "rolled_back" ? " class=\"bad\"" : "")>\(Format.html(release.phase.replacingOccurrences(of: "_", with: " ")))</span>, "
        html += "held \(Format.elapsed(ms: release.heldMs))"
        if !release.waitingFor.isEmpty { html += ", waiting for \(Format.html(release.waitingFor))" }
        return html + "</p></section>"
    }

    private static func appSection(_ app: Overview.App, overview: Overview) -> String {
        let id = Format.html(app.name)
        var html = "<section class=\"app\" data-app=\"\(id)\"><h2>app \(id)</h2>"
        // The split as a bar: the stable color's share, then the candidate's.
        html += "<div class=\"split\" data-figure=\"split\">"
        for row in app.rows where row.shareBasisPoints > 0 {
            html += "<div style=\"width:\(Format.decimal(Double(row.shareBasisPoints) / 100, places: 2))%;background:\(SVGChart.color(named: row.color))\">"
            html += "\(Format.html(row.color)) \(Format.share(basisPoints: row.shareBasisPoints))</div>"
        }
        html += "</div>"
        let pins = app.pinned.filter { $0.value > 0 }.sorted { $0.key < $1.key }
        if !pins.isEmpty {
            html += "<p>pinned values: " + pins.map { "\(colorSpan($0.key)) \($0.value)" }.joined(separator: ", ") + "</p>"
        }
        html += "<table class=\"figures\"><tr><th class=\"l\">color</th><th>share</th><th>requests/s</th><th>2xx</th><th>4xx</th><th>5xx</th>"
        html += "<th>5xx rate</th><th>p50</th><th>p95</th><th>p99</th><th>servers up</th></tr>"
        for row in app.rows {
            let color = Format.html(row.color)
            func cell(_ figure: String, _ value: String, bad: Bool = false) -> String {
                "<td data-figure=\"\(figure)\" data-color=\"\(color)\"\(bad ? " class=\"bad\"" : "")>\(value)</td>"
            }
            let latency: (Int) -> String = { row.requests == 0 ? "-" : Format.duration(micros: $0) }
            html += "<tr><td class=\"l\">\(colorSpan(row.color))</td>"
            html += cell("share", Format.share(basisPoints: row.shareBasisPoints))
            html += cell("rps", Format.rate(row.requestsPerSecond))
            html += cell("2xx", String(row.ok2xx)) + cell("4xx", String(row.client4xx)) + cell("5xx", String(row.server5xx), bad: row.server5xx > 0)
            html += cell("5xx-rate", Format.percent(row.serverErrorRate), bad: row.serverErrorRate > 0)
            html += cell("p50", latency(row.p50)) + cell("p95", latency(row.p95)) + cell("p99", latency(row.p99))
            html += cell("servers-up", "\(row.serversUp)/\(row.servers.count)", bad: row.serversUp < row.servers.count) + "</tr>"
        }
        html += "</table>"
        html += charts(app)
        if let shadow = app.shadow {
            html += "<p data-figure=\"shadow\">shadow: mirror \(Format.share(basisPoints: shadow.mirrorBasisPoints)) of requests, "
            html += "\(shadow.compared) compared, diff <span\(shadow.diffRate > 0 ? " class=\"bad\"" : "")>\(Format.percent(shadow.diffRate))</span> "
            html += "(status \(Format.percent(shadow.statusRate)), headers \(Format.percent(shadow.headersRate)), body \(Format.percent(shadow.bodyRate)))"
            if shadow.candidateFailed > 0 { html += ", <span class=\"bad\">candidate failed \(shadow.candidateFailed)</span>" }
            if !shadow.topHeaders.isEmpty { html += "; headers that differ: \(Format.html(shadow.topHeaders.joined(separator: ", ")))" }
            html += "</p>"
        }
        html += "<table class=\"servers\"><tr><th class=\"l\">server</th><th class=\"l\">color</th><th class=\"l\">health</th>"
        html += "<th class=\"l\">routable</th><th class=\"l\">last check</th></tr>"
        for row in app.rows {
            for server in row.servers {
                html += "<tr data-server=\"\(Format.html(server.name))\"><td class=\"l\">\(Format.html(server.name))</td><td class=\"l\">\(colorSpan(row.color))</td>"
                html += "<td class=\"l\(server.health == "up" ? "" : " bad")\">\(Format.html(server.health))\(server.drained ? " (drained)" : "")</td>"
                html += "<td class=\"l\">\(server.routable ? "yes" : "<span class=\"bad\">no</span>")</td>"
                html += "<td class=\"l\">\(Format.html(server.lastResult ?? "-"))</td></tr>"
            }
        }
        return html + "</table></section>"
    }

    private static func charts(_ app: Overview.App) -> String {
        let seconds = app.rows.first?.series.p99.count ?? 0
        guard seconds > 0 else { return "" }
        let xLabels = ("-\(Format.elapsed(ms: seconds * 1_000))", "now")
        var latency: [SVGChart.Series] = []
        var errors: [SVGChart.Series] = []
        var requests: [SVGChart.Series] = []
        for row in app.rows {
            let color = SVGChart.color(named: row.color)
            latency.append(.init(name: "\(row.color) p99", color: color, values: row.series.p99))
            latency.append(.init(name: "\(row.color) p50", color: color, values: row.series.p50, dashed: true))
            errors.append(.init(name: row.color, color: color, values: row.series.serverErrorRate.map { $0.map { $0 * 100 } }))
            requests.append(.init(name: row.color, color: color, values: row.series.requestsPerSecond))
        }
        var html = "<div class=\"charts\">"
        html += SVGChart.lines(title: "latency (p99 solid, p50 dashed)", series: latency, yLabel: { Format.duration(micros: Int($0)) }, xLabels: xLabels)
        html += SVGChart.lines(title: "5xx rate", series: errors, yLabel: { Format.decimal($0, places: $0 < 1 ? 2 : 1) + "%" }, xLabels: xLabels, floor: 1)
        html += SVGChart.stacked(title: "requests per second by color", series: requests, yLabel: { Format.rate($0) }, xLabels: xLabels)
        return html + "</div>"
    }

    private static func auditSection(_ audit: [Overview.AuditEntry]) -> String {
        var html = "<section id=\"audit\"><h2>Last changes (audit log)</h2>"
        guard !audit.isEmpty else { return html + "<p class=\"dim\">no records (audit_log off, or nothing yet)</p></section>" }
        html += "<table><tr><th class=\"l\">time</th><th class=\"l\">event</th><th class=\"l\">change</th><th class=\"l\">by</th><th class=\"l\">reason</th></tr>"
        for entry in audit.reversed() {
            var change = ""
            if let from = entry.from, let to = entry.to { change = "\(colorSpan(from)) → \(colorSpan(to))" } else if let to = entry.to { change = colorSpan(to) }
            html += "<tr><td class=\"l\">\(Format.html(entry.time))</td><td class=\"l\">\(Format.html(entry.event))</td><td class=\"l\">\(change)</td>"
            html += "<td class=\"l\">\(Format.html(entry.user))</td><td class=\"l\">\(Format.html(entry.reason ?? ""))</td></tr>"
        }
        return html + "</table></section>"
    }
}
