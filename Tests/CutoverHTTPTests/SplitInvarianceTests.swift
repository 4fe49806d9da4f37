import XCTest
import CutoverHTTP

/// A parser's verdict — status and reason — must not depend on how the bytes were split into
/// reads, and a request line that can never become valid is rejected when it ends, not when
/// a head that will never come would end.
final class SplitInvarianceTests: XCTestCase {
    enum Verdict: Equatable {
        case needMore
        case invalid(Int, String)
        case complete(consumed: Int)
    }

    func request(_ bytes: [UInt8], limits: HTTPLimits = HTTPLimits(), feed: Feed) -> (Verdict, afterBytes: Int) {
        var parser = RequestHeadParser(limits: limits)
        return withFields(limits.maxHeaders) { fields in
            var received: [UInt8] = []
            for end in feed.pieceEnds(bytes.count) {
                received.append(contentsOf: bytes[received.count..<end])
                switch received.withUnsafeBytes({ parser.parse($0, fields: fields) }) {
                case .needMore: continue
                case .invalid(let error): return (.invalid(error.status, "\(error.reason)"), received.count)
                case .complete(_, let consumed): return (.complete(consumed: consumed), received.count)
                }
            }
            return (.needMore, received.count)
        }
    }

    func response(_ bytes: [UInt8], limits: HTTPLimits, feed: Feed) -> Verdict {
        var parser = ResponseHeadParser(limits: limits)
        return withFields(limits.maxHeaders) { fields in
            var received: [UInt8] = []
            for end in feed.pieceEnds(bytes.count) {
                received.append(contentsOf: bytes[received.count..<end])
                switch received.withUnsafeBytes({ parser.parse($0, requestMethod: .get, fields: fields) }) {
                case .needMore: continue
                case .invalid(let error): return .invalid(error.status, "\(error.reason)")
                case .complete(_, let consumed): return .complete(consumed: consumed)
                }
            }
            return .needMore
        }
    }

    /// HTTP/0.9's form — a request line with no version — is a 400 as soon as its line ends:
    /// before, the connection waited for a second CRLF that such a client never sends.
    func testRequestLineWithoutVersionIsRejectedWhenItEnds() {
        for line in ["GET /\r\n", "GET /index.html\r\n", "GET\r\n", "\r\n\r\n", "GET / HTTP/1.1x\r\n", "GET / HTTP/2.0\r\n"] {
            for feed in Feed.all(caseIndex: line.utf8.count) {
                let (verdict, after) = request(b(line), feed: feed)
                guard case .invalid(let status, _) = verdict else {
                    XCTFail("\(line.debugDescription) \(feed): \(verdict)")
                    continue
                }
                XCTAssertEqual(status, line.hasSuffix("2.0\r\n") ? 505 : 400, "\(line.debugDescription) \(feed)")
                XCTAssertEqual(after, line.utf8.count, "rejected on the read that ended the line")
            }
        }
        // A valid line still waits for the rest of the head.
        XCTAssertEqual(request(b("GET / HTTP/1.1\r\n"), feed: .whole).0, .needMore)
    }

    /// A bad request line followed by a bare LF: the line's error every time, whatever came in
    /// the same read.
    func testRequestVerdictsAgreeAcrossSplits() {
        let inputs = [
            "GET / HTTP/1.1x\r\nA: b\nB",
            "GET / HTTP/1.1\r\nA: b\nB: c\r\n\r\n",
            "GET /\r\nHost: a\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /" + String(repeating: "a", count: 300) + " HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 300) + "\n\r\n\r\n",
        ]
        let limits = HTTPLimits(maxHeaderBytes: 256, maxHeaders: 10, maxURIBytes: 128)
        for (index, input) in inputs.enumerated() {
            let whole = request(b(input), limits: limits, feed: .whole).0
            for feed in Feed.all(caseIndex: index, randomSplits: 20) {
                XCTAssertEqual(request(b(input), limits: limits, feed: feed).0, whole, "\(input.debugDescription) \(feed)")
            }
        }
    }

    /// The response parser stops at its limit as the request parser does: a bare LF past
    /// `maxHeaderBytes` is "too large" whole and byte by byte (it was "bare LF" whole).
    func testResponseVerdictsAgreeAcrossSplits() {
        let limits = HTTPLimits(maxHeaderBytes: 100, maxHeaders: 10, maxURIBytes: 100)
        let inputs = [
            "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 90) + "\nY: b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 120) + "\r\n\r\n",
        ]
        for (index, input) in inputs.enumerated() {
            let whole = response(b(input), limits: limits, feed: .whole)
            for feed in Feed.all(caseIndex: index, randomSplits: 20) {
                XCTAssertEqual(response(b(input), limits: limits, feed: feed), whole, "\(input.debugDescription) \(feed)")
            }
        }
        XCTAssertEqual(response(b(inputs[0]), limits: limits, feed: .whole), .invalid(502, "response head too large"))
        XCTAssertEqual(response(b(inputs[1]), limits: limits, feed: .byteByByte), .invalid(502, "bare LF in response"))
    }

    /// An Upgrade request with a body is forwarded as a plain request: no tunnel is set up, and
    /// the head writer drops Upgrade.
    func testUpgradeWithABodyIsNotAnUpgrade() {
        func upgrade(_ text: String) -> String {
            var parser = RequestHeadParser(limits: HTTPLimits())
            let bytes = b(text)
            return withFields(100) { fields in
                guard case .complete(let head, _) = bytes.withUnsafeBytes({ parser.parse($0, fields: fields) }) else { return "invalid" }
                return string(bytes, head.upgrade)
            }
        }
        let base = "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        XCTAssertEqual(upgrade(base + "\r\n"), "websocket")
        XCTAssertEqual(upgrade(base + "Content-Length: 0\r\n\r\n"), "websocket", "an empty body is no body")
        XCTAssertEqual(upgrade(base + "Content-Length: 5\r\n\r\n"), "")
        XCTAssertEqual(upgrade(base + "Transfer-Encoding: chunked\r\n\r\n"), "")
    }
}
