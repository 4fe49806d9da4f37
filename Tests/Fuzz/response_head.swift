// Fuzz harness: the response head parser (ResponseHeadParser) and the head the proxy sends to
// the client (ResponseHeadWriter).
//
// Input: byte 0 and 1 split points, byte 2 limits, request method and client options, then the
// response bytes.
// Checks:
//   - fed whole, in the three pieces the split points cut, and byte by byte, the answer is the
//     same: needMore, the same rejection (status and reason), or the same head and fields;
//   - after a complete head (a 1xx, or pipelined bytes), the reset parser parses the rest as a
//     fresh parser does;
//   - round trip: an accepted head, written by ResponseHeadWriter with the client framing the
//     proxy would choose, parses again with the same status, reason, framing, Content-Length,
//     reuse and upgrade, its end-to-end fields unchanged, and writing that head again gives the
//     same bytes.

import CutoverHTTP
import Glibc

struct ResponseSummary: Equatable {
    var version: HTTPVersion
    var status: Int
    var reason: ByteRange
    var framing: BodyFraming
    var contentLength: UInt64?
    var reusable: Bool
    var upgrade: ByteRange
    var consumed: Int
    var fields: [FieldSummary]

    init(_ head: ResponseHead, consumed: Int, fields: UnsafeMutableBufferPointer<HeaderField>) {
        version = head.version
        status = head.status
        reason = head.reason
        framing = head.framing
        contentLength = head.contentLength
        reusable = head.reusable
        upgrade = head.upgrade
        self.consumed = consumed
        self.fields = FieldSummary.of(fields, count: head.fieldCount)
    }
}

let responseLimitChoices: [HTTPLimits] = [
    HTTPLimits(),
    HTTPLimits(maxHeaderBytes: 64, maxHeaders: 4, maxURIBytes: 16),
    HTTPLimits(maxHeaderBytes: 256, maxHeaders: 8, maxURIBytes: 64),
    HTTPLimits(maxHeaderBytes: 1024, maxHeaders: 20, maxURIBytes: 512),
]
let methods: [HTTPMethod] = [.get, .head, .post, .options]

func parseResponse(_ prefixes: PrefixBuffer, ends: [Int], limits: HTTPLimits, method: HTTPMethod) -> HeadOutcome<ResponseSummary> {
    var parser = ResponseHeadParser(limits: limits)
    return feed(prefixes, ends: ends, fieldCapacity: limits.maxHeaders,
                parse: { parser.parse($0, requestMethod: method, fields: $1) }, summary: ResponseSummary.init)
}

/// The client framing the proxy uses for a response it relays as it came.
func clientFraming(_ framing: BodyFraming) -> ClientFraming {
    switch framing {
    case .none: return .none
    case .contentLength(let length): return .contentLength(length)
    case .chunked: return .chunked
    case .untilClose: return .close
    }
}

func writeHead(_ head: ResponseHead, source: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>,
           keepAlive: Bool, clientVersion: HTTPVersion) -> OwnedBytes {
    let capacity = 2 * source.count + 512
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
    defer { output.deallocate() }
    var writer = ByteWriter(output)
    ResponseHeadWriter.write(head, source: source, fields: fields, framing: clientFraming(head.framing), keepAlive: keepAlive,
                             clientVersion: clientVersion, into: &writer)
    check(!writer.overflowed, "ResponseHeadWriter overflowed \(capacity) bytes for a \(source.count)-byte head")
    return OwnedBytes(UnsafeRawBufferPointer(start: output.baseAddress, count: writer.count))
}

func roundTrip(_ head: ResponseHead, source: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>,
               method: HTTPMethod, control: UInt8) {
    // The proxy keeps a client connection only when the response allows it.
    let keepAlive = head.reusable && control & 0x40 == 0
    let clientVersion: HTTPVersion = control & 0x80 == 0 ? .http11 : .http10
    let written = writeHead(head, source: source, fields: fields, keepAlive: keepAlive, clientVersion: clientVersion)
    let out = written.buffer
    func what() -> String { "response \"\(escaped(source))\" (\(method)) written as \"\(escaped(out))\"" }
    let limits = HTTPLimits(maxHeaderBytes: 1 << 24, maxHeaders: head.fieldCount + 16, maxURIBytes: 1 << 24)
    let fields2 = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: limits.maxHeaders)
    defer { fields2.deallocate() }
    var parser = ResponseHeadParser(limits: limits)
    let result = parser.parse(out, requestMethod: method, fields: fields2)
    guard case .complete(let again, let consumed) = result else { fail("\(what()): does not parse again: \(result)") }
    check(consumed == out.count, "\(what()): consumed \(consumed) of \(out.count)")
    check(again.version == .http11 && again.status == head.status, "\(what()): status line changed")
    check(bytesEqual(slice(out, again.reason), slice(source, head.reason)), "\(what()): reason changed")
    check(again.framing == head.framing, "\(what()): framing \(head.framing) became \(again.framing)")
    // Content-Length goes on as information on a bodiless response, except on 204 and 1xx.
    let expectedLength: UInt64?
    switch head.framing {
    case .none: expectedLength = head.status != 204 && !head.isInformational ? head.contentLength : nil
    case .contentLength(let length): expectedLength = length
    case .chunked, .untilClose: expectedLength = nil
    }
    check(again.contentLength == expectedLength, "\(what()): Content-Length \(String(describing: again.contentLength))")
    if !head.isInformational {
        check(again.reusable == (keepAlive && head.framing != .untilClose), "\(what()): reuse changed")
    }
    if head.status == 101 {
        check(bytesEqual(slice(out, again.upgrade), slice(source, head.upgrade)), "\(what()): upgrade changed")
    }
    var kept: [Int] = []
    for index in 0..<head.fieldCount {
        let field = fields[index]
        if field.listedInConnection { continue }
        switch field.kind {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .contentLength, .upgrade, .close: continue
        default: kept.append(index)
        }
    }
    check(again.fieldCount >= kept.count, "\(what()): fields missing")
    for (offset, index) in kept.enumerated() {
        let original = fields[index]
        let copy = fields2[offset]
        check(bytesEqual(slice(out, copy.name), slice(source, original.name))
              && bytesEqual(slice(out, copy.value), slice(source, original.value)) && copy.kind == original.kind,
              "\(what()): end-to-end field \(index) changed")
    }
    let twice = writeHead(again, source: out, fields: fields2, keepAlive: keepAlive, clientVersion: clientVersion)
    check(bytesEqual(twice.buffer, out), "\(what()): written again as \"\(escaped(twice.buffer))\"")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard let input = FramedInput(data, size) else { return 0 }
    let limits = responseLimitChoices[Int(input.control) % responseLimitChoices.count]
    let method = methods[Int(input.control / 4) % methods.count]
    let prefixes = PrefixBuffer(input.message)
    let feeds = input.feeds
    let whole = parseResponse(prefixes, ends: feeds[0].ends, limits: limits, method: method)
    for feed in feeds.dropFirst() {
        let outcome = parseResponse(prefixes, ends: feed.ends, limits: limits, method: method)
        check(outcome == whole, "response \"\(escaped(input.message))\" (\(method)): whole \(whole), \(feed.name) \(outcome)")
    }

    guard case .complete(let summary) = whole else { return 0 }
    let message = prefixes.prefix(input.message.count)
    let fields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: limits.maxHeaders)
    defer { fields.deallocate() }
    var parser = ResponseHeadParser(limits: limits)
    guard case .complete(let head, let consumed) = parser.parse(message, requestMethod: method, fields: fields) else {
        fail("not parsed twice the same")
    }
    check(consumed == summary.consumed && consumed <= message.count, "consumed \(consumed)")
    roundTrip(head, source: message, fields: fields, method: method, control: input.control)

    // After a 1xx the proxy resets the parser and reads the next head from the same bytes.
    if consumed < message.count {
        parser.reset()
        var freshParser = ResponseHeadParser(limits: limits)
        checkResetParserAgrees(rest: UnsafeRawBufferPointer(rebasing: message[consumed...]), fields: fields,
                               reused: { parser.parse($0, requestMethod: method, fields: $1) },
                               fresh: { freshParser.parse($0, requestMethod: method, fields: $1) },
                               summary: ResponseSummary.init)
    }
    return 0
}
