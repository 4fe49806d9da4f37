import CutoverConfig
import CutoverControl
import CutoverRuntime
import CutoverSystem
import CutoverTestSupport
import Foundation
import Synchronization
import XCTest

/// Canary weights, sticky users, pins and the preview listener, end to end: a real proxy on
/// 127.0.0.1:0, real upstreams, raw HTTP clients, commands through the admin path.
final class ProgressiveRoutingTests: XCTestCase {
    private let deployer = AuditActor(uid: 1000, user: "deployer", pid: 1)
    private var folder: URL!
    private var upstreams: [TestUpstream] = []
    private var runtime: CutoverRuntime?

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-progressive-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        runtime?.stop()
        for upstream in upstreams { upstream.stop() }
        try? FileManager.default.removeItem(at: folder)
    }

    /// Blue and green answer their color (`X-Color` and the body) and set a cookie of their own.
    private func start(appLines: String, extra: String = "") throws -> CutoverRuntime {
        let blue = try colorUpstream("blue")
        let green = try colorUpstream("green")
        upstreams = [blue, green]
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 2
            state_file run/state
            \(extra)
            app web {
                host *
                \(appLines)
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path, logger: Logger(minimumLevel: .error))
        try runtime.start()
        self.runtime = runtime
        return runtime
    }

    private func colorUpstream(_ color: String) throws -> TestUpstream {
        try TestUpstream(name: color) { _, connection in
            connection.respond(headers: [("X-Color", color), ("Set-Cookie", "session=\(color)-s; Path=/")], body: Array("\(color)\n".utf8))
        }
    }

    private var greenServer: String { "127.0.0.1:\(upstreams[1].port)" }

    @discardableResult
    private func admin(_ line: String, file: StaticString = #filePath, line number: UInt = #line) -> JSON {
        let reply = runtime!.controlPlane.execute(line, actor: deployer)
        XCTAssertEqual(reply["ok"], true, "\(line): \(reply)", file: file, line: number)
        return reply
    }

    /// The color each request is answered by, in order, over two keep-alive connections (one
    /// per worker loop) with 100 requests pipelined at a time.
    private func colors(_ port: UInt16, _ headerSets: [[(String, String)]]) throws -> [String] {
        guard headerSets.count >= 1_000 else { return try Self.colorsOnOneConnection(port, headerSets[...]) }
        let half = headerSets.count / 2
        let parts = [headerSets[..<half], headerSets[half...]]
        let answers = Mutex<[Int: Result<[String], Error>]>([:])
        DispatchQueue.concurrentPerform(iterations: 2) { index in
            let outcome = Result { try Self.colorsOnOneConnection(port, parts[index]) }
            answers.withLock { $0[index] = outcome }
        }
        return try answers.withLock { try $0[0]!.get() + $0[1]!.get() }
    }

    private static func colorsOnOneConnection(_ port: UInt16, _ headerSets: ArraySlice<[(String, String)]>) throws -> [String] {
        let client = try RawHTTPClient(port: port)
        var result: [String] = []
        for batch in stride(from: headerSets.startIndex, to: headerSets.endIndex, by: 100) {
            let slice = headerSets[batch..<min(batch + 100, headerSets.endIndex)]
            var bytes = ""
            for headers in slice {
                bytes += "GET / HTTP/1.1\r\nHost: shop.example\r\n" + headers.map { "\($0.0): \($0.1)\r\n" }.joined() + "\r\n"
            }
            try client.send(bytes)
            for _ in slice { result.append(try client.readResponse().header("X-Color") ?? "none") }
        }
        return result
    }

    private func cookieIDs(_ count: Int, seed: UInt64) -> [String] {
        var generator = SeededGenerator(state: seed)
        return (0..<count).map { _ in String(generator.next(), radix: 16) + String(generator.next(), radix: 16) }
    }

    // MARK: Weights and sticky cookies

    /// 10⁴ distinct cookies: the candidate's share is the weight within 2 points, and as the
    /// weight goes 10 → 50 → 100 no cookie moves back to blue; as it comes down 100 → 50 → 10
    /// none moves onto green.
    func testStickyCookiesFollowTheWeightMonotonically() throws {
        let runtime = try start(appLines: "sticky cookie cutover_id")
        let port = runtime.server.listenAddresses[0].port
        let requests = cookieIDs(10_000, seed: 11).map { [("Cookie", "theme=dark; cutover_id=\($0)")] }
        func share(_ colors: [String]) -> Double { Double(colors.filter { $0 == "green" }.count) / Double(colors.count) * 100 }

        XCTAssertEqual(Set(try colors(port, Array(requests.prefix(200)))), ["blue"], "weight 0: every user on blue")
        admin("weight green 10 app web force")
        let at10 = try colors(port, requests)
        XCTAssertEqual(share(at10), 10, accuracy: 2)
        admin("weight green 50 app web force")
        let at50 = try colors(port, requests)
        XCTAssertEqual(share(at50), 50, accuracy: 2)
        XCTAssertEqual(zip(at10, at50).filter { $0 == "green" && $1 == "blue" }.count, 0, "10 → 50 moved users back to blue")
        admin("weight green 100 app web force")
        XCTAssertEqual(Set(try colors(port, Array(requests.prefix(1_000)))), ["green"])

        admin("weight green 50 app web")
        let down50 = try colors(port, requests)
        XCTAssertEqual(zip(at10, down50).filter { $0 == "green" && $1 == "blue" }.count, 0)
        admin("weight green 10 app web")
        let down10 = try colors(port, requests)
        XCTAssertEqual(zip(down50, down10).filter { $0 == "blue" && $1 == "green" }.count, 0, "50 → 10 moved users onto green")
        XCTAssertEqual(down10, at10, "the salt is kept for the whole release: the same users at the same weight")
        // Repeated requests of one user never flap.
        XCTAssertEqual(Set(try colors(port, Array(repeating: requests[7], count: 50))).count, 1)
    }

    /// A request without the cookie is placed by a fresh id and its response sets it, beside the
    /// upstream's own Set-Cookie; coming back with it lands on the same color every time. A
    /// malformed cookie is treated as absent.
    func testAFreshIdIsSetAndKeepsTheUserOnTheirColor() throws {
        let runtime = try start(appLines: "sticky cookie cutover_id max_age 2h")
        let port = runtime.server.listenAddresses[0].port
        let plain = try RawHTTPClient(port: port).request(host: "shop.example")
        XCTAssertEqual(plain.headers(named: "Set-Cookie"), ["session=blue-s; Path=/"], "weight 0: nothing to make sticky yet")

        admin("weight green 50 force")
        var seen: [String: String] = [:]
        for _ in 0..<40 {
            let response = try RawHTTPClient(port: port).request(host: "shop.example")
            let cookies = response.headers(named: "Set-Cookie")
            XCTAssertEqual(cookies.count, 2, "\(cookies)")
            let color = try XCTUnwrap(response.header("X-Color"))
            XCTAssertEqual(cookies.first, "session=\(color)-s; Path=/", "the upstream's cookie is kept")
            let sticky = try XCTUnwrap(cookies.last)
            let pattern = #"^cutover_id=[0-9a-f]{16}; Path=/; HttpOnly; SameSite=Lax; Max-Age=7200$"#
            XCTAssertNotNil(sticky.range(of: pattern, options: .regularExpression), sticky)
            let id = String(sticky.dropFirst("cutover_id=".count).prefix(16))
            seen[id] = color
        }
        XCTAssertEqual(Set(seen.values), ["blue", "green"], "fresh ids are spread over both colors")
        for (id, color) in seen {
            let again = try colors(port, Array(repeating: [("Cookie", "cutover_id=\(id)")], count: 5))
            XCTAssertEqual(Set(again), [color], "id \(id) changed color")
        }
        let withCookie = try RawHTTPClient(port: port).request(host: "shop.example", headers: [("Cookie", "cutover_id=\(seen.keys.first!)")])
        XCTAssertEqual(withCookie.headers(named: "Set-Cookie").count, 1, "a valid cookie is not set again")
        let malformed = try RawHTTPClient(port: port).request(host: "shop.example", headers: [("Cookie", "cutover_id=\"broken; x=1")])
        XCTAssertEqual(malformed.status, 200)
        XCTAssertTrue(malformed.headers(named: "Set-Cookie").last?.hasPrefix("cutover_id=") == true, "a malformed id is replaced")
        let huge = try RawHTTPClient(port: port).request(host: "shop.example",
                                                         headers: [("Cookie", "cutover_id=" + String(repeating: "a", count: 4_000))])
        XCTAssertEqual(huge.status, 200, "a huge cookie never breaks routing")
    }

    /// `sticky header`: the same header value always reaches the same color; without it the
    /// choice is per request.
    func testStickyHeaderAndPerRequestFallback() throws {
        let runtime = try start(appLines: "sticky header X-User-Id")
        let port = runtime.server.listenAddresses[0].port
        admin("weight green 50 force")
        let users = (0..<200).map { "user-\($0)" }
        let first = try colors(port, users.map { [("X-User-Id", $0)] })
        let second = try colors(port, users.map { [("x-user-id", $0), ("X-User-Id", "someone-else")] })
        XCTAssertEqual(first, second, "the first of repeated headers decides, names case-insensitive")
        XCTAssertEqual(Set(first), ["blue", "green"])
        let anonymous = try colors(port, Array(repeating: [], count: 100))
        XCTAssertEqual(anonymous.filter { $0 == "green" }.count, 50, "no header: exact per-request shares")
    }

    // MARK: Pins

    /// Pins win over the buckets; a pin to a color with no routable server falls back to the
    /// stable one (counted); a rollback suspends pins to the rolled-back color.
    func testPinsWinOverBucketsFallBackAndAreSuspendedByRollback() throws {
        let runtime = try start(appLines: "sticky cookie cutover_id\n pin header X-Tenant pilot-1,pilot-2 green")
        let port = runtime.server.listenAddresses[0].port
        XCTAssertEqual(try colors(port, [[("X-Tenant", "pilot-1")], [("X-Tenant", "pilot-2")], [("X-Tenant", "pilot-3")],
                                         [("X-Tenant", "Pilot-1")], []]),
                       ["green", "green", "blue", "blue", "blue"], "weight 0: only the pinned tenants see green")
        admin("pin web cookie beta yes green")
        admin("pin web header X-Tenant vip blue")
        admin("weight green 100 app web force")
        XCTAssertEqual(try colors(port, [[("Cookie", "a=b; beta=yes")], [("X-Tenant", "vip")], []]), ["green", "blue", "green"],
                       "a pin to blue wins even at 100 % green")

        admin("weight green 20 app web")
        admin("drain web \(greenServer)")
        XCTAssertEqual(try colors(port, Array(repeating: [("X-Tenant", "pilot-1")], count: 3)), ["blue", "blue", "blue"],
                       "green has no routable server: the pinned requests go to the stable color")
        let stats = admin("stats")
        XCTAssertEqual(stats["pin_fallbacks"]?["web"], 3)
        admin("undrain web \(greenServer)")
        XCTAssertEqual(try colors(port, [[("X-Tenant", "pilot-1")]]), ["green"])

        let rollback = admin("rollback reason pilot errors")
        XCTAssertEqual(rollback["command"], "rollback")
        XCTAssertEqual(try colors(port, [[("X-Tenant", "pilot-1")], [("Cookie", "beta=yes")], [("X-Tenant", "vip")], []]),
                       ["blue", "blue", "blue", "blue"], "pins to green are suspended, every request on blue")
        let pins = admin("pins")["pins"]?.arrayValue ?? []
        XCTAssertEqual(pins.filter { $0["suspended"]?.boolValue == true }.count, 2, "\(pins)")
    }

    // MARK: Preview

    /// The preview listener reaches the candidate whatever the weights, answers 503 when the
    /// candidate has no routable server (never the stable color), and is recorded apart.
    func testThePreviewListenerReachesTheCandidateOnly() throws {
        let runtime = try start(appLines: "", extra: "preview_listen 127.0.0.1:0\nmetrics_listen 127.0.0.1:0")
        let port = runtime.server.listenAddresses[0].port
        let preview = try XCTUnwrap(runtime.server.previewAddresses.first).port
        XCTAssertEqual(try colors(preview, Array(repeating: [], count: 5)), Array(repeating: "green", count: 5))
        XCTAssertEqual(try colors(port, Array(repeating: [], count: 5)), Array(repeating: "blue", count: 5))

        admin("drain web \(greenServer)")
        let refused = try RawHTTPClient(port: preview).request(host: "shop.example")
        XCTAssertEqual(refused.status, 503)
        XCTAssertEqual(refused.bodyString, "no healthy preview server\n")
        admin("undrain web \(greenServer)")

        admin("switch green force")
        XCTAssertEqual(try colors(preview, [[]]), ["blue"], "after a full switch, preview reaches the previous color")

        let stats = admin("stats")
        let main = stats["apps"]?.arrayValue ?? []
        XCTAssertEqual(main.first { $0["color"] == "green" }?["requests"], 0, "preview traffic is never canary evidence")
        let previewRows = stats["preview"]?.arrayValue ?? []
        XCTAssertEqual(previewRows.first { $0["color"] == "green" }?["requests"], 6)
        XCTAssertEqual(previewRows.first { $0["color"] == "blue" }?["requests"], 1)

        let metricsPort = try XCTUnwrap(runtime.metrics?.address?.port)
        let exposition = try RawHTTPClient(port: metricsPort).request("GET", "/metrics", host: "127.0.0.1").bodyString
        XCTAssertTrue(exposition.contains(#"cutover_requests_total{app="web",color="green",listener="preview",code="200"} 5"#), exposition)
        XCTAssertTrue(exposition.contains(#"cutover_split_weight{app="web",color="green"} 100"#), exposition)
    }
}
