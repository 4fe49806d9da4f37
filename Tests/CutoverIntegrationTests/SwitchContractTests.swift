import Foundation
import XCTest

/// The atomic switch contract: a request whose head is parsed after `publish` returns is routed
/// by the new table; requests already routed finish where they started; keep-alive clients are
/// not disconnected; several apps switch together.
final class SwitchContractTests: XCTestCase {

    func testSwitchUnderConcurrentKeepAliveLoadIsAtomicAcrossApps() throws {
        let blueAPI = try TestUpstream.named("blue")
        let greenAPI = try TestUpstream.named("green")
        let blueWeb = try TestUpstream.named("blue")
        let greenWeb = try TestUpstream.named("green")
        defer { [blueAPI, greenAPI, blueWeb, greenWeb].forEach { $0.stop() } }
        let proxy = try ProxyHarness(apps: [
            TestApp(name: "api", hosts: ["api.test"], blue: [blueAPI.port], green: [greenAPI.port]),
            TestApp(name: "web", hosts: ["*"], blue: [blueWeb.port], green: [greenWeb.port]),
        ])
        defer { proxy.stop() }

        let load = SwitchLoad(port: proxy.port, threads: 6, hosts: ["api.test", "web.test"])
        // Switch once the load is running, then keep the load going well past the switch.
        load.waitForRequests(300)
        proxy.publisher.switchTo(.green)
        load.markSwitched()
        load.waitForRequestsAfterSwitch(600)
        load.stop()

        XCTAssertEqual(load.failures, [], "no failed requests")
        XCTAssertEqual(load.stale, [], "no request sent after the switch returned was answered by blue")
        XCTAssertEqual(load.reconnects, 0, "keep-alive clients were not disconnected by the switch")
        XCTAssertGreaterThan(blueAPI.requestCount + blueWeb.requestCount, 0)
        XCTAssertGreaterThan(greenAPI.requestCount, 0)
        XCTAssertGreaterThan(greenWeb.requestCount, 0)
    }

    func testRequestInFlightFinishesOnItsColorAndTheConnectionStays() throws {
        let (blue, arrived, release) = try TestUpstream.holding("/slow", body: "blue\n")
        let green = try TestUpstream.named("green")
        defer { release.signal(); blue.stop(); green.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [blue.port], green: [green.port])])
        defer { proxy.stop() }

        let client = try proxy.client()
        try client.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertEqual(arrived.wait(timeout: .now() + 10), .success)
        proxy.publisher.switchTo(.green)
        release.signal()
        XCTAssertEqual(try client.readResponse().bodyString, "blue\n", "routed before the switch: finishes on blue")
        XCTAssertEqual(try client.request().bodyString, "green\n", "same connection, next request: green")
        XCTAssertEqual(try proxy.client().request().bodyString, "green\n")
    }

    func testGracefulStopFinishesInFlightRequestsAndClosesIdleConnections() throws {
        let (upstream, arrived, release) = try TestUpstream.holding("/slow", body: "done")
        defer { release.signal(); upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])

        let idle = try proxy.client()
        XCTAssertEqual(try idle.request().status, 200)
        let busy = try proxy.client()
        try busy.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertEqual(arrived.wait(timeout: .now() + 10), .success)

        let stopped = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            proxy.stop()
            stopped.signal()
        }
        XCTAssertTrue(idle.waitForClose(timeout: 5), "idle keep-alive connections are closed at once")
        release.signal()
        let response = try busy.readResponse()
        XCTAssertEqual(response.bodyString, "done", "the in-flight request completes")
        XCTAssertEqual(response.header("Connection"), "close")
        XCTAssertEqual(stopped.wait(timeout: .now() + 10), .success)
        XCTAssertThrowsError(try RawHTTPClient(port: proxy.port, timeout: 1), "no longer accepting")
    }
}
