import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS
import Foundation
import Synchronization

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
    /// Delivers release, switch and rollback events to the `notify` targets.
    let notifier: Notifier
    let clock: @Sendable () -> Int64
    /// Runs every health check, verify request and admin client on one thread, whatever the
    /// number of servers.
    package let checker: ControlLoop
    let injectedProbe: Probe?
    /// How servers are checked: the injected probe, else the checker's network probe.
    var probe: Probe { injectedProbe ?? checker.networkProbe }
    let configPath: String?
    /// What the layers the control plane does not know (TLS certificates) do on a reload:
    /// called with the new config before anything changes, each throws the error that refuses
    /// the reload or returns the step that applies it, run once everything else is applied.
    /// Set by the runtime before `start`.
    public var reloadPreparers: [@Sendable (Config) throws -> @Sendable () -> Void] = []
    /// TLS certificates served now (name, notAfter in seconds since 1970), for
    /// `cutover_tls_certificate_expiry_seconds`. Set by the runtime.
    public var tlsCertificates: @Sendable () -> [(name: String, expiresAt: Int64)] = { [] }
    /// `upstream_tls` by server (`host:port`): health checks and verify requests speak TLS to
    /// those servers as the data plane does. Set by the runtime.
    public var upstreamTLS: [String: UpstreamTLSTarget] {
        get { upstreamTLSTargets.withLock { $0 } }
        set { upstreamTLSTargets.withLock { $0 = newValue } }
    }
    private let upstreamTLSTargets = Mutex<[String: UpstreamTLSTarget]>([:])

    /// Guards the state below; never held across I/O that waits on the network. Always taken
    /// through `withLock` (no early unlocks). An NSLock rather than `Mutex`: it is a pthread
    /// mutex, whose ordering ThreadSanitizer sees, so sanitizer runs stay free of false reports.
    let lock = NSLock()
    /// Held for a whole switch/rollback (gate probes included) so two switches never interleave.
    let switchLock = NSLock()
    var config: Config
    var state: PersistentState
    /// Operator drains with their causes (the state file keeps the list).
    var drains: DrainRegistry
    var health: [ServerKey: ServerHealth] = [:]
    var addresses: [ServerKey: (address: SocketAddress, id: Int)] = [:]
    var readiness: [Color: ColorReadiness] = [.blue: ColorReadiness(), .green: ColorReadiness()]
    var lastSwitch: SwitchRecord? = nil
    var passiveSeen: [Int: UInt64] = [:]
    /// The checked servers by data-plane server id (passive checks), rebuilt with the targets.
    var keysByServerID: [(id: Int, keys: [ServerKey])] = []
    var counters: DataPlaneCounters? = nil
    /// The data plane's request figures (stats, metrics, gate thresholds); nil until attached.
    var dataPlane: DataPlaneLink? = nil
    /// Switch and rollback outcomes by command and result, for `cutover_switches_total`.
    var switchOutcomes: [SwitchResultKey: UInt64] = [:]
    var checkerGeneration = 0
    /// The release plan running, if one is (`release start`).
    var release: ReleaseRun? = nil
    var stopped = false
    /// One sample a second of each app and color for the operator views; taken off the
    /// control loop (a reading asks every data-plane loop) by `sampleHistory`.
    let history = Mutex(StatusHistory())
    let historySampling = Atomic<Bool>(false)
    /// Changes and decisions by audit event (switch, weight, release_step, auto_rollback, …),
    /// for `cutover_events_total`: the dashboard's annotations. Its own lock: records are
    /// appended with and without `lock` held.
    let auditEvents = Mutex<[String: UInt64]>([:])
    /// Set once a hot upgrade's new process serves: this one changes nothing any more (its
    /// state file and audit log are the new process's).
    let handedOverTo = Mutex<Int32?>(nil)
    /// A hot upgrade's new process, until the old one confirms the handover: it serves, but
    /// changes nothing (the old process may still decide to keep serving).
    let awaitingHandover = Atomic<Bool>(false)
    /// Runs `upgrade [binary PATH]`: set by the runtime of `cutover run`.
    public var upgradeHandler: (@Sendable (String?, AuditActor) -> JSON)?
    let wallAtStart = Date()
    let monoAtStart: Int64

    public init(
        config: Config, configPath: String?, state: PersistentState, registry: ServerRegistry = ServerRegistry(),
        logger: Logger, audit: AuditLog?,
        clock: @escaping @Sendable () -> Int64 = { monotonicMilliseconds() },
        probe: Probe? = nil
    ) throws(ConfigError) {
        self.config = config
        self.configPath = configPath
        self.state = state
        drains = DrainRegistry(persisted: state.drained, at: clock())
        self.registry = registry
        self.logger = logger
        self.audit = audit
        notifier = Notifier(targets: config.notify, logger: logger)
        self.clock = clock
        injectedProbe = probe
        do {
            checker = try ControlLoop()
        } catch {
            throw ConfigError(file: config.path, line: 0, message: "cannot start the health checker: \(error)")
        }
        monoAtStart = clock()
        let table = try RoutingTable(config: config, activeColor: state.active, registry: registry)
        publisher = RoutingPublisher(table)
        // Weights, salts and pins of a release under way come back from the state file, and the
        // plan that was running, paused.
        lock.withLock { publishPoliciesLocked() }
        restoreRelease()
        rebuildTargets(from: table)
        publishRoutability()
        notifier.start()
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

    func countSwitch(_ command: String, _ result: String) {
        lock.withLock { switchOutcomes[SwitchResultKey(command: command, result: result), default: 0] += 1 }
    }

    public var activeColor: Color { lock.withLock { state.active } }
    public var persistentState: PersistentState { lock.withLock { state } }

    // MARK: Reports

    func statusReport() -> JSON {
        // The watch is read on the release queue: `status` never shows a decision made but not
        // yet carried out (a watch passed before its record is written).
        let watch = Self.releaseQueue.sync { lock.withLock { watchReportLocked() } }
        return lock.withLock {
            let now = clock()
            var colors: [(String, JSON)] = []
            for color in Color.allCases {
                let readiness = readiness[color] ?? ColorReadiness()
                let problems = notReady(color, at: now)
                let ready = problems.isEmpty
                var entry: [(String, JSON)] = [
                    ("ready", .bool(ready)),
                    ("ready_since", ready ? .string(readiness.conditionSince.map { timestamp($0) }) : .null),
                    ("reasons", .array(problems.map { .string($0.description) })),
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
                pairs.append(("release", releaseReport(app)))
                return .object(pairs)
            }
            var switchReport: JSON = .null
            if let last = lastSwitch {
                switchReport = ["at": .string(timestamp(last.at)), "from": .string(last.from.rawValue), "to": .string(last.to.rawValue),
                                "old_color_inflight": counters.map { .int(Int64($0.inflight(last.from))) } ?? .null,
                                "drained_at": .string(last.drainedAt.map { timestamp($0) })]
            }
            return .object([("ok", true), ("active", .string(state.active.rawValue)), ("previous", .string(state.previous?.rawValue)),
                            ("generation", .int(Int64(state.generation))), ("last_switch", switchReport), ("watch", watch),
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
            var figures = ControlFigures(active: state.active, generation: Int(state.generation),
                                         ready: [.blue: notReady(.blue, at: now).isEmpty, .green: notReady(.green, at: now).isEmpty],
                                         servers: servers, gate: config.gate)
            for app in config.apps {
                figures.candidateShares.append((app.name, state.candidateBasisPoints(app.name)))
                figures.mirrorShares.append((app.name, state.mirrors[app.name] ?? app.mirror.basisPoints))
                let pins = app.pins + (state.pins[app.name] ?? [])
                for color in Color.allCases {
                    let count = pins.filter { $0.color == color }.reduce(0) { $0 + $1.values.count }
                    figures.pinCounts.append((app.name, color, state.suspendedPins.contains(color), count))
                }
            }
            return figures
        }
    }

    func serverReport(_ key: ServerKey) -> JSON {
        let entry = health[key]
        return ["server": .string(key.server),
                "health": .string(entry?.state.rawValue ?? "unknown"),
                "since": .string(entry.map { timestamp($0.since) }),
                "last_check": .string(entry?.lastCheckAt.map { timestamp($0) }),
                "last_result": .string(entry?.lastOutcome?.summary),
                "drained": .bool(isDrained(key)),
                "drained_by": .string(drains.entries[DrainKey(app: key.app, server: key.server)]?.cause.description),
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
    /// Runs `body` with every state change held off (a switch, a weight, a drain, a reload, a
    /// release plan's step wait): what a hot upgrade does while the new process reads the
    /// state file.
    public func holdingChanges<R>(_ body: () -> R) -> R {
        switchLock.withLock(body)
    }

    /// Why an upgrade must wait: a release plan running or a watch after a switch (their
    /// protection would be paused in the new process), else nil.
    func releaseBlockingUpgrade() -> String? {
        lock.withLock {
            guard let run = release else { return nil }
            if run.watch != nil { return "a watch after a switch is running: wait for it to pass before an upgrade" }
            if case .running = run.machine.phase {
                return "a release plan (\(run.machine.plan.name)) is running: pause it, or let it finish, before an upgrade"
            }
            return nil
        }
    }

    /// The new process of an upgrade: no state change until `handoverConfirmed`.
    public func awaitHandover() { awaitingHandover.store(true, ordering: .releasing) }
    public func handoverConfirmed() { awaitingHandover.store(false, ordering: .releasing) }

    /// From now on nothing changes here: the new process (`pid`) owns the state.
    public func handOver(to pid: Int32) {
        handedOverTo.withLock { $0 = pid }
    }

    package func appendAudit(_ record: AuditRecord) -> String? {
        notifier.send(record)
        auditEvents.withLock { $0[record.event, default: 0] += 1 }
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
