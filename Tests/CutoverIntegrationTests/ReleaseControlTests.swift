import CutoverConfig
import CutoverControl
import CutoverRouting
import CutoverSystem
import Foundation
import XCTest

/// `weight`, `pin`, `unpin` and a canary's rollback on a control plane whose clock and probes
/// the test owns: gating, what is made durable, what is published, what is audited.
final class ReleaseControlTests: XCTestCase {
    typealias ManualClock = HealthAndGateTests.ManualClock
    typealias ScriptedProbe = HealthAndGateTests.ScriptedProbe

    private let deployer = AuditActor(uid: 1000, user: "deployer", pid: 4242)
    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-release-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private var statePath: String { folder.appendingPathComponent("state").path }

    private func makeControlPlane(clock: ManualClock, state: PersistentState = PersistentState(active: .blue)) throws -> ControlPlane {
        let text = """
            listen 127.0.0.1:0
            state_file \(statePath)
            health {
                rise 1
                fall 1
                ready_after 10s
            }
            app api {
                host api.test
                sticky cookie cutover_id
                pin header X-Tenant big-customer blue
                blue 127.0.0.1:9001
                green 127.0.0.1:9002
            }
            app web {
                host *
                blue 127.0.0.1:9011
                green 127.0.0.1:9012
            }
            """
        let config = try ConfigParser.parse(text, path: "release.conf")
        return try ControlPlane(
            config: config, configPath: nil, state: state, logger: Logger(minimumLevel: .error),
            audit: try AuditLog(path: folder.appendingPathComponent("audit.log").path),
            clock: { clock.now }, probe: ScriptedProbe().probe)
    }

    /// Both colors checked healthy (blue is what a rollback needs), green for ready_after.
    private func makeGreenReady(_ control: ControlPlane, _ clock: ManualClock) {
        control.record(.success(status: 200, latencyMs: 1), for: ControlPlane.ServerKey(app: "api", color: .blue, server: "127.0.0.1:9001"))
        control.record(.success(status: 200, latencyMs: 1), for: ControlPlane.ServerKey(app: "web", color: .blue, server: "127.0.0.1:9011"))
        control.record(.success(status: 200, latencyMs: 1), for: ControlPlane.ServerKey(app: "api", color: .green, server: "127.0.0.1:9002"))
        control.record(.success(status: 200, latencyMs: 1), for: ControlPlane.ServerKey(app: "web", color: .green, server: "127.0.0.1:9012"))
        clock.advance(10_000)
    }

    private func policy(_ control: ControlPlane, _ app: String) -> AppPolicy {
        control.publisher.snapshot().table.apps.first { $0.name == app }!.policy
    }

    func testRaisingTheCandidateIsGatedLoweringIsNot() throws {
        let clock = ManualClock()
        let control = try makeControlPlane(clock: clock)

        var reply = control.execute("weight green 10 reason canary", actor: deployer)
        XCTAssertEqual(reply["ok"], false)
        XCTAssertEqual(reply["error"], "weight to green refused: the gate did not pass")
        XCTAssertTrue(reply["reasons"]?.arrayValue?.contains { $0.stringValue == "app api: 0 of 1 green servers up, min_healthy is 1" } == true, "\(reply)")
        XCTAssertEqual(policy(control, "api").split.share(of: .green), 0, "a refusal changes nothing")

        makeGreenReady(control, clock)
        reply = control.execute("weight green 10 reason canary", actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(reply["generation"], 1)
        XCTAssertEqual(reply["changes"]?.arrayValue?.compactMap { $0["change"]?.stringValue }, ["green 0% → 10%", "green 0% → 10%"])
        XCTAssertEqual(policy(control, "api").split.share(of: .green), 1_000)
        XCTAssertEqual(policy(control, "web").split.share(of: .green), 1_000, "without app, every app moves in one publish")
        let saved = try XCTUnwrap(try StateFile.load(path: statePath))
        XCTAssertEqual(saved.releases["api"]?.candidateBasisPoints, 1_000, "durable before the reply")
        let salt = try XCTUnwrap(saved.releases["api"]?.salt)
        guard case .sticky(let rule, let seed) = policy(control, "api").split.selection else { return XCTFail("api is sticky") }
        XCTAssertEqual(rule, .cookie(name: "cutover_id", maxAgeSeconds: 86_400))
        XCTAssertEqual(seed, StickyHash.seed(salt: salt, app: "api"))
        XCTAssertEqual(policy(control, "web").split.selection, .spread, "web has no sticky rule")

        // The same weight again is no change; raising keeps the salt (users stay put).
        XCTAssertEqual(control.execute("weight green 10", actor: deployer)["unchanged"], "green already takes 10% of every app")
        XCTAssertEqual(control.execute("weight blue 50 app api", actor: deployer)["ok"], true, "blue 50 % is green 50 %")
        XCTAssertEqual(try StateFile.load(path: statePath)?.releases["api"], AppRelease(candidateBasisPoints: 5_000, salt: salt))
        XCTAssertEqual(policy(control, "web").split.share(of: .green), 1_000)

        // Green goes down: raising is refused, lowering is not.
        control.record(.failure(reason: "refused"), for: ControlPlane.ServerKey(app: "api", color: .green, server: "127.0.0.1:9002"))
        XCTAssertEqual(control.execute("weight green 60 app api", actor: deployer)["ok"], false)
        XCTAssertEqual(control.execute("weight green 60 app api force", actor: deployer)["forced"], true)
        reply = control.execute("weight green 5 app api", actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(policy(control, "api").split.share(of: .green), 500)

        // Back to 0 keeps the salt (a paused canary resumes with the same users).
        XCTAssertEqual(control.execute("weight green 0 app api", actor: deployer)["ok"], true)
        XCTAssertEqual(try StateFile.load(path: statePath)?.releases["api"], AppRelease(candidateBasisPoints: 0, salt: salt))
        XCTAssertEqual(policy(control, "api").split.soleTarget, .blue)

        let events = control.execute("history 20", actor: deployer)["records"]?.arrayValue?.compactMap { $0["event"]?.stringValue }
        XCTAssertEqual(events, ["refused", "weight", "weight", "refused", "weight", "weight", "weight"])
        let last = control.execute("history 1", actor: deployer)["records"]?.arrayValue?.first
        XCTAssertEqual(last?["details"]?["weight"], "api: green 5% → 0%")
        XCTAssertEqual(last?["actor"]?["user"], "deployer")
    }

    func testEveryAppAtOneHundredIsASwitchAndEndsTheCanary() throws {
        let clock = ManualClock()
        let control = try makeControlPlane(clock: clock)
        makeGreenReady(control, clock)
        XCTAssertEqual(control.execute("weight green 100 app api", actor: deployer)["ok"], true)
        XCTAssertEqual(policy(control, "api").split.soleTarget, .green, "one app at 100 % stays a canary")
        XCTAssertEqual(control.activeColor, .blue)

        let reply = control.execute("weight green 100 reason done", actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(reply["active"], "green")
        XCTAssertEqual(reply["verify"]?.arrayValue?.count, 0, "weight runs no verify paths (switch does)")
        XCTAssertEqual(control.activeColor, .green)
        let saved = try XCTUnwrap(try StateFile.load(path: statePath))
        XCTAssertEqual(saved.active, .green)
        XCTAssertEqual(saved.releases, [:], "the canary is over; a new one draws a new salt")
        XCTAssertEqual(policy(control, "api").stable, .green)
        XCTAssertEqual(policy(control, "web").split.soleTarget, .green)
    }

    func testRollbackDuringACanarySuspendsPinsToTheCandidate() throws {
        let clock = ManualClock()
        let control = try makeControlPlane(clock: clock)
        makeGreenReady(control, clock)
        XCTAssertEqual(control.execute("weight green 25", actor: deployer)["ok"], true)
        var reply = control.execute("pin api header X-Tenant pilot-1,pilot-2 green reason pilots first", actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(policy(control, "api").pins.map(\.values), [["big-customer"], ["pilot-1", "pilot-2"]])

        reply = control.execute("rollback reason errors", actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(reply["command"], "rollback")
        XCTAssertEqual(control.activeColor, .blue, "a canary's rollback keeps the stable color")
        XCTAssertEqual(policy(control, "api").split.soleTarget, .blue)
        XCTAssertEqual(policy(control, "web").split.soleTarget, .blue)
        XCTAssertEqual(policy(control, "api").pins.map(\.values), [["big-customer"]], "pins to green are suspended, blue's stay")
        let pins = control.execute("pins", actor: deployer)["pins"]?.arrayValue ?? []
        XCTAssertEqual(pins.map { $0["suspended"]?.boolValue }, [false, true], "still listed, marked suspended")
        XCTAssertEqual(pins.map { $0["origin"]?.stringValue }, ["config line 11", "run time"])
        let saved = try XCTUnwrap(try StateFile.load(path: statePath))
        XCTAssertEqual(saved.suspendedPins, [.green])
        XCTAssertEqual(saved.releases, [:])

        // A new canary of green brings its pins back.
        XCTAssertEqual(control.execute("weight green 10", actor: deployer)["ok"], true)
        XCTAssertEqual(policy(control, "api").pins.count, 2)
        XCTAssertEqual(control.execute("history 1", actor: deployer)["records"]?.arrayValue?.first?["event"], "weight")
    }

    func testBadPinAndWeightCommandsChangeNothing() throws {
        let clock = ManualClock()
        let control = try makeControlPlane(clock: clock)
        makeGreenReady(control, clock)
        let cases: [(String, String)] = [
            ("weight green 101", "usage: weight <blue|green> <percent> [app <name>] [force] [reason <text…>]"),
            ("weight green 10.001", "usage: weight <blue|green> <percent> [app <name>] [force] [reason <text…>]"),
            ("weight green -1", "usage: weight <blue|green> <percent> [app <name>] [force] [reason <text…>]"),
            ("weight green 10 app shop", "unknown app 'shop'"),
            ("weight purple 10", "usage: weight <blue|green> <percent> [app <name>] [force] [reason <text…>]"),
            ("pin api header X-Tenant green", "usage: pin <app|*> header|cookie <name> <value[,value…]> <blue|green> [reason <text…>]"),
            ("pin shop header X-Tenant a green", "unknown app 'shop'"),
            ("pin api header x-tenant big-customer green",
             "app api: header x-tenant value 'big-customer' is pinned to blue by the config (line 11); unpin it first"),
            ("unpin api header X-Tenant big-customer",
             "only config pins match (app api line 11); remove them from the config file and reload"),
            ("unpin web", "no pin matches"),
        ]
        for (line, error) in cases {
            let reply = control.execute(line, actor: deployer)
            XCTAssertEqual(reply["ok"], false, line)
            XCTAssertEqual(reply["error"]?.stringValue, error, line)
        }
        XCTAssertEqual(control.persistentState, PersistentState(active: .blue))
        XCTAssertNil(try StateFile.load(path: statePath), "nothing was written")

        // Pins at run time: added, merged, removed one value at a time, then all.
        XCTAssertEqual(control.execute("pin * cookie beta yes green", actor: deployer)["ok"], true)
        XCTAssertEqual(control.execute("pin api cookie beta yes green", actor: deployer)["unchanged"], "every value is already pinned to green")
        XCTAssertEqual(control.execute("pin api cookie beta also green", actor: deployer)["ok"], true)
        XCTAssertEqual(try StateFile.load(path: statePath)?.pins["api"], [PinRule(source: .cookie, name: "beta", values: ["yes", "also"], color: .green)])
        XCTAssertEqual(try StateFile.load(path: statePath)?.pins["web"], [PinRule(source: .cookie, name: "beta", values: ["yes"], color: .green)])
        XCTAssertEqual(control.execute("unpin api cookie beta yes", actor: deployer)["ok"], true)
        XCTAssertEqual(policy(control, "api").pins.last?.values, ["also"])
        XCTAssertEqual(control.execute("unpin *", actor: deployer)["ok"], true)
        XCTAssertEqual(try StateFile.load(path: statePath)?.pins, [:])
        XCTAssertEqual(policy(control, "api").pins.count, 1, "the config's pin stays")
    }

    /// After a switch to green (previous blue), a canary of a new release on blue clears
    /// `previous`: a rollback cancels the canary, and a second rollback says there is nothing to
    /// return to instead of sending everyone to the new release.
    func testASecondRollbackNeverSendsEveryoneToTheNewRelease() throws {
        let clock = ManualClock()
        let control = try makeControlPlane(clock: clock)
        makeGreenReady(control, clock)
        XCTAssertEqual(control.execute("switch green force", actor: deployer)["ok"], true)
        XCTAssertEqual(control.persistentState.previous, .blue)
        XCTAssertEqual(control.execute("weight blue 10 force reason next release on blue", actor: deployer)["ok"], true)
        XCTAssertNil(control.persistentState.previous, "blue's slot holds the next release now")
        XCTAssertEqual(control.execute("rollback", actor: deployer)["command"], "rollback")
        XCTAssertEqual(control.activeColor, .green)
        let second = control.execute("rollback", actor: deployer)
        XCTAssertEqual(second["ok"], false)
        XCTAssertEqual(second["error"]?.stringValue,
                       "no previous color to roll back to (no switch since the last release began; every request is on green)")
        XCTAssertEqual(control.activeColor, .green)

        // Paused at 0 %, a canary keeps its salt: the same users come back at the same weight.
        XCTAssertEqual(control.execute("weight blue 20 app web force", actor: deployer)["ok"], true)
        let salt = control.persistentState.releases["web"]?.salt
        XCTAssertEqual(control.execute("weight blue 0 app web", actor: deployer)["ok"], true)
        XCTAssertEqual(control.persistentState.releases["web"], AppRelease(candidateBasisPoints: 0, salt: salt!))
        XCTAssertEqual(control.execute("weight blue 20 app web force", actor: deployer)["ok"], true)
        XCTAssertEqual(control.persistentState.releases["web"]?.salt, salt)
        XCTAssertEqual(try StateFile.load(path: statePath)?.releases["web"]?.salt, salt)
    }

    /// A pilot by pins alone (no weight) is a canary too: rollback suspends the pins.
    func testRollbackOfAPinsOnlyPilotSuspendsThePins() throws {
        let clock = ManualClock()
        let control = try makeControlPlane(clock: clock)
        makeGreenReady(control, clock)
        XCTAssertEqual(control.execute("switch green force", actor: deployer)["ok"], true)
        XCTAssertEqual(control.execute("pin web header X-Tenant pilot-1 blue", actor: deployer)["ok"], true)
        let reply = control.execute("rollback", actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(reply)")
        XCTAssertEqual(reply["command"], "rollback")
        XCTAssertEqual(control.activeColor, .green, "the pilot ended; nobody was switched")
        XCTAssertEqual(policy(control, "web").pins, [])
        XCTAssertEqual(control.persistentState.suspendedPins, [.blue])
    }

    /// A restart with the state file brings back the canary exactly: weights, salt, pins.
    func testARestartPublishesThePersistedRelease() throws {
        let clock = ManualClock()
        var state = PersistentState(active: .blue, generation: 4)
        state.releases = ["api": AppRelease(candidateBasisPoints: 3_000, salt: 77)]
        state.pins = ["web": [PinRule(source: .header, name: "x-tenant", values: ["pilot-1"], color: .green)]]
        let control = try makeControlPlane(clock: clock, state: state)
        XCTAssertEqual(policy(control, "api").split.share(of: .green), 3_000)
        XCTAssertEqual(policy(control, "api").split.selection, .sticky(.cookie(name: "cutover_id", maxAgeSeconds: 86_400),
                                                                      seed: StickyHash.seed(salt: 77, app: "api")))
        XCTAssertEqual(policy(control, "web").pins.map(\.values), [["pilot-1"]])
        let status = control.execute("status", actor: deployer)
        let api = status["apps"]?.arrayValue?.first
        XCTAssertEqual(api?["release"]?["weights"]?["green"], .double(30))
        XCTAssertEqual(api?["release"]?["weights"]?["blue"], .double(70))
        XCTAssertEqual(api?["release"]?["salt"], "000000000000004d")
        XCTAssertEqual(api?["release"]?["sticky"], "cookie cutover_id max_age 86400s")
    }
}
