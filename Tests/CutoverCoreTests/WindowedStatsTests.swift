import CutoverCore
import XCTest

/// Sliding windows rotate with the injected clock: no test waits for real time.
final class WindowedStatsTests: XCTestCase {
    func testWindowsForgetWhatLeftThemAndTotalsKeepIt() {
        var stats = WindowedStats(now: 100)
        for _ in 0..<3 { stats.record(.success, latencyMicros: 1_000, upstreamMicros: 800, bytesIn: 100, bytesOut: 2_000, at: 100) }
        stats.record(.serverError, latencyMicros: 50_000, at: 104)
        stats.record(.connectFailure, latencyMicros: 2_000, at: 104)

        var ten = stats.figures(.tenSeconds, at: 105)
        XCTAssertEqual(ten.requests, 5)
        XCTAssertEqual(ten.count(.success), 3)
        XCTAssertEqual(ten.bytesOut, 6_000)
        XCTAssertEqual(ten.serverErrorRate, 0.4, accuracy: 1e-9, "a 5xx and a connect failure out of five")
        XCTAssertEqual(ten.upstreamLatency.count, 3, "only requests that reached an upstream have an upstream latency")

        ten = stats.figures(.tenSeconds, at: 110)
        XCTAssertEqual(ten.requests, 2, "second 100 left the 10 s window at 110")
        XCTAssertEqual(stats.figures(.tenSeconds, at: 114).requests, 0)

        XCTAssertEqual(stats.figures(.oneMinute, at: 159).requests, 5)
        XCTAssertEqual(stats.figures(.oneMinute, at: 160).requests, 0, "the minute moves in ten-second steps")
        XCTAssertEqual(stats.figures(.fiveMinutes, at: 399).requests, 5)
        XCTAssertEqual(stats.figures(.fiveMinutes, at: 400).requests, 0)
        XCTAssertEqual(stats.figures(.total, at: 10_000).requests, 5)
    }

    func testRecordingAfterALongPauseStartsClean() {
        var stats = WindowedStats(now: 0)
        stats.record(.success, latencyMicros: 10, at: 0)
        stats.record(.success, latencyMicros: 20, at: 3_600)  // an hour later: every slot was left behind
        XCTAssertEqual(stats.figures(.tenSeconds, at: 3_600).requests, 1)
        XCTAssertEqual(stats.figures(.fiveMinutes, at: 3_600).requests, 1)
        XCTAssertEqual(stats.figures(.total, at: 3_600).requests, 2)
    }

    func testWindowPercentilesComeFromMergedSlots() {
        var stats = WindowedStats(now: 0)
        for second in Int64(0)..<10 {
            for _ in 0..<99 { stats.record(.success, latencyMicros: 1_000, at: second) }
            stats.record(.success, latencyMicros: 100_000, at: second)  // 1 % slow
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
}
