// Release plans: the waves of a release, how long each holds, and the conditions that pause it
// or roll it back (`plan NAME { }` blocks, in the config or in files named by `plans`).

/// One wave: what the candidate gets, and how long it holds before the next wave.
public struct PlanStep: Sendable, Equatable {
    /// The candidate's share in basis points (nil: unchanged from the previous step).
    public var weight: Int?
    /// Pins to the candidate this step adds (tenants first).
    public var pins: [PinRule]
    /// The mirror share in basis points (nil: unchanged).
    public var mirror: Int?
    /// The least time the step holds, in milliseconds (0: until it has its evidence).
    public var holdMs: Int
    public var line: Int

    public init(weight: Int? = nil, pins: [PinRule] = [], mirror: Int? = nil, holdMs: Int = 0, line: Int = 0) {
        self.weight = weight
        self.pins = pins
        self.mirror = mirror
        self.holdMs = holdMs
        self.line = line
    }
}

/// What a plan watches. Every condition reads the candidate's figures of the current step (and
/// the stable color's over the same time): a same-time control for free.
public enum PlanCondition: Sendable, Equatable, CustomStringConvertible {
    /// The candidate's error rate (5xx and upstream failures) is above the limit, by a
    /// sequential test (valid when checked continuously).
    case errorRate(above: Double)
    /// The candidate's error rate is higher than the stable color's, by a sequential test, and
    /// higher by at least `minExcess` (a fraction: 0.005 is half a percentage point). The
    /// excess keeps chance clusters of a healthy release from tripping an automatic rollback;
    /// the test keeps the decision honest however often it is checked.
    case errorRegression(minExcess: Double)
    /// The candidate's p95 is above the limit (milliseconds), with `min_requests` samples.
    case p95(aboveMs: Int)
    /// The candidate's p95 is above `max(ratio × stable p95, stable p95 + slack)`.
    case p95Regression(ratio: Double, slackMs: Int)
    /// The error budget burns faster than `rate` times its allowance over both `windowMs` and
    /// `windowMs / 12` (Google SRE multiwindow alerts), with at least `minErrors` errors.
    case burnRate(rate: Double, budget: Double, windowMs: Int, minErrors: Int)
    /// A candidate server went down (after `fall` failed checks) during the plan.
    case healthFailed
    /// The shadow diff rate of mirrored copies is above the limit.
    case shadowDiffRate(above: Double)

    public var description: String {
        func percent(_ value: Double) -> String {
            let text = String(value * 100)
            return (text.hasSuffix(".0") ? String(text.dropLast(2)) : text) + "%"
        }
        switch self {
        case .errorRate(let limit): return "error_rate > \(percent(limit))"
        case .errorRegression(let excess): return excess > 0 ? "error_regression min_excess \(percent(excess))" : "error_regression"
        case .p95(let ms): return "p95 > \(ms)ms"
        case .p95Regression(let ratio, let slack): return "p95_regression \(ratio) slack \(slack)ms"
        case .burnRate(let rate, let budget, let window, let minErrors):
            return "burn_rate > \(rate) budget \(percent(budget)) window \(window / 1000)s min_errors \(minErrors)"
        case .healthFailed: return "health_failed"
        case .shadowDiffRate(let limit): return "shadow_diff_rate > \(percent(limit))"
        }
    }
}

/// Where release and switch events are delivered (`notify exec PATH`,
/// `notify webhook http://HOST:PORT/PATH`).
public enum NotifyTarget: Sendable, Equatable, CustomStringConvertible {
    /// A program run with the event's JSON on its standard input.
    case exec(path: String)
    /// An HTTP/1.1 POST of the event's JSON.
    case webhook(host: String, port: UInt16, path: String)

    public var description: String {
        switch self {
        case .exec(let path): return "exec \(path)"
        case .webhook(let host, let port, let path): return "webhook http://\(host.contains(":") ? "[\(host)]" : host):\(port)\(path)"
        }
    }
}

/// `watch { rollback_if …; min_requests N; false_alarm P }`: the conditions a watch after a
/// switch judges on the new color, against the previous color's figures from before the switch
/// (`error_regression` there means: above the previous error rate by more than `min_excess`,
/// 0.5 points unless given).
public struct WatchConfig: Sendable, Equatable {
    public var rollbackIf: [PlanCondition] = [.errorRegression(minExcess: 0.005), .healthFailed]
    public var minRequests: Int = 100
    public var falseAlarm: Double = 0.002

    public init() {}
}

/// A release plan.
public struct PlanConfig: Sendable, Equatable {
    public var name: String
    /// Where it was written (`FILE:LINE` of its opening line).
    public var file: String
    public var line: Int
    public var steps: [PlanStep] = []
    public var pauseIf: [PlanCondition] = []
    public var rollbackIf: [PlanCondition] = []
    /// Candidate requests a step needs before its hold can end, and before p95 conditions judge.
    public var minRequests: Int = 100
    /// The false-alarm probability of each sequential test, per step (0.2 %). A plan's chance of
    /// a false rollback is at most the sum over its tests and steps (and restarts).
    public var falseAlarm: Double = 0.002
    /// What `error_regression` needs beyond the test by default: nothing (any regression the
    /// test is sure of). `min_excess 0.5%` ignores regressions smaller than half a point.
    public static let defaultMinExcess = 0.0

    /// After the last step (100 %), how long the previous color's figures are watched.
    public var watchMs: Int = 0

    public init(name: String, file: String = "<embedded>", line: Int = 0) {
        self.name = name
        self.file = file
        self.line = line
    }
}
