import XCTest
import CutoverHTTP

/// The Cookie scan behind sticky ids and cookie pins (RFC 6265 §4.2.1, §5.4): bad pairs are
/// skipped, malformed values count as absent, several Cookie fields are read in order.
final class CookieTests: XCTestCase {
    /// Parses a request with `headers` and answers the named cookie's value (nil: absent).
    private func cookie(_ name: String, _ headers: [String]) -> String? {
        let raw = b("GET / HTTP/1.1\r\nHost: a\r\n" + headers.map { $0 + "\r\n" }.joined() + "\r\n")
        return withFields(100) { fields in
            var parser = RequestHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = raw.withUnsafeBytes({ parser.parse($0, fields: fields) }) else {
                XCTFail("request did not parse")
                return nil
            }
            return raw.withUnsafeBytes { source in
                b(name).withUnsafeBytes { name in
                    CookieScanner.value(named: name, source: source, fields: fields, count: head.fieldCount).map {
                        String(decoding: source[$0.lowerBound..<$0.upperBound], as: UTF8.self)
                    }
                }
            }
        }
    }

    func testFindsTheNamedCookieAmongOthers() {
        XCTAssertEqual(cookie("cutover_id", ["Cookie: a=1; cutover_id=0123abcd; b=2"]), "0123abcd")
        XCTAssertEqual(cookie("cutover_id", ["Cookie: cutover_id=x"]), "x")
        XCTAssertEqual(cookie("cutover_id", ["cookie:cutover_id=x;b=2"]), "x", "field names are case-insensitive, spaces optional")
        XCTAssertEqual(cookie("cutover_id", ["Cookie: cutover_id=\"quoted\""]), "quoted", "DQUOTEs around a value are not part of it")
        XCTAssertNil(cookie("cutover_id", ["Cookie: a=1; b=2"]))
        XCTAssertNil(cookie("cutover_id", []))
    }

    func testNamesAreExactAndCaseSensitive() {
        XCTAssertNil(cookie("cutover_id", ["Cookie: Cutover_id=x"]))
        XCTAssertNil(cookie("cutover_id", ["Cookie: xcutover_id=x; cutover_idx=y"]), "prefixes and suffixes are other cookies")
        XCTAssertNil(cookie("cutover_id", ["Cookie: cutover_id"]), "a name without '=' is no pair")
    }

    func testBadPairsAreSkippedAndMalformedValuesAreAbsent() {
        XCTAssertEqual(cookie("id", ["Cookie: ;;garbage;; =novalue; id=ok"]), "ok")
        XCTAssertNil(cookie("id", ["Cookie: id=has space"]), "whitespace inside a value is not a cookie-octet")
        XCTAssertNil(cookie("id", ["Cookie: id=a\\b"]))
        XCTAssertNil(cookie("id", ["Cookie: id=\"unbalanced"]))
        XCTAssertNil(cookie("id", ["Cookie: id="]), "an empty value is absent")
        XCTAssertNil(cookie("id", ["Cookie: id=" + String(repeating: "a", count: CookieScanner.maxValueBytes + 1)]), "too long")
        XCTAssertEqual(cookie("id", ["Cookie: id=" + String(repeating: "a", count: CookieScanner.maxValueBytes)]),
                       String(repeating: "a", count: CookieScanner.maxValueBytes))
        XCTAssertEqual(cookie("id", ["Cookie: id=bad value; id=good"]), "good", "the first well-formed one wins")
    }

    func testSeveralCookieFieldsAreReadInOrder() {
        XCTAssertEqual(cookie("id", ["Cookie: a=1", "X-Other: id=no", "Cookie: id=second"]), "second")
        XCTAssertEqual(cookie("id", ["Cookie: id=first", "Cookie: id=second"]), "first")
    }

    func testRepeatedHeadersGiveTheFirstValue() {
        let raw = b("GET / HTTP/1.1\r\nHost: a\r\nX-User: alice\r\nx-user: bob\r\n\r\n")
        let value: String? = withFields(100) { fields in
            var parser = RequestHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = raw.withUnsafeBytes({ parser.parse($0, fields: fields) }) else { return nil }
            return raw.withUnsafeBytes { source in
                b("x-user").withUnsafeBytes { name in
                    RequestFields.firstValue(named: name, source: source, fields: fields, count: head.fieldCount).map {
                        String(decoding: source[$0.lowerBound..<$0.upperBound], as: UTF8.self)
                    }
                }
            }
        }
        XCTAssertEqual(value, "alice")
    }

    /// The sticky cookie goes after the upstream's own Set-Cookie fields, never instead of them,
    /// and only on final responses.
    func testTheStickyCookieIsAddedBesideTheUpstreamsCookies() {
        let raw = b("HTTP/1.1 200 OK\r\nSet-Cookie: session=s1; Path=/\r\nSet-Cookie: theme=dark\r\nContent-Length: 0\r\n\r\n")
        let text: String = withFields(100) { fields in
            var parser = ResponseHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = raw.withUnsafeBytes({ parser.parse($0, requestMethod: .get, fields: fields) }) else {
                XCTFail("response did not parse")
                return ""
            }
            var output = [UInt8](repeating: 0, count: 2048)
            let count = output.withUnsafeMutableBytes { out in
                raw.withUnsafeBytes { source in
                    b("cutover_id").withUnsafeBytes { name in
                        var writer = ByteWriter(out)
                        ResponseHeadWriter.write(head, source: source, fields: fields, framing: .contentLength(0), keepAlive: true,
                                                 clientVersion: .http11,
                                                 stickyCookie: StickyCookieField(name: name, id: 0x0123_4567_89ab_cdef, maxAgeSeconds: 86_400),
                                                 into: &writer)
                        return writer.count
                    }
                }
            }
            return String(decoding: output[..<count], as: UTF8.self)
        }
        XCTAssertEqual(text, "HTTP/1.1 200 OK\r\nSet-Cookie: session=s1; Path=/\r\nSet-Cookie: theme=dark\r\nContent-Length: 0\r\n"
                       + "Set-Cookie: cutover_id=0123456789abcdef; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400\r\n\r\n")
    }
}
