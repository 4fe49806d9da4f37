import CutoverSystem

/// What the operator views show, read from the `overview` admin reply (the same document the
/// metrics listener serves as `/status.json`). Reading is lenient: a field the proxy did not
/// send shows as missing, never as a crash, so `cutover top` of one version can watch a proxy
/// of another.
public struct Overview: Sendable, Equatable {
    public struct ColorState: Sendable, Equatable {
        public var name: String
        public var ready: Bool
        public var reasons: [String]
        public var inflight: Int?
        public var upstreamConnections: Int?
    }

    public struct Server: Sendable, Equatable {
        public var name: String
        public var health: String
        public var lastResult: String?
        public var drained: Bool
        public var routable: Bool
    }

    /// One value a second, oldest first; nil where nothing was sampled.
    public struct Series: Sendable, Equatable {
        public var requestsPerSecond: [Double?] = []
        public var serverErrorRate: [Double?] = []
        public var p50: [Double?] = []
        public var p95: [Double?] = []
        public var p99: [Double?] = []
        public var end: String?
    }

    public struct Row: Sendable, Equatable {
        public var color: String
        /// The share of the app's requests the weights give this color (basis points).
        public var shareBasisPoints: Int
        public var requests: Int
        public var requestsPerSecond: Double
        public var ok2xx: Int
        public var client4xx: Int
        public var server5xx: Int
        public var serverErrorRate: Double
        public var p50: Int
        public var p95: Int
        public var p99: Int
        public var servers: [Server]
        public var series: Series

        public var serversUp: Int { servers.filter { $0.health == "up" }.count }
    }

    public struct Shadow: Sendable, Equatable {
        public var mirrorBasisPoints: Int
        public var compared: Int
        public var candidateFailed: Int
        public var diffRate: Double
        public var statusRate: Double
        public var headersRate: Double
        public var bodyRate: Double
        public var topHeaders: [String]
    }

    public struct App: Sendable, Equatable {
        public var name: String
        public var stable: String
        public var candidate: String
        public var candidateBasisPoints: Int
        public var pinned: [String: Int]
        public var rows: [Row]
        public var shadow: Shadow?
    }

    public struct Release: Sendable, Equatable {
        public var plan: String
        public var candidate: String
        public var phase: String
        public var step: Int
        public var steps: Int
        public var heldMs: Int
        public var waitingFor: String
    }

    public struct AuditEntry: Sendable, Equatable {
        public var time: String
        public var event: String
        public var user: String
        public var from: String?
        public var to: String?
        public var reason: String?
    }

    public var time: String
    public var active: String
    public var previous: String?
    public var generation: Int
    public var window: String
    public var lastSwitch: (at: String, from: String, to: String, drainedAt: String?)?
    public var release: Release?
    public var colors: [ColorState]
    public var apps: [App]
    public var audit: [AuditEntry]

    public static func == (lhs: Overview, rhs: Overview) -> Bool {
        lhs.time == rhs.time && lhs.active == rhs.active && lhs.previous == rhs.previous && lhs.generation == rhs.generation
            && lhs.window == rhs.window && lhs.lastSwitch?.at == rhs.lastSwitch?.at && lhs.release == rhs.release
            && lhs.colors == rhs.colors && lhs.apps == rhs.apps && lhs.audit == rhs.audit
    }

    public struct ReadError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Reads an `overview` reply. Throws only when it is not one (an error reply, or no
    /// `active` color); every other field is optional.
    public init(_ json: JSON) throws(ReadError) {
        guard json["ok"]?.boolValue == true else {
            throw ReadError(description: json["error"]?.stringValue ?? "the proxy answered without figures")
        }
        guard let active = json["active"]?.stringValue else { throw ReadError(description: "the reply names no active color") }
        self.active = active
        time = json["time"]?.stringValue ?? ""
        previous = json["previous"]?.stringValue
        generation = Int(json["generation"]?.intValue ?? 0)
        window = json["window"]?.stringValue ?? "10s"
        if let last = json["last_switch"], let at = last["at"]?.stringValue {
            lastSwitch = (at, last["from"]?.stringValue ?? "?", last["to"]?.stringValue ?? "?", last["drained_at"]?.stringValue)
        }
        if let release = json["release"], let plan = release["plan"]?.stringValue {
            self.release = Release(plan: plan, candidate: release["candidate"]?.stringValue ?? "", phase: release["phase"]?.stringValue ?? "",
                                   step: Int(release["step"]?.intValue ?? 0), steps: Int(release["steps"]?.intValue ?? 0),
                                   heldMs: Int(release["held_ms"]?.intValue ?? 0), waitingFor: release["waiting_for"]?.stringValue ?? "")
        }
        colors = []
        if case .object(let pairs)? = json["colors"] {
            for (name, state) in pairs {
                colors.append(ColorState(name: name, ready: state["ready"]?.boolValue ?? false,
                                         reasons: (state["reasons"]?.arrayValue ?? []).compactMap(\.stringValue),
                                         inflight: state["inflight"]?.intValue.map(Int.init),
                                         upstreamConnections: state["upstream_connections"]?.intValue.map(Int.init)))
            }
        }
        apps = (json["apps"]?.arrayValue ?? []).map(Self.app)
        audit = (json["audit"]?.arrayValue ?? []).map { record in
            AuditEntry(time: record["time"]?.stringValue ?? "", event: record["event"]?.stringValue ?? "?",
                       user: record["actor"]?["user"]?.stringValue ?? "?", from: record["from"]?.stringValue,
                       to: record["to"]?.stringValue, reason: record["reason"]?.stringValue)
        }
    }

    private static func app(_ json: JSON) -> App {
        var pinned: [String: Int] = [:]
        if case .object(let pairs)? = json["pins"] {
            for (color, count) in pairs { pinned[color] = Int(count.intValue ?? 0) }
        }
        var shadow: Shadow?
        if let figures = json["shadow"], figures != .null {
            shadow = Shadow(mirrorBasisPoints: Int(json["mirror_bp"]?.intValue ?? 0),
                            compared: Int(figures["compared"]?.intValue ?? 0),
                            candidateFailed: Int(figures["candidate_failed"]?.intValue ?? 0),
                            diffRate: figures["diff_rate"]?.doubleValue ?? 0,
                            statusRate: figures["diff_rates"]?["status"]?.doubleValue ?? 0,
                            headersRate: figures["diff_rates"]?["headers"]?.doubleValue ?? 0,
                            bodyRate: figures["diff_rates"]?["body"]?.doubleValue ?? 0,
                            topHeaders: (figures["headers"]?.arrayValue ?? []).prefix(3).compactMap { $0["name"]?.stringValue })
        }
        return App(name: json["name"]?.stringValue ?? "?", stable: json["stable"]?.stringValue ?? "?",
                   candidate: json["candidate"]?.stringValue ?? "?",
                   candidateBasisPoints: Int(json["candidate_bp"]?.intValue ?? 0), pinned: pinned,
                   rows: (json["colors"]?.arrayValue ?? []).map(row), shadow: shadow)
    }

    private static func row(_ json: JSON) -> Row {
        func int(_ key: String) -> Int { Int(json[key]?.intValue ?? 0) }
        func numbers(_ key: String) -> [Double?] {
            (json["series"]?[key]?.arrayValue ?? []).map { $0.doubleValue }
        }
        let servers = (json["servers"]?.arrayValue ?? []).map { server in
            Server(name: server["server"]?.stringValue ?? "?", health: server["health"]?.stringValue ?? "unknown",
                   lastResult: server["last_result"]?.stringValue, drained: server["drained"]?.boolValue ?? false,
                   routable: server["routable"]?.boolValue ?? false)
        }
        return Row(color: json["color"]?.stringValue ?? "?", shareBasisPoints: int("share_bp"), requests: int("requests"),
                   requestsPerSecond: json["rps"]?.doubleValue ?? 0, ok2xx: int("2xx"), client4xx: int("4xx"), server5xx: int("5xx"),
                   serverErrorRate: json["5xx_rate"]?.doubleValue ?? 0, p50: int("p50_us"), p95: int("p95_us"), p99: int("p99_us"),
                   servers: servers,
                   series: Series(requestsPerSecond: numbers("rps"), serverErrorRate: numbers("5xx_rate"), p50: numbers("p50_us"),
                                  p95: numbers("p95_us"), p99: numbers("p99_us"), end: json["series"]?["end"]?.stringValue))
    }
}
