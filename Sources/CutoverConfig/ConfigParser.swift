// Parser for conf/cutover.conf. README "Configuration" describes the syntax.
//
// The file is line oriented: one directive per line, `#` comments, and flat
// `name {` ... `}` blocks. Parsing happens in two steps: `tokenize` turns the
// text into one `Directive` per non-empty line (noting misplaced braces),
// then `Reader` walks the directives in order, validates every value and
// fills in a `Config`. The first error found is thrown; it carries the file
// and the 1-based line it refers to.

import CutoverSystem

public enum ConfigParser {
    /// Parses config text. `path` is used in error messages and stored in
    /// `Config.path`; relative file paths in the config are resolved against
    /// `baseDirectory` (default: the folder of `path`, or the current
    /// directory for `"<embedded>"` and bare file names).
    public static func parse(_ text: String, path: String, baseDirectory: String? = nil) throws(ConfigError) -> Config {
        let directives = tokenize(text, file: path)
        var reader = Reader(file: path,
                            baseDirectory: baseDirectory ?? defaultBaseDirectory(for: path),
                            lastLine: lastLineNumber(of: text))
        return try reader.read(directives)
    }

    /// Reads and parses a config file.
    public static func load(path: String) throws(ConfigError) -> Config {
        try parse(readText(path: path), path: path)
    }

    /// Milliseconds for `500ms`, `1s`, `2m`, `1h`; `nil` for anything else,
    /// including a bare number (a unit is mandatory so `30` cannot be misread).
    public static func parseDuration(_ s: Substring) -> Int? {
        let digits = s.prefix(while: \.isASCIIDigit)
        let unit = s[digits.endIndex...]
        let factors: [Substring: Int] = ["ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000]
        guard let factor = factors[unit], let value = Int(digits) else { return nil }
        return multiply(value, factor)
    }

    /// `0`…`100` with at most two decimals, as basis points (1/100 %); nil for anything else
    /// (`101`, `-1`, `10.001`, `1e1`).
    public static func percentBasisPoints<S: StringProtocol>(_ text: S) -> Int? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = parts.first, !whole.isEmpty, whole.count <= 3,
              whole.allSatisfy(\.isASCIIDigit), let wholeValue = Int(whole) else { return nil }
        var fraction = 0
        if parts.count == 2 {
            let digits = parts[1]
            guard !digits.isEmpty, digits.count <= 2, digits.allSatisfy(\.isASCIIDigit), let value = Int(digits) else { return nil }
            fraction = digits.count == 1 ? value * 10 : value
        }
        let basisPoints = wholeValue * 100 + fraction
        return basisPoints <= 10_000 ? basisPoints : nil
    }

    /// The longest duration a plan accepts (a year), so that time arithmetic never overflows.
    public static let maxDurationMs = 365 * 86_400_000
    /// The longest timeout or interval (24 h).
    public static let maxTimeoutMs = 86_400_000

    /// "24h", "1h", "10m", "30s", "500ms": the largest unit that divides the value.
    static func describeDuration(_ ms: Int) -> String {
        for (unit, factor) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] where ms % factor == 0 { return "\(ms / factor)\(unit)" }
        return "\(ms)ms"
    }

    /// Bytes for `512`, `16k`, `1m`, `2g` (powers of 1024); `nil` otherwise.
    public static func parseSize(_ s: Substring) -> Int? {
        let digits = s.prefix(while: \.isASCIIDigit)
        let unit = s[digits.endIndex...]
        let factors: [Substring: Int] = ["": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30]
        guard let factor = factors[unit], let value = Int(digits) else { return nil }
        return multiply(value, factor)
    }

    private static func multiply(_ a: Int, _ b: Int) -> Int? {
        let (result, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : result
    }
}

// MARK: - Tokenizing

/// One non-empty line of the file: `name arg arg ...`, possibly ending in `{`.
private struct Directive {
    let file: String
    let line: Int
    let name: Substring
    let args: [Substring]
    /// The line ended with `{` (which is not part of `args`).
    let opensBlock: Bool
    /// A brace layout error, kept until the reader reaches this line so that
    /// errors come out in file order.
    let problem: String?

    var closesBlock: Bool { name == "}" }

    func error(_ message: String) -> ConfigError {
        ConfigError(file: file, line: line, message: message)
    }
}

extension ConfigParser {
    fileprivate static func tokenize(_ text: String, file: String) -> [Directive] {
        var directives: [Directive] = []
        var lineNumber = 1
        var tokens: [Substring] = []
        var inComment = false
        var tokenStart: String.Index?
        // Bytes, not Characters: a blank followed by a combining mark is one Character and
        // would glue two tokens (or hide a `#`) where the line plainly has a blank. Blanks and
        // "\n" are ASCII, never part of a longer UTF-8 sequence, so every index where a token
        // starts or ends is a scalar boundary. The "\r" of a CRLF line end is a blank.
        let utf8 = text.utf8
        func endToken(at end: String.Index) {
            guard let start = tokenStart else { return }
            tokenStart = nil
            if inComment { return }
            if utf8[start] == UInt8(ascii: "#") {
                inComment = true  // a token that starts with `#` comments out the rest of the line
            } else {
                tokens.append(Substring(text.unicodeScalars[start..<end]))
            }
        }
        func endLine(at end: String.Index) {
            endToken(at: end)
            if !tokens.isEmpty { directives.append(directive(tokens, file: file, line: lineNumber)) }
            tokens.removeAll(keepingCapacity: true)
            inComment = false
            lineNumber += 1
        }
        var index = utf8.startIndex
        while index != utf8.endIndex {
            switch utf8[index] {
            case UInt8(ascii: "\n"): endLine(at: index)
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"): endToken(at: index)
            default: if tokenStart == nil { tokenStart = index }
            }
            index = utf8.index(after: index)
        }
        endLine(at: index)
        return directives
    }

    /// Builds a directive from non-empty `tokens`, checking the brace layout:
    /// `{` ends an opening line, `}` stands alone.
    private static func directive(_ tokens: [Substring], file: String, line: Int) -> Directive {
        func make(_ opensBlock: Bool, _ problem: String?) -> Directive {
            let args = tokens.dropFirst().dropLast(opensBlock ? 1 : 0)
            return Directive(file: file, line: line, name: tokens[0], args: Array(args),
                             opensBlock: opensBlock, problem: problem)
        }
        if tokens.contains("}") && tokens.count > 1 {
            return make(false, "'}' must stand alone on its line")
        }
        switch tokens.firstIndex(of: "{") {
        case nil: return make(false, nil)
        case 0: return make(false, "'{' must follow a block name on the same line")
        case tokens.count - 1: return make(true, nil)
        default: return make(false, "'{' must end the line (put each directive on its own line)")
        }
    }

    /// The line reported for whole-file problems (no `listen`, no `app`): the
    /// last line of the file, where the missing directive would be added.
    static func lastLineNumber(of text: String) -> Int {
        let newlines = text.utf8.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        let endsWithNewline = text.utf8.last == UInt8(ascii: "\n")
        return max(1, newlines + 1 - (endsWithNewline ? 1 : 0))
    }
}

// MARK: - Files and paths

extension ConfigParser {
    static func defaultBaseDirectory(for path: String) -> String {
        guard path != "<embedded>", let slash = path.lastIndex(of: "/") else { return currentDirectory() }
        let folder = slash == path.startIndex ? "/" : String(path[..<slash])
        // Make it absolute so the daemon is unaffected by later chdir calls.
        return folder.hasPrefix("/") ? folder : join(currentDirectory(), folder)
    }

    /// `relative` resolved against `base`, with `.` segments and doubled
    /// slashes removed. `..` is kept: collapsing it would be wrong across symlinks.
    static func join(_ base: String, _ relative: String) -> String {
        let parts = (base + "/" + relative).split(separator: "/").filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        return base.hasPrefix("/") ? "/" + joined : joined
    }

    private static func currentDirectory() -> String {
        FileIO.currentDirectory()
    }

    /// Reads the whole file; a failure reports `strerror`.
    static func readText(path: String) throws(ConfigError) -> String {
        do {
            return String(decoding: try FileIO.readWhole(path), as: UTF8.self)
        } catch {
            throw ConfigError(file: path, line: 0, message: "cannot read: \(error.reason)")
        }
    }
}

// MARK: - Reading directives

/// Rejects a second occurrence of a directive that may appear only once.
private struct OnceTracker {
    private var firstLines: [Substring: Int] = [:]

    mutating func check(_ d: Directive) throws(ConfigError) {
        if let first = firstLines[d.name] {
            throw d.error("duplicate '\(d.name)' (first at line \(first))")
        }
        firstLines[d.name] = d.line
    }

    func contains(_ name: Substring) -> Bool { firstLines[name] != nil }
}

/// A (host, path prefix) pair that must belong to only one app.
private struct Route: Hashable {
    let host: String
    let prefix: String?
}

private struct Reader {
    let file: String
    let baseDirectory: String
    let lastLine: Int
    var config: Config
    var once = OnceTracker()
    var appLines: [String: Int] = [:]
    var routeOwners: [Route: AppConfig] = [:]
    /// Where `min_healthy` was set, to blame it when a pool is smaller.
    var minHealthyLine: Int?

    init(file: String, baseDirectory: String, lastLine: Int) {
        self.file = file
        self.baseDirectory = baseDirectory
        self.lastLine = lastLine
        self.config = Config(path: file, listen: [], apps: [])
    }

    mutating func read(_ directives: [Directive]) throws(ConfigError) -> Config {
        var index = 0
        while index < directives.count {
            let d = directives[index]
            if let problem = d.problem { throw d.error(problem) }
            if d.closesBlock {
                throw d.error("unexpected '}' (no block is open)")
            }
            if d.opensBlock {
                let body = try blockBody(directives, opener: index)
                try readBlock(d, body)
                index += body.count + 2
            } else {
                try readTopLevel(d)
                index += 1
            }
        }
        return try finished()
    }

    /// The directives between an opening line and its `}`. Blocks never nest,
    /// so meeting another opener means this block was left unclosed.
    private func blockBody(_ directives: [Directive], opener: Int) throws(ConfigError) -> ArraySlice<Directive> {
        let open = directives[opener]
        let label = ([open.name] + open.args).joined(separator: " ")
        for index in (opener + 1)..<directives.count {
            let d = directives[index]
            if let problem = d.problem { throw d.error(problem) }
            if d.closesBlock { return directives[(opener + 1)..<index] }
            if d.opensBlock {
                throw open.error("unclosed block '\(label)' (no '}' before the block at line \(d.line))")
            }
        }
        throw open.error("unclosed block '\(label)' (missing '}')")
    }

    private static let blockNames: Set<Substring> = ["timeouts", "limits", "health", "gate", "app", "plan", "watch", "tls"]

    private mutating func readTopLevel(_ d: Directive) throws(ConfigError) {
        if Self.blockNames.contains(d.name) {
            throw d.error("\(d.name): expected '{' at the end of the line")
        }
        if !["listen", "preview_listen", "plans", "notify"].contains(d.name) { try once.check(d) }
        switch d.name {
        case "listen": try addListen(d)
        case "preview_listen": try addPreviewListen(d)
        case "plans": try addPlanFiles(d)
        case "notify": config.notify.append(try d.notifyTarget(baseDirectory))
        case "workers": config.workers = try d.workers()
        case "admin_socket": config.adminSocket = try d.optionalPath(baseDirectory)
        case "admin_mode": config.adminMode = try d.fileMode()
        case "admin_group": config.adminGroup = String(try d.oneValue())
        case "state_file": config.stateFile = try d.optionalPath(baseDirectory)
        case "audit_log": config.auditLog = try d.optionalPath(baseDirectory)
        case "access_log": config.accessLog = try d.accessLog(baseDirectory)
        case "metrics_listen": config.metricsListen = try d.metricsListen()
        case "initial_color": config.initialColor = try d.color()
        default: throw d.error("unknown directive '\(d.name)'")
        }
    }

    private mutating func addListen(_ d: Directive) throws(ConfigError) {
        guard let address = d.args.first else { throw d.error("listen: missing value") }
        var endpoint = try d.endpoint(address, wildcard: true, portZero: true)
        if d.args.count > 1 {
            guard d.args[1] == "tls", d.args.count == 2 else {
                throw d.error("listen: unexpected '\(d.args[1...].joined(separator: " "))' (only 'tls' may follow the address)")
            }
            endpoint.tls = true
        }
        if let earlier = config.listen.first(where: { $0.host == endpoint.host && $0.port == endpoint.port && $0.port != 0 }) {
            throw d.error("listen: \(endpoint) is already listed at line \(earlier.line)")
        }
        config.listen.append(endpoint)
    }

    private func readTLS(_ body: ArraySlice<Directive>, opener: Directive) throws(ConfigError) -> TLSSettings {
        var tls = TLSSettings()
        tls.line = opener.line
        var once = OnceTracker()
        for d in body {
            if d.name != "certificate" { try once.check(d) }
            switch d.name {
            case "certificate":
                guard d.args.count == 2 else {
                    throw d.error("certificate: expected CHAIN.pem KEY.pem (the certificate chain, then its private key)")
                }
                tls.certificates.append(.init(chainPath: Directive.resolve(d.args[0], baseDirectory),
                                              keyPath: Directive.resolve(d.args[1], baseDirectory), line: d.line))
            case "default_certificate":
                tls.defaultName = String(try d.oneValue()).lowercased()
                tls.defaultLine = d.line
            case "min_version":
                switch try d.oneValue() {
                case "1.2": tls.minVersion = .tls12
                case "1.3": tls.minVersion = .tls13
                case let value: throw d.error("min_version: expected 1.2 or 1.3, got '\(value)'")
                }
            case "ciphers":
                let value = d.args.joined(separator: " ")
                guard !value.isEmpty else { throw d.error("ciphers: missing value") }
                tls.ciphers = value == "default" ? nil : value
                tls.ciphersLine = d.line
            case "session_tickets": tls.sessionTickets = try d.onOff()
            case "session_cache":
                tls.sessionCache = try d.oneValue() == "off" ? 0 : try d.integer(1...10_000_000)
            case "handshake_timeout": tls.handshakeTimeoutMs = try d.duration()
            case "redirect_http":
                guard d.args.count >= 2, d.args[0] == "listen" else {
                    throw d.error("redirect_http: expected 'listen ADDRESS' (a plain listener that answers 308 to https)")
                }
                for value in d.args[1...] {
                    let endpoint = try d.endpoint(value, wildcard: true, portZero: true)
                    let all = config.listen + config.previewListen + tls.redirectHTTP
                    if let earlier = all.first(where: { $0.host == endpoint.host && $0.port == endpoint.port && $0.port != 0 }) {
                        throw d.error("redirect_http: \(endpoint) is already listed at line \(earlier.line)")
                    }
                    tls.redirectHTTP.append(endpoint)
                }
            default: throw d.error("unknown directive '\(d.name)' in tls block")
            }
        }
        if tls.certificates.isEmpty {
            throw opener.error("tls: no certificate (add 'certificate CHAIN.pem KEY.pem')")
        }
        return tls
    }

    /// `plans PATH`: a file of `plan` blocks, or a folder whose `*.conf` files are (in name
    /// order). Errors point at the plan file's own lines.
    private mutating func addPlanFiles(_ d: Directive) throws(ConfigError) {
        let value = try d.oneValue()
        let path = value.hasPrefix("/") ? String(value) : ConfigParser.join(baseDirectory, String(value))
        let files: [String]
        if let entries = FileIO.folderEntries(path) {
            files = entries.filter { $0.hasSuffix(".conf") }.map { ConfigParser.join(path, $0) }
        } else {
            files = [path]
        }
        for planFile in files {
            let text: String
            do {
                text = try ConfigParser.readText(path: planFile)
            } catch {
                throw d.error("plans: \(error.message)")
            }
            let directives = ConfigParser.tokenize(text, file: planFile)
            var index = 0
            while index < directives.count {
                let plan = directives[index]
                if let problem = plan.problem { throw plan.error(problem) }
                guard plan.name == "plan", plan.opensBlock else {
                    throw plan.error("only 'plan NAME {' blocks belong in a plan file (found '\(plan.name)')")
                }
                let body = try blockBody(directives, opener: index)
                try addPlan(plan, body)
                index += body.count + 2
            }
        }
    }

    private mutating func addPreviewListen(_ d: Directive) throws(ConfigError) {
        let endpoint = try d.endpoint(try d.oneValue(), wildcard: true, portZero: true)
        let all = config.listen + config.previewListen
        if let earlier = all.first(where: { $0.host == endpoint.host && $0.port == endpoint.port && $0.port != 0 }) {
            throw d.error("preview_listen: \(endpoint) is already listed at line \(earlier.line)")
        }
        config.previewListen.append(endpoint)
    }

    private mutating func readBlock(_ d: Directive, _ body: ArraySlice<Directive>) throws(ConfigError) {
        guard Self.blockNames.contains(d.name) else {
            throw d.error("'\(d.name)' is not a block (blocks are timeouts, limits, health, gate, tls, app, plan and watch)")
        }
        if d.name == "app" {
            try addApp(d, body)
            return
        }
        if d.name == "plan" {
            try addPlan(d, body)
            return
        }
        if d.name == "watch" {
            try once.check(d)
            try d.noValues()
            config.watch = try readWatch(body)
            return
        }
        try once.check(d)
        try d.noValues()
        switch d.name {
        case "timeouts": config.timeouts = try readTimeouts(body)
        case "limits": config.limits = try readLimits(body, opener: d)
        case "gate": config.gate = try readGate(body, opener: d)
        case "tls": config.tls = try readTLS(body, opener: d)
        default: config.health = try readHealth(body)
        }
    }

    private func readTimeouts(_ body: ArraySlice<Directive>) throws(ConfigError) -> Timeouts {
        var t = Timeouts.defaults
        var once = OnceTracker()
        for d in body {
            try once.check(d)
            switch d.name {
            case "connect": t.connectMs = try d.duration()
            case "client_header": t.clientHeaderMs = try d.duration()
            case "client_body": t.clientBodyMs = try d.duration()
            case "client_idle": t.clientIdleMs = try d.duration()
            case "upstream_header": t.upstreamHeaderMs = try d.duration()
            case "upstream_idle": t.upstreamIdleMs = try d.duration()
            // 0 is meaningful here: stop without waiting for in-flight requests.
            case "drain": t.drainMs = try d.duration(allowZero: true)
            default: throw d.error("unknown directive '\(d.name)' in timeouts block")
            }
        }
        return t
    }

    private func readLimits(_ body: ArraySlice<Directive>, opener: Directive) throws(ConfigError) -> Limits {
        var l = Limits.defaults
        var once = OnceTracker()
        // The line blamed if the URI limit ends up larger than the header limit.
        var uriCheckLine = opener
        for d in body {
            try once.check(d)
            switch d.name {
            case "max_connections": l.maxConnections = try d.integer(1...1_000_000)
            case "max_header_bytes":
                l.maxHeaderBytes = try d.size(1024...65536, rangeText: "1k..64k")
                if uriCheckLine.name != "max_uri_bytes" { uriCheckLine = d }
            case "max_headers": l.maxHeaders = try d.integer(1...1000)
            case "max_uri_bytes":
                l.maxURIBytes = try d.size(1...65536, rangeText: "1..64k")
                uriCheckLine = d
            case "max_body": l.maxBody = try d.optionalSize()
            case "upstream_idle_per_server": l.upstreamIdlePerServer = try d.integer(0...100_000)
            default: throw d.error("unknown directive '\(d.name)' in limits block")
            }
        }
        // A request line must fit in the header buffer, so a larger URI limit could never apply.
        // The default follows a lowered max_header_bytes; only an explicit value can conflict.
        if !once.contains("max_uri_bytes") {
            l.maxURIBytes = min(l.maxURIBytes, l.maxHeaderBytes)
        }
        if l.maxURIBytes > l.maxHeaderBytes {
            throw uriCheckLine.error("max_uri_bytes (\(l.maxURIBytes) bytes) must not exceed max_header_bytes (\(l.maxHeaderBytes) bytes)")
        }
        return l
    }

    private func readGate(_ body: ArraySlice<Directive>, opener: Directive) throws(ConfigError) -> GateThresholds {
        var gate = GateThresholds()
        var once = OnceTracker()
        for d in body {
            try once.check(d)
            switch d.name {
            case "window":
                let value = try d.oneValue()
                guard let window = StatsWindow(rawValue: String(value)), window != .total else {
                    throw d.error("window: '\(value)' is not a window (10s, 1m or 5m)")
                }
                gate.window = window
            case "max_5xx_rate": gate.max5xxRate = try d.rate()
            case "max_p95_ratio": gate.maxP95Ratio = try d.ratio()
            case "min_requests": gate.minRequests = try d.integer(1...1_000_000_000)
            case "max_shadow_diff_rate": gate.maxShadowDiffRate = try d.rate()
            case "watch": gate.watchMs = try d.duration(maxMs: 7 * ConfigParser.maxTimeoutMs)
            default: throw d.error("unknown directive '\(d.name)' in gate block")
            }
        }
        guard gate.max5xxRate != nil || gate.maxP95Ratio != nil || gate.maxShadowDiffRate != nil || gate.watchMs > 0 else {
            throw opener.error("gate: set max_5xx_rate, max_p95_ratio, max_shadow_diff_rate or watch (the block checks nothing otherwise)")
        }
        return gate
    }

    private mutating func readHealth(_ body: ArraySlice<Directive>) throws(ConfigError) -> HealthSettings {
        var h = HealthSettings.defaults
        var once = OnceTracker()
        for d in body {
            try once.check(d)
            switch d.name {
            case "interval": h.intervalMs = try d.duration()
            case "timeout": h.timeoutMs = try d.duration()
            case "rise": h.rise = try d.integer(1...1_000)
            case "fall": h.fall = try d.integer(1...1_000)
            case "ready_after": h.readyAfterMs = try d.duration(allowZero: true)
            case "min_healthy":
                h.minHealthy = try d.integer(1...1_000)
                minHealthyLine = d.line
            default: throw d.error("unknown directive '\(d.name)' in health block")
            }
        }
        return h
    }

    // MARK: Apps

    private mutating func addApp(_ d: Directive, _ body: ArraySlice<Directive>) throws(ConfigError) {
        let name = try d.appName()
        if let first = appLines[name] {
            throw d.error("duplicate app '\(name)' (first at line \(first))")
        }
        appLines[name] = d.line
        let app = try readApp(name: name, opener: d, body)
        config.apps.append(app)
    }

    private mutating func readApp(name: String, opener: Directive, _ body: ArraySlice<Directive>) throws(ConfigError) -> AppConfig {
        var app = AppConfig(name: name, line: opener.line, hosts: [], blue: [], green: [])
        var once = OnceTracker()
        var hostLine: Directive?
        var pinnedValues = 0
        for d in body {
            if d.name != "pin" { try once.check(d) }
            switch d.name {
            case "sticky": app.sticky = try d.sticky()
            case "mirror": app.mirror.basisPoints = try d.percentBasisPoints()
            case "mirror_methods":
                app.mirror.methods = try d.values().map { (value) throws(ConfigError) in
                    guard PinRule.isToken(value), value.uppercased() == value else {
                        throw d.error("mirror_methods: '\(value)' is not a method name (uppercase, e.g. GET)")
                    }
                    return String(value)
                }
            case "mirror_max_body": app.mirror.maxBody = try d.size(0...(16 << 20), rangeText: "0..16m")
            case "mirror_max_inflight": app.mirror.maxInflight = try d.integer(1...100_000)
            case "mirror_noise": app.mirror.noise = try d.onOff()
            case "mirror_ignore_headers":
                app.mirror.ignoreHeaders = try d.values().map { (value) throws(ConfigError) in
                    guard PinRule.isToken(value) else { throw d.error("mirror_ignore_headers: '\(value)' is not a header name") }
                    return value.lowercased()
                }
            case "pin":
                let pin = try d.pin()
                pinnedValues += pin.values.count
                if pinnedValues > PinRule.maxValuesPerApp {
                    throw d.error("pin: app '\(name)' pins more than \(PinRule.maxValuesPerApp) values")
                }
                for earlier in app.pins where earlier.source == pin.source && earlier.name == pin.name {
                    if let value = pin.values.first(where: earlier.values.contains) {
                        throw d.error("pin: \(pin.source.rawValue) \(pin.name) value '\(value)' is already pinned at line \(earlier.line)")
                    }
                }
                app.pins.append(pin)
            case "host":
                app.hosts = try d.hosts()
                hostLine = d
            case "path": app.pathPrefix = try d.path(try d.oneValue())
            case "health_path":
                let value = try d.oneValue()
                if value == "off" {
                    app.activeChecks = false
                } else {
                    app.healthPath = try d.path(value)
                }
            case "health_host": app.healthHost = String(try d.oneValue()).lowercased()
            case "upstream_tls":
                switch (d.args.first, d.args.count) {
                case ("insecure", 1):
                    app.upstreamTLS = UpstreamTLS(caFile: nil, line: d.line)
                case ("verify", 2):
                    app.upstreamTLS = UpstreamTLS(caFile: Directive.resolve(d.args[1], baseDirectory), line: d.line)
                case ("verify", 4) where d.args[2] == "sni":
                    app.upstreamTLS = UpstreamTLS(caFile: Directive.resolve(d.args[1], baseDirectory), serverName: String(d.args[3]).lowercased(),
                                                  line: d.line)
                case ("insecure", 3) where d.args[1] == "sni":
                    app.upstreamTLS = UpstreamTLS(caFile: nil, serverName: String(d.args[2]).lowercased(), line: d.line)
                default:
                    throw d.error("upstream_tls: expected 'verify CAFILE [sni NAME]' or 'insecure [sni NAME]'")
                }
                if let name = app.upstreamTLS?.serverName,
                   name.utf8.count > 253 || name.isEmpty || !name.utf8.allSatisfy({ $0 == 0x2D || $0 == 0x2E || (0x30...0x39).contains($0) || (0x61...0x7A).contains($0) }) {
                    throw d.error("upstream_tls: sni '\(name)' is not a host name")
                }
            case "verify": app.verifyPaths = try d.values().map { (v) throws(ConfigError) in try d.path(v) }
            case "blue": app.blue = try d.servers()
            case "green": app.green = try d.servers()
            default: throw d.error("unknown directive '\(d.name)' in app '\(name)'")
            }
        }
        guard let hostLine else { throw opener.error("app '\(name)': missing 'host'") }
        if app.blue.isEmpty { throw opener.error("app '\(name)': missing 'blue'") }
        if app.green.isEmpty { throw opener.error("app '\(name)': missing 'green'") }
        try claimRoutes(app, hostLine: hostLine)
        return app
    }

    /// Two apps answering the same host and prefix would make routing ambiguous.
    private mutating func claimRoutes(_ app: AppConfig, hostLine: Directive) throws(ConfigError) {
        for host in app.hosts {
            let route = Route(host: host, prefix: app.pathPrefix)
            if let owner = routeOwners[route] {
                if owner.name == app.name {
                    throw hostLine.error("host: '\(host)' is listed twice")
                }
                let pathText = app.pathPrefix.map { "path '\($0)'" } ?? "no path"
                throw hostLine.error("host: '\(host)' with \(pathText) is already routed by app '\(owner.name)' (line \(owner.line))")
            }
            routeOwners[route] = app
        }
    }

    private func finished() throws(ConfigError) -> Config {
        if config.listen.isEmpty {
            throw ConfigError(file: file, line: lastLine, message: "no 'listen' directive (at least one is required)")
        }
        if config.apps.isEmpty {
            throw ConfigError(file: file, line: lastLine, message: "no 'app' block (at least one is required)")
        }
        if let listener = config.listen.first(where: \.tls), config.tls == nil {
            throw ConfigError(file: file, line: listener.line, message: "listen \(listener) tls: no 'tls { }' block with its certificates")
        }
        if let tls = config.tls, !config.listen.contains(where: \.tls) {
            throw ConfigError(file: file, line: tls.line, message: "tls: no 'listen ADDRESS tls' uses this block")
        }
        // A pool smaller than min_healthy could never be ready: every switch to it refused.
        let minHealthy = config.health.minHealthy
        for app in config.apps {
            for color in Color.allCases where app.servers(color).count < minHealthy {
                throw ConfigError(file: file, line: minHealthyLine ?? appLines[app.name] ?? lastLine,
                                  message: "min_healthy \(minHealthy) is more than app \(app.name)'s \(app.servers(color).count) \(color.rawValue) server(s): \(color.rawValue) could never be ready")
            }
        }
        return config
    }
}

// MARK: - Values

private extension Directive {
    func oneValue() throws(ConfigError) -> Substring {
        guard let value = args.first else { throw error("\(name): missing value") }
        if args.count > 1 { throw error("\(name): unexpected extra value '\(args[1])'") }
        return value
    }

    func values() throws(ConfigError) -> [Substring] {
        if args.isEmpty { throw error("\(name): missing value") }
        return args
    }

    func noValues() throws(ConfigError) {
        if let extra = args.first { throw error("\(name): unexpected extra value '\(extra)'") }
    }

    /// A percentage (`0.5%`) or a fraction (`0.005`), between 0 and 100 %.
    func rate() throws(ConfigError) -> Double {
        let value = try oneValue()
        let isPercent = value.hasSuffix("%")
        guard let number = Double(isPercent ? value.dropLast() : value), number.isFinite, number >= 0 else {
            throw error("\(name): '\(value)' is not a rate (a percentage such as 0.5% or a fraction such as 0.005)")
        }
        let fraction = isPercent ? number / 100 : number
        guard fraction <= 1 else { throw error("\(name): '\(value)' is more than 100%") }
        return fraction
    }

    /// A ratio of at least 1 (`1.1`: 10 % slower at most).
    func ratio() throws(ConfigError) -> Double {
        let value = try oneValue()
        guard let number = Double(value), number.isFinite, number >= 1 else {
            throw error("\(name): '\(value)' is not a ratio of 1 or more (e.g. 1.1)")
        }
        return number
    }

    func integer(_ range: ClosedRange<Int>) throws(ConfigError) -> Int {
        let value = try oneValue()
        guard value.allSatisfy(\.isASCIIDigit), !value.isEmpty else {
            throw error("\(name): '\(value)' is not a number")
        }
        guard let number = Int(value), range.contains(number) else {
            throw error("\(name): \(value) is out of range (\(Self.describe(range)))")
        }
        return number
    }

    private static func describe(_ range: ClosedRange<Int>) -> String {
        range.upperBound == Int.max ? "at least \(range.lowerBound)" : "\(range.lowerBound)..\(range.upperBound)"
    }

    /// A duration in milliseconds, at most `maxMs` (24 h unless said otherwise): every timeout
    /// and interval is added to a clock, and a bound here is what keeps that arithmetic far from
    /// overflow whatever the file says.
    func duration(allowZero: Bool = false, maxMs: Int = ConfigParser.maxTimeoutMs) throws(ConfigError) -> Int {
        let value = try oneValue()
        guard let ms = ConfigParser.parseDuration(value) else {
            if value.allSatisfy(\.isASCIIDigit) {
                throw error("\(name): '\(value)' needs a unit (ms, s, m or h), e.g. 500ms or 2s")
            }
            if value.prefix(while: \.isASCIIDigit).count > 0, ["ms", "s", "m", "h"].contains(value.drop(while: \.isASCIIDigit)) {
                throw error("\(name): '\(value)' is longer than \(ConfigParser.describeDuration(maxMs)), the longest accepted")
            }
            throw error("\(name): '\(value)' is not a duration (a number with ms, s, m or h, e.g. 500ms or 2s)")
        }
        if ms == 0 && !allowZero { throw error("\(name): must be greater than 0") }
        if ms > maxMs { throw error("\(name): '\(value)' is longer than \(ConfigParser.describeDuration(maxMs)), the longest accepted") }
        return ms
    }

    func size(_ range: ClosedRange<Int>, rangeText: String) throws(ConfigError) -> Int {
        try size(try oneValue(), range, rangeText: rangeText)
    }

    private func size(_ value: Substring, _ range: ClosedRange<Int>, rangeText: String) throws(ConfigError) -> Int {
        guard let bytes = ConfigParser.parseSize(value) else {
            throw error("\(name): '\(value)' is not a size (bytes, or a number with k, m or g, e.g. 16k)")
        }
        guard range.contains(bytes) else { throw error("\(name): \(value) is out of range (\(rangeText))") }
        return bytes
    }

    /// `off` (nil) or a size in bytes; 0 is allowed and means "no body".
    func optionalSize() throws(ConfigError) -> Int? {
        let value = try oneValue()
        return value == "off" ? nil : try size(value, 0...Int.max, rangeText: "at least 0")
    }

    func workers() throws(ConfigError) -> Int? {
        let value = try oneValue()
        if value == "auto" { return nil }
        guard value.allSatisfy(\.isASCIIDigit), let count = Int(value), (1...256).contains(count) else {
            throw error("workers: expected 'auto' or a number 1..256, got '\(value)'")
        }
        return count
    }

    func fileMode() throws(ConfigError) -> UInt32 {
        let value = try oneValue()
        guard value.allSatisfy({ ("0"..."7").contains($0) }), let mode = UInt32(value, radix: 8), mode <= 0o777 else {
            throw error("\(name): '\(value)' is not an octal file mode 0000..0777 (e.g. 0600)")
        }
        return mode
    }

    func color() throws(ConfigError) -> Color {
        let value = try oneValue()
        guard let color = Color(rawValue: String(value)) else {
            throw error("\(name): expected blue or green, got '\(value)'")
        }
        return color
    }

    func path(_ value: Substring) throws(ConfigError) -> String {
        guard value.hasPrefix("/") else { throw error("\(name): '\(value)' must start with '/'") }
        return String(value)
    }

    /// A file path, or `off` (nil). Relative paths are resolved against `base`.
    func optionalPath(_ base: String) throws(ConfigError) -> String? {
        let value = try oneValue()
        return value == "off" ? nil : Self.resolve(value, base)
    }

    func accessLog(_ base: String) throws(ConfigError) -> AccessLogTarget {
        let value = try oneValue()
        switch value {
        case "off": return .off
        case "stdout": return .stdout
        default: return .file(Self.resolve(value, base))
        }
    }

    static func resolve(_ value: Substring, _ base: String) -> String {
        value.hasPrefix("/") ? String(value) : ConfigParser.join(base, String(value))
    }

    func metricsListen() throws(ConfigError) -> Endpoint? {
        let value = try oneValue()
        return value == "off" ? nil : try endpoint(value, wildcard: true, portZero: true)
    }

    /// `sticky cookie NAME [max_age DURATION]` | `sticky header NAME` | `sticky ip` | `sticky none`.
    func sticky() throws(ConfigError) -> StickyRule {
        guard let mode = args.first else { throw error("sticky: missing mode (cookie NAME, header NAME, ip or none)") }
        let rest = args.dropFirst()
        func noMore(_ words: ArraySlice<Substring>) throws(ConfigError) {
            if let extra = words.first { throw error("sticky: unexpected extra value '\(extra)'") }
        }
        func name(_ what: String) throws(ConfigError) -> String {
            guard let name = rest.first else { throw error("sticky \(mode): missing the \(what) name") }
            guard PinRule.isToken(name) else { throw error("sticky \(mode): '\(name)' is not a valid \(what) name") }
            return String(name)
        }
        switch mode {
        case "none":
            try noMore(rest)
            return .none
        case "ip":
            try noMore(rest)
            return .clientAddress
        case "header":
            let header = try name("header")
            try noMore(rest.dropFirst())
            return .header(name: header.lowercased())
        case "cookie":
            let cookie = try name("cookie")
            var options = rest.dropFirst()
            var maxAge = StickyRule.defaultCookieMaxAgeSeconds
            if let option = options.first {
                guard option == "max_age", options.count >= 2 else {
                    throw error("sticky cookie: expected 'max_age DURATION' after the name, got '\(option)'")
                }
                let text = options[options.startIndex + 1]
                guard let ms = ConfigParser.parseDuration(text), ms >= 1_000, ms <= 400 * 86_400_000 else {
                    throw error("sticky cookie: max_age '\(text)' must be a duration from 1s to 9600h (400 days, the longest a browser keeps a cookie), e.g. 24h")
                }
                maxAge = ms / 1_000
                options = options.dropFirst(2)
            }
            try noMore(options)
            return .cookie(name: cookie, maxAgeSeconds: maxAge)
        default:
            throw error("sticky: unknown mode '\(mode)' (expected cookie NAME, header NAME, ip or none)")
        }
    }

    /// `pin header|cookie NAME VALUE[,VALUE…] blue|green`
    func pin() throws(ConfigError) -> PinRule {
        guard args.count == 4 else { throw error("pin: expected 'pin header|cookie NAME VALUE[,VALUE…] blue|green'") }
        guard let source = PinSource(rawValue: String(args[0])) else {
            throw error("pin: '\(args[0])' is not header or cookie")
        }
        guard PinRule.isToken(args[1]) else { throw error("pin: '\(args[1])' is not a valid \(source.rawValue) name") }
        let values = args[2].split(separator: ",", omittingEmptySubsequences: false)
        for value in values where !PinRule.isValidValue(value) {
            throw error("pin: bad value '\(value)' (1 to \(PinRule.maxValueBytes) visible characters, no ',', ';', '\"' or '\\')")
        }
        guard Set(values).count == values.count else { throw error("pin: a value is listed twice") }
        guard let color = Color(rawValue: String(args[3])) else { throw error("pin: expected blue or green, got '\(args[3])'") }
        return PinRule(source: source, name: String(args[1]), values: values.map(String.init), color: color, line: line)
    }

    /// `notify exec PATH` or `notify webhook http://HOST:PORT/PATH`.
    func notifyTarget(_ base: String) throws(ConfigError) -> NotifyTarget {
        guard args.count == 2 else { throw error("notify: expected 'notify exec PATH' or 'notify webhook http://HOST:PORT/PATH'") }
        switch args[0] {
        case "exec":
            let path = args[1]
            return .exec(path: path.hasPrefix("/") ? String(path) : ConfigParser.join(base, String(path)))
        case "webhook":
            let url = args[1]
            guard url.hasPrefix("http://") else {
                throw error("notify: webhook '\(url)' must be an http:// URL (http://HOST:PORT/PATH)")
            }
            let rest = url.dropFirst("http://".count)
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[..<slash]
            let path = slash == rest.endIndex ? "/" : String(rest[slash...])
            let endpoint = try self.endpoint(authority, wildcard: false, portZero: false)
            guard path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw error("notify: webhook path '\(path)' is not a valid path") }
            return .webhook(host: endpoint.host, port: endpoint.port, path: path)
        default:
            throw error("notify: '\(args[0])' is not exec or webhook")
        }
    }

    /// `on` or `off`.
    func onOff() throws(ConfigError) -> Bool {
        switch try oneValue() {
        case "on": return true
        case "off": return false
        case let value: throw error("\(name): expected on or off, got '\(value)'")
        }
    }

    /// A percentage 0…100 with at most two decimals (`5`, `12.5`, `0.25`), as basis points.
    func percentBasisPoints() throws(ConfigError) -> Int {
        let value = try oneValue()
        let text = value.hasSuffix("%") ? value.dropLast() : value
        guard let basisPoints = ConfigParser.percentBasisPoints(text) else {
            throw error("\(name): '\(value)' is not a percentage from 0 to 100 with at most two decimals")
        }
        return basisPoints
    }

    func appName(what: String = "app") throws(ConfigError) -> String {
        let value = try oneValue()
        let allowed = value.allSatisfy { $0.isASCIILetter || $0.isASCIIDigit || "-_.".contains($0) }
        guard allowed else { throw error("\(what): bad name '\(value)' (use letters, digits, '-', '_' and '.')") }
        return String(value)
    }

    /// Lowercased host names, or `*` for any host.
    func hosts() throws(ConfigError) -> [String] {
        try values().map { (value) throws(ConfigError) in
            guard value == "*" || HostSyntax.isDNSName(value) else {
                throw error("host: bad host name '\(value)'")
            }
            return value.lowercased()
        }
    }

    func servers() throws(ConfigError) -> [Endpoint] {
        try values().map { (value) throws(ConfigError) in try endpoint(value, wildcard: false, portZero: false) }
    }

    /// `host:port`, `[IPv6]:port`, or (for listening) `*:port` meaning 0.0.0.0.
    func endpoint(_ value: Substring, wildcard: Bool, portZero: Bool) throws(ConfigError) -> Endpoint {
        let expected = wildcard ? "host:port, [IPv6]:port or *:port" : "host:port or [IPv6]:port"
        guard let (hostText, portText) = HostSyntax.splitHostPort(value) else {
            throw error("\(name): '\(value)' is not an address (expected \(expected))")
        }
        let host: String
        if wildcard && hostText == "*" {
            host = "0.0.0.0"
        } else if let valid = HostSyntax.validHost(hostText) {
            host = valid
        } else {
            throw error("\(name): bad host '\(hostText)' in '\(value)'")
        }
        let lowest = portZero ? 0 : 1
        guard portText.allSatisfy(\.isASCIIDigit), let port = Int(portText), (lowest...65535).contains(port) else {
            throw error("\(name): bad port '\(portText)' in '\(value)' (\(lowest)..65535)")
        }
        return Endpoint(host: host, port: UInt16(port), line: line)
    }
}

/// Syntax checks for host names and addresses. Nothing here resolves names.
private enum HostSyntax {
    /// Splits `host:port` or `[v6]:port`; brackets are removed from the host.
    static func splitHostPort(_ value: Substring) -> (host: Substring, port: Substring)? {
        if value.hasPrefix("[") {
            guard let close = value.firstIndex(of: "]") else { return nil }
            let rest = value[value.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            return (value[value.index(after: value.startIndex)..<close], rest.dropFirst())
        }
        guard let colon = value.lastIndex(of: ":") else { return nil }
        let host = value[..<colon]
        // A second colon means an unbracketed IPv6 address: its port would be ambiguous.
        guard !host.isEmpty, !host.contains(":") else { return nil }
        return (host, value[value.index(after: colon)...])
    }

    /// The stored form of a host (lowercased), or nil when it is malformed.
    static func validHost(_ host: Substring) -> String? {
        let text = host.lowercased()
        // With a colon it can only be an IPv6 literal; all digits and dots, only an IPv4 one.
        if text.contains(":") || text.allSatisfy({ $0 == "." || $0.isASCIIDigit }) {
            return SocketAddress(numericHost: text, port: 0) != nil ? text : nil
        }
        return isDNSName(host) ? text : nil
    }

    static func isDNSName(_ name: Substring) -> Bool {
        guard !name.isEmpty, name.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.allSatisfy { $0.isASCIILetter || $0.isASCIIDigit || $0 == "-" || $0 == "_" }
        }
    }

}

private extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
    var isASCIILetter: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}

// MARK: - Plans

extension Reader {
    /// `plan NAME { step …; pause_if …; rollback_if …; min_requests N; false_alarm X; watch D }`
    mutating func addPlan(_ d: Directive, _ body: ArraySlice<Directive>) throws(ConfigError) {
        let name = try d.appName(what: "plan")
        if let first = config.plans.first(where: { $0.name == name }) {
            throw d.error("duplicate plan '\(name)' (first at \(first.file):\(first.line))")
        }
        var plan = PlanConfig(name: name, file: d.file, line: d.line)
        var once = OnceTracker()
        var weight = 0
        for line in body {
            switch line.name {
            case "step":
                let step = try line.planStep()
                if let next = step.weight {
                    guard next >= weight else {
                        throw line.error("step: weight \(Double(next) / 100)% is below the previous step's \(Double(weight) / 100)% (a plan only moves forward; rollback is its own decision)")
                    }
                    weight = next
                }
                plan.steps.append(step)
            case "pause_if": plan.pauseIf.append(try line.planCondition())
            case "rollback_if": plan.rollbackIf.append(try line.planCondition())
            case "min_requests":
                try once.check(line)
                plan.minRequests = try line.integer(1...1_000_000_000)
            case "false_alarm":
                try once.check(line)
                plan.falseAlarm = try line.falseAlarm()
            case "watch":
                try once.check(line)
                plan.watchMs = try line.duration(allowZero: true, maxMs: ConfigParser.maxDurationMs)
            default:
                throw line.error("unknown directive '\(line.name)' in plan '\(name)' (step, pause_if, rollback_if, min_requests, false_alarm, watch)")
            }
        }
        guard !plan.steps.isEmpty else { throw d.error("plan '\(name)': no 'step'") }
        guard weight == TrafficShare.full else {
            throw d.error("plan '\(name)': the last step must reach weight 100 (it reaches \(Double(weight) / 100)%)")
        }
        config.plans.append(plan)
    }
}

/// 100 % in basis points.
private enum TrafficShare {
    static let full = 10_000
}

private extension Directive {
    /// `step [weight P] [pin header|cookie NAME V1,V2] [mirror P] [hold D]`, each at most once.
    func planStep() throws(ConfigError) -> PlanStep {
        var step = PlanStep(line: line)
        var seen: Set<Substring> = []
        var index = 0
        func value(_ key: Substring) throws(ConfigError) -> Substring {
            guard index + 1 < args.count else { throw error("step: '\(key)' needs a value") }
            index += 1
            return args[index]
        }
        while index < args.count {
            let key = args[index]
            guard seen.insert(key).inserted else { throw error("step: '\(key)' is given twice") }
            switch key {
            case "weight":
                let text = try value(key)
                guard let basisPoints = ConfigParser.percentBasisPoints(text.hasSuffix("%") ? text.dropLast() : text) else {
                    throw error("step: weight '\(text)' is not a percentage from 0 to 100 with at most two decimals")
                }
                step.weight = basisPoints
            case "mirror":
                let text = try value(key)
                guard let basisPoints = ConfigParser.percentBasisPoints(text.hasSuffix("%") ? text.dropLast() : text) else {
                    throw error("step: mirror '\(text)' is not a percentage from 0 to 100 with at most two decimals")
                }
                step.mirror = basisPoints
            case "hold":
                let text = try value(key)
                guard let ms = ConfigParser.parseDuration(text), ms <= ConfigParser.maxDurationMs else {
                    throw error("step: hold '\(text)' is not a duration (a number with ms, s, m or h, e.g. 15m)")
                }
                step.holdMs = ms
            case "pin":
                guard index + 3 < args.count, let source = PinSource(rawValue: String(args[index + 1])) else {
                    throw error("step: expected 'pin header|cookie NAME VALUE[,VALUE…]'")
                }
                let name = args[index + 2]
                guard PinRule.isToken(name) else { throw error("step: '\(name)' is not a valid \(source.rawValue) name") }
                let values = args[index + 3].split(separator: ",", omittingEmptySubsequences: false)
                for value in values where !PinRule.isValidValue(value) {
                    throw error("step: bad pin value '\(value)' (1 to \(PinRule.maxValueBytes) visible characters, no ',', ';', '\"' or '\\')")
                }
                // The color is the release's candidate, known when the plan starts.
                step.pins.append(PinRule(source: source, name: String(name), values: values.map(String.init), color: .green, line: line))
                index += 3
            default:
                throw error("step: unknown '\(key)' (weight, pin, mirror, hold)")
            }
            index += 1
        }
        guard step.weight != nil || !step.pins.isEmpty || step.mirror != nil else {
            throw error("step: sets nothing (give weight, pin or mirror)")
        }
        return step
    }

    /// `false_alarm P`: a sequential test's false-alarm probability, above 0 and at most 10 %.
    func falseAlarm() throws(ConfigError) -> Double {
        let rate = try rate()
        guard rate > 0 && rate <= 0.1 else { throw error("false_alarm: must be above 0 and at most 10%") }
        return rate
    }

    /// The condition of a `pause_if` or `rollback_if` line.
    func planCondition() throws(ConfigError) -> PlanCondition {
        guard let kind = args.first else { throw error("\(name): missing condition") }
        let rest = Array(args.dropFirst())
        func comparison(_ what: String) throws(ConfigError) -> Substring {
            guard rest.count >= 2, rest[0] == ">" else { throw error("\(name): expected '\(kind) > \(what)'") }
            return rest[1]
        }
        func rate(_ text: Substring) throws(ConfigError) -> Double {
            let isPercent = text.hasSuffix("%")
            guard let number = Double(isPercent ? text.dropLast() : text), number.isFinite, number > 0 else {
                throw error("\(name): '\(text)' is not a rate above 0 (a percentage such as 1% or a fraction such as 0.01)")
            }
            let fraction = isPercent ? number / 100 : number
            guard fraction < 1 else { throw error("\(name): '\(text)' must be below 100%") }
            return fraction
        }
        func noMore(_ count: Int) throws(ConfigError) {
            if rest.count > count { throw error("\(name): unexpected '\(rest[count])'") }
        }
        switch kind {
        case "error_rate":
            let limit = try rate(try comparison("1%"))
            try noMore(2)
            return .errorRate(above: limit)
        case "shadow_diff_rate":
            let limit = try rate(try comparison("1%"))
            try noMore(2)
            return .shadowDiffRate(above: limit)
        case "p95":
            let text = try comparison("500ms")
            guard let ms = ConfigParser.parseDuration(text), ms > 0, ms <= ConfigParser.maxDurationMs else {
                throw error("\(name): '\(text)' is not a duration above 0 (e.g. 500ms)")
            }
            try noMore(2)
            return .p95(aboveMs: ms)
        case "error_regression":
            var excess = PlanConfig.defaultMinExcess
            if !rest.isEmpty {
                guard rest.count == 2, rest[0] == "min_excess" else {
                    throw error("\(name): expected 'error_regression [min_excess PERCENT]'")
                }
                excess = try rate(rest[1])
            }
            return .errorRegression(minExcess: excess)
        case "health_failed":
            try noMore(0)
            return .healthFailed
        case "p95_regression":
            guard let first = rest.first, let ratio = Double(first), ratio.isFinite, ratio >= 1 else {
                throw error("\(name): expected 'p95_regression RATIO [slack DURATION]' with a ratio of 1 or more (e.g. 1.2)")
            }
            var slack = 0
            if rest.count > 1 {
                guard rest[1] == "slack", rest.count == 3, let ms = ConfigParser.parseDuration(rest[2]), ms <= ConfigParser.maxDurationMs else {
                    throw error("\(name): expected 'p95_regression RATIO [slack DURATION]'")
                }
                slack = ms
            }
            return .p95Regression(ratio: ratio, slackMs: slack)
        case "burn_rate":
            // burn_rate > 14.4 budget 0.1% window 1h [min_errors 5]
            guard rest.count >= 6, rest[0] == ">", let burn = Double(rest[1]), burn.isFinite, burn > 0,
                  rest[2] == "budget", rest[4] == "window" else {
                throw error("\(name): expected 'burn_rate > RATE budget PERCENT window DURATION [min_errors N]'")
            }
            let budget = try rate(rest[3])
            guard let window = ConfigParser.parseDuration(rest[5]), window >= 12_000, window <= ConfigParser.maxDurationMs else {
                throw error("\(name): window '\(rest[5])' must be a duration of at least 12s (its short window is 1/12 of it)")
            }
            var minErrors = 5
            if rest.count > 6 {
                guard rest.count == 8, rest[6] == "min_errors", let count = Int(rest[7]), count >= 1 else {
                    throw error("\(name): expected 'min_errors N' (N ≥ 1) after the window")
                }
                minErrors = count
            }
            return .burnRate(rate: burn, budget: budget, windowMs: window, minErrors: minErrors)
        default:
            throw error("\(name): unknown condition '\(kind)' (error_rate, error_regression, p95, p95_regression, burn_rate, health_failed, shadow_diff_rate)")
        }
    }
}

extension Reader {
    /// `watch { rollback_if …; min_requests N; false_alarm P }`
    func readWatch(_ body: ArraySlice<Directive>) throws(ConfigError) -> WatchConfig {
        var watch = WatchConfig()
        var conditions: [PlanCondition] = []
        var once = OnceTracker()
        for d in body {
            switch d.name {
            case "rollback_if": conditions.append(try d.planCondition())
            case "min_requests":
                try once.check(d)
                watch.minRequests = try d.integer(1...1_000_000_000)
            case "false_alarm":
                try once.check(d)
                watch.falseAlarm = try d.falseAlarm()
            default:
                throw d.error("unknown directive '\(d.name)' in watch block (rollback_if, min_requests, false_alarm)")
            }
        }
        if !conditions.isEmpty { watch.rollbackIf = conditions }
        return watch
    }
}
