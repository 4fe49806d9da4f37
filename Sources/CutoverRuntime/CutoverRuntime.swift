import CutoverConfig
import CutoverControl
import CutoverProxy
import CutoverSystem
import CutoverTLS
import Foundation

/// One running cutover: the data plane (`ProxyServer`), the control plane (`ControlPlane`) and
/// the admin socket, wired together. `cutover run`, `cutover demo` and the tests start it.
public final class CutoverRuntime: @unchecked Sendable {
    public let config: Config
    public let controlPlane: ControlPlane
    public let server: ProxyServer
    public private(set) var admin: AdminServer?
    /// `metrics_listen`: /metrics and /healthz (nil: off).
    public private(set) var metrics: MetricsServer?
    private let logger: Logger
    private let audit: AuditLog?
    private let adminIdleTimeoutMs: Int
    private let initialStateToWrite: PersistentState?

    /// Loads the persisted state (it wins over `initial_color`; a corrupt file stops start-up
    /// unless `resetState`), opens the audit log, and builds both planes. Nothing listens yet.
    public init(config: Config, configPath: String?, logger: Logger, resetState: Bool = false,
                adminIdleTimeoutMs: Int = 30_000, probe: Probe? = nil) throws {
        self.config = config
        self.logger = logger
        self.adminIdleTimeoutMs = adminIdleTimeoutMs
        var state = PersistentState(active: config.initialColor)
        var stateNeedsWriting = false
        if let path = config.stateFile {
            if resetState {
                logger.log(.warning, "--reset-state: ignoring \(path); starting on initial_color \(config.initialColor.rawValue)")
                stateNeedsWriting = true
            } else if let saved = try StateFile.load(path: path) {
                state = saved
            } else {
                stateNeedsWriting = true  // from now on a restart keeps the color
            }
        }
        // Written in `start`, once the admin socket is ours: a second instance started by
        // mistake must not overwrite the running one's state.
        self.initialStateToWrite = stateNeedsWriting ? state : nil
        audit = try config.auditLog.map { try AuditLog(path: $0) }
        controlPlane = try ControlPlane(config: config, configPath: configPath, state: state, logger: logger, audit: audit,
                                        probe: probe)
        server = ProxyServer(config: config, publisher: controlPlane.publisher, logger: logger, servers: controlPlane.registry)
        if let settings = config.tls {
            let context = try TLSServerContext(settings: settings, configPath: config.path)
            for warning in context.warnings { logger.log(.warning, warning) }
            server.replaceTLS(context)
        }
        let upstreamTargets = try UpstreamTLSTarget.targets(for: config)
        server.replaceUpstreamTLS(upstreamTargets)
        controlPlane.upstreamTLS = upstreamTargets
        // A reload loads the certificates first: a bad one refuses the reload, and nothing changes.
        controlPlane.reloadPreparers.append { [server, controlPlane] next in
            let targets = try UpstreamTLSTarget.targets(for: next, previous: controlPlane.upstreamTLS)
            return {
                server.replaceUpstreamTLS(targets)
                controlPlane.upstreamTLS = targets
            }
        }
        controlPlane.reloadPreparers.append { [server, logger] next in
            // Without a tls block, the TLS listeners (gone only with a restart) keep their certificates.
            guard let settings = next.tls else { return {} }
            let context = try TLSServerContext(settings: settings, configPath: next.path)
            for warning in context.warnings { logger.log(.warning, warning) }
            return {
                server.replaceTLS(context)
                logger.log(.info, "TLS: \(context.certificates.count) certificate(s) loaded; new connections use them")
            }
        }
        controlPlane.tlsCertificates = { [server] in
            server.tlsContext?.certificates.map { ($0.label, $0.expiresAt) } ?? []
        }
    }

    public func start() throws {
        // The admin socket first: a second cutover on the same socket fails before it listens.
        if let path = config.adminSocket {
            let admin = AdminServer(path: path, idleTimeoutMs: adminIdleTimeoutMs, logger: logger,
                                    control: controlPlane.checker) { [controlPlane] line, actor in
                controlPlane.execute(line, actor: actor)
            }
            try admin.start(mode: config.adminMode, group: config.adminGroup)
            self.admin = admin
        }
        do {
            if let state = initialStateToWrite, let path = config.stateFile { try StateFile.save(state, path: path) }
            try server.start()
        } catch {
            admin?.stop()
            throw error
        }
        controlPlane.attach(counters: server.counters)
        controlPlane.attach(dataPlane: server.link)
        if let endpoint = config.metricsListen {
            let metrics = MetricsServer(logger: logger, control: controlPlane.checker,
                                        overview: { [controlPlane] seconds in controlPlane.execute(.overview(seconds: seconds), actor: .current()) }) { [controlPlane] in
                controlPlane.prometheusExposition()
            }
            do {
                try metrics.start(endpoint)
            } catch {
                server.stop()
                admin?.stop()
                throw error
            }
            self.metrics = metrics
        }
        controlPlane.startChecks()
        let state = controlPlane.persistentState
        controlPlane.appendAudit(AuditRecord(event: "start", to: state.active, actor: .current(), generation: state.generation,
                                             details: ["listen": server.listenAddresses.map(\.description).joined(separator: " ")]))
        logger.log(.info, "active color \(state.active.rawValue) (generation \(state.generation))")
    }

    /// Drains and stops everything (SIGTERM).
    public func stop() {
        admin?.stop()
        metrics?.stop()
        server.stop()
        controlPlane.stop()
        let state = controlPlane.persistentState
        controlPlane.appendAudit(AuditRecord(event: "stop", from: state.active, actor: .current(), generation: state.generation))
    }
}
