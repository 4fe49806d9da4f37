import CutoverConfig

/// What one comparison of a mirrored request found: the candidate against the primary, and
/// (with noise on) a second stable server against the primary.
package struct ShadowVerdict {
    package var statusDiffers = false
    package var bodyDiffers = false
    /// Header names (lowercased) whose values differ or that only one side sent.
    package var headersDiffering: [String] = []

    package init() {}

    package var differs: Bool { statusDiffers || bodyDiffers || !headersDiffering.isEmpty }
}

/// The shadow diff figures of one app on one loop: mirrored, skipped and dropped copies,
/// comparisons and their mismatches by field, and the latencies of both sides. Counts are kept
/// per second for five minutes (the gate judges a window) and in total; per-header counts in
/// total only (they decide which headers are noise).
package final class ShadowStats {
    package let app: String
    /// The app's number in the `AppRegistry` (names it in access-log mirror lines).
    package let appID: Int32

    /// Per-second slots of the windowed counters.
    private static let slotCount = 300
    private var stamps = [Int64](repeating: -1, count: slotCount)
    private var slots = [ShadowFigures.Counts](repeating: ShadowFigures.Counts(), count: slotCount)
    package private(set) var totals = ShadowFigures.Counts()
    /// Header name → (candidate mismatches, noise mismatches), in total.
    package private(set) var headerMismatches: [String: (candidate: UInt64, noise: UInt64)] = [:]
    package var candidateLatency = LatencyHistogram()
    package var primaryLatency = LatencyHistogram()
    /// Copies in flight on this loop (against `mirror_max_inflight`).
    package var inflight = 0

    package init(app: String, appID: Int32 = -1) {
        self.app = app
        self.appID = appID
    }

    private func slot(_ second: Int64) -> Int {
        let index = Int(second % Int64(Self.slotCount))
        if stamps[index] != second {
            stamps[index] = second
            slots[index] = ShadowFigures.Counts()
        }
        return index
    }

    package func count(_ field: WritableKeyPath<ShadowFigures.Counts, UInt64>, atSecond second: Int64) {
        slots[slot(second)][keyPath: field] &+= 1
        totals[keyPath: field] &+= 1
    }

    /// A finished comparison. `noise` is the second stable server's verdict (nil: none ran).
    /// A header counts as a candidate mismatch only when it is not noisy: two stable servers
    /// disagree on it too (a Date, a request id), as Twitter's Diffy filters fields.
    package func compared(candidate: ShadowVerdict, noise: ShadowVerdict?, candidateMicros: UInt64, primaryMicros: UInt64,
                          atSecond second: Int64) {
        let index = slot(second)
        for name in candidate.headersDiffering { headerMismatches[name, default: (0, 0)].candidate &+= 1 }
        if let noise {
            for name in noise.headersDiffering { headerMismatches[name, default: (0, 0)].noise &+= 1 }
        }
        var counts = ShadowFigures.Counts()
        counts.compared = 1
        if candidate.statusDiffers { counts.statusMismatches = 1 }
        if candidate.bodyDiffers { counts.bodyMismatches = 1 }
        if candidate.headersDiffering.contains(where: { !isNoisy($0) }) { counts.headerMismatches = 1 }
        if let noise {
            counts.noiseCompared = 1
            if noise.statusDiffers { counts.noiseStatusMismatches = 1 }
            if noise.bodyDiffers { counts.noiseBodyMismatches = 1 }
            if noise.headersDiffering.contains(where: { !isNoisy($0) }) { counts.noiseHeaderMismatches = 1 }
        }
        slots[index].add(counts)
        totals.add(counts)
        candidateLatency.record(candidateMicros)
        primaryLatency.record(primaryMicros)
    }

    /// A header two stable servers disagree on in at least 1 % of noise comparisons (and at
    /// least twice): its differences are not the candidate's.
    package func isNoisy(_ name: String) -> Bool {
        guard let counts = headerMismatches[name], counts.noise >= 2, totals.noiseCompared > 0 else { return false }
        return Double(counts.noise) / Double(totals.noiseCompared) >= 0.01
    }

    /// Adds the figures of `window` (or the totals) to `figures`.
    package func merge(_ window: WindowedStats.Window, atSecond second: Int64, into figures: inout ShadowFigures) {
        switch window {
        case .total:
            figures.counts.add(totals)
        case .tenSeconds, .oneMinute, .fiveMinutes:
            let span: Int64 = window == .tenSeconds ? 10 : window == .oneMinute ? 60 : 300
            for index in 0..<Self.slotCount where stamps[index] > second - span && stamps[index] <= second {
                figures.counts.add(slots[index])
            }
        }
        figures.candidateLatency.merge(candidateLatency)
        figures.primaryLatency.merge(primaryLatency)
        for (name, counts) in headerMismatches {
            let merged = figures.headers[name] ?? (0, 0)
            figures.headers[name] = (merged.candidate &+ counts.candidate, merged.noise &+ counts.noise)
        }
    }
}

/// Shadow figures merged across loops, for one app.
public struct ShadowFigures: Sendable {
    public struct Counts: Sendable, Equatable {
        /// Copies sent (to the candidate).
        public var mirrored: UInt64 = 0
        /// Not copied: a method not in `mirror_methods`.
        public var skippedMethod: UInt64 = 0
        /// Not copied: a body over `mirror_max_body`, or a chunked one.
        public var skippedBody: UInt64 = 0
        /// Not copied: `mirror_max_inflight` copies were in flight on the loop.
        public var dropped: UInt64 = 0
        /// Copies whose candidate failed (connect, reset, timeout, invalid response).
        public var candidateFailed: UInt64 = 0
        /// Copies not compared because the primary exchange failed or was cut short.
        public var primaryFailed: UInt64 = 0
        public var compared: UInt64 = 0
        public var statusMismatches: UInt64 = 0
        public var headerMismatches: UInt64 = 0
        public var bodyMismatches: UInt64 = 0
        /// Primary against a second stable server.
        public var noiseCompared: UInt64 = 0
        public var noiseStatusMismatches: UInt64 = 0
        public var noiseHeaderMismatches: UInt64 = 0
        public var noiseBodyMismatches: UInt64 = 0

        public init() {}

        mutating func add(_ other: Counts) {
            mirrored &+= other.mirrored
            skippedMethod &+= other.skippedMethod
            skippedBody &+= other.skippedBody
            dropped &+= other.dropped
            candidateFailed &+= other.candidateFailed
            primaryFailed &+= other.primaryFailed
            compared &+= other.compared
            statusMismatches &+= other.statusMismatches
            headerMismatches &+= other.headerMismatches
            bodyMismatches &+= other.bodyMismatches
            noiseCompared &+= other.noiseCompared
            noiseStatusMismatches &+= other.noiseStatusMismatches
            noiseHeaderMismatches &+= other.noiseHeaderMismatches
            noiseBodyMismatches &+= other.noiseBodyMismatches
        }
    }

    public var counts = Counts()
    public var candidateLatency = LatencyHistogram()
    public var primaryLatency = LatencyHistogram()
    /// Header name → mismatches against the candidate and between stable servers (totals).
    public var headers: [String: (candidate: UInt64, noise: UInt64)] = [:]

    public init() {}

    private static func rate(_ part: UInt64, _ whole: UInt64) -> Double { whole == 0 ? 0 : Double(part) / Double(whole) }

    /// Per field, the candidate's mismatch rate minus the rate two stable servers show (0 when
    /// noise is off).
    public var statusDiffRate: Double {
        max(0, Self.rate(counts.statusMismatches, counts.compared) - Self.rate(counts.noiseStatusMismatches, counts.noiseCompared))
    }
    public var headerDiffRate: Double {
        max(0, Self.rate(counts.headerMismatches, counts.compared) - Self.rate(counts.noiseHeaderMismatches, counts.noiseCompared))
    }
    public var bodyDiffRate: Double {
        max(0, Self.rate(counts.bodyMismatches, counts.compared) - Self.rate(counts.noiseBodyMismatches, counts.noiseCompared))
    }

    /// Copies the candidate failed (reset, timeout, invalid response, too large) among those
    /// that settled: a candidate that fails every copy must not look clean.
    public var candidateFailureRate: Double { Self.rate(counts.candidateFailed, counts.compared &+ counts.candidateFailed) }

    /// What the gate judges: the worst field's mismatch rate beyond the noise, or the rate of
    /// failed copies when it is higher.
    public var diffRate: Double { max(statusDiffRate, headerDiffRate, bodyDiffRate, candidateFailureRate) }

    /// Copies that settled on the candidate's side (compared or failed): the gate's evidence.
    public var judged: UInt64 { counts.compared &+ counts.candidateFailed }

    public mutating func merge(_ other: ShadowFigures) {
        counts.add(other.counts)
        candidateLatency.merge(other.candidateLatency)
        primaryLatency.merge(other.primaryLatency)
        for (name, value) in other.headers {
            let merged = headers[name] ?? (0, 0)
            headers[name] = (merged.candidate &+ value.candidate, merged.noise &+ value.noise)
        }
    }
}
