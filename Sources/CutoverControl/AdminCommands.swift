import CutoverConfig
import CutoverRouting
import CutoverMetrics
import CutoverSystem

/// The admin protocol: one command per line of plain text, one JSON object per line in reply
/// (`"ok": true|false`, an `"error"` string when false). This table is the whole command set;
/// `help` prints it. Each command: parse its words, then `ControlPlane.execute` resolves the
/// target, applies, replies — in that order.
public enum AdminCommand: Equatable, Sendable {
    case help
    case status
    case health
    case switchColor(Color, watchMs: Int? = nil, force: Bool, reason: String?)
    case rollback(force: Bool, reason: String?)
    case drain(app: String, server: String)
    case undrain(app: String, server: String)
    case reload
    case verify(Color)
    case history(Int)
    case stats(WindowedStats.Window)
    /// What `cutover top` and the status page show, with `seconds` of one-a-second history.
    case overview(seconds: Int)
    case reopen
    /// Basis points (1/100 %) for `color`; nil app: every app in one publish.
    case weight(Color, basisPoints: Int, app: String?, force: Bool, reason: String?)
    case pin(app: String, source: PinSource, name: String, values: [String], color: Color, reason: String?)
    case unpin(app: String, source: PinSource?, name: String?, value: String?, reason: String?)
    case pins
    /// Basis points of the stable pool's requests copied to the candidate; nil app: every app.
    case mirror(basisPoints: Int, app: String?, reason: String?)
    case release(ReleaseCommand)
    /// A hot upgrade: start `binary` (nil: the one running), hand it the sockets, drain.
    case upgrade(binary: String?)

    /// Commands that change state are recorded with the caller's identity.
    public var changesState: Bool {
        switch self {
        case .switchColor, .rollback, .drain, .undrain, .reload, .weight, .pin, .unpin, .mirror, .upgrade: return true
        case .release(let command):
            switch command {
            case .status, .report: return false
            default: return true
            }
        case .help, .status, .health, .verify, .history, .stats, .overview, .reopen, .pins: return false
        }
    }
}

public struct AdminCommandSpec: Sendable {
    public let name: String
    public let usage: String
    public let summary: String
    let parse: @Sendable ([Substring]) -> AdminCommand?
}

public enum AdminCommands {
    /// Longest accepted command line; longer input is answered with an error.
    public static let maxLineBytes = 4096
    public static let maxHistory = 1000

    public static let table: [AdminCommandSpec] = [
        AdminCommandSpec(name: "help", usage: "help", summary: "this table") { $0.isEmpty ? .help : nil },
        AdminCommandSpec(name: "status", usage: "status",
                         summary: "active and previous color, generation, readiness, servers, in-flight requests") {
            $0.isEmpty ? .status : nil
        },
        AdminCommandSpec(name: "switch", usage: "switch <blue|green> [watch <duration>] [force] [reason <text…>]",
                         summary: "send all traffic to a color; gated on readiness and verify paths unless forced") { words in
            guard let first = words.first, let color = Color(rawValue: String(first)) else { return nil }
            var rest = words.dropFirst()
            var watch: Int? = nil
            if rest.first == "watch" {
                guard rest.count >= 2, let ms = ConfigParser.parseDuration(rest[rest.startIndex + 1]), ms > 0,
                      ms <= ConfigParser.maxDurationMs else { return nil }
                watch = ms
                rest = rest.dropFirst(2)
            }
            guard let (force, reason) = forceAndReason(rest) else { return nil }
            return .switchColor(color, watchMs: watch, force: force, reason: reason)
        },
        AdminCommandSpec(name: "rollback", usage: "rollback [force] [reason <text…>]",
                         summary: "back to the previous color; gated on one healthy server per app unless forced") { words in
            guard let (force, reason) = forceAndReason(words[...]) else { return nil }
            return .rollback(force: force, reason: reason)
        },
        AdminCommandSpec(name: "weight", usage: "weight <blue|green> <percent> [app <name>] [force] [reason <text…>]",
                         summary: "the color's share of requests (0-100, two decimals; the other color takes the rest); every app at once unless app is named; raising the candidate is gated unless forced; 100 on every app is a switch") { words in
            guard words.count >= 2, let color = Color(rawValue: String(words[0])),
                  let basisPoints = parsePercent(words[1]) else { return nil }
            var rest = words.dropFirst(2)
            var app: String? = nil
            if rest.first == "app" {
                guard rest.count >= 2 else { return nil }
                app = String(rest[rest.startIndex + 1])
                rest = rest.dropFirst(2)
            }
            guard let (force, reason) = forceAndReason(rest) else { return nil }
            return .weight(color, basisPoints: basisPoints, app: app, force: force, reason: reason)
        },
        AdminCommandSpec(name: "pin", usage: "pin <app|*> header|cookie <name> <value[,value…]> <blue|green> [reason <text…>]",
                         summary: "requests whose header or cookie has one of the values go to the color, whatever the weights") { words in
            guard words.count >= 5, let source = PinSource(rawValue: String(words[1])), PinRule.isToken(words[2]),
                  let color = Color(rawValue: String(words[4])) else { return nil }
            let values = words[3].split(separator: ",", omittingEmptySubsequences: false)
            guard values.allSatisfy(PinRule.isValidValue), Set(values).count == values.count else { return nil }
            guard let (force, reason) = forceAndReason(words.dropFirst(5)), !force else { return nil }
            return .pin(app: String(words[0]), source: source, name: String(words[2]), values: values.map(String.init), color: color, reason: reason)
        },
        AdminCommandSpec(name: "unpin", usage: "unpin <app|*> [header|cookie <name> [<value>]] [reason <text…>]",
                         summary: "remove pins added at run time (all of the app's, one name's, or one value)") { words in
            guard let app = words.first else { return nil }
            var rest = words.dropFirst()
            var source: PinSource? = nil
            var name: String? = nil
            var value: String? = nil
            if let first = rest.first, first != "reason" {
                guard let parsed = PinSource(rawValue: String(first)), rest.count >= 2, PinRule.isToken(rest[rest.startIndex + 1]) else { return nil }
                source = parsed
                name = String(rest[rest.startIndex + 1])
                rest = rest.dropFirst(2)
                if let next = rest.first, next != "reason" {
                    guard PinRule.isValidValue(next) else { return nil }
                    value = String(next)
                    rest = rest.dropFirst()
                }
            }
            guard let (force, reason) = forceAndReason(rest), !force else { return nil }
            return .unpin(app: String(app), source: source, name: name, value: value, reason: reason)
        },
        AdminCommandSpec(name: "mirror", usage: "mirror <percent> [app <name>] [reason <text…>]",
                         summary: "copy that share of the stable color's requests to the candidate and compare the responses (0 = off)") { words in
            guard let first = words.first, let basisPoints = parsePercent(first) else { return nil }
            var rest = words.dropFirst()
            var app: String? = nil
            if rest.first == "app" {
                guard rest.count >= 2 else { return nil }
                app = String(rest[rest.startIndex + 1])
                rest = rest.dropFirst(2)
            }
            guard let (force, reason) = forceAndReason(rest), !force else { return nil }
            return .mirror(basisPoints: basisPoints, app: app, reason: reason)
        },
        AdminCommandSpec(name: "release",
                         usage: "release start <plan> [to <blue|green>] [force] [reason <text…>] | status | report | pause [reason <text…>] | resume | promote [reason <text…>] | abort [reason <text…>]",
                         summary: "run a release plan: waves, holds, and automatic pause or rollback on the evidence") { words in
            guard let verb = words.first else { return nil }
            let rest = words.dropFirst()
            switch verb {
            case "start":
                guard let plan = rest.first else { return nil }
                var more = rest.dropFirst()
                var color: Color? = nil
                if more.first == "to" {
                    guard more.count >= 2, let target = Color(rawValue: String(more[more.startIndex + 1])) else { return nil }
                    color = target
                    more = more.dropFirst(2)
                }
                guard let (force, reason) = forceAndReason(more) else { return nil }
                return .release(.start(plan: String(plan), to: color, force: force, reason: reason))
            case "status": return rest.isEmpty ? .release(.status) : nil
            case "report": return rest.isEmpty ? .release(.report) : nil
            case "resume": return rest.isEmpty ? .release(.resume) : nil
            case "pause", "promote", "abort":
                guard let (force, reason) = forceAndReason(rest), !force else { return nil }
                switch verb {
                case "pause": return .release(.pause(reason: reason))
                case "promote": return .release(.promote(reason: reason))
                default: return .release(.abort(reason: reason))
                }
            default: return nil
            }
        },
        AdminCommandSpec(name: "pins", usage: "pins", summary: "every pin (config and run time), its color and whether a rollback suspended it") {
            $0.isEmpty ? .pins : nil
        },
        AdminCommandSpec(name: "health", usage: "health", summary: "every server's check state in full") {
            $0.isEmpty ? .health : nil
        },
        AdminCommandSpec(name: "drain", usage: "drain <app> <host:port>",
                         summary: "no new requests to a server (operator intent, kept apart from health)") { words in
            words.count == 2 ? .drain(app: String(words[0]), server: String(words[1])) : nil
        },
        AdminCommandSpec(name: "undrain", usage: "undrain <app> <host:port>", summary: "end a drain") { words in
            words.count == 2 ? .undrain(app: String(words[0]), server: String(words[1])) : nil
        },
        AdminCommandSpec(name: "reload", usage: "reload",
                         summary: "re-read the config file and publish it (active color and drains kept)") {
            $0.isEmpty ? .reload : nil
        },
        AdminCommandSpec(name: "verify", usage: "verify <blue|green>",
                         summary: "request the color's verify paths on every up server now") { words in
            guard words.count == 1, let color = Color(rawValue: String(words[0])) else { return nil }
            return .verify(color)
        },
        AdminCommandSpec(name: "stats", usage: "stats [10s|1m|5m|total]",
                         summary: "per app and color: requests, rps, outcomes, 5xx rate, latency percentiles (default 1m)") { words in
            if words.isEmpty { return .stats(.oneMinute) }
            guard words.count == 1, let window = WindowedStats.Window(rawValue: String(words[0])) else { return nil }
            return .stats(window)
        },
        AdminCommandSpec(name: "overview", usage: "overview [seconds]",
                         summary: "everything `cutover top` and the status page show: colors, split, per app and color the last 10 s and a series of the last seconds (default 60, at most 300), servers, the release, the last audit records") { words in
            if words.isEmpty { return .overview(seconds: 60) }
            guard words.count == 1, let seconds = Int(words[0]), (1...StatusHistory.capacity).contains(seconds) else { return nil }
            return .overview(seconds: seconds)
        },
        AdminCommandSpec(name: "upgrade", usage: "upgrade [binary <path>]",
                         summary: "hot upgrade: start the binary (default: the one running, as installed now) with the listening sockets, and when it serves, stop accepting and drain; if it fails to become ready, nothing changes") { words in
            if words.isEmpty { return .upgrade(binary: nil) }
            guard words.count == 2, words[0] == "binary", words[1].hasPrefix("/") else { return nil }
            return .upgrade(binary: String(words[1]))
        },
        AdminCommandSpec(name: "reopen", usage: "reopen", summary: "reopen the access log file (after logrotate moved it)") {
            $0.isEmpty ? .reopen : nil
        },
        AdminCommandSpec(name: "history", usage: "history [n]", summary: "the last n audit records (default 10)") { words in
            if words.isEmpty { return .history(10) }
            guard words.count == 1, let count = Int(words[0]), count > 0, count <= maxHistory else { return nil }
            return .history(count)
        },
    ]

    static func parsePercent(_ text: Substring) -> Int? { ConfigParser.percentBasisPoints(text) }

    /// `[force] [reason <text…>]`
    private static func forceAndReason(_ words: ArraySlice<Substring>) -> (Bool, String?)? {
        var rest = words
        var force = false
        if rest.first == "force" {
            force = true
            rest = rest.dropFirst()
        }
        guard let next = rest.first else { return (force, nil) }
        guard next == "reason", rest.count >= 2 else { return nil }
        return (force, rest.dropFirst().joined(separator: " "))
    }

    public enum ParseError: Error, Equatable {
        case empty
        case unknownCommand(String)
        case usage(String)

        public var message: String {
            switch self {
            case .empty: return "empty command; try 'help'"
            // The name is the caller's bytes: control characters are escaped so the message stays
            // one line in a terminal and a log.
            case .unknownCommand(let name): return "unknown command '\(Escaping.escaped(name, .json))'; try 'help'"
            case .usage(let usage): return "usage: \(usage)"
            }
        }
    }

    public static func parse(_ line: String) -> Result<AdminCommand, ParseError> {
        // Split on scalars, not Characters: a space followed by a combining mark is one Character,
        // and would glue two words together where the line plainly has a blank.
        let words = line.unicodeScalars.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(Substring.init)
        guard let name = words.first else { return .failure(.empty) }
        guard let spec = table.first(where: { $0.name == name.lowercased() }) else {
            return .failure(.unknownCommand(String(name.prefix(64))))
        }
        guard let command = spec.parse(Array(words.dropFirst())) else { return .failure(.usage(spec.usage)) }
        return .success(command)
    }

    public static var helpReply: JSON {
        ["ok": true, "commands": .array(table.map { ["command": .string($0.usage), "summary": .string($0.summary)] })]
    }
}

extension ControlPlane {
    /// Runs one admin command line for `actor` and returns the reply object.
    public func execute(_ line: String, actor: AuditActor) -> JSON {
        switch AdminCommands.parse(line) {
        case .failure(let error):
            return ["ok": false, "error": .string(error.message)]
        case .success(let command):
            return execute(command, actor: actor)
        }
    }

    public func execute(_ command: AdminCommand, actor: AuditActor) -> JSON {
        if command.changesState, awaitingHandover.load(ordering: .acquiring) {
            return ["ok": false, "error": "this process is taking over from the previous one (hot upgrade) and changes nothing yet; retry in a moment"]
        }
        if command.changesState, let successor = handedOverTo.withLock({ $0 }) {
            return ["ok": false, "error": .string("this process handed over to pid \(successor) (hot upgrade) and changes nothing; reconnect to the admin socket")]
        }
        switch command {
        case .upgrade(let binary):
            guard let upgradeHandler else { return ["ok": false, "error": "hot upgrade is for `cutover run` (not the demo or an embedded proxy)"] }
            if binary != nil && actor.uid != 0 && actor.uid != ProcessIdentity.userID {
                // Running a chosen file as the service user (its keys, its audit log) is root's
                // or the service user's call, not every admin_group member's.
                return ["ok": false, "error": "upgrade binary PATH is for root or the proxy's own user; `upgrade` alone starts the installed binary"]
            }
            if let busy = releaseBlockingUpgrade() { return ["ok": false, "error": .string(busy)] }
            return upgradeHandler(binary, actor)
        case .help:
            return AdminCommands.helpReply
        case .status:
            return statusReport()
        case .health:
            return healthReport()
        case .switchColor(let color, let watchMs, let force, let reason):
            let previous = persistentState.active
            let baseline = watchBaseline(of: previous)
            let outcome = changeColor(to: color, rollback: false, force: force, reason: reason, actor: actor)
            var reply = AdminReplies.json(outcome)
            guard case .switched(let done) = outcome else { return reply }
            if let note = pauseReleaseForManualChange("switch", actor: actor), case .object(var pairs) = reply {
                pairs.append(("release", .string(note)))
                reply = .object(pairs)
            }
            let duration = watchMs ?? lock.withLock { config.gate?.watchMs ?? 0 }
            if duration > 0, case .object(var pairs) = reply {
                pairs.append(("watch", startWatch(from: done.from, to: done.to, durationMs: duration, baseline: baseline, actor: actor)))
                reply = .object(pairs)
            }
            return reply
        case .rollback(let force, let reason):
            if lock.withLock({ release?.machine.stepIndex != nil }) {
                return abortRelease(reason: reason ?? "rollback by an operator", actor: actor)
            }
            let current = persistentState
            if current.canaryInProgress || hasPins(to: current.active.other, in: current) && !current.suspendedPins.contains(current.active.other) {
                return AdminReplies.json(rollbackCanary(force: force, reason: reason, actor: actor))
            }
            guard let previous = current.previous else {
                return ["ok": false, "error": .string("no previous color to roll back to (no switch since the last release began; every request is on \(current.active.rawValue))")]
            }
            return AdminReplies.json(changeColor(to: previous, rollback: true, force: force, reason: reason, actor: actor))
        case .drain(let app, let server):
            return AdminReplies.json(setDrained(true, app: app, server: server, actor: actor))
        case .undrain(let app, let server):
            return AdminReplies.json(setDrained(false, app: app, server: server, actor: actor))
        case .reload:
            return AdminReplies.json(reload(actor: actor))
        case .verify(let color):
            let results = runVerify(color)
            let failed = results.filter { !$0.outcome.isSuccess }.count
            let list = results.map(AdminReplies.json)
            if results.isEmpty {
                return ["ok": false, "error": .string("no verify request to run: \(color.rawValue) has no up server with verify paths"),
                        "results": .array(list)]
            }
            if failed > 0 {
                return ["ok": false, "error": .string("\(failed) of \(results.count) verify requests failed"), "results": .array(list)]
            }
            return ["ok": true, "color": .string(color.rawValue), "results": .array(list)]
        case .history(let count):
            guard let audit else { return ["ok": false, "error": "audit_log is off"] }
            do {
                let lines = try audit.tail(count)
                return ["ok": true, "records": .array(lines.map { JSON.parse($0) ?? .string($0) })]
            } catch {
                return ["ok": false, "error": .string("cannot read the audit log: \(error)")]
            }
        case .stats(let window):
            return statsReport(window)
        case .overview(let seconds):
            return overviewReport(seriesSeconds: seconds)
        case .weight(let color, let basisPoints, let app, let force, let reason):
            return noteManualChange("weight", actor: actor,
                                    AdminReplies.json(setWeight(color, basisPoints: basisPoints, app: app, force: force, reason: reason, actor: actor)))
        case .pin(let app, let source, let name, let values, let color, let reason):
            return noteManualChange("pin", actor: actor,
                                    AdminReplies.json(addPin(app: app, source: source, name: name, values: values, color: color, reason: reason, actor: actor)))
        case .unpin(let app, let source, let name, let value, let reason):
            return noteManualChange("unpin", actor: actor,
                                    AdminReplies.json(removePins(app: app, source: source, name: name, value: value, reason: reason, actor: actor)))
        case .pins:
            return pinsReport()
        case .mirror(let basisPoints, let app, let reason):
            return noteManualChange("mirror", actor: actor,
                                    AdminReplies.json(setMirror(basisPoints: basisPoints, app: app, reason: reason, actor: actor)))
        case .release(let command):
            switch command {
            case .start(let plan, let color, let force, let reason):
                return startRelease(plan: plan, to: color, force: force, reason: reason, actor: actor)
            case .status: return releaseStatus()
            case .pause(let reason): return pauseRelease(reason: reason ?? "paused by an operator", actor: actor)
            case .resume: return resumeRelease(actor: actor)
            case .promote(let reason): return promoteRelease(reason: reason, actor: actor)
            case .abort(let reason): return abortRelease(reason: reason, actor: actor)
            case .report: return releaseReport()
            }
        case .reopen:
            guard let link = attachedDataPlane.source else { return ["ok": false, "error": "the data plane is not running"] }
            if let problem = link.reopenAccessLog() { return ["ok": false, "error": .string(problem)] }
            return ["ok": true]
        }
    }
}

/// `release …`: running a plan.
public enum ReleaseCommand: Equatable, Sendable {
    case start(plan: String, to: Color?, force: Bool, reason: String?)
    case status
    case pause(reason: String?)
    case resume
    case promote(reason: String?)
    case abort(reason: String?)
    case report
}

extension ControlPlane {
    /// A routing change by hand that took effect pauses a running release; the reply says so.
    func noteManualChange(_ command: String, actor: AuditActor, _ reply: JSON) -> JSON {
        guard reply["ok"]?.boolValue == true, let note = pauseReleaseForManualChange(command, actor: actor) else { return reply }
        guard case .object(var pairs) = reply else { return reply }
        pairs.append(("release", .string(note)))
        return .object(pairs)
    }
}

/// The admin layer's words for the control plane's typed outcomes: the only place they become
/// JSON.
enum AdminReplies {
    static func json(_ result: VerifyResult) -> JSON {
        ["app": .string(result.app), "server": .string(result.server), "path": .string(result.path),
         "ok": .bool(result.outcome.isSuccess), "result": .string(result.outcome.summary)]
    }

    static func json(_ outcome: SwitchOutcome) -> JSON {
        switch outcome {
        case .switched(let done):
            var reply: [(String, JSON)] = [
                ("ok", true), ("active", .string(done.to.rawValue)), ("previous", .string(done.from.rawValue)),
                ("generation", .int(Int64(done.generation))), ("publish_us", .int(Int64(done.publishMicros))),
                ("forced", .bool(done.forced)), ("verify", .array(done.verify.map(json))),
            ]
            if let auditError = done.auditError { reply.append(("audit_error", .string(auditError))) }
            return .object(reply)
        case .refused(let refusal):
            let message = refusal.byVerify
                ? "\(refusal.command) to \(refusal.target.rawValue) refused: verify requests failed"
                : "\(refusal.command) to \(refusal.target.rawValue) refused: the gate did not pass"
            return ["ok": false, "error": .string(message), "reasons": .array(refusal.reasons.map { .string($0.description) }),
                    "verify": .array(refusal.verify.map(json))]
        case .failed(let message):
            return ["ok": false, "error": .string(message)]
        }
    }

    static func json(_ outcome: RoutingChangeOutcome) -> JSON {
        switch outcome {
        case .changed(let change):
            var reply: [(String, JSON)] = [
                ("ok", true), ("command", .string(change.command)), ("generation", .int(Int64(change.generation))),
                ("forced", .bool(change.forced)),
                ("changes", .array(change.changes.map { ["app": .string($0.app), "change": .string($0.change)] })),
            ]
            if let auditError = change.auditError { reply.append(("audit_error", .string(auditError))) }
            return .object(reply)
        case .unchanged(let message):
            return ["ok": true, "unchanged": .string(message)]
        case .promoted(let outcome):
            return json(outcome)
        case .refused(let refusal):
            return json(SwitchOutcome.refused(refusal))
        case .failed(let message):
            return ["ok": false, "error": .string(message)]
        }
    }

    static func json(_ outcome: DrainOutcome) -> JSON {
        switch outcome {
        case .done(let key, let drained):
            return ["ok": true, "app": .string(key.app), "server": .string(key.server), "drained": .bool(drained)]
        case .refused(let message):
            return ["ok": false, "error": .string(message)]
        }
    }

    static func json(_ outcome: ReloadOutcome) -> JSON {
        switch outcome {
        case .reloaded(let apps, let restartRequired):
            return ["ok": true, "apps": .int(Int64(apps)), "restart_required": .array(restartRequired.map { .string($0) })]
        case .failed(let message):
            return ["ok": false, "error": .string(message)]
        }
    }
}
