import CutoverConfig
import CutoverControl
import CutoverDemo
import CutoverMetrics
import CutoverRuntime
import CutoverSystem
import Foundation
import XCTest

/// Keeps `cutover-bench` from rotting: a few seconds of its three modes against real processes.
/// These are smoke runs with small counts, never benchmarks: nothing here asserts a speed.
final class BenchSmokeTests: XCTestCase {
    static var bench: URL { CommandLineTests.binary.deletingLastPathComponent().appendingPathComponent("cutover-bench") }

    /// A running `cutover-bench upstream` on a free port.
    final class BenchUpstream {
        let process = Process()
        let port: UInt16

        init(color: String, extra: [String] = []) throws {
            process.executableURL = BenchSmokeTests.bench
            process.arguments = ["upstream", "--port", "0", "--color", color] + extra
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            // The first line names the bound address: "upstream blue listening on 127.0.0.1:PORT".
            var line = Data()
            while !line.contains(0x0A) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line.append(chunk)
            }
            let text = String(decoding: line, as: UTF8.self)
            guard let portText = text.split(separator: ":").last?.prefix(while: { $0.isNumber }), let port = UInt16(portText) else {
                throw RawClientError.malformed(text)
            }
            self.port = port
        }

        deinit {
            process.terminate()
            process.waitUntilExit()
        }
    }

    private func runBench(_ arguments: [String]) throws -> (status: Int32, json: JSON?, stderr: String) {
        let process = Process()
        process.executableURL = Self.bench
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return (process.terminationStatus, JSON.parse(text), String(decoding: errors, as: UTF8.self))
    }

    func testUpstreamAndLoadInClosedAndOpenLoop() throws {
        let upstream = try BenchUpstream(color: "blue")
        let closed = try runBench(["load", "http://127.0.0.1:\(upstream.port)/", "-c", "4", "-d", "500ms", "--json"])
        XCTAssertEqual(closed.status, 0, closed.stderr)
        let report = try XCTUnwrap(closed.json)
        XCTAssertGreaterThan(report["requests"]?.intValue ?? 0, 100)
        XCTAssertEqual(report["colors"]?["blue"], report["requests"])
        XCTAssertEqual(report["errors"], .object([]))
        XCTAssertEqual(report["non_2xx"], 0)

        // Open loop at 200 requests per second for one second.
        let open = try runBench(["load", "http://127.0.0.1:\(upstream.port)/api/system/status", "-c", "4", "-d", "1s",
                                 "--rate", "200", "--json"])
        let requests = open.json?["requests"]?.intValue ?? 0
        XCTAssertTrue((150...210).contains(requests), "open loop ran \(requests) requests at 200/s for 1 s")

        // Injected failures are reported as non-2xx.
        let failing = try BenchUpstream(color: "green", extra: ["--fail-rate", "1"])
        let failed = try runBench(["load", "http://127.0.0.1:\(failing.port)/", "-c", "2", "-d", "300ms", "--json"])
        XCTAssertEqual(failed.json?["non_2xx"], failed.json?["requests"])

        XCTAssertEqual(try runBench(["load", "ftp://nowhere", "-d", "1s"]).status, 2)
    }

    func testSwitchScenarioThroughCutover() throws {
        let blue = try BenchUpstream(color: "blue")
        let green = try BenchUpstream(color: "green")
        let folder = URL(fileURLWithPath: "/tmp/cutover-bench-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = try ConfigParser.parse("""
            listen 127.0.0.1:0
            workers 2
            admin_socket \(folder.path)/cutover.sock
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """, path: "<bench>")
        let runtime = try CutoverRuntime(config: config, configPath: nil, logger: Logger(minimumLevel: .error))
        try runtime.start()
        defer { runtime.stop() }
        let port = runtime.server.listenAddresses[0].port
        let result = try runBench(["switch", "--proxy", "http://127.0.0.1:\(port)/", "--socket", "\(folder.path)/cutover.sock",
                                   "--switches", "4", "--interval", "100", "-c", "4", "--json"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let report = try XCTUnwrap(result.json)
        XCTAssertEqual(report["switches"], 4)
        XCTAssertEqual(report["failed"], 0, "\(report)")
        XCTAssertEqual(report["stale"], 0, "\(report)")
        XCTAssertGreaterThan(report["requests"]?.intValue ?? 0, 100)

        // The timeline: every answer in a 10 ms bucket by color, the four switches marked, and
        // the plots drawn from the report.
        let timeline = try XCTUnwrap(report["timeline"])
        let blueAnswers = timeline["blue"]?.arrayValue?.reduce(0) { $0 + ($1.intValue ?? 0) } ?? 0
        let greenAnswers = timeline["green"]?.arrayValue?.reduce(0) { $0 + ($1.intValue ?? 0) } ?? 0
        XCTAssertEqual(Int64(blueAnswers + greenAnswers), report["requests"]?.intValue)
        XCTAssertGreaterThan(greenAnswers, 0)
        XCTAssertEqual(timeline["switches_ms"]?.arrayValue?.count, 4)
        let switchReport = folder.appendingPathComponent("switch.json").path
        try result.json!.serialized().write(toFile: switchReport, atomically: true, encoding: .utf8)
        let upstreamLoad = try runBench(["load", "http://127.0.0.1:\(blue.port)/", "-c", "2", "-d", "300ms", "--json",
                                         "--plot", folder.appendingPathComponent("load.svg").path])
        XCTAssertEqual(upstreamLoad.status, 0, upstreamLoad.stderr)
        XCTAssertEqual(upstreamLoad.json?["percentile_curve"]?.arrayValue?.last?.arrayValue?.first?.doubleValue, 100)
        let loadReport = folder.appendingPathComponent("load.json").path
        try upstreamLoad.json!.serialized().write(toFile: loadReport, atomically: true, encoding: .utf8)
        let percentiles = folder.appendingPathComponent("percentiles.svg").path
        XCTAssertEqual(try runBench(["plot", "percentiles", "--out", percentiles, "a=\(loadReport)", "b=\(loadReport)"]).status, 0)
        let svg = try String(contentsOfFile: percentiles, encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("99.99%") && svg.contains(">a</text>") && svg.contains(">b</text>"), svg)
        let timelines = folder.appendingPathComponent("timelines.svg").path
        XCTAssertEqual(try runBench(["plot", "timelines", "--out", timelines, "--from", "-100", "--to", "500",
                                     "cutover=\(switchReport)", "again=\(switchReport)"]).status, 0)
        let panels = try String(contentsOfFile: timelines, encoding: .utf8)
        XCTAssertEqual(panels.components(separatedBy: "<svg ").count - 1, 3, "a wrapper and two panels")
        XCTAssertTrue(panels.contains("stroke-dasharray=\"3,2\""), "switches marked")
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("load.svg").path))
        let bad = try runBench(["plot", "timelines", "--out", timelines, "x=\(loadReport)"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("x: the report has no timeline"), bad.stderr)
    }

    func testHistogramPercentilesAgainstASortedOracle() {
        var generator = SystemRandomNumberGenerator()
        for distribution in 0..<3 {
            var histogram = LatencyHistogram()
            var values: [UInt64] = []
            for _ in 0..<50_000 {
                let value: UInt64
                switch distribution {
                case 0: value = UInt64.random(in: 1...2_000, using: &generator)                      // µs, uniform
                case 1: value = UInt64(exp(Double.random(in: 0...18, using: &generator)))            // 1 µs … 60 s, log-uniform
                default: value = UInt64.random(in: 0...10, using: &generator) == 0 ? 5_000_000 : 300  // bimodal tail
                }
                values.append(value)
                histogram.record(value)
            }
            values.sort()
            for p in [50.0, 90.0, 95.0, 99.0, 99.9] {
                let exact = values[max(0, Int((p / 100 * Double(values.count)).rounded(.up)) - 1)]
                let reported = histogram.percentile(p)
                let error = abs(Double(reported) - Double(exact)) / Double(max(exact, 1))
                XCTAssertLessThanOrEqual(error, 0.01, "distribution \(distribution) p\(p): \(reported) vs \(exact)")
            }
            XCTAssertEqual(histogram.max, values.last)
            XCTAssertEqual(histogram.count, 50_000)
        }
    }

    /// A slow upstream (`--delay`) still answers a `Connection: close` request and a client that
    /// half-closed after sending it: health checks do both.
    func testDelayedUpstreamAnswersClosingAndHalfClosedClients() throws {
        let upstream = DemoUpstream(.init(color: "blue", delayMs: 30))
        try upstream.start()
        defer { upstream.stop() }
        let closing = try RawHTTPClient(port: upstream.port)
        try closing.send("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(try closing.readResponse().bodyString, "blue\n")
        let halfClosed = try RawHTTPClient(port: upstream.port)
        try halfClosed.send("GET /api/system/status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        halfClosed.shutdownWrite()
        XCTAssertEqual(try halfClosed.readResponse().status, 200)
        XCTAssertEqual(try ControlLoop().probeAndWait(ProbeRequest(address: upstream.address!, host: "a", path: "/api/system/status", timeoutMs: 2_000)).isSuccess, true,
                       "the health check of a slow upstream passes")
    }
}
