import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import Foundation

/// What a reload changes: the settings that apply at once (routing, health, gate), and those
/// that take a restart, named. Pure, so that its table is tested without files.
public struct ReloadPlan: Sendable, Equatable {
    /// Directives whose new values wait for a restart.
    public let restartRequired: [String]
    /// The configuration to run with now: the new one, keeping the files in use (state and
    /// audit) until a restart.
    public let applied: Config

    public init(running: Config, next: Config) {
        var changed: [String] = []
        if next.listen != running.listen { changed.append("listen") }
        if next.previewListen != running.previewListen { changed.append("preview_listen") }
        if next.notify != running.notify { changed.append("notify") }
        if next.workers != running.workers { changed.append("workers") }
        if next.timeouts != running.timeouts { changed.append("timeouts") }
        if next.limits != running.limits { changed.append("limits") }
        if next.adminSocket != running.adminSocket { changed.append("admin_socket") }
        if next.adminMode != running.adminMode { changed.append("admin_mode") }
        if next.adminGroup != running.adminGroup { changed.append("admin_group") }
        if next.stateFile != running.stateFile { changed.append("state_file") }
        if next.auditLog != running.auditLog { changed.append("audit_log") }
        if next.accessLog != running.accessLog { changed.append("access_log") }
        if next.metricsListen != running.metricsListen { changed.append("metrics_listen") }
        if (next.tls?.redirectHTTP ?? []) != (running.tls?.redirectHTTP ?? []) { changed.append("tls redirect_http") }
        restartRequired = changed
        var applied = next
        applied.stateFile = running.stateFile
        applied.auditLog = running.auditLog
        self.applied = applied
    }
}

/// What `reload` did.
public enum ReloadOutcome: Sendable, Equatable {
    case reloaded(apps: Int, restartRequired: [String])
    /// Nothing changed; `FILE:LINE: what is wrong`, or why there is nothing to reload.
    case failed(String)
}

extension ControlPlane {
    // MARK: Reload

    /// Re-reads the config file, validates it, publishes its routing with the active color and
    /// the drains kept. An invalid file changes nothing and is reported with its `FILE:LINE`.
    /// Serialised with switches, drains and other reloads (SIGHUP and the socket may race).
    public func reload(actor: AuditActor) -> ReloadOutcome {
        guard let configPath else {
            return .failed("this instance runs an embedded configuration; there is no file to reload")
        }
        let outcome: ReloadOutcome = switchLock.withLock {
            let next: Config
            let table: RoutingTable
            var commits: [@Sendable () -> Void] = []
            do throws(ConfigError) {
                next = try ConfigParser.load(path: configPath)
                table = try RoutingTable(config: next, activeColor: activeColor, registry: registry)
                for prepare in reloadPreparers {
                    do {
                        commits.append(try prepare(next))
                    } catch let error as ConfigError {
                        throw error
                    } catch {
                        throw ConfigError(file: configPath, line: 0, message: "\(error)")
                    }
                }
            } catch {
                logger.log(.error, "reload failed: \(error.description); the running configuration is unchanged")
                appendAudit(AuditRecord(event: "reload_failed", actor: actor, details: ["error": error.description]))
                return .failed(error.description)
            }
            // Certificates and upstream TLS first: the routing published next must never reach
            // a server with the settings of before.
            for commit in commits { commit() }
            let plan = lock.withLock { () -> ReloadPlan in
                let plan = ReloadPlan(running: config, next: next)
                config = plan.applied
                rebuildTargets(from: table)
                // One publish, with health and drains already applied: no moment in which down or
                // drained servers look routable.
                let policies = Dictionary(next.apps.map { ($0.name, policy(for: $0)) }, uniquingKeysWith: { first, _ in first })
                publisher.publish(table.with(policies: { name, current in policies[name] ?? current }).withRoutability { app, color, server in
                    self.isRoutable(ServerKey(app: app, color: color, server: server.name))
                })
                return plan
            }
            return .reloaded(apps: next.apps.count, restartRequired: plan.restartRequired)
        }
        guard case .reloaded(_, let restartRequired) = outcome else { return outcome }
        startChecks()
        appendAudit(AuditRecord(event: "reload", actor: actor, generation: persistentState.generation,
                                details: restartRequired.isEmpty ? [:] : ["restart_required": restartRequired.joined(separator: ",")]))
        logger.log(.info, "configuration reloaded from \(configPath)"
                   + (restartRequired.isEmpty ? "" : " (takes effect after a restart: \(restartRequired.joined(separator: ", ")))"))
        return outcome
    }
}
