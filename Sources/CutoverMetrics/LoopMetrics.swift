import CutoverConfig
import CutoverRouting

/// What one loop records for one app and pool. Owned by the loop's thread: recording is plain
/// stores into memory allocated when the loop first routed to this app and pool.
package final class PoolStats {
    let app: String
    package let pool: PoolID
    package let listener: ListenerKind
    /// The app's number in the process-wide `AppRegistry` (names it in access-log records).
    package let appID: Int32
    package var windows = WindowedStats()
    /// Upstream failures by server id, including attempts that were retried elsewhere.
    var serverErrors: [Int: UpstreamErrorCounts] = [:]
    /// Requests pinned to another pool that had no routable server, sent here instead.
    package var pinFallbacks: UInt64 = 0

    init(app: String, pool: PoolID, listener: ListenerKind, appID: Int32) {
        self.app = app
        self.pool = pool
        self.listener = listener
        self.appID = appID
    }

    @inlinable @inline(__always)
    package func record(_ sample: RequestSample, atNanoseconds now: Int64) {
        windows.record(sample, at: now / 1_000_000_000)
    }

    /// Rare (a failure): the first failure of a server allocates its entry.
    package func upstreamFailed(serverID: Int, kind: WindowedStats.Outcome) {
        serverErrors[serverID, default: UpstreamErrorCounts()].add(kind)
    }
}

/// Upstream failures of one server by kind: connect_failure, reset, timeout, invalid_response.
public struct UpstreamErrorCounts: Sendable, Equatable {
    public static let kinds: [WindowedStats.Outcome] = [.connectFailure, .reset, .timeout, .invalidResponse]
    public var counts: [UInt64] = [0, 0, 0, 0]

    public init() {}

    mutating func add(_ kind: WindowedStats.Outcome) {
        counts[kind.rawValue - WindowedStats.Outcome.connectFailure.rawValue] &+= 1
    }

    public func count(_ kind: WindowedStats.Outcome) -> UInt64 {
        counts[kind.rawValue - WindowedStats.Outcome.connectFailure.rawValue]
    }

    mutating func merge(_ other: UpstreamErrorCounts) {
        for index in counts.indices { counts[index] &+= other.counts[index] }
    }
}

/// All figures of one loop. Read by other threads only through the loop's inbox (`contribute`
/// runs on the loop thread), so the data path needs no lock and no atomic.
package final class LoopMetrics {
    private let apps: AppRegistry
    /// By app, then by pool index (preview listener pools after the main ones).
    private var byApp: [String: [PoolStats?]] = [:]
    /// Shadow diff figures by app (apps that mirror).
    private var shadowByApp: [String: ShadowStats] = [:]
    /// Local answers to requests that matched no app or could not be parsed (400, 404, 408…),
    /// by status code.
    var unroutedStatusCodes = [UInt64](repeating: 0, count: 600)

    package init(apps: AppRegistry) {
        self.apps = apps
    }

    /// The recording target for an app and pool; created once (when a loop first builds a
    /// routing snapshot that gives the pool a share), then reused across publishes.
    package func stats(app: String, pool: PoolID, listener: ListenerKind = .main) -> PoolStats {
        var entry = byApp[app] ?? [PoolStats?](repeating: nil, count: 2 * PoolID.limit)
        let slot = Int(pool.index) + (listener == .preview ? PoolID.limit : 0)
        if let existing = entry[slot] { return existing }
        let created = PoolStats(app: app, pool: pool, listener: listener, appID: apps.id(for: app))
        entry[slot] = created
        byApp[app] = entry
        return created
    }

    /// The shadow figures of `app`, created when the app first mirrors on this loop.
    package func shadow(app: String) -> ShadowStats {
        if let existing = shadowByApp[app] { return existing }
        let created = ShadowStats(app: app, appID: apps.id(for: app))
        shadowByApp[app] = created
        return created
    }

    @inline(__always)
    package func recordUnrouted(status: Int) {
        unroutedStatusCodes[status < 600 ? status : 0] &+= 1
    }

    /// Adds this loop's figures to `snapshot`. Runs on the loop thread.
    package func contribute(to snapshot: inout MetricsSnapshot) {
        for (_, entry) in byApp {
            for stats in entry.compactMap({ $0 }) {
                let key = AppPool(app: stats.app, pool: stats.pool, listener: stats.listener)
                snapshot.pinFallbacks[key.app, default: 0] &+= stats.pinFallbacks
                var figures = snapshot.windowFigures[key] ?? WindowedStats.Figures()
                stats.windows.merge(snapshot.window, at: snapshot.second, into: &figures)
                snapshot.windowFigures[key] = figures
                if snapshot.includesTotals {
                    snapshot.totals[key, default: WindowedStats.Totals()].merge(stats.windows.totals)
                    for (serverID, counts) in stats.serverErrors {
                        snapshot.serverErrors[key, default: [:]][serverID, default: UpstreamErrorCounts()].merge(counts)
                    }
                }
            }
        }
        for index in unroutedStatusCodes.indices where unroutedStatusCodes[index] != 0 {
            snapshot.unroutedStatusCodes[index] &+= unroutedStatusCodes[index]
        }
        for (app, shadow) in shadowByApp {
            var figures = snapshot.shadow[app] ?? ShadowFigures()
            shadow.merge(snapshot.window, atSecond: snapshot.second, into: &figures)
            snapshot.shadow[app] = figures
        }
    }
}

/// Which kind of listener a request came in on. Preview traffic is kept apart so that it
/// never counts as a canary's evidence or in a gate.
public enum ListenerKind: String, Sendable, Hashable, Comparable {
    case main
    case preview
    /// `redirect_http`: every request is answered with a 308 to the same URL in https; nothing
    /// is routed (so no figures are kept by it).
    case redirect

    public static func < (lhs: ListenerKind, rhs: ListenerKind) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// What figures are kept by: an app, one of its pools, and the kind of listener.
public struct AppPool: Hashable, Sendable, Comparable {
    public let app: String
    public let pool: PoolID
    public let listener: ListenerKind

    public init(app: String, pool: PoolID, listener: ListenerKind = .main) {
        self.app = app
        self.pool = pool
        self.listener = listener
    }

    public init(app: String, color: Color, listener: ListenerKind = .main) {
        self.init(app: app, pool: PoolID(color), listener: listener)
    }

    /// The pool's color (the name `status`, `stats` and the metrics report it by).
    public var color: Color { pool.color }

    public static func < (lhs: AppPool, rhs: AppPool) -> Bool {
        (lhs.app, lhs.listener, lhs.pool) < (rhs.app, rhs.listener, rhs.pool)
    }
}

/// The data plane's figures merged across loops, as of one moment.
public struct MetricsSnapshot: Sendable {
    public let window: WindowedStats.Window
    /// When it was taken, on the monotonic clock the loops record with.
    public let nanoseconds: Int64
    public var second: Int64 { nanoseconds / 1_000_000_000 }
    public let includesTotals: Bool
    public var windowFigures: [AppPool: WindowedStats.Figures] = [:]
    public var totals: [AppPool: WindowedStats.Totals] = [:]
    public var serverErrors: [AppPool: [Int: UpstreamErrorCounts]] = [:]
    public var unroutedStatusCodes = [UInt64](repeating: 0, count: 600)
    /// Pinned requests sent to the stable pool because theirs had no routable server, by app.
    public var pinFallbacks: [String: UInt64] = [:]
    /// Shadow diff figures by app (apps that mirrored on some loop).
    public var shadow: [String: ShadowFigures] = [:]
    /// Loops that did not answer in time (stopping): their figures are missing.
    public var loopsMissing = 0

    public init(window: WindowedStats.Window, nanoseconds: Int64, includesTotals: Bool) {
        self.window = window
        self.nanoseconds = nanoseconds
        self.includesTotals = includesTotals
    }

    /// The seconds the window's figures cover: from the oldest slot it merges (or `since`, the
    /// data plane's start, when that is later) to now.
    public func span(since startedNs: Int64) -> Double {
        let windowStart: Int64
        switch window {
        case .tenSeconds: windowStart = (second - 9) * 1_000_000_000
        case .oneMinute: windowStart = (second / 10 - 5) * 10_000_000_000
        case .fiveMinutes: windowStart = (second / 60 - 4) * 60_000_000_000
        case .total: windowStart = startedNs
        }
        return max(0.001, Double(nanoseconds - max(windowStart, startedNs)) / 1e9)
    }

    /// Main-listener figures (what gates and canaries judge).
    public func figures(app: String, color: Color, listener: ListenerKind = .main) -> WindowedStats.Figures {
        windowFigures[AppPool(app: app, color: color, listener: listener)] ?? WindowedStats.Figures()
    }

    package mutating func merge(_ other: MetricsSnapshot) {
        for (key, figures) in other.windowFigures { windowFigures[key, default: WindowedStats.Figures()].merge(figures) }
        for (key, totals) in other.totals { self.totals[key, default: WindowedStats.Totals()].merge(totals) }
        for (key, servers) in other.serverErrors {
            for (id, counts) in servers { serverErrors[key, default: [:]][id, default: UpstreamErrorCounts()].merge(counts) }
        }
        for index in unroutedStatusCodes.indices { unroutedStatusCodes[index] &+= other.unroutedStatusCodes[index] }
        for (app, count) in other.pinFallbacks { pinFallbacks[app, default: 0] &+= count }
        for (app, figures) in other.shadow { shadow[app, default: ShadowFigures()].merge(figures) }
    }
}
