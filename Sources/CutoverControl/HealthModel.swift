import CutoverConfig

// Health and readiness as values: results go in with the time they happened, states come out.
// No clock is read here, so tests drive hours of checks with an injected time in milliseconds.

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

    /// A server without active checks (`health_path off`) is taken to be up: at start, and
    /// again one interval after failed connects marked it down. The last outcome is kept.
    public mutating func assumeUp(at now: Int64) {
        consecutiveFailures = 0
        consecutiveSuccesses = 0
        if state != .up { _ = transition(to: .up, at: now) }
    }

    private mutating func transition(to next: State, at now: Int64) -> Bool {
        state = next
        since = now
        return true
    }
}

/// Whether a color may take traffic: every app has at least `min_healthy` servers up (drained
/// servers excluded), continuously for `ready_after`. This value keeps the "continuously":
/// since when the condition has held without interruption. What the condition is, and why it
/// does not hold, is `NotReady` — one model and one wording for the switch gate, `status` and
/// the metrics.
public struct ColorReadiness: Sendable, Equatable {
    /// Since when the condition has held without interruption; nil while it does not.
    public private(set) var conditionSince: Int64? = nil

    public init() {}

    /// Re-evaluated after any health or drain change (the condition can only change then, so
    /// "continuously" is exact).
    public mutating func update(conditionHolds: Bool, at now: Int64) {
        if conditionHolds {
            if conditionSince == nil { conditionSince = now }
        } else {
            conditionSince = nil
        }
    }

    public func isReady(at now: Int64, readyAfterMs: Int) -> Bool {
        guard let since = conditionSince else { return false }
        return now - since >= Int64(readyAfterMs)
    }
}

/// Why a color may not take traffic, or may not be rolled back to — typed, so that callers
/// decide and only the admin layer words it.
public enum NotReady: Sendable, Equatable, CustomStringConvertible {
    /// An app has fewer than `min_healthy` servers of the color up (drained ones excluded).
    case tooFewUp(app: String, color: Color, up: Int, total: Int, minHealthy: Int)
    /// One server of such an app, and why it does not count (its state, its last check).
    case serverNotUp(String)
    /// The condition holds, but not yet for `ready_after`.
    case notHealthyLongEnough(color: Color, since: String, shortMs: Int, readyAfterMs: Int)
    /// The condition has not held since the checks began.
    case neverHealthy(Color)
    /// Rollback's gate: an app has no healthy server of the color at all.
    case noHealthyServer(app: String, color: Color)

    public var description: String {
        switch self {
        case .tooFewUp(let app, let color, let up, let total, let minHealthy):
            return "app \(app): \(up) of \(total) \(color.rawValue) servers up, min_healthy is \(minHealthy)"
        case .serverNotUp(let text):
            return text
        case .notHealthyLongEnough(let color, let since, let shortMs, let readyAfterMs):
            return "\(color.rawValue) has been healthy since \(since), \(shortMs) ms short of ready_after (\(readyAfterMs) ms)"
        case .neverHealthy(let color):
            return "\(color.rawValue) has not been healthy continuously yet"
        case .noHealthyServer(let app, let color):
            return "app \(app): no healthy \(color.rawValue) server"
        }
    }
}
