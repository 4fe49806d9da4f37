import CutoverConfig
import CutoverControl
import CutoverMetrics
import CutoverSystem
import Foundation
import Synchronization
import XCTest

/// Health hysteresis, readiness windows and the switch gate, driven by an injected clock: no
/// test here waits for real time.
final class HealthAndGateTests: XCTestCase {

    func testRiseAndFallHysteresis() {
        var health = ServerHealth(now: 0)
        XCTAssertEqual(health.state, .unknown)
        XCTAssertTrue(health.isRoutable, "unknown servers take traffic until checks say otherwise")
        XCTAssertFalse(health.record(.success(status: 200, latencyMs: 1), at: 10, rise: 3, fall: 2))
        XCTAssertFalse(health.record(.success(status: 200, latencyMs: 1), at: 20, rise: 3, fall: 2))
        XCTAssertTrue(health.record(.success(status: 200, latencyMs: 1), at: 30, rise: 3, fall: 2))
        XCTAssertEqual(health.state, .up)
        XCTAssertEqual(health.since, 30)
        // One failure is not enough; a success in between resets the count.
        XCTAssertFalse(health.record(.failure(reason: "timeout"), at: 40, rise: 3, fall: 2))
        XCTAssertFalse(health.record(.success(status: 204, latencyMs: 1), at: 50, rise: 3, fall: 2))
        XCTAssertFalse(health.record(.failure(reason: "refused"), at: 60, rise: 3, fall: 2))
        XCTAssertEqual(health.state, .up)
        XCTAssertTrue(health.record(.failure(reason: "status 503"), at: 70, rise: 3, fall: 2))
        XCTAssertEqual(health.state, .down)
        XCTAssertFalse(health.isRoutable)
        XCTAssertEqual(health.since, 70)
        XCTAssertEqual(health.lastOutcome, .failure(reason: "status 503"))
        XCTAssertEqual(health.consecutiveFailures, 2)
    }

    func testReadinessNeedsTheConditionContinuouslyForTheWindow() {
        var readiness = ColorReadiness()
        readiness.update(conditionHolds: false, at: 0)
        XCTAssertFalse(readiness.isReady(at: 100_000, readyAfterMs: 30_000))
        XCTAssertEqual(NotReady.tooFewUp(app: "web", color: .green, up: 0, total: 1, minHealthy: 1).description,
                       "app web: 0 of 1 green servers up, min_healthy is 1")
        readiness.update(conditionHolds: true, at: 1_000)
        readiness.update(conditionHolds: true, at: 5_000)  // still holding: the window keeps its start
        XCTAssertFalse(readiness.isReady(at: 30_999, readyAfterMs: 30_000))
        XCTAssertTrue(readiness.isReady(at: 31_000, readyAfterMs: 30_000))
        // An interruption restarts the window.
        readiness.update(conditionHolds: false, at: 40_000)
        readiness.update(conditionHolds: true, at: 41_000)
        XCTAssertFalse(readiness.isReady(at: 70_999, readyAfterMs: 30_000))
        XCTAssertTrue(readiness.isReady(at: 71_000, readyAfterMs: 30_000))
    }

    // MARK: The gate, with a control plane whose clock and probe the test owns

    final class ManualClock: Sendable {
        let milliseconds = Atomic<Int64>(1_000)
        func advance(_ delta: Int64) { milliseconds.add(delta, ordering: .relaxed) }
        var now: Int64 { milliseconds.load(ordering: .relaxed) }
    }

    /// Probe results by "server path"; anything unlisted answers 200. A held path answers
    /// only when the test releases it, and says when a probe for it began.
    final class ScriptedProbe: @unchecked Sendable {
        private let lock = NSLock()
        private var failures: [String: String] = [:]
        private var heldPath: String? = nil
        private var held: [@Sendable () -> Void] = []
        let heldProbeStarted = DispatchSemaphore(value: 0)
        func fail(_ key: String, _ reason: String) { lock.withLock { failures[key] = reason } }
        func clear() { lock.withLock { failures.removeAll() } }
        func hold(_ path: String) { lock.withLock { heldPath = path } }
        func release() {
            let waiting = lock.withLock { () -> [@Sendable () -> Void] in
                heldPath = nil
                defer { held.removeAll() }
                return held
            }
            for answer in waiting { answer() }
        }
        func answer(_ address: SocketAddress, _ path: String) -> CheckOutcome {
            lock.withLock { failures["\(address) \(path)"] }.map { .failure(reason: $0) } ?? .success(status: 200, latencyMs: 1)
        }
        var probe: Probe {
            { [self] request, done in
                let outcome = answer(request.address, request.path)
                let isHeld = lock.withLock { () -> Bool in
                    guard heldPath == request.path else { return false }
                    held.append { done(outcome) }
                    return true
                }
                if isHeld { heldProbeStarted.signal() } else { done(outcome) }
            }
        }
    }

    private func makeControlPlane(clock: ManualClock, probe: ScriptedProbe, folder: URL, gate: String = "") throws -> ControlPlane {
        let text = """
            listen 127.0.0.1:0
            state_file \(folder.path)/state
            \(gate)
            health {
                rise 2
                fall 2
                ready_after 30s
                min_healthy 1
            }
            app api {
                host api.test
                verify /ready /slo
                blue 127.0.0.1:9001
                green 127.0.0.1:9002 127.0.0.1:9003
            }
            app web {
                host *
                verify /
                blue 127.0.0.1:9011
                green 127.0.0.1:9012
            }
            """
        let config = try ConfigParser.parse(text, path: "gate.conf")
        return try ControlPlane(
            config: config, configPath: nil, state: PersistentState(active: .blue), logger: Logger(minimumLevel: .error),
            audit: try AuditLog(path: folder.appendingPathComponent("audit.log").path),
            clock: { clock.now }, probe: probe.probe)
    }

    private func temporaryFolder() throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-gate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return folder
    }

    private func key(_ app: String, _ color: Color, _ server: String) -> ControlPlane.ServerKey {
        ControlPlane.ServerKey(app: app, color: color, server: server)
    }

    private let operatorActor = AuditActor(uid: 1000, user: "deployer", pid: 4242)

    func testSwitchIsRefusedWithConcreteReasonsUntilReadyThenVerified() throws {
        let clock = ManualClock()
        let probe = ScriptedProbe()
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let control = try makeControlPlane(clock: clock, probe: probe, folder: folder)

        // Nothing checked yet: refused, naming each app and server.
        var reply = control.execute("switch green reason release 1.3.0", actor: operatorActor)
        XCTAssertEqual(reply["ok"], false)
        let reasons = reply["reasons"]?.arrayValue?.compactMap(\.stringValue) ?? []
        XCTAssertTrue(reasons.contains("app api: 0 of 2 green servers up, min_healthy is 1"), "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.hasPrefix("app web green 127.0.0.1:9012: unknown since ") && $0.hasSuffix("(not checked yet)") }, "\(reasons)")

        // Checks come in; 9003 keeps failing, which min_healthy 1 tolerates.
        for _ in 0..<2 {
            control.record(.success(status: 200, latencyMs: 2), for: key("api", .green, "127.0.0.1:9002"))
            control.record(.failure(reason: "refused"), for: key("api", .green, "127.0.0.1:9003"))
            control.record(.success(status: 200, latencyMs: 2), for: key("web", .green, "127.0.0.1:9012"))
            clock.advance(1_000)
        }
        reply = control.execute("switch green", actor: operatorActor)
        XCTAssertEqual(reply["ok"], false, "healthy, but not for ready_after yet")
        XCTAssertTrue(reply["reasons"]?.arrayValue?.first?.stringValue?.contains("short of ready_after (30000 ms)") == true, "\(reply)")

        clock.advance(30_000)
        probe.fail("127.0.0.1:9002 /slo", "status 500")
        reply = control.execute("switch green", actor: operatorActor)
        XCTAssertEqual(reply["ok"], false, "a failing verify path refuses the switch")
        XCTAssertEqual(reply["reasons"]?.arrayValue?.compactMap(\.stringValue),
                       ["verify /slo on app api green 127.0.0.1:9002: status 500"])
        XCTAssertEqual(control.activeColor, .blue)

        probe.clear()
        reply = control.execute("switch green reason release 1.3.0", actor: operatorActor)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(reply["active"], "green")
        XCTAssertEqual(reply["previous"], "blue")
        XCTAssertEqual(reply["generation"], 1)
        XCTAssertEqual(reply["verify"]?.arrayValue?.count, 3, "/ready and /slo on 9002, / on 9012 (9003 is down)")
        XCTAssertEqual(control.publisher.snapshot().table.activeColor, .green)
        XCTAssertEqual(try StateFile.load(path: folder.appendingPathComponent("state").path)?.active, .green,
                       "the state is durable before the switch is acknowledged")

        // The audit trail has the refusals and the switch, with who asked.
        let history = control.execute("history 10", actor: operatorActor)["records"]?.arrayValue ?? []
        XCTAssertEqual(history.compactMap { $0["event"]?.stringValue }, ["refused", "refused", "refused", "switch"])
        XCTAssertEqual(history.last?["actor"]?["user"], "deployer")
        XCTAssertEqual(history.last?["reason"], "release 1.3.0")
        XCTAssertEqual(AuditLog.verify(path: folder.appendingPathComponent("audit.log").path), .ok(lines: 4))
    }

    func testForceSkipsTheGateAndRollbackNeedsOneHealthyServerPerApp() throws {
        let clock = ManualClock()
        let probe = ScriptedProbe()
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let control = try makeControlPlane(clock: clock, probe: probe, folder: folder)

        XCTAssertEqual(control.execute("rollback", actor: operatorActor)["ok"], false, "nothing to roll back to yet")
        let forced = control.execute("switch green force reason hotfix", actor: operatorActor)
        XCTAssertEqual(forced["ok"], true)
        XCTAssertEqual(forced["forced"], true)

        // Blue was never checked: rollback is refused, naming the apps.
        var rollback = control.execute("rollback", actor: operatorActor)
        XCTAssertEqual(rollback["ok"], false)
        XCTAssertTrue(rollback["reasons"]?.arrayValue?.compactMap(\.stringValue).contains("app api: no healthy blue server") == true)

        for _ in 0..<2 {
            control.record(.success(status: 200, latencyMs: 1), for: key("api", .blue, "127.0.0.1:9001"))
            control.record(.success(status: 200, latencyMs: 1), for: key("web", .blue, "127.0.0.1:9011"))
        }
        // No ready_after window for a rollback.
        rollback = control.execute("rollback reason green returns 500s", actor: operatorActor)
        XCTAssertEqual(rollback["ok"], true, "\(rollback)")
        XCTAssertEqual(rollback["active"], "blue")
        XCTAssertEqual(control.persistentState, PersistentState(active: .blue, previous: .green, generation: 2))
    }

    func testDrainIsOperatorIntentKeptApartFromHealth() throws {
        let clock = ManualClock()
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let control = try makeControlPlane(clock: clock, probe: ScriptedProbe(), folder: folder)
        for _ in 0..<2 { control.record(.success(status: 200, latencyMs: 1), for: key("api", .blue, "127.0.0.1:9001")) }

        XCTAssertEqual(control.execute("drain api 127.0.0.1:9001", actor: operatorActor)["ok"], true)
        var server = control.publisher.snapshot().table.apps[0].blue[0]
        XCTAssertFalse(server.routable, "drained: no new requests")
        XCTAssertEqual(control.persistentState.drained, ["api 127.0.0.1:9001"])
        let status = control.execute("status", actor: operatorActor)
        let entry = status["apps"]?.arrayValue?.first?["blue"]?.arrayValue?.first
        XCTAssertEqual(entry?["health"], "up", "health is unchanged by a drain")
        XCTAssertEqual(entry?["drained"], true)

        XCTAssertEqual(control.execute("undrain api 127.0.0.1:9001", actor: operatorActor)["ok"], true)
        server = control.publisher.snapshot().table.apps[0].blue[0]
        XCTAssertTrue(server.routable)
        XCTAssertEqual(control.execute("drain api 10.0.0.1:1", actor: operatorActor)["error"], "app api has no server 10.0.0.1:1")
        XCTAssertEqual(control.execute("drain nope 127.0.0.1:9001", actor: operatorActor)["error"], "unknown app 'nope'")
    }

    func testHealthChangesRepublishRoutability() throws {
        let clock = ManualClock()
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let control = try makeControlPlane(clock: clock, probe: ScriptedProbe(), folder: folder)
        let before = control.publisher.generation
        control.record(.failure(reason: "refused"), for: key("web", .blue, "127.0.0.1:9011"))
        XCTAssertEqual(control.publisher.generation, before, "one failure: no change (fall 2)")
        control.record(.failure(reason: "refused"), for: key("web", .blue, "127.0.0.1:9011"))
        XCTAssertGreaterThan(control.publisher.generation, before)
        XCTAssertFalse(control.publisher.snapshot().table.apps[1].blue[0].routable, "down servers get no new requests")
    }

    func testADrainDuringASwitchIsNeitherLostNorLeftOffDisk() throws {
        let clock = ManualClock()
        let probe = ScriptedProbe()
        probe.hold("/slo")  // the switch's verify request waits until the test lets it answer
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let control = try makeControlPlane(clock: clock, probe: probe, folder: folder)
        for _ in 0..<2 {
            control.record(.success(status: 200, latencyMs: 1), for: key("api", .green, "127.0.0.1:9002"))
            control.record(.success(status: 200, latencyMs: 1), for: key("web", .green, "127.0.0.1:9012"))
        }
        clock.advance(31_000)
        let switched = DispatchSemaphore(value: 0)
        let box = UncheckedSendableBox(control)
        Thread.detachNewThread {
            _ = box.value.execute("switch green reason release", actor: AuditActor(uid: 0, user: "a", pid: 1))
            switched.signal()
        }
        XCTAssertEqual(probe.heldProbeStarted.wait(timeout: .now() + 10), .success, "the switch is in its verify requests now")
        let drained = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            XCTAssertEqual(box.value.execute("drain api 127.0.0.1:9001", actor: AuditActor(uid: 1000, user: "deployer", pid: 4242))["ok"], true)
            drained.signal()
        }
        // The drain waits for the switch (one state-file writer at a time) until its verify ends.
        XCTAssertEqual(drained.wait(timeout: .now() + 0.2), .timedOut, "a drain does not overtake a switch under way")
        probe.release()
        XCTAssertEqual(drained.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(switched.wait(timeout: .now() + 10), .success)
        let expected = PersistentState(active: .green, previous: .blue, generation: 1, drained: ["api 127.0.0.1:9001"])
        XCTAssertEqual(control.persistentState, expected)
        XCTAssertEqual(try StateFile.load(path: folder.appendingPathComponent("state").path), expected, "what is on disk")
    }

    // MARK: Gate thresholds from traffic

    /// Figures the test sets, served to the control plane as the data plane's.
    final class ScriptedFigures: @unchecked Sendable {
        private let lock = NSLock()
        private var figures: [AppPool: WindowedStats.Figures] = [:]

        func set(_ app: String, _ color: Color, requests: Int, errors: Int = 0, latencyMicros: UInt64) {
            var value = WindowedStats.Figures()
            for index in 0..<requests {
                let failed = index < errors
                value.record(RequestSample(outcome: failed ? .serverError : .success, status: failed ? 500 : 200,
                                           latencyMicros: latencyMicros))
            }
            lock.withLock { figures[AppPool(app: app, color: color)] = value }
        }

        var link: DataPlaneLink {
            DataPlaneLink(
                snapshot: { [self] window, totals in
                    var snapshot = MetricsSnapshot(window: window, nanoseconds: 60_000_000_000, includesTotals: totals)
                    snapshot.windowFigures = lock.withLock { figures }
                    return snapshot
                },
                startedNs: 0, connections: { (0, 0) }, accessLogDropped: { 0 }, reopenAccessLog: { nil })
        }
    }

    func testGateThresholdsCompareTheTargetsTrafficWithTheActiveColor() throws {
        let clock = ManualClock()
        let probe = ScriptedProbe()
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let control = try makeControlPlane(clock: clock, probe: probe, folder: folder, gate: """
            gate {
                window 1m
                max_5xx_rate 0.5%
                max_p95_ratio 1.1
                min_requests 100
            }
            """)
        let figures = ScriptedFigures()
        control.attach(dataPlane: figures.link)
        for _ in 0..<2 {
            for (app, color, server) in [("api", Color.green, "127.0.0.1:9002"), ("api", .green, "127.0.0.1:9003"),
                                         ("web", .green, "127.0.0.1:9012"), ("api", .blue, "127.0.0.1:9001"), ("web", .blue, "127.0.0.1:9011")] {
                control.record(.success(status: 200, latencyMs: 2), for: key(app, color, server))
            }
            clock.advance(1_000)
        }
        clock.advance(30_000)
        figures.set("web", .blue, requests: 1_000, latencyMicros: 10_000)

        // A canary of green that fails 2.5 % of its requests.
        figures.set("web", .green, requests: 200, errors: 5, latencyMicros: 10_000)
        var reply = control.execute("switch green", actor: operatorActor)
        XCTAssertEqual(reply["ok"], false)
        XCTAssertEqual(reply["reasons"]?.arrayValue?.compactMap(\.stringValue),
                       ["app web: green 5xx rate 2.50% over the last 1m (5 of 200 requests) exceeds max_5xx_rate 0.50%"])

        // No errors, but three times slower than blue at p95.
        figures.set("web", .green, requests: 200, latencyMicros: 30_000)
        reply = control.execute("switch green", actor: operatorActor)
        XCTAssertEqual(reply["ok"], false)
        let reason = reply["reasons"]?.arrayValue?.first?.stringValue ?? ""
        XCTAssertTrue(reason.hasPrefix("app web: green p95 30.0"), reason)
        XCTAssertTrue(reason.contains("over the last 1m is 3.00× blue's 10.0"), reason)
        XCTAssertTrue(reason.contains("above max_p95_ratio 1.10 (200 and 1000 requests)"), reason)
        XCTAssertTrue(try String(contentsOf: folder.appendingPathComponent("audit.log"), encoding: .utf8).contains("max_p95_ratio"),
                      "the refusal and its figures are on record")

        // Too little traffic to judge (under min_requests): health and verify decide.
        figures.set("web", .green, requests: 50, errors: 50, latencyMicros: 90_000)
        reply = control.execute("switch green", actor: operatorActor)
        XCTAssertEqual(reply["ok"], true, reply.serialized())

        // Rollback is never held back by traffic figures: it must be fast.
        figures.set("web", .blue, requests: 500, errors: 500, latencyMicros: 90_000)
        XCTAssertEqual(control.execute("rollback", actor: operatorActor)["ok"], true)
    }
}

struct UncheckedSendableBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
