import CutoverConfig
import CutoverMetrics
import CutoverSystem
import CutoverViews
import Dispatch
import Glibc
import Synchronization

extension ControlPlane {
    /// The history sampler's thread: a reading waits for every data-plane loop, so it never
    /// runs on the control loop.
    static let historyQueue = DispatchQueue(label: "cutover-history")

    /// Called every 100 ms from the control loop: once a new second has begun, takes a reading
    /// of the data plane's running totals into the history (at most one reading in flight).
    func sampleHistory() {
        guard let source = lock.withLock({ dataPlane }) else { return }
        let second = monotonicNanoseconds() / 1_000_000_000
        if let newest = history.withLock({ $0.newestSecond }), second <= newest { return }
        guard historySampling.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        Self.historyQueue.async { [self] in
            let snapshot = source.snapshot(.total, false)
            if snapshot.loopsMissing == 0 {
                history.withLock { $0.record(totals: snapshot.windowFigures, atSecond: snapshot.second) }
            }
            historySampling.store(false, ordering: .releasing)
        }
    }

    /// `overview [seconds]`, and `/status.json` on the metrics listener: what `cutover top`
    /// and the status page show, in one reply. Figures of the last 10 s per app and color,
    /// their last `seconds` (1-300) one value a second, servers, the release, the last audit
    /// records. README, "Operator views", documents every field.
    func overviewReport(seriesSeconds: Int = 60) -> JSON {
        guard let source = attachedDataPlane.source else {
            return ["ok": false, "error": "the data plane is not running"]
        }
        let status = statusReport()
        let snapshot = source.snapshot(.tenSeconds, false)
        let span = snapshot.span(since: source.startedNs)
        let history = history.withLock { $0 }
        let release = releaseStatus()["release"] ?? .null
        let (apps, active) = lock.withLock { () -> ([JSON], Color) in
            let active = state.active
            let apps: [JSON] = config.apps.map { app in
                let candidateShare = state.candidateBasisPoints(app.name)
                let pins = app.pins + (state.pins[app.name] ?? [])
                var pinned: [(String, JSON)] = []
                var rows: [JSON] = []
                for color in Color.allCases {
                    let values = pins.filter { $0.color == color }.reduce(0) { $0 + $1.values.count }
                    pinned.append((color.rawValue, .int(Int64(values))))
                    let share = color == active ? 10_000 - candidateShare : candidateShare
                    let figures = snapshot.figures(app: app.name, color: color)
                    let series = history.series(app: app.name, color: color, seconds: seriesSeconds)
                    let servers: [JSON] = app.servers(color).map { serverReport(ServerKey(app: app.name, color: color, server: $0.description)) }
                    rows.append(Self.overviewRow(color: color, share: share, figures: figures, span: span, servers: servers,
                                                 series: series, endTime: timestamp(clock())))
                }
                var pairs: [(String, JSON)] = [
                    ("name", .string(app.name)), ("stable", .string(active.rawValue)), ("candidate", .string(active.other.rawValue)),
                    ("candidate_bp", .int(Int64(candidateShare))),
                    ("mirror_bp", .int(Int64(state.mirrors[app.name] ?? app.mirror.basisPoints))),
                    ("pins", .object(pinned)), ("colors", .array(rows)),
                ]
                pairs.append(("shadow", snapshot.shadow[app.name].map { Self.shadowRow(app: app.name, figures: $0) } ?? .null))
                return .object(pairs)
            }
            return (apps, active)
        }
        var audit: [JSON] = []
        if let log = self.audit, let lines = try? log.tail(10) {
            audit = lines.compactMap { JSON.parse($0) }
        }
        return .object([
            ("ok", true), ("time", .string(timestamp(clock()))), ("active", .string(active.rawValue)),
            ("previous", status["previous"] ?? .null), ("generation", status["generation"] ?? .null),
            ("last_switch", status["last_switch"] ?? .null), ("window", "10s"), ("release", release),
            ("colors", status["colors"] ?? .null), ("apps", .array(apps)), ("audit", .array(audit)),
        ])
    }

    static func overviewRow(color: Color, share: Int, figures: WindowedStats.Figures, span: Double, servers: [JSON],
                            series: StatusHistory.Series, endTime: String) -> JSON {
        func numbers(_ values: [Double?], places: Int) -> JSON { .array(values.map { $0.map { .double(rounded($0, places)) } ?? .null }) }
        func micros(_ values: [UInt64?]) -> JSON { .array(values.map { $0.map { .int(Int64($0)) } ?? .null }) }
        return [
            "color": .string(color.rawValue), "share_bp": .int(Int64(share)),
            "requests": .int(Int64(figures.requests)), "rps": .double(rounded(Double(figures.requests) / span, 1)),
            "2xx": .int(Int64(figures.count(.success))), "4xx": .int(Int64(figures.count(.clientError))),
            "5xx": .int(Int64(figures.count(.serverError) + figures.upstreamErrors)),
            "5xx_rate": .double(rounded(figures.serverErrorRate, 6)),
            "p50_us": .int(Int64(figures.latency.percentile(50))), "p95_us": .int(Int64(figures.latency.percentile(95))),
            "p99_us": .int(Int64(figures.latency.percentile(99))),
            "servers": .array(servers),
            "series": ["seconds": .int(Int64(series.p99.count)), "end": .string(endTime),
                       "rps": numbers(series.requestsPerSecond, places: 1), "5xx_rate": numbers(series.serverErrorRate, places: 6),
                       "p50_us": micros(series.p50), "p95_us": micros(series.p95), "p99_us": micros(series.p99)],
        ]
    }

    /// The status page for the metrics listener: the overview of the last 5 minutes as HTML.
    func statusPage() -> String? {
        let report = overviewReport(seriesSeconds: 300)
        guard let overview = try? Overview(report) else { return nil }
        return StatusPage.render(overview)
    }
}

extension ControlPlane {
    /// Every server has a first check result (or has no active checks): what "started" means to
    /// a service manager. Waits at most `timeoutMs`; returns whether health is known.
    public func waitUntilHealthKnown(timeoutMs: Int) -> Bool {
        let deadline = monotonicMilliseconds() + Int64(timeoutMs)
        while true {
            let known = lock.withLock { !health.values.contains { $0.state == .unknown } }
            if known { return true }
            if monotonicMilliseconds() >= deadline { return false }
            usleep(20_000)
        }
    }

    /// One line for `systemctl status`: the active color, a canary's shares, the generation.
    public var serviceStatus: String {
        lock.withLock {
            let canaries = config.apps.compactMap { app -> String? in
                let share = state.candidateBasisPoints(app.name)
                return share > 0 ? "\(app.name) \(Format.share(basisPoints: share))" : nil
            }
            let canary = canaries.isEmpty ? "" : ", canary \(state.active.other.rawValue) " + canaries.joined(separator: ", ")
            return "active \(state.active.rawValue)\(canary), generation \(state.generation)"
        }
    }
}
