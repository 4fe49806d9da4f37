import CutoverConfig
import CutoverControl
import CutoverSystem
import XCTest

/// The control plane's parts as values: what a reload changes, drains with their causes, the
/// words of readiness and of the switch gate. No socket, no clock, no sleep.
final class ReloadPlanTests: XCTestCase {
    private func config(_ text: String) throws -> Config {
        try ConfigParser.parse(text, path: "test.conf")
    }

    private let base = """
        listen 127.0.0.1:8080
        state_file /var/lib/cutover/state
        health {
            interval 2s
        }
        app web {
            host *
            blue 127.0.0.1:9001
            green 127.0.0.1:9002
        }
        """

    func testRoutingAndHealthApplyAtOnceListenersWaitForARestart() throws {
        let running = try config(base)
        let sameListen = try config(base.replacingOccurrences(of: "interval 2s", with: "interval 5s")
            .replacingOccurrences(of: "9002", with: "9003"))
        let plan = ReloadPlan(running: running, next: sameListen)
        XCTAssertEqual(plan.restartRequired, [])
        XCTAssertEqual(plan.applied.health.intervalMs, 5_000)
        XCTAssertEqual(plan.applied.apps[0].green.map(\.port), [9003])

        let moved = try config(base.replacingOccurrences(of: "8080", with: "8081")
            .replacingOccurrences(of: "/var/lib/cutover/state", with: "/tmp/other-state")
            + "\nworkers 3\n")
        let restart = ReloadPlan(running: running, next: moved)
        XCTAssertEqual(restart.restartRequired, ["listen", "workers", "state_file"])
        XCTAssertEqual(restart.applied.stateFile, "/var/lib/cutover/state", "the running state file stays in use")
        XCTAssertEqual(restart.applied.listen, moved.listen, "the plan carries the new values for the restart")
    }
}

final class DrainRegistryTests: XCTestCase {
    func testDrainsKeepTheirFirstCauseAndPersistSorted() {
        var drains = DrainRegistry(persisted: ["web 127.0.0.1:9002", "not-an-entry"], at: 5)
        XCTAssertEqual(drains.entries[DrainKey(app: "web", server: "127.0.0.1:9002")]?.cause, .stateFile)
        XCTAssertEqual(drains.persisted, ["web 127.0.0.1:9002"], "an entry that does not parse is dropped")
        XCTAssertTrue(drains.drain(DrainKey(app: "api", server: "127.0.0.1:9001"), cause: .operatorRequest(user: "deployer"), at: 10))
        XCTAssertFalse(drains.drain(DrainKey(app: "api", server: "127.0.0.1:9001"), cause: .operatorRequest(user: "other"), at: 20))
        XCTAssertEqual(drains.entries[DrainKey(app: "api", server: "127.0.0.1:9001")],
                       DrainRegistry.Entry(cause: .operatorRequest(user: "deployer"), since: 10))
        XCTAssertEqual(drains.persisted, ["api 127.0.0.1:9001", "web 127.0.0.1:9002"])
        XCTAssertTrue(drains.undrain(DrainKey(app: "web", server: "127.0.0.1:9002")))
        XCTAssertFalse(drains.undrain(DrainKey(app: "web", server: "127.0.0.1:9002")))
        XCTAssertEqual(DrainRegistry(persisted: drains.persisted).persisted, drains.persisted, "what the state file keeps")
        XCTAssertEqual(DrainKey(entry: "api 127.0.0.1:9001"), DrainKey(app: "api", server: "127.0.0.1:9001"))
    }
}

final class GateWordingTests: XCTestCase {
    func testOneWordingForEveryReason() {
        let rows: [(GateReason, String)] = [
            (.alreadyActive(.green), "green is already the active color"),
            (.notReady(.tooFewUp(app: "api", color: .green, up: 0, total: 2, minHealthy: 1)),
             "app api: 0 of 2 green servers up, min_healthy is 1"),
            (.notReady(.notHealthyLongEnough(color: .green, since: "2026-12-06T10:00:00.000Z", shortMs: 1_500, readyAfterMs: 30_000)),
             "green has been healthy since 2026-12-06T10:00:00.000Z, 1500 ms short of ready_after (30000 ms)"),
            (.notReady(.neverHealthy(.blue)), "blue has not been healthy continuously yet"),
            (.notReady(.noHealthyServer(app: "web", color: .blue)), "app web: no healthy blue server"),
            (.verifyFailed(VerifyResult(app: "api", server: "127.0.0.1:9002", path: "/slo", outcome: .failure(reason: "status 500")),
                           color: .green),
             "verify /slo on app api green 127.0.0.1:9002: status 500"),
        ]
        for (reason, text) in rows { XCTAssertEqual(reason.description, text) }
    }
}
