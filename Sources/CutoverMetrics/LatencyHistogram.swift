
/// A log-linear latency histogram (HDR-style) over microseconds, from 1 µs to 134 s.
///
/// Values below 128 µs have a bucket each; above, every power of two is split into 64 equal
/// buckets, so a bucket is at most 1/64 of its lower bound wide. Percentiles report the bucket
/// midpoint, clamped to the exact min and max: the relative error is at most 1/128 (0.8 %).
/// Values above 2^27 µs (134 s) share the last bucket; `max` stays exact. Recording is one
/// index computation and one increment — no allocation; the 1,408 buckets (11 KiB) are
/// allocated once.
public struct LatencyHistogram: Sendable {
    static let linearBuckets = 128
    static let subBuckets = 64
    /// Powers of two up to 2^27 µs (134 s): beyond any timeout a request could run under.
    static let maxShift = 20
    public static let bucketCount = linearBuckets + maxShift * subBuckets

    public private(set) var counts: [UInt64]
    public private(set) var count: UInt64 = 0
    public private(set) var sum: UInt64 = 0
    public private(set) var min: UInt64 = .max
    public private(set) var max: UInt64 = 0

    public init() {
        counts = Array(repeating: 0, count: Self.bucketCount)
    }

    @inline(__always)
    public static func bucketIndex(_ micros: UInt64) -> Int {
        if micros < UInt64(linearBuckets) { return Int(micros) }
        let highBit = 63 - micros.leadingZeroBitCount          // ≥ 7
        let shift = highBit - 6                                 // (micros >> shift) ∈ [64, 127]
        let index = linearBuckets + (shift - 1) * subBuckets + Int(micros >> UInt64(shift)) - subBuckets
        return Swift.min(index, bucketCount - 1)
    }

    /// The values bucket `index` holds: `lower ..< upper`.
    public static func bucketRange(_ index: Int) -> (lower: UInt64, upper: UInt64) {
        if index < linearBuckets { return (UInt64(index), UInt64(index) + 1) }
        let shift = (index - linearBuckets) / subBuckets + 1
        let mantissa = UInt64((index - linearBuckets) % subBuckets + subBuckets)
        return (mantissa << UInt64(shift), (mantissa + 1) << UInt64(shift))
    }

    @inline(__always)
    public mutating func record(_ micros: UInt64) {
        counts[Self.bucketIndex(micros)] &+= 1
        count &+= 1
        sum &+= micros
        if micros < min { min = micros }
        if micros > max { max = micros }
    }

    /// Adds `other`. Only the buckets between its min and max are visited: merging a window's
    /// slots costs what their latencies span, not the 1,408 buckets.
    public mutating func merge(_ other: LatencyHistogram) {
        guard other.count > 0 else { return }
        for index in Self.bucketIndex(other.min)...Self.bucketIndex(other.max) where other.counts[index] != 0 {
            counts[index] &+= other.counts[index]
        }
        count &+= other.count
        sum &+= other.sum
        min = Swift.min(min, other.min)
        max = Swift.max(max, other.max)
    }

    /// `count` values known only by their bucket: `lower...upper`, one bucket's bounds.
    mutating func add(count added: UInt64, lower: UInt64, upper: UInt64) {
        counts[Self.bucketIndex(lower)] &+= added
        count &+= added
        min = Swift.min(min, lower)
        max = Swift.max(max, upper)
    }

    /// The sum of a histogram built from differences (see `subtracting`).
    mutating func setSum(_ value: UInt64) { sum = value }

    public mutating func reset() {
        if count > 0 {
            for index in Self.bucketIndex(min)...Self.bucketIndex(max) { counts[index] = 0 }
        }
        count = 0
        sum = 0
        min = .max
        max = 0
    }

    /// The value at percentile `p` (0...100): the midpoint of the bucket holding the
    /// ⌈p·count⌉-th smallest value, clamped to the recorded min and max.
    public func percentile(_ p: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, UInt64((p / 100 * Double(count)).rounded(.up)))
        var seen: UInt64 = 0
        for index in Self.bucketIndex(min)...Self.bucketIndex(max) {
            seen &+= counts[index]
            if seen >= rank {
                let range = Self.bucketRange(index)
                let mid = range.lower + (range.upper - range.lower) / 2
                return Swift.min(Swift.max(mid, min), max)
            }
        }
        return max
    }

    public var mean: Double { count == 0 ? 0 : Double(sum) / Double(count) }
}
