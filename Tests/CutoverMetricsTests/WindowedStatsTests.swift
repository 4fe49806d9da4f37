import CutoverTestSupport
import CutoverMetrics
import XCTest

/// Sliding windows rotate with the injected clock: no test waits for real time.
final class WindowedStatsTests: XCTestCase {
    private func sample(_ outcome: WindowedStats.Outcome, status: UInt16 = 200, latency: UInt64, upstream: Int64 = -1,
                        bytesIn: UInt64 = 0, bytesOut: UInt64 = 0) -> RequestSample {
        RequestSample(outcome: outcome, status: status, latencyMicros: latency, upstreamMicros: upstream,
                      bytesIn: bytesIn, bytesOut: bytesOut)
    }

    func testWindowsForgetWhatLeftThemAndTotalsKeepIt() {
        var stats = WindowedStats()
        for _ in 0..<3 { stats.record(sample(.success, latency: 1_000, upstream: 800, bytesIn: 100, bytesOut: 2_000), at: 100) }
        stats.record(sample(.serverError, status: 500, latency: 50_000), at: 104)
        stats.record(sample(.connectFailure, status: 502, latency: 2_000), at: 104)

        var ten = stats.figures(.tenSeconds, at: 105)
        XCTAssertEqual(ten.requests, 5)
        XCTAssertEqual(ten.count(.success), 3)
        XCTAssertEqual(ten.bytesOut, 6_000)
        XCTAssertEqual(ten.serverErrorRate, 0.4, accuracy: 1e-9, "a 5xx and a connect failure out of five")
        XCTAssertEqual(ten.upstreamCount, 3, "only requests that got a response head have an upstream latency")
        XCTAssertEqual(ten.upstreamMeanMicros, 800)

        ten = stats.figures(.tenSeconds, at: 110)
        XCTAssertEqual(ten.requests, 2, "second 100 left the 10 s window at 110")
        XCTAssertEqual(stats.figures(.tenSeconds, at: 114).requests, 0)

        XCTAssertEqual(stats.figures(.oneMinute, at: 159).requests, 5)
        XCTAssertEqual(stats.figures(.oneMinute, at: 160).requests, 0, "the minute moves in ten-second steps")
        XCTAssertEqual(stats.figures(.fiveMinutes, at: 359).requests, 5, "minute 1 (100…119 s) is in the five minutes ending with minute 5")
        XCTAssertEqual(stats.figures(.fiveMinutes, at: 360).requests, 0, "the five minutes move in one-minute steps")
        XCTAssertEqual(stats.figures(.total, at: 10_000).requests, 5)
        XCTAssertEqual(stats.totals.statusCodes[500], 1)
        XCTAssertEqual(stats.totals.statusCodes[502], 1)
        XCTAssertEqual(stats.totals.upstreamLatency.count, 3)
    }

    func testRecordingAfterALongPauseStartsClean() {
        var stats = WindowedStats()
        stats.record(sample(.success, latency: 10), at: 0)
        stats.record(sample(.success, latency: 20), at: 3_600)  // an hour later: every slot was left behind
        XCTAssertEqual(stats.figures(.tenSeconds, at: 3_600).requests, 1)
        XCTAssertEqual(stats.figures(.fiveMinutes, at: 3_600).requests, 1)
        XCTAssertEqual(stats.figures(.total, at: 3_600).requests, 2)
        // A slot reused after ten seconds holds only its new second.
        stats.record(sample(.success, latency: 30), at: 3_610)
        XCTAssertEqual(stats.figures(.tenSeconds, at: 3_610).requests, 1)
    }

    func testWindowPercentilesComeFromMergedSlots() {
        var stats = WindowedStats()
        for second in Int64(0)..<10 {
            for _ in 0..<99 { stats.record(sample(.success, latency: 1_000), at: second) }
            stats.record(sample(.success, latency: 100_000), at: second)  // 1 % slow
        }
        let window = stats.figures(.tenSeconds, at: 9)
        XCTAssertEqual(window.requests, 1_000)
        XCTAssertEqual(Double(window.latency.percentile(50)), 1_000, accuracy: 10)
        XCTAssertEqual(Double(window.latency.percentile(99.5)), 100_000, accuracy: 1_000)

        var merged = WindowedStats.Figures()
        merged.merge(window)
        merged.merge(window)  // as if a second loop had seen the same
        XCTAssertEqual(merged.requests, 2_000)
        XCTAssertEqual(merged.latency.percentile(50), window.latency.percentile(50))
    }

    func testPrometheusBucketsCountEachRequestOnceAtItsBound() {
        var stats = WindowedStats()
        for latency: UInt64 in [500, 501, 1_000, 60_000_000, 61_000_000] { stats.record(sample(.success, latency: latency), at: 0) }
        let buckets = stats.totals.durationBuckets
        XCTAssertEqual(buckets.count, WindowedStats.durationBoundsMicros.count + 1)
        XCTAssertEqual(buckets[0], 1, "500 µs is ≤ 0.0005 s")
        XCTAssertEqual(buckets[1], 2, "501 and 1000 µs are in (0.0005, 0.001]")
        XCTAssertEqual(buckets[WindowedStats.durationBoundsMicros.count - 1], 1, "60 s is ≤ 60")
        XCTAssertEqual(buckets.last, 1, "61 s is only in +Inf")
        XCTAssertEqual(buckets.reduce(0, +), 5)
    }
}

/// The exposition writer, read back by the strict parser the /metrics test uses.
final class PrometheusTextTests: XCTestCase {
    func testLabelValuesAreEscapedAndHistogramsAreCumulative() throws {
        var text = PrometheusText()
        text.family("demo_requests_total", .counter, "Requests \\ with a backslash\nand a newline in the help.")
        text.sample("demo_requests_total", [("server", "a\"quoted\\path\nline")], 3)
        text.family("demo_seconds", .histogram, "A histogram.")
        text.histogram("demo_seconds", [("app", "web")], bounds: [0.001, 0.5], counts: [2, 0, 5], sum: 12.5)
        let parsed = try PrometheusExposition(text.text)
        XCTAssertEqual(parsed.value("demo_requests_total", ["server": "a\"quoted\\path\nline"]), 3, text.text)
        XCTAssertEqual(parsed.value("demo_seconds_bucket", ["app": "web", "le": "0.001"]), 2)
        XCTAssertEqual(parsed.value("demo_seconds_bucket", ["app": "web", "le": "0.5"]), 2)
        XCTAssertEqual(parsed.value("demo_seconds_bucket", ["app": "web", "le": "+Inf"]), 7)
        XCTAssertEqual(parsed.value("demo_seconds_count", ["app": "web"]), 7)
        XCTAssertEqual(parsed.value("demo_seconds_sum", ["app": "web"]), 12.5)
        XCTAssertTrue(text.text.contains("# HELP demo_requests_total Requests \\\\ with a backslash\\nand a newline in the help.\n"))
    }

    func testTheParserRejectsWhatAScraperWould() {
        let bad = [
            "m 1",                                                    // no trailing newline
            "# TYPE m counter\nm{a=\"x} 1\n",                         // unterminated label value
            "# TYPE m counter\nm{a=\"\\x\"} 1\n",                     // bad escape
            "# TYPE m counter\nm -1\n",                               // negative counter
            "m 1\n# TYPE m counter\n",                                // TYPE after samples
            "# TYPE m counter\n# TYPE n gauge\nm 1\nn 1\nm 2\n",      // family not contiguous
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",  // not cumulative
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",                         // no +Inf
        ]
        for text in bad {
            XCTAssertThrowsError(try PrometheusExposition(text), text)
        }
    }
}

final class DurationBucketTests: XCTestCase {
    /// The comparison chain on the data path and the published bounds agree at every edge.
    func testBucketsMatchTheirPublishedBounds() {
        let bounds = WindowedStats.durationBoundsMicros
        for (index, bound) in bounds.enumerated() {
            XCTAssertEqual(WindowedStats.durationBucket(bound), index, "\(bound) µs is ≤ its own bound")
            XCTAssertEqual(WindowedStats.durationBucket(bound + 1), index + 1, "\(bound + 1) µs is above it")
        }
        XCTAssertEqual(WindowedStats.durationBucket(0), 0)
        XCTAssertEqual(WindowedStats.durationBucket(.max), bounds.count)
    }
}
