import CutoverMetrics
import CutoverRouting

/// A loop's private view of the published routing table, rebuilt when the generation changes.
/// Everything a request touches lives here, owned by one thread: matching reads flat byte
/// arrays, selectors and round-robin cursors are plain integers.
final class LocalRouting {
    let generation: UInt64
    let table: RoutingTable
    let matcher: RouteMatcher
    /// By app index (the matcher's answer).
    let apps: [LocalApp]

    /// `previous` hands its selectors on to apps whose split did not change, so a publish
    /// (a health change, a drain) does not restart how requests are spread.
    init(table: RoutingTable, generation: UInt64, metrics: LoopMetrics, previous: LocalRouting? = nil) {
        self.generation = generation
        self.table = table
        matcher = RouteMatcher(apps: table.apps)
        var kept: [String: LocalApp] = [:]
        for app in previous?.apps ?? [] { kept[app.name] = app }
        apps = table.apps.map { app in
            LocalApp(app, metrics: metrics, previous: kept[app.name].flatMap { $0.split == app.split ? $0 : nil })
        }
    }
}

/// One app as a loop routes it: its pools that have a share of the split, and the selector
/// that places each request in the split.
final class LocalApp {
    let name: String
    let split: TrafficSplit
    /// The pool taking every request, when one does: no selection per request.
    private let sole: LocalPool?
    /// Pools with a share, by pool index (nil: no share; nothing is recorded for it).
    private let pools: [LocalPool?]
    private var selector: (any PoolSelector)?

    init(_ app: AppRoute, metrics: LoopMetrics, previous: LocalApp?) {
        name = app.name
        split = app.split
        var pools = [LocalPool?](repeating: nil, count: PoolID.limit)
        for share in app.split.shares {
            pools[Int(share.pool.index)] = LocalPool(app: app.name, pool: share.pool, servers: app.servers(share.pool),
                                                     stats: metrics.stats(app: app.name, pool: share.pool))
        }
        self.pools = pools
        sole = app.split.soleTarget.flatMap { pools[Int($0.index)] }
        selector = sole == nil ? (previous?.selector ?? app.split.selection.makeSelector()) : nil
    }

    /// The pool for a request.
    @inline(__always)
    func choosePool(_ request: RoutingRequest) -> LocalPool {
        if let sole { return sole }
        let bucket = selector!.bucket(for: request)
        return pools[Int(split.pool(forBucket: bucket).index)]!
    }
}

/// Where a loop sends one app's requests of one pool: its servers and a round-robin cursor.
final class LocalPool {
    let app: String
    let pool: PoolID
    let servers: [ServerEntry]
    /// Where this loop records the requests it sends to this pool.
    let stats: PoolStats
    private var cursor = 0

    init(app: String, pool: PoolID, servers: [ServerEntry], stats: PoolStats) {
        self.app = app
        self.pool = pool
        self.servers = servers
        self.stats = stats
    }

    /// The next routable server, skipping `excluding` (a server that just failed this request)
    /// when another is available. Never looks at another pool.
    func next(excluding: Int = -1) -> ServerEntry? {
        let count = servers.count
        var fallback: ServerEntry? = nil
        for _ in 0..<count {
            let candidate = servers[cursor % count]
            cursor = cursor &+ 1
            guard candidate.routable else { continue }
            if candidate.id != excluding { return candidate }
            fallback = candidate
        }
        return fallback
    }
}
