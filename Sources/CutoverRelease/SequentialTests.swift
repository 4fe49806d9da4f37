import Foundation

// Tests that stay honest when they are checked after every batch of requests.
//
// A fixed-sample test (a z-test on two error rates, a confidence interval) checked again and
// again until it says "worse" turns a 1 % false-alarm rate into tens of percent (Johari,
// Pekelis, Walsh, "Always valid inference", arXiv:1512.04922). The tests here are test
// martingales instead: a likelihood ratio against the "nothing is wrong" hypothesis, mixed over
// the alternatives, whose expected value under that hypothesis stays 1 however long it runs.
// By Ville's inequality the chance it *ever* reaches 1/α is at most α — so it may be checked
// after every request, and a release may run for hours, with the false-alarm rate α per step.
//
// Below the threshold the honest answer is "not enough evidence": the tests never say "pass".

/// Is the candidate's error rate higher than the stable color's, at the same time?
///
/// Conditioned on the requests each color served, each error is a coin flip "did it come from
/// the candidate?" with probability `n_c / (n_c + n_s)` when both rates are equal (the
/// candidate's share of the traffic), and `k·n_c / (k·n_c + n_s)` when the candidate's rate is
/// `k` times the stable one (the classical conditional test of two Poisson rates). The test
/// multiplies the likelihood ratio of each error's color under every `k` in `relativeRisks`
/// and mixes them with `mixtureWeights` (a mixture SPRT: no single effect size has to be
/// guessed). Requests without errors carry no evidence here, so a quiet candidate costs nothing
/// and a single stray 5xx moves the ratio by at most `1/share`.
///
/// The weights lean towards large effects, the ones a release must stop in seconds: at weight
/// 10 with a clean stable color, three candidate errors reach 1/0.2 % (two never do), while a
/// tenfold rise of a 0.1 % rate is still found after a couple of thousand candidate requests.
/// That speed has a price no test escapes: three errors in a row on a 10 % share happen by
/// chance in about one healthy wave in a thousand, and a test that acts on the third error
/// acts on those too (the simulation in `TriggerSimulationTests` measures it).
public struct ErrorRegressionTest: Sendable, Equatable {
    /// Relative risks mixed over (the candidate's error rate as a multiple of the stable one).
    public static let relativeRisks: [Double] = [1.5, 2, 3, 5, 10, 30, 100, 1_000]
    /// Their weights (summing to 1) for a small canary (a step at 15 % or less): most of the
    /// false-alarm budget on the largest effect, so that a failing candidate at weight 10 is
    /// rolled back on its third error.
    public static let mixtureWeights: [Double] = [0.025, 0.025, 0.05, 0.075, 0.1, 0.075, 0.05, 0.6]
    /// For a larger share: a failing candidate's errors come fast anyway (five times as many at
    /// 50 % as at 10 %), so the budget moves to moderate effects, and a run of errors that
    /// chance puts on a half-share candidate needs to be longer to look like one.
    public static let largeShareWeights: [Double] = [0.05, 0.05, 0.1, 0.15, 0.25, 0.2, 0.1, 0.1]

    /// The mixture for a step whose candidate weight is `basisPoints` — chosen before the step's
    /// data, so the test stays a test martingale.
    public static func weights(forCandidateBasisPoints basisPoints: Int) -> [Double] {
        basisPoints <= 1_500 ? mixtureWeights : largeShareWeights
    }

    /// ln of each component's likelihood ratio.
    private var logRatios = [Double](repeating: 0, count: ErrorRegressionTest.relativeRisks.count)
    private let weights: [Double]
    public private(set) var candidateErrors: UInt64 = 0
    public private(set) var stableErrors: UInt64 = 0

    public init(weights: [Double] = ErrorRegressionTest.mixtureWeights) {
        precondition(weights.count == Self.relativeRisks.count)
        self.weights = weights
    }

    /// Adds one batch, with the candidate's share taken from the batch's own requests.
    public mutating func add(candidateRequests: UInt64, candidateErrors: UInt64, stableRequests: UInt64, stableErrors: UInt64) {
        let nc = Double(max(candidateRequests, candidateErrors))
        let ns = Double(max(stableRequests, stableErrors))
        add(candidateErrors: candidateErrors, stableErrors: stableErrors, candidateShare: nc + ns > 0 ? nc / (nc + ns) : 0)
    }

    /// Adds one batch of errors, with `candidateShare` the candidate's share of the requests
    /// they came from (the null hypothesis: each error is the candidate's with that chance).
    ///
    /// The share should cover more requests than the batch: at weight 10 and 200 requests/s a
    /// 100 ms batch holds about two candidate requests, and conditioning on so few wastes
    /// evidence — a batch in which the candidate failed is one in which it tended to get more
    /// requests, which makes its errors look less surprising than they are. `ReleaseMachine`
    /// passes the share of the last two seconds (`TrafficShareWindow`), short enough to follow
    /// a tenant's burst, long enough to average that out.
    public mutating func add(candidateErrors: UInt64, stableErrors: UInt64, candidateShare share: Double) {
        self.candidateErrors &+= candidateErrors
        self.stableErrors &+= stableErrors
        guard candidateErrors + stableErrors > 0, share > 0 && share < 1 else { return }  // one color alone: no comparison
        for (index, k) in Self.relativeRisks.enumerated() {
            let p1 = k * share / (k * share + (1 - share))
            logRatios[index] += Double(candidateErrors) * log(p1 / share) + Double(stableErrors) * log((1 - p1) / (1 - share))
        }
    }

    /// The mixture likelihood ratio (the e-value): evidence against "the candidate is no worse".
    public var likelihoodRatio: Double {
        let largest = logRatios.max() ?? 0
        var sum = 0.0
        for (logRatio, weight) in zip(logRatios, weights) { sum += weight * exp(logRatio - largest) }
        return exp(largest) * sum
    }

    /// True once the candidate is worse with false-alarm probability at most `falseAlarm`.
    public func rejects(falseAlarm: Double) -> Bool { likelihoodRatio >= 1 / falseAlarm }
}

/// Is the candidate's error rate above an absolute limit (`rollback_if error_rate > 2%`)?
///
/// A one-sample mixture SPRT on Bernoulli outcomes: against `rate ≤ limit`, mixed over the
/// alternatives `rate = m · limit` for `m` in `multiples` (capped below 1). Valid under
/// continuous checking for the same reason as `ErrorRegressionTest`.
public struct ErrorRateLimitTest: Sendable, Equatable {
    public static let multiples: [Double] = [1.25, 1.5, 2, 3, 5, 10, 30]

    public let limit: Double
    private var logRatios: [Double]
    public private(set) var requests: UInt64 = 0
    public private(set) var errors: UInt64 = 0

    public init(limit: Double) {
        self.limit = limit
        logRatios = [Double](repeating: 0, count: Self.multiples.count)
    }

    public mutating func add(requests: UInt64, errors: UInt64) {
        guard requests > 0 else { return }
        let errors = min(errors, requests)
        self.requests &+= requests
        self.errors &+= errors
        let p0 = min(max(limit, 1e-9), 1 - 1e-9)
        for (index, multiple) in Self.multiples.enumerated() {
            let p1 = min(p0 * multiple, 1 - 1e-9)
            guard p1 > p0 else { continue }
            logRatios[index] += Double(errors) * log(p1 / p0) + Double(requests - errors) * log((1 - p1) / (1 - p0))
        }
    }

    public var likelihoodRatio: Double {
        let largest = logRatios.max() ?? 0
        let sum = logRatios.reduce(0) { $0 + exp($1 - largest) }
        return exp(largest) * sum / Double(logRatios.count)
    }

    public func rejects(falseAlarm: Double) -> Bool { likelihoodRatio >= 1 / falseAlarm }

    /// The observed rate so far.
    public var rate: Double { requests == 0 ? 0 : Double(errors) / Double(requests) }
}

/// The candidate's share of one app's requests over the last `capacity` evaluations (two seconds
/// at one every 100 ms), the current one included: the null share `ErrorRegressionTest` needs.
public struct TrafficShareWindow: Sendable, Equatable {
    public static let evaluations = 20

    private var candidate = [UInt64](repeating: 0, count: TrafficShareWindow.evaluations)
    private var stable = [UInt64](repeating: 0, count: TrafficShareWindow.evaluations)
    private var next = 0
    private var candidateSum: UInt64 = 0
    private var stableSum: UInt64 = 0

    public init() {}

    /// Adds one evaluation's requests (forgetting the oldest) and returns the share, with
    /// errors counted as requests so that a share is never below what the errors prove.
    public mutating func add(candidate arm: ArmCounts, stable other: ArmCounts) -> Double {
        candidateSum = candidateSum &- candidate[next] &+ max(arm.requests, arm.errors)
        stableSum = stableSum &- stable[next] &+ max(other.requests, other.errors)
        candidate[next] = max(arm.requests, arm.errors)
        stable[next] = max(other.requests, other.errors)
        next = (next + 1) % Self.evaluations
        let total = candidateSum + stableSum
        return total == 0 ? 0 : Double(candidateSum) / Double(total)
    }
}
