import CutoverConfig
import CutoverMetrics
import CutoverRelease
import CutoverRouting
import CutoverSystem
import Foundation

/// A plan running: its state machine and what the control plane needs to feed it.
final class ReleaseRun {
    var machine: ReleaseMachine
    let candidate: Color
    let startedAt: Int64
    /// Cumulative main-listener figures at the previous evaluation, per color, over every app.
    var lastTotals: (candidate: ArmCounts, stable: ArmCounts)
    let reason: String?
    /// An evaluation is queued or running.
    var evaluating = false

    init(machine: ReleaseMachine, candidate: Color, startedAt: Int64, totals: (ArmCounts, ArmCounts), reason: String?) {
        self.machine = machine
        self.candidate = candidate
        self.startedAt = startedAt
        lastTotals = totals
        self.reason = reason
    }
}

extension ControlPlane {
    /// A release the state file says was running when the process stopped: back at the step it
    /// had reached, paused, saying why (a restart never advances a step). Called at start.
    func restoreRelease() {
        lock.withLock {
            guard let saved = state.releasePlan else { return }
            guard let plan = config.plans.first(where: { $0.name == saved.name }) else {
                logger.log(.warning, "the state file names release plan '\(saved.name)', which the config no longer has; it is not resumed")
                state.releasePlan = nil
                return
            }
            let now = clock()
            let reason = "cutover restarted during step \(saved.step); the release resumes paused (`release resume` continues, `release abort` rolls back)"
            release = ReleaseRun(machine: ReleaseMachine(plan: plan, nowMs: now, restoredAt: saved.step - 1, reason: reason),
                                 candidate: state.active.other, startedAt: now, totals: (ArmCounts(), ArmCounts()), reason: nil)
            logger.log(.warning, "release \(plan.name): \(reason)")
        }
    }

    // MARK: Commands

    /// `release start PLAN [to COLOR]`: gated like a weight above 0 (readiness and thresholds of
    /// the candidate) unless forced; then step 1 is applied and the plan is evaluated ten times a
    /// second. One release at a time.
    func startRelease(plan name: String, to target: Color?, force: Bool, reason: String?, actor: AuditActor) -> JSON {
        let (plan, current, running) = lock.withLock {
            (config.plans.first { $0.name == name }, state, release?.machine.stepIndex != nil)
        }
        guard let plan else {
            let known = lock.withLock { config.plans.map(\.name) }
            return ["ok": false, "error": .string("unknown plan '\(name)' (plans: \(known.isEmpty ? "none configured" : known.joined(separator: ", ")))")]
        }
        guard !running else { return ["ok": false, "error": "a release is already running; `release status` shows it, `release abort` ends it"] }
        let candidate = current.active.other
        if let target, target != candidate {
            return ["ok": false, "error": .string("\(target.rawValue) is the stable color; a release moves traffic to \(candidate.rawValue)")]
        }
        if !force {
            var reasons = lock.withLock { notReady(candidate, at: clock()) }.map(\.description)
            if reasons.isEmpty { reasons = gateThresholdProblems(target: candidate, active: current.active) }
            if !reasons.isEmpty {
                appendAudit(AuditRecord(event: "refused", from: current.active, to: candidate, reason: reason, actor: actor,
                                        generation: current.generation,
                                        details: ["command": "release start", "plan": plan.name, "gate": reasons.joined(separator: "; ")]))
                return ["ok": false, "error": .string("release \(plan.name) to \(candidate.rawValue) refused: the gate did not pass"),
                        "reasons": .array(reasons.map { .string($0) })]
            }
        }
        let now = clock()
        let machine = ReleaseMachine(plan: plan, nowMs: now)
        let run = ReleaseRun(machine: machine, candidate: candidate, startedAt: now, totals: releaseTotals(candidate: candidate) ?? (ArmCounts(), ArmCounts()),
                             reason: reason)
        lock.withLock { release = run }
        appendAudit(AuditRecord(event: "release_started", from: current.active, to: candidate, reason: reason, forced: force, actor: actor,
                                generation: current.generation, details: planDetails(plan, step: 1)))
        apply(machine.startActions(), run: run, actor: actor)
        return releaseStatus()
    }

    func releaseStatus() -> JSON {
        let run = lock.withLock { release }
        guard let run else { return ["ok": true, "release": .null] }
        let machine = run.machine
        let phase: String
        switch machine.phase {
        case .running: phase = "running"
        case .paused: phase = "paused"
        case .rolledBack: phase = "rolled_back"
        case .completed: phase = "completed"
        }
        var evidence: [(String, JSON)] = machine.stepEvidence().sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }
        evidence.append(("false_alarm", .string(String(format: "%.2f%%", machine.plan.falseAlarm * 100))))
        return ["ok": true,
                "release": ["plan": .string(machine.plan.name), "candidate": .string(run.candidate.rawValue), "phase": .string(phase),
                            "step": .int(Int64((machine.stepIndex ?? machine.plan.steps.count - 1) + 1)),
                            "steps": .int(Int64(machine.plan.steps.count)),
                            "held_ms": .int(machine.heldMs), "waiting_for": .string(machine.waitingFor),
                            "started": .string(timestamp(run.startedAt)), "evidence": .object(evidence)]]
    }

    /// `release report`: the timeline of the last release from the audit log — every decision
    /// with the figures of the wave it closed (error rates and p95 of both colors), what a release
    /// manager attaches to the release.
    func releaseReport() -> JSON {
        guard let audit else { return ["ok": false, "error": "audit_log is off: the report is read from it"] }
        let lines: [String]
        do {
            lines = try audit.tail(10_000)
        } catch {
            return ["ok": false, "error": .string("cannot read the audit log: \(error)")]
        }
        let records = lines.compactMap { JSON.parse($0) }
        guard let start = records.lastIndex(where: { $0["event"]?.stringValue == "release_started" }) else {
            return ["ok": false, "error": "no release in the audit log"]
        }
        let events = records[start...].filter { record in
            let event = record["event"]?.stringValue ?? ""
            return event.hasPrefix("release") || event == "auto_rollback" || event == "rollback" || event == "switch"
        }
        let waves: [JSON] = events.map { record in
            let details = record["details"]
            func figure(_ key: String) -> JSON { .string(details?[key]?.stringValue) }
            return ["time": record["time"] ?? .null, "event": record["event"] ?? .null, "reason": record["reason"] ?? .null,
                    "step": figure("step"),
                    "candidate": ["requests": figure("candidate_requests"), "error_rate": figure("candidate_error_rate"),
                                  "p95_us": figure("candidate_p95_us")],
                    "stable": ["requests": figure("stable_requests"), "error_rate": figure("stable_error_rate"),
                               "p95_us": figure("stable_p95_us")],
                    "statistic": figure("statistic"), "threshold": figure("threshold")]
        }
        let first = records[start]
        return ["ok": true, "plan": first["details"]?["plan"] ?? .null, "plan_hash": first["details"]?["plan_hash"] ?? .null,
                "started": first["time"] ?? .null, "reason": first["reason"] ?? .null, "events": .array(waves)]
    }

    func pauseRelease(reason: String, actor: AuditActor) -> JSON {
        let paused: Bool = lock.withLock { release?.machine.pause(reason: reason) ?? false }
        guard paused else { return ["ok": false, "error": "no running release to pause"] }
        appendAudit(AuditRecord(event: "release_paused", reason: reason, actor: actor, details: releaseDetails()))
        return releaseStatus()
    }

    func resumeRelease(actor: AuditActor) -> JSON {
        let resumed: Bool = lock.withLock { release?.machine.resume() ?? false }
        guard resumed else { return ["ok": false, "error": "no paused release to resume"] }
        appendAudit(AuditRecord(event: "release_resumed", actor: actor, details: releaseDetails()))
        return releaseStatus()
    }

    func promoteRelease(reason: String?, actor: AuditActor) -> JSON {
        guard let run = lock.withLock({ release }) else { return ["ok": false, "error": "no release is running"] }
        let actions = lock.withLock { run.machine.promote() }
        guard !actions.isEmpty else { return ["ok": false, "error": "the release has ended"] }
        appendAudit(AuditRecord(event: "release_promoted", reason: reason, actor: actor, details: releaseDetails()))
        apply(actions, run: run, actor: actor)
        return releaseStatus()
    }

    func abortRelease(reason: String?, actor: AuditActor) -> JSON {
        guard let run = lock.withLock({ release }) else { return ["ok": false, "error": "no release is running"] }
        let actions = lock.withLock { run.machine.abort(reason: "release abort" + (reason.map { ": \($0)" } ?? "")) }
        guard !actions.isEmpty else { return ["ok": false, "error": "the release has ended"] }
        apply(actions, run: run, actor: actor)
        return releaseStatus()
    }

    /// A `switch`, `weight`, `pin`, `unpin` or `mirror` by hand during a release pauses it (the
    /// operator has taken over), and says so in the reply.
    func pauseReleaseForManualChange(_ command: String, actor: AuditActor) -> String? {
        let paused: Bool = lock.withLock { release?.machine.pause(reason: "operator ran '\(command)'") ?? false }
        guard paused else { return nil }
        appendAudit(AuditRecord(event: "release_paused", reason: "operator ran '\(command)'", actor: actor, details: releaseDetails()))
        return "the running release was paused: an operator changed the routing by hand (`release resume` continues it)"
    }

    // MARK: Evaluation

    /// Where plans are evaluated: off the checker's thread, whose probes a switch in progress
    /// may be waiting for while it holds the switch lock a decision needs.
    static let releaseQueue = DispatchQueue(label: "cutover-release")

    /// Called ten times a second by the checker: queues one evaluation when a plan runs and none
    /// is queued yet.
    func scheduleReleaseEvaluation() {
        let queue: Bool = lock.withLock {
            guard let run = release, run.machine.stepIndex != nil, !run.evaluating else { return false }
            run.evaluating = true
            return true
        }
        guard queue else { return }
        Self.releaseQueue.async { [self] in
            evaluateRelease()
            lock.withLock { release?.evaluating = false }
        }
    }

    /// The plan's figures since the last evaluation, its decision, and the decision carried out.
    func evaluateRelease() {
        guard let run = lock.withLock({ release }), run.machine.stepIndex != nil else { return }
        guard let totals = releaseTotals(candidate: run.candidate) else { return }
        let (window, shadow) = releaseWindow(candidate: run.candidate)
        let now = clock()
        let candidateDown = lock.withLock {
            health.contains { $0.key.color == run.candidate && $0.value.state == .down }
        }
        var observation = ReleaseObservation(
            nowMs: now,
            candidate: ArmCounts(requests: totals.0.requests &- run.lastTotals.candidate.requests,
                                 errors: totals.0.errors &- run.lastTotals.candidate.errors),
            stable: ArmCounts(requests: totals.1.requests &- run.lastTotals.stable.requests,
                              errors: totals.1.errors &- run.lastTotals.stable.errors))
        observation.candidateP95Micros = window.candidate.latency.percentile(95)
        observation.candidateLatencySamples = window.candidate.latency.count
        observation.stableP95Micros = window.stable.latency.percentile(95)
        observation.stableLatencySamples = window.stable.latency.count
        observation.candidateServerDown = candidateDown
        if let shadow {
            observation.shadowDiffRate = shadow.diffRate
            observation.shadowJudged = shadow.judged
        }
        run.lastTotals = (totals.0, totals.1)
        let actions = lock.withLock { run.machine.observe(observation) }
        guard !actions.isEmpty else { return }
        apply(actions, run: run, actor: .current())
    }

    /// Cumulative main-listener requests and errors of the candidate and the stable color over
    /// every app; nil when the data plane did not answer.
    func releaseTotals(candidate: Color) -> (ArmCounts, ArmCounts)? {
        guard let source = attachedDataPlane.source else { return nil }
        let snapshot = source.snapshot(.total, true)
        guard snapshot.loopsMissing == 0 else { return nil }
        var candidateCounts = ArmCounts()
        var stableCounts = ArmCounts()
        for (key, totals) in snapshot.totals where key.listener == .main {
            let figures = totals.figures
            let counts = ArmCounts(requests: figures.requests, errors: figures.count(.serverError) &+ figures.upstreamErrors)
            if key.color == candidate {
                candidateCounts.requests &+= counts.requests
                candidateCounts.errors &+= counts.errors
            } else {
                stableCounts.requests &+= counts.requests
                stableCounts.errors &+= counts.errors
            }
        }
        return (candidateCounts, stableCounts)
    }

    /// The last ten seconds' latency of both colors (every app merged) and the shadow diff.
    private func releaseWindow(candidate: Color) -> ((candidate: WindowedStats.Figures, stable: WindowedStats.Figures), ShadowFigures?) {
        guard let source = attachedDataPlane.source else { return ((WindowedStats.Figures(), WindowedStats.Figures()), nil) }
        let snapshot = source.snapshot(.tenSeconds, false)
        var candidateFigures = WindowedStats.Figures()
        var stableFigures = WindowedStats.Figures()
        for (key, figures) in snapshot.windowFigures where key.listener == .main {
            if key.color == candidate { candidateFigures.merge(figures) } else { stableFigures.merge(figures) }
        }
        var shadow: ShadowFigures? = nil
        for (_, figures) in snapshot.shadow {
            if shadow == nil { shadow = ShadowFigures() }
            shadow!.merge(figures)
        }
        return ((candidateFigures, stableFigures), shadow)
    }

    // MARK: Carrying out decisions

    /// Each action is audited (fsync'd) before it takes effect.
    private func apply(_ actions: [ReleaseAction], run: ReleaseRun, actor: AuditActor) {
        for action in actions {
            switch action {
            case .applyStep(let index, let step, let decision):
                appendAudit(AuditRecord(event: "release_step", to: run.candidate, reason: decision.reason, actor: actor,
                                        details: decision.evidence.merging(planDetails(run.machine.plan, step: index + 1)) { $1 }))
                applyStep(step, index: index, plan: run.machine.plan.name, candidate: run.candidate,
                          reason: "release \(run.machine.plan.name) step \(index + 1)", actor: actor)
            case .pause(let decision):
                appendAudit(AuditRecord(event: "release_paused", to: run.candidate, reason: decision.reason, actor: actor,
                                        details: decision.evidence.merging(planDetails(run.machine.plan, step: nil)) { $1 }))
                logger.log(.warning, "release \(run.machine.plan.name) paused: \(decision.reason)")
            case .rollback(let decision):
                let automatic = decision.reason.hasPrefix("rollback_if")
                appendAudit(AuditRecord(event: automatic ? "auto_rollback" : "release_rolledback", from: run.candidate, reason: decision.reason,
                                        actor: actor, details: decision.evidence.merging(planDetails(run.machine.plan, step: nil)) { $1 }))
                logger.log(.warning, "release \(run.machine.plan.name) rolled back: \(decision.reason)")
                _ = rollbackCanary(force: true, reason: decision.reason, actor: actor)
            case .complete(let decision):
                appendAudit(AuditRecord(event: "release_completed", to: run.candidate, reason: decision.reason, actor: actor,
                                        details: decision.evidence.merging(planDetails(run.machine.plan, step: nil)) { $1 }))
                let outcome = switchLock.withLock {
                    changeColorLocked(to: run.candidate, rollback: false, force: true, reason: "release \(run.machine.plan.name) completed",
                                      actor: actor, command: "release", runsVerify: false)
                }
                if case .switched = outcome {
                    logger.log(.info, "release \(run.machine.plan.name) completed: \(run.candidate.rawValue) is the stable color")
                }
            }
        }
    }

    /// A step's weight, pins (to the candidate, on every app) and mirror share, made durable and
    /// published as one change. The plan decided; no gate runs here.
    private func applyStep(_ step: PlanStep, index: Int, plan: String, candidate: Color, reason: String, actor: AuditActor) {
        switchLock.withLock {
            let (current, apps) = lock.withLock { (state, config.apps) }
            var next = current
            for app in apps {
                if let weight = step.weight {
                    let salt = current.releases[app.name]?.salt ?? UInt64.random(in: 1...UInt64.max)
                    next.releases[app.name] = AppRelease(candidateBasisPoints: weight, salt: salt)
                }
                for pin in step.pins {
                    var rule = pin
                    rule.color = candidate
                    var runtime = next.pins[app.name] ?? []
                    let configured = app.pins + runtime
                    rule.values = rule.values.filter { value in !configured.contains { $0.source == rule.source && $0.name == rule.name && $0.values.contains(value) } }
                    guard !rule.values.isEmpty else { continue }
                    runtime.append(rule)
                    next.pins[app.name] = runtime
                }
                if let mirror = step.mirror { next.mirrors[app.name] = mirror }
            }
            next.suspendedPins.remove(candidate)
            if next.previous == candidate { next.previous = nil }
            next.releasePlan = (plan, index + 1)
            next.generation = current.generation + 1
            if let error = saveStateDurably(next, command: reason) {
                logger.log(.error, "\(reason): \(error.description)")
                return
            }
            lock.withLock {
                state = next
                publishPoliciesLocked()
            }
        }
    }

    private func planDetails(_ plan: PlanConfig, step: Int?) -> [String: String] {
        var details = ["plan": plan.name, "plan_file": "\(plan.file):\(plan.line)", "plan_hash": Self.planHash(plan)]
        if let step { details["step"] = String(step) }
        return details
    }

    private func releaseDetails() -> [String: String] {
        guard let run = lock.withLock({ release }) else { return [:] }
        return run.machine.stepEvidence().merging(planDetails(run.machine.plan, step: nil)) { $1 }
    }

    /// A short hash of the plan as configured: the audit says which version of a plan decided.
    static func planHash(_ plan: PlanConfig) -> String {
        let text = "\(plan.name)|\(plan.steps)|\(plan.pauseIf)|\(plan.rollbackIf)|\(plan.minRequests)|\(plan.falseAlarm)|\(plan.watchMs)"
        return String(SHA256.hex(SHA256.hash(Array(text.utf8))).prefix(16))
    }
}
