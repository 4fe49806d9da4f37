import XCTest
import CutoverHTTP

struct ResponseSummary: Equatable, CustomStringConvertible {
    var version: HTTPVersion
    var status: Int
    var reason: String
    var framing: BodyFraming
    var contentLength: UInt64?
    var reusable: Bool
    var upgrade: String
    var consumed: Int

    var description: String {
        "\(version) \(status) \(reason.debugDescription) framing=\(framing) contentLength=\(String(describing: contentLength)) "
            + "reusable=\(reusable) upgrade=\(upgrade.debugDescription) consumed=\(consumed)"
    }
}

typealias ResponseOutcome = ParseOutcome<ResponseSummary>

struct ResponseCase {
    var name: String
    var bytes: [UInt8]
    var method: HTTPMethod
    var expected: ResponseOutcome
    var limits: HTTPLimits
    var line: UInt
}

func parseResponse(_ bytes: [UInt8], method: HTTPMethod, limits: HTTPLimits, feed: Feed) -> ResponseOutcome {
    var parser = ResponseHeadParser(limits: limits)
    return withFields(limits.maxHeaders) { fields in
        var received: [UInt8] = []
        for end in feed.pieceEnds(bytes.count) {
            received.append(contentsOf: bytes[received.count..<end])
            let result = received.withUnsafeBytes { parser.parse($0, requestMethod: method, fields: fields) }
            switch result {
            case .needMore:
                continue
            case .invalid(let error):
                return .invalid(error.status)
            case .complete(let head, let consumed):
                return .complete(ResponseSummary(
                    version: head.version, status: head.status, reason: string(received, head.reason),
                    framing: head.framing, contentLength: head.contentLength, reusable: head.reusable,
                    upgrade: string(received, head.upgrade), consumed: consumed))
            }
        }
        return .needMore
    }
}

final class ResponseParserTests: XCTestCase {
    static func ok(
        _ status: Int = 200, reason: String = "OK", version: HTTPVersion = .http11, framing: BodyFraming,
        contentLength: UInt64? = nil, reusable: Bool = true, upgrade: String = "", consumed: Int? = nil
    ) -> (Int) -> ResponseOutcome {
        { count in
            .complete(ResponseSummary(
                version: version, status: status, reason: reason, framing: framing, contentLength: contentLength,
                reusable: reusable, upgrade: upgrade, consumed: consumed ?? count))
        }
    }

    static let bad: @Sendable (Int) -> ResponseOutcome = { _ in .invalid(502) }
    static let needMore: @Sendable (Int) -> ResponseOutcome = { _ in .needMore }

    static func c(
        _ name: String, _ raw: String, method: HTTPMethod = .get, _ expected: (Int) -> ResponseOutcome,
        limits: HTTPLimits = HTTPLimits(), line: UInt = #line
    ) -> ResponseCase {
        let bytes = b(raw)
        return ResponseCase(name: name, bytes: bytes, method: method, expected: expected(bytes.count), limits: limits, line: line)
    }

    /// `HTTP/1.1 200 OK` with the given field lines.
    static func r(_ fields: String, status: String = "200 OK", version: String = "1.1") -> String {
        "HTTP/\(version) \(status)\r\n\(fields)\r\n"
    }

    static var cases: [ResponseCase] {
        let cl5 = r("Content-Length: 5\r\n")
        let pad = String(repeating: "p", count: 1000)
        let bigFields = (0..<17).map { "X-Pad-\($0): \(pad)\r\n" }.joined()
        return [
            // Status line
            c("200 with Content-Length", cl5, ok(framing: .contentLength(5), contentLength: 5)),
            c("body bytes are not consumed", cl5 + "helloHTTP/1.1", ok(framing: .contentLength(5), contentLength: 5, consumed: cl5.utf8.count)),
            c("missing reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", ok(reason: "", framing: .contentLength(0), contentLength: 0)),
            c("empty reason", "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", ok(reason: "", framing: .contentLength(0), contentLength: 0)),
            c("reason with spaces", "HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n",
              ok(404, reason: "Not Found Here", framing: .contentLength(0), contentLength: 0)),
            c("HTTP/1.0 status line", r("Content-Length: 1\r\n", version: "1.0"),
              ok(version: .http10, framing: .contentLength(1), contentLength: 1, reusable: false)),
            c("letter in status code", r("", status: "2x0 OK"), bad),
            c("two-digit status", r("", status: "20 OK"), bad),
            c("four-digit status", r("", status: "2000 OK"), bad),
            c("status below 100", r("", status: "099 Low"), bad),
            c("status above 599", r("Content-Length: 0\r\n", status: "600 Custom"), bad),
            c("status 999", r("Content-Length: 0\r\n", status: "999 Custom"), bad),
            c("status 599", r("Content-Length: 0\r\n", status: "599 Edge"), ok(599, reason: "Edge", framing: .contentLength(0), contentLength: 0)),
            c("100 then the final response: only the 1xx is consumed", "HTTP/1.1 100 Continue\r\n\r\n" + cl5,
              ok(100, reason: "Continue", framing: .none, consumed: 25)),
            c("double space before status", r("", status: " 200 OK"), bad),
            c("no space before reason", "HTTP/1.1 200OK\r\n\r\n", bad),
            c("HTTP/2", "HTTP/2 200 OK\r\n\r\n", bad),
            c("HTTP/2.0", r("", version: "2.0"), bad),
            c("HTTP/1.2", r("", version: "1.2"), bad),
            c("lowercase http", "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", bad),
            c("not HTTP at all", "SSH-2.0-OpenSSH_9.6\r\n\r\n", bad),
            c("bare CR in reason", "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", bad),
            c("control byte in reason", "HTTP/1.1 200 O\u{1}K\r\nContent-Length: 0\r\n\r\n", bad),
            c("empty head", "\r\n\r\n", bad),
            c("bare LF status line", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", bad),
            c("incomplete head", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", needMore),
            c("empty input", "", needMore),

            // Framing, RFC 9112 §6.3
            c("HEAD: no body despite Content-Length", cl5, method: .head, ok(framing: .none, contentLength: 5)),
            c("HEAD: no body despite chunked", r("Transfer-Encoding: chunked\r\n"), method: .head, ok(framing: .none)),
            c("HEAD: no body, no length", r(""), method: .head, ok(framing: .none)),
            c("100 Continue", r("", status: "100 Continue"), ok(100, reason: "Continue", framing: .none)),
            c("103 with Content-Length", r("Content-Length: 5\r\n", status: "103 Early Hints"),
              ok(103, reason: "Early Hints", framing: .none, contentLength: 5)),
            c("101 Switching Protocols", r("Connection: Upgrade\r\nUpgrade: websocket\r\n", status: "101 Switching Protocols"),
              ok(101, reason: "Switching Protocols", framing: .none, upgrade: "websocket")),
            c("204 with Content-Length", r("Content-Length: 5\r\n", status: "204 No Content"),
              ok(204, reason: "No Content", framing: .none, contentLength: 5)),
            c("204 with chunked", r("Transfer-Encoding: chunked\r\n", status: "204 No Content"),
              ok(204, reason: "No Content", framing: .none)),
            c("304 with Content-Length", r("Content-Length: 5\r\n", status: "304 Not Modified"),
              ok(304, reason: "Not Modified", framing: .none, contentLength: 5)),
            c("Content-Length 0", r("Content-Length: 0\r\n"), ok(framing: .contentLength(0), contentLength: 0)),
            c("identical Content-Length list", r("Content-Length: 7, 7\r\n"), ok(framing: .contentLength(7), contentLength: 7)),
            c("identical Content-Length fields", r("Content-Length: 7\r\nContent-Length: 7\r\n"), ok(framing: .contentLength(7), contentLength: 7)),
            c("chunked", r("Transfer-Encoding: chunked\r\n"), ok(framing: .chunked)),
            c("until close", r("Server: x\r\n"), ok(framing: .untilClose, reusable: false)),
            c("until close, HTTP/1.0 keep-alive", r("Connection: keep-alive\r\n", version: "1.0"),
              ok(version: .http10, framing: .untilClose, reusable: false)),
            c("CL and TE", r("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), bad),
            c("TE and CL", r("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), bad),
            c("non-chunked coding", r("Transfer-Encoding: gzip\r\n"), bad),
            c("coding after chunked", r("Transfer-Encoding: chunked, gzip\r\n"), bad),
            c("coding before chunked", r("Transfer-Encoding: gzip, chunked\r\n"), bad),
            c("chunked twice", r("Transfer-Encoding: chunked, chunked\r\n"), bad),
            c("chunked twice across fields", r("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), bad),
            c("empty Transfer-Encoding", r("Transfer-Encoding:\r\n"), bad),
            c("TE in an HTTP/1.0 response", r("Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n", version: "1.0"), bad),
            c("differing Content-Length", r("Content-Length: 5\r\nContent-Length: 6\r\n"), bad),
            c("differing Content-Length list", r("Content-Length: 5, 6\r\n"), bad),
            c("differing Content-Length on HEAD", r("Content-Length: 5\r\nContent-Length: 6\r\n"), method: .head, bad),
            c("signed Content-Length", r("Content-Length: +5\r\n"), bad),
            c("hex Content-Length", r("Content-Length: 0x5\r\n"), bad),
            c("empty Content-Length", r("Content-Length:\r\n"), bad),
            c("Content-Length junk suffix", r("Content-Length: 5;\r\n"), bad),
            c("Content-Length overflow", r("Content-Length: 18446744073709551616\r\n"), bad),

            // Reuse
            c("Connection: close", r("Content-Length: 0\r\nConnection: close\r\n"), ok(framing: .contentLength(0), contentLength: 0, reusable: false)),
            c("Connection: Close in a list", r("Content-Length: 0\r\nConnection: foo, Close\r\n"),
              ok(framing: .contentLength(0), contentLength: 0, reusable: false)),
            c("HTTP/1.0 without keep-alive", r("Content-Length: 0\r\n", version: "1.0"),
              ok(version: .http10, framing: .contentLength(0), contentLength: 0, reusable: false)),
            c("HTTP/1.0 keep-alive", r("Content-Length: 0\r\nConnection: Keep-Alive\r\n", version: "1.0"),
              ok(version: .http10, framing: .contentLength(0), contentLength: 0, reusable: true)),
            c("HTTP/1.0 keep-alive and close", r("Content-Length: 0\r\nConnection: keep-alive, close\r\n", version: "1.0"),
              ok(version: .http10, framing: .contentLength(0), contentLength: 0, reusable: false)),
            c("invalid Connection option", r("Content-Length: 0\r\nConnection: a b\r\n"), bad),

            // Field lines and size
            c("obs-fold", r("Content-Length: 0\r\nX-A: a\r\n b\r\n"), bad),
            c("space before colon", r("Content-Length : 0\r\n"), bad),
            c("NUL in value", r("Content-Length: 0\r\nX-A: a\0b\r\n"), bad),
            c("bare CR in value", r("Content-Length: 0\r\nX-A: a\rb\r\n"), bad),
            c("bare LF in field", r("Content-Length: 0\r\nX-A: a\n"), bad),
            c("oversized head", r("Content-Length: 0\r\n" + bigFields), bad),
            c("oversized head never ends", "HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "x", count: 17_000), bad),
            c("too many fields", r((0..<101).map { "X-\($0): v\r\n" }.joined()), bad),
            c("tiny limits: head too large", r("Content-Length: 0\r\nX: 0123456789012345678901234567890123456789\r\n"), bad,
              limits: HTTPLimits(maxHeaderBytes: 64, maxHeaders: 10, maxURIBytes: 64)),
        ]
    }

    func testTable() {
        let table = Self.cases
        var seen = Set<String>()
        for (index, testCase) in table.enumerated() {
            XCTAssertTrue(seen.insert(testCase.name).inserted, "duplicate case name \(testCase.name)")
            for feed in Feed.all(caseIndex: index) {
                let outcome = parseResponse(testCase.bytes, method: testCase.method, limits: testCase.limits, feed: feed)
                XCTAssertEqual(outcome, testCase.expected, "case \"\(testCase.name)\" fed \(feed)", line: testCase.line)
            }
        }
        print("ResponseParserTests: \(table.count) cases, each fed \(Feed.all(caseIndex: 0).count) ways")
    }
}
