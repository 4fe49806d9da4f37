import CutoverCore
import Foundation
import Glibc

// The `cutover` command line. Exit codes: 0 ok, 1 failed, 2 usage.

let version = "0.1.0"

let usage = """
    cutover \(version) — an edge proxy for blue/green releases

    Usage:
      cutover run   [-c FILE]      run the proxy (default config: conf/cutover.conf)
      cutover check [-c FILE]      validate a config file: exit 0, or 1 with FILE:LINE: message
      cutover demo  [--listen ADDR] [--blue-port N] [--green-port N]
                                   run the proxy on its embedded default with two built-in
                                   upstreams (blue on :8091, green on :8092)
      cutover --help | --version

    Signals: SIGTERM/SIGINT drain in-flight requests (up to timeouts.drain) and exit 0;
    SIGHUP re-reads the config file and publishes its routing (the active color is kept).
    """

struct UsageError: Error { let message: String }

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(code)
}

/// Parses `-c FILE` style options; returns the value of `name` or the default.
func option(_ arguments: [String], _ names: [String], default value: String?) throws -> String? {
    var result = value
    var index = 0
    while index < arguments.count {
        let argument = arguments[index]
        if names.contains(argument) {
            guard index + 1 < arguments.count else { throw UsageError(message: "\(argument) needs a value") }
            result = arguments[index + 1]
            index += 2
            continue
        }
        index += 1
    }
    return result
}

func rejectUnknown(_ arguments: [String], allowed: [String]) throws {
    var index = 0
    while index < arguments.count {
        guard allowed.contains(arguments[index]) else {
            throw UsageError(message: "unknown argument '\(arguments[index])'")
        }
        index += 2
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
    for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, signal) }
    pthread_sigmask(SIG_BLOCK, &set, nil)
    return set
}

/// Runs the proxy until SIGTERM/SIGINT. `reload` is called on SIGHUP.
func serve(config: Config, logger: Logger, signals: sigset_t, reload: (() -> Config?)?, extraStop: () -> Void = {}) -> Never {
    let registry = ServerRegistry()
    let table: RoutingTable
    do {
        table = try RoutingTable(config: config, activeColor: config.initialColor, registry: registry)
    } catch {
        fail(error.description, code: 1)
    }
    let publisher = RoutingPublisher(table)
    let server = ProxyServer(config: config, publisher: publisher, logger: logger)
    do {
        try server.start()
    } catch {
        fail("cutover: \(error)", code: 1)
    }
    logger.log(.info, "active color \(table.activeColor.rawValue)")
    var waitSet = signals
    while true {
        var received: Int32 = 0
        sigwait(&waitSet, &received)
        if received == SIGHUP {
            guard let reload, let next = reload() else {
                logger.log(.warning, "SIGHUP: reload failed; the running configuration is unchanged")
                continue
            }
            do {
                let generation = try publisher.reload(next, registry: registry)
                logger.log(.info, "SIGHUP: configuration reloaded (generation \(generation))")
            } catch {
                logger.log(.error, "SIGHUP: \(error.description); the running configuration is unchanged")
            }
            continue
        }
        logger.log(.info, "signal \(received): draining (up to \(config.timeouts.drainMs) ms)")
        server.stop()
        extraStop()
        exit(0)
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else { fail(usage, code: 2) }
let rest = Array(arguments.dropFirst())

do {
    switch command {
    case "--help", "-h", "help":
        print(usage)
    case "--version", "-V":
        print("cutover \(version)")
    case "check":
        try rejectUnknown(rest, allowed: ["-c", "--config"])
        let path = try option(rest, ["-c", "--config"], default: "conf/cutover.conf")!
        let config = loadConfig(path)
        let servers = config.apps.reduce(0) { $0 + $1.blue.count + $1.green.count }
        print("\(path): ok — \(config.listen.count) listener(s), \(config.apps.count) app(s), \(servers) server(s), initial color \(config.initialColor.rawValue)")
    case "run":
        try rejectUnknown(rest, allowed: ["-c", "--config"])
        let path = try option(rest, ["-c", "--config"], default: "conf/cutover.conf")!
        let signals = blockSignals()
        let config = loadConfig(path)
        let logger = Logger()
        serve(config: config, logger: logger, signals: signals, reload: {
            do throws(ConfigError) { return try ConfigParser.load(path: path) } catch {
                logger.log(.error, error.description)
                return nil
            }
        })
    case "demo":
        try rejectUnknown(rest, allowed: ["--listen", "--blue-port", "--green-port"])
        let listen = try option(rest, ["--listen"], default: "127.0.0.1:8080")!
        guard let bluePort = UInt16(try option(rest, ["--blue-port"], default: "8091")!),
              let greenPort = UInt16(try option(rest, ["--green-port"], default: "8092")!)
        else { throw UsageError(message: "ports are numbers from 1 to 65535") }
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
        let text = DemoConfig.text(listen: listen, bluePort: blue.port, greenPort: green.port)
        let config: Config
        do { config = try ConfigParser.parse(text, path: "<demo>") } catch { fail(error.description, code: 2) }
        logger.log(.info, "demo upstreams: blue on 127.0.0.1:\(blue.port), green on 127.0.0.1:\(green.port)")
        logger.log(.info, "try: curl -i http://\(listen)/   (answers 'blue')")
        serve(config: config, logger: logger, signals: signals, reload: nil, extraStop: {
            blue.stop()
            green.stop()
        })
    default:
        throw UsageError(message: "unknown command '\(command)'")
    }
} catch let error as UsageError {
    fail("cutover: \(error.message)\n\n\(usage)", code: 2)
}
