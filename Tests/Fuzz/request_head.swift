// Fuzz harness: the request head parser (RequestHeadParser) and the head the proxy forwards
// (RequestHeadWriter).
//
// Input: byte 0 and 1 split points, byte 2 limits and field storage, then the request bytes.
// Checks:
//   - fed whole, in the three pieces the split points cut, and byte by byte (each time with
//     everything received so far, as a connection does), the answer is the same: needMore,
//     the same rejection (status and reason), or the same head and fields;
//   - a parser reset after a complete head parses the rest of the buffer (a pipelined request)
//     as a fresh parser does;
//   - round trip: an accepted head, re-serialised by RequestHeadWriter, parses again as
//     HTTP/1.1 with the same method, path, authority, framing, upgrade and request id, its
//     end-to-end fields unchanged, and forwarding that head again gives the same bytes.

import CutoverHTTP
import Glibc

struct RequestSummary: Equatable {
    var method: HTTPMethod
    var methodName: ByteRange
    var target: ByteRange
    var path: ByteRange
    var version: HTTPVersion
    var authority: ByteRange
    var framing: BodyFraming
    var keepAlive: Bool
    var upgrade: ByteRange
    var expectContinue: Bool
    var requestID: ByteRange
    var consumed: Int
    var fields: [FieldSummary]

    init(_ head: RequestHead, consumed: Int, fields: UnsafeMutableBufferPointer<HeaderField>) {
        method = head.method
        methodName = head.methodName
        target = head.target
        path = head.path
        version = head.version
        authority = head.authority
        framing = head.framing
        keepAlive = head.keepAlive
        upgrade = head.upgrade
        expectContinue = head.expectContinue
        requestID = head.requestID
        self.consumed = consumed
        self.fields = FieldSummary.of(fields, count: head.fieldCount)
    }
}

/// Limit sets: the defaults, and small ones a short input can reach (one with a URI limit
/// above the head limit, which the config refuses but the parser must still handle).
let requestLimitChoices: [HTTPLimits] = [
    HTTPLimits(),
    HTTPLimits(maxHeaderBytes: 64, maxHeaders: 4, maxURIBytes: 16),
    HTTPLimits(maxHeaderBytes: 256, maxHeaders: 8, maxURIBytes: 64),
    HTTPLimits(maxHeaderBytes: 128, maxHeaders: 3, maxURIBytes: 200),
    HTTPLimits(maxHeaderBytes: 1024, maxHeaders: 20, maxURIBytes: 512),
]

func parseRequest(_ prefixes: PrefixBuffer, ends: [Int], limits: HTTPLimits, fieldCapacity: Int) -> HeadOutcome<RequestSummary> {
    var parser = RequestHeadParser(limits: limits)
    return feed(prefixes, ends: ends, fieldCapacity: fieldCapacity,
                parse: { parser.parse($0, fields: $1) }, summary: RequestSummary.init)
}

let clientAddress = Array("203.0.113.9".utf8)
let fallbackHost = Array("fallback.example:8080".utf8)
let generatedID: (UInt64, UInt64) = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210)
let generatedHex = Array("0123456789abcdeffedcba9876543210".utf8)

/// RequestHeadWriter's output for `head` parsed from `source`.
func forward(_ head: RequestHead, source: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>) -> OwnedBytes {
    let capacity = 4 * source.count + 1024
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
    defer { output.deallocate() }
    return clientAddress.withUnsafeBytes { address in
        fallbackHost.withUnsafeBytes { fallback in
            var writer = ByteWriter(output)
            let context = ForwardingContext(clientAddress: address, scheme: "http", generatedRequestID: generatedID,
                                            fallbackHost: fallback)
            RequestHeadWriter.write(head, source: source, fields: fields, context: context, into: &writer)
            check(!writer.overflowed, "RequestHeadWriter overflowed \(capacity) bytes for a \(source.count)-byte head")
            return OwnedBytes(UnsafeRawBufferPointer(start: output.baseAddress, count: writer.count))
        }
    }
}

func roundTrip(_ head: RequestHead, source: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>) {
    let written = forward(head, source: source, fields: fields)
    let out = written.buffer
    func what() -> String { "request \"\(escaped(source))\" forwarded as \"\(escaped(out))\"" }
    let limits = HTTPLimits(maxHeaderBytes: 1 << 24, maxHeaders: head.fieldCount + 16, maxURIBytes: 1 << 24)
    let fields2 = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: limits.maxHeaders)
    defer { fields2.deallocate() }
    var parser = RequestHeadParser(limits: limits)
    let result = parser.parse(out, fields: fields2)
    guard case .complete(let again, let consumed) = result else { fail("\(what()): does not parse again: \(result)") }
    check(consumed == out.count, "\(what()): consumed \(consumed) of \(out.count)")
    check(again.version == .http11, "\(what()): version \(again.version)")
    check(again.method == head.method && bytesEqual(slice(out, again.methodName), slice(source, head.methodName)),
          "\(what()): method changed")
    // The writer prefixes "/" to an absolute-form target without a path.
    let path = slice(source, head.path)
    let path2 = slice(out, again.path)
    if path.isEmpty || path[0] == 0x3F {
        check(path2.count == path.count + 1 && path2[0] == 0x2F && bytesEqual(UnsafeRawBufferPointer(rebasing: path2[1...]), path),
              "\(what()): path changed")
    } else {
        check(bytesEqual(path2, path), "\(what()): path changed")
    }
    let authority2 = slice(out, again.authority)
    if head.authority.isEmpty {
        fallbackHost.withUnsafeBytes { check(bytesEqual(authority2, $0), "\(what()): authority is not the fallback host") }
    } else {
        check(bytesEqual(authority2, slice(source, head.authority)), "\(what()): authority changed")
    }
    check(again.framing == head.framing, "\(what()): framing \(head.framing) became \(again.framing)")
    check(bytesEqual(slice(out, again.upgrade), slice(source, head.upgrade)), "\(what()): upgrade changed")
    if head.requestID.isEmpty {
        generatedHex.withUnsafeBytes { check(bytesEqual(slice(out, again.requestID), $0), "\(what()): generated request id lost") }
    } else {
        check(bytesEqual(slice(out, again.requestID), slice(source, head.requestID)), "\(what()): request id changed")
    }
    check(again.keepAlive, "\(what()): the forwarded request asks to close")
    // End-to-end fields come right after Host, in order and unchanged.
    var kept: [Int] = []
    for index in 0..<head.fieldCount {
        let field = fields[index]
        if field.listedInConnection || field.kind.isReplacedByProxy || field.kind == .host || field.kind == .upgrade { continue }
        kept.append(index)
    }
    check(again.fieldCount >= kept.count + 1 && fields2[0].kind == .host, "\(what()): fields missing")
    var expectSeen = false
    for (offset, index) in kept.enumerated() {
        let original = fields[index]
        let copy = fields2[offset + 1]
        check(bytesEqual(slice(out, copy.name), slice(source, original.name))
              && bytesEqual(slice(out, copy.value), slice(source, original.value)) && copy.kind == original.kind,
              "\(what()): end-to-end field \(index) changed")
        if original.kind == .expect { expectSeen = true }
    }
    check(again.expectContinue == expectSeen, "\(what()): Expect changed")
    // Forwarding the forwarded head changes nothing when the client named the authority;
    // otherwise the first hop adds Host from the fallback and the second X-Forwarded-Host, and
    // from the second hop on nothing changes.
    let twice = forward(again, source: out, fields: fields2)
    if !head.authority.isEmpty {
        check(bytesEqual(twice.buffer, out), "\(what()): forwarded again as \"\(escaped(twice.buffer))\"")
    } else {
        let second = twice.buffer
        let fields3 = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: again.fieldCount + 16)
        defer { fields3.deallocate() }
        var parser3 = RequestHeadParser(limits: HTTPLimits(maxHeaderBytes: 1 << 24, maxHeaders: again.fieldCount + 16,
                                                           maxURIBytes: 1 << 24))
        let result3 = parser3.parse(second, fields: fields3)
        guard case .complete(let third, _) = result3 else { fail("\(what()): the second hop's head does not parse: \(result3)") }
        let thrice = forward(third, source: second, fields: fields3)
        check(bytesEqual(thrice.buffer, second),
              "\(what()): the second hop's \"\(escaped(second))\" forwarded again as \"\(escaped(thrice.buffer))\"")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard let input = FramedInput(data, size) else { return 0 }
    let limits = requestLimitChoices[Int(input.control) % requestLimitChoices.count]
    // Field storage larger than maxHeaders must not let more fields through.
    let fieldCapacity = limits.maxHeaders + Int(input.control / 8) % 3
    let prefixes = PrefixBuffer(input.message)
    let feeds = input.feeds
    let whole = parseRequest(prefixes, ends: feeds[0].ends, limits: limits, fieldCapacity: fieldCapacity)
    for feed in feeds.dropFirst() {
        let outcome = parseRequest(prefixes, ends: feed.ends, limits: limits, fieldCapacity: fieldCapacity)
        check(outcome == whole, "request \"\(escaped(input.message))\": whole \(whole), \(feed.name) \(outcome)")
    }

    guard case .complete(let summary) = whole else { return 0 }
    let message = prefixes.prefix(input.message.count)
    let fields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: fieldCapacity)
    defer { fields.deallocate() }
    var parser = RequestHeadParser(limits: limits)
    guard case .complete(let head, let consumed) = parser.parse(message, fields: fields) else { fail("not parsed twice the same") }
    check(consumed == summary.consumed && consumed <= message.count, "consumed \(consumed)")
    roundTrip(head, source: message, fields: fields)

    // Pipelining: the same parser, reset, on the bytes after the head; a fresh parser agrees.
    if consumed < message.count {
        parser.reset()
        var freshParser = RequestHeadParser(limits: limits)
        checkResetParserAgrees(rest: UnsafeRawBufferPointer(rebasing: message[consumed...]), fields: fields,
                               reused: { parser.parse($0, fields: $1) }, fresh: { freshParser.parse($0, fields: $1) },
                               summary: RequestSummary.init)
    }
    return 0
}
