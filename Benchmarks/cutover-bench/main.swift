import CutoverBench
import CutoverDemo
import CutoverConfig
import CutoverSystem
import Foundation
import Glibc

// cutover-bench: a load generator, a fast colored upstream, and the switch benchmark.

let usage = """
    cutover-bench load URL -c CONNS -d DURATION [-t THREADS] [--rate RPS] [--method M] [--body-size N] [-H 'Name: value'] [--new-conn] [--json]
        closed loop by default; --rate runs open loop at a constant total rate, latency measured
        from each request's intended send time (coordinated omission corrected)
    cutover-bench upstream --port P --color C [--host H] [--delay MS] [--fail-rate F] [--body-size N]
        a fast upstream naming its color (X-Color header and body); answers /api/system/status
    cutover-bench switch --proxy URL (--socket PATH | --switch-command CMD) --switches N --interval MS -c CONNS [-t THREADS] [--json]
        load through the proxy while switching N times; CMD gets {color} replaced by the target
    cutover-bench plot percentiles --out FILE [--title TEXT] NAME=REPORT.json ...
        latency by percentile (a log "nines" axis) of `load --json` reports, one curve each
    cutover-bench plot timelines --out FILE [--from MS] [--to MS] NAME=REPORT.json ...
        `switch --json` runs side by side: answers per 10 ms by color, the switch commands marked,
        from MS before to MS after each run's first switch (default -200 and 1000)
    load and switch take --plot FILE: the same SVG for that run.
    DURATION: 10s, 500ms, 2m. Exit codes: 0 ok, 1 failed, 2 usage.
    """

func fail(_ message: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data(("cutover-bench: " + message + "\n").utf8))
    exit(code)
}

struct Options {
    var values: [String: String] = [:]
    var flags: Set<String> = []
    var positional: [String] = []

    init(_ words: [String], values valueNames: Set<String>, flags flagNames: Set<String>) {
        var index = 0
        while index < words.count {
            let word = words[index]
            if valueNames.contains(word) {
                guard index + 1 < words.count else { fail("\(word) needs a value") }
                values[word] = words[index + 1]
                index += 2
            } else if flagNames.contains(word) {
                flags.insert(word)
                index += 1
            } else if word.hasPrefix("-") {
                fail("unknown option '\(word)'\n\n\(usage)")
            } else {
                positional.append(word)
                index += 1
            }
        }
    }

    func int(_ name: String, default value: Int? = nil) -> Int {
        guard let text = values[name] else {
            guard let value else { fail("\(name) is required\n\n\(usage)") }
            return value
        }
        guard let number = Int(text), number >= 0 else { fail("\(name) takes a whole number") }
        return number
    }

    func duration(_ name: String, default value: Int) -> Int {
        guard let text = values[name] else { return value }
        guard let milliseconds = ConfigParser.parseDuration(Substring(text)) else { fail("\(name) takes a duration such as 10s") }
        return milliseconds
    }
}

func loadOptions(url: String, _ options: Options) -> LoadOptions {
    guard let target = LoadOptions.parse(url: url) else { fail("cannot use URL '\(url)' (http://host:port/path)") }
    var load = LoadOptions(address: target.address, hostHeader: target.host, path: target.path)
    load.connections = max(1, options.int("-c", default: 50))
    load.threads = max(1, options.int("-t", default: 1))
    load.durationMs = options.duration("-d", default: 10_000)
    if let rate = options.values["--rate"] {
        guard let value = Double(rate), value > 0 else { fail("--rate takes requests per second") }
        load.rate = value
    }
    load.method = options.values["--method"] ?? "GET"
    load.bodySize = options.int("--body-size", default: 0)
    load.newConnection = options.flags.contains("--new-conn")
    if let header = options.values["-H"] {
        guard header.contains(":"), !header.contains("\r"), !header.contains("\n") else { fail("-H takes one header line: 'Name: value'") }
        load.headers = [header]
    }
    return load
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else { fail(usage) }
let rest = Array(arguments.dropFirst())

switch command {
case "load":
    let options = Options(rest, values: ["-c", "-d", "-t", "--rate", "--method", "--body-size", "-H", "--plot"], flags: ["--new-conn", "--json"])
    guard options.positional.count == 1 else { fail("load needs one URL\n\n\(usage)") }
    let load = loadOptions(url: options.positional[0], options)
    do {
        let report = try LoadGenerator.run(load)
        if let plot = options.values["--plot"] {
            writePlot(plot, BenchPlots.percentiles(title: "latency by percentile", reports: [(options.positional[0], report.json)]))
        }
        print(options.flags.contains("--json") ? report.json.serialized() : report.text)
        exit(report.requests > 0 ? 0 : 1)
    } catch {
        fail("\(error)", code: 1)
    }
case "upstream":
    let options = Options(rest, values: ["--port", "--color", "--host", "--delay", "--fail-rate", "--body-size"], flags: [])
    guard let color = options.values["--color"] else { fail("--color is required\n\n\(usage)") }
    let port = options.int("--port")
    guard port <= 65535 else { fail("--port takes 0...65535") }
    var failRate = 0.0
    if let text = options.values["--fail-rate"] {
        guard let value = Double(text), (0...1).contains(value) else { fail("--fail-rate takes a number from 0 to 1") }
        failRate = value
    }
    let upstream = DemoUpstream(.init(color: color, host: options.values["--host"] ?? "127.0.0.1", port: UInt16(port),
                                      bodySize: options.int("--body-size", default: 0),
                                      delayMs: options.int("--delay", default: 0), failRate: failRate))
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    do {
        try upstream.start()
    } catch {
        fail("\(error)", code: 1)
    }
    print("upstream \(color) listening on \(upstream.address?.description ?? "?")")
    fflush(nil)  // the line above must reach a pipe before we block
    var received: Int32 = 0
    sigwait(&signals, &received)
    upstream.stop()
case "switch":
    let options = Options(rest, values: ["--proxy", "--socket", "--switch-command", "--switches", "--interval", "-c", "-t", "--plot"],
                          flags: ["--json"])
    guard let proxy = options.values["--proxy"] else { fail("--proxy is required\n\n\(usage)") }
    let switcher: SwitchBenchmark.Switcher
    if let socket = options.values["--socket"] {
        switcher = .adminSocket(socket)
    } else if let command = options.values["--switch-command"] {
        switcher = .command(command)
    } else {
        fail("--socket or --switch-command is required\n\n\(usage)")
    }
    let benchmark = SwitchBenchmark(load: loadOptions(url: proxy, options), switcher: switcher,
                                    switches: options.int("--switches", default: 10), intervalMs: options.int("--interval", default: 500))
    do {
        let report = try benchmark.run()
        if let plot = options.values["--plot"] { writePlot(plot, BenchPlots.timeline(name: proxy, report.timeline)) }
        print(options.flags.contains("--json") ? report.json.serialized() : report.text)
        exit(report.switchFailures.isEmpty ? 0 : 1)
    } catch {
        fail("\(error)", code: 1)
    }
case "plot":
    guard let kind = rest.first, kind == "percentiles" || kind == "timelines" else { fail("plot percentiles|timelines …\n\n\(usage)") }
    let options = Options(Array(rest.dropFirst()), values: ["--out", "--title", "--from", "--to"], flags: [])
    guard let out = options.values["--out"] else { fail("plot needs --out FILE") }
    guard !options.positional.isEmpty else { fail("plot needs NAME=REPORT.json arguments") }
    var reports: [(String, JSON)] = []
    for argument in options.positional {
        guard let equals = argument.firstIndex(of: "=") else { fail("'\(argument)': NAME=REPORT.json") }
        let path = String(argument[argument.index(after: equals)...])
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { fail("cannot read \(path)", code: 1) }
        // A report is one JSON line (the last one, when a file holds a run's other output too).
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }), let json = JSON.parse(String(line)) else {
            fail("\(path): no JSON report", code: 1)
        }
        reports.append((String(argument[..<equals]), json))
    }
    if kind == "percentiles" {
        writePlot(out, BenchPlots.percentiles(title: options.values["--title"] ?? "latency by percentile", reports: reports))
    } else {
        var runs: [(name: String, timeline: SwitchTimeline)] = []
        for (name, json) in reports {
            guard let timeline = json["timeline"].flatMap(SwitchTimeline.init(json:)) else { fail("\(name): the report has no timeline", code: 1) }
            runs.append((name, timeline))
        }
        guard let from = Int(options.values["--from"] ?? "-200"), let to = Int(options.values["--to"] ?? "1000"), from < to else {
            fail("--from and --to: milliseconds around the first switch, from < to")
        }
        writePlot(out, BenchPlots.timelines(runs, fromMs: from, toMs: to))
    }
case "--help", "-h", "help":
    print(usage)
default:
    fail("unknown command '\(command)'\n\n\(usage)")
}


func writePlot(_ path: String, _ svg: String) {
    do {
        try svg.write(toFile: path, atomically: true, encoding: .utf8)
    } catch {
        fail("cannot write \(path): \(error)", code: 1)
    }
}
