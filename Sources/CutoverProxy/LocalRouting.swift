import CutoverConfig
import CutoverHTTP
import CutoverMetrics
import CutoverRouting

/// A loop's private view of the published routing table, rebuilt when the generation changes.
/// Everything a request touches lives here, owned by one thread: matching reads flat byte
/// arrays, selectors and round-robin cursors are plain integers, pins are the loop's own tables.
final class LocalRouting {
    let generation: UInt64
    let table: RoutingTable
    let matcher: RouteMatcher
    /// By app index (the matcher's answer).
    let apps: [LocalApp]

    /// `previous` hands its selectors (and pin tables) on to apps whose policy did not change,
    /// so a publish (a health change, a drain) does not restart how requests are spread.
    init(table: RoutingTable, generation: UInt64, metrics: LoopMetrics, previous: LocalRouting? = nil) {
        self.generation = generation
        self.table = table
        matcher = RouteMatcher(apps: table.apps)
        var kept: [String: LocalApp] = [:]
        for app in previous?.apps ?? [] { kept[app.name] = app }
        apps = table.apps.map { app in LocalApp(app, metrics: metrics, previous: kept[app.name]) }
    }
}

/// What a request offers for routing: its head's bytes and fields and the client's address,
/// valid for the call only.
struct RoutingRequest {
    var source: UnsafeRawBufferPointer
    var fields: UnsafeMutableBufferPointer<HeaderField>
    var fieldCount: Int
    var clientAddress: PeerAddress
    var listener: ListenerKind
}

/// Where a request goes, and the sticky cookie its response must set (a request that came
/// without one and was placed by a fresh id).
struct RoutingDecision {
    var pool: LocalPool
    /// Zero: no cookie to set.
    var newStickyID: UInt64 = 0
}

/// One app as a loop routes it: the pools of its split, its pins, its preview pool and how a
/// request is placed in the split.
///
/// Order of decisions: the preview listener → the candidate, always (503 when it has no
/// routable server, never the stable pool); a matching pin → its pool (the stable pool when the
/// pinned one has no routable server, counted); otherwise the split, by the sticky key's bucket.
final class LocalApp {
    let name: String
    let policy: AppPolicy
    /// The pool taking every request when the split has one target.
    private var sole: LocalPool? = nil
    /// Main-listener pools by pool index, made when first needed (a pin or the split).
    private var pools: [LocalPool?]
    private let metrics: LoopMetrics
    private let route: AppRoute
    /// The candidate's pool as the preview listener reaches it (its own figures).
    private(set) lazy var previewPool = LocalPool(
        app: name, pool: policy.candidate, servers: route.servers(policy.candidate),
        stats: metrics.stats(app: name, pool: policy.candidate, listener: .preview), stickyCookie: nil)
    private var spread: SpreadSelector
    private let seed: UInt64
    private let sticky: StickyRule
    /// The sticky cookie's or header's name as bytes (lowercase for a header).
    let stickyName: [UInt8]
    private let pins: PinIndex
    /// Mirroring: the share of the stable pool's requests copied to the candidate, and which
    /// of them (an exact interleaved share, like the split's).
    let mirror: MirrorSettings
    private var mirrorCursor: SpreadSelector
    /// `mirror_methods` as bytes, and the hashes of `mirror_ignore_headers`.
    private let mirrorMethods: [[UInt8]]
    let mirrorIgnored: Set<UInt64>
    private(set) lazy var shadowStats = metrics.shadow(app: name)
    let shadowNames: ShadowHeaderNames

    init(_ app: AppRoute, metrics: LoopMetrics, previous: LocalApp?) {
        name = app.name
        policy = app.policy
        route = app
        self.metrics = metrics
        let unchanged = previous.map { $0.policy.split == app.split } ?? false
        spread = unchanged ? previous!.spread : SpreadSelector()
        pins = previous.flatMap { $0.policy.pins == app.policy.pins ? $0.pins : nil } ?? PinIndex(app.policy.pins)
        mirror = app.policy.mirror
        mirrorCursor = previous.flatMap { $0.mirror == app.policy.mirror ? $0.mirrorCursor : nil } ?? SpreadSelector()
        mirrorMethods = mirror.methods.map { Array($0.utf8) }
        mirrorIgnored = Set(mirror.ignoreHeaders.map(ShadowHeaderNames.hashLowercased))
        shadowNames = previous?.shadowNames ?? ShadowHeaderNames()
        switch app.split.selection {
        case .spread:
            sticky = .none
            seed = 0
        case .sticky(let rule, let seed):
            sticky = rule
            self.seed = seed
        }
        switch sticky {
        case .cookie(let name, _): stickyName = Array(name.utf8)
        case .header(let name): stickyName = Array(name.lowercased().utf8)
        case .none, .clientAddress: stickyName = []
        }
        if case .cookie(_, let maxAge) = sticky { stickyCookie = (stickyName, maxAge) } else { stickyCookie = nil }
        pools = [LocalPool?](repeating: nil, count: PoolID.limit)
        for share in app.split.shares { _ = localPool(share.pool) }
        sole = app.split.soleTarget.flatMap { pools[Int($0.index)] }
    }

    private let stickyCookie: (name: [UInt8], maxAge: Int)?

    /// Whether this request (routed to `pool`) is one of the mirrored share: only requests the
    /// stable pool serves are copied (a copy of a canary request would compare the candidate
    /// with itself).
    @inline(__always)
    func selectsForMirror(_ pool: LocalPool) -> Bool {
        guard mirror.basisPoints > 0, pool.pool == policy.stable else { return false }
        return mirrorCursor.nextBucket() < mirror.basisPoints
    }

    func mirrorsMethod(_ method: UnsafeRawBufferPointer) -> Bool {
        mirrorMethods.contains { $0.count == method.count && $0.elementsEqual(method) }
    }

    /// The pool copies go to.
    var candidatePool: LocalPool { localPool(policy.candidate) }
    var stablePool: LocalPool { localPool(policy.stable) }

    /// The main-listener pool of `pool`, made on first use.
    private func localPool(_ pool: PoolID) -> LocalPool {
        if let existing = pools[Int(pool.index)] { return existing }
        let created = LocalPool(app: name, pool: pool, servers: route.servers(pool), stats: metrics.stats(app: name, pool: pool),
                                stickyCookie: stickyCookie)
        pools[Int(pool.index)] = created
        return created
    }

    /// Where a request goes. `newID` makes a fresh sticky id (only called when a cookie rule
    /// finds no valid cookie).
    @inline(__always)
    func choose(_ request: RoutingRequest, newID: () -> UInt64) -> RoutingDecision {
        if request.listener == .preview { return RoutingDecision(pool: previewPool) }
        if !pins.isEmpty, let pinned = pinnedPool(request) { return RoutingDecision(pool: pinned) }
        if let sole { return RoutingDecision(pool: sole) }
        var decision = RoutingDecision(pool: localPool(policy.stable))
        let bucket: Int
        switch sticky {
        case .none:
            bucket = spread.nextBucket()
        case .cookie:
            if let value = stickyName.withUnsafeBytes({ name in
                CookieScanner.value(named: name, source: request.source, fields: request.fields, count: request.fieldCount)
            }) {
                bucket = StickyHash.bucket(seed: seed, key: UnsafeRawBufferPointer(rebasing: request.source[value.lowerBound..<value.upperBound]))
            } else {
                let id = newID()
                decision.newStickyID = id
                bucket = Self.bucket(seed: seed, id: id)
            }
        case .header:
            if let value = stickyName.withUnsafeBytes({ name in
                RequestFields.firstValue(named: name, source: request.source, fields: request.fields, count: request.fieldCount)
            }), !value.isEmpty {
                bucket = StickyHash.bucket(seed: seed, key: UnsafeRawBufferPointer(rebasing: request.source[value.lowerBound..<value.upperBound]))
            } else {
                bucket = spread.nextBucket()
            }
        case .clientAddress:
            bucket = request.clientAddress.withText { StickyHash.bucket(seed: seed, key: $0) }
        }
        decision.pool = localPool(policy.split.pool(forBucket: bucket))
        return decision
    }

    /// The bucket of a fresh id exactly as it will be hashed when it comes back as a cookie
    /// (its 16 hex digits).
    static func bucket(seed: UInt64, id: UInt64) -> Int {
        var text: (UInt64, UInt64) = (0, 0)
        return withUnsafeMutableBytes(of: &text) { raw in
            var writer = ByteWriter(raw)
            writer.writeHex16(id)
            return StickyHash.bucket(seed: seed, key: UnsafeRawBufferPointer(rebasing: raw[0..<16]))
        }
    }

    /// The pool of the first pin the request matches, or nil. A pin to a pool with no
    /// routable server sends the request to the stable pool (counted there).
    private func pinnedPool(_ request: RoutingRequest) -> LocalPool? {
        for lookup in pins.lookups {
            let found: ByteRange? = lookup.name.withUnsafeBytes { name in
                switch lookup.source {
                case .header:
                    return RequestFields.firstValue(named: name, source: request.source, fields: request.fields, count: request.fieldCount)
                case .cookie:
                    return CookieScanner.value(named: name, source: request.source, fields: request.fields, count: request.fieldCount)
                }
            }
            guard let found, let pool = lookup.table.pool(for: UnsafeRawBufferPointer(rebasing: request.source[found.lowerBound..<found.upperBound])) else {
                continue
            }
            let pinned = localPool(pool)
            if pinned.hasRoutableServer { return pinned }
            let stable = localPool(policy.stable)
            stable.stats.pinFallbacks &+= 1
            return stable
        }
        return nil
    }
}

/// Where a loop sends one app's requests of one pool: its servers and a round-robin cursor.
final class LocalPool {
    let app: String
    let pool: PoolID
    let servers: [ServerEntry]
    /// Where this loop records the requests it sends to this pool.
    let stats: PoolStats
    /// The app's sticky cookie, set on responses to requests that came without one.
    let stickyCookie: (name: [UInt8], maxAge: Int)?
    private var cursor = 0

    init(app: String, pool: PoolID, servers: [ServerEntry], stats: PoolStats, stickyCookie: (name: [UInt8], maxAge: Int)? = nil) {
        self.app = app
        self.pool = pool
        self.servers = servers
        self.stats = stats
        self.stickyCookie = stickyCookie
    }

    var hasRoutableServer: Bool { servers.contains { $0.routable } }

    /// The next routable server, skipping `excluding` (a server that just failed this request)
    /// when another is available — or, with `strictly`, always (a server that refused a connect
    /// is not asked again at once: nil when it is the only one). Never looks at another pool.
    func next(excluding: Int = -1, strictly: Bool = false) -> ServerEntry? {
        let count = servers.count
        var fallback: ServerEntry? = nil
        for _ in 0..<count {
            let candidate = servers[cursor % count]
            cursor = cursor &+ 1
            guard candidate.routable else { continue }
            if candidate.id != excluding { return candidate }
            fallback = candidate
        }
        return strictly ? nil : fallback
    }
}
