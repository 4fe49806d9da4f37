import CutoverConfig

/// One pool of an app, named by a small number: per-loop counters, metrics and access-log
/// records carry it as a byte, never a string. Today an app has two pools, its blue and its
/// green copy of the stack.
public struct PoolID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// At most this many pools per app (the width of the per-loop counter slots).
    public static let limit = 8
    public let index: UInt8

    public init(_ color: Color) {
        index = color == .blue ? 0 : 1
    }

    public init(index: UInt8) {
        self.index = index
    }

    public static let blue = PoolID(.blue)
    public static let green = PoolID(.green)
    public static let all: [PoolID] = [.blue, .green]

    public var color: Color { index == 0 ? .blue : .green }
    public var name: String { color.rawValue }
    public var description: String { name }

    public static func < (lhs: PoolID, rhs: PoolID) -> Bool { lhs.index < rhs.index }
}

/// How an app's requests are shared among its pools: a share per pool in basis points (1/100 %,
/// adding up to 10,000) and how each request picks its share (`selection`).
///
/// Buckets 0..<10,000 are laid out in `order`: the first pool takes the lowest buckets. A
/// candidate listed first keeps the buckets it had when its weight grows, so a request key that
/// hashes to a bucket (a sticky selector) never moves from the candidate back to the stable
/// pool while the candidate's weight rises.
public struct TrafficSplit: Sendable, Equatable {
    public static let basisPoints = 10_000

    /// Pools and their shares, in bucket order; shares of 0 are left out.
    public private(set) var shares: [(pool: PoolID, basisPoints: Int)]
    public var selection: PoolSelection

    /// Every request to `pool`: the blue/green switch, and what an app starts with.
    public static func all(to pool: PoolID) -> TrafficSplit {
        TrafficSplit(shares: [(pool, basisPoints)], selection: .spread)
    }

    /// `candidateBasisPoints` of the requests to `candidate`, the rest to `stable`.
    public static func weighted(stable: PoolID, candidate: PoolID, candidateBasisPoints: Int,
                                selection: PoolSelection = .spread) -> TrafficSplit {
        let weight = min(max(candidateBasisPoints, 0), basisPoints)
        var shares: [(pool: PoolID, basisPoints: Int)] = []
        if weight > 0 { shares.append((candidate, weight)) }
        if weight < basisPoints { shares.append((stable, basisPoints - weight)) }
        return TrafficSplit(shares: shares, selection: selection)
    }

    private init(shares: [(pool: PoolID, basisPoints: Int)], selection: PoolSelection) {
        self.shares = shares
        self.selection = selection
    }

    /// The pool that takes every request, when one does (no selection needed).
    public var soleTarget: PoolID? { shares.count == 1 ? shares[0].pool : nil }

    /// The share of `pool`, in basis points.
    public func share(of pool: PoolID) -> Int { shares.first { $0.pool == pool }?.basisPoints ?? 0 }

    /// The pool that takes the largest share (the first of equals).
    public var largestShare: PoolID { shares.max { $0.basisPoints < $1.basisPoints }!.pool }

    /// Which pool a bucket in 0..<10,000 belongs to.
    @inlinable
    public func pool(forBucket bucket: Int) -> PoolID {
        var upper = 0
        for share in shares {
            upper += share.basisPoints
            if bucket < upper { return share.pool }
        }
        return shares[shares.count - 1].pool
    }

    public static func == (lhs: TrafficSplit, rhs: TrafficSplit) -> Bool {
        lhs.selection == rhs.selection && lhs.shares.elementsEqual(rhs.shares) { $0.pool == $1.pool && $0.basisPoints == $1.basisPoints }
    }
}

/// How each request picks its bucket of a split.
public enum PoolSelection: Sendable, Equatable {
    /// Per request, evenly interleaved (`SpreadSelector`): exact shares, no stickiness.
    case spread
    /// By a key of the request (cookie, header, client address) hashed with `seed`
    /// (`StickyHash.seed(salt:app:)`): the same key lands in the same bucket for the whole
    /// release. Requests without a key fall back to `spread` (a cookie rule makes one).
    case sticky(StickyRule, seed: UInt64)
}

/// Steps through the buckets by a stride coprime to 10,000: 10,000 consecutive requests visit
/// every bucket exactly once, so each pool gets its exact share of every 10,000 requests, and
/// its requests are spread out, not bunched (no random numbers, nothing per request but an add).
/// Owned by one loop.
public struct SpreadSelector {
    /// Odd and not a multiple of 5, so coprime to 10,000; near 10,000 / golden ratio.
    public static let stride = 6_181
    @usableFromInline var next = 0

    public init(start: Int = 0) {
        next = start % TrafficSplit.basisPoints
    }

    @inlinable
    public mutating func nextBucket() -> Int {
        let bucket = next
        next += Self.stride
        if next >= TrafficSplit.basisPoints { next -= TrafficSplit.basisPoints }
        return bucket
    }
}

/// The bucket of a sticky key: `hash(salt, app, key) mod 10,000`.
///
/// The hash is FNV-1a over the key's bytes, started from a seed that mixes the release salt
/// and the app name, and finished with MurmurHash3's 64-bit finaliser so that short keys and
/// keys differing in one byte still spread over every bucket. The bucket is taken from the
/// high half of a 64×64 multiply (no modulo bias). Nothing is allocated.
public enum StickyHash {
    /// The per-app, per-release start of the hash: a new salt reshuffles every user, the same
    /// salt (kept in the state file) keeps them where they are across restarts.
    public static func seed(salt: UInt64, app: String) -> UInt64 {
        var hash = finalize(salt ^ 0x9E37_79B9_7F4A_7C15)
        for byte in app.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return finalize(hash)
    }

    @inlinable
    public static func bucket(seed: UInt64, key: UnsafeRawBufferPointer) -> Int {
        var hash = seed ^ 0xCBF2_9CE4_8422_2325
        for byte in key { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        hash = finalize(hash ^ UInt64(truncatingIfNeeded: key.count))
        return Int(truncatingIfNeeded: hash.multipliedFullWidth(by: UInt64(TrafficSplit.basisPoints)).high)
    }

    public static func bucket(seed: UInt64, key: String) -> Int {
        var key = key
        return key.withUTF8 { bucket(seed: seed, key: UnsafeRawBufferPointer($0)) }
    }

    @inlinable @inline(__always)
    static func finalize(_ value: UInt64) -> UInt64 {
        var x = value
        x ^= x >> 33
        x &*= 0xFF51_AFD7_ED55_8CCD
        x ^= x >> 33
        x &*= 0xC4CE_B9FE_1A85_EC53
        x ^= x >> 33
        return x
    }
}
