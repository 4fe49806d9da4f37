import XCTest
import CutoverHTTP

final class HeadWriterTests: XCTestCase {
    static let clientAddress = "203.0.113.9"
    static let generatedID: (UInt64, UInt64) = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210)
    static let generatedHex = "0123456789abcdeffedcba9876543210"

    /// The proxy's own fields, in the order it writes them, for authority `a.example`.
    static func added(host: String = "a.example", requestID: String = generatedHex, scheme: String = "http") -> String {
        "X-Forwarded-For: \(clientAddress)\r\nX-Forwarded-Proto: \(scheme)\r\nX-Forwarded-Host: \(host)\r\nX-Request-Id: \(requestID)\r\n\r\n"
    }

    /// Parses `raw` (it must be a valid request) and writes the head forwarded upstream.
    func forward(_ raw: String, id: (UInt64, UInt64) = generatedID, scheme: StaticString = "http",
                 fallbackHost: String = "", file: StaticString = #filePath, line: UInt = #line) -> String {
        let fallback = b(fallbackHost)
        let bytes = b(raw)
        let address = b(Self.clientAddress)
        return withFields(100) { fields in
            var parser = RequestHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = bytes.withUnsafeBytes({ parser.parse($0, fields: fields) }) else {
                XCTFail("request did not parse", file: file, line: line)
                return ""
            }
            var output = [UInt8](repeating: 0, count: 8192)
            let count = output.withUnsafeMutableBytes { out in
                bytes.withUnsafeBytes { source in
                    address.withUnsafeBytes { address in fallback.withUnsafeBytes { fallback in
                        var writer = ByteWriter(out)
                        let context = ForwardingContext(clientAddress: address, scheme: scheme, generatedRequestID: id,
                                                        fallbackHost: fallback)
                        RequestHeadWriter.write(head, source: source, fields: fields, context: context, into: &writer)
                        XCTAssertFalse(writer.overflowed, file: file, line: line)
                        return writer.count
                    } }
                }
            }
            let text = String(decoding: output[..<count], as: UTF8.self)
            checkCanonical(Array(output[..<count]), framing: head.framing, expectForwardedHost: !head.authority.isEmpty,
                           file: file, line: line)
            return text
        }
    }

    /// What the proxy sends must itself pass the strict parser with the same framing, carry
    /// exactly one framing header (or none) and never both CL and TE.
    func checkCanonical(_ bytes: [UInt8], framing: BodyFraming, expectForwardedHost: Bool = true,
                        file: StaticString, line: UInt) {
        let text = String(decoding: bytes, as: UTF8.self).lowercased()
        let contentLengths = text.components(separatedBy: "\r\ncontent-length:").count - 1
        let transferEncodings = text.components(separatedBy: "\r\ntransfer-encoding:").count - 1
        XCTAssertLessThanOrEqual(contentLengths + transferEncodings, 1, "more than one framing header", file: file, line: line)
        XCTAssertEqual(text.components(separatedBy: "\r\nhost:").count - 1, 1, "exactly one Host", file: file, line: line)
        // Without an authority from the client there is no X-Forwarded-Host.
        let names = expectForwardedHost
            ? ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"]
            : ["x-forwarded-for", "x-forwarded-proto", "x-request-id"]
        for name in names {
            XCTAssertEqual(text.components(separatedBy: "\r\n\(name):").count - 1, 1, "exactly one \(name)", file: file, line: line)
        }
        for feed in [Feed.whole, .byteByByte, .random(seed: 7)] {
            guard case .complete(let summary) = parseRequest(bytes, limits: HTTPLimits(), feed: feed) else {
                return XCTFail("forwarded head does not re-parse (\(feed)): \(String(decoding: bytes, as: UTF8.self).debugDescription)",
                               file: file, line: line)
            }
            XCTAssertEqual(summary.framing, framing, file: file, line: line)
            XCTAssertEqual(summary.consumed, bytes.count, file: file, line: line)
            XCTAssertEqual(summary.version, .http11, file: file, line: line)
        }
    }

    // MARK: Requests

    func testPlainRequest() {
        XCTAssertEqual(
            forward("GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\nAccept:   */*  \r\n\r\n"),
            "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\nAccept: */*\r\n" + Self.added())
    }

    func testHopByHopFieldsAreRemoved() {
        let request = "POST /p HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret, x-other\r\nX-Secret: s\r\n"
            + "X-Other: o\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: Checksum\r\n"
            + "Upgrade: websocket\r\nTransfer-Encoding: chunked\r\nX-Kept: k\r\n\r\n"
        XCTAssertEqual(forward(request),
                       "POST /p HTTP/1.1\r\nHost: a.example\r\nX-Kept: k\r\nTransfer-Encoding: chunked\r\n" + Self.added())
    }

    func testConnectionListedBeforeTheFieldsItNames() {
        // Connection may come after or before the fields it names; both are removed.
        let request = "GET / HTTP/1.1\r\nX-Before: 1\r\nHost: a.example\r\nConnection: X-Before, X-After\r\nX-After: 2\r\nX-Kept: 3\r\n\r\n"
        XCTAssertEqual(forward(request), "GET / HTTP/1.1\r\nHost: a.example\r\nX-Kept: 3\r\n" + Self.added())
    }

    func testExactlyOneContentLengthWeComputed() {
        XCTAssertEqual(forward("PUT /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 005\r\n\r\n"),
                       "PUT /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n" + Self.added())
        XCTAssertEqual(forward("PUT /p HTTP/1.1\r\nContent-Length: 5, 5\r\nHost: a.example\r\ncontent-length: 5\r\n\r\n"),
                       "PUT /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n" + Self.added())
        XCTAssertEqual(forward("POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n"),
                       "POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n" + Self.added())
        XCTAssertEqual(forward("POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 999999999999999999\r\n\r\n"),
                       "POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 999999999999999999\r\n" + Self.added())
    }

    func testChunkedIsReframed() {
        XCTAssertEqual(forward("POST /p HTTP/1.1\r\nHost: a.example\r\ntransfer-encoding:  , Chunked\r\n\r\n"),
                       "POST /p HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n" + Self.added())
    }

    func testForwardedFieldsAreReplacedNotAppended() {
        let request = "GET / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nx-forwarded-for: 1.2.3.4\r\n"
            + "X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n"
        let forwarded = forward(request)
        XCTAssertEqual(forwarded, "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
        XCTAssertFalse(forwarded.contains("10.0.0.1"))
        XCTAssertFalse(forwarded.contains("1.2.3.4"))
        XCTAssertFalse(forwarded.contains("evil"))
        XCTAssertEqual(forward("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", scheme: "https"),
                       "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added(scheme: "https"))
    }

    func testConnectionCannotRemoveWhatTheProxyAdds() {
        let request = "GET / HTTP/1.1\r\nHost: a.example\r\nConnection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, "
            + "X-Request-Id, Host, Content-Length, Transfer-Encoding\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: mine\r\n"
            + "Content-Length: 3\r\n\r\n"
        XCTAssertEqual(forward(request),
                       "GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n" + Self.added(requestID: "mine"))
    }

    func testRequestIDPassedThroughOrGenerated() {
        XCTAssertEqual(forward("GET / HTTP/1.1\r\nHost: a.example\r\nX-Request-Id: req-42.a:b_c\r\n\r\n"),
                       "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added(requestID: "req-42.a:b_c"))
        XCTAssertEqual(forward("GET / HTTP/1.1\r\nHost: a.example\r\nX-Request-Id: bad id\r\n\r\n"),
                       "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
        let small = forward("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", id: (1, 0xA))
        XCTAssertEqual(small, "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added(requestID: "0000000000000001000000000000000a"))
        let zero = forward("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", id: (0, 0))
        XCTAssertTrue(zero.contains("X-Request-Id: " + String(repeating: "0", count: 32) + "\r\n"))
        let max = forward("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", id: (.max, .max))
        XCTAssertTrue(max.contains("X-Request-Id: " + String(repeating: "f", count: 32) + "\r\n"))
    }

    func testAbsoluteFormRewritesHost() {
        XCTAssertEqual(forward("GET http://a.example/x?q HTTP/1.1\r\nHost: b.example\r\n\r\n"),
                       "GET /x?q HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
        XCTAssertEqual(forward("GET http://a.example HTTP/1.1\r\nHost: b.example\r\n\r\n"),
                       "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
        XCTAssertEqual(forward("GET http://a.example:81?q=1 HTTP/1.1\r\nHost: b.example\r\n\r\n"),
                       "GET /?q=1 HTTP/1.1\r\nHost: a.example:81\r\n" + Self.added(host: "a.example:81"))
    }

    func testHTTP10RequestGoesUpstreamAsHTTP11() {
        XCTAssertEqual(forward("GET /old HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n"),
                       "GET /old HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
    }

    func testOptionsAsterisk() {
        XCTAssertEqual(forward("OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n"),
                       "OPTIONS * HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
    }

    func testTunnelledUpgradeKeepsUpgrade() {
        let request = "GET /chat HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        XCTAssertEqual(forward(request),
                       "GET /chat HTTP/1.1\r\nHost: a.example\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        + "Sec-WebSocket-Version: 13\r\nConnection: upgrade\r\nUpgrade: websocket\r\n" + Self.added())
    }

    func testH2CUpgradeIsDropped() {
        let request = "GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            + "HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        XCTAssertEqual(forward(request), "GET / HTTP/1.1\r\nHost: a.example\r\n" + Self.added())
    }

    func testExpectIsForwarded() {
        XCTAssertEqual(forward("PUT /p HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"),
                       "PUT /p HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 2\r\n" + Self.added())
    }

    func testObsTextValuePassesUnchanged() {
        let bytes: [UInt8] = b("GET / HTTP/1.1\r\nHost: a.example\r\nX-Name: caf") + [0xE9] + b("\r\n\r\n")
        let forwarded = forward(String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\u{FFFD}", with: "é"))
        XCTAssertTrue(forwarded.contains("X-Name: café\r\n"))
    }

    func testWriterReportsOverflow() {
        let bytes = b("GET /a-rather-long-path HTTP/1.1\r\nHost: a.example\r\n\r\n")
        let address = b(Self.clientAddress)
        withFields(10) { fields in
            var parser = RequestHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = bytes.withUnsafeBytes({ parser.parse($0, fields: fields) }) else {
                return XCTFail("not parsed")
            }
            var output = [UInt8](repeating: 0, count: 40)
            output.withUnsafeMutableBytes { out in
                bytes.withUnsafeBytes { source in
                    address.withUnsafeBytes { address in
                        var writer = ByteWriter(out)
                        RequestHeadWriter.write(head, source: source, fields: fields,
                                                context: ForwardingContext(clientAddress: address, scheme: "http", generatedRequestID: (1, 2)),
                                                into: &writer)
                        XCTAssertTrue(writer.overflowed)
                        XCTAssertLessThanOrEqual(writer.count, 40)
                    }
                }
            }
        }
    }

    /// Only the proxy marks a mirrored copy: a client's `X-Cutover-Mirror` never reaches an
    /// upstream (an app skipping side effects for copies would skip them for a real request).
    func testAClientsMirrorMarkIsRemoved() {
        let forwarded = forward("GET / HTTP/1.1\r\nHost: a.example\r\nX-Cutover-Mirror: 1\r\nx-cutover-mirror: 0\r\nAccept: */*\r\n\r\n")
        XCTAssertFalse(forwarded.lowercased().contains("x-cutover-mirror"), forwarded)
        XCTAssertTrue(forwarded.contains("Accept: */*\r\n"))
    }

    // MARK: Responses

    func respond(_ raw: String, method: HTTPMethod = .get, framing: ClientFraming, keepAlive: Bool = true,
                 clientVersion: HTTPVersion = .http11, file: StaticString = #filePath, line: UInt = #line) -> String {
        let bytes = b(raw)
        return withFields(100) { fields in
            var parser = ResponseHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = bytes.withUnsafeBytes({ parser.parse($0, requestMethod: method, fields: fields) }) else {
                XCTFail("response did not parse", file: file, line: line)
                return ""
            }
            var output = [UInt8](repeating: 0, count: 8192)
            let count = output.withUnsafeMutableBytes { out in
                bytes.withUnsafeBytes { source in
                    var writer = ByteWriter(out)
                    ResponseHeadWriter.write(head, source: source, fields: fields, framing: framing, keepAlive: keepAlive,
                                             clientVersion: clientVersion, into: &writer)
                    XCTAssertFalse(writer.overflowed, file: file, line: line)
                    return writer.count
                }
            }
            let text = String(decoding: output[..<count], as: UTF8.self)
            // The client must be able to parse it strictly, too.
            let reparsed = parseResponse(Array(output[..<count]), method: method, limits: HTTPLimits(), feed: .byteByByte)
            guard case .complete = reparsed else {
                XCTFail("response head does not re-parse: \(text.debugDescription)", file: file, line: line)
                return text
            }
            return text
        }
    }

    static let upstreamHead = "HTTP/1.1 200 OK\r\nServer: u\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
        + "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: Checksum\r\nUpgrade: h2\r\nTE: trailers\r\n"

    func testResponseHopByHopRemovedAndFramingOurs() {
        XCTAssertEqual(respond(Self.upstreamHead + "Content-Length: 005\r\nX-Kept: k\r\n\r\n", framing: .contentLength(5)),
                       "HTTP/1.1 200 OK\r\nServer: u\r\nX-Kept: k\r\nContent-Length: 5\r\n\r\n")
        XCTAssertEqual(respond(Self.upstreamHead + "Transfer-Encoding: chunked\r\n\r\n", framing: .chunked),
                       "HTTP/1.1 200 OK\r\nServer: u\r\nTransfer-Encoding: chunked\r\n\r\n")
    }

    func testResponseConnectionHeader() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        XCTAssertEqual(respond(head, framing: .contentLength(2), keepAlive: false),
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(respond(head, framing: .contentLength(2), keepAlive: true, clientVersion: .http10),
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(respond(head, framing: .contentLength(2), keepAlive: false, clientVersion: .http10),
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        // An HTTP/1.0 client gets a chunked upstream body delimited by close.
        XCTAssertEqual(respond("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", framing: .close, keepAlive: false,
                               clientVersion: .http10),
                       "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        // An HTTP/1.0 upstream's reason and version are normalised.
        XCTAssertEqual(respond("HTTP/1.0 404 Nope\r\nContent-Length: 0\r\n\r\n", framing: .contentLength(0)),
                       "HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(respond("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", framing: .contentLength(0)),
                       "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")
    }

    /// Found by Tests/Fuzz/response_head: an upstream's `Close: x` field went out next to the
    /// proxy's own `Connection: close`, which makes it hop-by-hop for the next hop — written a
    /// second time, the head lost it. `Close` is a reserved field name (RFC 9110 §7.6.1).
    func testAFieldNamedCloseIsRemovedInBothDirections() {
        XCTAssertEqual(respond("HTTP/1.1 200 OK\r\nClose: x\r\nContent-Length: 2\r\nX-Kept: k\r\n\r\n",
                               framing: .contentLength(2), keepAlive: false),
                       "HTTP/1.1 200 OK\r\nX-Kept: k\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(forward("GET / HTTP/1.1\r\nHost: a.example\r\nclose: y\r\nX-Kept: k\r\n\r\n"),
                       "GET / HTTP/1.1\r\nHost: a.example\r\nX-Kept: k\r\n" + Self.added())
    }

    func testBodilessResponsesKeepLengthAsInformation() {
        XCTAssertEqual(respond("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", method: .head, framing: .none),
                       "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
        XCTAssertEqual(respond("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 42\r\n\r\n", framing: .none),
                       "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 42\r\n\r\n")
        XCTAssertEqual(respond("HTTP/1.1 204 No Content\r\nContent-Length: 42\r\n\r\n", framing: .none),
                       "HTTP/1.1 204 No Content\r\n\r\n")
        XCTAssertEqual(respond("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", method: .head, framing: .none),
                       "HTTP/1.1 200 OK\r\n\r\n")
    }

    func testInformationalResponses() {
        XCTAssertEqual(respond("HTTP/1.1 100 Continue\r\n\r\n", framing: .none, keepAlive: false),
                       "HTTP/1.1 100 Continue\r\n\r\n")
        XCTAssertEqual(respond("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: 3\r\n\r\n", framing: .none),
                       "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
    }

    func testSwitchingProtocolsKeepsUpgrade() {
        XCTAssertEqual(
            respond("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", framing: .none),
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                + "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    }

    // MARK: Local responses and the byte writer

    func testLocalResponse() {
        var output = [UInt8](repeating: 0, count: 512)
        let count = output.withUnsafeMutableBytes { out in
            var writer = ByteWriter(out)
            LocalResponse.write(status: 431, message: "request head too large", close: true, into: &writer)
            XCTAssertFalse(writer.overflowed)
            return writer.count
        }
        XCTAssertEqual(String(decoding: output[..<count], as: UTF8.self),
                       "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        + "Content-Length: 23\r\nConnection: close\r\n\r\nrequest head too large\n")
        let reparsed = parseResponse(Array(output[..<count]), method: .get, limits: HTTPLimits(), feed: .whole)
        guard case .complete(let summary) = reparsed else { return XCTFail("\(reparsed)") }
        XCTAssertEqual(summary.framing, .contentLength(23))
        XCTAssertEqual(count - summary.consumed, 23)
        for status in [400, 413, 414, 417, 431, 501, 502, 505] {
            XCTAssertNotEqual(LocalResponse.reasonPhrase(status).description, "Error", "\(status)")
        }
    }

    func testByteWriterNumbers() {
        func render(_ body: (inout ByteWriter) -> Void) -> String {
            var output = [UInt8](repeating: 0, count: 64)
            let count = output.withUnsafeMutableBytes { out in
                var writer = ByteWriter(out)
                body(&writer)
                return writer.count
            }
            return String(decoding: output[..<count], as: UTF8.self)
        }
        XCTAssertEqual(render { $0.writeDecimal(0) }, "0")
        XCTAssertEqual(render { $0.writeDecimal(UInt64.max) }, "18446744073709551615")
        XCTAssertEqual(render { $0.writeHex(0) }, "0")
        XCTAssertEqual(render { $0.writeHex(0x1388) }, "1388")
        XCTAssertEqual(render { $0.writeHex(UInt64.max) }, "ffffffffffffffff")
        XCTAssertEqual(render { $0.writeHex16(0xab) }, "00000000000000ab")
        var tiny = [UInt8](repeating: 0, count: 3)
        tiny.withUnsafeMutableBytes { out in
            var writer = ByteWriter(out)
            writer.write("abcd")
            XCTAssertTrue(writer.overflowed)
            XCTAssertEqual(writer.count, 0)
            writer.write("ab")
            writer.write(byte: 0x63)
            writer.write(byte: 0x64)
            XCTAssertEqual(writer.count, 3)
        }
        XCTAssertEqual(tiny, b("abc"))
    }

    func testHTTP10WithoutHostGetsTheUpstreamAsHostAndNoForwardedHost() {
        XCTAssertEqual(forward("GET /x HTTP/1.0\r\n\r\n", fallbackHost: "10.0.0.7:8091"),
                       "GET /x HTTP/1.1\r\nHost: 10.0.0.7:8091\r\nX-Forwarded-For: \(Self.clientAddress)\r\n"
                       + "X-Forwarded-Proto: http\r\nX-Request-Id: \(Self.generatedHex)\r\n\r\n")
    }
}
