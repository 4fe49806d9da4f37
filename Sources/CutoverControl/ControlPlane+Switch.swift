import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS
import Foundation
import Synchronization

/// One verify request of the switch gate (or of `verify`), and what it found.
public struct VerifyResult: Sendable, Equatable {
    public var app: String
    public var server: String
    public var path: String
    public var outcome: CheckOutcome

    public init(app: String, server: String, path: String, outcome: CheckOutcome) {
        self.app = app
        self.server = server
        self.path = path
        self.outcome = outcome
    }
}

/// Why a switch or rollback was refused — typed; the admin layer words it.
public enum GateReason: Sendable, Equatable, CustomStringConvertible {
    case alreadyActive(Color)
    case notReady(NotReady)
    /// A gate threshold on the target's traffic (5xx rate, p95 ratio), or figures missing.
    case threshold(String)
    case verifyFailed(VerifyResult, color: Color)

    public var description: String {
        switch self {
        case .alreadyActive(let color): return "\(color.rawValue) is already the active color"
        case .notReady(let reason): return reason.description
        case .threshold(let text): return text
        case .verifyFailed(let result, let color):
            return "verify \(result.path) on app \(result.app) \(color.rawValue) \(result.server): \(result.outcome.summary)"
        }
    }
}

/// What a switch or rollback did.
public enum SwitchOutcome: Sendable {
    /// Published: the new color takes every request parsed from now on.
    case switched(Switched)
    /// The gate refused; nothing changed.
    case refused(Refused)
    /// The state file could not be written; nothing changed.
    case failed(String)

    public struct Switched: Sendable {
        public var command: String
        public var from: Color
        public var to: Color
        public var generation: UInt64
        /// How long the publish took (the moment loops start routing to `to`).
        public var publishMicros: UInt64
        public var forced: Bool
        public var verify: [VerifyResult]
        /// The switch happened but its audit record could not be written.
        public var auditError: String?
    }

    public struct Refused: Sendable {
        public var command: String
        public var target: Color
        public var reasons: [GateReason]
        public var verify: [VerifyResult]

        /// Refused before any verify request ran (readiness or thresholds), or by one.
        public var byVerify: Bool { reasons.allSatisfy { if case .verifyFailed = $0 { return true } else { return false } } }
    }
}

extension ControlPlane {
    // MARK: Switching

    /// `switch` and `rollback`: gate → state file durable → publish → audit → outcome. Held
    /// under `switchLock` for all of it (gate probes included), so two switches, or a switch and
    /// a drain or reload, never interleave.
    func changeColor(to target: Color, rollback: Bool, force: Bool, reason: String?, actor: AuditActor) -> SwitchOutcome {
        switchLock.withLock {
            changeColorLocked(to: target, rollback: rollback, force: force, reason: reason, actor: actor)
        }
    }

    /// `command` names it in replies and audit records (`weight` promotes by this path, without
    /// verify paths). `switchLock` held.
    func changeColorLocked(to target: Color, rollback: Bool, force: Bool, reason: String?, actor: AuditActor,
                           command givenCommand: String? = nil, runsVerify: Bool = true) -> SwitchOutcome {
        let command = givenCommand ?? (rollback ? "rollback" : "switch")
        let (current, initialReasons): (PersistentState, [GateReason]) = lock.withLock {
            let now = clock()
            if state.active == target { return (state, [.alreadyActive(target)]) }
            if force { return (state, []) }
            return (state, (rollback ? rollbackNotReady(target, at: now) : notReady(target, at: now)).map { .notReady($0) })
        }
        var reasons = initialReasons
        if reasons.isEmpty && !force && !rollback {
            // Read outside the state lock: collecting the figures waits on every loop.
            reasons = gateThresholdProblems(target: target, active: current.active).map { .threshold($0) }
        }
        var verify: [VerifyResult] = []
        if reasons.isEmpty && !force && !rollback && runsVerify {
            verify = runVerify(target)
            reasons = verify.filter { !$0.outcome.isSuccess }.map { .verifyFailed($0, color: target) }
        }
        if !reasons.isEmpty {
            countSwitch(command, "refused")
            appendAudit(AuditRecord(event: "refused", from: current.active, to: target, reason: reason, forced: force,
                                    actor: actor, generation: current.generation,
                                    details: ["gate": reasons.map(\.description).joined(separator: "; "), "command": command]))
            return .refused(.init(command: command, target: target, reasons: reasons, verify: verify))
        }

        var next = current
        next.previous = current.active
        next.active = target
        next.generation = current.generation + 1
        // A switch ends any canary: the new color carries everything, a new release starts
        // from 0 with a new salt. Pins to the color switched to are in force again; a rollback
        // suspends the pins to the color it leaves.
        next.releases = [:]
        if command == "release" { next.releasePlan = nil }
        next.suspendedPins.remove(target)
        if rollback && hasPins(to: current.active, in: current) { next.suspendedPins.insert(current.active) }
        // The record first, then the state file, then the publish: a crash between any two
        // leaves a record (start-up says whether it took effect), never a switch without one.
        // A switch whose record cannot be written is refused; a rollback goes ahead (getting
        // traffic off a bad release comes first) and its reply says the record is missing.
        var details: [String: String] = [:]
        if force { details["gate"] = "skipped (forced)" } else if !verify.isEmpty { details["verify"] = "\(verify.count) passed" }
        let record = AuditRecord(event: command, from: current.active, to: target, reason: reason, forced: force,
                                 actor: actor, generation: next.generation, details: details)
        let auditError = appendAudit(record)
        if let auditError, !rollback {
            countSwitch(command, "failed")
            return .failed("\(command) aborted, the audit log could not be written (no change is made without its record): \(auditError)")
        }
        if let error = saveStateDurably(next, command: "\(command) to \(target.rawValue)") {
            countSwitch(command, "failed")
            recordNotApplied(record, because: error.description)
            return .failed("\(command) aborted, the state file could not be written: \(error.description)")
        }
        let started = DispatchTime.now().uptimeNanoseconds
        lock.withLock {
            state = next
            publishPoliciesLocked()
            lastSwitch = SwitchRecord(at: clock(), from: current.active, to: target, drainedAt: nil)
        }
        let publishMicros = (DispatchTime.now().uptimeNanoseconds - started) / 1000
        countSwitch(command, "ok")
        logger.log(.info, "\(command): \(current.active.rawValue) → \(target.rawValue) (generation \(next.generation)\(force ? ", forced" : ""))")
        return .switched(.init(command: command, from: current.active, to: target, generation: next.generation,
                               publishMicros: publishMicros, forced: force, verify: verify, auditError: auditError))
    }

    /// The verify requests of the switch gate: every verify path of every app against every up
    /// server of `color`, all at once on the checker's loop (hung servers cost one timeout in
    /// total). Runs without the state lock: it waits on the network.
    func runVerify(_ color: Color) -> [VerifyResult] {
        let (work, timeout): ([(VerifyResult, ProbeRequest)], Int) = lock.withLock {
            let work = config.apps.flatMap { app in
                app.servers(color).flatMap { endpoint -> [(VerifyResult, ProbeRequest)] in
                    let key = ServerKey(app: app.name, color: color, server: endpoint.description)
                    guard health[key]?.state == .up, !isDrained(key), let address = addresses[key]?.address else { return [] }
                    let host = Self.checkHost(app, server: endpoint.description)
                    return app.verifyPaths.map { path in
                        (VerifyResult(app: app.name, server: endpoint.description, path: path, outcome: .failure(reason: "not run")),
                         ProbeRequest(address: address, host: host, path: path, timeoutMs: config.health.timeoutMs,
                                      tls: upstreamTLS[UpstreamTLSTarget.key(app: app.name, server: endpoint.description)]))
                    }
                }
            }
            return (work, config.health.timeoutMs)
        }
        let outcomes = Mutex<[CheckOutcome?]>(Array(repeating: nil, count: work.count))
        let group = DispatchGroup()
        for (index, item) in work.enumerated() {
            group.enter()
            probe(item.1) { outcome in
                outcomes.withLock { $0[index] = outcome }
                group.leave()
            }
        }
        // Every probe ends by its deadline; the margin covers a checker that stopped meanwhile.
        _ = group.wait(timeout: .now() + .milliseconds(timeout + 2_000))
        let answered = outcomes.withLock { $0 }
        return work.enumerated().map { index, item in
            var result = item.0
            if let outcome = answered[index] { result.outcome = outcome }
            return result
        }
    }
}
