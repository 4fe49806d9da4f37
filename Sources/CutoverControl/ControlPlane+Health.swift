import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS
import Foundation

extension ControlPlane {
    // MARK: Health checking

    /// Checks every server of every app in both colors, on the checker's one thread; ten times a
    /// second it also watches the data plane (`observeDataPlane`). A reload calls it again: the
    /// results of the previous generation are dropped.
    public func startChecks() {
        let (generation, targets): (Int, [ControlLoop.Target]) = lock.withLock {
            checkerGeneration += 1
            let targets = health.keys.sorted().compactMap { key -> ControlLoop.Target? in
                guard let app = config.apps.first(where: { $0.name == key.app }), app.activeChecks,
                      let address = addresses[key]?.address else { return nil }
                let request = ProbeRequest(address: address, host: Self.checkHost(app, server: key.server), path: app.healthPath,
                                           timeoutMs: config.health.timeoutMs, tls: upstreamTLS[UpstreamTLSTarget.key(app: key.app, server: key.server)])
                return ControlLoop.Target(key: key, request: request, intervalMs: config.health.intervalMs)
            }
            return (checkerGeneration, targets)
        }
        checker.check(targets, probe: probe, periodMs: 100, periodic: { [weak self] in self?.observeDataPlane() },
                      report: { [weak self] key, outcome in self?.record(outcome, for: key, generation: generation) })
    }

    public func stop() {
        lock.withLock { stopped = true }
        checker.stop()
        notifier.stop()
    }

    /// After a hot upgrade: no more checks, release evaluations or history samples here (the
    /// new process runs its own), while the control loop keeps answering the admin clients
    /// still connected.
    public func quiesce() {
        lock.withLock { stopped = true }
        checker.check([], probe: probe, periodMs: 3_600_000, periodic: {}, report: { _, _ in })
    }

    /// Runs ten times a second for the life of the process, so it allocates nothing unless
    /// something happened.
    func observeDataPlane() {
        guard let counters = lock.withLock({ self.counters }) else { return }
        let servers = lock.withLock { keysByServerID }
        for (id, keys) in servers {
            let total = counters.connectFailures(serverID: id)
            let new: UInt64 = lock.withLock {
                let seen = passiveSeen[id] ?? 0
                passiveSeen[id] = max(seen, total)
                return total > seen ? total - seen : 0
            }
            guard new > 0 else { continue }
            for _ in 0..<min(new, 16) {
                for key in keys { record(.failure(reason: "passive: connection to the server failed"), for: key) }
            }
        }
        scheduleReleaseEvaluation()
        sampleHistory()
        let now = clock()
        lock.withLock {
            // Without active checks nothing would bring a server back: one marked down by failed
            // connects is taken as up again one interval later (and marked down again if the
            // data plane still cannot reach it) — nginx's fail_timeout.
            var revived = false
            for (key, entry) in health where entry.state == .down && now - entry.since >= Int64(config.health.intervalMs) {
                guard config.apps.first(where: { $0.name == key.app })?.activeChecks == false else { continue }
                health[key]?.assumeUp(at: now)
                logger.log(.info, "health: app \(key.app) \(key.color.rawValue) \(key.server) is tried again (no active checks: health_path off)")
                revived = true
            }
            if revived {
                updateReadiness(at: now)
                publishRoutabilityLocked()
            }
            if var last = lastSwitch, last.drainedAt == nil, counters.inflight(last.from) == 0 {
                last.drainedAt = now
                lastSwitch = last
            }
        }
    }

    /// Records a check result; republishes routing when a server went up or down. A result of
    /// an older checker generation (the config was reloaded meanwhile) is dropped.
    package func record(_ outcome: CheckOutcome, for key: ServerKey, generation: Int? = nil) {
        lock.withLock {
            if let generation, generation != checkerGeneration || stopped { return }
            guard var entry = health[key] else { return }
            let now = clock()
            let changed = entry.record(outcome, at: now, rise: config.health.rise, fall: config.health.fall)
            health[key] = entry
            if changed {
                logger.log(entry.state == .down ? .warning : .info,
                           "health: app \(key.app) \(key.color.rawValue) \(key.server) is \(entry.state.rawValue) (\(outcome.summary))")
                updateReadiness(at: now)
                publishRoutabilityLocked()
            }
        }
    }

    /// The Host of checks: `health_host`, else the app's first host name, else the server.
    static func checkHost(_ app: AppConfig, server: String) -> String {
        app.healthHost ?? app.hosts.first { $0 != "*" } ?? server
    }

    // MARK: Routing

    func rebuildTargets(from table: RoutingTable) {
        var fresh: [ServerKey: ServerHealth] = [:]
        var freshAddresses: [ServerKey: (SocketAddress, Int)] = [:]
        let now = clock()
        for app in table.apps {
            for color in Color.allCases {
                for server in app.servers(color) {
                    let key = ServerKey(app: app.name, color: color, server: server.name)
                    var entry = health[key] ?? ServerHealth(now: now)
                    if health[key] == nil, config.apps.first(where: { $0.name == app.name })?.activeChecks == false {
                        entry.assumeUp(at: now)  // no probe will ever say so
                    }
                    fresh[key] = entry
                    freshAddresses[key] = (server.address, server.id)
                }
            }
        }
        health = fresh
        addresses = freshAddresses.mapValues { (address: $0.0, id: $0.1) }
        keysByServerID = Dictionary(grouping: addresses.keys, by: { addresses[$0]!.id })
            .map { (id: $0.key, keys: $0.value.sorted()) }.sorted { $0.id < $1.id }
        updateReadiness(at: now)
    }

    func isRoutable(_ key: ServerKey) -> Bool {
        (health[key]?.isRoutable ?? true) && !isDrained(key)
    }

    func publishRoutability() {
        lock.withLock { publishRoutabilityLocked() }
    }

    func publishRoutabilityLocked() {
        publisher.update { table in
            table.withRoutability { app, color, server in
                self.isRoutable(ServerKey(app: app, color: color, server: server.name))
            }
        }
    }

    /// Each app's servers of `color`, and how many of them count as up: healthy and not
    /// drained. The one place readiness is computed from; the gates and `status` word it.
    func serversUp(_ color: Color) -> [(app: String, keys: [ServerKey], up: Int)] {
        config.apps.map { app in
            let keys = app.servers(color).map { ServerKey(app: app.name, color: color, server: $0.description) }
            return (app.name, keys, keys.filter(countsAsUp).count)
        }
    }

    func countsAsUp(_ key: ServerKey) -> Bool {
        health[key]?.state == .up && !isDrained(key)
    }

    func updateReadiness(at now: Int64) {
        for color in Color.allCases {
            let holds = serversUp(color).allSatisfy { $0.up >= config.health.minHealthy }
            readiness[color, default: ColorReadiness()].update(conditionHolds: holds, at: now)
        }
    }

    // MARK: Gates

    /// Why `color` may not take traffic now (empty when it may): every app needs `min_healthy`
    /// servers up, continuously for `ready_after`. Names the app, the server, its check and
    /// since when.
    func notReady(_ color: Color, at now: Int64) -> [NotReady] {
        var problems: [NotReady] = []
        let minHealthy = config.health.minHealthy
        for app in serversUp(color) where app.up < minHealthy {
            problems.append(.tooFewUp(app: app.app, color: color, up: app.up, total: app.keys.count, minHealthy: minHealthy))
            for key in app.keys where !countsAsUp(key) { problems.append(.serverNotUp(describe(key, at: now))) }
        }
        guard problems.isEmpty else { return problems }
        let readyAfter = config.health.readyAfterMs
        guard let since = readiness[color]?.conditionSince else { return [.neverHealthy(color)] }
        if now - since < Int64(readyAfter) {
            return [.notHealthyLongEnough(color: color, since: timestamp(since), shortMs: readyAfter - Int(now - since),
                                          readyAfterMs: readyAfter)]
        }
        return []
    }

    /// Rollback's gate: every app has at least one healthy server in `color` (no window: a
    /// rollback must be fast).
    func rollbackNotReady(_ color: Color, at now: Int64) -> [NotReady] {
        var problems: [NotReady] = []
        for app in serversUp(color) where app.up == 0 {
            problems.append(.noHealthyServer(app: app.app, color: color))
            for key in app.keys { problems.append(.serverNotUp(describe(key, at: now))) }
        }
        return problems
    }

    /// The gate of a canary's rollback: the stable color is serving already, so it only needs a
    /// server each app can route to (an unchecked server is routable; a down or drained one is
    /// not).
    func canaryRollbackNotReady(_ color: Color, at now: Int64) -> [NotReady] {
        var problems: [NotReady] = []
        for app in config.apps {
            let keys = app.servers(color).map { ServerKey(app: app.name, color: color, server: $0.description) }
            guard !keys.contains(where: isRoutable) else { continue }
            problems.append(.noHealthyServer(app: app.name, color: color))
            for key in keys { problems.append(.serverNotUp(describe(key, at: now))) }
        }
        return problems
    }

    func describe(_ key: ServerKey, at now: Int64) -> String {
        guard let entry = health[key] else { return "app \(key.app) \(key.server): unknown" }
        var text = "app \(key.app) \(key.color.rawValue) \(key.server): \(entry.state.rawValue) since \(timestamp(entry.since))"
        if isDrained(key) { text += ", drained by an operator" }
        if let outcome = entry.lastOutcome { text += " (last check: \(outcome.summary))" } else { text += " (not checked yet)" }
        return text
    }
}
