import CutoverRouting
import CutoverConfig
import CutoverControl
import CutoverDemo
import CutoverRuntime
import CutoverSystem
import CutoverTLS
import Foundation
import Glibc
import Synchronization

// The `cutover` command line. Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 cannot reach
// the admin socket.

let version = "0.2.0"

let usage = """
    cutover \(version) — an edge proxy for blue/green releases

    Running:
      cutover run   [-c FILE] [--reset-state]   run the proxy (default config: conf/cutover.conf)
      cutover check [-c FILE]                   validate a config: exit 0, or 1 with FILE:LINE: message
      cutover demo  [--listen ADDR] [--blue-port N] [--green-port N] [--metrics-listen ADDR]
                    [--preview-listen ADDR|off] [--tls [--tls-listen ADDR]]
                                                the proxy on its embedded default with built-in blue
                                                (:8091) and green (:8092) upstreams, an admin socket,
                                                an access log, /metrics on 127.0.0.1:9108, the
                                                preview listener on 127.0.0.1:8081 and, with --tls,
                                                HTTPS on 127.0.0.1:8443 (a self-signed certificate)
    Operating a running proxy (over its admin socket):
      cutover status | health | history [n]
      cutover switch <blue|green> [--watch DURATION] [--force] [--reason TEXT]
      cutover rollback [--force] [--reason TEXT]   (during a canary: every app back to the stable color)
      cutover weight <blue|green> <percent> [--app NAME] [--force] [--reason TEXT]
                                                the color's share (0-100, two decimals); 100 everywhere = switch
      cutover pin <app|*> header|cookie NAME VALUE[,VALUE…] <blue|green> [--reason TEXT]
      cutover unpin <app|*> [header|cookie NAME [VALUE]] [--reason TEXT]
      cutover pins
      cutover release start <plan> [--force] [--reason TEXT] | status | report | pause | resume | promote | abort [--reason TEXT]
                                                run a release plan (conf/plans): waves, holds, automatic rollback
      cutover mirror <percent> [--app NAME] [--reason TEXT]   copy requests to the candidate, compare (0 = off)
      cutover verify <blue|green>
      cutover drain <app> <host:port> | undrain <app> <host:port>
      cutover reload | reopen
      cutover upgrade [--binary PATH]            hot upgrade: the new binary takes the sockets, this process
                                                drains (SIGUSR2 does the same with the installed binary)
      cutover stats [10s|1m|5m|total]           per app and color: rps, 5xx, latency percentiles
      cutover top [--interval DURATION] [--once]  a full-screen view, refreshed every second (keys: s switch,
                                                r rollback, p/u pause/resume a release, w weight, q quit);
                                                --once prints one plain frame
      cutover overview [seconds]                everything top and the status page show (JSON with --json)
        options: -c FILE (its admin_socket) or -s SOCKET; --json prints the raw reply
    Audit trail:
      cutover audit verify [-c FILE]            check the audit log's hash chain
    cutover --help | --version

    Signals: SIGTERM/SIGINT drain in-flight requests (up to timeouts.drain) and exit 0;
    SIGHUP does what `cutover reload` does; SIGUSR1 reopens the access log (logrotate);
    SIGUSR2 does what `cutover upgrade` does.
    Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 cannot reach the admin socket.
    """

struct UsageError: Error { let message: String }

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(code)
}

/// Command-line words split into options (with or without values) and positional words.
struct Arguments {
    var values: [String: String] = [:]
    var flags: Set<String> = []
    var positional: [String] = []

    init(_ words: [String], valueOptions: Set<String>, flagOptions: Set<String>) throws {
        var index = 0
        while index < words.count {
            let word = words[index]
            if valueOptions.contains(word) {
                guard index + 1 < words.count else { throw UsageError(message: "\(word) needs a value") }
                values[word] = words[index + 1]
                index += 2
            } else if flagOptions.contains(word) {
                flags.insert(word)
                index += 1
            } else if word.hasPrefix("-") && word.count > 1 {
                throw UsageError(message: "unknown option '\(word)'")
            } else {
                positional.append(word)
                index += 1
            }
        }
    }

    func value(_ names: String..., default fallback: String? = nil) -> String? {
        names.lazy.compactMap { values[$0] }.first ?? fallback
    }
}

func loadConfig(_ path: String) -> Config {
    do {
        return try ConfigParser.load(path: path)
    } catch {
        fail(error.description, code: 1)
    }
}

/// Blocks the signals the main thread waits for; called before any thread starts so every
/// thread inherits the mask and only `sigwait` here sees them.
func blockSignals() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2] { sigaddset(&set, signal) }
    pthread_sigmask(SIG_BLOCK, &set, nil)
    return set
}

/// Runs until SIGTERM/SIGINT; SIGHUP reloads; SIGUSR1 reopens the access log. Under systemd
/// (`Type=notify`) it says READY=1 once listening with every server's health known,
/// RELOADING=1/READY=1 around a reload, STOPPING=1 when the drain begins, and keeps STATUS= to
/// the active color.
func serve(_ runtime: CutoverRuntime, logger: Logger, signals: sigset_t, extraStop: () -> Void = {}) -> Never {
    let environment = ProcessInfo.processInfo.environment
    let service = ServiceNotify(environment: environment)
    // Started by a hot upgrade: report on this pipe once serving (or why not).
    let upgradeReport = environment[InheritedSockets.readyVariable].flatMap { Int32($0) }
    let upgradeGo = environment[InheritedSockets.goVariable].flatMap { Int32($0) }
    // Until the old process confirms it stopped, this one serves but changes nothing.
    if upgradeGo != nil { runtime.controlPlane.awaitHandover() }
    if let encoded = environment[InheritedSockets.variable], let inherited = InheritedSockets(encoded: encoded) {
        runtime.inherited = inherited
    }
    runtime.version = version
    let handedOver = Atomic<Bool>(false)
    runtime.onHandedOver = { pid in
        // systemd follows the new process from now on; this one drains and exits.
        handedOver.store(true, ordering: .releasing)
        service.send("MAINPID=\(pid)", "STATUS=handed over to pid \(pid) (hot upgrade); draining")
        // The drain starts once the `upgrade` reply is on its way (it is written right after this
        // returns); the data plane stopped accepting already.
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(300)) {
            kill(ProcessIdentity.processID, SIGTERM)
        }
    }
    do {
        try runtime.start()
    } catch {
        if let upgradeReport { Successor.report(upgradeReport, "error \(error)") }
        service.send("STATUS=failed to start: \(error)")
        fail("cutover: \(error)", code: 1)
    }
    if let upgradeReport {
        let health = runtime.config.health
        _ = runtime.controlPlane.waitUntilHealthKnown(timeoutMs: health.intervalMs + health.timeoutMs + 2_000)
        Successor.report(upgradeReport, "ready \(ProcessIdentity.processID) \(version)")
        if let upgradeGo {
            let controlPlane = runtime.controlPlane
            Thread.detachNewThread {
                Successor.awaitGo(upgradeGo)
                controlPlane.handoverConfirmed()
                logger.log(.info, "upgrade: the previous process handed over; changes are accepted")
            }
        }
    }
    var status = ""
    func updateStatus(_ extra: String...) {
        let now = runtime.controlPlane.serviceStatus
        guard now != status || !extra.isEmpty else { return }
        status = now
        if let problem = service.send(lines: extra + ["STATUS=\(now)"]) { logger.log(.warning, "sd_notify: \(problem)") }
    }
    if service.enabled && upgradeReport == nil {
        let health = runtime.config.health
        if !runtime.controlPlane.waitUntilHealthKnown(timeoutMs: health.intervalMs + health.timeoutMs + 2_000) {
            logger.log(.warning, "sd_notify: READY=1 before every server's first check ended")
        }
        updateStatus("READY=1", "MAINPID=\(ProcessIdentity.processID)")
    }
    var waitSet = signals
    while true {
        var received: Int32 = 0
        if service.enabled {
            // A second at most between looks at the status line.
            var timeout = timespec(tv_sec: 1, tv_nsec: 0)
            received = sigtimedwait(&waitSet, nil, &timeout)
            if received < 0 {
                updateStatus()
                continue
            }
        } else {
            sigwait(&waitSet, &received)
        }
        if received == SIGUSR2 {
            // The same as `cutover upgrade`: the binary this process was started from.
            let reply = runtime.upgrade(binary: nil, actor: .current())
            logger.log(reply["ok"]?.boolValue == true ? .info : .error,
                       "SIGUSR2: \(reply["ok"]?.boolValue == true ? "upgraded to pid \(reply["new_pid"]?.intValue ?? 0)" : reply["error"]?.stringValue ?? "upgrade failed")")
            continue
        }
        if received == SIGHUP {
            service.send("RELOADING=1", "MONOTONIC_USEC=\(monotonicNanoseconds() / 1_000)")
            if case .failed = runtime.controlPlane.reload(actor: .current()) {
                logger.log(.warning, "SIGHUP: reload failed; the running configuration is unchanged")
            }
            updateStatus("READY=1")
            continue
        }
        if received == SIGUSR1 {
            // logrotate moved the access log: write to a fresh file at the configured path.
            if let problem = runtime.server.accessLog?.reopen() {
                logger.log(.warning, "SIGUSR1: \(problem)")
            } else {
                logger.log(.info, "SIGUSR1: access log reopened")
            }
            continue
        }
        if !handedOver.load(ordering: .acquiring) {
            service.send("STOPPING=1", "STATUS=draining (up to \(runtime.config.timeouts.drainMs) ms)")
        }
        logger.log(.info, "signal \(received): draining (up to \(runtime.config.timeouts.drainMs) ms)")
        runtime.stop()
        extraStop()
        exit(0)
    }
}

func makeRuntime(config: Config, path: String?, logger: Logger, resetState: Bool) -> CutoverRuntime {
    do {
        return try CutoverRuntime(config: config, configPath: path, logger: logger, resetState: resetState)
    } catch let error as StateFileError {
        fail("cutover: \(error.description)", code: 1)
    } catch let error as ConfigError {
        fail(error.description, code: 1)
    } catch {
        fail("cutover: \(error)", code: 1)
    }
}

/// The admin command line sent for a CLI invocation (`switch green --reason "x"` →
/// `switch green reason x`).
func adminLine(_ command: String, _ arguments: Arguments) -> String {
    var words = [command] + arguments.positional
    if let app = arguments.value("--app") { words += ["app", app] }
    if let watch = arguments.value("--watch") { words += ["watch", watch] }
    if let binary = arguments.value("--binary") { words += ["binary", Successor.absolutePath(binary)] }
    if arguments.flags.contains("--force") { words.append("force") }
    if let reason = arguments.value("--reason") {
        words.append("reason")
        words.append(reason.replacingOccurrences(of: "\n", with: " "))
    }
    return words.joined(separator: " ")
}

/// The admin socket: `-s SOCKET`, else the `admin_socket` of `-c FILE` (default conf/cutover.conf).
func adminSocket(_ arguments: Arguments) -> String {
    if let socket = arguments.value("-s", "--socket") { return socket }
    let path = arguments.value("-c", "--config", default: "conf/cutover.conf")!
    let config = loadConfig(path)
    guard let socket = config.adminSocket else { fail("cutover: \(path) has no admin_socket", code: 3) }
    return socket
}

let adminCommands: Set<String> = ["status", "health", "history", "switch", "rollback", "verify", "drain", "undrain", "reload",
                                    "stats", "reopen", "weight", "pin", "unpin", "pins", "mirror", "release", "overview", "upgrade"]

let words = Array(CommandLine.arguments.dropFirst())
guard let command = words.first else { fail(usage, code: 2) }
let rest = Array(words.dropFirst())

do {
    switch command {
    case "--help", "-h", "help":
        print(usage)
    case "--version", "-V":
        print("cutover \(version)")
    case "check":
        let arguments = try Arguments(rest, valueOptions: ["-c", "--config"], flagOptions: [])
        guard arguments.positional.isEmpty else { throw UsageError(message: "unexpected '\(arguments.positional[0])'") }
        let path = arguments.value("-c", "--config", default: "conf/cutover.conf")!
        let config = loadConfig(path)
        var certificates = ""
        do {
            _ = try RoutingTable(config: config, activeColor: config.initialColor, registry: ServerRegistry())
            // Every certificate and key is loaded as `run` would: a missing file, a key that does
            // not match, an expired certificate or a chain that does not parse is FILE:LINE.
            if let settings = config.tls {
                let context = try TLSServerContext(settings: settings, configPath: config.path)
                for warning in context.warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
                certificates = ", \(context.certificates.count) certificate(s) (\(context.certificates.flatMap(\.names).joined(separator: " ")))"
            }
        } catch {
            fail(error.description, code: 1)
        }
        let servers = config.apps.reduce(0) { $0 + $1.blue.count + $1.green.count }
        print("\(path): ok — \(config.listen.count) listener(s), \(config.apps.count) app(s), \(servers) server(s), initial color \(config.initialColor.rawValue)\(certificates)")
    case "run":
        let arguments = try Arguments(rest, valueOptions: ["-c", "--config"], flagOptions: ["--reset-state"])
        guard arguments.positional.isEmpty else { throw UsageError(message: "unexpected '\(arguments.positional[0])'") }
        let path = arguments.value("-c", "--config", default: "conf/cutover.conf")!
        let signals = blockSignals()
        let config = loadConfig(path)
        let logger = Logger()
        let runtime = makeRuntime(config: config, path: path, logger: logger, resetState: arguments.flags.contains("--reset-state"))
        // A hot upgrade starts the binary at this path (as installed then) with these arguments.
        // (Not --reset-state: the new process must take over the state this one runs.)
        runtime.upgradeCommand = (Successor.absolutePath(CommandLine.arguments[0]),
                                  Array(CommandLine.arguments.dropFirst()).filter { $0 != "--reset-state" })
        serve(runtime, logger: logger, signals: signals)
    case "demo":
        let arguments = try Arguments(rest, valueOptions: ["--listen", "--blue-port", "--green-port", "--metrics-listen", "--preview-listen",
                                                           "--tls-listen"],
                                      flagOptions: ["--reset-state", "--tls"])
        guard arguments.positional.isEmpty else { throw UsageError(message: "unexpected '\(arguments.positional[0])'") }
        let listen = arguments.value("--listen", default: "127.0.0.1:8080")!
        guard let bluePort = UInt16(arguments.value("--blue-port", default: "8091")!),
              let greenPort = UInt16(arguments.value("--green-port", default: "8092")!)
        else { throw UsageError(message: "ports are numbers from 0 to 65535") }
        let signals = blockSignals()
        let logger = Logger()
        let blue = DemoUpstream(.init(color: "blue", port: bluePort))
        let green = DemoUpstream(.init(color: "green", port: greenPort))
        do {
            try blue.start()
            try green.start()
        } catch {
            fail("cutover demo: \(error)", code: 1)
        }
        // Port 0 asks the kernel for a free port; the config names the ports actually bound.
        // Files go where the sample config keeps them (conf/run/ in the repository) so that
        // `cutover status` and friends find the demo's admin socket without options.
        let base = FileManager.default.fileExists(atPath: "conf/cutover.conf") ? "conf" : "."
        // --tls: a certificate made now (ECDSA P-256, self-signed, for localhost and 127.0.0.1)
        // in the run folder, served on --tls-listen.
        var tls: (listen: String, chain: String, key: String)?
        let tlsListen = arguments.value("--tls-listen", default: "127.0.0.1:8443")!
        if arguments.flags.contains("--tls") {
            let folder = base + "/run"
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            do {
                try SelfSignedCertificate.write(chainPath: folder + "/demo-tls.pem", keyPath: folder + "/demo-tls.key", name: "localhost")
            } catch {
                fail("cutover demo --tls: \(error.message)", code: 1)
            }
            tls = (tlsListen, "run/demo-tls.pem", "run/demo-tls.key")
        }
        // The default metrics port taken (another demo, a Prometheus exporter): a free port
        // instead, named in the "metrics on …" log line. A port asked for is never changed.
        var metricsListen = arguments.value("--metrics-listen") ?? "127.0.0.1:9108"
        if arguments.value("--metrics-listen") == nil, let address = SocketAddress.resolve(host: "127.0.0.1", port: 9108),
           Posix.addressInUse(address) {
            logger.log(.warning, "127.0.0.1:9108 is taken: metrics and the status page go to a free port (see the line below)")
            metricsListen = "127.0.0.1:0"
        }
        let text = DemoConfig.text(listen: listen, bluePort: blue.port, greenPort: green.port,
                                   metricsListen: metricsListen,
                                   previewListen: arguments.value("--preview-listen", default: "127.0.0.1:8081").flatMap { $0 == "off" ? nil : $0 },
                                   tls: tls)
        let config: Config
        do {
            config = try ConfigParser.parse(text, path: "<demo>", baseDirectory: base)
        } catch {
            fail(error.description, code: 2)
        }
        logger.log(.info, "demo upstreams: blue on 127.0.0.1:\(blue.port), green on 127.0.0.1:\(green.port)")
        logger.log(.info, "try: curl -i http://\(listen)/   (answers 'blue'), then: swift run cutover status")
        if tls != nil { logger.log(.info, "TLS: curl -k https://\(tlsListen)/   (a self-signed certificate for localhost, made for this run)") }
        let runtime = makeRuntime(config: config, path: nil, logger: logger, resetState: arguments.flags.contains("--reset-state"))
        serve(runtime, logger: logger, signals: signals, extraStop: {
            blue.stop()
            green.stop()
        })
    case "audit":
        let arguments = try Arguments(rest, valueOptions: ["-c", "--config"], flagOptions: [])
        guard arguments.positional == ["verify"] else { throw UsageError(message: "usage: cutover audit verify [-c FILE]") }
        let path = arguments.value("-c", "--config", default: "conf/cutover.conf")!
        let config = loadConfig(path)
        guard let log = config.auditLog else { fail("cutover: \(path) has no audit_log", code: 1) }
        switch AuditLog.verify(path: log) {
        case .ok(let lines):
            // The state file anchors the record that was last when it was saved: a log cut short
            // below it is a log that lost records, however intact its remaining chain.
            var anchor = ""
            if let statePath = config.stateFile, let state = try? StateFile.load(path: statePath), let hash = state.auditAnchor {
                guard let line = AuditLog.line(withHash: hash, path: log) else {
                    fail("\(log): cut short: the record \(statePath) anchors (sha256 \(hash.prefix(16))…) is not in the log; records were removed from its end", code: 1)
                }
                anchor = "; the state file's anchor is record \(line)"
            }
            print("\(log): ok — \(lines) record(s), hash chain intact\(anchor)")
        case .broken(let line, let reason):
            fail("\(log):\(line): \(reason)", code: 1)
        }
    case "top":
        let arguments = try Arguments(rest, valueOptions: ["-c", "--config", "-s", "--socket", "--interval"], flagOptions: ["--once"])
        guard arguments.positional.isEmpty else { throw UsageError(message: "unexpected '\(arguments.positional[0])'") }
        var intervalMs = 1_000
        if let text = arguments.value("--interval") {
            guard let ms = ConfigParser.parseDuration(Substring(text)), ms >= 100, ms <= 60_000 else {
                throw UsageError(message: "--interval: a duration from 100ms to 60s, e.g. 2s")
            }
            intervalMs = ms
        }
        let top = TopCommand(socket: adminSocket(arguments), intervalMs: intervalMs)
        exit(arguments.flags.contains("--once") ? top.once() : top.run())
    case let name where adminCommands.contains(name):
        let arguments = try Arguments(rest, valueOptions: ["-c", "--config", "-s", "--socket", "--reason", "--app", "--watch", "--binary"],
                                      flagOptions: ["--json", "--force"])
        let line = adminLine(name, arguments)
        // The socket checks the words; the usage errors it returns are exit code 2 here.
        if case .failure(let error) = AdminCommands.parse(line) { throw UsageError(message: error.message) }
        let client = AdminClient(socketPath: adminSocket(arguments), json: arguments.flags.contains("--json"))
        exit(client.run(line))
    default:
        throw UsageError(message: "unknown command '\(command)'")
    }
} catch let error as UsageError {
    fail("cutover: \(error.message)\n\n\(usage)", code: 2)
}
