import Foundation
import Synchronization
import XCTest

/// Retries, back-pressure, connection limits and the framing corner cases of HTTP-RULES.md.
final class ProxyEdgeCaseTests: XCTestCase {

    func testStaleKeepAliveIsRetriedForIdempotentRequestsOnly() throws {
        // The upstream answers, then closes the connection instead of reading the next request
        // (a keep-alive timeout racing with a new request).
        let upstream = try TestUpstream(name: "flaky") { request, connection in
            connection.respond(body: Array(request.target.utf8))
            _ = connection.readRaw(max: 1)  // the proxy's next request arrives...
            connection.close()              // ...and is never answered on this connection
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1)
        defer { proxy.stop() }
        let client = try proxy.client()
        XCTAssertEqual(try client.request("GET", "/one").bodyString, "/one")
        XCTAssertEqual(try client.request("GET", "/two").bodyString, "/two", "GET retried on a fresh connection")
        XCTAssertEqual(upstream.acceptedConnections, 2)

        let post = try client.request("POST", "/three", body: Array("x".utf8))
        XCTAssertEqual(post.status, 502, "a POST is never replayed automatically")
        XCTAssertFalse(upstream.requests.contains { $0.target == "/three" && $0.method == "POST" && upstream.requests.filter { $0.target == "/three" }.count > 1 })
    }

    func testEarlyFinalResponseClosesInsteadOfParsingTheUnsentBody() throws {
        let upstream = try TestUpstream(name: "early") { request, connection in
            // Refuses without reading the body (which never comes: the client waits for 100).
            connection.respond(status: 413, reason: "Content Too Large", body: Array("too big".utf8))
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 60\r\n\r\n")
        let response = try client.readResponse()
        XCTAssertEqual(response.status, 413)
        XCTAssertEqual(response.header("Connection"), "close")
        // The client sends its body anyway; it looks like a request but must never be one.
        try? client.send("GET /smuggled HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789012\r\n\r\n")
        XCTAssertTrue(client.waitForClose(timeout: 5))
        XCTAssertFalse(upstream.requests.contains { $0.target == "/smuggled" })
    }

    func testChunkedResponseToHTTP10ClientIsDechunkedAndClosed() throws {
        let upstream = try TestUpstream(name: "chunky") { _, connection in
            connection.respondChunked(chunks: [Array("hello ".utf8), Array("world".utf8)])
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        let raw = String(decoding: try client.readUntilClose(), as: UTF8.self)
        XCTAssertTrue(raw.hasPrefix("HTTP/1.1 200 OK\r\n"), raw)
        XCTAssertFalse(raw.lowercased().contains("transfer-encoding"), raw)
        XCTAssertTrue(raw.contains("Connection: close\r\n"), raw)
        XCTAssertTrue(raw.hasSuffix("\r\n\r\nhello world"), raw)
    }

    func testBodyUntilCloseIsDeliveredWithConnectionClose() throws {
        let upstream = try TestUpstream(name: "eof") { _, connection in
            connection.write("HTTP/1.1 200 OK\r\n\r\n")
            connection.write(patternBytes(300_000))
            connection.close()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        let response = try client.request()
        XCTAssertEqual(response.header("Connection"), "close")
        XCTAssertEqual(fnv1a64(response.body), fnv1a64(patternBytes(300_000)))
    }

    func testBackPressureStopsReadingTheUpstreamWhenTheClientStops() throws {
        let total = 64 * 1024 * 1024
        let written = SharedCounter()
        let upstream = try TestUpstream(name: "big") { _, connection in
            connection.write("HTTP/1.1 200 OK\r\nContent-Length: \(total)\r\n\r\n")
            let block = patternBytes(256 * 1024)
            var sent = 0
            while sent < total {
                connection.write(block)
                sent += block.count
                written.value.store(sent, ordering: .relaxed)
            }
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client(timeout: 60)
        try client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        // The client reads nothing. Once the socket buffers on both hops are full, the upstream
        // must be stuck: the proxy holds at most its fixed buffers, never the body.
        var previous = -1
        while written.value.load(ordering: .relaxed) != previous {
            previous = written.value.load(ordering: .relaxed)
            usleep(200_000)
        }
        XCTAssertLessThan(previous, total / 2, "upstream kept writing although the client read nothing")
        let response = try client.readResponse()
        XCTAssertEqual(response.body.count, total)
    }

    func testMaxConnectionsPausesAcceptingWithoutSpinning() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(
            apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1,
            extra: "limits {\n    max_connections 2\n}")
        defer { proxy.stop() }
        let first = try proxy.client()
        let second = try proxy.client()
        XCTAssertEqual(try first.request().status, 200)
        XCTAssertEqual(try second.request().status, 200)
        // Both in the middle of their next request head: not idle, so neither may be closed to
        // make room (an idle one would be: HardeningTests).
        try first.send("GET / HTTP/1.1\r\n")
        try second.send("GET / HTTP/1.1\r\n")

        let third = try proxy.client(timeout: 0.5)  // the kernel completes the handshake...
        let cpuBefore = processCPUSeconds()
        XCTAssertThrowsError(try third.request(), "...but the proxy does not take a third connection") { error in
            XCTAssertEqual(error as? RawClientError, .timeout)
        }
        XCTAssertLessThan(processCPUSeconds() - cpuBefore, 0.3, "paused accepting must not busy-loop")

        // The third connection is still queued in the kernel; the client gives up on it.
        third.close()
        first.close()
        let fourth = try proxy.client()
        XCTAssertEqual(try fourth.request().status, 200, "accepting resumes when a connection closes")
    }

    private func processCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1_000_000
    }
}

final class SharedCounter: Sendable {
    let value = Atomic<Int>(0)
}
