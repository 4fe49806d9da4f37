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
    /// Cumulative main-listener figures at the previous evaluation, per app and color.
    var lastTotals: [String: (candidate: ArmCounts, stable: ArmCounts)]
    let reason: String?
    /// An evaluation is queued or running.
    var evaluating = false
    /// Candidate servers already down when the plan started: `health_failed` is about servers
    /// that go down during it.
    let downAtStart: Set<ControlPlane.ServerKey>
    /// A watch after a switch: the color switched away from (a breach returns to it) and its
    /// figures from before the switch, the control the new color is judged against.
    var watch: (previous: Color, baseline: WatchBaseline)? = nil

    init(machine: ReleaseMachine, candidate: Color, startedAt: Int64, totals: [String: (candidate: ArmCounts, stable: ArmCounts)],
         downAtStart: Set<ControlPlane.ServerKey>, reason: String?) {
        self.machine = machine
        self.candidate = candidate
        self.startedAt = startedAt
        lastTotals = totals
        self.downAtStart = downAtStart
        self.reason = reason
    }
}

/// The previous color's figures from before a switch.
struct WatchBaseline {
    var requests: UInt64 = 0
    var errorRate: Double = 0
    var p95Micros: UInt64 = 0
    var latencySamples: UInt64 = 0
}

extension ControlPlane {
    // MARK: Watch after a switch

    /// The figures a watch compares with: `color`'s last minute over every app (main listener).
    func watchBaseline(of color: Color) -> WatchBaseline {
        guard let source = attachedDataPlane.source else { return WatchBaseline() }
        let snapshot = source.snapshot(.oneMinute, false)
        var figures = WindowedStats.Figures()
        for (key, value) in snapshot.windowFigures where key.listener == .main && key.color == color { figures.merge(value) }
        return WatchBaseline(requests: figures.requests, errorRate: figures.serverErrorRate,
                             p95Micros: figures.latency.percentile(95), latencySamples: figures.latency.count)
    }

    /// Starts watching `to` for `durationMs` after a switch from `from`: the `watch { }`
    /// conditions run on its traffic against `from`'s figures from before the switch; a breach
    /// switches back (`auto_rollback`), a quiet watch ends with `watch_passed`.
    func startWatch(from: Color, to: Color, durationMs: Int, baseline: WatchBaseline, actor: AuditActor) -> JSON {
        Self.releaseQueue.sync { startWatchOnQueue(from: from, to: to, durationMs: durationMs, baseline: baseline, actor: actor) }
    }

    /// `startWatch` from code already running on the release queue (a plan's completion).
    private func startWatchOnQueue(from: Color, to: Color, durationMs: Int, baseline: WatchBaseline, actor: AuditActor) -> JSON {
        do {
            let watchConfig = lock.withLock { config.watch }
            var plan = PlanConfig(name: "watch")
            plan.steps = [PlanStep(weight: 10_000, holdMs: durationMs)]
            plan.minRequests = watchConfig.minRequests
            plan.falseAlarm = watchConfig.falseAlarm
            // With no concurrent control, a regression is a rate above the previous color's.
            plan.rollbackIf = watchConfig.rollbackIf.map { condition in
                if case .errorRegression(let excess) = condition {
                    return .errorRate(above: min(0.99, max(baseline.errorRate + max(excess, 0.001), 0.001)))
                }
                return condition
            }
            guard let totals = releaseTotals(candidate: to) else { return .string("not started: the data plane's figures could not be read") }
            let now = clock()
            let run = ReleaseRun(machine: ReleaseMachine(plan: plan, nowMs: now), candidate: to, startedAt: now, totals: totals,
                                 downAtStart: lock.withLock { Set(health.filter { $0.key.color == to && $0.value.state == .down }.map(\.key)) },
                                 reason: nil)
            run.watch = (from, baseline)
            lock.withLock { release = run }
            appendAudit(AuditRecord(event: "watch_started", from: from, to: to, actor: actor,
                                    details: ["watch_ms": String(durationMs), "baseline_requests": String(baseline.requests),
                                              "baseline_error_rate": String(format: "%.3f%%", baseline.errorRate * 100),
                                              "baseline_p95_us": String(baseline.p95Micros),
                                              "conditions": plan.rollbackIf.map(\.description).joined(separator: "; ")]))
            return .string("watching \(to.rawValue) for \(durationMs / 1000) s against \(from.rawValue)'s figures from before the switch")
        }
    }

    /// The watch in progress, for `status`. Lock held.
    func watchReportLocked() -> JSON {
        guard let run = release, let watch = run.watch else { return .null }
        let machine = run.machine
        let phase: String
        switch machine.phase {
        case .running, .paused: phase = "watching"
        case .completed: phase = "passed"
        case .rolledBack: phase = "rolled_back"
        case .ended: phase = "ended"
        }
        return ["from": .string(watch.previous.rawValue), "to": .string(run.candidate.rawValue), "phase": .string(phase),
                "started": .string(timestamp(run.startedAt)), "waiting_for": .string(machine.waitingFor),
                "baseline": ["requests": .int(Int64(watch.baseline.requests)), "error_rate": .double(watch.baseline.errorRate),
                             "p95_us": .int(Int64(watch.baseline.p95Micros))],
                "evidence": .object(machine.stepEvidence().sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })]
    }

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
            guard Self.planHash(plan) == saved.hash else {
                logger.log(.warning, "release plan '\(saved.name)' changed since it was started; it is not resumed (weights and pins stay as they were)")
                state.releasePlan = nil
                return
            }
            let now = clock()
            let reason = "cutover restarted during step \(saved.step); the release resumes paused (`release resume` continues, `release abort` rolls back)"
            let candidate = state.active.other
            release = ReleaseRun(machine: ReleaseMachine(plan: plan, nowMs: now, restoredAt: saved.step - 1, reason: reason),
                                 candidate: candidate, startedAt: now, totals: [:],
                                 downAtStart: Set(health.filter { $0.key.color == candidate && $0.value.state == .down }.map(\.key)), reason: nil)
            logger.log(.warning, "release \(plan.name): \(reason)")
        }
    }

    // MARK: Commands

    /// `release start PLAN [to COLOR]`: gated like a weight above 0 (readiness and thresholds of
    /// the candidate) unless forced; then step 1 is applied and the plan is evaluated ten times a
    /// second. One release at a time.
    func startRelease(plan name: String, to target: Color?, force: Bool, reason: String?, actor: AuditActor) -> JSON {
        Self.releaseQueue.sync { startReleaseSerialized(plan: name, to: target, force: force, reason: reason, actor: actor) }
    }

    /// Every change to a release — commands and the evaluations' decisions — runs on
    /// `releaseQueue`, so a decision is carried out before the next command sees the plan.
    private func startReleaseSerialized(plan name: String, to target: Color?, force: Bool, reason: String?, actor: AuditActor) -> JSON {
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
        guard let totals = releaseTotals(candidate: candidate) else {
            return ["ok": false, "error": "the data plane's figures could not be read; the release did not start"]
        }
        let now = clock()
        let machine = ReleaseMachine(plan: plan, nowMs: now)
        let downAtStart = lock.withLock { Set(health.filter { $0.key.color == candidate && $0.value.state == .down }.map(\.key)) }
        let run = ReleaseRun(machine: machine, candidate: candidate, startedAt: now, totals: totals, downAtStart: downAtStart, reason: reason)
        lock.withLock { release = run }
        appendAudit(AuditRecord(event: "release_started", from: current.active, to: candidate, reason: reason, forced: force, actor: actor,
                                generation: current.generation, details: planDetails(plan, step: 1)))
        apply(machine.startActions(), run: run, actor: actor)
        return releaseStatusOnQueue()
    }

    /// `release status`: taken on the release queue, so it never shows a decision made but not
    /// yet carried out.
    func releaseStatus() -> JSON {
        Self.releaseQueue.sync { releaseStatusOnQueue() }
    }

    private func releaseStatusOnQueue() -> JSON {
        guard let (run, machine) = lock.withLock({ release.map { ($0, $0.machine) } }) else { return ["ok": true, "release": .null] }
        let phase: String
        switch machine.phase {
        case .running: phase = "running"
        case .paused: phase = "paused"
        case .rolledBack: phase = "rolled_back"
        case .completed: phase = "completed"
        case .ended: phase = "ended"
        }
        var evidence: [(String, JSON)] = machine.stepEvidence().sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }
        evidence.append(("false_alarm", .string(String(format: "%.2f%%", machine.plan.falseAlarm * 100))))
        return ["ok": true,
                "release": ["plan": .string(machine.plan.name), "candidate": .string(run.candidate.rawValue), "phase": .string(phase),
                            "step": .int(Int64((machine.stepIndex ?? machine.plan.steps.count - 1) + 1)),
                            "steps": .int(Int64(machine.plan.steps.count)),
                            "held_ms": .int(machine.heldMs), "waiting_for": .string(machine.waitingFor),
                            "started": .string(timestamp(run.startedAt)), "evidence": .object(evidence),
                            "conditions": .array(machine.conditionReport().map {
                                ["kind": .string($0.kind), "condition": .string($0.condition), "standing": .string($0.standing)]
                            })]]
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
        Self.releaseQueue.sync {
            guard lock.withLock({ release?.machine.phase }).map({ if case .running = $0 { return true } else { return false } }) == true else {
                return ["ok": false, "error": "no running release to pause"]
            }
            appendAudit(AuditRecord(event: "release_paused", reason: reason, actor: actor, details: releaseDetails()))
            lock.withLock { _ = release?.machine.pause(reason: reason) }
            return releaseStatusOnQueue()
        }
    }

    func resumeRelease(actor: AuditActor) -> JSON {
        Self.releaseQueue.sync {
            guard lock.withLock({ release?.machine.phase }).map({ if case .paused = $0 { return true } else { return false } }) == true else {
                return ["ok": false, "error": "no paused release to resume"]
            }
            guard let run = lock.withLock({ release }), let index = lock.withLock({ run.machine.stepIndex }) else {
                return ["ok": false, "error": "no paused release to resume"]
            }
            if let failure = appendAudit(AuditRecord(event: "release_resumed", actor: actor, details: releaseDetails())) {
                return ["ok": false, "error": .string("not resumed: the audit log could not be written (\(failure))")]
            }
            // The plan owns the routing while it runs: its step's weight, pins and mirror are set
            // again (a weight set by hand while paused, or a step that was not carried out). A
            // watch owns nothing: the switch already happened.
            let plan = run.machine.plan
            guard run.watch != nil || applyStep(plan.steps[index], index: index, plan: plan, candidate: run.candidate,
                            reason: "release \(plan.name) step \(index + 1) resumed", actor: actor) else {
                return ["ok": false, "error": .string("not resumed: step \(index + 1) could not be made durable (state file)")]
            }
            lock.withLock { _ = run.machine.resume() }
            return releaseStatusOnQueue()
        }
    }

    func promoteRelease(reason: String?, actor: AuditActor) -> JSON {
        Self.releaseQueue.sync {
            guard let run = lock.withLock({ release }), lock.withLock({ run.machine.stepIndex }) != nil else {
                return ["ok": false, "error": "no release is running"]
            }
            appendAudit(AuditRecord(event: "release_promoted", reason: reason, actor: actor, details: releaseDetails()))
            let actions = lock.withLock { run.machine.promote() }
            apply(actions, run: run, actor: actor)
            return releaseStatusOnQueue()
        }
    }

    func abortRelease(reason: String?, actor: AuditActor) -> JSON {
        Self.releaseQueue.sync {
            guard let run = lock.withLock({ release }) else { return ["ok": false, "error": "no release is running"] }
            let actions = lock.withLock { run.machine.abort(reason: "release abort" + (reason.map { ": \($0)" } ?? "")) }
            guard !actions.isEmpty else { return ["ok": false, "error": "the release has ended"] }
            apply(actions, run: run, actor: actor)
            return releaseStatusOnQueue()
        }
    }

    /// A `weight`, `pin`, `unpin` or `mirror` by hand during a release pauses it (the operator
    /// has taken over); a `switch` by hand ends it. The reply says so.
    func pauseReleaseForManualChange(_ command: String, actor: AuditActor) -> String? {
        Self.releaseQueue.sync {
            guard let run = lock.withLock({ release }), lock.withLock({ run.machine.stepIndex }) != nil else { return nil }
            if command == "switch" {
                appendAudit(AuditRecord(event: "release_ended", reason: "an operator switched by hand", actor: actor, details: releaseDetails()))
                lock.withLock { _ = run.machine.end(reason: "an operator switched by hand") }
                clearReleasePlanInState()
                return "the running release ended: an operator switched by hand"
            }
            guard lock.withLock({ if case .running = run.machine.phase { return true } else { return false } }) else { return nil }
            appendAudit(AuditRecord(event: "release_paused", reason: "operator ran '\(command)'", actor: actor, details: releaseDetails()))
            lock.withLock { _ = run.machine.pause(reason: "operator ran '\(command)'") }
            return "the running release was paused: an operator changed the routing by hand (`release resume` continues it)"
        }
    }

    /// The state file forgets the plan (it ended): a restart does not resume it.
    private func clearReleasePlanInState() {
        switchLock.withLock {
            let current = lock.withLock { state }
            guard current.releasePlan != nil else { return }
            var next = current
            next.releasePlan = nil
            if saveStateDurably(next, command: "release ended") == nil { lock.withLock { state = next } }
        }
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
            // A plan stays evaluated while its machine decides (on this queue, in order with
            // the operator's commands).
            evaluateRelease()
            lock.withLock { release?.evaluating = false }
        }
    }

    /// The plan's figures since the last evaluation, its decision, and the decision carried out.
    func evaluateRelease() {
        guard let run = lock.withLock({ release }), lock.withLock({ run.machine.stepIndex }) != nil else { return }
        guard let totals = releaseTotals(candidate: run.candidate) else { return }
        let (window, shadow) = releaseWindow(candidate: run.candidate)
        let now = clock()
        let candidateDown = lock.withLock {
            health.contains { $0.key.color == run.candidate && $0.value.state == .down && !run.downAtStart.contains($0.key) }
        }
        var candidate = ArmCounts()
        var stable = ArmCounts()
        var strata: [(candidate: ArmCounts, stable: ArmCounts)] = []
        for (app, now) in totals {
            let before = run.lastTotals[app] ?? (ArmCounts(), ArmCounts())
            // Counters only grow; a shrink (never expected) counts as nothing new.
            func delta(_ after: ArmCounts, _ before: ArmCounts) -> ArmCounts {
                ArmCounts(requests: after.requests >= before.requests ? after.requests - before.requests : 0,
                          errors: after.errors >= before.errors ? after.errors - before.errors : 0)
            }
            let stratum = (candidate: delta(now.candidate, before.candidate), stable: delta(now.stable, before.stable))
            strata.append(stratum)
            candidate.requests &+= stratum.candidate.requests
            candidate.errors &+= stratum.candidate.errors
            stable.requests &+= stratum.stable.requests
            stable.errors &+= stratum.stable.errors
        }
        var observation = ReleaseObservation(nowMs: now, candidate: candidate, stable: stable)
        observation.strata = strata
        if run.watch != nil {
            // No traffic on the old color now: its figures from before the switch are the control.
            observation.stable = ArmCounts()
            observation.strata = []
        }
        observation.candidateP95Micros = window.candidate.latency.percentile(95)
        observation.candidateLatencySamples = window.candidate.latency.count
        observation.stableP95Micros = run.watch?.baseline.p95Micros ?? window.stable.latency.percentile(95)
        observation.stableLatencySamples = run.watch?.baseline.latencySamples ?? window.stable.latency.count
        observation.candidateServerDown = candidateDown
        if let shadow {
            observation.shadowDiffRate = shadow.diffRate
            observation.shadowJudged = shadow.judged
        }
        run.lastTotals = totals
        let actions = lock.withLock { run.machine.observe(observation) }
        guard !actions.isEmpty else { return }
        apply(actions, run: run, actor: .current())
    }

    /// Cumulative main-listener requests and errors of the candidate and the stable color, per
    /// app; nil when the data plane did not answer.
    func releaseTotals(candidate: Color) -> [String: (candidate: ArmCounts, stable: ArmCounts)]? {
        guard let source = attachedDataPlane.source else { return nil }
        let snapshot = source.snapshot(.total, true)
        guard snapshot.loopsMissing == 0 else { return nil }
        var result: [String: (candidate: ArmCounts, stable: ArmCounts)] = [:]
        for (key, totals) in snapshot.totals where key.listener == .main {
            let figures = totals.figures
            let counts = ArmCounts(requests: figures.requests, errors: figures.count(.serverError) &+ figures.upstreamErrors)
            var entry = result[key.app] ?? (ArmCounts(), ArmCounts())
            if key.color == candidate { entry.candidate = counts } else { entry.stable = counts }
            result[key.app] = entry
        }
        return result
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
        if let watch = run.watch {
            for action in actions {
                switch action {
                case .complete(let decision):
                    appendAudit(AuditRecord(event: "watch_passed", from: watch.previous, to: run.candidate, reason: decision.reason,
                                            actor: actor, details: decision.evidence))
                case .rollback(let decision):
                    appendAudit(AuditRecord(event: "auto_rollback", from: run.candidate, to: watch.previous, reason: decision.reason,
                                            actor: actor, details: decision.evidence.merging(["watch": "after the switch"]) { $1 }))
                    logger.log(.warning, "watch of \(run.candidate.rawValue) breached (\(decision.reason)): back to \(watch.previous.rawValue)")
                    _ = switchLock.withLock {
                        changeColorLocked(to: watch.previous, rollback: true, force: true, reason: decision.reason, actor: actor)
                    }
                case .applyStep, .pause:
                    break
                }
            }
            return
        }
        for action in actions {
            switch action {
            case .applyStep(let index, let step, let decision):
                // No step without its record: an audit log that cannot be written holds the plan.
                if let failure = appendAudit(AuditRecord(event: "release_step", to: run.candidate, reason: decision.reason, actor: actor,
                                                         details: decision.evidence.merging(planDetails(run.machine.plan, step: index + 1)) { $1 })) {
                    holdBack(run, reason: "step \(index + 1) not taken: the audit log could not be written (\(failure))", actor: actor)
                    return
                }
                if !applyStep(step, index: index, plan: run.machine.plan, candidate: run.candidate,
                              reason: "release \(run.machine.plan.name) step \(index + 1)", actor: actor) {
                    // The routing did not change: the plan must not run ahead of it.
                    holdBack(run, reason: "step \(index + 1) could not be made durable (state file)", actor: actor)
                    return
                }
            case .pause(let decision):
                appendAudit(AuditRecord(event: "release_paused", to: run.candidate, reason: decision.reason, actor: actor,
                                        details: decision.evidence.merging(planDetails(run.machine.plan, step: nil)) { $1 }))
                logger.log(.warning, "release \(run.machine.plan.name) paused: \(decision.reason)")
            case .rollback(let decision):
                // A rollback goes ahead even when its record cannot be written (the failure is
                // logged): the safe direction is never held back by the audit log's disk.
                let automatic = decision.reason.hasPrefix("rollback_if")
                appendAudit(AuditRecord(event: automatic ? "auto_rollback" : "release_rolledback", from: run.candidate, reason: decision.reason,
                                        actor: actor, details: decision.evidence.merging(planDetails(run.machine.plan, step: nil)) { $1 }))
                logger.log(.warning, "release \(run.machine.plan.name) rolled back: \(decision.reason)")
                _ = rollbackCanary(force: true, reason: decision.reason, actor: actor)
                endReleaseInState(stopMirroring: true)
            case .complete(let decision):
                if let failure = appendAudit(AuditRecord(event: "release_completed", to: run.candidate, reason: decision.reason, actor: actor,
                                                         details: decision.evidence.merging(planDetails(run.machine.plan, step: nil)) { $1 })) {
                    holdBack(run, reason: "completion not taken: the audit log could not be written (\(failure))", actor: actor)
                    return
                }
                let previous = run.candidate.other
                let baseline = run.machine.plan.watchMs > 0 ? watchBaseline(of: previous) : WatchBaseline()
                let outcome = switchLock.withLock {
                    changeColorLocked(to: run.candidate, rollback: false, force: true, reason: "release \(run.machine.plan.name) completed",
                                      actor: actor, command: "release", runsVerify: false)
                }
                if case .switched = outcome {
                    logger.log(.info, "release \(run.machine.plan.name) completed: \(run.candidate.rawValue) is the stable color")
                    if run.machine.plan.watchMs > 0 {
                        _ = startWatchOnQueue(from: previous, to: run.candidate, durationMs: run.machine.plan.watchMs, baseline: baseline, actor: actor)
                    }
                }
            }
        }
    }

    /// A step's weight, pins (to the candidate, on every app) and mirror share, made durable and
    /// published as one change. The plan decided; no gate runs here.
    /// After a rollback: the state file forgets the plan and the copies to the candidate stop.
    private func endReleaseInState(stopMirroring: Bool) {
        switchLock.withLock {
            let current = lock.withLock { state }
            var next = current
            next.releasePlan = nil
            if stopMirroring { next.mirrors = next.mirrors.mapValues { _ in 0 } }
            guard next != current else { return }
            next.generation = current.generation + 1
            guard saveStateDurably(next, command: "release ended") == nil else { return }
            lock.withLock {
                state = next
                publishPoliciesLocked()
            }
        }
    }

    /// False when the state file could not be written (nothing changed).
    /// A decided step or completion that was not carried out: the plan pauses at it, saying why
    /// (`release resume` carries the step out again).
    private func holdBack(_ run: ReleaseRun, reason: String, actor: AuditActor) {
        lock.withLock { run.machine.notTaken(reason: reason) }
        logger.log(.error, "release \(run.machine.plan.name) paused: \(reason)")
        appendAudit(AuditRecord(event: "release_paused", reason: reason, actor: actor, details: planDetails(run.machine.plan, step: nil)))
    }

    private func applyStep(_ step: PlanStep, index: Int, plan: PlanConfig, candidate: Color, reason: String, actor: AuditActor) -> Bool {
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
            next.releasePlan = (plan.name, index + 1, Self.planHash(plan))
            next.generation = current.generation + 1
            if let error = saveStateDurably(next, command: reason) {
                logger.log(.error, "\(reason): \(error.description)")
                return false
            }
            lock.withLock {
                state = next
                publishPoliciesLocked()
            }
            return true
        }
    }

    private func planDetails(_ plan: PlanConfig, step: Int?) -> [String: String] {
        var details = ["plan": plan.name, "plan_file": "\(plan.file):\(plan.line)", "plan_hash": Self.planHash(plan)]
        if let step { details["step"] = String(step) }
        return details
    }

    private func releaseDetails() -> [String: String] {
        guard let machine = lock.withLock({ release?.machine }) else { return [:] }
        return machine.stepEvidence().merging(planDetails(machine.plan, step: nil)) { $1 }
    }

    /// A short hash of the plan as configured: the audit says which version of a plan decided.
    static func planHash(_ plan: PlanConfig) -> String {
        let text = "\(plan.name)|\(plan.steps)|\(plan.pauseIf)|\(plan.rollbackIf)|\(plan.minRequests)|\(plan.falseAlarm)|\(plan.watchMs)"
        return String(SHA256.hex(SHA256.hash(Array(text.utf8))).prefix(16))
    }
}
