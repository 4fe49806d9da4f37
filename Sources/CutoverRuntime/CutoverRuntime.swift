import CutoverConfig
import CutoverControl
import CutoverProxy
import CutoverSystem
import CutoverTLS
import Foundation
import Synchronization

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
    /// This build's version, as `upgrade` reports it (set by the command line).
    public var version = "unknown"
    /// What `upgrade` starts: the binary this process was started from (its path resolved at
    /// start, so a file installed over it is the new version) and this run's arguments. Nil:
    /// no hot upgrade (the demo, tests).
    public var upgradeCommand: (path: String, arguments: [String])? {
        didSet {
            guard upgradeCommand != nil else {
                controlPlane.upgradeHandler = nil
                return
            }
            let box = WeakRuntime(self)
            controlPlane.upgradeHandler = { binary, actor -> JSON in
                guard let runtime = box.runtime else { return ["ok": false, "error": "stopping"] }
                return runtime.upgrade(binary: binary, actor: actor)
            }
        }
    }
    /// Called once a new process serves in this one's place (its pid): drain and exit.
    public var onHandedOver: (@Sendable (Int32) -> Void)?
    /// Sockets a previous process handed over (hot upgrade); set before `start`.
    public var inherited = InheritedSockets()
    /// How long a new process may take to become ready.
    public var upgradeTimeoutMs = 30_000
    private let handedOverTo = Mutex<Int32?>(nil)

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
        let inheritedAdmin = inherited.take("admin")?.first
        let inheritedMetrics = inherited.take("metrics")?.first
        if let path = config.adminSocket {
            let admin = AdminServer(path: path, idleTimeoutMs: adminIdleTimeoutMs, logger: logger,
                                    control: controlPlane.checker) { [controlPlane] line, actor in
                controlPlane.execute(line, actor: actor)
            }
            try admin.start(mode: config.adminMode, group: config.adminGroup, inheritedFD: inheritedAdmin)
            self.admin = admin
        } else if let inheritedAdmin {
            Successor.closeDescriptor(inheritedAdmin)  // admin_socket removed from the config
        }
        server.inherited = inherited
        do {
            if let path = config.stateFile {
                // Temp files of a save a crash interrupted (the socket is ours: no other
                // instance is saving now).
                for name in StateFile.removeLeftovers(of: path) { logger.log(.info, "removed \(name), left by an interrupted save") }
            }
            if let state = initialStateToWrite, let path = config.stateFile { try StateFile.save(state, path: path) }
            try server.start()
        } catch {
            admin?.stop()
            throw error
        }
        controlPlane.reconcileAudit()
        controlPlane.attach(counters: server.counters)
        controlPlane.attach(dataPlane: server.link)
        if let endpoint = config.metricsListen {
            let metrics = MetricsServer(logger: logger, control: controlPlane.checker,
                                        overview: { [controlPlane] seconds in controlPlane.execute(.overview(seconds: seconds), actor: .current()) }) { [controlPlane] in
                controlPlane.prometheusExposition()
            }
            do {
                try metrics.start(endpoint, inheritedFD: inheritedMetrics)
            } catch {
                server.stop()
                admin?.stop()
                throw error
            }
            self.metrics = metrics
        }
        else if let inheritedMetrics { Successor.closeDescriptor(inheritedMetrics) }
        controlPlane.startChecks()
        let state = controlPlane.persistentState
        var details = ["listen": server.listenAddresses.map(\.description).joined(separator: " "), "version": version]
        if let from = ProcessInfo.processInfo.environment["CUTOVER_UPGRADE_FROM"], inheritedListeners { details["upgraded_from"] = from }
        controlPlane.appendAudit(AuditRecord(event: "start", to: state.active, actor: .current(), generation: state.generation,
                                             details: details))
        logger.log(.info, "active color \(state.active.rawValue) (generation \(state.generation))")
    }

    /// Drains and stops everything (SIGTERM). After a hot upgrade the drain is gentle: the
    /// clients' next responses carry `Connection: close`, and only connections still idle a
    /// second later are closed, so a keep-alive client moves to the new process without an
    /// error.
    public func stop() {
        let successor = handedOverTo.withLock { $0 }
        admin?.stop()
        metrics?.stop()
        server.stop(soft: successor != nil)
        controlPlane.stop()
        let state = controlPlane.persistentState
        controlPlane.appendAudit(AuditRecord(event: "stop", from: state.active,
                                             reason: successor.map { "handed over to pid \($0) (hot upgrade)" }, actor: .current(),
                                             generation: state.generation))
    }

    private var inheritedListeners: Bool { !server.listenAddresses.isEmpty && ProcessInfo.processInfo.environment[InheritedSockets.variable] != nil }

    // MARK: Hot upgrade

    /// `upgrade [binary PATH]` and SIGUSR2: starts the new binary with this process's listening
    /// sockets (inherited across execve: the same accept queues) and waits for it to report
    /// ready — listening, admin socket taken over, every server's health known. Meanwhile no
    /// state changes here (the new process reads the state file). Then this process stops
    /// accepting, changes nothing more, and drains. If the new process fails or is not ready
    /// within `upgradeTimeoutMs`, it is stopped and nothing changes.
    public func upgrade(binary: String?, actor: AuditActor) -> JSON {
        guard let command = upgradeCommand else { return ["ok": false, "error": "hot upgrade is for `cutover run`"] }
        if let successor = handedOverTo.withLock({ $0 }) { return ["ok": false, "error": .string("already handed over to pid \(successor)")] }
        let path = binary ?? command.path
        guard Successor.isExecutable(path) else {
            return ["ok": false, "error": .string("upgrade: \(path) is not an executable file; nothing changed")]
        }
        return controlPlane.holdingChanges { () -> JSON in
            // Two upgrades at once (SIGUSR2 and the command): the second finds the first done.
            if let successor = handedOverTo.withLock({ $0 }) { return ["ok": false, "error": .string("already handed over to pid \(successor)")] }
            let oldPID = ProcessIdentity.processID
            var sockets = InheritedSockets(descriptors: server.listenerDescriptors)
            if let admin, admin.listenerFD >= 0 { sockets.descriptors["admin"] = [admin.listenerFD] }
            if let metrics, metrics.listenerFD >= 0 { sockets.descriptors["metrics"] = [metrics.listenerFD] }
            let pipe: (read: Int32, write: Int32)
            let go: (read: Int32, write: Int32)
            do {
                pipe = try Successor.reportPipe()
                go = try Successor.reportPipe()
            } catch {
                return ["ok": false, "error": .string("upgrade: \(error); nothing changed")]
            }
            defer { Successor.closeDescriptor(go.write) }  // closing it tells the new process to go too
            var environment = ProcessInfo.processInfo.environment
            environment[InheritedSockets.variable] = sockets.encoded
            environment[InheritedSockets.readyVariable] = String(pipe.write)
            environment[InheritedSockets.goVariable] = String(go.read)
            environment["CUTOVER_UPGRADE_FROM"] = "\(oldPID) \(version)"
            controlPlane.appendAudit(AuditRecord(event: "upgrade_started", actor: actor, generation: controlPlane.persistentState.generation,
                                                 details: ["binary": path, "old_version": version, "old_pid": String(oldPID)]))
            logger.log(.info, "upgrade: starting \(path) with \(sockets.all.count) inherited sockets")
            let pid: Int32
            do {
                pid = try Successor.spawn(path: path, arguments: command.arguments, environment: environment,
                                          keep: sockets.all + [pipe.write, go.read])
            } catch {
                Successor.closeDescriptor(pipe.read)
                Successor.closeDescriptor(pipe.write)
                Successor.closeDescriptor(go.read)
                return failed("cannot start \(path): \(error)", actor: actor)
            }
            Successor.closeDescriptor(pipe.write)
            Successor.closeDescriptor(go.read)
            let report = Successor.readReport(pipe.read, timeoutMs: upgradeTimeoutMs)
            Successor.closeDescriptor(pipe.read)
            switch report {
            case .line(let line) where line.hasPrefix("ready "):
                let words = line.split(separator: " ")
                let newVersion = words.count >= 3 ? String(words[2]) : "unknown"
                controlPlane.handOver(to: pid)
                admin?.handOver()
                server.handOver()
                controlPlane.quiesce()
                // Nothing changes here any more: the new process may change the state now.
                Successor.sendGo(go.write)
                handedOverTo.withLock { $0 = pid }
                controlPlane.appendAudit(AuditRecord(event: "upgrade", actor: actor, generation: controlPlane.persistentState.generation,
                                                     details: ["binary": path, "old_version": version, "new_version": newVersion,
                                                               "old_pid": String(oldPID), "new_pid": String(pid)]))
                logger.log(.info, "upgrade: pid \(pid) (\(newVersion)) serves; draining this process (\(version))")
                onHandedOver?(pid)
                return ["ok": true, "old_pid": .int(Int64(oldPID)), "new_pid": .int(Int64(pid)), "old_version": .string(version),
                        "new_version": .string(newVersion), "binary": .string(path)]
            case .line(let line):
                Successor.terminate(pid)
                let reason = line.hasPrefix("error ") ? String(line.dropFirst(6)) : line
                return failed("the new process could not start: \(reason)", actor: actor)
            case .closed:
                // The pipe closes as the process exits; its status follows a moment later.
                var exitCode = Successor.exitCode(pid)
                for _ in 0..<50 where exitCode == nil {
                    usleep(20_000)
                    exitCode = Successor.exitCode(pid)
                }
                let code = exitCode.map { "exit code \($0)" } ?? "no report"
                if exitCode == nil { Successor.terminate(pid) }
                return failed("the new process ended before it was ready (\(code)); its log is on this process's stderr", actor: actor)
            case .timeout:
                Successor.terminate(pid)
                return failed("the new process was not ready within \(upgradeTimeoutMs / 1000) s and was stopped", actor: actor)
            }
        }
    }

    private func failed(_ reason: String, actor: AuditActor) -> JSON {
        logger.log(.error, "upgrade: \(reason); this process keeps serving, nothing changed")
        controlPlane.appendAudit(AuditRecord(event: "upgrade_failed", reason: reason, actor: actor,
                                             generation: controlPlane.persistentState.generation))
        return ["ok": false, "error": .string("upgrade failed: \(reason); this process keeps serving, nothing changed")]
    }
}

/// A weak reference the admin command can hold without keeping a stopped runtime alive.
private final class WeakRuntime: @unchecked Sendable {
    weak var runtime: CutoverRuntime?
    init(_ runtime: CutoverRuntime) { self.runtime = runtime }
}
