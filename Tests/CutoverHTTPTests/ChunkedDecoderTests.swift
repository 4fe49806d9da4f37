import XCTest
import CutoverHTTP

enum ChunkedOutcome: Equatable, CustomStringConvertible {
    /// Input ran out before the end: the data decoded so far.
    case needMore([UInt8])
    /// The body ended; `consumed` bytes of the input belonged to it.
    case end([UInt8], consumed: Int)
    case invalid

    var description: String {
        switch self {
        case .needMore(let data): return "needMore(\(String(decoding: data, as: UTF8.self).debugDescription))"
        case .end(let data, let consumed): return "end(\(String(decoding: data, as: UTF8.self).debugDescription), consumed: \(consumed))"
        case .invalid: return "invalid"
        }
    }
}

/// Feeds a chunked body to one decoder the way a connection does: bytes accumulate, the decoder
/// resumes where it stopped, data segments are collected as they are reported.
func decodeChunked(_ bytes: [UInt8], feed: Feed, maxExtensionBytes: Int = 4096, maxTrailerBytes: Int = 16 * 1024,
                   file: StaticString = #filePath, line: UInt = #line) -> ChunkedOutcome {
    var decoder = ChunkedDecoder(maxExtensionBytes: maxExtensionBytes, maxTrailerBytes: maxTrailerBytes)
    var received: [UInt8] = []
    var position = 0
    var data: [UInt8] = []
    for end in feed.pieceEnds(bytes.count) {
        received.append(contentsOf: bytes[received.count..<end])
        while true {
            let (consumed, step) = received.withUnsafeBytes { decoder.decode($0, from: position) }
            switch step {
            case .data(let start, let count):
                XCTAssertEqual(start + count, position + consumed, "a data step ends where consumption ends", file: file, line: line)
                XCTAssertGreaterThanOrEqual(start, position, file: file, line: line)
                XCTAssertGreaterThan(count, 0, "empty data step", file: file, line: line)
                data += received[start..<(start + count)]
                position += consumed
                continue
            case .needMore:
                position += consumed
                XCTAssertEqual(position, received.count, "needMore must consume everything", file: file, line: line)
            case .end:
                position += consumed
                XCTAssertTrue(decoder.isDone, file: file, line: line)
                return .end(data, consumed: position)
            case .invalid:
                return .invalid
            }
            break
        }
    }
    return .needMore(data)
}

final class ChunkedDecoderTests: XCTestCase {
    struct Case {
        var name: String
        var bytes: [UInt8]
        var expected: ChunkedOutcome
        var maxExtensionBytes = 4096
        var maxTrailerBytes = 16 * 1024
        var line: UInt
    }

    static func body(_ name: String, _ raw: String, _ data: String, consumed: Int? = nil, line: UInt = #line) -> Case {
        Case(name: name, bytes: b(raw), expected: .end(b(data), consumed: consumed ?? raw.utf8.count), line: line)
    }

    static func invalid(_ name: String, _ raw: String, maxExtensionBytes: Int = 4096, maxTrailerBytes: Int = 16 * 1024,
                        line: UInt = #line) -> Case {
        Case(name: name, bytes: b(raw), expected: .invalid, maxExtensionBytes: maxExtensionBytes,
             maxTrailerBytes: maxTrailerBytes, line: line)
    }

    static var cases: [Case] {
        let many = (1...40).map { String(repeating: Character(UnicodeScalar(UInt8(64 + $0 % 26))), count: $0) }
        let manyEncoded = many.map { String($0.utf8.count, radix: 16) + "\r\n" + $0 + "\r\n" }.joined() + "0\r\n\r\n"
        let big = String(repeating: "z", count: 5000)
        return [
            body("one chunk", "5\r\nhello\r\n0\r\n\r\n", "hello"),
            body("zero-length body", "0\r\n\r\n", ""),
            body("two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
            body("uppercase hex size", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
            body("lowercase hex size", "a\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
            body("leading zeros in size", "0005\r\nhello\r\n000\r\n\r\n", "hello"),
            body("big chunk", "1388\r\n\(big)\r\n0\r\n\r\n", big),
            body("many chunks", manyEncoded, many.joined()),
            body("extension", "5;name=value\r\nhello\r\n0\r\n\r\n", "hello"),
            body("quoted extension", "5;name=\"a b;c\"\r\nhello\r\n0;last\r\n\r\n", "hello"),
            body("several extensions", "5;a;b=1;c=\"2\"\r\nhello\r\n0\r\n\r\n", "hello"),
            body("whitespace before extension", "5 \t;a=1\r\nhello\r\n0\r\n\r\n", "hello"),
            body("extension of exactly the limit", "5;" + String(repeating: "e", count: 4096) + "\r\nhello\r\n0\r\n\r\n", "hello"),
            body("trailer", "5\r\nhello\r\n0\r\nChecksum: abc\r\n\r\n", "hello"),
            body("two trailers", "5\r\nhello\r\n0\r\nA: 1\r\nB-2: x y\r\n\r\n", "hello"),
            body("trailer with empty value", "0\r\nX:\r\n\r\n", ""),
            body("data containing CRLF", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n"),
            body("data looking like a chunk", "5\r\n0\r\n\r\n\r\n0\r\n\r\n", "0\r\n\r\n"),
            body("next message is not consumed", "5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n", "hello", consumed: 15),
            body("15 hex digits", "00000000000000A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),

            Case(name: "incomplete", bytes: b("5\r\nhel"), expected: .needMore(b("hel")), line: #line),
            Case(name: "incomplete before trailer end", bytes: b("5\r\nhello\r\n0\r\n"), expected: .needMore(b("hello")), line: #line),

            invalid("non-hex size", "g\r\nhello\r\n0\r\n\r\n"),
            invalid("non-hex after hex", "5g\r\nhello\r\n0\r\n\r\n"),
            invalid("missing size", "\r\nhello\r\n0\r\n\r\n"),
            invalid("missing size before extension", ";a=1\r\nhello\r\n0\r\n\r\n"),
            invalid("sign in size", "+5\r\nhello\r\n0\r\n\r\n"),
            invalid("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
            invalid("space before size", " 5\r\nhello\r\n0\r\n\r\n"),
            invalid("second number after whitespace", "5 6\r\nhello\r\n0\r\n\r\n"),
            invalid("junk after whitespace", "5 x\r\nhello\r\n0\r\n\r\n"),
            invalid("16 hex digits", "0000000000000005\r\nhello\r\n0\r\n\r\n"),
            invalid("size overflow", "10000000000000000\r\nhello\r\n0\r\n\r\n"),
            invalid("size 2^64-1", "ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            invalid("extension too long", "5;" + String(repeating: "e", count: 4097) + "\r\nhello\r\n0\r\n\r\n"),
            invalid("extension too long, small limit", "5;abcdefghijk\r\nhello\r\n0\r\n\r\n", maxExtensionBytes: 8),
            invalid("bare LF after size", "5\nhello\r\n0\r\n\r\n"),
            invalid("bare LF after extension", "5;a\nhello\r\n0\r\n\r\n"),
            invalid("bare CR after size", "5\rhello\r\n0\r\n\r\n"),
            invalid("control byte in extension", "5;a=\u{1}\r\nhello\r\n0\r\n\r\n"),
            invalid("NUL in extension", "5;a\0\r\nhello\r\n0\r\n\r\n"),
            invalid("DEL in extension", "5;a\u{7F}\r\nhello\r\n0\r\n\r\n"),
            invalid("data longer than declared", "5\r\nhello!\r\n0\r\n\r\n"),
            invalid("data shorter than declared", "6\r\nhello\r\n0\r\n\r\n0\r\n\r\n"),
            invalid("missing CRLF after data", "5\r\nhello0\r\n\r\n"),
            invalid("bare LF after data", "5\r\nhello\n0\r\n\r\n"),
            invalid("bare CR after data", "5\r\nhello\r0\r\n\r\n"),
            invalid("last chunk without CRLF", "0\r\n\n"),
            invalid("last chunk followed by junk", "0\r\n@"),
            invalid("trailer without colon", "0\r\nChecksum abc\r\n\r\n"),
            invalid("trailer with space before colon", "0\r\nChecksum : abc\r\n\r\n"),
            invalid("trailer with empty name", "0\r\n: abc\r\n\r\n"),
            invalid("obs-fold in trailer", "0\r\nA: 1\r\n 2\r\n\r\n"),
            invalid("bare LF in trailer", "0\r\nA: 1\n\r\n"),
            invalid("bare CR in trailer", "0\r\nA: 1\rB: 2\r\n\r\n"),
            invalid("NUL in trailer", "0\r\nA: 1\02\r\n\r\n"),
            invalid("non-ASCII trailer name", "0\r\nA\u{E9}: 1\r\n\r\n"),
            invalid("trailer section too large", "0\r\nA: 0123456789\r\n\r\n", maxTrailerBytes: 8),
        ]
    }

    func testTable() {
        let table = Self.cases
        var seen = Set<String>()
        for (index, testCase) in table.enumerated() {
            XCTAssertTrue(seen.insert(testCase.name).inserted, "duplicate case name \(testCase.name)")
            for feed in Feed.all(caseIndex: index) {
                let outcome = decodeChunked(testCase.bytes, feed: feed, maxExtensionBytes: testCase.maxExtensionBytes,
                                            maxTrailerBytes: testCase.maxTrailerBytes, line: testCase.line)
                XCTAssertEqual(outcome, testCase.expected, "case \"\(testCase.name)\" fed \(feed)", line: testCase.line)
            }
        }
        print("ChunkedDecoderTests: \(table.count) cases, each fed \(Feed.all(caseIndex: 0).count) ways")
    }

    /// Once done, the decoder reports the end again and consumes nothing more.
    func testDoneIsSticky() {
        var decoder = ChunkedDecoder()
        let bytes = b("0\r\n\r\nextra")
        bytes.withUnsafeBytes { buffer in
            let (consumed, step) = decoder.decode(buffer, from: 0)
            XCTAssertEqual(consumed, 5)
            guard case .end = step else { return XCTFail("\(step)") }
            let (again, step2) = decoder.decode(buffer, from: 5)
            XCTAssertEqual(again, 0)
            guard case .end = step2 else { return XCTFail("\(step2)") }
        }
    }

    /// A decoder can be fed only the new bytes each time (from: 0 of a fresh buffer), too.
    func testFedOnlyNewBytes() {
        let bytes = b("3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n")
        for feed in Feed.all(caseIndex: 99) {
            var decoder = ChunkedDecoder()
            var data: [UInt8] = []
            var previous = 0
            var ended = false
            outer: for end in feed.pieceEnds(bytes.count) {
                let piece = Array(bytes[previous..<end])
                previous = end
                var position = 0
                while true {
                    let (consumed, step) = piece.withUnsafeBytes { decoder.decode($0, from: position) }
                    position += consumed
                    switch step {
                    case .data(let start, let count): data += piece[start..<(start + count)]
                    case .needMore: continue outer
                    case .end: ended = true; break outer
                    case .invalid(let reason): XCTFail("\(feed): \(reason)"); break outer
                    }
                }
            }
            XCTAssertTrue(ended, "\(feed)")
            XCTAssertEqual(String(decoding: data, as: UTF8.self), "abcde", "\(feed)")
        }
    }
}
