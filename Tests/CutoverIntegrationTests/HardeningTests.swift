import CutoverConfig
import CutoverControl
import CutoverRuntime
import CutoverSystem
import Foundation
import Glibc
import XCTest

/// Faults found by running cutover as a hostile operator would, each with the behaviour that
/// replaced it: the real binary or a real proxy, real sockets.
final class HardeningTests: XCTestCase {
    private func folder(_ name: String) throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return folder
    }

    /// A second `cutover run` on an address the first one listens on fails to start, saying
    /// why — before, SO_REUSEPORT let it join and the kernel split clients between two routing
    /// tables.
    func testASecondInstanceOnTheSameAddressRefusesToStart() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try folder("second")
        defer { try? FileManager.default.removeItem(at: folder) }
        func config(_ name: String, port: UInt16, initial: String) throws -> String {
            let path = folder.appendingPathComponent("\(name).conf").path
            try """
                listen 127.0.0.1:\(port)
                workers 2
                initial_color \(initial)
                app web {
                    host *
                    blue 127.0.0.1:\(blue.port)
                    green 127.0.0.1:\(green.port)
                }
                """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let first = try CommandLineTests.RunningProxy(arguments: ["run", "-c", try config("first", port: 0, initial: "blue")])
        defer { _ = first.terminate() }
        let port = try XCTUnwrap(first.listeningPort())

        let second = try OperatorViewsTests.cutover(["run", "-c", try config("second", port: port, initial: "green")])
        XCTAssertEqual(second.status, 1, second.stderr)
        XCTAssertTrue(second.stderr.contains("cannot listen on 127.0.0.1:\(port): another process is listening there"), second.stderr)
        // Every client still gets the first instance's table.
        let client = try RawHTTPClient(port: port)
        for _ in 0..<20 { XCTAssertEqual(try client.request().bodyString, "blue\n") }
    }

    /// `cutover demo` when 127.0.0.1:9108 (its default metrics port) is taken: it starts with
    /// metrics on a free port and says which. The fixed port is the point of this test; if
    /// something else holds it already, that serves the test as well.
    func testDemoPicksAFreeMetricsPortWhenTheDefaultIsTaken() throws {
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(9108).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        _ = listen(holder, 1)
        XCTAssertTrue(Posix.addressInUse(SocketAddress.resolve(host: "127.0.0.1", port: 9108)!), "9108 is taken, by this test or another program")

        let folder = try folder("demo-metrics")
        defer { try? FileManager.default.removeItem(at: folder) }
        let demo = try CommandLineTests.RunningProxy(arguments: ["demo", "--listen", "127.0.0.1:0", "--blue-port", "0", "--green-port", "0",
                                                                 "--preview-listen", "off"], directory: folder)
        defer { _ = demo.terminate() }
        let log = try XCTUnwrap(demo.waitForLog(", the status page on "), "the demo did not start")
        XCTAssertTrue(log.contains("127.0.0.1:9108 is taken: metrics and the status page go to a free port"), log)
        let range = try XCTUnwrap(log.range(of: "metrics on http://127.0.0.1:"))
        let port = try XCTUnwrap(UInt16(log[range.upperBound...].prefix { $0.isNumber }))
        XCTAssertNotEqual(port, 9108)
        XCTAssertEqual(try RawHTTPClient(port: port).request("GET", "/healthz").bodyString, "ok\n")
    }

    /// HTTP/0.9's request line gets its 400 and a close at once; before, the connection sat
    /// waiting for a head until `client_header`.
    func testARequestLineWithoutVersionIsAnsweredAtOnce() throws {
        let blue = try TestUpstream.named("blue")
        defer { blue.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [blue.port], green: [blue.port])], workers: 1,
                                     extra: "timeouts {\n client_header 30s\n}")
        defer { proxy.stop() }
        let client = try proxy.client(timeout: 5)
        let started = Date()
        try client.send("GET /\r\n")
        let response = try client.readResponse()
        XCTAssertEqual(response.status, 400)
        XCTAssertTrue(client.waitForClose(timeout: 5), "the connection is closed")
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "answered when the line ended, not at client_header")
        XCTAssertEqual(blue.requestCount, 0)
    }

    /// An Upgrade request with a body reaches the upstream as a plain request: no Upgrade, no
    /// Connection: upgrade, the body intact; a 101 is not expected.
    func testAnUpgradeWithABodyIsForwardedWithoutUpgrade() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1)
        defer { proxy.stop() }
        let client = try proxy.client()
        let response = try client.request("POST", "/chat", headers: [("Connection", "Upgrade"), ("Upgrade", "websocket")],
                                          body: Array("hello".utf8))
        XCTAssertEqual(response.status, 200)
        let seen = try XCTUnwrap(upstream.requests.last)
        XCTAssertNil(seen.headers.first { $0.name.lowercased() == "upgrade" }, "\(seen.headers)")
        XCTAssertFalse(seen.headers.contains { $0.name.lowercased() == "connection" && $0.value.lowercased().contains("upgrade") })
        XCTAssertEqual(seen.body, Array("hello".utf8))
        XCTAssertEqual(try client.request().status, 200, "the connection stays a plain keep-alive one")
    }

    /// Durations and counts `cutover check` accepted and the proxy then trapped on: every one
    /// is bounded in the parser, with the limit named at its line.
    func testCheckRejectsDurationsAndCountsThatCouldOverflow() throws {
        let folder = try folder("bounds")
        defer { try? FileManager.default.removeItem(at: folder) }
        let cases: [(String, String)] = [
            ("timeouts {\n    client_header 9223372036854775807ms\n}\n", ":2: client_header: '9223372036854775807ms' is longer than 24h, the longest accepted"),
            ("timeouts {\n    client_idle 25h\n}\n", ":2: client_idle: '25h' is longer than 24h, the longest accepted"),
            ("timeouts {\n    connect 99999999999999999999s\n}\n", ":2: connect: '99999999999999999999s' is longer than 24h, the longest accepted"),
            ("limits {\n    max_connections 9223372036854775807\n}\n", ":2: max_connections: 9223372036854775807 is out of range (1..1000000)"),
            ("health {\n    min_healthy 2\n}\n", ":2: min_healthy 2 is more than app web's 1 blue server(s): blue could never be ready"),
        ]
        for (block, expected) in cases {
            let path = folder.appendingPathComponent("c.conf").path
            try (block + "listen 127.0.0.1:0\napp web {\n    host *\n    blue 127.0.0.1:1\n    green 127.0.0.1:2\n}\n")
                .write(toFile: path, atomically: true, encoding: .utf8)
            let outcome = try OperatorViewsTests.cutover(["check", "-c", path])
            XCTAssertEqual(outcome.status, 1, block)
            XCTAssertEqual(outcome.stderr, path + expected + "\n")
        }
    }

    /// A refused connect is not retried on the same server: with one server per color the
    /// client gets its 502 after one attempt (it was three); with another server, that one.
    func testARefusedConnectIsRetriedOnAnotherServerOnly() throws {
        let refusing = RefusingPort()
        let live = try TestUpstream.named("blue")
        defer { live.stop() }
        let alone = try ProxyHarness(apps: [TestApp(name: "web", blue: [refusing.port], green: [live.port])], workers: 1)
        defer { alone.stop() }
        XCTAssertEqual(try alone.client().request().status, 502)
        let attempts = (0..<8).reduce(UInt64(0)) { $0 + alone.server.counters.connectFailures(serverID: $1) }
        XCTAssertEqual(attempts, 1, "one connect to the refusing server, not three")

        let pair = try ProxyHarness(apps: [TestApp(name: "web", blue: [refusing.port, live.port], green: [live.port])], workers: 1)
        defer { pair.stop() }
        let client = try pair.client()
        for _ in 0..<4 { XCTAssertEqual(try client.request().bodyString, "blue\n", "retried on the other server") }
        withExtendedLifetime(refusing) {}
    }

    /// A client that stops reading a large response is reset at `client_body`: no second
    /// `client_body` for a final flush, and no orphaned socket left holding megabytes of unread
    /// response in kernel memory (it stayed in FIN-WAIT-1 before).
    func testASlowReaderIsResetAndLeavesNothingQueued() throws {
        let big = [UInt8](repeating: 0x61, count: 8 << 20)
        let upstream = try TestUpstream(name: "big") { _, connection in connection.respond(body: big) }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1,
                                     extra: "timeouts {\n    client_body 1s\n}")
        defer { proxy.stop() }
        let client = try proxy.client(timeout: 30)
        // A small receive buffer: the response backs up into the proxy at once.
        var small: Int32 = 16_384
        setsockopt(client.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        try client.send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        let started = Date()
        // Accepted first (the loop may not have taken the connection yet)…
        let accepted = Date().addingTimeInterval(5)
        while proxy.server.connectionCounts.clients == 0 && Date() < accepted { usleep(5_000) }
        // …then the proxy gives up on the client after client_body (1 s) and closes its side.
        let deadline = Date().addingTimeInterval(10)
        while proxy.server.connectionCounts.clients > 0 && Date() < deadline { usleep(20_000) }
        let closedAfter = Date().timeIntervalSince(started)
        XCTAssertEqual(proxy.server.connectionCounts.clients, 0, "the proxy closed the connection")
        XCTAssertLessThan(closedAfter, 1.9, "one client_body, not two (the flush was not given another)")
        // Nothing of it is left on the proxy's side: no FIN-WAIT socket with the unread response.
        let ss = Process()
        ss.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        ss.arguments = ["ss", "-tanH", "state", "fin-wait-1", "state", "fin-wait-2", "state", "closing", "state", "last-ack",
                        "( sport = :\(proxy.port) )"]
        let out = Pipe()
        ss.standardOutput = out
        try ss.run()
        let sockets = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        ss.waitUntilExit()
        XCTAssertEqual(sockets.trimmingCharacters(in: .whitespacesAndNewlines), "", "sockets left: \(sockets)")
        // The client sees a reset, not an orderly end of a cut response.
        var byte = [UInt8](repeating: 0, count: 65536)
        var outcome: Int = 1
        while outcome > 0 { outcome = recv(client.fd, &byte, byte.count, 0) }
        XCTAssertEqual(outcome, -1)
        XCTAssertEqual(errno, ECONNRESET)
    }

    /// `health_path off`: no probe ever reaches the servers, they are up from the start, a
    /// server the data plane cannot reach is marked down by failed connects (`fall`), and one
    /// interval later it is tried again.
    func testHealthPathOffMeansPassiveChecksOnly() throws {
        let blue = try TestUpstream.named("blue")
        defer { blue.stop() }
        let refusing = RefusingPort()
        let folder = try folder("passive")
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = try ConfigParser.parse("""
            listen 127.0.0.1:0
            workers 1
            health {
                interval 300ms
                rise 1
                fall 1
                ready_after 0s
            }
            app web {
                host *
                health_path off
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(refusing.port)
            }
            """, path: "<passive>")
        XCTAssertEqual(config.apps.first?.activeChecks, false)
        let runtime = try CutoverRuntime(config: config, configPath: nil, logger: Logger(minimumLevel: .error))
        try runtime.start()
        defer { runtime.stop() }
        func health(_ color: String) -> String? {
            let status = runtime.controlPlane.execute(.status, actor: .current())
            return status["apps"]?.arrayValue?.first?[color]?.arrayValue?.first?["health"]?.stringValue
        }
        XCTAssertEqual(health("blue"), "up", "up at once: no probe will say so")
        XCTAssertEqual(health("green"), "up")
        usleep(700_000)  // two intervals: a probe would have come by now
        XCTAssertEqual(blue.requestCount, 0, "no health check reached the server")

        // Green takes the traffic and cannot be reached: down after one failed connect.
        XCTAssertEqual(runtime.controlPlane.execute(.switchColor(.green, force: true, reason: nil), actor: .current())["ok"], true)
        let port = runtime.server.listenAddresses[0].port
        XCTAssertEqual(try RawHTTPClient(port: port).request().status, 502)
        var deadline = Date().addingTimeInterval(5)
        while health("green") != "down" && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(health("green"), "down")
        // One interval later it is tried again.
        deadline = Date().addingTimeInterval(5)
        while health("green") != "up" && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(health("green"), "up")
        withExtendedLifetime(refusing) {}
    }

    /// The audit record is written before the change becomes durable; start-up reconciles the
    /// log with the state file; `audit verify` finds a log cut short; leftover temp files of
    /// an interrupted save are removed.
    func testTheAuditLogNeverMissesAChange() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try folder("audit")
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
            state_file run/cutover.state
            audit_log run/audit.log
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let run = folder.appendingPathComponent("run")
        let statePath = run.appendingPathComponent("cutover.state").path
        let auditPath = run.appendingPathComponent("audit.log").path
        func start() throws -> CutoverRuntime {
            let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path, logger: Logger(minimumLevel: .error))
            try runtime.start()
            return runtime
        }
        func events() throws -> [JSON] {
            try String(contentsOfFile: auditPath, encoding: .utf8).split(separator: "\n").compactMap { JSON.parse(String($0)) }
        }

        var runtime = try start()
        XCTAssertEqual(runtime.controlPlane.execute(.switchColor(.green, force: true, reason: "one"), actor: .current())["ok"], true)
        let state = try XCTUnwrap(StateFile.load(path: statePath))
        let switchRecord = try XCTUnwrap(events().last { $0["event"]?.stringValue == "switch" })
        XCTAssertEqual(switchRecord["generation"]?.intValue, 1)
        XCTAssertNotNil(state.auditAnchor, "the state file anchors the audit log's last record")
        runtime.stop()

        // A change durable without its record (the process stopped between the two writes):
        // the state file says generation 2, the log's last change is generation 1.
        var edited = try XCTUnwrap(StateFile.load(path: statePath))
        edited.generation = 2
        edited.active = .blue
        edited.previous = .green
        try StateFile.save(edited, path: statePath)
        // And a save a crash interrupted.
        let leftover = run.appendingPathComponent(".cutover.state.tmp-4242-abcdef").path
        try "active green\n".write(toFile: leftover, atomically: false, encoding: .utf8)
        runtime = try start()
        XCTAssertFalse(FileManager.default.fileExists(atPath: leftover), "the interrupted save's file is removed")
        let recovery = try XCTUnwrap(events().last { $0["event"]?.stringValue == "recovery" })
        XCTAssertEqual(recovery["reason"]?.stringValue,
                       "generation 2 took effect without an audit record (the process stopped before writing it, or the log could not be written); running active blue, generation 2")
        runtime.stop()

        // A record whose change never became durable: the log says generation 3, the state 2.
        runtime = try start()
        XCTAssertEqual(runtime.controlPlane.execute(.switchColor(.green, force: true, reason: "three"), actor: .current())["ok"], true)
        runtime.stop()
        var behind = try XCTUnwrap(StateFile.load(path: statePath))
        behind.generation = 2
        behind.active = .blue
        try StateFile.save(behind, path: statePath)
        runtime = try start()
        let notApplied = try XCTUnwrap(events().last { $0["event"]?.stringValue == "recovery" })
        XCTAssertTrue(notApplied["reason"]?.stringValue?.hasPrefix("the switch recorded as generation 3") ?? false, notApplied.serialized())
        XCTAssertTrue(notApplied["reason"]?.stringValue?.hasSuffix("did not take effect: the process stopped before its state file was written; running active blue, generation 2") ?? false)
        XCTAssertEqual(runtime.controlPlane.execute(.switchColor(.green, force: true, reason: "four"), actor: .current())["ok"], true)
        runtime.stop()

        // audit verify: intact, then cut short below the state file's anchor.
        let verified = try OperatorViewsTests.cutover(["audit", "verify", "-c", path])
        XCTAssertEqual(verified.status, 0, verified.stderr)
        XCTAssertTrue(verified.stdout.contains("hash chain intact; the state file's anchor is record"), verified.stdout)
        var lines = try String(contentsOfFile: auditPath, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        lines.removeLast(4)  // the empty piece after the last newline, stop, switch four, the recovery
        try (lines.joined(separator: "\n") + "\n").write(toFile: auditPath, atomically: true, encoding: .utf8)
        let cut = try OperatorViewsTests.cutover(["audit", "verify", "-c", path])
        XCTAssertEqual(cut.status, 1)
        XCTAssertTrue(cut.stderr.contains("cut short"), cut.stderr)
    }

    /// A connection that sends nothing is closed at `client_header`, not held for
    /// `client_idle`; at `max_connections` the longest-idle connection makes room for a new
    /// client instead of the new client waiting for `client_idle`.
    func testSilentAndIdleConnectionsDoNotKeepClientsOut() throws {
        let blue = try TestUpstream.named("blue")
        defer { blue.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [blue.port], green: [blue.port])], workers: 1,
                                     extra: "timeouts {\n    client_header 500ms\n    client_idle 60s\n}\nlimits {\n    max_connections 8\n}")
        defer { proxy.stop() }
        let silent = try proxy.client(timeout: 10)
        let started = Date()
        XCTAssertTrue(silent.waitForClose(timeout: 5), "closed at client_header")
        XCTAssertLessThan(Date().timeIntervalSince(started), 4, "not held for client_idle (60 s)")

        // Eight keep-alive clients, each idle after one request: the cap.
        var idle: [RawHTTPClient] = []
        for _ in 0..<8 {
            let client = try proxy.client()
            XCTAssertEqual(try client.request().status, 200)
            idle.append(client)
        }
        // A ninth client is served at once: the longest-idle connection (the first) made room.
        let newcomer = try proxy.client(timeout: 5)
        XCTAssertEqual(try newcomer.request().status, 200)
        XCTAssertTrue(idle[0].waitForClose(timeout: 5), "the oldest idle connection was closed")
        XCTAssertEqual(proxy.server.counters.idleClientsEvicted, 1)
        XCTAssertEqual(try idle[7].request().status, 200, "the others keep their connections")
    }

    /// Running out of descriptors is the proxy's problem, not the server's: under a low
    /// descriptor limit, a switch followed by a burst gives no 502, marks no server down and
    /// puts nothing in the colors' 5xx figures. The old color's idle connections are trimmed at
    /// the switch, and idle connections count in the descriptor budget.
    func testRunningOutOfDescriptorsMarksNoServerDown() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try folder("nofile")
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
            health {
                interval 200ms
                rise 1
                fall 1
                ready_after 0s
            }
            limits {
                upstream_idle_per_server 1000
            }
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let proxy = try CommandLineTests.RunningProxy(
            arguments: ["-c", "ulimit -n 160 && exec \"$0\" run -c \"$1\"", CommandLineTests.binary.path, config],
            directory: folder, executable: "/bin/sh")
        defer { _ = proxy.terminate() }
        let port = try XCTUnwrap(proxy.listeningPort())
        func bench(_ seconds: String) throws -> JSON {
            let process = Process()
            process.executableURL = BenchSmokeTests.bench
            process.arguments = ["load", "http://127.0.0.1:\(port)/", "-c", "46", "-t", "2", "-d", seconds, "--json"]
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return try XCTUnwrap(JSON.parse(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        let before = try bench("1s")
        XCTAssertEqual(before["non_2xx"], 0, before.serialized())
        XCTAssertEqual(try OperatorViewsTests.cutover(["switch", "green", "--force", "-c", config]).status, 0)
        let after = try bench("2s")
        XCTAssertEqual(after["non_2xx"], 0, "no 502 or 503: \(after.serialized())")
        XCTAssertEqual(after["errors"], .object([]), after.serialized())
        let health = try OperatorViewsTests.cutover(["health", "--json", "-c", config]).stdout
        XCTAssertFalse(health.contains("\"health\":\"down\""), health)
        let stats = JSON.parse(try OperatorViewsTests.cutover(["stats", "total", "--json", "-c", config]).stdout)
        for row in stats?["apps"]?.arrayValue ?? [] {
            XCTAssertEqual(row["5xx"]?.intValue, 0, "\(row.serialized())")
            XCTAssertEqual(row["upstream_errors"]?["connect_failure"]?.intValue, 0, "\(row.serialized())")
        }
    }

    /// Slowloris: 300 connections trickling a head byte at a time while a normal client
    /// works: the normal client sees no failure, every slow one gets its 408 at `client_header`.
    func testSlowlorisDoesNotDisturbNormalClients() throws {
        let blue = try TestUpstream.named("blue")
        defer { blue.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [blue.port], green: [blue.port])], workers: 2,
                                     extra: "timeouts {\n    client_header 2s\n}")
        defer { proxy.stop() }
        var slow: [RawHTTPClient] = []
        for _ in 0..<300 {
            let client = try proxy.client(timeout: 10)
            try client.send("GET / HTTP/1.1\r\nHo")
            slow.append(client)
        }
        let normal = try proxy.client()
        let started = Date()
        var round = 0
        while Date().timeIntervalSince(started) < 1.5 {
            for client in slow where round % 3 == 0 { try? client.send("s") }
            XCTAssertEqual(try normal.request().status, 200)
            round += 1
            usleep(20_000)
        }
        XCTAssertGreaterThan(round, 20)
        var timedOut = 0
        for client in slow {
            if let response = try? client.readResponse(), response.status == 408 { timedOut += 1 }
        }
        XCTAssertEqual(timedOut, 300, "every slow head answered 408 at client_header")
        XCTAssertEqual(try normal.request().status, 200)
    }

    /// A flood past `max_connections`: accepting pauses — without spinning on a listener that
    /// stays readable — and resumes as connections close; the waiting clients are then served.
    func testAFloodPastMaxConnectionsPausesAcceptingWithoutSpinning() throws {
        let (upstream, arrived, release) = try TestUpstream.holding("/hold", body: "held\n")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1,
                                     extra: "limits {\n    max_connections 10\n}")
        defer { proxy.stop() }
        // Ten clients hold the cap with requests in flight (not idle: nothing to evict).
        var holders: [RawHTTPClient] = []
        for _ in 0..<10 {
            let client = try proxy.client(timeout: 20)
            try client.send("GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
            holders.append(client)
        }
        for _ in 0..<10 { XCTAssertEqual(arrived.wait(timeout: .now() + 10), .success) }
        // Fifty more wait in the kernel's backlog.
        var waiting: [RawHTTPClient] = []
        for _ in 0..<50 {
            let client = try proxy.client(timeout: 20)
            try client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            waiting.append(client)
        }
        // Paused, the loop thread sleeps: well under a tenth of a core over a second.
        let loopTicks = { () -> Int in
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            var total = 0
            for task in tasks {
                guard let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8),
                      comm.hasPrefix("cutover-loop"),
                      let stat = try? String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { continue }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                total += (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)  // utime + stime
            }
            return total
        }
        let ticksBefore = loopTicks()
        usleep(1_000_000)
        XCTAssertLessThan(loopTicks() - ticksBefore, 10, "no busy loop while accepting is paused (ticks of 10 ms)")
        XCTAssertLessThanOrEqual(proxy.server.openConnections, 10)
        // The held requests finish and close: accepting resumes, and every waiting client is served.
        for _ in 0..<10 { release.signal() }
        for client in holders { XCTAssertEqual(try client.readResponse().bodyString, "held\n") }
        holders.removeAll()
        for client in waiting { XCTAssertEqual(try client.readResponse().status, 200) }
    }
}

