import CutoverConfig
import CutoverControl
import CutoverSystem
import CutoverViews
import Foundation

/// Sends one admin command over the Unix socket and prints the reply for a terminal (or raw
/// with `--json`). Exit codes: 0 ok, 1 refused or failed, 3 cannot reach the socket.
struct AdminClient {
    let socketPath: String
    let json: Bool

    func run(_ line: String) -> Int32 {
        let text: String
        switch AdminLine.exchange(line, socket: socketPath) {
        case .success(let reply):
            text = reply
        case .failure(.unreachable(let reason)):
            return unreachable(reason)
        case .failure(.noReply(let reason)):
            // Connected: the command may have been carried out. Say so rather than "unreachable".
            FileHandle.standardError.write(Data("cutover: \(reason); the outcome is unknown: check `cutover status`\n".utf8))
            return 1
        }
        guard let object = JSON.parse(text) else {
            print(text)
            return 1
        }
        if object["busy"]?.boolValue == true {
            // No slot: nothing was run, so nothing is unknown. Exit 3 like an unreachable socket.
            FileHandle.standardError.write(Data("cutover: busy: \(object["error"]?.stringValue ?? "no admin slot free"); nothing was run\n".utf8))
            return 3
        }
        let ok = object["ok"]?.boolValue ?? false
        if json {
            print(text)
        } else {
            print(Pretty.render(command: line.split(separator: " ").first.map(String.init) ?? "", object))
        }
        return ok ? 0 : 1
    }

    private func unreachable(_ reason: String) -> Int32 {
        FileHandle.standardError.write(Data("cutover: cannot reach the admin socket \(socketPath): \(reason)\n".utf8))
        return 3
    }
}

/// Terminal rendering of admin replies.
enum Pretty {
    static func render(command: String, _ reply: JSON) -> String {
        guard reply["ok"]?.boolValue == true else {
            var lines = ["error: \(reply["error"]?.stringValue ?? "failed")"]
            for reason in reply["reasons"]?.arrayValue ?? [] { lines.append("  - \(reason.stringValue ?? "")") }
            lines += verifyLines(reply["verify"] ?? reply["results"])
            return lines.joined(separator: "\n")
        }
        switch command {
        case "status": return status(reply)
        case "upgrade":
            return "upgraded: pid \(text(reply["old_pid"])) (\(text(reply["old_version"]))) → pid \(text(reply["new_pid"])) (\(text(reply["new_version"]))), \(text(reply["binary"])); the old process drains"
        case "overview":
            guard let overview = try? Overview(reply) else { return reply.serialized() }
            return TopFrame.render(overview, .init(width: 132, height: 1_000, keys: false)).joined(separator: "\n")
        case "weight", "pin", "unpin", "mirror",
             // A rollback of a canary answers with its changes; a rollback of a switch, below.
             "rollback" where reply["changes"] != nil || reply["unchanged"] != nil:
            if let unchanged = reply["unchanged"]?.stringValue { return "unchanged: \(unchanged)" }
            var lines = ["\(command): generation \(text(reply["generation"]))\(reply["forced"]?.boolValue == true ? ", forced" : "")"]
            for change in reply["changes"]?.arrayValue ?? [] { lines.append("  app \(text(change["app"])): \(text(change["change"]))") }
            if let auditError = reply["audit_error"]?.stringValue { lines.append("  WARNING: no audit record: \(auditError)") }
            return lines.joined(separator: "\n")
        case "switch", "rollback":
            var lines = ["active: \(text(reply["active"])) (previous \(text(reply["previous"])), generation \(text(reply["generation"])), "
                         + "published in \(text(reply["publish_us"])) µs\(reply["forced"]?.boolValue == true ? ", forced" : ""))"]
            lines += verifyLines(reply["verify"])
            return lines.joined(separator: "\n")
        case "release" where reply["events"] != nil:
            var lines = ["release \(text(reply["plan"])) (plan hash \(text(reply["plan_hash"]))), started \(text(reply["started"]))"
                         + (reply["reason"]?.stringValue.map { ": \($0)" } ?? "")]
            lines.append("time                      event              step  candidate req / errors / p95    stable req / errors / p95")
            for event in reply["events"]?.arrayValue ?? [] {
                func arm(_ side: String) -> String {
                    guard let figures = event[side], figures["requests"]?.stringValue != nil else { return "-" }
                    let p95 = figures["p95_us"]?.stringValue.flatMap { Int64($0) }.map { Pretty.duration($0) } ?? "-"
                    return "\(text(figures["requests"])) / \(text(figures["error_rate"])) / \(p95)"
                }
                var line = "\(text(event["time"]).padding(toLength: 26, withPad: " ", startingAt: 0))"
                line += "\(text(event["event"]).padding(toLength: 19, withPad: " ", startingAt: 0))"
                line += "\(text(event["step"]).padding(toLength: 6, withPad: " ", startingAt: 0))"
                line += "\(arm("candidate").padding(toLength: 32, withPad: " ", startingAt: 0))\(arm("stable"))"
                lines.append(line)
                if let reason = event["reason"]?.stringValue { lines.append("    \(reason)") }
            }
            return lines.joined(separator: "\n")
        case "release":
            guard let release = reply["release"], case .object = release else { return "no release is running" }
            var lines = ["release \(text(release["plan"])) to \(text(release["candidate"])): \(text(release["phase"])), "
                         + "step \(text(release["step"])) of \(text(release["steps"])), started \(text(release["started"]))",
                         "waiting for: \(text(release["waiting_for"]))"]
            if case .object(let evidence) = release["evidence"] ?? .null {
                lines.append("evidence: " + evidence.map { "\($0.0) \(text($0.1))" }.joined(separator: ", "))
            }
            for condition in release["conditions"]?.arrayValue ?? [] {
                lines.append("  \(text(condition["kind"])) \(text(condition["condition"])): \(text(condition["standing"]))")
            }
            if let note = reply["release"]?.stringValue { lines.append(note) }
            return lines.joined(separator: "\n")
        case "pins":
            let pins = reply["pins"]?.arrayValue ?? []
            if pins.isEmpty { return "no pins" }
            return pins.map { pin in
                let values = (pin["values"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: ",")
                return "app \(text(pin["app"])): \(text(pin["source"])) \(text(pin["name"])) \(values) → \(text(pin["color"]))"
                    + " (\(text(pin["origin"])))\(pin["suspended"]?.boolValue == true ? " SUSPENDED" : "")"
            }.joined(separator: "\n")
        case "verify": return (["verify \(text(reply["color"])): all passed"] + verifyLines(reply["results"])).joined(separator: "\n")
        case "health": return health(reply)
        case "stats": return stats(reply)
        case "help":
            return (reply["commands"]?.arrayValue ?? []).map { entry in
                "\(text(entry["command"]).padding(toLength: 46, withPad: " ", startingAt: 0)) \(text(entry["summary"]))"
            }.joined(separator: "\n")
        case "history":
            return (reply["records"]?.arrayValue ?? []).map { record in
                var line = "\(text(record["time"]))  \(text(record["event"]).padding(toLength: 13, withPad: " ", startingAt: 0))"
                if let from = record["from"]?.stringValue { line += " from \(from)" }
                if let to = record["to"]?.stringValue { line += " to \(to)" }
                if record["forced"]?.boolValue == true { line += " (forced)" }
                if let actor = record["actor"], let user = actor["user"]?.stringValue { line += " by \(user) pid \(text(actor["pid"]))" }
                if let reason = record["reason"]?.stringValue { line += ": \(reason)" }
                return line
            }.joined(separator: "\n")
        default:
            return keyValues(reply)
        }
    }

    private static func status(_ reply: JSON) -> String {
        var lines = ["active: \(text(reply["active"]))   previous: \(text(reply["previous"]))   generation: \(text(reply["generation"]))"]
        if let last = reply["last_switch"], case .object = last {
            var line = "last switch: \(text(last["at"])) \(text(last["from"])) → \(text(last["to"]))"
            line += "; \(text(last["from"])) in flight: \(text(last["old_color_inflight"]))"
            line += last["drained_at"]?.stringValue.map { ", drained at \($0)" } ?? ", not drained yet"
            lines.append(line)
        }
        for color in Color.allCases {
            guard let entry = reply["colors"]?[color.rawValue] else { continue }
            var line = "\(color.rawValue.padding(toLength: 6, withPad: " ", startingAt: 0)) "
            line += entry["ready"]?.boolValue == true ? "ready since \(text(entry["ready_since"]))" : "NOT READY"
            line += "   in flight \(text(entry["inflight"]))   upstream connections \(text(entry["upstream_connections"]))"
            lines.append(line)
            for reason in entry["reasons"]?.arrayValue ?? [] { lines.append("         - \(reason.stringValue ?? "")") }
        }
        for app in reply["apps"]?.arrayValue ?? [] {
            let hosts = (app["hosts"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: " ")
            lines.append("app \(text(app["name"])) (host \(hosts)\(app["path"]?.stringValue.map { ", path \($0)" } ?? ""))")
            if let release = app["release"], let weights = release["weights"] {
                let stable = text(release["stable"])
                let candidate = text(release["candidate"])
                var line = "  split: \(stable) \(text(weights[stable]))% / \(candidate) \(text(weights[candidate]))%   sticky: \(text(release["sticky"]))"
                if let salt = release["salt"]?.stringValue { line += "   salt: \(salt)" }
                line += "   pins: \(text(release["pins"]))"
                if let suspended = release["pins_suspended"]?.intValue, suspended > 0 { line += " (\(suspended) suspended)" }
                lines.append(line)
            }
            for color in Color.allCases {
                for server in app[color.rawValue]?.arrayValue ?? [] {
                    var line = "  \(color.rawValue.padding(toLength: 6, withPad: " ", startingAt: 0)) \(text(server["server"]).padding(toLength: 22, withPad: " ", startingAt: 0)) "
                    line += "\(text(server["health"]).padding(toLength: 8, withPad: " ", startingAt: 0)) since \(text(server["since"]))"
                    if server["drained"]?.boolValue == true { line += "  DRAINED" }
                    line += "  last: \(text(server["last_result"]))"
                    lines.append(line)
                }
            }
        }
        return lines.joined(separator: "\n")
    }

    /// One line per app and color, aligned for a terminal.
    private static func stats(_ reply: JSON) -> String {
        let headers = ["app", "color", "requests", "rps", "2xx", "3xx", "4xx", "5xx", "upstream err", "5xx rate",
                       "p50", "p90", "p95", "p99", "p99.9", "max"]
        var rows: [[String]] = []
        for row in reply["apps"]?.arrayValue ?? [] {
            let errors = (row["upstream_errors"].flatMap { value -> [JSON]? in
                guard case .object(let pairs) = value else { return nil }
                return pairs.map(\.1)
            } ?? []).reduce(Int64(0)) { $0 + ($1.intValue ?? 0) }
            let latency = row["latency_us"]
            var cells = [text(row["app"]), text(row["color"]) + (row["active"]?.boolValue == true ? " *" : ""),
                         text(row["requests"]), String(format: "%.1f", row["rps"]?.doubleValue ?? 0)]
            cells += ["2xx", "3xx", "4xx", "5xx"].map { text(row[$0]) }
            cells.append(String(errors))
            cells.append(String(format: "%.2f%%", (row["5xx_rate"]?.doubleValue ?? 0) * 100))
            let served = (row["requests"]?.intValue ?? 0) > 0
            cells += ["p50", "p90", "p95", "p99", "p99.9", "max"].map { served ? duration(latency?[$0]?.intValue ?? 0) : "-" }
            rows.append(cells)
        }
        let widths = headers.indices.map { column in ([headers[column]] + rows.map { $0[column] }).map(\.count).max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                column < 2 ? cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                           : String(repeating: " ", count: widths[column] - cell.count) + cell
            }.joined(separator: "  ")
        }
        var lines = ["window \(text(reply["window"])) (\(String(format: "%.1f", reply["span_s"]?.doubleValue ?? 0)) s), "
                     + "active \(text(reply["active"])) (*); latency from the first request byte to the last response byte"]
        lines.append(line(headers))
        lines += rows.map(line)
        if case .object(let unrouted)? = reply["unrouted"], !unrouted.isEmpty {
            lines.append("unrouted: " + unrouted.map { "\($0.0) × \(text($0.1))" }.joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }

    /// Microseconds for a terminal: µs below 1 ms, then ms, then s.
    static func duration(_ micros: Int64) -> String {
        if micros < 1_000 { return "\(micros)µs" }
        if micros < 1_000_000 { return String(format: "%.2fms", Double(micros) / 1_000) }
        return String(format: "%.2fs", Double(micros) / 1_000_000)
    }

    private static func health(_ reply: JSON) -> String {
        var lines = ["interval \(text(reply["interval_ms"])) ms, timeout \(text(reply["timeout_ms"])) ms, rise \(text(reply["rise"])), fall \(text(reply["fall"]))"]
        for server in reply["servers"]?.arrayValue ?? [] {
            lines.append("\(text(server["app"])) \(text(server["color"])) \(text(server["server"])): \(text(server["health"])) since \(text(server["since"]))"
                         + ", last check \(text(server["last_check"])): \(text(server["last_result"]))"
                         + " (\(text(server["consecutive_successes"])) ok / \(text(server["consecutive_failures"])) failed in a row)"
                         + (server["drained"]?.boolValue == true ? ", drained" : ""))
        }
        return lines.joined(separator: "\n")
    }

    private static func verifyLines(_ results: JSON?) -> [String] {
        (results?.arrayValue ?? []).map { result in
            "  \(result["ok"]?.boolValue == true ? "ok  " : "FAIL") \(text(result["app"])) \(text(result["server"])) \(text(result["path"])): \(text(result["result"]))"
        }
    }

    private static func keyValues(_ reply: JSON) -> String {
        guard case .object(let pairs) = reply else { return reply.serialized() }
        return pairs.filter { $0.0 != "ok" }.map { "\($0.0): \(text($0.1))" }.joined(separator: "\n")
    }

    static func text(_ value: JSON?) -> String {
        switch value {
        case .none, .null?: return "-"
        case .string(let string)?: return string
        case .int(let number)?: return String(number)
        case .bool(let flag)?: return flag ? "yes" : "no"
        case .some(let other): return other.serialized()
        }
    }
}
