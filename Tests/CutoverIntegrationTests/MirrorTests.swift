import CutoverConfig
import CutoverControl
import CutoverRuntime
import CutoverSystem
import Foundation
import Synchronization
import XCTest

/// Mirroring and the shadow diff, end to end: copies reach the candidate marked, the client
/// only ever sees the primary, a dead, hung or slow candidate costs the client nothing, and the
/// diff finds real differences while ignoring what two stable servers disagree on.
final class MirrorTests: XCTestCase {
    private let deployer = AuditActor(uid: 1000, user: "deployer", pid: 1)
    private var folder: URL!
    private var upstreams: [TestUpstream] = []
    private var runtime: CutoverRuntime?
    private let releaseHung = DispatchSemaphore(value: 0)

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-mirror-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        runtime?.stop()
        for _ in 0..<1_000 { releaseHung.signal() }
        for upstream in upstreams { upstream.stop() }
        try? FileManager.default.removeItem(at: folder)
    }

    private func start(blue: [UInt16], green: [UInt16], appLines: String, gate: String = "") throws -> CutoverRuntime {
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 2
            access_log access.log
            health {
                interval 100ms
                rise 1
                ready_after 0s
            }
            \(gate)
            app web {
                host *
                \(appLines)
                blue \(blue.map { "127.0.0.1:\($0)" }.joined(separator: " "))
                green \(green.map { "127.0.0.1:\($0)" }.joined(separator: " "))
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path, logger: Logger(minimumLevel: .error))
        try runtime.start()
        self.runtime = runtime
        return runtime
    }

    @discardableResult
    private func admin(_ line: String, file: StaticString = #filePath, line number: UInt = #line) -> JSON {
        let reply = runtime!.controlPlane.execute(line, actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(line): \(reply)", file: file, line: number)
        return reply
    }

    /// The shadow figures once every copy settled (copies finish after their primaries).
    private func shadowWhenSettled(expected: Int, file: StaticString = #filePath, line: UInt = #line) -> JSON? {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let stats = runtime!.controlPlane.execute("stats total", actor: deployer)
            if let row = stats["shadow"]?.arrayValue?.first {
                let settled = (row["compared"]?.intValue ?? 0) + (row["candidate_failed"]?.intValue ?? 0)
                    + (row["primary_failed"]?.intValue ?? 0) + (row["dropped"]?.intValue ?? 0)
                if settled >= expected { return row }
            }
            usleep(20_000)
        }
        XCTFail("copies did not settle", file: file, line: line)
        return nil
    }

    /// Answers `body(path)` with an `X-Color` header and a `Date` that no other server (and no
    /// other response) repeats.
    private func upstream(_ name: String, delay: Double = 0, body: @escaping @Sendable (String) -> String) throws -> TestUpstream {
        let counter = Atomic<Int>(0)
        let instance = UUID().uuidString.prefix(8)
        let upstream = try TestUpstream(name: name) { request, connection in
            if delay > 0 { Thread.sleep(forTimeInterval: delay) }
            let tick = counter.add(1, ordering: .relaxed).newValue
            connection.respond(headers: [("Date", "tick \(instance) \(tick)"), ("X-Color", name)], body: Array(body(request.target).utf8))
        }
        upstreams.append(upstream)
        return upstream
    }

    // MARK: The client sees the primary only

    func testCopiesAreMarkedComparedAndNeverCountAsCandidateTraffic() throws {
        let blue = try upstream("blue") { "item \($0)\n" }
        let green = try upstream("green") { "item \($0)\n" }
        let runtime = try start(blue: [blue.port], green: [green.port], appLines: "mirror 100\n mirror_ignore_headers Date X-Color")
        let client = try RawHTTPClient(port: runtime.server.listenAddresses[0].port)
        for index in 0..<50 {
            let response = try client.request("GET", "/item/\(index)", host: "shop.example")
            XCTAssertEqual(response.header("X-Color"), "blue")
            XCTAssertEqual(response.bodyString, "item /item/\(index)\n")
        }
        XCTAssertEqual(try client.request("POST", "/order", host: "shop.example", body: Array("{}".utf8)).status, 200)
        // An upgrade is never copied (the candidate would open a real session), and a client's
        // own mark never reaches an upstream.
        XCTAssertEqual(try client.request("GET", "/socket", host: "shop.example",
                                          headers: [("Connection", "upgrade"), ("Upgrade", "websocket")]).status, 200)
        XCTAssertEqual(try RawHTTPClient(port: runtime.server.listenAddresses[0].port)
            .request("GET", "/item/forged", host: "shop.example", headers: [("X-Cutover-Mirror", "0")]).status, 200)
        let row = try XCTUnwrap(shadowWhenSettled(expected: 51))
        XCTAssertEqual(row["mirrored"], 51)
        XCTAssertEqual(row["compared"], 51)
        XCTAssertEqual(row["skipped"]?["method"], 2, "POST is not in mirror_methods; the upgrade is not copied")
        let forged = try XCTUnwrap(green.requests.first { $0.target == "/item/forged" })
        XCTAssertEqual(forged.headers.filter { $0.name.lowercased() == "x-cutover-mirror" }.map(\.value), ["1"],
                       "the copy carries the proxy's mark only")
        XCTAssertNil(blue.requests.first { $0.target == "/item/forged" }?.header("X-Cutover-Mirror"),
                     "the primary never carries a client's mark")
        XCTAssertEqual(row["diff_rate"], .double(0), "same bodies, Date ignored by default")
        // Health checks ask for /; every request for an item is a copy, marked.
        let copies = green.requests.filter { $0.target.hasPrefix("/item/") }
        XCTAssertEqual(copies.count, 51)
        XCTAssertTrue(copies.allSatisfy { $0.header("X-Cutover-Mirror") == "1" })
        let primaries = blue.requests.filter { $0.target.hasPrefix("/item/") }
        XCTAssertTrue(primaries.allSatisfy { $0.header("X-Cutover-Mirror") == nil })
        XCTAssertEqual(Set(copies.compactMap { $0.header("X-Request-Id") }), Set(primaries.compactMap { $0.header("X-Request-Id") }),
                       "a copy carries its primary's request id")
        let stats = admin("stats total")
        XCTAssertEqual(stats["apps"]?.arrayValue?.first { $0["color"] == "green" }?["requests"], 0,
                       "copies are not the candidate's live traffic")
    }

    /// A dead, a hung and a slow candidate: every primary answers, in its own time.
    func testADeadHungOrSlowCandidateCostsTheClientNothing() throws {
        let blue = try upstream("blue") { _ in "ok\n" }
        let dead = RefusingPort()
        let slow = try upstream("green", delay: 0.3) { _ in "ok\n" }
        let releaseHung = self.releaseHung
        let hung = try TestUpstream(name: "hung") { _, _ in releaseHung.wait() }
        upstreams.append(hung)
        for (candidate, label) in [(dead.port, "dead"), (hung.port, "hung"), (slow.port, "slow")] {
            runtime?.stop()
            let runtime = try start(blue: [blue.port], green: [candidate], appLines: "mirror 100\n mirror_max_inflight 20")
            let client = try RawHTTPClient(port: runtime.server.listenAddresses[0].port)
            let started = Date()
            for index in 0..<60 {
                let response = try client.request("GET", "/\(index)", host: "shop.example")
                XCTAssertEqual(response.status, 200, label)
                XCTAssertEqual(response.header("X-Color"), "blue", label)
            }
            // 60 requests behind a 0.3 s candidate would take 18 s if the client waited on it.
            XCTAssertLessThan(Date().timeIntervalSince(started), 5, "\(label): the client waited for the copies")
            let row = admin("stats total")["shadow"]?.arrayValue?.first
            switch label {
            case "dead":
                let settled = shadowWhenSettled(expected: 60)
                XCTAssertEqual(settled?["candidate_failed"], 60)
                XCTAssertEqual(settled?["diff_rate"], .double(1), "a candidate that fails every copy does not look clean")
                let blueUp = runtime.controlPlane.execute("health", actor: deployer)["servers"]?.arrayValue?
                    .first { $0["color"] == "blue" }?["health"]
                XCTAssertNotEqual(blueUp, "down", "failed copies never count against a server")
            case "hung": XCTAssertGreaterThan(row?["dropped"]?.intValue ?? 0, 0, "over mirror_max_inflight, copies are dropped")
            default: XCTAssertGreaterThan(row?["mirrored"]?.intValue ?? 0, 0)
            }
        }
    }

    // MARK: The diff

    /// A candidate that changes 10 % of bodies is found (and refused by the gate); the status
    /// and headers stay clean.
    func testTheDiffFindsACandidateThatChangesTenPercentOfBodies() throws {
        let blue = try upstream("blue") { "item \($0)\n" }
        let green = try upstream("green") { path in
            let index = Int(path.split(separator: "/").last ?? "") ?? 0
            return index % 10 == 0 ? "item \(path) (new price)\n" : "item \(path)\n"
        }
        let runtime = try start(blue: [blue.port], green: [green.port], appLines: "mirror 100\n mirror_ignore_headers Date X-Color",
                                gate: "gate {\n max_shadow_diff_rate 2%\n min_requests 100\n}")
        let client = try RawHTTPClient(port: runtime.server.listenAddresses[0].port)
        for index in 0..<400 { XCTAssertEqual(try client.request("GET", "/item/\(index)", host: "shop.example").status, 200) }
        let row = try XCTUnwrap(shadowWhenSettled(expected: 400))
        XCTAssertEqual(row["compared"], 400)
        XCTAssertEqual(row["mismatches"]?["body"], 40)
        XCTAssertEqual(row["mismatches"]?["status"], 0)
        XCTAssertEqual(row["mismatches"]?["headers"], 0)
        XCTAssertEqual(row["diff_rates"]?["body"], .double(0.1))
        // One mirror line per copy in the access log, beside the request lines.
        runtime.server.accessLog?.flush()
        let lines = try String(contentsOfFile: folder.appendingPathComponent("access.log").path, encoding: .utf8)
            .split(separator: "\n").map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        let mirrorLines = lines.filter { $0["type"] as? String == "mirror" }
        XCTAssertEqual(mirrorLines.count, 400)
        XCTAssertEqual(mirrorLines.filter { ($0["diff"] as? [String]) == ["body"] }.count, 40)
        let sample = try XCTUnwrap(mirrorLines.first { ($0["path"] as? String) == "/item/10" })
        XCTAssertEqual(sample["color"] as? String, "green")
        XCTAssertEqual(sample["server"] as? String, "127.0.0.1:\(green.port)")
        XCTAssertEqual(sample["status"] as? Int, 200)
        XCTAssertEqual(sample["primary_status"] as? Int, 200)
        XCTAssertNotNil(sample["primary_us"] as? Int)
        let primaryLine = try XCTUnwrap(lines.first { $0["type"] as? String == "request" && ($0["path"] as? String) == "/item/10" })
        XCTAssertEqual(primaryLine["request_id"] as? String, sample["request_id"] as? String, "the line names its primary's request")
        XCTAssertEqual(primaryLine["listener"] as? String, "main")
        waitUntilGreenIsReady()
        let gated = runtime.controlPlane.execute("weight green 10", actor: deployer)
        XCTAssertEqual(gated["ok"], false)
        let reasons = gated["reasons"]?.arrayValue?.compactMap(\.stringValue) ?? []
        XCTAssertEqual(reasons, ["app web: shadow diff rate 10.00% over the last 1m (status 0.00%, headers 0.00%, body 10.00% "
                                 + "beyond noise, 400 compared) exceeds max_shadow_diff_rate 2.00%"])
        XCTAssertEqual(runtime.controlPlane.execute("weight green 10 force", actor: deployer)["ok"], true, "force skips the gate")
    }

    /// Two stable servers that disagree on a Date header every time make it noise: a candidate
    /// that only changes Date is not flagged.
    func testNoiseHidesWhatTwoStableServersDisagreeOn() throws {
        let blueA = try upstream("blue") { "same \($0)\n" }
        let blueB = try upstream("blue") { "same \($0)\n" }
        let green = try upstream("blue") { "same \($0)\n" }
        let runtime = try start(blue: [blueA.port, blueB.port], green: [green.port],
                                appLines: "mirror 100\n mirror_noise on\n mirror_ignore_headers X-Nothing",
                                gate: "gate {\n max_shadow_diff_rate 1%\n min_requests 50\n}")
        let client = try RawHTTPClient(port: runtime.server.listenAddresses[0].port)
        for index in 0..<200 { XCTAssertEqual(try client.request("GET", "/p/\(index)", host: "shop.example").status, 200) }
        let row = try XCTUnwrap(shadowWhenSettled(expected: 200))
        XCTAssertEqual(row["compared"], 200)
        XCTAssertEqual(row["noise"]?["compared"], 200, "every copy also went to the other blue server")
        XCTAssertEqual(row["diff_rate"], .double(0), "\(row)")
        let date = row["headers"]?.arrayValue?.first { $0["name"] == "date" }
        XCTAssertEqual(date?["candidate"], 200, "Date differs from the candidate every time…")
        XCTAssertEqual(date?["noise"], 200, "…and between the two stable servers too: noise")
        XCTAssertEqual(row["mismatches"]?["body"], 0)
        waitUntilGreenIsReady()
        XCTAssertEqual(runtime.controlPlane.execute("weight green 10", actor: deployer)["ok"], true, "the gate passes a Date-only change")
    }

    /// Heads that (rewritten) nearly fill a buffer: the copy must not be written past its
    /// buffer — it is skipped, counted, and the primary is served or refused as without mirroring.
    func testAHeadThatNearlyFillsABufferIsNotCopied() throws {
        let blue = try upstream("blue") { _ in "ok\n" }
        let green = try upstream("green") { _ in "ok\n" }
        let runtime = try start(blue: [blue.port], green: [green.port], appLines: "mirror 100")
        let port = runtime.server.listenAddresses[0].port
        var served = 0
        var refused = 0
        // The authority after the colon is not matched but is written twice (Host and
        // X-Forwarded-Host): sweep padding sizes across the last few hundred bytes of the buffer.
        // With an 8,000-byte authority the rewritten head is about 8,100 bytes longer than the
        // client's: client heads of 12.2–12.6 KB (under max_header_bytes 16k) come out near the
        // 20 KB buffer.
        let host = "shop.example:" + String(repeating: "9", count: 8_000)
        for padding in stride(from: 4_000, through: 4_600, by: 2) {
            let client = try RawHTTPClient(port: port)
            let response = try client.request("GET", "/", headers: [("Host", host), ("X-Pad", String(repeating: "p", count: padding))])
            if response.status == 200 { served += 1 } else { refused += 1 }
        }
        XCTAssertGreaterThan(served, 0)
        let row = try XCTUnwrap(shadowWhenSettled(expected: 0))
        XCTAssertGreaterThan(row["skipped"]?["body"]?.intValue ?? 0, 0, "heads too large to copy are skipped")
        XCTAssertEqual(try RawHTTPClient(port: port).request(host: "shop.example").status, 200, "the proxy still serves")
        _ = refused
    }

    private func waitUntilGreenIsReady(file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(10)
        while runtime!.controlPlane.execute("status", actor: deployer)["colors"]?["green"]?["ready"] != true {
            guard Date() < deadline else { return XCTFail("green never became ready", file: file, line: line) }
            usleep(20_000)
        }
    }
}
