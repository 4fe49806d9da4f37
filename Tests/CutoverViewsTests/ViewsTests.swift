import CutoverSystem
import XCTest

@testable import CutoverViews

/// The operator views as pure functions: an `overview` reply in, lines, HTML and SVG out.
final class ViewsTests: XCTestCase {
    /// A canary at 10 % with a release plan, shadow figures and one server down.
    static func sampleReply(serverName: String = "10.0.0.7:8080", reason: String = "canary", appName: String = "web") -> JSON {
        func row(_ color: String, share: Int, rps: Double, ok: Int, errors: Int, p99: Int, up: Bool) -> JSON {
            [
                "color": .string(color), "share_bp": .int(share), "requests": .int(ok + errors), "rps": .double(rps),
                "2xx": .int(ok), "4xx": 3, "5xx": .int(errors), "5xx_rate": .double(Double(errors) / Double(ok + errors)),
                "p50_us": 1_200, "p95_us": 3_400, "p99_us": .int(p99),
                "servers": [["server": .string(serverName), "health": up ? "up" : "down", "last_result": up ? "200 in 2 ms" : "connect: refused",
                             "drained": false, "routable": .bool(up)]],
                "series": ["seconds": 4, "end": "2026-12-06T17:40:01.000Z", "rps": [nil, 10.0, 12.0, 11.0],
                           "5xx_rate": [nil, 0.0, 0.0, .double(Double(errors) / Double(ok + errors))],
                           "p50_us": [nil, 1_000, 1_100, 1_200], "p95_us": [nil, 3_000, 3_200, 3_400], "p99_us": [nil, 5_000, .int(p99), 6_000]],
            ]
        }
        return [
            "ok": true, "time": "2026-12-06T17:40:01.250Z", "active": "blue", "previous": "green", "generation": 7,
            "last_switch": ["at": "2026-12-06T17:30:02.000Z", "from": "green", "to": "blue", "drained_at": "2026-12-06T17:30:03.000Z"],
            "window": "10s",
            "release": ["plan": "three-waves", "candidate": "green", "phase": "running", "step": 2, "steps": 3, "held_ms": 45_000,
                        "waiting_for": "hold 5m"],
            "colors": ["blue": ["ready": true, "reasons": [], "inflight": 3, "upstream_connections": 12],
                       "green": ["ready": false, "reasons": ["no green server of app web is up"], "inflight": 0, "upstream_connections": 1]],
            "apps": [[
                "name": .string(appName), "stable": "blue", "candidate": "green", "candidate_bp": 1_000, "mirror_bp": 500,
                "pins": ["blue": 0, "green": 2],
                "colors": [row("blue", share: 9_000, rps: 812.3, ok: 8_123, errors: 0, p99: 5_600, up: true),
                           row("green", share: 1_000, rps: 90.1, ok: 890, errors: 11, p99: 9_100, up: false)],
                "shadow": ["compared": 1_234, "candidate_failed": 2, "diff_rate": 0.004,
                           "diff_rates": ["status": 0.0, "headers": 0.004, "body": 0.0], "headers": [["name": "x-version"]]],
            ]],
            "audit": [["time": "2026-12-06T17:30:02.000Z", "event": "weight", "from": "blue", "to": "green", "reason": .string(reason),
                       "actor": ["uid": 1000, "user": "alice"]]],
        ]
    }

    func testReadsTheOverviewReply() throws {
        let overview = try Overview(Self.sampleReply())
        XCTAssertEqual(overview.active, "blue")
        XCTAssertEqual(overview.generation, 7)
        XCTAssertEqual(overview.release?.step, 2)
        XCTAssertEqual(overview.apps.first?.candidateBasisPoints, 1_000)
        XCTAssertEqual(overview.apps.first?.rows.map(\.color), ["blue", "green"])
        XCTAssertEqual(overview.apps.first?.rows[1].series.p99, [nil, 5_000, 9_100, 6_000])
        XCTAssertEqual(overview.apps.first?.shadow?.compared, 1_234)
        XCTAssertThrowsError(try Overview(["ok": false, "error": "the data plane is not running"])) { error in
            XCTAssertEqual((error as? Overview.ReadError)?.description, "the data plane is not running")
        }
    }

    func testFrameShowsSplitReleaseRowsAndSparklines() throws {
        let overview = try Overview(Self.sampleReply())
        let lines = TopFrame.render(overview, .init(width: 160, height: 30, source: "run/admin.sock"))
        let text = lines.joined(separator: "\n")
        XCTAssertEqual(lines.count, 30, "a full-screen frame fills the terminal")
        XCTAssertTrue(lines[0].hasPrefix("cutover top  run/admin.sock  17:40:01"), lines[0])
        XCTAssertTrue(text.contains("active blue  previous green  candidate green web 10%  pins web→green 2  generation 7"), text)
        XCTAssertTrue(text.contains("last switch 17:30:02 green→blue, old color drained 17:30:03"), text)
        XCTAssertTrue(text.contains("release three-waves → green step 2/3 running, held 45s, waiting for hold 5m"), text)
        XCTAssertTrue(text.contains("green not ready (no green server of app web is up)"), text)
        let blue = try XCTUnwrap(lines.first { $0.hasPrefix("web blue") })
        XCTAssertTrue(blue.contains("90%") && blue.contains("812") && blue.contains("0.00%") && blue.contains("5.60ms") && blue.contains("1/1"), blue)
        let green = try XCTUnwrap(lines.first { $0.hasPrefix("web green") })
        XCTAssertTrue(green.contains("10%") && green.contains("90.1") && green.contains("1.22%") && green.contains("9.10ms") && green.contains("0/1"), green)
        XCTAssertTrue(green.contains("▁") && green.contains("█"), "p99 and 5xx sparklines: \(green)")
        XCTAssertTrue(text.contains("web green 10.0.0.7:8080 down: connect: refused"), text)
        XCTAssertTrue(text.contains("shadow web: mirror 5%, 1234 compared, diff 0.40%"), text)
        XCTAssertTrue(text.contains("17:30:02 weight blue→green by alice: canary"), text)
        XCTAssertEqual(lines.last, TopFrame.footer)
        XCTAssertFalse(text.contains("\u{1B}"), "no escape sequences without colors")
    }

    func testFrameAdaptsToTheTerminal() throws {
        let overview = try Overview(Self.sampleReply())
        for width in [40, 80, 120, 200] {
            let lines = TopFrame.render(overview, .init(width: width, height: 12))
            XCTAssertEqual(lines.count, 12)
            for line in lines { XCTAssertLessThanOrEqual(line.count, width, "width \(width): \(line)") }
        }
        let narrow = TopFrame.render(overview, .init(width: 80, height: 40)).joined(separator: "\n")
        XCTAssertTrue(narrow.contains("P99") && narrow.contains("5XX%"), "the key columns stay at 80 columns: \(narrow)")
        XCTAssertFalse(narrow.contains("▁"), "no room for sparklines at 80 columns")
        // Colors: escapes around the color names, and the visible width unchanged.
        let colored = TopFrame.render(overview, .init(width: 160, height: 30, colors: true))
        XCTAssertTrue(colored.joined().contains("\u{1B}[1;34mblue"), "blue in blue")
        let stripped = colored.map { $0.replacingOccurrences(of: #"\u{1B}\[[0-9;]*m"#, with: "", options: .regularExpression) }
        for line in stripped { XCTAssertLessThanOrEqual(line.count, 160) }
        // A prompt replaces the keys.
        let prompting = TopFrame.render(overview, .init(width: 100, height: 20, prompt: "switch to (blue/green): gr"))
        XCTAssertEqual(prompting.last, "switch to (blue/green): gr")
        // Without figures: the error, and still a frame.
        let failed = TopFrame.render(nil, .init(width: 100, height: 10, fetchError: "cannot reach run/admin.sock"))
        XCTAssertEqual(failed[1], "cannot fetch: cannot reach run/admin.sock")
    }

    func testTerminalNamesCannotInjectEscapes() throws {
        let overview = try Overview(Self.sampleReply(serverName: "evil\u{1B}[2J:80", appName: "a\u{1B}]0;x\u{07}"))
        let text = TopFrame.render(overview, .init(width: 200, height: 40)).joined(separator: "\n")
        XCTAssertFalse(text.contains("\u{1B}"), text)
        XCTAssertTrue(text.contains("evil?[2J:80"), text)
    }

    func testSparkline() {
        XCTAssertEqual(Sparkline.render([0, 1, 2, 4, 8], width: 5), "▁▂▃▅█")
        XCTAssertEqual(Sparkline.render([nil, nil, 0, 0], width: 4), "  ▁▁")
        XCTAssertEqual(Sparkline.render([1, 1, 1, 1, 9, 1], width: 3), "▂▂█", "each character the max of its seconds")
        XCTAssertEqual(Sparkline.render([0.001, 0], width: 2, floor: 0.01), "▂▁", "a small rate under a floor stays low but visible")
        XCTAssertEqual(Sparkline.render([1, 2], width: 4), "  ▅█", "short series right-aligned")
        XCTAssertEqual(Sparkline.render([], width: 3), "   ")
    }

    func testKeysMakeAdminCommandsOnlyAfterConfirmation() {
        func type(_ text: String, into keys: inout TopKeys) -> [TopKeys.Action] {
            text.utf8.map { keys.key($0) }
        }
        var keys = TopKeys()
        XCTAssertNil(keys.prompt)
        XCTAssertEqual(keys.key(UInt8(ascii: "x")), TopKeys.Action.none)
        _ = type("s", into: &keys)
        XCTAssertEqual(keys.prompt, "switch to (blue/green): ")
        _ = type("purple\r", into: &keys)
        XCTAssertEqual(keys.prompt, "('purple' is not blue or green) switch to (blue/green): ")
        _ = type("green\rhotfix 12\r", into: &keys)
        XCTAssertEqual(keys.prompt, "switch green reason hotfix 12 — send? [y/N] ")
        XCTAssertEqual(keys.key(UInt8(ascii: "y")), .send("switch green reason hotfix 12"))
        XCTAssertNil(keys.prompt)

        _ = type("w", into: &keys)
        _ = type("green\r", into: &keys)
        _ = type("101\r", into: &keys)
        XCTAssertEqual(keys.prompt, "('101' is not a percentage from 0 to 100) green's share in percent (0-100): ")
        _ = type("12.5\r\r", into: &keys)
        XCTAssertEqual(keys.key(UInt8(ascii: "y")), .send("weight green 12.5"))

        _ = type("r", into: &keys)
        _ = type("bad\u{7F}\u{7F}\u{7F}errors\r", into: &keys)
        XCTAssertEqual(keys.key(UInt8(ascii: "n")), .redraw, "anything but y cancels")
        XCTAssertNil(keys.prompt)

        _ = type("r\r", into: &keys)
        XCTAssertEqual(keys.key(UInt8(ascii: "Y")), .send("rollback"))
        _ = type("p", into: &keys)
        _ = type("looks off\r", into: &keys)
        XCTAssertEqual(keys.key(UInt8(ascii: "y")), .send("release pause reason looks off"))
        _ = type("u", into: &keys)
        XCTAssertEqual(keys.key(UInt8(ascii: "y")), .send("release resume"))
        _ = type("s", into: &keys)
        XCTAssertEqual(keys.key(0x1B), .redraw, "Esc cancels")
        XCTAssertNil(keys.prompt)
        XCTAssertEqual(keys.key(UInt8(ascii: "q")), .quit)
        XCTAssertEqual(keys.key(0x03), .quit, "Ctrl-C quits outside a prompt")
    }

    func testStatusPageEscapesHostileNames() throws {
        let hostile = "<script>alert(1)</script>"
        let overview = try Overview(Self.sampleReply(serverName: "\(hostile):80", reason: "\"><img src=x onerror=alert(2)>", appName: "a<b>&'"))
        let html = StatusPage.render(overview)
        XCTAssertFalse(html.contains("<script"), "no script element, hostile or not")
        XCTAssertFalse(html.contains("<img"), html)
        XCTAssertFalse(html.contains("<b>"), html)
        XCTAssertTrue(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;:80"))
        XCTAssertTrue(html.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"))
        XCTAssertTrue(html.contains("app a&lt;b&gt;&amp;&#39;"))
        XCTAssertFalse(html.contains("http://") && !html.contains("http://www.w3.org/2000/svg"), "no external resource")
        XCTAssertFalse(html.contains("src=\"http"), "nothing fetched from elsewhere")
    }

    func testStatusPageFigures() throws {
        let html = StatusPage.render(try Overview(Self.sampleReply()), refreshSeconds: 5)
        XCTAssertTrue(html.hasPrefix("<!DOCTYPE html>"))
        XCTAssertTrue(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"))
        XCTAssertTrue(html.contains("<td data-figure=\"rps\" data-color=\"blue\">812</td>"), html)
        XCTAssertTrue(html.contains("<td data-figure=\"5xx-rate\" data-color=\"green\" class=\"bad\">1.22%</td>"))
        XCTAssertTrue(html.contains("<td data-figure=\"p99\" data-color=\"green\">9.10ms</td>"))
        XCTAssertTrue(html.contains("step <span data-figure=\"release-step\">2/3</span>"))
        XCTAssertTrue(html.contains("width:90.00%;background:#2563eb"), "the split bar")
        XCTAssertEqual(html.components(separatedBy: "<svg ").count - 1, 3, "latency, 5xx rate and requests by color")
        XCTAssertTrue(html.contains("requests per second by color"))
        XCTAssertTrue(html.contains("connect: refused"))
        XCTAssertFalse(html.contains("<form") || html.contains("method=\"post\""), "read-only")
    }

    func testSVGCharts() {
        let lines = SVGChart.lines(title: "t", series: [.init(name: "a", color: "#000", values: [1, nil, 3, 4])],
                                   yLabel: { String($0) }, xLabels: ("-4s", "now"))
        XCTAssertTrue(lines.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        XCTAssertEqual(lines.components(separatedBy: "<polyline").count - 1, 2, "a gap splits the line")
        XCTAssertEqual(SVGChart.niceCeiling(0), 1)
        XCTAssertEqual(SVGChart.niceCeiling(7), 10)
        XCTAssertEqual(SVGChart.niceCeiling(2.2), 2.5)
        XCTAssertEqual(SVGChart.niceCeiling(1_300), 2_000)
        let plot = SVGChart.percentiles(title: "latency by percentile",
                                        curves: [("cutover", "#000", [(50, 100), (99, 300), (99.9, 900)])])
        XCTAssertTrue(plot.contains("99.9%") && plot.contains("cutover"))
        let timeline = SVGChart.timeline(title: "switch", buckets: [(5, 0, 0), (2, 3, 0), (0, 5, 1)], bucketMs: 10, marks: [1])
        XCTAssertTrue(timeline.contains("stroke-dasharray=\"3,2\""), "the switch mark")
        XCTAssertTrue(timeline.contains("30 ms"))
    }

    func testFormat() {
        XCTAssertEqual(Format.duration(micros: 850), "850µs")
        XCTAssertEqual(Format.duration(micros: 1_234), "1.23ms")
        XCTAssertEqual(Format.duration(micros: 45_600), "45.6ms")
        XCTAssertEqual(Format.duration(micros: 2_500_000), "2.50s")
        XCTAssertEqual(Format.share(basisPoints: 1_000), "10%")
        XCTAssertEqual(Format.share(basisPoints: 250), "2.5%")
        XCTAssertEqual(Format.share(basisPoints: 1), "0.01%")
        XCTAssertEqual(Format.percent(0.012345), "1.23%")
        XCTAssertEqual(Format.elapsed(ms: 255_000), "4m15s")
        XCTAssertEqual(Format.count(123_456), "123k")
        XCTAssertEqual(Format.html("a<b>\"c\"&'d'\u{01}"), "a&lt;b&gt;&quot;c&quot;&amp;&#39;d&#39;")
    }
}

extension JSON: ExpressibleByNilLiteral, ExpressibleByFloatLiteral {
    public init(nilLiteral: ()) { self = .null }
    public init(floatLiteral value: Double) { self = .double(value) }
}
