import CutoverRelease
import CutoverTestSupport
import XCTest

/// The building blocks of the trigger: what one error, a burst, or equal rates do to them.
final class SequentialTestsTests: XCTestCase {
    func testOneOrTwoStrayErrorsNeverDecide() {
        var test = ErrorRegressionTest()
        test.add(candidateRequests: 10, candidateErrors: 1, stableRequests: 90, stableErrors: 0)
        XCTAssertLessThan(test.likelihoodRatio, 10.1, "one error moves the ratio by at most 1/share")
        XCTAssertFalse(test.rejects(falseAlarm: 0.002))
        test.add(candidateRequests: 10, candidateErrors: 1, stableRequests: 90, stableErrors: 0)
        XCTAssertFalse(test.rejects(falseAlarm: 0.002), "two errors at a 10 % share never reach 1/0.2 %")
        test.add(candidateRequests: 10, candidateErrors: 1, stableRequests: 90, stableErrors: 0)
        XCTAssertTrue(test.rejects(falseAlarm: 0.002), "three in a row with a clean stable color do")
    }

    func testStableErrorsAreEvidenceForTheCandidate() {
        var test = ErrorRegressionTest()
        test.add(candidateRequests: 10, candidateErrors: 2, stableRequests: 90, stableErrors: 0)
        let before = test.likelihoodRatio
        test.add(candidateRequests: 10, candidateErrors: 0, stableRequests: 90, stableErrors: 9)
        XCTAssertLessThan(test.likelihoodRatio, before / 2, "errors on the stable color say the candidate is not the cause")
        // Requests without errors carry no evidence either way.
        let quiet = test.likelihoodRatio
        test.add(candidateRequests: 1_000, candidateErrors: 0, stableRequests: 9_000, stableErrors: 0)
        XCTAssertEqual(test.likelihoodRatio, quiet)
    }

    /// Under equal rates, checked after every error, the ratio reaches 1/α in at most a share α of
    /// releases (Ville's inequality): continuous checking does not inflate the false alarms.
    func testCheckedContinuouslyTheFalseAlarmsStayUnderTheBound() {
        var generator = SeededGenerator(state: 5)
        let runs = 2_000
        var crossed = 0
        for _ in 0..<runs {
            var test = ErrorRegressionTest()
            for _ in 0..<200 {
                // A 30 % share; each error lands on the candidate with probability 0.3.
                let candidate = generator.next() % 10 < 3
                test.add(candidateRequests: 30, candidateErrors: candidate ? 1 : 0, stableRequests: 70, stableErrors: candidate ? 0 : 1)
                if test.rejects(falseAlarm: 0.05) {
                    crossed += 1
                    break
                }
            }
        }
        XCTAssertLessThanOrEqual(Double(crossed) / Double(runs), 0.05, "\(crossed) of \(runs) crossed 1/0.05")
    }

    func testTheAbsoluteLimitTest() {
        var healthy = ErrorRateLimitTest(limit: 0.02)
        healthy.add(requests: 10_000, errors: 100)  // 1 %: below the limit
        XCTAssertFalse(healthy.rejects(falseAlarm: 0.002))
        XCTAssertLessThan(healthy.likelihoodRatio, 1)
        var failing = ErrorRateLimitTest(limit: 0.02)
        for _ in 0..<20 { failing.add(requests: 20, errors: 2) }  // 10 %
        XCTAssertTrue(failing.rejects(falseAlarm: 0.002))
        XCTAssertEqual(failing.rate, 0.1, accuracy: 1e-9)
    }

    /// The null share comes from the last two seconds, not from one 100 ms batch: at weight 10
    /// the third candidate error in a row decides even when its batch held several candidate
    /// requests, and the window forgets a share older than two seconds.
    func testTheShareWindowFollowsTheLastTwoSeconds() {
        var window = TrafficShareWindow()
        var test = ErrorRegressionTest()
        for _ in 0..<TrafficShareWindow.evaluations { _ = window.add(candidate: ArmCounts(requests: 2), stable: ArmCounts(requests: 18)) }
        for _ in 0..<3 {
            // A batch in which the candidate got 3 of 20 requests, one of them failing.
            let share = window.add(candidate: ArmCounts(requests: 3, errors: 1), stable: ArmCounts(requests: 17))
            XCTAssertLessThan(share, 0.11)
            test.add(candidateErrors: 1, stableErrors: 0, candidateShare: share)
        }
        XCTAssertTrue(test.rejects(falseAlarm: 0.002))
        var perBatch = ErrorRegressionTest()
        for _ in 0..<3 { perBatch.add(candidateRequests: 3, candidateErrors: 1, stableRequests: 17, stableErrors: 0) }
        XCTAssertFalse(perBatch.rejects(falseAlarm: 0.002), "the batch's own share (15 %) would need more errors")

        // Two seconds at 50 %: the 10 % share is forgotten.
        var share = 0.0
        for _ in 0..<TrafficShareWindow.evaluations { share = window.add(candidate: ArmCounts(requests: 10), stable: ArmCounts(requests: 10)) }
        XCTAssertEqual(share, 0.5, accuracy: 1e-9)
    }
}
