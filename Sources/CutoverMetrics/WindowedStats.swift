import CutoverConfig

/// Request figures of one app and color, as one loop records them: totals since start and
/// sliding windows of 10 s, 1 m and 5 m.
///
/// The windows are rings of stamped slots (`SlotRing`): ten one-second slots (10 s), six
/// ten-second slots (1 m) and five one-minute slots (5 m). A slot whose stamp is not the period
/// it is asked to record is reset first, and a reader merges only slots whose stamps fall inside
/// the window — so time can jump (or be driven by a test clock) and nothing needs a timer. A value
/// owned by one loop: no locks, and no allocation after `init`.
public struct WindowedStats: Sendable {
    public typealias Window = StatsWindow

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
        /// First byte of the request head to the last byte of the response queued for the client.
        public var latency = LatencyHistogram()
        /// Requests that reached an upstream and got a response head, and their summed wait.
        public var upstreamCount: UInt64 = 0
        public var upstreamMicros: UInt64 = 0

        public init() {}

        public var requests: UInt64 { outcomes.reduce(0, +) }
        public func count(_ outcome: Outcome) -> UInt64 { outcomes[outcome.rawValue] }

        public var upstreamErrors: UInt64 {
            UpstreamErrorCounts.kinds.reduce(0) { $0 + count($1) }
        }

        /// 5xx answers (the upstream's, or the proxy's own 502/503/504 for upstream failures)
        /// over all requests.
        public var serverErrorRate: Double {
            let total = requests
            guard total > 0 else { return 0 }
            return Double(count(.serverError) + upstreamErrors) / Double(total)
        }

        public var upstreamMeanMicros: Double {
            upstreamCount == 0 ? 0 : Double(upstreamMicros) / Double(upstreamCount)
        }

        @inline(__always)
        package mutating func record(_ sample: RequestSample) {
            outcomes[sample.outcome.rawValue] &+= 1
            bytesIn &+= sample.bytesIn
            bytesOut &+= sample.bytesOut
            latency.record(sample.latencyMicros)
            if sample.upstreamMicros >= 0 {
                upstreamCount &+= 1
                upstreamMicros &+= UInt64(sample.upstreamMicros)
            }
        }

        public mutating func merge(_ other: Figures) {
            for index in outcomes.indices { outcomes[index] &+= other.outcomes[index] }
            bytesIn &+= other.bytesIn
            bytesOut &+= other.bytesOut
            latency.merge(other.latency)
            upstreamCount &+= other.upstreamCount
            upstreamMicros &+= other.upstreamMicros
        }

        mutating func reset() {
            for index in outcomes.indices { outcomes[index] = 0 }
            bytesIn = 0
            bytesOut = 0
            latency.reset()
            upstreamCount = 0
            upstreamMicros = 0
        }
    }

    /// Upper bounds (µs) of the Prometheus duration buckets; `+Inf` follows.
    public static let durationBoundsMicros: [UInt64] = [
        500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
    ]

    /// The Prometheus bucket of a latency: the first bound it does not exceed (`le` is
    /// inclusive), or the `+Inf` bucket. Compares with constants, smallest first: most requests
    /// are decided in two or three comparisons. Must match `durationBoundsMicros`.
    @inline(__always)
    package static func durationBucket(_ micros: UInt64) -> Int {
        if micros <= 500 { return 0 }
        if micros <= 1_000 { return 1 }
        if micros <= 2_500 { return 2 }
        if micros <= 5_000 { return 3 }
        if micros <= 10_000 { return 4 }
        if micros <= 25_000 { return 5 }
        if micros <= 50_000 { return 6 }
        if micros <= 100_000 { return 7 }
        if micros <= 250_000 { return 8 }
        if micros <= 500_000 { return 9 }
        if micros <= 1_000_000 { return 10 }
        if micros <= 2_500_000 { return 11 }
        if micros <= 5_000_000 { return 12 }
        if micros <= 10_000_000 { return 13 }
        if micros <= 30_000_000 { return 14 }
        if micros <= 60_000_000 { return 15 }
        return 16
    }

    /// Since start: the figures, the upstream latency histogram, exact status codes and the
    /// Prometheus duration buckets (non-cumulative; the exposition sums them).
    public struct Totals: Sendable {
        public var figures = Figures()
        public var upstreamLatency = LatencyHistogram()
        /// Count per status code 0…599 (0: the client left before any response).
        public var statusCodes = [UInt64](repeating: 0, count: 600)
        public var durationBuckets = [UInt64](repeating: 0, count: WindowedStats.durationBoundsMicros.count + 1)

        public init() {}

        @inline(__always)
        mutating func record(_ sample: RequestSample) {
            figures.record(sample)
            if sample.upstreamMicros >= 0 { upstreamLatency.record(UInt64(sample.upstreamMicros)) }
            statusCodes[Int(sample.status) < 600 ? Int(sample.status) : 0] &+= 1
            durationBuckets[WindowedStats.durationBucket(sample.latencyMicros)] &+= 1
        }

        public mutating func merge(_ other: Totals) {
            figures.merge(other.figures)
            upstreamLatency.merge(other.upstreamLatency)
            for index in statusCodes.indices where other.statusCodes[index] != 0 { statusCodes[index] &+= other.statusCodes[index] }
            for index in durationBuckets.indices { durationBuckets[index] &+= other.durationBuckets[index] }
        }
    }

    /// A ring of slots, each holding the figures of one period (a second, ten seconds, a
    /// minute) and the period's number.
    struct SlotRing: Sendable {
        let periodSeconds: Int64
        private var slots: [Figures]
        private var stamps: [Int64]

        init(periods: Int, periodSeconds: Int64) {
            self.periodSeconds = periodSeconds
            // One Figures value each (not `repeating:`, whose copies share storage until the
            // first write copies it): every slot's memory exists from here on.
            slots = (0..<periods).map { _ in Figures() }
            stamps = Array(repeating: .min, count: periods)
        }

        /// The slot of the last second recorded: the divisions run once a second, not per request.
        private var cachedSecond: Int64 = .min
        private var cachedSlot = 0

        @inline(__always)
        mutating func record(_ sample: RequestSample, at second: Int64) {
            if second != cachedSecond {
                let period = WindowedStats.floorDiv(second, periodSeconds)
                let slot = WindowedStats.index(period, slots.count)
                if stamps[slot] != period {
                    slots[slot].reset()
                    stamps[slot] = period
                }
                cachedSecond = second
                cachedSlot = slot
            }
            slots[cachedSlot].record(sample)
        }

        /// Adds every slot of the ring's span that ends with the period holding `second`.
        func merge(at second: Int64, into merged: inout Figures) {
            let newest = WindowedStats.floorDiv(second, periodSeconds)
            let oldest = newest - Int64(slots.count)
            for slot in slots.indices where stamps[slot] > oldest && stamps[slot] <= newest {
                merged.merge(slots[slot])
            }
        }
    }

    public private(set) var totals = Totals()
    private var seconds = SlotRing(periods: 10, periodSeconds: 1)
    private var tenSeconds = SlotRing(periods: 6, periodSeconds: 10)
    private var minutes = SlotRing(periods: 5, periodSeconds: 60)

    public init() {}

    /// Records one finished request at `second` (whole seconds of the injected clock).
    @inline(__always)
    public mutating func record(_ sample: RequestSample, at second: Int64) {
        totals.record(sample)
        seconds.record(sample, at: second)
        tenSeconds.record(sample, at: second)
        minutes.record(sample, at: second)
    }

    /// Adds the figures of `window` as of `second` to `into`. "1m" is the current ten-second
    /// slot and the five before it (it moves in ten-second steps); "5m" the current minute and
    /// the four before it (one-minute steps).
    public func merge(_ window: Window, at second: Int64, into merged: inout Figures) {
        switch window {
        case .total: merged.merge(totals.figures)
        case .tenSeconds: seconds.merge(at: second, into: &merged)
        case .oneMinute: tenSeconds.merge(at: second, into: &merged)
        case .fiveMinutes: minutes.merge(at: second, into: &merged)
        }
    }

    /// The figures of `window` as of `second`.
    public func figures(_ window: Window, at second: Int64) -> Figures {
        var merged = Figures()
        merge(window, at: second, into: &merged)
        return merged
    }

    static func index(_ value: Int64, _ count: Int) -> Int {
        Int(((value % Int64(count)) + Int64(count)) % Int64(count))
    }

    static func floorDiv(_ value: Int64, _ divisor: Int64) -> Int64 {
        value >= 0 ? value / divisor : -((-value + divisor - 1) / divisor)
    }
}

/// One finished request as the data plane reports it.
public struct RequestSample: Sendable {
    public var outcome: WindowedStats.Outcome
    /// The status the client saw (0: none; the client left or the connection was cut first).
    public var status: UInt16
    public var latencyMicros: UInt64
    /// From the request fully sent upstream to the response head; -1 when no head came.
    public var upstreamMicros: Int64
    public var bytesIn: UInt64
    public var bytesOut: UInt64

    public init(outcome: WindowedStats.Outcome, status: UInt16, latencyMicros: UInt64, upstreamMicros: Int64 = -1,
                bytesIn: UInt64 = 0, bytesOut: UInt64 = 0) {
        self.outcome = outcome
        self.status = status
        self.latencyMicros = latencyMicros
        self.upstreamMicros = upstreamMicros
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }
}
