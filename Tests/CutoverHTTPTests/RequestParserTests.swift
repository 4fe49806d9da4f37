import XCTest
import CutoverHTTP

/// What a request parse ended in, with the head reduced to comparable values.
struct RequestSummary: Equatable, CustomStringConvertible {
    var method: HTTPMethod
    var methodName: String
    var path: String
    var authority: String
    var version: HTTPVersion
    var framing: BodyFraming
    var keepAlive: Bool
    var upgrade: String
    var expectContinue: Bool
    var requestID: String
    var consumed: Int

    var description: String {
        "\(methodName)(\(method)) path=\(path.debugDescription) authority=\(authority.debugDescription) \(version) "
            + "framing=\(framing) keepAlive=\(keepAlive) upgrade=\(upgrade.debugDescription) "
            + "expectContinue=\(expectContinue) requestID=\(requestID.debugDescription) consumed=\(consumed)"
    }
}

typealias RequestOutcome = ParseOutcome<RequestSummary>

struct RequestCase {
    var name: String
    var bytes: [UInt8]
    var expected: RequestOutcome
    var limits: HTTPLimits
    var line: UInt
}

/// Feeds `bytes` to one parser value the way a connection does: append what arrived, call
/// `parse` with everything received since the start of the message, stop at the first answer
/// that is not `.needMore`.
func parseRequest(_ bytes: [UInt8], limits: HTTPLimits, fieldCapacity: Int? = nil, feed: Feed) -> RequestOutcome {
    var parser = RequestHeadParser(limits: limits)
    return withFields(fieldCapacity ?? limits.maxHeaders) { fields in
        var received: [UInt8] = []
        for end in feed.pieceEnds(bytes.count) {
            received.append(contentsOf: bytes[received.count..<end])
            let result = received.withUnsafeBytes { parser.parse($0, fields: fields) }
            switch result {
            case .needMore:
                continue
            case .invalid(let error):
                return .invalid(error.status)
            case .complete(let head, let consumed):
                return .complete(RequestSummary(
                    method: head.method, methodName: string(received, head.methodName),
                    path: string(received, head.path), authority: string(received, head.authority),
                    version: head.version, framing: head.framing, keepAlive: head.keepAlive,
                    upgrade: string(received, head.upgrade), expectContinue: head.expectContinue,
                    requestID: string(received, head.requestID), consumed: consumed))
            }
        }
        return .needMore
    }
}

final class RequestParserTests: XCTestCase {
    static let host = "Host: a.example\r\n"

    // MARK: Table builders

    /// A successful parse. `consumed` defaults to the whole input; `keepAlive` to the version's
    /// default; `methodName` to the method's canonical spelling.
    static func ok(
        _ method: HTTPMethod = .get, name methodName: String? = nil, path: String = "/",
        authority: String = "a.example", version: HTTPVersion = .http11, framing: BodyFraming = .none,
        keepAlive: Bool? = nil, upgrade: String = "", expectContinue: Bool = false, requestID: String = "",
        consumed: Int? = nil
    ) -> (Int) -> RequestOutcome {
        { inputCount in
            .complete(RequestSummary(
                method: method, methodName: methodName ?? "\(method)".uppercased(), path: path, authority: authority,
                version: version, framing: framing, keepAlive: keepAlive ?? (version == .http11), upgrade: upgrade,
                expectContinue: expectContinue, requestID: requestID, consumed: consumed ?? inputCount))
        }
    }

    static func invalid(_ status: Int) -> (Int) -> RequestOutcome { { _ in .invalid(status) } }
    static let needMore: @Sendable (Int) -> RequestOutcome = { _ in .needMore }

    static func c(
        _ name: String, _ raw: String, _ expected: (Int) -> RequestOutcome, limits: HTTPLimits = HTTPLimits(),
        line: UInt = #line
    ) -> RequestCase {
        c(name, b(raw), expected, limits: limits, line: line)
    }

    static func c(
        _ name: String, _ raw: [UInt8], _ expected: (Int) -> RequestOutcome, limits: HTTPLimits = HTTPLimits(),
        line: UInt = #line
    ) -> RequestCase {
        RequestCase(name: name, bytes: raw, expected: expected(raw.count), limits: limits, line: line)
    }

    /// `GET / HTTP/1.1` with Host and the given extra field lines.
    static func get(_ fields: String, target: String = "/", version: String = "1.1") -> String {
        "GET \(target) HTTP/\(version)\r\n\(host)\(fields)\r\n"
    }

    static func post(_ fields: String, version: String = "1.1") -> String {
        "POST /upload HTTP/\(version)\r\n\(host)\(fields)\r\n"
    }

    // MARK: The table

    static var cases: [RequestCase] {
        let simple = "GET / HTTP/1.1\r\n\(host)\r\n"
        let longTarget = "/" + String(repeating: "a", count: 8192)  // 8193 bytes: one over the limit
        let maxTarget = "/" + String(repeating: "a", count: 8191)   // exactly 8192
        let pad = String(repeating: "p", count: 1000)
        let bigFields = (0..<17).map { "X-Pad-\($0): \(pad)\r\n" }.joined()  // > 16 KiB
        let hundredFields = (0..<99).map { "X-F\($0): v\r\n" }.joined()      // + Host = 100
        let id128 = String(repeating: "a", count: 128)
        let tiny = HTTPLimits(maxHeaderBytes: 64, maxHeaders: 4, maxURIBytes: 16)
        // A head of exactly 64 bytes: "GET / HTTP/1.1\r\n" (16) + Host (17) + "X: " (3) + 26 + CRLF + CRLF.
        let exactly64 = "GET / HTTP/1.1\r\n\(host)X: \(String(repeating: "v", count: 24))\r\n\r\n"

        return [
            // Basics and consumed counts
            c("simple GET", simple, ok()),
            c("path and query", get("", target: "/a/b?c=d&e=%20"), ok(path: "/a/b?c=d&e=%20")),
            c("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", ok(authority: "", version: .http10)),
            c("HTTP/1.0 with Host", get("", version: "1.0"), ok(version: .http10)),
            c("lowercase host field name", "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n", ok()),
            c("no space after colon, trailing OWS", "GET / HTTP/1.1\r\nHost:a.example \t \r\n\r\n", ok()),
            c("host with port", "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", ok(authority: "a.example:8080")),
            c("host IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", ok(authority: "[::1]:80")),
            c("obs-text in a value is allowed", Array(b(get("X-Name: caf")).dropLast(2)) + [0xE9, 0x0D, 0x0A, 0x0D, 0x0A], ok()),
            c("tab in a value is allowed", get("X-A: a\tb\r\n"), ok()),
            c("empty field value", get("X-Empty:\r\n"), ok()),
            c("incomplete head", "GET / HTTP/1.1\r\n\(host)", needMore),
            c("empty input", "", needMore),
            c("lone CR", "\r", needMore),
            c("pipelined second request is not consumed", simple + "GET /2 HTTP/1.1\r\n\(host)\r\n",
              ok(consumed: simple.utf8.count)),
            c("body bytes are not consumed", post("Content-Length: 5\r\n") + "helloGET",
              ok(.post, path: "/upload", framing: .contentLength(5), consumed: post("Content-Length: 5\r\n").utf8.count)),

            // Methods: case-sensitive tokens
            c("HEAD", "HEAD / HTTP/1.1\r\n\(host)\r\n", ok(.head)),
            c("POST", post(""), ok(.post, path: "/upload")),
            c("PUT", "PUT / HTTP/1.1\r\n\(host)\r\n", ok(.put)),
            c("DELETE", "DELETE / HTTP/1.1\r\n\(host)\r\n", ok(.delete)),
            c("OPTIONS", "OPTIONS / HTTP/1.1\r\n\(host)\r\n", ok(.options)),
            c("TRACE", "TRACE / HTTP/1.1\r\n\(host)\r\n", ok(.trace)),
            c("PATCH", "PATCH / HTTP/1.1\r\n\(host)\r\n", ok(.patch)),
            c("lowercase get is a token but not GET", "get / HTTP/1.1\r\n\(host)\r\n", ok(.other, name: "get")),
            c("mixed-case PoSt", "PoSt / HTTP/1.1\r\n\(host)\r\n", ok(.other, name: "PoSt")),
            c("extension method", "M-SEARCH / HTTP/1.1\r\n\(host)\r\n", ok(.other, name: "M-SEARCH")),
            c("delimiter in method", "GE@T / HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("paren in method", "G(ET / HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("NUL in method", "G\0ET / HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("non-ASCII method", b("G") + [0xC3, 0x89] + b("T / HTTP/1.1\r\n\(host)\r\n"), invalid(400)),
            c("CONNECT", "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", invalid(501)),
            c("CONNECT with origin-form", "CONNECT / HTTP/1.1\r\n\(host)\r\n", invalid(501)),

            // Request line shape
            c("double space after method", "GET  / HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("double space before version", "GET /  HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("leading space", " GET / HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("tab separator", "GET\t/ HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("trailing space after version", "GET / HTTP/1.1 \r\n\(host)\r\n", invalid(400)),
            c("missing version", "GET /\r\n\(host)\r\n", invalid(400)),
            c("missing version after space", "GET / \r\n\(host)\r\n", invalid(400)),
            c("method only", "GET\r\n\(host)\r\n", invalid(400)),
            c("lowercase http", "GET / http/1.1\r\n\(host)\r\n", invalid(400)),
            c("bare CR in request line", "GET / HTTP/1.1\r\r\n\(host)\r\n", invalid(400)),
            c("bare CR in target", "GET /a\rb HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("NUL in target", "GET /a\0b HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("non-ASCII in target", b("GET /") + [0xFF] + b(" HTTP/1.1\r\n\(host)\r\n"), invalid(400)),
            c("bare LF ends request line", "GET / HTTP/1.1\n\(host)\r\n", invalid(400)),

            // Versions
            c("HTTP/2.0", "GET / HTTP/2.0\r\n\(host)\r\n", invalid(505)),
            c("HTTP/1.2", "GET / HTTP/1.2\r\n\(host)\r\n", invalid(505)),
            c("HTTP/0.9", "GET / HTTP/0.9\r\n\(host)\r\n", invalid(505)),
            c("HTTP/3.0", "GET / HTTP/3.0\r\n\(host)\r\n", invalid(505)),
            c("HTTP/1", "GET / HTTP/1\r\n\(host)\r\n", invalid(400)),
            c("HTTP/2 without minor", "GET / HTTP/2\r\n\(host)\r\n", invalid(400)),
            c("HTTP/1.10", "GET / HTTP/1.10\r\n\(host)\r\n", invalid(400)),
            c("HTTP/11.1", "GET / HTTP/11.1\r\n\(host)\r\n", invalid(400)),
            c("HTTP/a.b", "GET / HTTP/a.b\r\n\(host)\r\n", invalid(400)),

            // Targets
            c("fragment", get("", target: "/x#y"), invalid(400)),
            c("empty fragment", get("", target: "/#"), invalid(400)),
            c("asterisk with OPTIONS", "OPTIONS * HTTP/1.1\r\n\(host)\r\n", ok(.options, path: "*")),
            c("asterisk with GET", get("", target: "*"), invalid(400)),
            c("asterisk with junk", "OPTIONS *x HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("relative target", get("", target: "x/y"), invalid(400)),
            c("query-only target", get("", target: "?q"), invalid(400)),
            c("authority-form without CONNECT", get("", target: "a.example:443"), invalid(400)),
            c("absolute-form: authority wins over Host",
              "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", ok(path: "/x")),
            c("absolute-form without path", "GET http://a.example HTTP/1.1\r\nHost: b.example\r\n\r\n", ok(path: "")),
            c("absolute-form with port and query", "GET http://a.example:8080?q=1 HTTP/1.1\r\nHost: b\r\n\r\n",
              ok(path: "?q=1", authority: "a.example:8080")),
            c("absolute-form uppercase https scheme", "GET HTTPS://A.example/x HTTP/1.1\r\nHost: b\r\n\r\n",
              ok(path: "/x", authority: "A.example")),
            c("absolute-form IPv6", "GET http://[::1]:8080/x HTTP/1.1\r\nHost: b\r\n\r\n", ok(path: "/x", authority: "[::1]:8080")),
            c("absolute-form with userinfo", "GET http://u@a.example/ HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("absolute-form other scheme", "GET ftp://a.example/ HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("absolute-form empty authority", "GET http:///x HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("absolute-form one slash", "GET http:/a.example/x HTTP/1.1\r\n\(host)\r\n", invalid(400)),
            c("absolute-form still needs Host in 1.1", "GET http://a.example/x HTTP/1.1\r\n\r\n", invalid(400)),
            c("absolute-form in 1.0 without Host", "GET http://a.example/x HTTP/1.0\r\n\r\n", ok(path: "/x", version: .http10)),
            c("absolute-form does not excuse a Host list",
              "GET http://a.example/ HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", invalid(400)),
            c("target of exactly maxURIBytes", get("", target: maxTarget), ok(path: maxTarget)),
            c("target one over maxURIBytes", get("", target: longTarget), invalid(414)),
            c("target far over both limits", get("", target: "/" + String(repeating: "b", count: 20_000)), invalid(414)),
            c("request line without end", "GET /" + String(repeating: "c", count: 9000), invalid(414)),
            c("very long method", String(repeating: "M", count: 9000) + " / HTTP/1.1\r\n\(host)\r\n", invalid(414)),
            c("tiny limits: long target", "GET /0123456789abcdef HTTP/1.1\r\n\(host)\r\n", invalid(414), limits: tiny),

            // Head size and field count
            c("head over maxHeaderBytes", get(bigFields), invalid(431)),
            c("one huge field", get("X-Big: \(String(repeating: "x", count: 17_000))\r\n"), invalid(431)),
            c("huge field never ends", chop(get(""), 2) + "X-Big: \(String(repeating: "x", count: 17_000))", invalid(431)),
            c("bare LF beyond the head limit", chop(get(bigFields), 2) + "X: y\n\r\n", invalid(431)),
            c("tiny limits: head of exactly maxHeaderBytes", exactly64, ok(), limits: tiny),
            c("tiny limits: head one over", chop(exactly64, 4) + "v\r\n\r\n", invalid(431), limits: tiny),
            c("100 fields", get(hundredFields), ok()),
            c("101 fields", get(hundredFields + "X-One-More: v\r\n"), invalid(431)),
            c("tiny limits: 5 fields", get("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n"), invalid(431),
              limits: HTTPLimits(maxHeaderBytes: 1024, maxHeaders: 4, maxURIBytes: 64)),

            // Leading empty lines
            c("one leading CRLF is ignored", "\r\n" + simple, ok()),
            c("one leading CRLF, pipelined", "\r\n" + simple + simple, ok(consumed: simple.utf8.count + 2)),
            c("two leading CRLFs", "\r\n\r\n" + simple, invalid(400)),
            c("leading bare LF", "\n" + simple, invalid(400)),
            c("leading bare CR", "\r" + simple, invalid(400)),
            c("leading CR CR LF", "\r\r\n" + simple, invalid(400)),

            // Field lines
            c("space before colon", "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", invalid(400)),
            c("space before colon, other field", get("X-Foo : bar\r\n"), invalid(400)),
            c("tab before colon", get("Content-Length\t: 0\r\n"), invalid(400)),
            c("paren in name", get("X(Foo): bar\r\n"), invalid(400)),
            c("space in name", get("X Foo: bar\r\n"), invalid(400)),
            c("quote in name", get("X\"Foo: bar\r\n"), invalid(400)),
            c("at sign in name", get("X@Foo: bar\r\n"), invalid(400)),
            c("slash in name", get("X/Foo: bar\r\n"), invalid(400)),
            c("empty name", get(": bar\r\n"), invalid(400)),
            c("no colon", get("X-Foo bar\r\n"), invalid(400)),
            c("name only", get("X-Foo\r\n"), invalid(400)),
            c("non-ASCII UTF-8 in name", get("X-F\u{F3}o: bar\r\n"), invalid(400)),
            c("0xFF in name", Array(b(get("X-F")).dropLast(2)) + [0xFF] + b(": bar\r\n\r\n"), invalid(400)),
            c("NUL in name", get("X\0Foo: bar\r\n"), invalid(400)),
            c("DEL in name", get("X\u{7F}Foo: bar\r\n"), invalid(400)),
            c("obs-fold with space", get("X-Foo: a\r\n b\r\n"), invalid(400)),
            c("obs-fold with tab", get("X-Foo: a\r\n\tb\r\n"), invalid(400)),
            c("first field line folded", "GET / HTTP/1.1\r\n \(host)\r\n", invalid(400)),
            c("bare CR in value", get("X-Foo: a\rb\r\n"), invalid(400)),
            c("CR CR LF ends a field", get("X-Foo: a\r\r\n"), invalid(400)),
            c("bare CR before colon", get("X-Foo\r: a\r\n"), invalid(400)),
            c("bare LF in value", get("X-Foo: a\nb\r\n"), invalid(400)),
            c("field line ends in bare LF", "GET / HTTP/1.1\r\nHost: a.example\n\r\n", invalid(400)),
            c("empty line is a bare LF", "GET / HTTP/1.1\r\n\(host)\n", invalid(400)),
            c("smuggled request after bare LF", get("X-Foo: a\n\nGET /admin HTTP/1.1\r\n"), invalid(400)),
            c("NUL in value", get("X-Foo: a\0b\r\n"), invalid(400)),
            c("DEL in value", get("X-Foo: a\u{7F}b\r\n"), invalid(400)),
            c("control byte in value", get("X-Foo: a\u{1}b\r\n"), invalid(400)),
            c("ESC in value", get("X-Foo: a\u{1B}b\r\n"), invalid(400)),

            // Host
            c("missing Host in 1.1", "GET / HTTP/1.1\r\n\r\n", invalid(400)),
            c("missing Host, other fields", "GET / HTTP/1.1\r\nX-Host: a\r\n\r\n", invalid(400)),
            c("duplicate Host, same value", get("Host: a.example\r\n"), invalid(400)),
            c("duplicate Host, different value", get("host: b.example\r\n"), invalid(400)),
            c("Host list", "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", invalid(400)),
            c("Host list without space", "GET / HTTP/1.1\r\nHost: a.example,b.example\r\n\r\n", invalid(400)),
            c("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", invalid(400)),
            c("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a.example\r\n\r\n", invalid(400)),
            c("Host with space inside", "GET / HTTP/1.1\r\nHost: a example\r\n\r\n", invalid(400)),
            c("Host with path", "GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n", invalid(400)),
            c("duplicate Host in 1.0", get("Host: a.example\r\n", version: "1.0"), invalid(400)),

            // Content-Length
            c("Content-Length", post("Content-Length: 5\r\n"), ok(.post, path: "/upload", framing: .contentLength(5))),
            c("Content-Length 0 is kept (an empty body, forwarded with its length)", post("Content-Length: 0\r\n"),
              ok(.post, path: "/upload", framing: .contentLength(0))),
            c("Content-Length with OWS", post("Content-Length: \t 7 \t\r\n"), ok(.post, path: "/upload", framing: .contentLength(7))),
            c("Content-Length leading zeros", post("Content-Length: 007\r\n"), ok(.post, path: "/upload", framing: .contentLength(7))),
            c("Content-Length 18 digits", post("Content-Length: 999999999999999999\r\n"),
              ok(.post, path: "/upload", framing: .contentLength(999_999_999_999_999_999))),
            c("identical Content-Length list", post("Content-Length: 5, 5\r\n"), ok(.post, path: "/upload", framing: .contentLength(5))),
            c("identical Content-Length list, no space", post("Content-Length: 5,5\r\n"), ok(.post, path: "/upload", framing: .contentLength(5))),
            c("identical Content-Length fields", post("Content-Length: 5\r\ncontent-length: 5\r\n"),
              ok(.post, path: "/upload", framing: .contentLength(5))),
            c("differing Content-Length list", post("Content-Length: 5, 6\r\n"), invalid(400)),
            c("differing Content-Length fields", post("Content-Length: 5\r\nContent-Length: 6\r\n"), invalid(400)),
            c("differing Content-Length 0 and 5", post("Content-Length: 0\r\nContent-Length: 5\r\n"), invalid(400)),
            c("Content-Length plus sign", post("Content-Length: +5\r\n"), invalid(400)),
            c("Content-Length minus sign", post("Content-Length: -5\r\n"), invalid(400)),
            c("Content-Length hex", post("Content-Length: 0x5\r\n"), invalid(400)),
            c("Content-Length hex letters", post("Content-Length: a\r\n"), invalid(400)),
            c("Content-Length space inside", post("Content-Length: 1 2\r\n"), invalid(400)),
            c("Content-Length empty", post("Content-Length:\r\n"), invalid(400)),
            c("Content-Length only spaces", post("Content-Length:   \r\n"), invalid(400)),
            c("Content-Length junk suffix", post("Content-Length: 5a\r\n"), invalid(400)),
            c("Content-Length junk prefix", post("Content-Length: a5\r\n"), invalid(400)),
            c("Content-Length decimal point", post("Content-Length: 5.0\r\n"), invalid(400)),
            c("Content-Length exponent", post("Content-Length: 1e3\r\n"), invalid(400)),
            c("Content-Length trailing comma", post("Content-Length: 5,\r\n"), invalid(400)),
            c("Content-Length leading comma", post("Content-Length: ,5\r\n"), invalid(400)),
            c("Content-Length empty list element", post("Content-Length: 5,,5\r\n"), invalid(400)),
            c("Content-Length 2^64", post("Content-Length: 18446744073709551616\r\n"), invalid(400)),
            c("Content-Length 2^64 - 1", post("Content-Length: 18446744073709551615\r\n"), invalid(400)),
            c("Content-Length 30 digits", post("Content-Length: 999999999999999999999999999999\r\n"), invalid(400)),
            c("Content-Length overflow wraps to 5", post("Content-Length: 18446744073709551621\r\n"), invalid(400)),

            // Transfer-Encoding
            c("chunked", post("Transfer-Encoding: chunked\r\n"), ok(.post, path: "/upload", framing: .chunked)),
            c("Chunked, any case", post("transfer-encoding: ChUnKeD\r\n"), ok(.post, path: "/upload", framing: .chunked)),
            c("chunked with empty list elements", post("Transfer-Encoding: , chunked ,\r\n"), ok(.post, path: "/upload", framing: .chunked)),
            c("CL then TE", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), invalid(400)),
            c("TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), invalid(400)),
            c("TE with CL 0", post("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"), invalid(400)),
            c("chunked not final", post("Transfer-Encoding: chunked, gzip\r\n"), invalid(400)),
            c("chunked not final across fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"), invalid(400)),
            c("chunked twice", post("Transfer-Encoding: chunked, chunked\r\n"), invalid(400)),
            c("chunked twice across fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), invalid(400)),
            c("unknown coding", post("Transfer-Encoding: gzip\r\n"), invalid(501)),
            c("unknown coding before chunked", post("Transfer-Encoding: gzip, chunked\r\n"), invalid(501)),
            c("identity coding", post("Transfer-Encoding: identity\r\n"), invalid(501)),
            c("chunked look-alike", post("Transfer-Encoding: xchunked\r\n"), invalid(501)),
            c("empty Transfer-Encoding", post("Transfer-Encoding:\r\n"), invalid(400)),
            c("TE in HTTP/1.0", post("Transfer-Encoding: chunked\r\n", version: "1.0"), invalid(400)),
            c("TE and CL in HTTP/1.0", post("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", version: "1.0"), invalid(400)),

            // Connection and persistence
            c("1.1 keeps alive by default", get(""), ok(keepAlive: true)),
            c("1.1 Connection: close", get("Connection: close\r\n"), ok(keepAlive: false)),
            c("1.1 Connection: CLOSE", get("Connection: CLOSE\r\n"), ok(keepAlive: false)),
            c("1.1 close in a list", get("Connection: keep-alive, close\r\n"), ok(keepAlive: false)),
            c("1.1 close in a second field", get("Connection: keep-alive\r\nConnection: close\r\n"), ok(keepAlive: false)),
            c("1.0 closes by default", get("", version: "1.0"), ok(version: .http10, keepAlive: false)),
            c("1.0 keep-alive", get("Connection: Keep-Alive\r\n", version: "1.0"), ok(version: .http10, keepAlive: true)),
            c("1.0 keep-alive and close", get("Connection: keep-alive, close\r\n", version: "1.0"), ok(version: .http10, keepAlive: false)),
            c("Connection option with space inside", get("Connection: foo bar\r\n"), invalid(400)),
            c("Connection option with delimiter", get("Connection: a@b\r\n"), invalid(400)),

            // Expect
            c("Expect: 100-continue", post("Content-Length: 3\r\nExpect: 100-continue\r\n"),
              ok(.post, path: "/upload", framing: .contentLength(3), expectContinue: true)),
            c("Expect: 100-Continue, any case", post("Content-Length: 3\r\nexpect: 100-Continue\r\n"),
              ok(.post, path: "/upload", framing: .contentLength(3), expectContinue: true)),
            c("other expectation", post("Content-Length: 3\r\nExpect: something\r\n"), invalid(417)),
            c("100-continue plus another expectation", post("Content-Length: 3\r\nExpect: 100-continue, foo\r\n"), invalid(417)),
            c("Expect: 100-continue in HTTP/1.0 is ignored", post("Content-Length: 3\r\nExpect: 100-continue\r\n", version: "1.0"),
              ok(.post, path: "/upload", version: .http10, framing: .contentLength(3), expectContinue: false)),

            // Upgrade
            c("websocket upgrade", get("Connection: Upgrade\r\nUpgrade: websocket\r\n"), ok(upgrade: "websocket")),
            c("upgrade listed with keep-alive", get("Connection: keep-alive, upgrade\r\nUpgrade: websocket\r\n"), ok(upgrade: "websocket")),
            c("Upgrade without Connection: upgrade", get("Upgrade: websocket\r\n"), ok(upgrade: "")),
            c("Connection: upgrade without Upgrade", get("Connection: upgrade\r\n"), ok(upgrade: "")),
            c("h2c is never tunnelled", get("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
              ok(upgrade: "")),
            c("H2C in a list", get("Connection: upgrade\r\nUpgrade: websocket, H2C\r\n"), ok(upgrade: "")),
            c("h2c with a version", get("Connection: upgrade\r\nUpgrade: h2c/1.0\r\n"), ok(upgrade: "")),
            c("duplicate Upgrade", get("Connection: upgrade\r\nUpgrade: websocket\r\nUpgrade: foo\r\n"), invalid(400)),
            c("Upgrade in HTTP/1.0 is ignored", get("Connection: upgrade, keep-alive\r\nUpgrade: websocket\r\n", version: "1.0"),
              ok(version: .http10, keepAlive: true, upgrade: "")),

            // X-Request-Id
            c("valid X-Request-Id", get("X-Request-Id: abc-123_x.y:Z\r\n"), ok(requestID: "abc-123_x.y:Z")),
            c("X-Request-Id of 128 bytes", get("X-Request-Id: \(id128)\r\n"), ok(requestID: id128)),
            c("X-Request-Id of 129 bytes", get("X-Request-Id: \(id128)b\r\n"), ok(requestID: "")),
            c("X-Request-Id with space", get("X-Request-Id: a b\r\n"), ok(requestID: "")),
            c("X-Request-Id with slash", get("X-Request-Id: a/b\r\n"), ok(requestID: "")),
            c("X-Request-Id with comma", get("X-Request-Id: a,b\r\n"), ok(requestID: "")),
            c("X-Request-Id with quote", get("X-Request-Id: a\"b\r\n"), ok(requestID: "")),
            c("X-Request-Id with obs-text", Array(b(get("X-Request-Id: a")).dropLast(2)) + [0xE9, 0x0D, 0x0A, 0x0D, 0x0A], ok(requestID: "")),
            c("empty X-Request-Id", get("X-Request-Id:\r\n"), ok(requestID: "")),
            c("first valid X-Request-Id wins", get("x-request-id: first\r\nX-Request-Id: second\r\n"), ok(requestID: "first")),
        ]
    }

    // MARK: Tests

    func testTable() {
        let table = Self.cases
        var seen = Set<String>()
        for (index, testCase) in table.enumerated() {
            XCTAssertTrue(seen.insert(testCase.name).inserted, "duplicate case name \(testCase.name)")
            for feed in Feed.all(caseIndex: index) {
                let outcome = parseRequest(testCase.bytes, limits: testCase.limits, feed: feed)
                XCTAssertEqual(outcome, testCase.expected, "case \"\(testCase.name)\" fed \(feed)", line: testCase.line)
            }
        }
        print("RequestParserTests: \(table.count) cases, each fed \(Feed.all(caseIndex: 0).count) ways")
    }

    /// The limit in HTTPLimits holds even if the caller's field storage is larger.
    func testMaxHeadersIsEnforcedWithLargerFieldStorage() {
        let limits = HTTPLimits(maxHeaderBytes: 4096, maxHeaders: 3, maxURIBytes: 64)
        let request = b(Self.get("A: 1\r\nB: 2\r\nC: 3\r\n"))
        for feed in Feed.all(caseIndex: 1) {
            XCTAssertEqual(parseRequest(request, limits: limits, fieldCapacity: 50, feed: feed), .invalid(431), "\(feed)")
        }
        let fits = b(Self.get("A: 1\r\nB: 2\r\n"))
        XCTAssertEqual(parseRequest(fits, limits: limits, fieldCapacity: 50, feed: .whole),
                       Self.ok()(fits.count))
    }

    /// Field ranges and the hop-by-hop marks Connection leaves on them.
    func testFieldsAndConnectionMarks() {
        let request = b("GET / HTTP/1.1\r\nHost: a.example\r\nX-Secret: s\r\nConnection: x-secret, Keep-Alive\r\nKeep-Alive: 5\r\nAccept:  */* \r\n\r\n")
        withFields(10) { fields in
            var parser = RequestHeadParser(limits: HTTPLimits())
            guard case .complete(let head, _) = request.withUnsafeBytes({ parser.parse($0, fields: fields) }) else {
                return XCTFail("not parsed")
            }
            XCTAssertEqual(head.fieldCount, 5)
            let names = (0..<head.fieldCount).map { string(request, fields[$0].name) }
            let values = (0..<head.fieldCount).map { string(request, fields[$0].value) }
            let kinds = (0..<head.fieldCount).map { fields[$0].kind }
            let listed = (0..<head.fieldCount).map { fields[$0].listedInConnection }
            XCTAssertEqual(names, ["Host", "X-Secret", "Connection", "Keep-Alive", "Accept"])
            XCTAssertEqual(values, ["a.example", "s", "x-secret, Keep-Alive", "5", "*/*"])
            XCTAssertEqual(kinds, [.host, .other, .connection, .keepAlive, .other])
            XCTAssertEqual(listed, [false, true, false, true, false])
        }
    }

    /// A connection resets the parser and parses the next pipelined request from `consumed`.
    func testPipelinedRequestsWithReset() {
        let first = "POST /a HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\n"
        let second = "GET /b HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n"
        let stream = b(first + "abc" + second)
        withFields(100) { fields in
            var parser = RequestHeadParser(limits: HTTPLimits())
            let result = stream.withUnsafeBytes { parser.parse($0, fields: fields) }
            guard case .complete(let head, let consumed) = result else { return XCTFail("first not parsed") }
            XCTAssertEqual(consumed, first.utf8.count)
            XCTAssertEqual(head.framing, .contentLength(3))
            parser.reset()
            let rest = Array(stream[(consumed + 3)...])
            guard case .complete(let head2, let consumed2) = rest.withUnsafeBytes({ parser.parse($0, fields: fields) }) else {
                return XCTFail("second not parsed")
            }
            XCTAssertEqual(consumed2, rest.count)
            XCTAssertEqual(string(rest, head2.path), "/b")
            XCTAssertEqual(string(rest, head2.authority), "b.example")
            XCTAssertFalse(head2.keepAlive)
        }
    }

    func testMethodIdempotence() {
        XCTAssertTrue(HTTPMethod.get.isIdempotent)
        XCTAssertTrue(HTTPMethod.put.isIdempotent)
        XCTAssertTrue(HTTPMethod.delete.isIdempotent)
        XCTAssertFalse(HTTPMethod.post.isIdempotent)
        XCTAssertFalse(HTTPMethod.patch.isIdempotent)
        XCTAssertFalse(HTTPMethod.other.isIdempotent)
    }
}
