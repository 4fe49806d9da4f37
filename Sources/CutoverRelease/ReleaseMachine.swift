import CutoverConfig
import Foundation

/// Requests and errors (5xx answers and upstream failures) of one color over an interval.
public struct ArmCounts: Sendable, Equatable {
    public var requests: UInt64
    public var errors: UInt64

    public init(requests: UInt64 = 0, errors: UInt64 = 0) {
        self.requests = requests
        self.errors = errors
    }

    public var rate: Double { requests == 0 ? 0 : Double(errors) / Double(requests) }
}

/// What the control plane reads for a running plan, every evaluation (at most 100 ms apart).
public struct ReleaseObservation: Sendable {
    public var nowMs: Int64
    /// Main-listener traffic since the previous observation, per color.
    public var candidate: ArmCounts
    public var stable: ArmCounts
    /// p95 latency in µs over a recent window, with its sample count.
    public var candidateP95Micros: UInt64 = 0
    public var candidateLatencySamples: UInt64 = 0
    public var stableP95Micros: UInt64 = 0
    public var stableLatencySamples: UInt64 = 0
    /// A candidate server went down (after `fall` failed checks) since the plan started.
    public var candidateServerDown: Bool = false
    /// The shadow diff rate and the copies it judged (nil: no mirroring).
    public var shadowDiffRate: Double? = nil
    public var shadowJudged: UInt64 = 0
    /// The same traffic split by app (each app's candidate and stable counts): the regression
    /// test compares colors within an app, never across apps whose error rates differ.
    /// Empty: `candidate` and `stable` are one stratum.
    public var strata: [(candidate: ArmCounts, stable: ArmCounts)] = []

    public init(nowMs: Int64, candidate: ArmCounts, stable: ArmCounts) {
        self.nowMs = nowMs
        self.candidate = candidate
        self.stable = stable
    }
}

/// Why the machine decided, with the figures that decided: what the audit record carries.
public struct ReleaseDecision: Sendable, Equatable {
    public var reason: String
    public var evidence: [String: String]

    public init(reason: String, evidence: [String: String]) {
        self.reason = reason
        self.evidence = evidence
    }
}

/// What the control plane must do, in order. Each action is audited before it takes effect.
public enum ReleaseAction: Sendable, Equatable {
    /// Set the candidate's weight, add pins, set the mirror share of step `index`.
    case applyStep(index: Int, step: PlanStep, decision: ReleaseDecision)
    case pause(ReleaseDecision)
    /// Every app back to the stable color, pins to the candidate suspended.
    case rollback(ReleaseDecision)
    /// The last step held: the candidate becomes the stable color.
    case complete(ReleaseDecision)
}

/// A release plan running, as a value: it takes observations and operator commands and answers
/// with actions; it never does I/O and reads no clock of its own, so its decisions are tested
/// with simulated traffic and a simulated clock.
///
/// Per step it keeps the evidence of that step only (a new wave is a new question): counts of
/// both colors, one sequential test per error condition (false-alarm `plan.falseAlarm` each),
/// and per-second counts for burn rates. Rollback conditions are judged while running and while
/// paused (a paused canary still serves users); pause conditions and the hold clock only while
/// running. A hold ends when its time has passed and the step has `min_requests` candidate
/// requests; below that the state is "hold: not enough evidence" — never pass, never fail.
public struct ReleaseMachine: Sendable {
    public enum Phase: Sendable, Equatable {
        case running(step: Int)
        case paused(step: Int, reason: String)
        case rolledBack(reason: String)
        case completed
        /// Ended by an operator's switch by hand: nothing more to decide.
        case ended(reason: String)
    }

    public let plan: PlanConfig
    public private(set) var phase: Phase
    /// Time held in the current step (running time only), in milliseconds.
    public private(set) var heldMs: Int64 = 0
    /// Evidence of the current step.
    public private(set) var candidateTotal = ArmCounts()
    public private(set) var stableTotal = ArmCounts()
    private var regression: ErrorRegressionTest
    /// Per app (stratum), the candidate's recent share of its requests: the regression test's null.
    private var shares: [TrafficShareWindow] = []
    /// One test per `error_rate` condition, in the order of `plan.pauseIf + plan.rollbackIf`.
    private var limitTests: [ErrorRateLimitTest]
    /// Candidate (requests, errors) per second of the step, for burn rates: newest last.
    private var perSecond: [(second: Int64, counts: ArmCounts)] = []
    private var lastObservationMs: Int64
    /// The latest observation's latency and shadow figures (for status and evidence).
    public private(set) var latest: ReleaseObservation?

    /// The regression test of `step`, its mixture chosen by the step's candidate weight (the
    /// last weight set at or before it; a step of pins alone counts as a small canary).
    static func regressionTest(_ plan: PlanConfig, step: Int) -> ErrorRegressionTest {
        let weight = plan.steps.prefix(step + 1).compactMap(\.weight).last ?? 0
        return ErrorRegressionTest(weights: ErrorRegressionTest.weights(forCandidateBasisPoints: weight))
    }

    public init(plan: PlanConfig, nowMs: Int64) {
        self.plan = plan
        regression = Self.regressionTest(plan, step: 0)
        phase = .running(step: 0)
        lastObservationMs = nowMs
        limitTests = (plan.pauseIf + plan.rollbackIf).map { condition in
            if case .errorRate(let limit) = condition { return ErrorRateLimitTest(limit: limit) }
            return ErrorRateLimitTest(limit: 0.5)
        }
    }

    /// A release found in the state file after a restart: at the step it had reached, paused
    /// (a restart never advances a step; the evidence of the interrupted wave is gone).
    public init(plan: PlanConfig, nowMs: Int64, restoredAt step: Int, reason: String) {
        self.init(plan: plan, nowMs: nowMs)
        phase = .paused(step: min(max(0, step), plan.steps.count - 1), reason: reason)
    }

    public var stepIndex: Int? {
        switch phase {
        case .running(let step), .paused(let step, _): return step
        case .rolledBack, .completed, .ended: return nil
        }
    }

    /// The first action: step 1.
    public func startActions() -> [ReleaseAction] {
        [.applyStep(index: 0, step: plan.steps[0], decision: ReleaseDecision(reason: "plan started", evidence: [:]))]
    }

    // MARK: Observations

    public mutating func observe(_ observation: ReleaseObservation) -> [ReleaseAction] {
        guard let step = stepIndex else { return [] }
        let elapsed = max(0, observation.nowMs - lastObservationMs)
        lastObservationMs = observation.nowMs
        if case .running = phase { heldMs += elapsed }
        latest = observation
        candidateTotal.requests &+= observation.candidate.requests
        candidateTotal.errors &+= observation.candidate.errors
        stableTotal.requests &+= observation.stable.requests
        stableTotal.errors &+= observation.stable.errors
        let strata = observation.strata.isEmpty ? [(candidate: observation.candidate, stable: observation.stable)] : observation.strata
        if shares.count != strata.count { shares = Array(repeating: TrafficShareWindow(), count: strata.count) }
        for (index, stratum) in strata.enumerated() {
            let share = shares[index].add(candidate: stratum.candidate, stable: stratum.stable)
            regression.add(candidateErrors: stratum.candidate.errors, stableErrors: stratum.stable.errors, candidateShare: share)
        }
        for index in limitTests.indices {
            limitTests[index].add(requests: observation.candidate.requests, errors: observation.candidate.errors)
        }
        recordSecond(observation)

        let conditions = plan.pauseIf.count
        for (offset, condition) in plan.rollbackIf.enumerated() {
            if let evidence = trips(condition, testIndex: conditions + offset) {
                phase = .rolledBack(reason: "rollback_if \(condition)")
                return [.rollback(decision("rollback_if \(condition)", evidence))]
            }
        }
        guard case .running = phase else { return [] }
        for (offset, condition) in plan.pauseIf.enumerated() {
            if let evidence = trips(condition, testIndex: offset) {
                phase = .paused(step: step, reason: "pause_if \(condition)")
                return [.pause(decision("pause_if \(condition)", evidence))]
            }
        }
        guard heldMs >= Int64(plan.steps[step].holdMs), candidateTotal.requests >= UInt64(plan.minRequests) else { return [] }
        return advance(from: step, reason: "step \(step + 1) held \(Self.duration(heldMs)) with \(candidateTotal.requests) candidate requests")
    }

    // MARK: Operator commands

    public mutating func pause(reason: String) -> Bool {
        guard case .running(let step) = phase else { return false }
        phase = .paused(step: step, reason: reason)
        return true
    }

    /// Resumes a paused plan with fresh tests: the evidence that paused it must not pause it
    /// again at once, and the question "is the candidate worse" starts over (the wave's counts
    /// and time held are kept).
    public mutating func resume() -> Bool {
        guard case .paused(let step, _) = phase else { return false }
        phase = .running(step: step)
        regression = Self.regressionTest(plan, step: step)
        shares.removeAll()  // a weight set by hand while paused is a new share
        limitTests = limitTests.map { ErrorRateLimitTest(limit: $0.limit) }
        perSecond.removeAll()
        return true
    }

    /// The control plane could not carry out the step (or the completion) just decided — its
    /// audit record or the state file could not be written: the plan waits, paused at that step,
    /// for an operator. `resume` carries the step out again.
    public mutating func notTaken(reason: String) {
        switch phase {
        case .running(let step): phase = .paused(step: step, reason: reason)
        case .completed: phase = .paused(step: plan.steps.count - 1, reason: reason)
        case .paused, .rolledBack, .ended: break
        }
    }

    /// An operator switched by hand: the plan ends without deciding anything more.
    public mutating func end(reason: String) -> Bool {
        guard stepIndex != nil else { return false }
        phase = .ended(reason: reason)
        return true
    }

    /// `release promote`: the next step now, whatever the hold.
    public mutating func promote() -> [ReleaseAction] {
        guard let step = stepIndex else { return [] }
        return advance(from: step, reason: "promoted by an operator in step \(step + 1) after \(Self.duration(heldMs))")
    }

    /// `release abort`: the rollback, decided by an operator.
    public mutating func abort(reason: String) -> [ReleaseAction] {
        guard stepIndex != nil else { return [] }
        phase = .rolledBack(reason: reason)
        return [.rollback(decision(reason, [:]))]
    }

    private mutating func advance(from step: Int, reason: String) -> [ReleaseAction] {
        let evidence = stepEvidence()
        if step + 1 == plan.steps.count {
            phase = .completed
            return [.complete(ReleaseDecision(reason: reason, evidence: evidence))]
        }
        phase = .running(step: step + 1)
        heldMs = 0
        candidateTotal = ArmCounts()
        stableTotal = ArmCounts()
        regression = Self.regressionTest(plan, step: step + 1)
        shares.removeAll()  // the new step's weight is a new share
        limitTests = limitTests.map { ErrorRateLimitTest(limit: $0.limit) }
        perSecond.removeAll()
        return [.applyStep(index: step + 1, step: plan.steps[step + 1], decision: ReleaseDecision(reason: reason, evidence: evidence))]
    }

    // MARK: Conditions

    /// The evidence when `condition` trips now, else nil.
    private func trips(_ condition: PlanCondition, testIndex: Int) -> [String: String]? {
        let minimum = UInt64(plan.minRequests)
        let threshold = 1 / plan.falseAlarm
        switch condition {
        case .errorRate(let limit):
            let test = limitTests[testIndex]
            guard test.rejects(falseAlarm: plan.falseAlarm) else { return nil }
            return stepEvidence().merging(["statistic": Self.number(test.likelihoodRatio), "threshold": Self.number(threshold),
                                           "limit": Self.percent(limit)]) { $1 }
        case .errorRegression(let minExcess):
            guard regression.rejects(falseAlarm: plan.falseAlarm), candidateTotal.rate - stableTotal.rate >= minExcess else { return nil }
            return stepEvidence().merging(["statistic": Self.number(regression.likelihoodRatio), "threshold": Self.number(threshold),
                                           "min_excess": Self.percent(minExcess)]) { $1 }
        case .p95(let ms):
            guard let latest, latest.candidateLatencySamples >= minimum, latest.candidateP95Micros > UInt64(ms) * 1_000 else { return nil }
            return stepEvidence().merging(["limit_ms": String(ms)]) { $1 }
        case .p95Regression(let ratio, let slackMs):
            guard let latest, latest.candidateLatencySamples >= minimum, latest.stableLatencySamples >= minimum else { return nil }
            let stable = Double(latest.stableP95Micros)
            let bound = max(ratio * stable, stable + Double(slackMs) * 1_000)
            guard Double(latest.candidateP95Micros) > bound else { return nil }
            return stepEvidence().merging(["bound_us": String(Int(bound))]) { $1 }
        case .burnRate(let rate, let budget, let windowMs, let minErrors):
            let long = window(seconds: Int64(windowMs / 1_000))
            let short = window(seconds: max(1, Int64(windowMs / 12_000)))
            let allowance = rate * budget
            guard long.errors >= UInt64(minErrors), long.rate > allowance, short.rate > allowance else { return nil }
            return stepEvidence().merging(["long_window_rate": Self.percent(long.rate), "short_window_rate": Self.percent(short.rate),
                                           "burn_limit": Self.percent(allowance)]) { $1 }
        case .healthFailed:
            guard let latest, latest.candidateServerDown else { return nil }
            return stepEvidence().merging(["health": "a candidate server went down"]) { $1 }
        case .shadowDiffRate(let limit):
            guard let latest, let rate = latest.shadowDiffRate, latest.shadowJudged >= minimum, rate > limit else { return nil }
            return stepEvidence().merging(["shadow_diff_rate": Self.percent(rate), "shadow_judged": String(latest.shadowJudged)]) { $1 }
        }
    }

    private mutating func recordSecond(_ observation: ReleaseObservation) {
        let second = observation.nowMs / 1_000
        if let last = perSecond.last, last.second == second {
            perSecond[perSecond.count - 1].counts.requests &+= observation.candidate.requests
            perSecond[perSecond.count - 1].counts.errors &+= observation.candidate.errors
        } else {
            perSecond.append((second, observation.candidate))
        }
        let longest = (plan.pauseIf + plan.rollbackIf).compactMap { condition -> Int64? in
            if case .burnRate(_, _, let windowMs, _) = condition { return Int64(windowMs / 1_000) }
            return nil
        }.max() ?? 0
        while let first = perSecond.first, first.second <= second - max(longest, 1) { perSecond.removeFirst() }
    }

    /// Candidate counts of the last `seconds` seconds of the step.
    private func window(seconds: Int64) -> ArmCounts {
        guard let newest = perSecond.last?.second else { return ArmCounts() }
        var counts = ArmCounts()
        for entry in perSecond where entry.second > newest - seconds {
            counts.requests &+= entry.counts.requests
            counts.errors &+= entry.counts.errors
        }
        return counts
    }

    // MARK: Evidence

    /// The step's figures, as audit records and `release status` show them.
    public func stepEvidence() -> [String: String] {
        var evidence: [String: String] = [
            "candidate_requests": String(candidateTotal.requests), "candidate_errors": String(candidateTotal.errors),
            "candidate_error_rate": Self.percent(candidateTotal.rate),
            "stable_requests": String(stableTotal.requests), "stable_errors": String(stableTotal.errors),
            "stable_error_rate": Self.percent(stableTotal.rate),
            "held": Self.duration(heldMs),
            "regression_statistic": Self.number(regression.likelihoodRatio),
        ]
        if let latest {
            evidence["candidate_p95_us"] = String(latest.candidateP95Micros)
            evidence["stable_p95_us"] = String(latest.stableP95Micros)
        }
        if let step = stepIndex { evidence["step"] = String(step + 1) }
        return evidence
    }

    /// Each condition and where it stands: its figure against its limit, or "not enough
    /// evidence" — what `release status` lists under the plan.
    public func conditionReport() -> [(kind: String, condition: String, standing: String)] {
        let threshold = 1 / plan.falseAlarm
        let minimum = UInt64(plan.minRequests)
        func standing(_ condition: PlanCondition, testIndex: Int) -> String {
            switch condition {
            case .errorRate(let limit):
                let test = limitTests[testIndex]
                return "candidate \(Self.percent(test.rate)) of \(test.requests) requests; statistic \(Self.number(test.likelihoodRatio)) "
                    + "of \(Self.number(threshold)) against \(Self.percent(limit))"
            case .errorRegression:
                return "candidate \(Self.percent(candidateTotal.rate)), stable \(Self.percent(stableTotal.rate)); "
                    + "statistic \(Self.number(regression.likelihoodRatio)) of \(Self.number(threshold))"
            case .p95(let ms):
                guard let latest, latest.candidateLatencySamples >= minimum else { return "not enough evidence (latency samples)" }
                return "candidate p95 \(latest.candidateP95Micros / 1_000) ms of \(ms) ms"
            case .p95Regression:
                guard let latest, latest.candidateLatencySamples >= minimum, latest.stableLatencySamples >= minimum else {
                    return "not enough evidence (latency samples)"
                }
                return "candidate p95 \(latest.candidateP95Micros / 1_000) ms, stable \(latest.stableP95Micros / 1_000) ms"
            case .burnRate(_, let budget, let windowMs, _):
                let long = window(seconds: Int64(windowMs / 1_000))
                return "\(long.errors) errors in \(long.requests) requests over the long window (budget \(Self.percent(budget)))"
            case .healthFailed:
                return latest?.candidateServerDown == true ? "a candidate server went down" : "every candidate server up"
            case .shadowDiffRate:
                guard let latest, let rate = latest.shadowDiffRate else { return "no mirrored copies" }
                return latest.shadowJudged >= minimum ? "diff rate \(Self.percent(rate))" : "not enough evidence (\(latest.shadowJudged) copies)"
            }
        }
        let pauses = plan.pauseIf.enumerated().map { ("pause_if", $1.description, standing($1, testIndex: $0)) }
        let rollbacks = plan.rollbackIf.enumerated().map { ("rollback_if", $1.description, standing($1, testIndex: plan.pauseIf.count + $0)) }
        return pauses + rollbacks
    }

    /// What the plan waits for now, in words.
    public var waitingFor: String {
        switch phase {
        case .completed: return "nothing: the release completed"
        case .rolledBack(let reason): return "nothing: rolled back (\(reason))"
        case .ended(let reason): return "nothing: ended (\(reason))"
        case .paused(_, let reason): return "an operator: paused (\(reason)); `release resume` continues, `release abort` rolls back"
        case .running(let step):
            let hold = Int64(plan.steps[step].holdMs)
            if heldMs < hold { return "hold: \(Self.duration(hold - heldMs)) left in step \(step + 1)" }
            if candidateTotal.requests < UInt64(plan.minRequests) {
                return "hold: not enough evidence (\(candidateTotal.requests) of \(plan.minRequests) candidate requests)"
            }
            return "the next evaluation"
        }
    }

    private func decision(_ reason: String, _ evidence: [String: String]) -> ReleaseDecision {
        ReleaseDecision(reason: reason, evidence: evidence)
    }

    static func percent(_ fraction: Double) -> String { String(format: "%.3f%%", fraction * 100) }
    static func number(_ value: Double) -> String { value >= 1e6 ? String(format: "%.3g", value) : String(format: "%.2f", value) }
    static func duration(_ ms: Int64) -> String {
        ms >= 60_000 ? String(format: "%dm%02ds", ms / 60_000, (ms / 1_000) % 60) : String(format: "%.1fs", Double(ms) / 1_000)
    }
}
