
// The validated, in-memory form of conf/cutover.conf.
//
// These types are plain values: the parser (ConfigParser.swift) is the only
// place that knows the file syntax, and everything else in the proxy works
// from a `Config`. All durations are milliseconds as `Int` so that they can be
// compared and logged without unit conversions scattered around the code.

/// The two deployment slots of a blue/green release.
public enum Color: String, Sendable, Equatable, CaseIterable {
    case blue, green

    /// The slot that is not `self` (the one a cutover switches to).
    public var other: Color {
        switch self {
        case .blue: return .green
        case .green: return .blue
        }
    }
}

/// A `host:port` pair as written in the config. Names are kept, not resolved:
/// resolution belongs to the connecting code, which can retry it.
public struct Endpoint: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// IPv4 literal, IPv6 literal without brackets, or a DNS name (lowercased).
    public var host: String
    public var port: UInt16
    /// The config line this endpoint came from, so runtime errors can point at it.
    public var line: Int
    /// `listen ADDRESS tls`: connections speak TLS (the `tls { }` block's certificates).
    public var tls = false

    public init(host: String, port: UInt16, line: Int = 0) {
        self.host = host
        self.port = port
        self.line = line
    }

    /// `host:port`, with brackets around IPv6 literals so the result can be
    /// pasted back into the config file.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// Where access log lines go.
public enum AccessLogTarget: Sendable, Equatable {
    case off
    case stdout
    /// An absolute path, or one resolved against the config file's folder.
    case file(String)
}

/// Connection and request deadlines, in milliseconds.
public struct Timeouts: Sendable, Equatable {
    public var connectMs: Int
    /// Total deadline for reading a request head.
    public var clientHeaderMs: Int
    /// Longest pause allowed while reading a request body.
    public var clientBodyMs: Int
    /// Keep-alive idle time between client requests.
    public var clientIdleMs: Int
    public var upstreamHeaderMs: Int
    public var upstreamIdleMs: Int
    /// How long a graceful shutdown waits for in-flight requests.
    public var drainMs: Int

    public init(connectMs: Int, clientHeaderMs: Int, clientBodyMs: Int, clientIdleMs: Int,
                upstreamHeaderMs: Int, upstreamIdleMs: Int, drainMs: Int) {
        self.connectMs = connectMs
        self.clientHeaderMs = clientHeaderMs
        self.clientBodyMs = clientBodyMs
        self.clientIdleMs = clientIdleMs
        self.upstreamHeaderMs = upstreamHeaderMs
        self.upstreamIdleMs = upstreamIdleMs
        self.drainMs = drainMs
    }

    public static let defaults = Timeouts(
        connectMs: 2_000, clientHeaderMs: 10_000, clientBodyMs: 30_000, clientIdleMs: 60_000,
        upstreamHeaderMs: 30_000, upstreamIdleMs: 60_000, drainMs: 10_000)
}

/// Resource limits. Sizes are in bytes.
public struct Limits: Sendable, Equatable {
    public var maxConnections: Int
    public var maxHeaderBytes: Int
    public var maxHeaders: Int
    /// Longer request targets are answered with 414.
    public var maxURIBytes: Int
    /// Larger bodies are answered with 413; `nil` means no limit.
    public var maxBody: Int?
    /// Idle keep-alive connections kept per upstream server.
    public var upstreamIdlePerServer: Int

    public init(maxConnections: Int, maxHeaderBytes: Int, maxHeaders: Int, maxURIBytes: Int,
                maxBody: Int?, upstreamIdlePerServer: Int) {
        self.maxConnections = maxConnections
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaders = maxHeaders
        self.maxURIBytes = maxURIBytes
        self.maxBody = maxBody
        self.upstreamIdlePerServer = upstreamIdlePerServer
    }

    public static let defaults = Limits(
        maxConnections: 10_000, maxHeaderBytes: 16 * 1024, maxHeaders: 100,
        maxURIBytes: 8 * 1024, maxBody: nil, upstreamIdlePerServer: 64)
}

/// Active health checking of upstream servers.
public struct HealthSettings: Sendable, Equatable {
    public var intervalMs: Int
    public var timeoutMs: Int
    /// Consecutive successes before a server counts as healthy.
    public var rise: Int
    /// Consecutive failures before a server counts as unhealthy.
    public var fall: Int
    /// How long a freshly started color may take to become healthy.
    public var readyAfterMs: Int
    /// Healthy servers a color needs before traffic may be switched to it.
    public var minHealthy: Int

    public init(intervalMs: Int, timeoutMs: Int, rise: Int, fall: Int, readyAfterMs: Int, minHealthy: Int) {
        self.intervalMs = intervalMs
        self.timeoutMs = timeoutMs
        self.rise = rise
        self.fall = fall
        self.readyAfterMs = readyAfterMs
        self.minHealthy = minHealthy
    }

    public static let defaults = HealthSettings(
        intervalMs: 1_000, timeoutMs: 500, rise: 2, fall: 2, readyAfterMs: 30_000, minHealthy: 1)
}

/// One routed application with its blue and green server pools.
public struct AppConfig: Sendable, Equatable {
    public var name: String
    /// Line of the `app NAME {` opening.
    public var line: Int
    /// Lowercased host names; `"*"` matches any host.
    public var hosts: [String]
    /// Optional path prefix (starts with `/`); `nil` matches every path.
    public var pathPrefix: String?
    public var healthPath: String
    /// Active health checks (`health_path off`: none; servers are up while the data plane
    /// reaches them, and a server that failed `fall` connects is tried again one interval later).
    public var activeChecks = true
    /// Host header of health checks and verify requests; nil: the app's first host name (or
    /// the server's address when the app only has `*`).
    public var healthHost: String? = nil
    /// Paths checked before a cutover is allowed (may be empty).
    public var verifyPaths: [String]
    public var blue: [Endpoint]
    public var green: [Endpoint]
    /// How a user keeps their color during a release.
    public var sticky: StickyRule = .none
    /// Requests sent to a color whatever the weights (pilot tenants first).
    public var pins: [PinRule] = []
    /// Copies of requests to the candidate, compared with the primary's responses.
    public var mirror = MirrorSettings()
    /// TLS to this app's servers (both colors, health checks included); nil: plain HTTP.
    public var upstreamTLS: UpstreamTLS? = nil

    public init(name: String, line: Int = 0, hosts: [String], pathPrefix: String? = nil,
                healthPath: String = "/", verifyPaths: [String] = [],
                blue: [Endpoint], green: [Endpoint]) {
        self.name = name
        self.line = line
        self.hosts = hosts
        self.pathPrefix = pathPrefix
        self.healthPath = healthPath
        self.verifyPaths = verifyPaths
        self.blue = blue
        self.green = green
    }

    /// The server pool of one color.
    public func servers(_ color: Color) -> [Endpoint] {
        switch color {
        case .blue: return blue
        case .green: return green
        }
    }
}

/// The whole configuration file.
public struct Config: Sendable, Equatable {
    /// The file it came from, as given (`"<embedded>"` for parsed strings).
    public var path: String
    public var listen: [Endpoint]
    /// Listeners whose every request goes to the candidate color of its app (smoke tests and
    /// people looking at a release before any user does).
    public var previewListen: [Endpoint] = []
    /// Worker count; `nil` means one per CPU (`auto`).
    public var workers: Int?
    // The file paths below are absolute, or resolved against the config
    // file's folder; `nil` means the feature is off.
    public var adminSocket: String?
    public var adminMode: UInt32
    public var adminGroup: String?
    public var stateFile: String?
    public var auditLog: String?
    public var accessLog: AccessLogTarget
    public var metricsListen: Endpoint?
    public var initialColor: Color
    public var timeouts: Timeouts
    public var limits: Limits
    public var health: HealthSettings
    /// Traffic thresholds of the switch gate; nil: the gate looks at health and verify only.
    public var gate: GateThresholds?
    public var apps: [AppConfig]
    /// Release plans, from `plan` blocks here and in the files `plans` names.
    public var plans: [PlanConfig] = []
    /// Where release, watch, switch and rollback events are delivered.
    public var notify: [NotifyTarget] = []
    /// What a watch after a switch judges (`watch { }`).
    public var watch = WatchConfig()
    /// TLS termination (`tls { }`), for the `listen ADDRESS tls` listeners.
    public var tls: TLSSettings?

    /// The admin socket mode used when `admin_mode` is absent.
    public static let defaultAdminMode: UInt32 = 0o600

    public init(path: String = "<embedded>", listen: [Endpoint], workers: Int? = nil,
                adminSocket: String? = nil, adminMode: UInt32 = Config.defaultAdminMode,
                adminGroup: String? = nil, stateFile: String? = nil, auditLog: String? = nil,
                accessLog: AccessLogTarget = .off, metricsListen: Endpoint? = nil,
                initialColor: Color = .blue, timeouts: Timeouts = .defaults,
                limits: Limits = .defaults, health: HealthSettings = .defaults,
                apps: [AppConfig]) {
        self.path = path
        self.listen = listen
        self.workers = workers
        self.adminSocket = adminSocket
        self.adminMode = adminMode
        self.adminGroup = adminGroup
        self.stateFile = stateFile
        self.auditLog = auditLog
        self.accessLog = accessLog
        self.metricsListen = metricsListen
        self.initialColor = initialColor
        self.timeouts = timeouts
        self.limits = limits
        self.health = health
        self.apps = apps
    }
}

/// `gate { window 1m; max_5xx_rate 0.5%; max_p95_ratio 1.1; min_requests 100 }`: before a
/// switch, a target color that served at least `minRequests` requests of an app in `window`
/// (today: while it was active within the window) must show a 5xx rate at most `max5xxRate`
/// and, against the active color's own traffic in the same window, a p95 at most
/// `maxP95Ratio` times the active one.
public struct GateThresholds: Sendable, Equatable {
    public var window: StatsWindow
    /// A fraction: 0.005 for `0.5%`.
    public var max5xxRate: Double?
    public var maxP95Ratio: Double?
    /// Shadow diff rate (mismatches beyond the noise) a candidate may show, over compared
    /// mirrored requests in the window.
    public var maxShadowDiffRate: Double? = nil
    /// How long every switch is watched afterwards (0: no watch unless `switch … watch D`).
    public var watchMs: Int = 0
    public var minRequests: Int

    public init(window: StatsWindow = .oneMinute, max5xxRate: Double? = nil, maxP95Ratio: Double? = nil,
                minRequests: Int = 100) {
        self.window = window
        self.max5xxRate = max5xxRate
        self.maxP95Ratio = maxP95Ratio
        self.minRequests = minRequests
    }
}

/// A configuration problem, pointing at the offending line.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The config path as given to the parser.
    public var file: String
    /// 1-based line number; 0 when the file could not be read at all.
    public var line: Int
    public var message: String

    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String { "\(file):\(line): \(message)" }
}

/// The windows request figures are kept for (and a gate judges over): the last 10 seconds,
/// minute and five minutes, and everything since start.
public enum StatsWindow: String, Sendable, CaseIterable {
    case tenSeconds = "10s"
    case oneMinute = "1m"
    case fiveMinutes = "5m"
    case total
}

/// `tls { }`: certificates chosen by SNI, protocol floor, sessions, and the handshake's deadline.
public struct TLSSettings: Sendable, Equatable {
    public struct Certificate: Sendable, Equatable {
        /// PEM chain (leaf first) and PEM private key, resolved against the config's folder.
        public var chainPath: String
        public var keyPath: String
        public var line: Int

        public init(chainPath: String, keyPath: String, line: Int) {
            self.chainPath = chainPath
            self.keyPath = keyPath
            self.line = line
        }
    }

    public enum Version: Int, Sendable, Equatable {
        case tls12 = 12
        case tls13 = 13
    }

    public var certificates: [Certificate] = []
    /// The certificate (by one of its names) for clients whose SNI matches none, or that send
    /// none; nil: those get an `unrecognized_name` alert.
    public var defaultName: String?
    public var defaultLine = 0
    public var minVersion = Version.tls12
    /// An OpenSSL cipher string for TLS 1.2; nil: OpenSSL's default. TLS 1.3 suites stay default.
    public var ciphers: String?
    public var ciphersLine = 0
    public var sessionTickets = true
    /// TLS 1.2 session-id cache entries; 0: off.
    public var sessionCache = 20_000
    public var handshakeTimeoutMs = 10_000
    /// Plain listeners that answer every request with a 308 to the same URL in https.
    public var redirectHTTP: [Endpoint] = []
    /// The line of `tls {`.
    public var line = 0

    public init() {}
}

/// `upstream_tls verify CAFILE [sni NAME]` or `upstream_tls insecure`: how cutover speaks TLS
/// to an app's servers (a green stack on another host).
public struct UpstreamTLS: Sendable, Equatable {
    /// The CA certificates a server's certificate must chain to; nil: not verified (`insecure`).
    public var caFile: String?
    /// The name sent as SNI and checked in the certificate; nil: the server's address.
    public var serverName: String?
    public var line: Int

    public init(caFile: String?, serverName: String? = nil, line: Int = 0) {
        self.caFile = caFile
        self.serverName = serverName
        self.line = line
    }
}
