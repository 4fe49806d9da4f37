import CAllocationCounter
import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverRuntime
import CutoverSystem
import CutoverTestSupport
import Foundation
import Glibc
import Synchronization
import XCTest

/// What an operator watching a release sees: `stats`, `/metrics` and the access log, from a
/// running cutover with real upstreams and real clients.
final class ObservabilityTests: XCTestCase {
    private func makeFolder() throws -> URL {
        let folder = URL(fileURLWithPath: "/tmp/cutover-obs-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return folder
    }

    /// Blue answers 200, or 503 for /fail; green answers 200.
    private func startRuntime(folder: URL, blue: UInt16, green: UInt16) throws -> CutoverRuntime {
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 2
            admin_socket run/cutover.sock
            access_log run/access.log
            metrics_listen 127.0.0.1:0
            app web {
                host *
                health_path /api/system/status
                blue 127.0.0.1:\(blue)
                green 127.0.0.1:\(green)
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path,
                                         logger: Logger(minimumLevel: .error))
        try runtime.start()
        return runtime
    }

    private func get(_ port: UInt16, _ target: String, method: String = "GET") throws -> TestResponse {
        let client = try RawHTTPClient(port: port)
        return try client.request(method, target, host: "127.0.0.1")
    }

    private func accessLines(_ runtime: CutoverRuntime, _ path: String) throws -> [[String: Any]] {
        runtime.server.accessLog?.flush()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
            return try XCTUnwrap(object as? [String: Any], "not a JSON object: \(line)")
        }
    }

    func testStatsMetricsAndAccessLogAgreeOnProxiedRequests() throws {
        let blue = try TestUpstream(name: "blue") { request, connection in
            if request.target == "/fail" {
                connection.respond(status: 503, reason: "Service Unavailable", body: Array("down\n".utf8))
            } else {
                connection.respond(headers: [("X-Color", "blue")], body: Array("blue\n".utf8))
            }
        }
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let runtime = try startRuntime(folder: folder, blue: blue.port, green: green.port)
        defer { runtime.stop() }
        let port = runtime.server.listenAddresses[0].port

        let client = try RawHTTPClient(port: port)
        for _ in 0..<20 { XCTAssertEqual(try client.request("GET", "/ok", host: "shop.example").status, 200) }
        for _ in 0..<5 { XCTAssertEqual(try client.request("GET", "/fail", host: "shop.example").status, 503) }
        let tagged = try client.request("GET", "/tagged?q=1", host: "shop.example", headers: [("X-Request-Id", "release-check-1")])
        XCTAssertEqual(tagged.status, 200)
        let malformed = try RawHTTPClient(port: port)
        try malformed.send("GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n")
        XCTAssertEqual(try malformed.readResponse().status, 400)

        // stats: the admin command and the CLI's source.
        let admin = try AdminSocketTests.AdminConnection(path: runtime.config.adminSocket!)
        let stats = try admin.command("stats total")
        XCTAssertEqual(stats["ok"], true, stats.serialized())
        let rows = try XCTUnwrap(stats["apps"]?.arrayValue)
        let blueRow = try XCTUnwrap(rows.first { $0["color"]?.stringValue == "blue" })
        let greenRow = try XCTUnwrap(rows.first { $0["color"]?.stringValue == "green" })
        XCTAssertEqual(blueRow["requests"]?.intValue, 26)
        XCTAssertEqual(blueRow["2xx"]?.intValue, 21)
        XCTAssertEqual(blueRow["5xx"]?.intValue, 5)
        XCTAssertEqual(blueRow["5xx_rate"]?.doubleValue ?? 0, 5.0 / 26.0, accuracy: 1e-5)
        XCTAssertEqual(blueRow["active"], true)
        XCTAssertGreaterThan(blueRow["latency_us"]?["p99"]?.intValue ?? 0, 0)
        XCTAssertLessThanOrEqual(blueRow["latency_us"]?["p50"]?.intValue ?? .max, blueRow["latency_us"]?["max"]?.intValue ?? 0)
        XCTAssertEqual(greenRow["requests"]?.intValue, 0)
        XCTAssertEqual(stats["unrouted"]?["400"]?.intValue, 1)
        XCTAssertEqual(try admin.command("stats 10s")["apps"]?.arrayValue?.first?["requests"]?.intValue, 26,
                       "the 10 s window holds what just happened")
        XCTAssertEqual(try admin.command("stats 2m")["ok"], false, "an unknown window is a JSON error")

        // /metrics, checked by a strict parser.
        let metricsPort = try XCTUnwrap(runtime.metrics?.address?.port)
        let scrape = try get(metricsPort, "/metrics")
        XCTAssertEqual(scrape.status, 200)
        XCTAssertEqual(scrape.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        let metrics = try PrometheusExposition(scrape.bodyString)
        let web = ["app": "web", "color": "blue", "listener": "main"]
        XCTAssertEqual(metrics.value("cutover_requests_total", web.merging(["code": "200"]) { $1 }), 21)
        XCTAssertEqual(metrics.value("cutover_requests_total", web.merging(["code": "503"]) { $1 }), 5)
        XCTAssertEqual(metrics.value("cutover_request_duration_seconds_count", web), 26)
        XCTAssertEqual(metrics.value("cutover_request_duration_seconds_bucket", web.merging(["le": "+Inf"]) { $1 }), 26)
        XCTAssertEqual(metrics.value("cutover_unrouted_requests_total", ["code": "400"]), 1)
        XCTAssertEqual(metrics.value("cutover_active_color", ["color": "blue"]), 1)
        XCTAssertEqual(metrics.value("cutover_active_color", ["color": "green"]), 0)
        XCTAssertEqual(metrics.value("cutover_switches_total", ["command": "switch", "result": "ok"]), 0)
        XCTAssertEqual(metrics.value("cutover_events_total", ["event": "start"]), 1, "one event per audit record: the start")
        XCTAssertEqual(metrics.value("cutover_connections", ["side": "client"]).map { $0 >= 1 }, true)
        XCTAssertEqual(metrics.value("cutover_access_log_dropped_total"), 0)
        XCTAssertNotNil(metrics.value("cutover_upstream_up", ["app": "web", "color": "green", "server": "127.0.0.1:\(green.port)"]))
        XCTAssertEqual(metrics.types["cutover_request_duration_seconds"], "histogram")
        XCTAssertEqual(try get(metricsPort, "/healthz").bodyString, "ok\n")
        XCTAssertEqual(try get(metricsPort, "/other").status, 404)
        XCTAssertEqual(try get(metricsPort, "/").header("Content-Type"), "text/html; charset=utf-8", "the status page")
        XCTAssertEqual(try get(metricsPort, "/status.json").header("Content-Type"), "application/json")
        XCTAssertEqual(try get(metricsPort, "/metrics", method: "POST").status, 405)

        // The access log: one line per request, every field.
        let logPath = folder.appendingPathComponent("run/access.log").path
        let lines = try accessLines(runtime, logPath)
        XCTAssertEqual(lines.count, 27)
        let fields = ["time", "type", "request_id", "client", "method", "host", "path", "status", "listener", "app", "color", "server",
                      "bytes_in", "bytes_out", "duration_us", "upstream_us", "error"]
        for line in lines { XCTAssertEqual(Set(line.keys), Set(fields), "\(line)") }
        let proxied = lines.filter { ($0["status"] as? Int) == 200 }
        XCTAssertEqual(proxied.count, 21)
        for line in proxied {
            XCTAssertEqual(line["color"] as? String, "blue")
            XCTAssertEqual(line["app"] as? String, "web")
            XCTAssertEqual(line["server"] as? String, "127.0.0.1:\(blue.port)")
            XCTAssertEqual(line["host"] as? String, "shop.example")
            XCTAssertEqual(line["client"] as? String, "127.0.0.1")
            if line["path"] as? String == "/ok" {
                XCTAssertEqual((line["request_id"] as? String)?.count, 32, "a generated id: 128 bits in hex")
            }
            XCTAssertGreaterThan(line["bytes_out"] as? Int ?? 0, 0)
        }
        let taggedLine = try XCTUnwrap(lines.first { ($0["path"] as? String) == "/tagged?q=1" })
        XCTAssertEqual(taggedLine["request_id"] as? String, "release-check-1", "a valid incoming X-Request-Id is logged as is")
        XCTAssertEqual(lines.filter { ($0["status"] as? Int) == 503 }.count, 5)
        let rejected = try XCTUnwrap(lines.first { ($0["status"] as? Int) == 400 })
        XCTAssertTrue(rejected["color"] is NSNull)
        XCTAssertTrue(rejected["method"] is NSNull)
        XCTAssertTrue(try String(contentsOfFile: logPath, encoding: .utf8).hasSuffix("}\n"))

        // logrotate: move the file away, reopen, and new lines go to a fresh file.
        let rotated = logPath + ".1"
        try FileManager.default.moveItem(atPath: logPath, toPath: rotated)
        let reopened = try admin.command("reopen")
        XCTAssertEqual(reopened["ok"], true, reopened.serialized())
        XCTAssertEqual(try client.request("GET", "/after-rotate", host: "shop.example").status, 200)
        let fresh = try accessLines(runtime, logPath)
        XCTAssertEqual(fresh.count, 1)
        XCTAssertEqual(fresh.first?["path"] as? String, "/after-rotate")
        XCTAssertEqual(try accessLines(runtime, rotated).count, 27, "the rotated file keeps its lines")
    }

    func testUpstreamFailuresAreCountedByServerAndKind() throws {
        let live = try TestUpstream.named("blue")
        let garbage = try TestUpstream(name: "garbage") { _, connection in
            connection.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc")
        }
        defer { live.stop(); garbage.stop() }
        let dead = RefusingPort()
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [dead.port, live.port], green: [garbage.port])], workers: 1)
        defer { proxy.stop(); withExtendedLifetime(dead) {} }
        let client = try proxy.client()
        for _ in 0..<4 { XCTAssertEqual(try client.request().status, 200, "a refused connect is retried on the live server") }

        var snapshot = proxy.server.metrics(.total, includeTotals: true)
        let blueKey = AppPool(app: "web", color: .blue)
        XCTAssertEqual(snapshot.figures(app: "web", color: .blue).count(.success), 4)
        let deadID = try XCTUnwrap(proxy.config.apps[0].blue.first.map { _ in
            proxy.publisher.snapshot().table.apps[0].blue[0].id
        })
        let deadErrors = snapshot.serverErrors[blueKey]?[deadID]
        XCTAssertGreaterThanOrEqual(deadErrors?.count(.connectFailure) ?? 0, 1, "every refused attempt counts against its server")

        proxy.publisher.switchTo(.green)
        XCTAssertEqual(try proxy.client().request().status, 502)
        snapshot = proxy.server.metrics(.tenSeconds, includeTotals: true)
        let greenFigures = snapshot.figures(app: "web", color: .green)
        XCTAssertEqual(greenFigures.requests, 1)
        XCTAssertEqual(greenFigures.count(.invalidResponse), 1)
        XCTAssertEqual(greenFigures.serverErrorRate, 1)
        XCTAssertEqual(snapshot.totals[AppPool(app: "web", color: .green)]?.statusCodes[502], 1)
    }

    private func lines(ofLog path: String) throws -> [[String: Any]] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    /// A stalled response body is blamed on the side that stalled: a client that stops reading
    /// is not an upstream timeout, an upstream that stops sending is.
    func testStalledBodiesAreBlamedOnTheSideThatStalled() throws {
        let release = DispatchSemaphore(value: 0)
        let upstream = try TestUpstream(name: "blue") { request, connection in
            if request.target == "/huge" {
                connection.respond(body: [UInt8](repeating: 0x61, count: 48 << 20))
            } else {
                connection.write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
                release.wait()
            }
        }
        defer { release.signal(); release.signal(); upstream.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let logPath = folder.appendingPathComponent("access.log").path
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1,
                                     extra: "access_log \(logPath)\ntimeouts {\n    client_body 300ms\n}")
        defer { proxy.stop() }

        let reader = try proxy.client()
        try reader.send("GET /huge HTTP/1.1\r\nHost: a\r\n\r\n")  // and never read
        let staller = try proxy.client()
        try staller.send("GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertTrue(staller.waitForClose(timeout: 10), "the stalled upstream body is cut after client_body")
        // The reader must not read, so nothing on its socket says when the proxy gave up on it:
        // watch the figures (bounded).
        var snapshot = proxy.server.metrics(.total, includeTotals: true)
        let deadline = Date().addingTimeInterval(10)
        while snapshot.figures(app: "web", color: .blue).requests < 2 && Date() < deadline {
            usleep(20_000)
            snapshot = proxy.server.metrics(.total, includeTotals: true)
        }
        withExtendedLifetime(reader) {}
        let figures = snapshot.figures(app: "web", color: .blue)
        XCTAssertEqual(figures.count(.timeout), 1, "only the upstream's stall is an upstream timeout")
        XCTAssertEqual(snapshot.serverErrors[AppPool(app: "web", color: .blue)]?.values.first?.count(.timeout), 1)
        proxy.server.accessLog?.flush()
        let log = try lines(ofLog: logPath)
        let stalled = try XCTUnwrap(log.first { $0["path"] as? String == "/stall" })
        XCTAssertEqual(stalled["status"] as? Int, 200, "the head went out: the client saw a 200, then a cut")
        XCTAssertEqual(stalled["error"] as? String, "timeout")
        let huge = try XCTUnwrap(log.first { $0["path"] as? String == "/huge" })
        XCTAssertEqual(huge["status"] as? Int, 200)
        XCTAssertEqual(huge["error"] as? String, "client_timeout", "the client stopped reading")
    }

    /// Requests still running when the drain deadline passes are the proxy's doing, not the
    /// client's: 503 with `drain_timeout`.
    func testRequestsCutByTheDrainDeadlineAreRecordedAsSuch() throws {
        let (upstream, arrived, release) = try TestUpstream.holding("/slow", body: "late")
        defer { release.signal(); upstream.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let logPath = folder.appendingPathComponent("access.log").path
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1,
                                     extra: "access_log \(logPath)\ntimeouts {\n    drain 100ms\n}")
        let client = try proxy.client()
        try client.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertEqual(arrived.wait(timeout: .now() + 10), .success)
        proxy.stop()  // returns after the drain deadline closed the exchange and the log was written
        let line = try XCTUnwrap(try lines(ofLog: logPath).first)
        XCTAssertEqual(line["status"] as? Int, 503)
        XCTAssertEqual(line["error"] as? String, "drain_timeout")
        XCTAssertEqual(proxy.server.metrics(.total, includeTotals: true).loopsMissing, 1,
                       "a stopped proxy's figures are not waited for")
    }

    /// Recording a request — windows, totals, status codes, Prometheus buckets and an access-log
    /// record — allocates nothing once the app's figures exist. Counted by the test binary's
    /// malloc family on this thread, not assumed.
    func testRecordingAllocatesNothingPerRequest() throws {
        try XCTSkipUnless(cutover_allocation_counting_available() == 1, "a sanitizer owns malloc in this build")
        let apps = AppRegistry()
        let metrics = LoopMetrics(apps: apps)
        let stats = metrics.stats(app: "web", pool: .green)
        let ring = AccessLogRing(capacity: 64)
        let bytes: [UInt8] = Array("GET/shop.example/a/path?q=1req-1127.0.0.1".utf8)
        var second: Int64 = 1_000_000_000
        // Once per process: the constant tables (bucket bounds) are built on first use.
        stats.record(RequestSample(outcome: .success, status: 200, latencyMicros: 1), atNanoseconds: second)
        bytes.withUnsafeBytes { raw in
            func slice(_ from: Int, _ count: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: raw[from..<(from + count)]) }
            cutover_count_allocations(1)
            let before = cutover_allocations()
            for index in 0..<200_000 {
                if index % 500 == 0 { second += 1_000_000_000 }  // 400 seconds: every window slot rotates
                let sample = RequestSample(outcome: index % 50 == 0 ? .serverError : .success, status: index % 50 == 0 ? 503 : 200,
                                           latencyMicros: UInt64(index % 7_919) * 13, upstreamMicros: Int64(index % 977),
                                           bytesIn: 80, bytesOut: 200)
                stats.record(sample, atNanoseconds: second)
                if index % 1_000 == 0 { metrics.recordUnrouted(status: 404) }
                let slot = ring.claim()
                if slot >= 0 {
                    ring.fillRequest(slot, method: slice(0, 3), host: slice(3, 12), target: slice(15, 11), requestID: slice(26, 5),
                                     generatedID: (1, UInt64(index)), client: slice(31, 9))
                    ring.finish(slot, endNs: second, sample: sample, error: nil, termination: .none, serverID: 0, appID: stats.appID, pool: .green)
                }
                if index % 32 == 31 { _ = ring.consume { _ in } }  // the writer's side, here on the same thread
            }
            let allocations = cutover_allocations() - before
            cutover_count_allocations(0)
            XCTAssertEqual(allocations, 0, "allocations while recording 200,000 requests")
        }
        XCTAssertEqual(stats.windows.totals.figures.requests, 200_001)
    }

    /// The whole data path: turning the access log on adds no allocation per proxied request on
    /// the loop thread. (The debug build's data path itself allocates; the release build's
    /// figure, with recording, is measured by Benchmarks/compare.sh.)
    func testAccessLogAddsNoAllocationPerProxiedRequest() throws {
        try XCTSkipUnless(cutover_allocation_counting_available() == 1, "a sanitizer owns malloc in this build")
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        func allocationsPerRequest(extra: String) throws -> Double {
            let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])],
                                         workers: 1, extra: extra)
            defer { proxy.stop() }
            let client = try proxy.client()
            for _ in 0..<200 { XCTAssertEqual(try client.request().status, 200) }  // warm: buffers, pools, figures
            proxy.server.runOnEveryLoop { cutover_count_allocations(1) }
            let before = countOnLoops(proxy)
            let requests = 2_000
            for _ in 0..<requests { XCTAssertEqual(try client.request().status, 200) }
            let allocations = countOnLoops(proxy) - before
            proxy.server.runOnEveryLoop { cutover_count_allocations(0) }
            proxy.server.accessLog?.flush()
            return Double(allocations) / Double(requests)
        }
        let without = try allocationsPerRequest(extra: "")
        let logPath = folder.appendingPathComponent("access.log").path
        let with = try allocationsPerRequest(extra: "access_log \(logPath)")
        XCTAssertLessThanOrEqual(with - without, 0.01, "allocations per request: \(with) with the access log, \(without) without")
        let lines = try String(contentsOfFile: logPath, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2_200, "one line per request")
    }

    private func countOnLoops(_ proxy: ProxyHarness) -> UInt64 {
        let total = Mutex<UInt64>(0)
        proxy.server.runOnEveryLoop { total.withLock { $0 += cutover_allocations() } }
        return total.withLock { $0 }
    }
}
