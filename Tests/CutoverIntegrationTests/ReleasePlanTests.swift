import CutoverConfig
import CutoverControl
import CutoverRuntime
import CutoverSystem
import Foundation
import Synchronization
import XCTest

/// A release plan end to end: real upstreams, a real proxy, live traffic, holds of a second.
final class ReleasePlanTests: XCTestCase {
    private let deployer = AuditActor(uid: 1000, user: "deployer", pid: 1)
    private var folder: URL!
    private var upstreams: [TestUpstream] = []
    private var runtime: CutoverRuntime?
    private final class Flag: Sendable {
        let raised = Atomic<Bool>(false)
    }
    private let stopLoad = Flag()
    private var loadThread: Thread?
    private let loadDone = DispatchSemaphore(value: 0)

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-plan-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if loadThread != nil {
            stopLoad.raised.store(true, ordering: .relaxed)
            loadDone.wait()
        }
        runtime?.stop()
        for upstream in upstreams { upstream.stop() }
        try? FileManager.default.removeItem(at: folder)
    }

    /// Green answers 503 to every request but its health check (`/`) when `greenFails`; the load
    /// asks for `/shop`.
    private func start(greenFails: Bool) throws -> CutoverRuntime {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream(name: "green") { request, connection in
            if greenFails && request.target != "/" {
                connection.respond(status: 503, reason: "Service Unavailable", headers: [("X-Color", "green")], body: Array("broken\n".utf8))
            } else {
                connection.respond(headers: [("X-Color", "green")], body: Array("green\n".utf8))
            }
        }
        let receiver = try TestUpstream(name: "receiver") { _, connection in connection.respond(status: 204, reason: "No Content") }
        upstreams = [blue, green, receiver]
        let script = folder.appendingPathComponent("notify.sh").path
        try "#!/bin/sh\ncat >> \(folder.appendingPathComponent("notified.jsonl").path)\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 2
            state_file run/state
            audit_log run/audit.log
            notify webhook http://127.0.0.1:\(receiver.port)/hooks/cutover
            notify exec notify.sh
            health {
                interval 100ms
                rise 1
                fall 3
                ready_after 0s
            }
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            plan quick {
                step weight 10 pin header X-Tenant pilot-1 hold 1s
                step weight 50 hold 1s
                step weight 100 hold 1s
                rollback_if error_regression
                rollback_if error_rate > 20%
                min_requests 20
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path, logger: Logger(minimumLevel: .error))
        try runtime.start()
        self.runtime = runtime
        let port = runtime.server.listenAddresses[0].port
        let stop = stopLoad
        let done = loadDone
        loadThread = Thread {
            while !stop.raised.load(ordering: .relaxed) {
                guard let client = try? RawHTTPClient(port: port, timeout: 5) else { continue }
                for _ in 0..<100 where !stop.raised.load(ordering: .relaxed) {
                    guard (try? client.request("GET", "/shop", host: "shop.example")) != nil else { break }
                }
            }
            done.signal()
        }
        loadThread?.start()
        return runtime
    }

    private func admin(_ line: String) -> JSON { runtime!.controlPlane.execute(line, actor: deployer) }

    private func waitFor(_ phase: String, timeout: TimeInterval = 30, file: StaticString = #filePath, line: UInt = #line) -> JSON? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let status = admin("release status")
            if status["release"]?["phase"]?.stringValue == phase { return status }
            usleep(50_000)
        }
        XCTFail("the release never reached \(phase): \(admin("release status"))", file: file, line: line)
        return nil
    }

    private func waitUntilGreenIsReady() {
        let deadline = Date().addingTimeInterval(10)
        while admin("status")["colors"]?["green"]?["ready"] != true && Date() < deadline { usleep(20_000) }
    }

    private func auditEvents() throws -> [[String: Any]] {
        let text = try String(contentsOfFile: folder.appendingPathComponent("run/audit.log").path, encoding: .utf8)
        return try text.split(separator: "\n").map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
    }

    func testAHealthyGreenCompletesThePlanAndBecomesStable() throws {
        let runtime = try start(greenFails: false)
        waitUntilGreenIsReady()
        let started = admin("release start quick reason release 1.4.0")
        XCTAssertEqual(started["ok"], true, "\(started)")
        XCTAssertEqual(started["release"]?["step"], 1)
        XCTAssertEqual(started["release"]?["conditions"]?.arrayValue?.compactMap { $0["condition"]?.stringValue },
                       ["error_regression", "error_rate > 20%"])
        // Step 1: the pilot tenant reaches green; most users stay on blue.
        let port = runtime.server.listenAddresses[0].port
        XCTAssertEqual(try RawHTTPClient(port: port).request(headers: [("X-Tenant", "pilot-1")]).bodyString, "green\n")
        XCTAssertEqual(admin("release start quick")["ok"], false, "one release at a time")
        _ = waitFor("completed")
        XCTAssertEqual(runtime.controlPlane.activeColor, .green)
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "green\n")
        let events = try auditEvents().compactMap { $0["event"] as? String }
        XCTAssertEqual(events.filter { $0.hasPrefix("release_") }, ["release_started", "release_step", "release_step", "release_step", "release_completed"])
        XCTAssertEqual(events.last, "release", "then the switch the completion made, recorded as the release's")
        XCTAssertFalse(events.contains("auto_rollback"))
        let step = try XCTUnwrap(try auditEvents().last { ($0["event"] as? String) == "release_step" })
        let details = try XCTUnwrap(step["details"] as? [String: String])
        XCTAssertEqual(details["plan"], "quick")
        XCTAssertNotNil(details["plan_hash"])
        XCTAssertNotNil(details["candidate_requests"], "each wave's record carries its evidence")
        // The release report: the timeline with each wave's figures for both colors.
        let report = admin("release report")
        XCTAssertEqual(report["plan"], "quick")
        let timeline = report["events"]?.arrayValue ?? []
        XCTAssertEqual(timeline.compactMap { $0["event"]?.stringValue },
                       ["release_started", "release_step", "release_step", "release_step", "release_completed", "release"])
        let secondWave = timeline[2]
        XCTAssertEqual(secondWave["step"], "2")
        XCTAssertNotNil(secondWave["candidate"]?["error_rate"]?.stringValue, "\(secondWave)")
        XCTAssertNotNil(secondWave["stable"]?["requests"]?.stringValue)
    }

    func testAFailingGreenIsRolledBackAutomaticallyWithItsEvidence() throws {
        let runtime = try start(greenFails: true)
        waitUntilGreenIsReady()
        XCTAssertEqual(admin("release start quick force")["ok"], true)
        let status = try XCTUnwrap(waitFor("rolled_back", timeout: 20))
        XCTAssertTrue(status["release"]?["waiting_for"]?.stringValue?.contains("rolled back (rollback_if") == true, "\(status)")
        XCTAssertEqual(runtime.controlPlane.activeColor, .blue)
        XCTAssertEqual(runtime.controlPlane.persistentState.releases.values.filter { $0.candidateBasisPoints > 0 }.count, 0)
        let port = runtime.server.listenAddresses[0].port
        XCTAssertEqual(try RawHTTPClient(port: port).request(headers: [("X-Tenant", "pilot-1")]).bodyString, "blue\n",
                       "the plan's pins to green are suspended")
        let records = try auditEvents()
        let automatic = try XCTUnwrap(records.first { ($0["event"] as? String) == "auto_rollback" })
        let details = try XCTUnwrap(automatic["details"] as? [String: String])
        XCTAssertNotNil(details["statistic"], "\(details)")
        XCTAssertNotNil(details["threshold"])
        XCTAssertEqual(details["plan"], "quick")
        // The record comes before the change it announces.
        let order = records.compactMap { $0["event"] as? String }
        XCTAssertLessThan(try XCTUnwrap(order.firstIndex(of: "auto_rollback")), try XCTUnwrap(order.lastIndex(of: "rollback")))
        // And it was delivered: as a POST to the webhook and on a program's standard input.
        let receiver = upstreams[2]
        let deadline = Date().addingTimeInterval(10)
        func delivered() -> [[String: Any]] {
            receiver.requests.filter { $0.target == "/hooks/cutover" && $0.method == "POST" }
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any] }
        }
        while !delivered().contains(where: { $0["event"] as? String == "auto_rollback" }) && Date() < deadline { usleep(20_000) }
        let posted = try XCTUnwrap(delivered().first { $0["event"] as? String == "auto_rollback" })
        XCTAssertEqual((posted["details"] as? [String: String])?["plan"], "quick")
        XCTAssertEqual(receiver.requests.first?.header("Content-Type"), "application/json")
        let notified = folder.appendingPathComponent("notified.jsonl").path
        while !((try? String(contentsOfFile: notified, encoding: .utf8))?.contains("\"auto_rollback\"") ?? false) && Date() < deadline { usleep(20_000) }
        let lines = try String(contentsOfFile: notified, encoding: .utf8).split(separator: "\n")
        XCTAssertTrue(lines.contains { $0.contains("\"event\":\"auto_rollback\"") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains("\"event\":\"release_started\"") })
    }

    /// A switch with a watch: a green that fails after the switch is switched back on its own,
    /// judged against blue's figures from before the switch; a healthy one passes.
    func testAWatchAfterASwitchRollsBackAFailingGreen() throws {
        let runtime = try start(greenFails: true)
        waitUntilGreenIsReady()
        while (admin("stats 10s")["apps"]?.arrayValue?.first { $0["color"] == "blue" }?["requests"]?.intValue ?? 0) < 200 { usleep(20_000) }
        let switched = admin("switch green watch 30s force reason release 1.6.0")
        XCTAssertEqual(switched["ok"], true, "\(switched)")
        XCTAssertTrue(switched["watch"]?.stringValue?.hasPrefix("watching green for 30 s against blue's figures") == true, "\(switched)")
        let deadline = Date().addingTimeInterval(20)
        while runtime.controlPlane.activeColor != .blue && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(runtime.controlPlane.activeColor, .blue, "the watch switched back")
        XCTAssertEqual(admin("status")["watch"]?["phase"], "rolled_back")
        let events = try auditEvents()
        let automatic = try XCTUnwrap(events.first { ($0["event"] as? String) == "auto_rollback" })
        XCTAssertEqual((automatic["details"] as? [String: String])?["watch"], "after the switch")
        XCTAssertTrue(events.contains { ($0["event"] as? String) == "watch_started" })
    }

    func testAWatchOverAHealthyGreenPasses() throws {
        let runtime = try start(greenFails: false)
        waitUntilGreenIsReady()
        XCTAssertEqual(admin("switch green watch 1s force")["ok"], true)
        let deadline = Date().addingTimeInterval(20)
        while admin("status")["watch"]?["phase"]?.stringValue != "passed" && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(admin("status")["watch"]?["phase"], "passed")
        XCTAssertEqual(runtime.controlPlane.activeColor, .green)
        XCTAssertTrue(try auditEvents().contains { ($0["event"] as? String) == "watch_passed" })
    }

    func testAManualWeightPausesTheReleaseAndAbortEndsIt() throws {
        _ = try start(greenFails: false)
        waitUntilGreenIsReady()
        XCTAssertEqual(admin("release start quick")["ok"], true)
        let manual = admin("weight green 30 force")
        XCTAssertEqual(manual["ok"], true)
        XCTAssertEqual(manual["release"]?.stringValue,
                       "the running release was paused: an operator changed the routing by hand (`release resume` continues it)")
        XCTAssertEqual(admin("release status")["release"]?["phase"], "paused")
        XCTAssertEqual(runtime?.controlPlane.persistentState.releases["web"]?.candidateBasisPoints, 3_000)
        XCTAssertEqual(admin("release resume")["release"]?["phase"], "running")
        XCTAssertEqual(runtime?.controlPlane.persistentState.releases["web"]?.candidateBasisPoints, 1_000,
                       "resume sets the step's weight again: the plan owns the routing while it runs")
        let aborted = admin("release abort reason customer escalation")
        XCTAssertEqual(aborted["release"]?["phase"], "rolled_back")
        XCTAssertEqual(runtime?.controlPlane.persistentState.releases.values.filter { $0.candidateBasisPoints > 0 }.count, 0)
        XCTAssertEqual(admin("release pause")["ok"], false)
        XCTAssertEqual(admin("release start nope")["error"]?.stringValue, "unknown plan 'nope' (plans: quick)")

        // A switch by hand ends a release (it does not leave it to be resumed onto the old color).
        XCTAssertEqual(admin("release start quick")["ok"], true)
        let switched = admin("switch green force")
        XCTAssertEqual(switched["release"]?.stringValue, "the running release ended: an operator switched by hand")
        XCTAssertEqual(admin("release status")["release"]?["phase"], "ended")
        XCTAssertEqual(admin("release resume")["ok"], false)
        XCTAssertNil(runtime?.controlPlane.persistentState.releasePlan, "a restart does not resume it")
    }
}

/// A notify target that refuses or fails is retried, counted and logged, and never holds up
/// the caller.
final class NotifierTests: XCTestCase {
    func testAFailingTargetIsRetriedCountedAndNeverBlocks() throws {
        let refusing = RefusingPort()
        let notifier = Notifier(targets: [.webhook(host: "127.0.0.1", port: refusing.port, path: "/x"), .exec(path: "/bin/false")],
                                logger: Logger(minimumLevel: .error), backoffMs: [10, 10])
        notifier.start()
        defer { notifier.stop() }
        let started = Date()
        for _ in 0..<3 { notifier.send(AuditRecord(event: "auto_rollback", from: .green, to: .blue, reason: "test")) }
        notifier.send(AuditRecord(event: "drain"))  // not a delivered event
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.1, "sending never waits for a delivery")
        let deadline = Date().addingTimeInterval(20)
        while notifier.figures.targets.map(\.failed) != [3, 3] && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(notifier.figures.targets.map(\.failed), [3, 3])
        XCTAssertEqual(notifier.figures.targets.map(\.delivered), [0, 0])
        XCTAssertEqual(notifier.figures.dropped, 0)
    }
}
