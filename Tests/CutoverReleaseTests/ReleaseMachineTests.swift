import CutoverConfig
import CutoverRelease
import CutoverTestSupport
import XCTest

/// The plan's state machine with a simulated clock: holds, evidence, pauses, operator commands.
final class ReleaseMachineTests: XCTestCase {
    private func plan(_ text: String) throws -> PlanConfig {
        let config = try ConfigParser.parse("listen 127.0.0.1:1\napp a {\n host *\n blue 127.0.0.1:2\n green 127.0.0.1:3\n}\n" + text,
                                            path: "t.conf")
        return try XCTUnwrap(config.plans.first)
    }

    private func tick(_ machine: inout ReleaseMachine, at ms: Int64, candidate: ArmCounts, stable: ArmCounts = ArmCounts(requests: 10)) -> [ReleaseAction] {
        machine.observe(ReleaseObservation(nowMs: ms, candidate: candidate, stable: stable))
    }

    func testAHoldEndsWhenItsTimeHasPassedAndTheStepHasItsEvidence() throws {
        var machine = ReleaseMachine(plan: try plan("plan p {\n step weight 10 hold 10s\n step weight 100 hold 5s\n min_requests 50\n}\n"), nowMs: 0)
        XCTAssertEqual(machine.startActions().count, 1)
        XCTAssertEqual(machine.waitingFor, "hold: 10.0s left in step 1")
        // 12 s with only 2 candidate requests a second: time passed, evidence not.
        for second in 1...12 { XCTAssertEqual(tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 2)), []) }
        XCTAssertEqual(machine.waitingFor, "hold: not enough evidence (24 of 50 candidate requests)")
        var actions: [ReleaseAction] = []
        for second in 13...25 where actions.isEmpty { actions = tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 2)) }
        guard case .applyStep(let index, let step, let decision) = actions.first else { return XCTFail("\(actions)") }
        XCTAssertEqual(index, 1)
        XCTAssertEqual(step.weight, 10_000)
        XCTAssertEqual(decision.evidence["candidate_requests"], "50")
        XCTAssertEqual(machine.phase, .running(step: 1))
        XCTAssertEqual(machine.candidateTotal, ArmCounts(), "a new step starts a new question")
        // Step 2 holds 5 s and needs 50 requests: 20 a second completes it in the third second.
        var done: [ReleaseAction] = []
        for second in 26...30 where done.isEmpty { done = tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 20)) }
        guard case .complete = done.first else { return XCTFail("\(done)") }
        XCTAssertEqual(machine.phase, .completed)
        XCTAssertEqual(tick(&machine, at: 47_000, candidate: ArmCounts(requests: 20)), [], "a finished plan decides nothing more")
    }

    /// A step (or the completion) the control plane could not carry out — its audit record or
    /// the state file could not be written — pauses the plan at that step; resume takes it up.
    func testAStepNotTakenPausesThePlanAtThatStep() throws {
        var machine = ReleaseMachine(plan: try plan("plan p {\n step weight 10 hold 1s\n step weight 100 hold 1s\n min_requests 1\n}\n"), nowMs: 0)
        guard case .applyStep(1, _, _) = tick(&machine, at: 1_000, candidate: ArmCounts(requests: 5)).first else { return XCTFail() }
        machine.notTaken(reason: "step 2 not taken: the audit log could not be written")
        XCTAssertEqual(machine.phase, .paused(step: 1, reason: "step 2 not taken: the audit log could not be written"))
        XCTAssertEqual(tick(&machine, at: 5_000, candidate: ArmCounts(requests: 5)), [], "a paused plan holds no clock")
        XCTAssertTrue(machine.resume())
        guard case .complete = tick(&machine, at: 6_000, candidate: ArmCounts(requests: 5)).first else { return XCTFail() }
        machine.notTaken(reason: "completion not taken")
        XCTAssertEqual(machine.phase, .paused(step: 1, reason: "completion not taken"))
        XCTAssertTrue(machine.resume())
        guard case .complete = tick(&machine, at: 6_100, candidate: ArmCounts(requests: 5)).first else {
            return XCTFail("the held completion is decided again at once")
        }
    }

    func testPausedHoldsStopTheClockButRollbackConditionsStillJudge() throws {
        var machine = ReleaseMachine(plan: try plan("""
            plan p {
                step weight 10 hold 10s
                step weight 100 hold 10s
                pause_if p95 > 200ms
                rollback_if health_failed
                min_requests 10
            }

            """), nowMs: 0)
        XCTAssertTrue(machine.pause(reason: "operator: checking a dashboard"))
        for second in 1...30 { XCTAssertEqual(tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 5)), []) }
        XCTAssertEqual(machine.heldMs, 0, "no hold while paused")
        XCTAssertTrue(machine.waitingFor.hasPrefix("an operator: paused (operator: checking a dashboard)"))
        XCTAssertTrue(machine.resume())
        XCTAssertFalse(machine.resume(), "already running")

        // A slow candidate pauses the plan; evidence names the figures.
        var slow = ReleaseObservation(nowMs: 31_000, candidate: ArmCounts(requests: 5), stable: ArmCounts(requests: 50))
        slow.candidateP95Micros = 350_000
        slow.candidateLatencySamples = 100
        guard case .pause(let decision) = machine.observe(slow).first else { return XCTFail("expected a pause") }
        XCTAssertEqual(decision.reason, "pause_if p95 > 200ms")
        XCTAssertEqual(decision.evidence["candidate_p95_us"], "350000")
        XCTAssertEqual(decision.evidence["limit_ms"], "200")

        // Paused, a candidate server goes down: rollback.
        var down = ReleaseObservation(nowMs: 32_000, candidate: ArmCounts(requests: 5), stable: ArmCounts(requests: 50))
        down.candidateServerDown = true
        guard case .rollback(let rollback) = machine.observe(down).first else { return XCTFail("expected a rollback") }
        XCTAssertEqual(rollback.reason, "rollback_if health_failed")
        XCTAssertEqual(machine.phase, .rolledBack(reason: "rollback_if health_failed"))
    }

    func testPromoteAndAbortAreTheOperatorsDecisions() throws {
        var machine = ReleaseMachine(plan: try plan("plan p {\n step weight 10 hold 1h\n step weight 50 hold 1h\n step weight 100 hold 1h\n}\n"), nowMs: 0)
        guard case .applyStep(1, _, let decision) = machine.promote().first else { return XCTFail("expected step 2") }
        XCTAssertTrue(decision.reason.hasPrefix("promoted by an operator in step 1"))
        XCTAssertEqual(machine.abort(reason: "release abort: customer escalation"),
                       [.rollback(ReleaseDecision(reason: "release abort: customer escalation", evidence: [:]))])
        XCTAssertEqual(machine.promote(), [], "nothing after a rollback")
        XCTAssertFalse(machine.pause(reason: "x"))
    }

    func testABurnRateNeedsBothWindowsAndItsMinimumErrors() throws {
        var machine = ReleaseMachine(plan: try plan("""
            plan p {
                step weight 100 hold 1h
                rollback_if burn_rate > 10 budget 1% window 120s min_errors 5
            }

            """), nowMs: 0)
        // 4 errors in 10 requests: 40 % burns far past 10 × 1 %, but 4 < min_errors.
        XCTAssertEqual(tick(&machine, at: 1_000, candidate: ArmCounts(requests: 10, errors: 4)), [])
        // Healthy for two minutes: the long window still holds those 4 errors, the short one is clean.
        for second in 2...120 { XCTAssertEqual(tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 10)), []) }
        // A burst: 2 more errors in the short window; long window 6 errors over 1,200 requests = 0.5 % < 10 %.
        XCTAssertEqual(tick(&machine, at: 121_000, candidate: ArmCounts(requests: 10, errors: 2)), [])
        // A sustained failure trips it.
        var actions: [ReleaseAction] = []
        for second in 122...200 where actions.isEmpty {
            actions = tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 10, errors: 5))
        }
        guard case .rollback(let decision) = actions.first else { return XCTFail("expected a rollback") }
        XCTAssertEqual(decision.reason, "rollback_if burn_rate > 10.0 budget 1% window 120s min_errors 5")
        XCTAssertNotNil(decision.evidence["short_window_rate"])
    }

    /// A resumed plan asks its question again: the evidence that paused it does not pause it at once.
    func testResumeStartsTheTestsOver() throws {
        var machine = ReleaseMachine(plan: try plan("""
            plan p {
                step weight 10 hold 1h
                step weight 100 hold 1h
                pause_if error_rate > 5%
                rollback_if health_failed
            }

            """), nowMs: 0)
        var actions: [ReleaseAction] = []
        for second in 1...60 where actions.isEmpty {
            actions = tick(&machine, at: Int64(second) * 1_000, candidate: ArmCounts(requests: 20, errors: 4))
        }
        guard case .pause = actions.first else { return XCTFail("expected a pause: \(actions)") }
        XCTAssertTrue(machine.resume())
        XCTAssertEqual(tick(&machine, at: 61_000, candidate: ArmCounts(requests: 20, errors: 0)), [], "a fresh test after resume")
        XCTAssertEqual(machine.phase, .running(step: 0))
        XCTAssertTrue(machine.end(reason: "switched by hand"))
        XCTAssertEqual(machine.waitingFor, "nothing: ended (switched by hand)")
        XCTAssertEqual(tick(&machine, at: 62_000, candidate: ArmCounts(requests: 20, errors: 20)), [])
    }

    /// Per app strata: two apps with different error rates, the same on both colors, never look
    /// like a regression however the candidate's share differs between them.
    func testAppsAreComparedWithinThemselves() throws {
        var machine = ReleaseMachine(plan: try plan("plan p {\n step weight 10 hold 1h\n step weight 100 hold 1h\n rollback_if error_regression\n}\n"), nowMs: 0)
        var generator = SeededGenerator(state: 3)
        func draw(_ n: UInt64, _ p: Double) -> UInt64 {
            var count: UInt64 = 0
            for _ in 0..<n where Double(generator.next() >> 11) / Double(1 << 53) < p { count += 1 }
            return count
        }
        for second in 1...600 {
            // App a: 5 % errors, the candidate takes 50 % of it; app b: 0.1 %, the candidate 5 %.
            let a = (candidate: ArmCounts(requests: 10, errors: draw(10, 0.05)), stable: ArmCounts(requests: 10, errors: draw(10, 0.05)))
            let b = (candidate: ArmCounts(requests: 5, errors: draw(5, 0.001)), stable: ArmCounts(requests: 95, errors: draw(95, 0.001)))
            var observation = ReleaseObservation(
                nowMs: Int64(second) * 1_000,
                candidate: ArmCounts(requests: 15, errors: a.candidate.errors + b.candidate.errors),
                stable: ArmCounts(requests: 105, errors: a.stable.errors + b.stable.errors))
            observation.strata = [a, b]
            XCTAssertEqual(machine.observe(observation), [], "second \(second)")
        }
    }

    /// `release status` lists every condition with its figure against its limit.
    func testEveryConditionSaysWhereItStands() throws {
        var machine = ReleaseMachine(plan: try plan("""
            plan p {
                step weight 10 hold 1h
                step weight 100 hold 1h
                pause_if p95 > 500ms
                rollback_if error_rate > 2%
                rollback_if error_regression
                rollback_if health_failed
                min_requests 50
            }

            """), nowMs: 0)
        _ = tick(&machine, at: 1_000, candidate: ArmCounts(requests: 20, errors: 1), stable: ArmCounts(requests: 180, errors: 2))
        let report = machine.conditionReport()
        XCTAssertEqual(report.map(\.kind), ["pause_if", "rollback_if", "rollback_if", "rollback_if"])
        XCTAssertEqual(report.map(\.condition), ["p95 > 500ms", "error_rate > 2%", "error_regression", "health_failed"])
        XCTAssertEqual(report[0].standing, "not enough evidence (latency samples)")
        XCTAssertTrue(report[1].standing.hasPrefix("candidate 5.000% of 20 requests; statistic "), report[1].standing)
        XCTAssertTrue(report[1].standing.hasSuffix("of 500.00 against 2.000%"), report[1].standing)
        XCTAssertTrue(report[2].standing.hasPrefix("candidate 5.000%, stable 1.111%; statistic "), report[2].standing)
        XCTAssertEqual(report[3].standing, "every candidate server up")
    }
}
