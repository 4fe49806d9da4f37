
// Health and readiness as values: results go in with the time they happened, states come out.
// No clock is read here, so tests drive hours of checks with an injected time in microseconds.

/// What one check (active probe, verify request, or a data-plane connect failure) found.
public enum CheckOutcome: Sendable, Equatable {
    case success(status: Int, latencyMs: Int)
    case failure(reason: String)

    public var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }

    public var summary: String {
        switch self {
        case .success(let status, let latency): return "status \(status) in \(latency) ms"
        case .failure(let reason): return reason
        }
    }
}

/// One server's operational state with rise/fall hysteresis (HAProxy-style: `rise`
/// consecutive successes make it up, `fall` consecutive failures make it down).
///
/// A server starts `unknown`: routable (so traffic flows at start-up before the first checks
/// complete) but not counted as healthy for a switch gate.
public struct ServerHealth: Sendable, Equatable {
    public enum State: String, Sendable {
        case unknown, up, down
    }

    public private(set) var state: State = .unknown
    /// When `state` last changed (milliseconds of the injected clock).
    public private(set) var since: Int64
    public private(set) var lastOutcome: CheckOutcome? = nil
    public private(set) var lastCheckAt: Int64? = nil
    public private(set) var consecutiveSuccesses = 0
    public private(set) var consecutiveFailures = 0

    public init(now: Int64) {
        since = now
    }

    /// Routable unless checks found it down (operator drain is kept apart, in the control plane).
    public var isRoutable: Bool { state != .down }

    /// Records a check result. Returns true when the state changed.
    @discardableResult
    public mutating func record(_ outcome: CheckOutcome, at now: Int64, rise: Int, fall: Int) -> Bool {
        lastOutcome = outcome
        lastCheckAt = now
        if outcome.isSuccess {
            consecutiveSuccesses += 1
            consecutiveFailures = 0
            if state != .up && consecutiveSuccesses >= rise { return transition(to: .up, at: now) }
        } else {
            consecutiveFailures += 1
            consecutiveSuccesses = 0
            if state != .down && consecutiveFailures >= fall { return transition(to: .down, at: now) }
        }
        return false
    }

    private mutating func transition(to next: State, at now: Int64) -> Bool {
        state = next
        since = now
        return true
    }
}

/// Whether a color may take traffic: every app has at least `minHealthy` servers up (drained
/// servers excluded), continuously for `readyAfterMs`.
public struct ColorReadiness: Sendable, Equatable {
    /// Since when the condition has held without interruption; nil while it does not.
    public private(set) var conditionSince: Int64? = nil
    /// Why the condition does not hold (empty when it does).
    public private(set) var reasons: [String] = []

    public init() {}

    /// Re-evaluates after any health or drain change (the condition can only change then, so
    /// "continuously" is exact). `healthyCounts` is, per app name, the number of routable
    /// servers that are `up`.
    public mutating func update(healthyCounts: [(app: String, healthy: Int, total: Int)], minHealthy: Int, at now: Int64) {
        var reasons: [String] = []
        for entry in healthyCounts where entry.healthy < minHealthy {
            reasons.append("app \(entry.app): \(entry.healthy) of \(entry.total) servers up, \(minHealthy) required")
        }
        self.reasons = reasons
        if reasons.isEmpty {
            if conditionSince == nil { conditionSince = now }
        } else {
            conditionSince = nil
        }
    }

    public func isReady(at now: Int64, readyAfterMs: Int) -> Bool {
        guard let since = conditionSince else { return false }
        return now - since >= Int64(readyAfterMs)
    }

    /// Readiness for a reply: ready since when, or why not.
    public func explain(at now: Int64, readyAfterMs: Int) -> [String] {
        guard let since = conditionSince else { return reasons }
        let held = now - since
        if held >= Int64(readyAfterMs) { return [] }
        return ["healthy for \(held) ms of the \(readyAfterMs) ms ready_after window"]
    }
}
