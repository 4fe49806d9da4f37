import CutoverConfig
import CutoverMetrics
import XCTest

/// The shadow diff's arithmetic: per-field rates minus the noise, headers that two stable
/// servers disagree on stop counting against the candidate, windows forget old seconds.
final class ShadowStatsTests: XCTestCase {
    private func verdict(status: Bool = false, body: Bool = false, headers: [String] = []) -> ShadowVerdict {
        var verdict = ShadowVerdict()
        verdict.statusDiffers = status
        verdict.bodyDiffers = body
        verdict.headersDiffering = headers
        return verdict
    }

    private func figures(_ stats: ShadowStats, _ window: WindowedStats.Window = .total, at second: Int64 = 100) -> ShadowFigures {
        var figures = ShadowFigures()
        stats.merge(window, atSecond: second, into: &figures)
        return figures
    }

    func testBodyDifferencesCountAndNoiseIsSubtractedPerField() {
        let stats = ShadowStats(app: "web")
        for index in 0..<100 {
            stats.compared(candidate: verdict(body: index % 10 == 0), noise: verdict(body: index % 50 == 0),
                           candidateMicros: 1_000, primaryMicros: 900, atSecond: 100)
        }
        let result = figures(stats)
        XCTAssertEqual(result.counts.compared, 100)
        XCTAssertEqual(result.counts.bodyMismatches, 10)
        XCTAssertEqual(result.counts.noiseBodyMismatches, 2)
        XCTAssertEqual(result.bodyDiffRate, 0.08, accuracy: 1e-9, "10 % against the candidate, 2 % between stable servers")
        XCTAssertEqual(result.diffRate, 0.08, accuracy: 1e-9)
        XCTAssertEqual(result.statusDiffRate, 0)
    }

    /// A Date that differs on every response, against the candidate and between the stable
    /// servers alike, is noise: the header rate stays 0. A header only the candidate changes is
    /// not.
    func testAHeaderTwoStableServersDisagreeOnIsNoise() {
        let stats = ShadowStats(app: "web")
        for index in 0..<200 {
            let candidateHeaders = index % 4 == 0 ? ["date", "x-version"] : ["date"]
            stats.compared(candidate: verdict(headers: candidateHeaders), noise: verdict(headers: ["date"]),
                           candidateMicros: 1, primaryMicros: 1, atSecond: 100)
        }
        XCTAssertTrue(stats.isNoisy("date"))
        XCTAssertFalse(stats.isNoisy("x-version"))
        let result = figures(stats)
        XCTAssertEqual(result.headers["date"]?.candidate, 200)
        XCTAssertEqual(result.headers["date"]?.noise, 200)
        XCTAssertEqual(result.headers["x-version"]?.candidate, 50)
        // The first two comparisons came before date was known to be noisy; x-version is the
        // candidate's own difference in 25 % of them.
        XCTAssertEqual(result.headerDiffRate, 0.25, accuracy: 0.011)
    }

    func testWithoutNoiseEveryDifferenceCounts() {
        let stats = ShadowStats(app: "web")
        for _ in 0..<10 {
            stats.compared(candidate: verdict(status: true, headers: ["date"]), noise: nil, candidateMicros: 5, primaryMicros: 5, atSecond: 7)
        }
        let result = figures(stats, at: 7)
        XCTAssertEqual(result.statusDiffRate, 1)
        XCTAssertEqual(result.headerDiffRate, 1)
        XCTAssertEqual(result.counts.noiseCompared, 0)
    }

    func testWindowsForgetOldSeconds() {
        let stats = ShadowStats(app: "web")
        stats.compared(candidate: verdict(body: true), noise: nil, candidateMicros: 1, primaryMicros: 1, atSecond: 1_000)
        stats.count(\.mirrored, atSecond: 1_000)
        stats.count(\.dropped, atSecond: 1_055)
        stats.compared(candidate: verdict(), noise: nil, candidateMicros: 1, primaryMicros: 1, atSecond: 1_055)
        XCTAssertEqual(figures(stats, .tenSeconds, at: 1_058).counts.compared, 1, "only second 1,055 is in the last 10 s")
        XCTAssertEqual(figures(stats, .tenSeconds, at: 1_058).bodyDiffRate, 0)
        XCTAssertEqual(figures(stats, .oneMinute, at: 1_058).counts.compared, 2)
        XCTAssertEqual(figures(stats, .oneMinute, at: 1_058).bodyDiffRate, 0.5)
        XCTAssertEqual(figures(stats, .oneMinute, at: 1_061).counts.compared, 1, "second 1,000 left the minute")
        XCTAssertEqual(figures(stats, .total, at: 5_000).counts.compared, 2)
        XCTAssertEqual(figures(stats, .total, at: 5_000).counts.mirrored, 1)
        XCTAssertEqual(figures(stats, .total, at: 5_000).counts.dropped, 1)
        // A slot reused 300 s later starts from zero.
        stats.compared(candidate: verdict(), noise: nil, candidateMicros: 1, primaryMicros: 1, atSecond: 1_300)
        XCTAssertEqual(figures(stats, .tenSeconds, at: 1_300).counts.compared, 1)
    }
}
