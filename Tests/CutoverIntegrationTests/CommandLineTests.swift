import CutoverConfig
import CutoverTestSupport
import Foundation
import XCTest

/// The `cutover` executable as a user runs it: exit codes, messages, `demo` answered by curl
/// and Python's http.client, SIGHUP reload and SIGTERM drain.
final class CommandLineTests: XCTestCase {

    /// The built `cutover` binary, next to the test bundle.
    static var binary: URL {
        var directory = Bundle.main.bundleURL
        for _ in 0..<3 where !FileManager.default.fileExists(atPath: directory.appendingPathComponent("cutover").path) {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("cutover")
    }

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    func run(_ arguments: [String]) throws -> Outcome {
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = arguments
        process.currentDirectoryURL = Self.repositoryRoot
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus,
                       stdout: String(decoding: stdout, as: UTF8.self), stderr: String(decoding: stderr, as: UTF8.self))
    }

    func testVersionHelpAndUsageErrors() throws {
        XCTAssertTrue(try run(["--version"]).stdout.hasPrefix("cutover "))
        XCTAssertTrue(try run(["--help"]).stdout.contains("cutover demo"))
        let unknown = try run(["frobnicate"])
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.stderr.contains("unknown command 'frobnicate'"))
        XCTAssertEqual(try run(["check", "--bogus"]).status, 2)
    }

    func testCheckAcceptsTheSampleConfigAndReportsFileAndLine() throws {
        let good = try run(["check", "-c", "conf/cutover.conf"])
        XCTAssertEqual(good.status, 0, good.stderr)
        XCTAssertTrue(good.stdout.contains("conf/cutover.conf: ok"))

        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let bad = folder.appendingPathComponent("bad.conf")
        try "listen 127.0.0.1:8080\n\ntimeouts {\n    connect 2 seconds\n}\n".write(to: bad, atomically: true, encoding: .utf8)
        let outcome = try run(["check", "-c", bad.path])
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.hasPrefix("\(bad.path):4: "), outcome.stderr)

        let missing = try run(["check", "-c", folder.appendingPathComponent("nope.conf").path])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("nope.conf:0: cannot read"), missing.stderr)
    }

    /// `cutover check` loads every certificate as `run` would: each broken one is FILE:LINE with
    /// its reason (exit 1), a good one is listed with its names.
    func testCheckLoadsEveryCertificate() throws {
        let certificates = try TestCertificates()
        try certificates.make("site", commonName: "site", dnsNames: ["example.com"])
        try certificates.make("other", commonName: "other", dnsNames: ["other.test"])
        try "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".write(toFile: certificates.path("garbage.pem"),
                                                                                       atomically: true, encoding: .utf8)
        let config = certificates.folder.appendingPathComponent("tls.conf")
        func check(_ certificate: String) throws -> Outcome {
            try "listen 127.0.0.1:8443 tls\ntls {\n    certificate \(certificate)\n}\napp a {\n    host *\n    blue 127.0.0.1:1\n    green 127.0.0.1:2\n}\n"
                .write(to: config, atomically: true, encoding: .utf8)
            return try run(["check", "-c", config.path])
        }
        let good = try check("site.pem site.key")
        XCTAssertEqual(good.status, 0, good.stderr)
        XCTAssertTrue(good.stdout.contains("1 certificate(s) (example.com)"), good.stdout)
        for (certificate, reason) in [("missing.pem site.key", "no such file"), ("site.pem other.key", "the private key does not match"),
                                      ("garbage.pem site.key", "cannot load the certificate chain")] {
            let outcome = try check(certificate)
            XCTAssertEqual(outcome.status, 1, certificate)
            XCTAssertTrue(outcome.stderr.hasPrefix("\(config.path):3: certificate"), outcome.stderr)
            XCTAssertTrue(outcome.stderr.contains(reason), outcome.stderr)
        }
    }

    /// A running cutover process whose stderr is watched for log lines.
    final class RunningProxy: @unchecked Sendable {
        let process = Process()
        private let lock = NSCondition()
        private var log = ""

        init(arguments: [String], directory: URL = CommandLineTests.repositoryRoot, executable: String? = nil) throws {
            process.executableURL = executable.map { URL(fileURLWithPath: $0) } ?? CommandLineTests.binary
            process.arguments = arguments
            process.currentDirectoryURL = directory
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            err.fileHandleForReading.readabilityHandler = { [weak self] handle in
                guard let self else { return }
                let data = handle.availableData
                self.lock.withLock {
                    self.log += String(decoding: data, as: UTF8.self)
                    self.lock.broadcast()
                }
            }
            try process.run()
        }

        /// Waits for a log line containing `marker` (the process says when it is ready).
        func waitForLog(_ marker: String, timeout: TimeInterval = 20) -> String? {
            let deadline = Date().addingTimeInterval(timeout)
            lock.lock()
            defer { lock.unlock() }
            while !log.contains(marker) {
                if !lock.wait(until: deadline) { return nil }
            }
            return log
        }

        /// The port of the "listening on 127.0.0.1:PORT" line.
        func listeningPort() -> UInt16? {
            guard let log = waitForLog("listening on 127.0.0.1:"),
                  let range = log.range(of: "listening on 127.0.0.1:") else { return nil }
            return UInt16(log[range.upperBound...].prefix { $0.isNumber })
        }

        func terminate() -> Int32 {
            process.terminate()  // SIGTERM
            process.waitUntilExit()
            return process.terminationStatus
        }
    }

    func testDemoAnswersBlueToCurlAndPythonAndDrainsOnSIGTERM() throws {
        // In an empty folder: the demo keeps its socket, state and audit log under ./run there.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-demo-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let demo = try RunningProxy(arguments: ["demo", "--listen", "127.0.0.1:0", "--blue-port", "0", "--green-port", "0",
                                                "--metrics-listen", "127.0.0.1:0", "--preview-listen", "127.0.0.1:0"],
                                    directory: folder)
        let port = try XCTUnwrap(demo.listeningPort(), "demo did not report its port")
        let metricsLog = try XCTUnwrap(demo.waitForLog("/metrics"), "demo did not report its metrics address")
        let metricsPort = try XCTUnwrap(metricsLog.range(of: "metrics on http://127.0.0.1:").map { range in
            UInt16(metricsLog[range.upperBound...].prefix { $0.isNumber })
        } ?? nil)

        let curl = try run(executable: "/usr/bin/curl", ["-s", "-i", "http://127.0.0.1:\(port)/"])
        XCTAssertTrue(curl.hasPrefix("HTTP/1.1 200 OK"), curl)
        XCTAssertTrue(curl.contains("X-Color: blue"), curl)
        XCTAssertTrue(curl.hasSuffix("\r\n\r\nblue\n"), curl)

        // Python's http.client: keep-alive, a chunked upload, the status endpoint.
        let script = """
            import http.client, sys
            c = http.client.HTTPConnection("127.0.0.1", \(port), timeout=10)
            c.request("GET", "/api/system/status"); r = c.getresponse(); body = r.read()
            assert r.status == 200 and b'"color":"blue"' in body, body
            c.request("POST", "/upload", body=iter([b"a" * 1000, b"b" * 5000]), encode_chunked=True,
                      headers={"Transfer-Encoding": "chunked"})
            r = c.getresponse(); assert r.status == 200 and r.read() == b"blue\\n"
            c.request("HEAD", "/"); r = c.getresponse(); assert r.read() == b"" and r.getheader("X-Color") == "blue"
            print("ok")
            """
        XCTAssertEqual(try run(executable: "/usr/bin/env", ["python3", "-c", script]).trimmingCharacters(in: .whitespacesAndNewlines), "ok")

        let socket = folder.appendingPathComponent("run/cutover.sock").path
        let status = try run(["status", "-s", socket])
        XCTAssertEqual(status.status, 0, status.stderr)
        XCTAssertTrue(status.stdout.hasPrefix("active: blue"), status.stdout)

        // The observability of the runbook: the stats table, /metrics, the access log.
        let stats = try run(["stats", "total", "-s", socket])
        XCTAssertEqual(stats.status, 0, stats.stderr)
        let rows = stats.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        XCTAssertEqual(rows.first { $0.starts(with: ["demo", "blue", "*"]) }?[3], "4", "four requests on blue: \(stats.stdout)")
        XCTAssertEqual(rows.first { $0.starts(with: ["demo", "green"]) }?[2], "0", stats.stdout)
        XCTAssertEqual(try run(["stats", "forever", "-s", socket]).status, 2, "a bad window is a usage error")
        let metrics = try PrometheusExposition(try run(executable: "/usr/bin/curl", ["-s", "http://127.0.0.1:\(metricsPort)/metrics"]))
        XCTAssertEqual(metrics.value("cutover_request_duration_seconds_count", ["app": "demo", "color": "blue", "listener": "main"]), 4)
        XCTAssertEqual(metrics.value("cutover_active_color", ["color": "blue"]), 1)

        XCTAssertEqual(demo.terminate(), 0, "SIGTERM drains and exits 0")
        // Stopping writes every finished request's line.
        let lines = try String(contentsOf: folder.appendingPathComponent("run/access.log"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4, "one line per request")
        XCTAssertTrue(lines.allSatisfy { $0.contains("\"color\":\"blue\"") && $0.contains("\"app\":\"demo\"") }, "\(lines)")
    }

    func testDemoWithTLSServesHTTPSWithACertificateItMade() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-demo-tls-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let demo = try RunningProxy(arguments: ["demo", "--tls", "--tls-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--blue-port", "0",
                                                "--green-port", "0", "--metrics-listen", "127.0.0.1:0", "--preview-listen", "off"],
                                    directory: folder)
        let log = try XCTUnwrap(demo.waitForLog("listening on ")?.split(separator: "\n").first { $0.contains("listening on ") }.map(String.init))
        let ports = log.components(separatedBy: "127.0.0.1:").dropFirst().compactMap { UInt16($0.prefix { $0.isNumber }) }
        XCTAssertEqual(ports.count, 2, log)
        XCTAssertNotNil(demo.waitForLog("curl -k https://"), "the demo says how to try it")
        XCTAssertEqual(try run(executable: "/usr/bin/curl", ["-sk", "https://127.0.0.1:\(ports[1])/"]), "blue\n")
        let certificate = try run(executable: "/bin/sh", ["-c", "echo | openssl s_client -connect 127.0.0.1:\(ports[1]) 2>/dev/null"])
        XCTAssertTrue(certificate.contains("subject=CN = localhost"), certificate)
        let key = try FileManager.default.attributesOfItem(atPath: folder.appendingPathComponent("run/demo-tls.key").path)
        XCTAssertEqual((key[.posixPermissions] as? NSNumber)?.intValue, 0o600, "the demo's private key is not readable by others")
        XCTAssertEqual(demo.terminate(), 0)
    }

    func testRunReloadsRoutingOnSIGHUP() throws {
        let first = try TestUpstream.named("first")
        let second = try TestUpstream.named("second")
        defer { first.stop(); second.stop() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-run-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = folder.appendingPathComponent("cutover.conf")
        func write(upstream port: UInt16) throws {
            try """
                listen 127.0.0.1:0
                workers 1
                app web {
                    host *
                    blue 127.0.0.1:\(port)
                    green 127.0.0.1:\(port)
                }
                """.write(to: config, atomically: true, encoding: .utf8)
        }
        try write(upstream: first.port)
        let proxy = try RunningProxy(arguments: ["run", "-c", config.path])
        let port = try XCTUnwrap(proxy.listeningPort())
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "first\n")

        try write(upstream: second.port)
        kill(proxy.process.processIdentifier, SIGHUP)
        XCTAssertNotNil(proxy.waitForLog("configuration reloaded"))
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "second\n")

        // A broken file leaves the running routing untouched.
        try "listen 127.0.0.1:0\nbogus\n".write(to: config, atomically: true, encoding: .utf8)
        kill(proxy.process.processIdentifier, SIGHUP)
        XCTAssertNotNil(proxy.waitForLog("unknown directive"))
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "second\n")
        XCTAssertEqual(proxy.terminate(), 0)
    }

    private func run(executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// The README runbook as a new user follows it, with the real binary: status until ready,
    /// verify, switch with a reason, a refused switch that explains itself, rollback, `kill -9`
    /// and a restart on the same color, and the audit chain checked and then tampered with.
    func testRunbookWithTheCLI() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-runbook-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
            state_file run/cutover.state
            audit_log run/audit.log
            health {
                interval 100ms
                rise 1
                fall 1
                ready_after 300ms
            }
            app web {
                host *
                verify /api/system/status
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)

        var proxy = try RunningProxy(arguments: ["run", "-c", config])
        var port = try XCTUnwrap(proxy.listeningPort())
        func cli(_ words: String...) throws -> Outcome { try run(words + ["-c", config]) }

        // Deploy green, watch status until it is ready.
        let deadline = Date().addingTimeInterval(10)
        while try !cli("status", "--json").stdout.contains("\"green\":{\"ready\":true") {
            XCTAssertLessThan(Date(), deadline, "green never became ready")
            usleep(50_000)
        }
        let verify = try cli("verify", "green")
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
        XCTAssertTrue(verify.stdout.contains("ok   web 127.0.0.1:\(green.port) /api/system/status: status 200"), verify.stdout)

        let switched = try cli("switch", "green", "--reason", "release 1.3.0")
        XCTAssertEqual(switched.status, 0, switched.stdout + switched.stderr)
        XCTAssertTrue(switched.stdout.hasPrefix("active: green (previous blue, generation 1"), switched.stdout)
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "green\n")

        // Drain blue's only server: a switch back is refused, and says why.
        XCTAssertEqual(try cli("drain", "web", "127.0.0.1:\(blue.port)").status, 0)
        let refused = try cli("rollback")
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stdout.contains("error: rollback to blue refused"), refused.stdout)
        XCTAssertTrue(refused.stdout.contains("- app web: no healthy blue server"), refused.stdout)
        XCTAssertTrue(refused.stdout.contains("drained by an operator"), refused.stdout)
        XCTAssertEqual(try cli("undrain", "web", "127.0.0.1:\(blue.port)").status, 0)
        XCTAssertEqual(try cli("rollback", "--reason", "5xx on checkout").status, 0)
        XCTAssertEqual(try cli("switch", "green", "--force", "--reason", "retry").status, 0)

        // Usage errors and an unreachable socket have their own exit codes.
        XCTAssertEqual(try cli("switch", "purple").status, 2)
        XCTAssertEqual(try run(["status", "-s", folder.appendingPathComponent("nope.sock").path]).status, 3)

        // kill -9, start again: same color.
        (proxy, port) = try restartAfterKill(proxy, config: config)
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "green\n")
        XCTAssertTrue(try cli("status").stdout.hasPrefix("active: green   previous: blue"))
        XCTAssertEqual(proxy.terminate(), 0)

        // The audit chain verifies, and one changed byte is found at its line.
        let audit = folder.appendingPathComponent("run/audit.log")
        let good = try cli("audit", "verify")
        XCTAssertEqual(good.status, 0, good.stderr)
        var bytes = try Data(contentsOf: audit)
        let lines = bytes.split(separator: 0x0A)
        XCTAssertGreaterThan(lines.count, 5)
        let target = lines[2].startIndex + 30  // a byte inside the third record's time
        bytes[target] = bytes[target] == UInt8(ascii: "1") ? UInt8(ascii: "2") : UInt8(ascii: "1")
        try bytes.write(to: audit)
        let tampered = try cli("audit", "verify")
        XCTAssertEqual(tampered.status, 1)
        XCTAssertTrue(tampered.stderr.hasPrefix("\(audit.path):4: "), tampered.stderr)
    }

    /// Blue and green upstreams and, in a fresh folder, a config with an admin socket, a state
    /// file and an audit log: `appLines` go into app `web`, `extra` after it.
    private func killNineSetup(_ name: String, appLines: String = "", extra: String = "") throws
        -> (config: String, folder: URL, blue: TestUpstream, green: TestUpstream) {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let config = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
            state_file run/cutover.state
            audit_log run/audit.log
            app web {
                host *
                \(appLines)
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            \(extra)
            """.write(toFile: config, atomically: true, encoding: .utf8)
        return (config, folder, blue, green)
    }

    /// `kill -9`, then the same config started again: the new process and its port.
    private func restartAfterKill(_ proxy: RunningProxy, config: String) throws -> (RunningProxy, UInt16) {
        kill(proxy.process.processIdentifier, SIGKILL)
        proxy.process.waitUntilExit()
        let next = try RunningProxy(arguments: ["run", "-c", config])
        return (next, try XCTUnwrap(next.listeningPort()))
    }

    /// The canary runbook with the real binary: weight 10 with a sticky cookie, pin the pilot
    /// tenant, `kill -9`, start again: the same split, the same salt, the same users on green,
    /// the pin still in force, all said by `status` and `pins`.
    func testCanaryWeightsAndPinsSurviveKillNine() throws {
        let (config, folder, blue, green) = try killNineSetup("canary", appLines: "sticky cookie cutover_id")
        defer { blue.stop(); green.stop(); try? FileManager.default.removeItem(at: folder) }
        func cli(_ words: String...) throws -> Outcome { try run(words + ["-c", config]) }
        var proxy = try RunningProxy(arguments: ["run", "-c", config])
        var port = try XCTUnwrap(proxy.listeningPort())

        let weight = try cli("weight", "green", "10", "--force", "--reason", "canary 1.4.0")
        XCTAssertEqual(weight.status, 0, weight.stdout + weight.stderr)
        XCTAssertTrue(weight.stdout.contains("app web: green 0% → 10%"), weight.stdout)
        let pin = try cli("pin", "web", "header", "X-Tenant", "pilot-1", "green", "--reason", "pilot first")
        XCTAssertEqual(pin.status, 0, pin.stdout + pin.stderr)
        let bad = try cli("weight", "green", "10.001")
        XCTAssertEqual(bad.status, 2, "a malformed weight is a usage error")

        func colors(_ port: UInt16, _ ids: [String]) throws -> [String] {
            let client = try RawHTTPClient(port: port)
            return try ids.map { try client.request(headers: [("Cookie", "cutover_id=\($0)")]).bodyString }
        }
        let ids = (0..<300).map { String(format: "%032x", $0 &* 2_654_435_761) }
        let before = try colors(port, ids)
        XCTAssertTrue(before.contains("green\n") && before.contains("blue\n"), "a 10 % canary with some users on each color")
        XCTAssertEqual(try RawHTTPClient(port: port).request(headers: [("X-Tenant", "pilot-1")]).bodyString, "green\n")
        let statusBefore = try cli("status").stdout

        (proxy, port) = try restartAfterKill(proxy, config: config)
        XCTAssertEqual(try colors(port, ids), before, "every user on the color they had before the crash")
        XCTAssertEqual(try RawHTTPClient(port: port).request(headers: [("X-Tenant", "pilot-1")]).bodyString, "green\n")
        let status = try cli("status").stdout
        let split = try XCTUnwrap(status.split(separator: "\n").first { $0.contains("split:") })
        XCTAssertTrue(split.contains("split: blue 90.0% / green 10.0%   sticky: cookie cutover_id max_age 86400s   salt: "), String(split))
        XCTAssertTrue(statusBefore.contains(String(split)), "the same salt: \(statusBefore)")
        XCTAssertTrue(try cli("pins").stdout.contains("app web: header x-tenant pilot-1 → green (run time)"))
        let history = try cli("history", "5").stdout
        XCTAssertTrue(history.contains("weight") && history.contains("canary 1.4.0"), history)
        XCTAssertTrue(history.contains("pin") && history.contains("pilot first"), history)
        XCTAssertEqual(proxy.terminate(), 0)
    }

    /// kill -9 in the middle of a release: the restarted proxy has the same weights and pins and
    /// the plan at the same step, paused, saying why; it never advances a step on its own.
    func testAReleaseInterruptedByKillNineResumesPaused() throws {
        let (config, folder, blue, green) = try killNineSetup("plan", extra: """
            plan slow {
                step weight 10 pin header X-Tenant pilot-1 hold 1h
                step weight 100 hold 1h
                rollback_if error_regression
            }
            """)
        defer { blue.stop(); green.stop(); try? FileManager.default.removeItem(at: folder) }
        func cli(_ words: String...) throws -> Outcome { try run(words + ["-c", config]) }
        var proxy = try RunningProxy(arguments: ["run", "-c", config])
        var port = try XCTUnwrap(proxy.listeningPort())
        let started = try cli("release", "start", "slow", "--force", "--reason", "1.5.0")
        XCTAssertEqual(started.status, 0, started.stdout + started.stderr)
        XCTAssertTrue(started.stdout.contains("release slow to green: running, step 1 of 2"), started.stdout)
        XCTAssertEqual(try RawHTTPClient(port: port).request(headers: [("X-Tenant", "pilot-1")]).bodyString, "green\n")

        (proxy, port) = try restartAfterKill(proxy, config: config)
        let status = try cli("release", "status").stdout
        XCTAssertTrue(status.contains("release slow to green: paused, step 1 of 2"), status)
        XCTAssertTrue(status.contains("cutover restarted during step 1; the release resumes paused"), status)
        XCTAssertEqual(try RawHTTPClient(port: port).request(headers: [("X-Tenant", "pilot-1")]).bodyString, "green\n",
                       "the plan's pins and weights are back")
        XCTAssertTrue(try cli("status").stdout.contains("split: blue 90.0% / green 10.0%"))
        XCTAssertTrue(try cli("release", "resume").stdout.contains("running, step 1 of 2"))
        XCTAssertEqual(try cli("release", "abort", "--reason", "done testing").status, 0)
        XCTAssertTrue(try cli("status").stdout.contains("split: blue 100.0% / green 0.0%"))

        // A plan changed while the proxy was down is not resumed: its steps may mean something else.
        XCTAssertEqual(try cli("release", "start", "slow", "--force").status, 0)
        kill(proxy.process.processIdentifier, SIGKILL)
        proxy.process.waitUntilExit()
        let text = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "hold 1h\n    step weight 100", with: "hold 2h\n    step weight 100")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        proxy = try RunningProxy(arguments: ["run", "-c", config])
        XCTAssertNotNil(proxy.waitForLog("release plan 'slow' changed since it was started; it is not resumed"))
        XCTAssertTrue(try cli("release", "status").stdout.contains("no release is running"))
        XCTAssertEqual(proxy.terminate(), 0)
    }
}

/// Health checking costs descriptors and timer entries, not threads: a process checking 200
/// servers runs exactly as many threads as one checking 2.
final class ThreadCountTests: XCTestCase {
    /// Ports that refuse connections for as long as the test holds them: bound, never listening.
    private func refusingPorts(_ count: Int) throws -> (ports: [UInt16], close: () -> Void) {
        var descriptors: [Int32] = []
        var ports: [UInt16] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw POSIXError(.EMFILE) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                    bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
                }
            }
            guard bound else { throw POSIXError(.EADDRINUSE) }
            descriptors.append(fd)
            ports.append(UInt16(bigEndian: address.sin_port))
        }
        return (ports, { for fd in descriptors { Glibc.close(fd) } })
    }

    private func threads(checking servers: [UInt16]) throws -> Int {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-threads-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let half = servers.count / 2
        let config = folder.appendingPathComponent("cutover.conf")
        try """
            listen 127.0.0.1:0
            workers 2
            health {
                interval 100ms
                timeout 500ms
                fall 1
            }
            app web {
                host *
                blue \(servers[..<half].map { "127.0.0.1:\($0)" }.joined(separator: " "))
                green \(servers[half...].map { "127.0.0.1:\($0)" }.joined(separator: " "))
            }
            """.write(to: config, atomically: true, encoding: .utf8)
        let proxy = try CommandLineTests.RunningProxy(arguments: ["run", "-c", config.path])
        defer { _ = proxy.terminate() }
        XCTAssertNotNil(proxy.listeningPort())
        // Every server has been checked (and found refusing) once it is reported down.
        let last = "127.0.0.1:\(servers[servers.count - 1]) is down"
        let first = "127.0.0.1:\(servers[0]) is down"
        XCTAssertNotNil(proxy.waitForLog(last), "the last server was checked")
        XCTAssertNotNil(proxy.waitForLog(first), "the first server was checked")
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(proxy.process.processIdentifier)/task")
        return tasks.count
    }

    /// Admin clients are served on the control loop: twenty connected clients, each with a
    /// command answered, add no thread.
    func testThreadCountDoesNotGrowWithAdminClients() throws {
        let (ports, close) = try refusingPorts(2)
        defer { close() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-admin-threads-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = folder.appendingPathComponent("cutover.conf")
        let socketPath = folder.appendingPathComponent("admin.sock").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket \(socketPath)
            app web {
                host *
                blue 127.0.0.1:\(ports[0])
                green 127.0.0.1:\(ports[1])
            }
            """.write(to: config, atomically: true, encoding: .utf8)
        let proxy = try CommandLineTests.RunningProxy(arguments: ["run", "-c", config.path])
        defer { _ = proxy.terminate() }
        XCTAssertNotNil(proxy.listeningPort())
        func threads() throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: "/proc/\(proxy.process.processIdentifier)/task").count
        }
        // One command first: the command threads exist from then on.
        XCTAssertEqual(try AdminSocketTests.AdminConnection(path: socketPath).command("status")["ok"], true)
        let before = try threads()
        var clients: [AdminSocketTests.AdminConnection] = []
        for _ in 0..<20 {
            let client = try AdminSocketTests.AdminConnection(path: socketPath)
            XCTAssertEqual(try client.command("status")["ok"], true)
            clients.append(client)
        }
        XCTAssertEqual(try threads(), before, "threads with 20 admin clients connected against 1 served before")
        withExtendedLifetime(clients) {}
    }

    func testThreadCountDoesNotGrowWithTheNumberOfServers() throws {
        let (ports, close) = try refusingPorts(200)
        defer { close() }
        let few = try threads(checking: Array(ports[..<2]))
        let many = try threads(checking: ports)
        XCTAssertEqual(many, few, "threads with 200 servers checked against 2")
        XCTAssertLessThan(few, 20)
    }
}
