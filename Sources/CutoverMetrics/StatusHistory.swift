import CutoverConfig
import CutoverRouting

/// The last five minutes of each app and color, one sample a second, for the operator views
/// (`cutover top`'s sparklines, the status page's charts).
///
/// A sample is the difference between two readings of the running totals, not a read of a
/// one-second slot: counts are exact whatever the sampler's jitter (a late tick yields one
/// sample covering two seconds, whose rate divides by two), and the latency percentiles are
/// those of exactly the requests that finished in between (bucket counts subtract).
public struct StatusHistory: Sendable {
    public struct Sample: Sendable, Equatable {
        /// The monotonic second the sample ends at, and how many seconds it covers.
        public var second: Int64
        public var seconds: Int64
        public var requests: UInt64
        public var serverErrors: UInt64
        public var p50: UInt64
        public var p95: UInt64
        public var p99: UInt64

        public var requestsPerSecond: Double { Double(requests) / Double(max(1, seconds)) }
        public var serverErrorRate: Double { requests == 0 ? 0 : Double(serverErrors) / Double(requests) }
    }

    /// One value a second, oldest first, ending at `endSecond`; nil where no sample covers a
    /// second (before the proxy started, or while the sampler was held up).
    public struct Series: Sendable, Equatable {
        public var endSecond: Int64
        public var requestsPerSecond: [Double?]
        public var serverErrorRate: [Double?]
        public var p50: [UInt64?]
        public var p95: [UInt64?]
        public var p99: [UInt64?]
    }

    public static let capacity = 300

    private var lastTotals: [AppPool: WindowedStats.Figures] = [:]
    private var lastSecond: Int64?
    private var samples: [AppPool: [Sample]] = [:]

    public init() {}

    /// The newest second sampled.
    public var newestSecond: Int64? { lastSecond }

    /// Takes a reading of the running totals (main listener only: preview traffic is no
    /// color's figure) at monotonic `second`. The first reading only sets the baseline; a
    /// reading in the same second as the last one is ignored.
    public mutating func record(totals: [AppPool: WindowedStats.Figures], atSecond second: Int64) {
        if let lastSecond, second <= lastSecond { return }
        defer {
            lastSecond = second
            lastTotals = totals
        }
        guard let lastSecond else { return }
        for (key, now) in totals where key.listener == .main {
            let before = lastTotals[key] ?? WindowedStats.Figures()
            let requests = now.requests &- min(before.requests, now.requests)
            let errors5xx = serverErrors(now) &- min(serverErrors(before), serverErrors(now))
            let latency = now.latency.subtracting(before.latency)
            let sample = Sample(second: second, seconds: second - lastSecond, requests: requests, serverErrors: errors5xx,
                                p50: latency.percentile(50), p95: latency.percentile(95), p99: latency.percentile(99))
            var ring = samples[key] ?? []
            ring.append(sample)
            // Drop what is older than the capacity (a few at a time: the ring is small).
            if let first = ring.first, first.second <= second - Int64(Self.capacity) {
                ring.removeAll { $0.second <= second - Int64(Self.capacity) }
            }
            samples[key] = ring
        }
    }

    private func serverErrors(_ figures: WindowedStats.Figures) -> UInt64 {
        figures.count(.serverError) &+ figures.upstreamErrors
    }

    /// The last `seconds` seconds (at most `capacity`) of `app` and `color`, ending at
    /// `endSecond` (default: the newest reading).
    public func series(app: String, color: Color, seconds: Int, endingAt endSecond: Int64? = nil) -> Series {
        let count = max(1, min(seconds, Self.capacity))
        let end = endSecond ?? lastSecond ?? 0
        var series = Series(endSecond: end, requestsPerSecond: Array(repeating: nil, count: count),
                            serverErrorRate: Array(repeating: nil, count: count),
                            p50: Array(repeating: nil, count: count), p95: Array(repeating: nil, count: count),
                            p99: Array(repeating: nil, count: count))
        for sample in samples[AppPool(app: app, color: color)] ?? [] {
            // A sample covering several seconds fills each of them with its rate.
            for second in (sample.second - sample.seconds + 1)...sample.second {
                let index = Int(second - (end - Int64(count) + 1))
                guard index >= 0 && index < count else { continue }
                series.requestsPerSecond[index] = sample.requestsPerSecond
                series.serverErrorRate[index] = sample.requests == 0 ? nil : sample.serverErrorRate
                series.p50[index] = sample.requests == 0 ? nil : sample.p50
                series.p95[index] = sample.requests == 0 ? nil : sample.p95
                series.p99[index] = sample.requests == 0 ? nil : sample.p99
            }
        }
        return series
    }
}

extension LatencyHistogram {
    /// The requests recorded in `self` but not in `earlier` (an older reading of the same
    /// running histogram). min and max become the bounds of the first and last bucket left.
    public func subtracting(_ earlier: LatencyHistogram) -> LatencyHistogram {
        var delta = LatencyHistogram()
        guard count > earlier.count else { return delta }
        for index in Self.bucketIndex(min)...Self.bucketIndex(max) {
            let left = counts[index] &- Swift.min(counts[index], earlier.counts[index])
            guard left > 0 else { continue }
            let range = Self.bucketRange(index)
            delta.add(count: left, lower: range.lower, upper: Swift.min(range.upper - 1, max))
        }
        delta.setSum(sum &- Swift.min(sum, earlier.sum))
        return delta
    }
}
