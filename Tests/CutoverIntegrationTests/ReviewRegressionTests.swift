import Foundation
import Glibc
import XCTest

/// Regressions found by reviewing the data plane as an attacker would: response desync across
/// clients, dropped local responses, re-parsing a head that did not fit, early answers hidden by
/// a reset, pooling a connection whose end was already reported, truncation by the linger
/// deadline, and tunnel half-close.
final class ReviewRegressionTests: XCTestCase {

    /// A socket with a small receive buffer, so the proxy's writes to it block quickly.
    private func slowReader(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw RawClientError.closed }
        return fd
    }

    private static func sendAll(_ fd: Int32, _ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if count <= 0 { return }
            sent += count
        }
    }

    private func readAll(_ fd: Int32) -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if count <= 0 { return result }
            result += chunk[0..<count]
        }
    }

    func testStrayBytesAfterAResponseNeverReachAnotherClient() throws {
        // Head and body end exactly on a multiple of the proxy's read size, and a fake second
        // response follows in the same write.
        let head = "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: "
        let total = 5 * 20480
        let bodyLength = total - head.utf8.count - 4 - 5  // 5 digits of length
        let upstream = try TestUpstream(name: "stray") { request, connection in
            if request.target == "/stray" {
                connection.write(Array("\(head)\(bodyLength)\r\n\r\n".utf8) + patternBytes(bodyLength)
                                 + Array("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON".utf8))
            } else {
                connection.respond(body: Array("clean".utf8))
            }
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1)
        defer { proxy.stop() }
        for round in 0..<10 {
            let first = try proxy.client()
            XCTAssertEqual(try first.request("GET", "/stray").body.count, bodyLength)
            let second = try proxy.client()
            XCTAssertEqual(try second.request("GET", "/other").bodyString, "clean", "round \(round)")
        }
    }

    func testPipelinedLocalResponsesAreNeverDropped() throws {
        let upstream = try TestUpstream.named("blue")
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", hosts: ["example.com"], blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let fd = try slowReader(port: proxy.port)
        defer { close(fd) }
        let count = 100_000
        let requests = Array(String(repeating: "GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n", count: count).utf8)
            + Array("GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n".utf8)
        let sender = Thread { Self.sendAll(fd, requests) }
        sender.start()
        usleep(300_000)  // the client is not reading: the proxy must stop parsing, not drop answers
        let text = String(decoding: readAll(fd), as: UTF8.self)
        XCTAssertEqual(text.components(separatedBy: "HTTP/1.1 404 ").count - 1, count + 1)
    }

    func testAResponseHeadThatMustWaitForRoomIsParsedAgainFromItsStart() throws {
        let bigHeader = String(repeating: "v", count: 12_000)
        let upstream = try TestUpstream(name: "sizes") { request, connection in
            if request.target == "/big" {
                connection.respond(body: patternBytes(3_000_000))
            } else {
                connection.respond(headers: [("X-Big", bigHeader)], body: Array("after\r\n\r\nbody".utf8))
            }
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let fd = try slowReader(port: proxy.port)
        defer { close(fd) }
        Self.sendAll(fd, Array("GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /hdr HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8))
        usleep(500_000)
        let text = String(decoding: readAll(fd), as: UTF8.self)
        XCTAssertTrue(text.contains("X-Big: \(bigHeader)\r\n"), "second response intact")
        XCTAssertTrue(text.hasSuffix("after\r\n\r\nbody"))
        XCTAssertFalse(text.contains("504 Gateway"))
        XCTAssertFalse(text.contains("502 Bad"))
    }

    func testAnEarlyAnswerFollowedByAResetStillReachesTheClient() throws {
        let upstream = try TestUpstream(name: "early") { _, connection in
            connection.write("HTTP/1.1 413 Content Too Large\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntoo big")
            connection.reset()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        for _ in 0..<5 {
            let client = try proxy.client()
            // The client announces 100-continue but does not wait for it (as curl does after 1 s).
            try client.send("POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n")
            try? client.send(patternBytes(2_000_000))
            let response = try client.readResponse()
            XCTAssertEqual(response.status, 413)
            XCTAssertEqual(response.bodyString, "too big")
        }
    }

    func testAConnectionWhoseEndWasReportedIsNotPooled() throws {
        let finSent = DispatchSemaphore(value: 0)
        let upstream = try TestUpstream(name: "closer") { request, connection in
            let closing = request.target == "/closeafter"
            if closing { connection.setCork(true) }  // the answer and the FIN leave in one segment
            connection.respond(body: Array(request.method.utf8))
            if closing {
                connection.close()
                finSent.signal()
            }
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])], workers: 1)
        defer { proxy.stop() }
        for _ in 0..<20 {
            XCTAssertEqual(try proxy.client().request("GET", "/closeafter").bodyString, "GET")
            // The FIN left before the next request does (on loopback it is queued at once). Without
            // this, the upstream thread could be descheduled between its answer and its FIN: the
            // keep-alive race every proxy has, where a POST on the closing connection gets 502.
            XCTAssertEqual(finSent.wait(timeout: .now() + 5), .success)
            let post = try proxy.client().request("POST", "/post", body: Array("abcdef".utf8))
            XCTAssertEqual(post.status, 200, "a POST must not be sent on a connection known to be closing")
        }
    }

    func testAClosingResponseToASlowReaderIsNotCutByTheLinger() throws {
        let size = 3_000_000
        let upstream = try TestUpstream(name: "big") { _, connection in
            connection.respond(body: patternBytes(size))
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let fd = try slowReader(port: proxy.port)
        defer { close(fd) }
        Self.sendAll(fd, Array("GET / HTTP/1.0\r\n\r\n".utf8))
        usleep(2_600_000)  // longer than the 2 s linger: the client pauses, it has not gone
        let raw = readAll(fd)
        guard let split = raw.firstRange(of: Array("\r\n\r\n".utf8)) else { return XCTFail("no head") }
        XCTAssertEqual(raw.count - split.upperBound, size)
    }

    func testTunnelHalfCloseLetsTheUpstreamFinish() throws {
        let upstream = try TestUpstream(name: "tunnel") { _, connection in
            connection.write("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
            var received: [UInt8] = []
            while true {
                let bytes = connection.readRaw(max: 4096)
                if bytes.isEmpty { break }
                received += bytes
            }
            connection.write(Array("GOT:".utf8) + received)  // answers only after the client's FIN
            connection.close()
        }
        defer { upstream.stop() }
        let proxy = try ProxyHarness(apps: [TestApp(name: "web", blue: [upstream.port], green: [upstream.port])])
        defer { proxy.stop() }
        let client = try proxy.client()
        try client.send("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
        XCTAssertEqual(try client.readResponse().status, 101)
        try client.send("hello")
        client.shutdownWrite()
        XCTAssertEqual(String(decoding: try client.readUntilClose(), as: UTF8.self), "GOT:hello")
    }
}
