import Foundation
import XCTest

/// Black-box tests: real upstreams on 127.0.0.1:0, the proxy in this process on port 0, raw
/// socket clients. Each asserts what a client or an upstream would see.
final class ProxyIntegrationTests: XCTestCase {

    // MARK: Forwarding

    func testForwardsCanonicalRequestWithForwardingHeaders() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }

        let client = try proxy.client()
        let response = try client.request("GET", "/hello?x=1", host: "Shop.Example.com", headers: [
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "must not pass"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=6.6.6.6;proto=https"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Ssl", "on"),
            ("X-Forwarded-Scheme", "https"),
            ("X-Forwarded-Port", "443"),
            ("Front-End-Https", "on"),
            ("X-Custom", "kept"),
        ])
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.bodyString, "blue\n")
        let seen = try XCTUnwrap(upstream.requests.first)
        XCTAssertEqual(seen.target, "/hello?x=1")
        XCTAssertEqual(seen.version, "HTTP/1.1")
        XCTAssertEqual(seen.headers(named: "Host"), ["Shop.Example.com"])
        XCTAssertEqual(seen.headers(named: "X-Forwarded-For"), ["127.0.0.1"], "client value replaced, not appended")
        XCTAssertEqual(seen.headers(named: "X-Forwarded-Proto"), ["http"])
        XCTAssertEqual(seen.headers(named: "X-Forwarded-Host"), ["Shop.Example.com"])
        XCTAssertEqual(seen.header("X-Custom"), "kept")
        for hopByHop in ["Connection", "X-Secret", "Keep-Alive", "TE", "Proxy-Connection", "Transfer-Encoding", "Content-Length"] {
            XCTAssertNil(seen.header(hopByHop), "\(hopByHop) must not reach the upstream")
        }
        // Frameworks read these as the client's scheme or address: a client's never pass the edge.
        for spoofable in ["Forwarded", "X-Real-IP", "X-Forwarded-Ssl", "X-Forwarded-Scheme", "X-Forwarded-Port", "Front-End-Https"] {
            XCTAssertNil(seen.header(spoofable), "\(spoofable) from a client must not reach the upstream")
        }
        let id = try XCTUnwrap(seen.header("X-Request-Id"))
        XCTAssertEqual(id.count, 32)
        XCTAssertTrue(id.allSatisfy { $0.isHexDigit })

        _ = try client.request("GET", "/", headers: [("X-Request-Id", "trace-42.a")])
        XCTAssertEqual(upstream.requests.last?.header("X-Request-Id"), "trace-42.a")
        _ = try client.request("GET", "/")
        XCTAssertNotEqual(upstream.requests.last?.header("X-Request-Id"), id, "generated ids are unique")
    }

    func testAbsoluteFormAuthorityWinsOverHost() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET http://api.example.com/v1?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
        XCTAssertEqual(try client.readResponse().status, 200)
        XCTAssertEqual(upstream.requests.first?.target, "/v1?q=1")
        XCTAssertEqual(upstream.requests.first?.headers(named: "Host"), ["api.example.com"])
    }

    // MARK: Bodies

    /// Echoes the request body back (Content-Length or chunked, as the request came).
    private func echoUpstream() throws -> TestUpstream {
        try TestUpstream(name: "echo") { request, connection in
            let sum = String(fnv1a64(request.body), radix: 16)
            if request.header("X-Reply-Chunked") != nil {
                var chunks: [[UInt8]] = []
                var offset = 0
                while offset < request.body.count {
                    let end = min(request.body.count, offset + 100_000)
                    chunks.append(Array(request.body[offset..<end]))
                    offset = end
                }
                connection.respondChunked(headers: [("X-Sum", sum)], chunks: chunks)
            } else {
                connection.respond(headers: [("X-Sum", sum)], body: request.body)
            }
        }
    }

    func testBodiesOfEverySizeAndFramingRoundTripByteExact() throws {
        let upstream = try echoUpstream()
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client(timeout: 30)
        for size in [0, 1, 64 * 1024, 10 * 1024 * 1024] {
            let body = patternBytes(size, seed: UInt8(size % 251))
            let expected = String(fnv1a64(body), radix: 16)
            // Content-Length up, Content-Length down.
            var response = try client.request("POST", "/upload", body: body)
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(response.header("X-Sum"), expected, "upload of \(size) B with Content-Length")
            XCTAssertEqual(fnv1a64(response.body), fnv1a64(body), "download of \(size) B with Content-Length")

            // Chunked up (in odd chunk sizes), chunked down.
            var chunked = "POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nX-Reply-Chunked: 1\r\n\r\n"
                .utf8.map { $0 }
            var offset = 0
            var chunkSize = 1
            while offset < body.count {
                let end = min(body.count, offset + chunkSize)
                chunked += Array(String(end - offset, radix: 16).utf8) + [13, 10] + body[offset..<end] + [13, 10]
                offset = end
                chunkSize = chunkSize * 3 + 7
            }
            chunked += Array("0\r\nX-Trailer: t\r\n\r\n".utf8)
            try client.send(chunked)
            response = try client.readResponse()
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(response.header("X-Sum"), expected, "chunked upload of \(size) B")
            XCTAssertEqual(fnv1a64(response.body), fnv1a64(body), "chunked download of \(size) B")
            if size > 0 { XCTAssertEqual(response.header("Transfer-Encoding"), "chunked") }
        }
        XCTAssertEqual(upstream.acceptedConnections, 1, "one upstream connection reused for every request")
        XCTAssertNil(upstream.requests.last?.header("X-Trailer"), "trailers are never merged into the header")
    }

    // MARK: Connection management

    func testKeepAliveIsReusedOnBothSides() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1)
        defer { proxy.stop() }
        let client = try proxy.client()
        for _ in 0..<50 {
            XCTAssertEqual(try client.request().status, 200)
        }
        XCTAssertEqual(upstream.requestCount, 50)
        XCTAssertEqual(upstream.acceptedConnections, 1)
        XCTAssertFalse(client.waitForClose(timeout: 0.05), "client connection stays open")
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let upstream = try TestUpstream(name: "path") { request, connection in
            connection.respond(body: Array(request.target.utf8))
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        var batch = ""
        for index in 0..<20 { batch += "GET /r\(index) HTTP/1.1\r\nHost: a\r\n\r\n" }
        batch += "POST /last HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        try client.send(batch)
        for index in 0..<20 {
            XCTAssertEqual(try client.readResponse().bodyString, "/r\(index)")
        }
        XCTAssertEqual(try client.readResponse().bodyString, "/last")
    }

    func testConnectionCloseAndHTTP10() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }

        // Connection: close — answered, closed, and the pipelined request after it ignored.
        var client = try proxy.client()
        try client.send("GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        let closing = try client.readResponse()
        XCTAssertEqual(closing.header("Connection"), "close")
        XCTAssertEqual(try client.readUntilClose(), [])
        XCTAssertEqual(upstream.requests.map(\.target), ["/a"])

        // HTTP/1.0 without keep-alive: closed after the response.
        client = try proxy.client()
        try client.send("GET /c HTTP/1.0\r\n\r\n")
        XCTAssertEqual(try client.readResponse().status, 200)
        XCTAssertTrue(client.waitForClose(timeout: 5))

        // HTTP/1.0 with keep-alive: kept, and told so.
        client = try proxy.client()
        try client.send("GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(try client.readResponse().header("Connection"), "keep-alive")
        try client.send("GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(try client.readResponse().status, 200)
    }

    func testHalfClosedClientStillGetsTheWholeResponse() throws {
        let upstream = try TestUpstream(name: "slow") { _, connection in
            usleep(100_000)
            connection.respond(body: patternBytes(200_000))
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        client.shutdownWrite()
        let response = try client.readResponse()
        XCTAssertEqual(fnv1a64(response.body), fnv1a64(patternBytes(200_000)))
    }

    // MARK: Bodiless responses, 1xx, upgrade

    func testHeadNoContentAndNotModifiedHaveNoBody() throws {
        let upstream = try TestUpstream(name: "codes") { request, connection in
            switch request.target {
            case "/204": connection.respond(status: 204, reason: "No Content")
            case "/304": connection.write("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n")
            default: connection.respond(body: Array("twelve bytes".utf8))
            }
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        let head = try client.request("HEAD", "/")
        XCTAssertEqual(head.header("Content-Length"), "12", "HEAD keeps the length of the GET")
        XCTAssertEqual(head.body, [])
        XCTAssertEqual(try client.request("GET", "/204").status, 204)
        let notModified = try client.request("GET", "/304")
        XCTAssertEqual(notModified.status, 304)
        XCTAssertEqual(notModified.body, [])
        // The connection is still in sync: the next response is intact.
        XCTAssertEqual(try client.request("GET", "/").bodyString, "twelve bytes")
    }

    func testExpectContinueIsRelayedOnce() throws {
        let upstream = try TestUpstream(name: "continue") { request, connection in
            guard request.expectsContinue else { return connection.respond() }
            connection.write("HTTP/1.1 100 Continue\r\n\r\n")
            connection.write("HTTP/1.1 100 Continue\r\n\r\n")  // a second 100 must not reach the client
            let body = connection.readBody(for: request)
            connection.respond(body: Array("got \(body.count)".utf8))
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("POST /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        let interim = try client.readResponse()
        XCTAssertEqual(interim.status, 100)
        try client.send("hello")
        let final = try client.readResponse()
        XCTAssertEqual(final.status, 200)
        XCTAssertEqual(final.bodyString, "got 5")
        XCTAssertEqual(try client.request().status, 200, "connection in sync after the exchange")
    }

    func testUpgradeBecomesATunnel() throws {
        let upstream = try TestUpstream(name: "ws") { request, connection in
            guard request.header("Upgrade") == "websocket" else {
                connection.respond(status: 400, reason: "Bad Request")
                return
            }
            connection.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            while true {
                let bytes = connection.readRaw(max: 4096)
                if bytes.isEmpty { break }
                connection.write([UInt8]("echo:".utf8) + bytes)
            }
            connection.close()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        let switching = try client.readResponse()
        XCTAssertEqual(switching.status, 101)
        XCTAssertEqual(switching.header("Upgrade"), "websocket")
        try client.send("ping")
        XCTAssertEqual(String(decoding: try client.readAvailable(max: 100), as: UTF8.self), "echo:ping")
        try client.send("again")
        XCTAssertEqual(String(decoding: try client.readAvailable(max: 100), as: UTF8.self), "echo:again")
        client.shutdownWrite()
        XCTAssertTrue(client.waitForClose(timeout: 5))
    }

    func testUnsolicitedSwitchingProtocolsIsABadGateway() throws {
        let upstream = try TestUpstream(name: "rogue") { _, connection in
            connection.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
            connection.close()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        XCTAssertEqual(try proxy.client().request().status, 502)
    }

    // MARK: Upstream failures

    func testRefusedUpstreamIsABadGateway() throws {
        let dead = RefusingPort()
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [dead.port], green: [dead.port])])
        defer { proxy.stop(); withExtendedLifetime(dead) {} }
        let response = try proxy.client().request()
        XCTAssertEqual(response.status, 502)
        XCTAssertTrue(response.bodyString.contains("upstream"))
    }

    func testConnectFailureIsRetriedOnAnotherServerOfTheSamePoolOnly() throws {
        let live = try TestUpstream.named("blue-2")
        let green = try TestUpstream.named("green")
        let dead = RefusingPort()
        defer { live.stop(); green.stop(); withExtendedLifetime(dead) {} }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [dead.port, live.port], green: [green.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        for _ in 0..<6 {
            let response = try client.request("POST", "/", body: Array("payload".utf8))
            XCTAssertEqual(response.bodyString, "blue-2\n")
        }
        XCTAssertEqual(green.requestCount, 0, "never retried across colors")

        // A pool whose servers are all down: 502, and still never the other color.
        let allDown = try ProxyHarness(apps: [TestApp(name: "web", blue: [dead.port], green: [green.port])])
        defer { allDown.stop() }
        XCTAssertEqual(try allDown.client().request().status, 502)
        XCTAssertEqual(green.requestCount, 0)
    }

    func testResetMidResponseIsVisibleAsTruncation() throws {
        let upstream = try TestUpstream(name: "reset") { _, connection in
            connection.write("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            connection.write(patternBytes(1000))
            usleep(50_000)
            connection.reset()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        XCTAssertThrowsError(try client.readResponseAfter("GET / HTTP/1.1\r\nHost: a\r\n\r\n")) { error in
            XCTAssertEqual(error as? RawClientError, .closed)
        }

        // Chunked: no final chunk may be invented.
        let chunked = try TestUpstream(name: "reset-chunked") { _, connection in
            connection.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            usleep(50_000)
            connection.reset()
        }
        defer { chunked.stop() }
        let proxy2 = try ProxyHarness(apps: [TestApp(name: "web", blue: [chunked.port], green: [chunked.port])])
        defer { proxy2.stop() }
        XCTAssertThrowsError(try proxy2.client().readResponseAfter("GET / HTTP/1.1\r\nHost: a\r\n\r\n")) { error in
            XCTAssertEqual(error as? RawClientError, .closed)
        }
    }

    func testHangingUpstreamTimesOutWith504() throws {
        let upstream = try TestUpstream(name: "hang") { _, connection in
            _ = connection.readRaw(max: 1)  // never answers; returns when the test stops it
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(
            apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])],
            extra: "timeouts {\n    upstream_header 300ms\n}")
        defer { proxy.stop() }
        let response = try proxy.client().request()
        XCTAssertEqual(response.status, 504)
    }

    func testInterimResponsesDoNotExtendTheUpstreamHeaderTimeout() throws {
        let upstream = try TestUpstream(name: "hints") { _, connection in
            // 103 Early Hints every 50 ms, and never a final answer.
            for _ in 0..<100 {
                connection.write("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                usleep(50_000)
            }
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(
            apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])],
            extra: "timeouts {\n    upstream_header 400ms\n}")
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        let started = Date()
        var response = try client.readResponse()
        while response.status == 103 { response = try client.readResponse() }
        XCTAssertEqual(response.status, 504)
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "the hints did not keep the deadline alive")
    }

    func testInvalidUpstreamResponseIsABadGateway() throws {
        let upstream = try TestUpstream(name: "bad") { request, connection in
            switch request.target {
            case "/both": connection.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            case "/cl": connection.write("HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd")
            default: connection.write("HTTP/1.1 2OO OK\r\n\r\n")
            }
            connection.close()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        for path in ["/both", "/cl", "/status"] {
            XCTAssertEqual(try proxy.client().request("GET", path).status, 502, path)
        }
    }

    // MARK: Routing

    func testRoutesByHostThenLongestPrefix() throws {
        let api = try TestUpstream.named("api")
        let apiV2 = try TestUpstream.named("api-v2")
        let web = try TestUpstream.named("web")
        defer { api.stop(); apiV2.stop(); web.stop() }
        let proxy = try ProxyHarness(apps: [
            TestApp(name: "api", hosts: ["api.example.com"], path: "/v1/", blue: [api.port], green: [api.port]),
            TestApp(name: "apiv2", hosts: ["api.example.com"], path: "/v2/", blue: [apiV2.port], green: [apiV2.port]),
            TestApp(name: "web", hosts: ["*"], blue: [web.port], green: [web.port]),
        ])
        defer { proxy.stop() }
        let client = try proxy.client()
        XCTAssertEqual(try client.request("GET", "/v1/x", host: "api.example.com").bodyString, "api\n")
        XCTAssertEqual(try client.request("GET", "/v2/x", host: "API.example.com:8080").bodyString, "api-v2\n")
        XCTAssertEqual(try client.request("GET", "/v2/x", host: "www.example.com").bodyString, "web\n")
        XCTAssertEqual(try client.request("GET", "/", host: "unknown.test").bodyString, "web\n")
        XCTAssertEqual(try client.request("GET", "/other", host: "api.example.com").bodyString, "web\n",
                       "a path none of the host's apps claims falls through to the wildcard app")

        let onlyApi = try ProxyHarness(apps: [
            TestApp(name: "api", hosts: ["api.example.com"], path: "/api/", blue: [api.port], green: [api.port]),
        ])
        defer { onlyApi.stop() }
        let other = try onlyApi.client()
        let miss = try other.request("GET", "/", host: "nothing.example")
        XCTAssertEqual(miss.status, 404)
        XCTAssertEqual(try other.request("GET", "/api/ok", host: "api.example.com").status, 200, "404 keeps the connection")
    }

    // MARK: Malformed requests

    func testMalformedRequestsGetTheirStatusAndReachNoUpstream() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(
            apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])],
            extra: "limits {\n    max_body 1k\n}")
        defer { proxy.stop() }
        let cases: [(String, Int)] = [
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\nHost: a\n\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /\(String(repeating: "a", count: 9000)) HTTP/1.1\r\nHost: a\r\n\r\n", 414),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-Big: \(String(repeating: "b", count: 17000))\r\n\r\n", 431),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", 413),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n", 417),
            ("GET / HTTP/1.1\r\nHost: a\r\nBad\u{1}Name: x\r\n\r\n", 400),
        ]
        for (request, status) in cases {
            let client = try proxy.client()
            try client.send(request)
            let response = try client.readResponse()
            XCTAssertEqual(response.status, status, request.prefix(60).debugDescription)
            XCTAssertEqual(response.header("Connection"), "close", request.prefix(60).debugDescription)
            XCTAssertTrue(client.waitForClose(timeout: 5), "closed after \(status)")
        }
        // A chunked body with a broken chunk: rejected, and the upstream never sees a
        // complete request.
        let client = try proxy.client()
        try client.send("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        XCTAssertTrue(client.waitForClose(timeout: 5))
        XCTAssertEqual(upstream.requestCount, 0, "no malformed request reached the upstream")
    }

    func testSlowlorisHeadTimesOut() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(
            apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])],
            extra: "timeouts {\n    client_header 300ms\n}")
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET / HTTP/1.1\r\nHost: a\r\n")
        let response = try client.readResponse()
        XCTAssertEqual(response.status, 408)
        XCTAssertTrue(client.waitForClose(timeout: 5))
    }
}

extension RawHTTPClient {
    func readResponseAfter(_ request: String) throws -> TestResponse {
        try send(request)
        return try readResponse()
    }
}
