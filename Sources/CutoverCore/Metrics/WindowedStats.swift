/// Request figures of one app and color, as one loop records them: totals since start and
/// sliding windows of 10 s, 1 m and 5 m.
///
/// The windows are rings: ten one-second slots (10 s) and thirty ten-second slots (1 m = the
/// last six, 5 m = all thirty), each holding its own counters and latency histogram. Recording
/// rotates lazily from the time it is given (whole seconds of an injected clock), so a window
/// is cheap to read — merge its slots — and time can be driven by tests. A value owned by one
/// loop: no locks, and no allocation once its slots exist.
public struct WindowedStats: Sendable {
    public enum Window: String, Sendable, CaseIterable {
        case tenSeconds = "10s"
        case oneMinute = "1m"
        case fiveMinutes = "5m"
        case total
    }

    /// Status classes 1xx…5xx, then the kinds of upstream failure the proxy answered itself.
    public enum Outcome: Int, Sendable, CaseIterable {
        case informational = 0, success, redirect, clientError, serverError
        case connectFailure, reset, timeout, invalidResponse

        public init(status: Int) {
            switch status {
            case ..<200: self = .informational
            case ..<300: self = .success
            case ..<400: self = .redirect
            case ..<500: self = .clientError
            default: self = .serverError
            }
        }

        public var label: String {
            switch self {
            case .informational: return "1xx"
            case .success: return "2xx"
            case .redirect: return "3xx"
            case .clientError: return "4xx"
            case .serverError: return "5xx"
            case .connectFailure: return "connect_failure"
            case .reset: return "reset"
            case .timeout: return "timeout"
            case .invalidResponse: return "invalid_response"
            }
        }
    }

    /// Counters and latencies of one slot (or of a merged window).
    public struct Figures: Sendable {
        public var outcomes = [UInt64](repeating: 0, count: Outcome.allCases.count)
        public var bytesIn: UInt64 = 0
        public var bytesOut: UInt64 = 0
        public var latency = LatencyHistogram()
        public var upstreamLatency = LatencyHistogram()

        public init() {}

        public var requests: UInt64 { outcomes.reduce(0, +) }
        public func count(_ outcome: Outcome) -> UInt64 { outcomes[outcome.rawValue] }

        /// 5xx answers (the upstream's or the proxy's own 502/503/504) over all requests.
        public var serverErrorRate: Double {
            let total = requests
            guard total > 0 else { return 0 }
            let errors = count(.serverError) + count(.connectFailure) + count(.reset) + count(.timeout) + count(.invalidResponse)
            return Double(errors) / Double(total)
        }

        mutating func record(_ outcome: Outcome, latencyMicros: UInt64, upstreamMicros: UInt64?, bytesIn: UInt64, bytesOut: UInt64) {
            outcomes[outcome.rawValue] &+= 1
            self.bytesIn &+= bytesIn
            self.bytesOut &+= bytesOut
            latency.record(latencyMicros)
            if let upstreamMicros { upstreamLatency.record(upstreamMicros) }
        }

        public mutating func merge(_ other: Figures) {
            for index in outcomes.indices { outcomes[index] &+= other.outcomes[index] }
            bytesIn &+= other.bytesIn
            bytesOut &+= other.bytesOut
            latency.merge(other.latency)
            upstreamLatency.merge(other.upstreamLatency)
        }

        mutating func reset() {
            for index in outcomes.indices { outcomes[index] = 0 }
            bytesIn = 0
            bytesOut = 0
            latency.reset()
            upstreamLatency.reset()
        }
    }

    static let secondSlots = 10
    static let tenSecondSlots = 30

    public private(set) var total = Figures()
    private var seconds: [Figures]
    private var tenSeconds: [Figures]
    /// The second the newest one-second slot stands for; slots older than the ring are cleared
    /// as time moves on.
    private var currentSecond: Int64
    private var currentTenSecond: Int64

    public init(now second: Int64) {
        seconds = Array(repeating: Figures(), count: Self.secondSlots)
        tenSeconds = Array(repeating: Figures(), count: Self.tenSecondSlots)
        currentSecond = second
        currentTenSecond = second / 10
    }

    /// Records one finished request at `second` (whole seconds of the injected clock).
    public mutating func record(_ outcome: Outcome, latencyMicros: UInt64, upstreamMicros: UInt64? = nil,
                                bytesIn: UInt64 = 0, bytesOut: UInt64 = 0, at second: Int64) {
        advance(to: second)
        total.record(outcome, latencyMicros: latencyMicros, upstreamMicros: upstreamMicros, bytesIn: bytesIn, bytesOut: bytesOut)
        seconds[Self.index(second, Self.secondSlots)]
            .record(outcome, latencyMicros: latencyMicros, upstreamMicros: upstreamMicros, bytesIn: bytesIn, bytesOut: bytesOut)
        tenSeconds[Self.index(second / 10, Self.tenSecondSlots)]
            .record(outcome, latencyMicros: latencyMicros, upstreamMicros: upstreamMicros, bytesIn: bytesIn, bytesOut: bytesOut)
    }

    /// Clears the slots that time has left behind since the last call.
    public mutating func advance(to second: Int64) {
        if second > currentSecond {
            let steps = min(second - currentSecond, Int64(Self.secondSlots))
            for step in 1...steps { seconds[Self.index(currentSecond + step, Self.secondSlots)].reset() }
            currentSecond = second
        }
        let tenSecond = second / 10
        if tenSecond > currentTenSecond {
            let steps = min(tenSecond - currentTenSecond, Int64(Self.tenSecondSlots))
            for step in 1...steps { tenSeconds[Self.index(currentTenSecond + step, Self.tenSecondSlots)].reset() }
            currentTenSecond = tenSecond
        }
    }

    /// The figures of `window` as of `second`. The minute windows move in ten-second steps.
    public func figures(_ window: Window, at second: Int64) -> Figures {
        var copy = self
        copy.advance(to: second)
        var merged = Figures()
        switch window {
        case .total:
            return total
        case .tenSeconds:
            for slot in copy.seconds { merged.merge(slot) }
        case .oneMinute:
            let newest = second / 10
            for offset in 0..<6 { merged.merge(copy.tenSeconds[Self.index(newest - Int64(offset), Self.tenSecondSlots)]) }
        case .fiveMinutes:
            for slot in copy.tenSeconds { merged.merge(slot) }
        }
        return merged
    }

    private static func index(_ value: Int64, _ count: Int) -> Int {
        Int(((value % Int64(count)) + Int64(count)) % Int64(count))
    }
}
