import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import Foundation

/// What `weight`, `pin`, `unpin` and a canary's rollback did.
public enum RoutingChangeOutcome: Sendable {
    /// Made durable and published.
    case changed(RoutingChange)
    /// Nothing to do: the routing already was what the command asked for.
    case unchanged(String)
    /// `weight` to 100 % on every app: a switch without verify paths.
    case promoted(SwitchOutcome)
    /// The gate refused; nothing changed.
    case refused(SwitchOutcome.Refused)
    /// Bad input or the state file could not be written; nothing changed.
    case failed(String)
}

public struct RoutingChange: Sendable {
    public var command: String
    public var generation: UInt64
    /// Per app, what changed (`"green 10% → 50%"`, `"pinned header x-tenant pilot-1 → green"`).
    public var changes: [(app: String, change: String)]
    public var forced: Bool
    /// The change happened but its audit record could not be written.
    public var auditError: String?
}

extension ControlPlane {
    // MARK: Policies

    /// How `app` is routed now, from its config (sticky rule, config pins) and the persisted
    /// state (stable color, the candidate's share and salt, run-time pins, suspensions).
    /// Lock held.
    func policy(for app: AppConfig) -> AppPolicy {
        let stable = state.active
        let release = state.releases[app.name]
        let selection: PoolSelection = app.sticky == .none
            ? .spread : .sticky(app.sticky, seed: StickyHash.seed(salt: release?.salt ?? 0, app: app.name))
        let split = TrafficSplit.weighted(stable: PoolID(stable), candidate: PoolID(stable.other),
                                          candidateBasisPoints: release?.candidateBasisPoints ?? 0, selection: selection)
        let pins = (app.pins + (state.pins[app.name] ?? [])).filter { !state.suspendedPins.contains($0.color) }
        var mirror = app.mirror
        if let share = state.mirrors[app.name] { mirror.basisPoints = share }
        return AppPolicy(split: split, stable: PoolID(stable), pins: pins, mirror: mirror)
    }

    /// Publishes every app's policy from the current state. Lock held.
    func publishPoliciesLocked() {
        let policies = Dictionary(config.apps.map { ($0.name, policy(for: $0)) }, uniquingKeysWith: { first, _ in first })
        publisher.update { $0.with(policies: { name, current in policies[name] ?? current }) }
    }

    /// Makes `next` durable before a change takes effect. A save whose new file is in place but
    /// whose folder could not be synced counts as made (refusing then would let a restart apply
    /// the change silently); any other failure means nothing changed.
    func saveStateDurably(_ next: PersistentState, command: String) -> StateFileError? {
        if let successor = handedOverTo.withLock({ $0 }) {
            return StateFileError(path: config.stateFile ?? "state", message: "\(command) refused: this process handed over to pid \(successor) (hot upgrade)")
        }
        if awaitingHandover.load(ordering: .acquiring) {
            return StateFileError(path: config.stateFile ?? "state", message: "\(command) refused: the handover from the previous process is not confirmed yet")
        }
        guard let path = config.stateFile else { return nil }
        var next = next
        next.auditAnchor = audit?.lastRecordHash
        do {
            try StateFile.save(next, path: path)
        } catch let error where error.newStateInPlace {
            logger.log(.warning, "\(command): \(error.description)")
        } catch {
            logger.log(.error, "\(command) aborted: \(error.description)")
            return error
        }
        return nil
    }

    /// Audit → state file durable → publish, for a routing change decided under `switchLock`.
    /// The record goes first: a crash after it leaves a record of a change that may not have
    /// taken effect (start-up reconciles it, `recovery`), never a change without its record.
    /// Returns the audit error (the change happened) or the state-file error (it did not).
    func commitRoutingChange(_ next: PersistentState, command: String, record: AuditRecord) -> Result<String?, StateFileError> {
        let auditError = appendAudit(record)
        if let error = saveStateDurably(next, command: command) {
            recordNotApplied(record, because: error.description)
            return .failure(error)
        }
        lock.withLock {
            state = next
            publishPoliciesLocked()
        }
        return .success(auditError)
    }

    /// The change a record announced did not happen (its state file could not be written):
    /// said in the log at once, so the record does not stand alone.
    func recordNotApplied(_ record: AuditRecord, because reason: String) {
        guard audit != nil else { return }
        let current = persistentState
        appendAudit(AuditRecord(event: "not_applied", reason: "the \(record.event) recorded just before did not take effect: \(reason)",
                                actor: record.actor, generation: current.generation,
                                details: ["event": record.event, "generation": record.generation.map(String.init) ?? ""]))
    }

    /// At start: the audit log's last generation against the state file's. A record whose
    /// change never became durable (the process stopped between the two writes), or a change
    /// durable without its record (an older version, a log that could not be written), gets a
    /// `recovery` record naming the gap, so the log tells what the proxy runs.
    public func reconcileAudit() {
        guard let audit else { return }
        let records = ((try? audit.tail(200)) ?? []).compactMap { JSON.parse($0) }
        // Records of changes (and earlier recoveries, which settle a gap): start, stop and
        // refusals carry the generation they saw, not one they made.
        let notChanges: Set<String> = ["start", "stop", "refused", "not_applied", "reload", "reload_failed"]
        guard let last = records.last(where: { $0["generation"]?.intValue != nil && !notChanges.contains($0["event"]?.stringValue ?? "") }),
              let recorded = last["generation"]?.intValue else { return }
        // A change that was recorded and then reported as not applied is settled.
        if let index = records.lastIndex(where: { $0 == last }), records[(index + 1)...].contains(where: { $0["event"]?.stringValue == "not_applied" }) { return }
        let current = persistentState
        let running = Int64(current.generation)
        let what = "active \(current.active.rawValue), generation \(current.generation)"
        if recorded > running {
            let event = last["event"]?.stringValue ?? "change"
            let message = "the \(event) recorded as generation \(recorded) (\(last["time"]?.stringValue ?? "?")) did not take effect: the process stopped before its state file was written; running \(what)"
            logger.log(.warning, "audit: \(message)")
            appendAudit(AuditRecord(event: "recovery", to: current.active, reason: message, generation: current.generation,
                                    details: ["recorded_generation": String(recorded), "state_generation": String(running)]))
        } else if recorded < running,
                  let index = records.lastIndex(where: { $0 == last }),
                  !records[(index + 1)...].contains(where: { ($0["event"]?.stringValue ?? "").hasPrefix("release_") || $0["event"]?.stringValue == "auto_rollback" }) {
            // (A release plan's steps move the generation with records of their own, written
            // after the step: those are no gap.)
            let message = "generation \(recorded + 1)\(running > recorded + 1 ? "…\(running)" : "") took effect without an audit record (the process stopped before writing it, or the log could not be written); running \(what)"
            logger.log(.warning, "audit: \(message)")
            appendAudit(AuditRecord(event: "recovery", to: current.active, reason: message, generation: current.generation,
                                    details: ["recorded_generation": String(recorded), "state_generation": String(running)]))
        }
    }

    // MARK: weight

    /// `weight <color> <percent> [app NAME] [force]`: the share of `color` in basis points.
    /// The other color takes the rest. Raising the candidate's share is gated (readiness and
    /// the traffic thresholds, on the candidate's own canary traffic) unless forced; lowering
    /// it never is. Every app at 100 % is a promotion: the switch, without verify paths.
    func setWeight(_ color: Color, basisPoints: Int, app: String?, force: Bool, reason: String?, actor: AuditActor) -> RoutingChangeOutcome {
        switchLock.withLock {
            let (current, appNames) = lock.withLock { (state, config.apps.map(\.name)) }
            if let app, !appNames.contains(app) { return .failed("unknown app '\(app)'") }
            let stable = current.active
            let candidate = stable.other
            let share = color == candidate ? basisPoints : TrafficSplit.basisPoints - basisPoints
            let targets = app.map { [$0] } ?? appNames
            if app == nil && share == TrafficSplit.basisPoints {
                return .promoted(changeColorLocked(to: candidate, rollback: false, force: force, reason: reason, actor: actor,
                                                   command: "weight", runsVerify: false))
            }
            let changes = targets.compactMap { name -> (app: String, change: String)? in
                let before = current.candidateBasisPoints(name)
                guard before != share else { return nil }
                return (name, "\(candidate.rawValue) \(Self.percentText(before)) → \(Self.percentText(share))")
            }
            if changes.isEmpty {
                return .unchanged("\(candidate.rawValue) already takes \(Self.percentText(share)) of \(app.map { "app \($0)" } ?? "every app")")
            }
            let raising = targets.contains { share > current.candidateBasisPoints($0) }
            var reasons: [GateReason] = []
            if raising && !force {
                reasons = lock.withLock { notReady(candidate, at: clock()) }.map { .notReady($0) }
                if reasons.isEmpty {
                    reasons = gateThresholdProblems(target: candidate, active: stable).map { .threshold($0) }
                }
            }
            if !reasons.isEmpty {
                countSwitch("weight", "refused")
                appendAudit(AuditRecord(event: "refused", from: stable, to: candidate, reason: reason, forced: force, actor: actor,
                                        generation: current.generation,
                                        details: ["gate": reasons.map(\.description).joined(separator: "; "), "command": "weight",
                                                  "weight": "\(candidate.rawValue) \(Self.percentText(share))"]))
                return .refused(.init(command: "weight", target: candidate, reasons: reasons, verify: []))
            }
            var next = current
            for name in targets {
                // Back to 0 keeps the salt: a paused canary resumes with the same users.
                if share == 0 && current.releases[name] == nil { continue }
                let salt = current.releases[name]?.salt ?? UInt64.random(in: 1...UInt64.max)
                next.releases[name] = AppRelease(candidateBasisPoints: share, salt: salt)
            }
            if share > 0 {
                next.suspendedPins.remove(candidate)
                // The candidate's slot now holds the next release: a rollback must never return
                // to it (what it held before is gone).
                if next.previous == candidate { next.previous = nil }
            }
            next.generation = current.generation + 1
            let record = AuditRecord(event: "weight", from: stable, to: candidate, reason: reason, forced: force, actor: actor,
                                     generation: next.generation,
                                     details: ["weight": changes.map { "\($0.app): \($0.change)" }.joined(separator: "; ")])
            switch commitRoutingChange(next, command: "weight", record: record) {
            case .failure(let error):
                countSwitch("weight", "failed")
                return .failed("weight aborted, the state file could not be written: \(error.description)")
            case .success(let auditError):
                countSwitch("weight", "ok")
                logger.log(.info, "weight: \(changes.map { "\($0.app) \($0.change)" }.joined(separator: ", ")) (generation \(next.generation))")
                return .changed(RoutingChange(command: "weight", generation: next.generation, changes: changes, forced: force,
                                              auditError: auditError))
            }
        }
    }

    /// `10%`, `12.5%`, `0.25%` for basis points.
    static func percentText(_ basisPoints: Int) -> String {
        let whole = basisPoints / 100
        let fraction = basisPoints % 100
        if fraction == 0 { return "\(whole)%" }
        return fraction % 10 == 0 ? "\(whole).\(fraction / 10)%" : "\(whole).\(fraction < 10 ? "0" : "")\(fraction)%"
    }

    // MARK: mirror

    /// `mirror <percent> [app NAME]`: the share of the stable color's requests copied to the
    /// candidate. Not gated: a copy never reaches a user.
    func setMirror(basisPoints: Int, app: String?, reason: String?, actor: AuditActor) -> RoutingChangeOutcome {
        switchLock.withLock {
            let (current, apps) = lock.withLock { (state, config.apps) }
            if let app, !apps.contains(where: { $0.name == app }) { return .failed("unknown app '\(app)'") }
            var next = current
            var changes: [(app: String, change: String)] = []
            for target in apps where app == nil || target.name == app {
                let before = current.mirrors[target.name] ?? target.mirror.basisPoints
                guard before != basisPoints else { continue }
                next.mirrors[target.name] = basisPoints == target.mirror.basisPoints ? nil : basisPoints
                if basisPoints > 0 && next.previous == current.active.other { next.previous = nil }
                changes.append((target.name, "mirror \(Self.percentText(before)) → \(Self.percentText(basisPoints))"))
            }
            if changes.isEmpty { return .unchanged("the mirror share already is \(Self.percentText(basisPoints))") }
            next.generation = current.generation + 1
            let record = AuditRecord(event: "mirror", from: current.active, to: current.active.other, reason: reason, actor: actor,
                                     generation: next.generation,
                                     details: ["mirror": changes.map { "\($0.app): \($0.change)" }.joined(separator: "; ")])
            switch commitRoutingChange(next, command: "mirror", record: record) {
            case .failure(let error):
                return .failed("mirror aborted, the state file could not be written: \(error.description)")
            case .success(let auditError):
                logger.log(.info, "mirror: \(changes.map { "\($0.app) \($0.change)" }.joined(separator: ", "))")
                return .changed(RoutingChange(command: "mirror", generation: next.generation, changes: changes, forced: false,
                                              auditError: auditError))
            }
        }
    }

    // MARK: Rollback of a canary

    /// `rollback` while a candidate takes a share: every app back to the stable color at once,
    /// pins to the candidate suspended. Refused only when some app's stable pool has no server
    /// it can route to (all down or drained), unless forced: a rollback must not wait for checks.
    func rollbackCanary(force: Bool, reason: String?, actor: AuditActor) -> RoutingChangeOutcome {
        switchLock.withLock {
            let (current, problems) = lock.withLock { (state, force ? [] : canaryRollbackNotReady(state.active, at: clock())) }
            let stable = current.active
            let candidate = stable.other
            guard current.canaryInProgress || hasPins(to: candidate, in: current) else {
                return .unchanged("no canary is under way")
            }
            if !problems.isEmpty {
                let reasons = problems.map { GateReason.notReady($0) }
                countSwitch("rollback", "refused")
                appendAudit(AuditRecord(event: "refused", from: candidate, to: stable, reason: reason, forced: force, actor: actor,
                                        generation: current.generation,
                                        details: ["gate": reasons.map(\.description).joined(separator: "; "), "command": "rollback"]))
                return .refused(.init(command: "rollback", target: stable, reasons: reasons, verify: []))
            }
            var changes = current.releases.filter { $0.value.candidateBasisPoints > 0 }.sorted { $0.key < $1.key }.map {
                (app: $0.key, change: "\(candidate.rawValue) \(Self.percentText($0.value.candidateBasisPoints)) → 0%")
            }
            if changes.isEmpty { changes = [(app: "*", change: "pins to \(candidate.rawValue) suspended")] }
            var next = current
            next.releases = [:]
            next.releasePlan = nil  // a rollback ends any release
            if next.previous == candidate { next.previous = nil }
            next.generation = current.generation + 1
            var details = ["weight": changes.map { "\($0.app): \($0.change)" }.joined(separator: "; ")]
            if hasPins(to: candidate, in: current) {
                next.suspendedPins.insert(candidate)
                details["pins"] = "pins to \(candidate.rawValue) suspended"
            }
            let record = AuditRecord(event: "rollback", from: candidate, to: stable, reason: reason, forced: force, actor: actor,
                                     generation: next.generation, details: details)
            switch commitRoutingChange(next, command: "rollback", record: record) {
            case .failure(let error):
                countSwitch("rollback", "failed")
                return .failed("rollback aborted, the state file could not be written: \(error.description)")
            case .success(let auditError):
                countSwitch("rollback", "ok")
                logger.log(.info, "rollback: canary of \(candidate.rawValue) ended, every app on \(stable.rawValue) (generation \(next.generation))")
                return .changed(RoutingChange(command: "rollback", generation: next.generation, changes: changes, forced: force,
                                              auditError: auditError))
            }
        }
    }

    // MARK: Pins

    /// Some pin, config or run time, sends requests to `color`.
    func hasPins(to color: Color, in state: PersistentState) -> Bool {
        let configPins = lock.withLock { config.apps.flatMap(\.pins) }
        return (configPins + state.pins.values.joined()).contains { $0.color == color }
    }

    /// `pin <app|*> header|cookie NAME VALUE[,VALUE…] <color>`.
    func addPin(app: String, source: PinSource, name: String, values: [String], color: Color, reason: String?,
                actor: AuditActor) -> RoutingChangeOutcome {
        switchLock.withLock {
            let (current, apps) = lock.withLock { (state, config.apps) }
            let targets = app == "*" ? apps : apps.filter { $0.name == app }
            if targets.isEmpty { return .failed("unknown app '\(app)'") }
            let key = source == .header ? name.lowercased() : name
            var next = current
            var changes: [(app: String, change: String)] = []
            for target in targets {
                var runtime = current.pins[target.name] ?? []
                let all = target.pins + runtime
                var added: [String] = []
                for value in values {
                    if let holder = all.first(where: { $0.source == source && $0.name == key && $0.values.contains(value) }) {
                        if holder.color == color { continue }
                        let origin = holder.line > 0 ? "by the config (line \(holder.line))" : "at run time"
                        return .failed("app \(target.name): \(source.rawValue) \(key) value '\(value)' is pinned to \(holder.color.rawValue) \(origin); unpin it first")
                    }
                    added.append(value)
                }
                guard !added.isEmpty else { continue }
                let total = all.reduce(0) { $0 + $1.values.count } + added.count
                if total > PinRule.maxValuesPerApp {
                    return .failed("app \(target.name): more than \(PinRule.maxValuesPerApp) pinned values")
                }
                if let index = runtime.firstIndex(where: { $0.source == source && $0.name == key && $0.color == color }) {
                    runtime[index].values += added
                } else {
                    runtime.append(PinRule(source: source, name: key, values: added, color: color))
                }
                next.pins[target.name] = runtime
                let suspended = current.suspendedPins.contains(color)
                    ? " (suspended: pins to \(color.rawValue) resume with a weight above 0 or a switch)" : ""
                changes.append((target.name, "pinned \(source.rawValue) \(key) \(added.joined(separator: ",")) → \(color.rawValue)\(suspended)"))
                if color == current.active.other && !current.suspendedPins.contains(color) && next.previous == color {
                    next.previous = nil  // a pilot on the candidate: the candidate's slot holds the new release
                }
            }
            if changes.isEmpty { return .unchanged("every value is already pinned to \(color.rawValue)") }
            return commitPins(next, current: current, command: "pin", changes: changes, reason: reason, actor: actor)
        }
    }

    /// `unpin <app|*> [header|cookie NAME [VALUE]]`: removes run-time pins. Config pins are
    /// the config's: removing one is a config change and a reload.
    func removePins(app: String, source: PinSource?, name: String?, value: String?, reason: String?,
                    actor: AuditActor) -> RoutingChangeOutcome {
        switchLock.withLock {
            let (current, apps) = lock.withLock { (state, config.apps) }
            let targets = app == "*" ? apps : apps.filter { $0.name == app }
            if targets.isEmpty { return .failed("unknown app '\(app)'") }
            let key = name.map { source == .header ? $0.lowercased() : $0 }
            func matches(_ pin: PinRule) -> Bool {
                (source == nil || pin.source == source) && (key == nil || pin.name == key) && (value == nil || pin.values.contains(value!))
            }
            var next = current
            var changes: [(app: String, change: String)] = []
            var configOnly: [String] = []
            for target in targets {
                var runtime = current.pins[target.name] ?? []
                var removed: [String] = []
                for index in runtime.indices.reversed() where matches(runtime[index]) {
                    let pin = runtime[index]
                    if let value {
                        runtime[index].values.removeAll { $0 == value }
                        removed.append("\(pin.source.rawValue) \(pin.name) \(value)")
                        if runtime[index].values.isEmpty { runtime.remove(at: index) }
                    } else {
                        removed.append("\(pin.source.rawValue) \(pin.name) \(pin.values.joined(separator: ",")) → \(pin.color.rawValue)")
                        runtime.remove(at: index)
                    }
                }
                next.pins[target.name] = runtime.isEmpty ? nil : runtime
                if !removed.isEmpty { changes.append((target.name, "unpinned " + removed.reversed().joined(separator: "; "))) }
                for pin in target.pins where matches(pin) { configOnly.append("app \(target.name) line \(pin.line)") }
            }
            if changes.isEmpty {
                if !configOnly.isEmpty {
                    return .failed("only config pins match (\(configOnly.joined(separator: ", "))); remove them from the config file and reload")
                }
                return .failed("no pin matches")
            }
            return commitPins(next, current: current, command: "unpin", changes: changes, reason: reason, actor: actor)
        }
    }

    private func commitPins(_ proposed: PersistentState, current: PersistentState, command: String,
                            changes: [(app: String, change: String)], reason: String?, actor: AuditActor) -> RoutingChangeOutcome {
        var next = proposed
        next.generation = current.generation + 1
        let record = AuditRecord(event: command, reason: reason, actor: actor, generation: next.generation,
                                 details: ["pins": changes.map { "\($0.app): \($0.change)" }.joined(separator: "; ")])
        switch commitRoutingChange(next, command: command, record: record) {
        case .failure(let error):
            return .failed("\(command) aborted, the state file could not be written: \(error.description)")
        case .success(let auditError):
            logger.log(.info, "\(command): \(changes.map { "\($0.app) \($0.change)" }.joined(separator: ", "))")
            return .changed(RoutingChange(command: command, generation: next.generation, changes: changes, forced: false,
                                          auditError: auditError))
        }
    }

    /// `pins`: every pin, config and run time, with whether it is in force.
    func pinsReport() -> JSON {
        lock.withLock {
            var list: [JSON] = []
            for app in config.apps {
                for (pin, origin) in app.pins.map({ ($0, "config line \($0.line)") }) + (state.pins[app.name] ?? []).map({ ($0, "run time") }) {
                    list.append(["app": .string(app.name), "source": .string(pin.source.rawValue), "name": .string(pin.name),
                                 "color": .string(pin.color.rawValue), "values": .array(pin.values.map { .string($0) }),
                                 "origin": .string(origin), "suspended": .bool(state.suspendedPins.contains(pin.color))])
                }
            }
            return ["ok": true, "pins": .array(list),
                    "suspended_colors": .array(Color.allCases.filter { state.suspendedPins.contains($0) }.map { .string($0.rawValue) })]
        }
    }

    /// Each app's split, sticky mode, salt and pin count, for `status`. Lock held.
    func releaseReport(_ app: AppConfig) -> JSON {
        let stable = state.active
        let release = state.releases[app.name]
        let share = release?.candidateBasisPoints ?? 0
        let pins = app.pins + (state.pins[app.name] ?? [])
        return ["stable": .string(stable.rawValue), "candidate": .string(stable.other.rawValue),
                "weights": .object([(stable.rawValue, .double(Double(TrafficSplit.basisPoints - share) / 100)),
                                    (stable.other.rawValue, .double(Double(share) / 100))]),
                "sticky": .string(app.sticky.description),
                "salt": .string(release.map { StateFile.hex16($0.salt) }),
                "mirror": .double(Double(state.mirrors[app.name] ?? app.mirror.basisPoints) / 100),
                "mirror_noise": .bool(app.mirror.noise),
                "pins": .int(Int64(pins.reduce(0) { $0 + $1.values.count })),
                "pins_suspended": .int(Int64(pins.filter { state.suspendedPins.contains($0.color) }.reduce(0) { $0 + $1.values.count }))]
    }
}
