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

/// How each request picks its bucket of a split. A new way (a sticky cookie, a header, the
/// client address) is a new case here and a new `PoolSelector` type; the data plane builds one
/// selector per loop and app from it and asks it for a bucket per request.
public enum PoolSelection: Sendable, Equatable {
    /// Per request, evenly interleaved: every 10,000 consecutive requests cover every bucket once.
    case spread

    /// A fresh selector (one per loop and app: selectors keep their own state).
    public func makeSelector() -> any PoolSelector {
        switch self {
        case .spread: return SpreadSelector()
        }
    }
}

/// What a selector may look at to place a request. Bytes of the request head, valid for the
/// call only.
public struct RoutingRequest {
    public var authority: UnsafeRawBufferPointer
    public var path: UnsafeRawBufferPointer

    public init(authority: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer) {
        self.authority = authority
        self.path = path
    }
}

/// Places requests in the buckets of a split. Owned by one loop.
public protocol PoolSelector {
    /// A bucket in 0..<10,000 for this request.
    mutating func bucket(for request: RoutingRequest) -> Int
}

/// Steps through the buckets by a stride coprime to 10,000: 10,000 consecutive requests visit
/// every bucket exactly once, so each pool gets its exact share of every 10,000 requests, and
/// its requests are spread out, not bunched (no random numbers, nothing per request but an add).
public struct SpreadSelector: PoolSelector {
    /// Odd and not a multiple of 5, so coprime to 10,000; near 10,000 / golden ratio.
    public static let stride = 6_181
    private var next = 0

    public init(start: Int = 0) {
        next = start % TrafficSplit.basisPoints
    }

    public mutating func bucket(for request: RoutingRequest) -> Int {
        let bucket = next
        next += Self.stride
        if next >= TrafficSplit.basisPoints { next -= TrafficSplit.basisPoints }
        return bucket
    }
}
