import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import Foundation

/// The release runbook, done by the proxy: health checks on both pools, readiness, the gated
/// switch and rollback, operator drains, reload, the persisted state and the audit trail.
///
/// It meets the data plane only at the `RoutingPublisher` (it publishes tables) and at the
/// `DataPlaneCounters` (it reads them). State changes are serialised by `lock`; slow work
/// (probes) runs outside it. Time comes from an injected monotonic clock in milliseconds.
public final class ControlPlane: @unchecked Sendable {
    /// One checked server: an app's server in one color (an address may serve several apps).
    package struct ServerKey: Hashable, Comparable {
        package var app: String
        package var color: Color
        package var server: String

        package init(app: String, color: Color, server: String) {
            self.app = app
            self.color = color
            self.server = server
        }

        package static func < (lhs: ServerKey, rhs: ServerKey) -> Bool {
            (lhs.app, lhs.color.rawValue, lhs.server) < (rhs.app, rhs.color.rawValue, rhs.server)
        }
    }

    struct SwitchRecord {
        var at: Int64
        var from: Color
        var to: Color
        var drainedAt: Int64?
    }

    public let publisher: RoutingPublisher
    public let registry: ServerRegistry
    let logger: Logger
    let audit: AuditLog?
    let clock: @Sendable () -> Int64
    /// Runs every health check and verify request on one thread, whatever the number of servers.
    private let checker: HealthChecker
    private let injectedProbe: Probe?
    /// How servers are checked: the injected probe, else the checker's network probe.
    var probe: Probe { injectedProbe ?? checker.networkProbe }
    private let configPath: String?

    private let lock = NSLock()
    /// Held for a whole switch/rollback (gate probes included) so two switches never interleave.
    private let switchLock = NSLock()
    private(set) var config: Config
    private var state: PersistentState
    private var health: [ServerKey: ServerHealth] = [:]
    private var addresses: [ServerKey: (address: SocketAddress, id: Int)] = [:]
    private var readiness: [Color: ColorReadiness] = [.blue: ColorReadiness(), .green: ColorReadiness()]
    private var lastSwitch: SwitchRecord? = nil
    private var passiveSeen: [Int: UInt64] = [:]
    /// The checked servers by data-plane server id (passive checks), rebuilt with the targets.
    private var keysByServerID: [(id: Int, keys: [ServerKey])] = []
    private var counters: DataPlaneCounters? = nil
    /// The data plane's request figures (stats, metrics, gate thresholds); nil until attached.
    private var dataPlane: DataPlaneLink? = nil
    /// Switch and rollback outcomes by command and result, for `cutover_switches_total`.
    private var switchOutcomes: [SwitchResultKey: UInt64] = [:]
    private var checkerGeneration = 0
    private var stopped = false
    private let wallAtStart = Date()
    private let monoAtStart: Int64

    public init(
        config: Config, configPath: String?, state: PersistentState, registry: ServerRegistry = ServerRegistry(),
        logger: Logger, audit: AuditLog?,
        clock: @escaping @Sendable () -> Int64 = { monotonicMilliseconds() },
        probe: Probe? = nil
    ) throws(ConfigError) {
        self.config = config
        self.configPath = configPath
        self.state = state
        self.registry = registry
        self.logger = logger
        self.audit = audit
        self.clock = clock
        injectedProbe = probe
        do {
            checker = try HealthChecker()
        } catch {
            throw ConfigError(file: config.path, line: 0, message: "cannot start the health checker: \(error)")
        }
        monoAtStart = clock()
        let table = try RoutingTable(config: config, activeColor: state.active, registry: registry)
        publisher = RoutingPublisher(table)
        rebuildTargets(from: table)
        publishRoutability()
    }

    /// Connects the data plane's counters (passive checks, in-flight figures).
    public func attach(counters: DataPlaneCounters) {
        lock.withLock { self.counters = counters }
    }

    /// Connects the data plane's request figures.
    public func attach(dataPlane: DataPlaneLink) {
        lock.withLock { self.dataPlane = dataPlane }
    }

    var attachedDataPlane: (source: DataPlaneLink?, counters: DataPlaneCounters?) {
        lock.withLock { (dataPlane, counters) }
    }

    var switchOutcomeCounts: [SwitchResultKey: UInt64] { lock.withLock { switchOutcomes } }

    private func countSwitch(_ command: String, _ result: String) {
        lock.withLock { switchOutcomes[SwitchResultKey(command: command, result: result), default: 0] += 1 }
    }

    public var activeColor: Color { lock.withLock { state.active } }
    public var persistentState: PersistentState { lock.withLock { state } }

    // MARK: Health checking

    /// Checks every server of every app in both colors, on the checker's one thread; ten times a
    /// second it also watches the data plane (`observeDataPlane`). A reload calls it again: the
    /// results of the previous generation are dropped.
    public func startChecks() {
        let (generation, targets): (Int, [HealthChecker.Target]) = lock.withLock {
            checkerGeneration += 1
            let targets = health.keys.sorted().compactMap { key -> HealthChecker.Target? in
                guard let app = config.apps.first(where: { $0.name == key.app }), let address = addresses[key]?.address else { return nil }
                let request = ProbeRequest(address: address, host: Self.checkHost(app, server: key.server), path: app.healthPath,
                                           timeoutMs: config.health.timeoutMs)
                return HealthChecker.Target(key: key, request: request, intervalMs: config.health.intervalMs)
            }
            return (checkerGeneration, targets)
        }
        checker.check(targets, probe: probe, periodMs: 100, periodic: { [weak self] in self?.observeDataPlane() },
                      report: { [weak self] key, outcome in self?.record(outcome, for: key, generation: generation) })
    }

    public func stop() {
        lock.withLock { stopped = true }
        checker.stop()
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
        let now = clock()
        lock.withLock {
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

    private func rebuildTargets(from table: RoutingTable) {
        var fresh: [ServerKey: ServerHealth] = [:]
        var freshAddresses: [ServerKey: (SocketAddress, Int)] = [:]
        let now = clock()
        for app in table.apps {
            for color in Color.allCases {
                for server in app.servers(color) {
                    let key = ServerKey(app: app.name, color: color, server: server.name)
                    fresh[key] = health[key] ?? ServerHealth(now: now)
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

    private func isDrained(_ key: ServerKey) -> Bool {
        state.drained.contains("\(key.app) \(key.server)")
    }

    private func isRoutable(_ key: ServerKey) -> Bool {
        (health[key]?.isRoutable ?? true) && !isDrained(key)
    }

    private func publishRoutability() {
        lock.withLock { publishRoutabilityLocked() }
    }

    private func publishRoutabilityLocked() {
        publisher.update { table in
            table.withRoutability { app, color, server in
                self.isRoutable(ServerKey(app: app, color: color, server: server.name))
            }
        }
    }

    private func updateReadiness(at now: Int64) {
        for color in Color.allCases {
            let counts = config.apps.map { app -> (app: String, healthy: Int, total: Int) in
                let keys = app.servers(color).map { ServerKey(app: app.name, color: color, server: $0.description) }
                let healthy = keys.filter { health[$0]?.state == .up && !isDrained($0) }.count
                return (app.name, healthy, keys.count)
            }
            readiness[color, default: ColorReadiness()].update(healthyCounts: counts, minHealthy: config.health.minHealthy, at: now)
        }
    }

    // MARK: Gates

    /// Why `color` may not take traffic now (empty when it may): every app needs `min_healthy`
    /// servers up, continuously for `ready_after`. Names the app, the server, its check and
    /// since when.
    func readinessProblems(_ color: Color, at now: Int64) -> [String] {
        var problems: [String] = []
        let readyAfter = config.health.readyAfterMs
        for app in config.apps {
            let keys = app.servers(color).map { ServerKey(app: app.name, color: color, server: $0.description) }
            let healthy = keys.filter { health[$0]?.state == .up && !isDrained($0) }.count
            guard healthy < config.health.minHealthy else { continue }
            problems.append("app \(app.name): \(healthy) of \(keys.count) \(color.rawValue) servers up, min_healthy is \(config.health.minHealthy)")
            for key in keys where !(health[key]?.state == .up && !isDrained(key)) {
                problems.append(describe(key, at: now))
            }
        }
        if problems.isEmpty {
            if let since = readiness[color]?.conditionSince {
                if now - since < Int64(readyAfter) {
                    problems.append("\(color.rawValue) has been healthy since \(timestamp(since)), "
                                    + "\(readyAfter - Int(now - since)) ms short of ready_after (\(readyAfter) ms)")
                }
            } else {
                problems.append("\(color.rawValue) has not been healthy continuously yet")
            }
        }
        return problems
    }

    /// Rollback's gate: every app has at least one healthy server in `color` (no window: a
    /// rollback must be fast).
    func rollbackProblems(_ color: Color, at now: Int64) -> [String] {
        var problems: [String] = []
        for app in config.apps {
            let keys = app.servers(color).map { ServerKey(app: app.name, color: color, server: $0.description) }
            if !keys.contains(where: { health[$0]?.state == .up && !isDrained($0) }) {
                problems.append("app \(app.name): no healthy \(color.rawValue) server")
                for key in keys { problems.append(describe(key, at: now)) }
            }
        }
        return problems
    }

    private func describe(_ key: ServerKey, at now: Int64) -> String {
        guard let entry = health[key] else { return "app \(key.app) \(key.server): unknown" }
        var text = "app \(key.app) \(key.color.rawValue) \(key.server): \(entry.state.rawValue) since \(timestamp(entry.since))"
        if isDrained(key) { text += ", drained by an operator" }
        if let outcome = entry.lastOutcome { text += " (last check: \(outcome.summary))" } else { text += " (not checked yet)" }
        return text
    }

    /// The verify requests of the switch gate: every verify path of every app against every up
    /// server of `color`. Runs without the state lock (it waits on the network).
    func runVerify(_ color: Color) -> [(app: String, server: String, path: String, outcome: CheckOutcome)] {
        let work: [(String, String, SocketAddress, String, String)] = lock.withLock {
            config.apps.flatMap { app -> [(String, String, SocketAddress, String, String)] in
                return app.servers(color).flatMap { endpoint -> [(String, String, SocketAddress, String, String)] in
                    let key = ServerKey(app: app.name, color: color, server: endpoint.description)
                    guard health[key]?.state == .up, !isDrained(key), let address = addresses[key]?.address else { return [] }
                    let host = Self.checkHost(app, server: endpoint.description)
                    return app.verifyPaths.map { (app.name, endpoint.description, address, host, $0) }
                }
            }
        }
        let timeout = lock.withLock { config.health.timeoutMs }
        let results = ResultBox(count: work.count)
        // All at once, on the checker's loop: hung servers cost one timeout in total.
        let group = DispatchGroup()
        for index in work.indices {
            let (_, _, address, host, path) = work[index]
            group.enter()
            probe(ProbeRequest(address: address, host: host, path: path, timeoutMs: timeout)) { outcome in
                results.set(index, outcome)
                group.leave()
            }
        }
        // Every probe ends by its deadline; the margin covers a checker that stopped meanwhile.
        _ = group.wait(timeout: .now() + .milliseconds(timeout + 2_000))
        return work.enumerated().map { index, item in (item.0, item.1, item.4, results.get(index)) }
    }

    private final class ResultBox: @unchecked Sendable {
        private var values: [CheckOutcome]
        private let lock = NSLock()
        init(count: Int) { values = Array(repeating: .failure(reason: "not run"), count: count) }
        func set(_ index: Int, _ value: CheckOutcome) { lock.withLock { values[index] = value } }
        func get(_ index: Int) -> CheckOutcome { lock.withLock { values[index] } }
    }

    // MARK: Switching

    /// `switch` and `rollback`. Order: gate → state file durable → publish → audit → reply.
    func changeColor(to target: Color, rollback: Bool, force: Bool, reason: String?, actor: AuditActor) -> JSON {
        switchLock.lock()
        defer { switchLock.unlock() }
        let event = rollback ? "rollback" : "switch"
        var (current, problems): (PersistentState, [String]) = lock.withLock {
            let now = clock()
            if state.active == target { return (state, ["\(target.rawValue) is already the active color"]) }
            if force { return (state, []) }
            return (state, rollback ? rollbackProblems(target, at: now) : readinessProblems(target, at: now))
        }
        if problems.isEmpty && !force && !rollback {
            // Read outside the state lock: collecting the figures waits on every loop.
            problems = gateThresholdProblems(target: target, active: current.active)
        }
        var gate: [JSON] = problems.map { .string($0) }
        var verifyResults: [JSON] = []
        var refused = !problems.isEmpty
        if !refused && !force && !rollback {
            for result in runVerify(target) {
                verifyResults.append(["app": .string(result.app), "server": .string(result.server), "path": .string(result.path),
                                      "ok": .bool(result.outcome.isSuccess), "result": .string(result.outcome.summary)])
                if !result.outcome.isSuccess {
                    refused = true
                    gate.append(.string("verify \(result.path) on app \(result.app) \(target.rawValue) \(result.server): \(result.outcome.summary)"))
                }
            }
        }
        if refused {
            countSwitch(event, "refused")
            let details = ["gate": gate.map { $0.stringValue ?? "" }.joined(separator: "; ")]
            appendAudit(AuditRecord(event: "refused", from: current.active, to: target, reason: reason, forced: force,
                                    actor: actor, generation: current.generation, details: details.merging(["command": event]) { a, _ in a }))
            let message = problems.first.map { _ in "\(event) to \(target.rawValue) refused: the gate did not pass" }
                ?? "\(event) to \(target.rawValue) refused: verify requests failed"
            return ["ok": false, "error": .string(message), "reasons": .array(gate), "verify": .array(verifyResults)]
        }

        var next = current
        next.previous = current.active
        next.active = target
        next.generation = current.generation + 1
        if let path = config.stateFile {
            do {
                try StateFile.save(next, path: path)
            } catch let error where error.newStateInPlace {
                // The file already names the new color: refusing now would make a restart switch
                // silently. Go ahead, and say the durability is in doubt.
                logger.log(.warning, "\(event) to \(target.rawValue): \(error.description)")
            } catch {
                logger.log(.error, "\(event) to \(target.rawValue) aborted: \(error.description)")
                countSwitch(event, "failed")
                return ["ok": false, "error": .string("\(event) aborted, the state file could not be written: \(error.description)")]
            }
        }
        let started = DispatchTime.now().uptimeNanoseconds
        lock.withLock {
            state = next
            publisher.update { $0.with(activeColor: target) }
            lastSwitch = SwitchRecord(at: clock(), from: current.active, to: target, drainedAt: nil)
        }
        let publishMicros = (DispatchTime.now().uptimeNanoseconds - started) / 1000
        countSwitch(event, "ok")
        var details: [String: String] = ["publish_us": String(publishMicros)]
        if force { details["gate"] = "skipped (forced)" } else if !verifyResults.isEmpty { details["verify"] = "\(verifyResults.count) passed" }
        let auditError = appendAudit(AuditRecord(event: event, from: current.active, to: target, reason: reason, forced: force,
                                                 actor: actor, generation: next.generation, details: details))
        logger.log(.info, "\(event): \(current.active.rawValue) → \(target.rawValue) (generation \(next.generation)\(force ? ", forced" : ""))")
        var reply: [(String, JSON)] = [
            ("ok", true), ("active", .string(target.rawValue)), ("previous", .string(current.active.rawValue)),
            ("generation", .int(Int64(next.generation))), ("publish_us", .int(Int64(publishMicros))), ("forced", .bool(force)),
            ("verify", .array(verifyResults)),
        ]
        if let auditError { reply.append(("audit_error", .string(auditError))) }
        return .object(reply)
    }

    // MARK: Drain

    func setDrained(_ drained: Bool, app: String, server: String, actor: AuditActor) -> JSON {
        // Serialised with switches and reloads: a switch writes the whole persistent state.
        switchLock.lock()
        defer { switchLock.unlock() }
        lock.lock()
        let entry = "\(app) \(server)"
        // An undrain of an entry a reload left behind (its app or server is gone) is allowed:
        // otherwise only --reset-state could clear it.
        let staleEntry = !drained && state.drained.contains(entry)
        if !staleEntry {
            guard let appConfig = config.apps.first(where: { $0.name == app }) else {
                lock.unlock()
                return ["ok": false, "error": .string("unknown app '\(app)'")]
            }
            guard (appConfig.blue + appConfig.green).contains(where: { $0.description == server }) else {
                lock.unlock()
                return ["ok": false, "error": .string("app \(app) has no server \(server)")]
            }
        }
        var next = state
        if drained {
            if !next.drained.contains(entry) { next.drained.append(entry) }
        } else {
            next.drained.removeAll { $0 == entry }
        }
        next.drained.sort()
        if let path = config.stateFile {
            do { try StateFile.save(next, path: path) } catch where !error.newStateInPlace {
                lock.unlock()
                return ["ok": false, "error": .string("the state file could not be written: \(error.description)")]
            } catch {
                logger.log(.warning, "drain: \(error.description)")
            }
        }
        state = next
        updateReadiness(at: clock())
        publishRoutabilityLocked()
        let generation = state.generation
        lock.unlock()
        appendAudit(AuditRecord(event: drained ? "drain" : "undrain", actor: actor, generation: generation,
                                details: ["app": app, "server": server]))
        return ["ok": true, "app": .string(app), "server": .string(server), "drained": .bool(drained)]
    }

    // MARK: Reload

    /// Re-reads the config file, validates it, publishes its routing with the active color and
    /// the drains kept. An invalid file changes nothing and is reported with its `FILE:LINE`.
    public func reload(actor: AuditActor) -> JSON {
        guard let configPath else {
            return ["ok": false, "error": "this instance runs an embedded configuration; there is no file to reload"]
        }
        // Serialised with switches, drains and other reloads (SIGHUP and the socket may race).
        switchLock.lock()
        defer { switchLock.unlock() }
        let next: Config
        let table: RoutingTable
        do {
            next = try ConfigParser.load(path: configPath)
            table = try RoutingTable(config: next, activeColor: activeColor, registry: registry)
        } catch {
            logger.log(.error, "reload failed: \(error.description); the running configuration is unchanged")
            appendAudit(AuditRecord(event: "reload_failed", actor: actor, details: ["error": error.description]))
            return ["ok": false, "error": .string(error.description)]
        }
        let restartNeeded = lock.withLock { () -> [String] in
            var changed: [String] = []
            if next.listen != config.listen { changed.append("listen") }
            if next.workers != config.workers { changed.append("workers") }
            if next.timeouts != config.timeouts { changed.append("timeouts") }
            if next.limits != config.limits { changed.append("limits") }
            if next.adminSocket != config.adminSocket { changed.append("admin_socket") }
            if next.adminMode != config.adminMode { changed.append("admin_mode") }
            if next.adminGroup != config.adminGroup { changed.append("admin_group") }
            if next.stateFile != config.stateFile { changed.append("state_file") }
            if next.auditLog != config.auditLog { changed.append("audit_log") }
            if next.accessLog != config.accessLog { changed.append("access_log") }
            if next.metricsListen != config.metricsListen { changed.append("metrics_listen") }
            // The running files stay in use until a restart; routing, health and gate settings apply now.
            var applied = next
            applied.stateFile = config.stateFile
            applied.auditLog = config.auditLog
            config = applied
            rebuildTargets(from: table)
            // One publish, with health and drains already applied: no moment in which down or
            // drained servers look routable.
            publisher.publish(table.with(activeColor: state.active).withRoutability { app, color, server in
                self.isRoutable(ServerKey(app: app, color: color, server: server.name))
            })
            return changed
        }
        startChecks()
        appendAudit(AuditRecord(event: "reload", actor: actor, generation: persistentState.generation,
                                details: restartNeeded.isEmpty ? [:] : ["restart_required": restartNeeded.joined(separator: ",")]))
        logger.log(.info, "configuration reloaded from \(configPath)"
                   + (restartNeeded.isEmpty ? "" : " (takes effect after a restart: \(restartNeeded.joined(separator: ", ")))"))
        return ["ok": true, "apps": .int(Int64(next.apps.count)), "restart_required": .array(restartNeeded.map { .string($0) })]
    }

    // MARK: Reports

    func statusReport() -> JSON {
        lock.withLock {
            let now = clock()
            var colors: [(String, JSON)] = []
            for color in Color.allCases {
                let readiness = readiness[color] ?? ColorReadiness()
                let ready = readinessProblems(color, at: now).isEmpty
                var entry: [(String, JSON)] = [
                    ("ready", .bool(ready)),
                    ("ready_since", ready ? .string(readiness.conditionSince.map { timestamp($0) }) : .null),
                    ("reasons", .array(ready ? [] : readinessProblems(color, at: now).map { .string($0) })),
                ]
                if let counters {
                    entry.append(("inflight", .int(Int64(counters.inflight(color)))))
                    entry.append(("upstream_connections", .int(Int64(counters.upstreamConnections(color)))))
                }
                colors.append((color.rawValue, .object(entry)))
            }
            let apps: [JSON] = config.apps.map { app in
                var pairs: [(String, JSON)] = [("name", .string(app.name)),
                                               ("hosts", .array(app.hosts.map { .string($0) })),
                                               ("path", .string(app.pathPrefix))]
                for color in Color.allCases {
                    pairs.append((color.rawValue, .array(app.servers(color).map { serverReport(ServerKey(app: app.name, color: color, server: $0.description)) })))
                }
                return .object(pairs)
            }
            var switchReport: JSON = .null
            if let last = lastSwitch {
                switchReport = ["at": .string(timestamp(last.at)), "from": .string(last.from.rawValue), "to": .string(last.to.rawValue),
                                "old_color_inflight": counters.map { .int(Int64($0.inflight(last.from))) } ?? .null,
                                "drained_at": .string(last.drainedAt.map { timestamp($0) })]
            }
            return .object([("ok", true), ("active", .string(state.active.rawValue)), ("previous", .string(state.previous?.rawValue)),
                            ("generation", .int(Int64(state.generation))), ("last_switch", switchReport),
                            ("colors", .object(colors)), ("apps", .array(apps))])
        }
    }

    /// The control plane's state as the metrics exposition reports it, read under one lock.
    func controlFigures() -> ControlFigures {
        lock.withLock {
            let now = clock()
            var servers: [ControlFigures.Server] = []
            for app in config.apps {
                for color in Color.allCases {
                    for server in app.servers(color) {
                        let key = ServerKey(app: app.name, color: color, server: server.description)
                        servers.append(ControlFigures.Server(app: app.name, color: color, name: server.description,
                                                             id: addresses[key]?.id ?? -1, up: health[key]?.state == .up))
                    }
                }
            }
            return ControlFigures(active: state.active, generation: Int(state.generation),
                                  ready: [.blue: readinessProblems(.blue, at: now).isEmpty,
                                          .green: readinessProblems(.green, at: now).isEmpty],
                                  servers: servers, gate: config.gate)
        }
    }

    private func serverReport(_ key: ServerKey) -> JSON {
        let entry = health[key]
        return ["server": .string(key.server),
                "health": .string(entry?.state.rawValue ?? "unknown"),
                "since": .string(entry.map { timestamp($0.since) }),
                "last_check": .string(entry?.lastCheckAt.map { timestamp($0) }),
                "last_result": .string(entry?.lastOutcome?.summary),
                "drained": .bool(isDrained(key)),
                "routable": .bool(isRoutable(key))]
    }

    func healthReport() -> JSON {
        lock.withLock {
            let servers: [JSON] = health.keys.sorted().map { key in
                let entry = health[key]!
                var object: [(String, JSON)] = [("app", .string(key.app)), ("color", .string(key.color.rawValue))]
                if case .object(let rest) = serverReport(key) { object += rest }
                object.append(("consecutive_successes", .int(Int64(entry.consecutiveSuccesses))))
                object.append(("consecutive_failures", .int(Int64(entry.consecutiveFailures))))
                return .object(object)
            }
            return ["ok": true, "interval_ms": .int(Int64(config.health.intervalMs)), "timeout_ms": .int(Int64(config.health.timeoutMs)),
                    "rise": .int(Int64(config.health.rise)), "fall": .int(Int64(config.health.fall)), "servers": .array(servers)]
        }
    }

    /// Wall-clock RFC 3339 for a monotonic instant.
    func timestamp(_ monotonic: Int64) -> String {
        RFC3339.string(from: wallAtStart.addingTimeInterval(Double(monotonic - monoAtStart) / 1000))
    }

    /// Appends an audit record; returns the error text when it could not be written (the reply
    /// of the command says so: the change happened, its record did not).
    @discardableResult
    package func appendAudit(_ record: AuditRecord) -> String? {
        guard let audit else { return nil }
        do {
            _ = try audit.append(record)
            return nil
        } catch {
            logger.log(.error, "audit log: \(error)")
            return "\(error)"
        }
    }
}
