// Shared by the two head harnesses, request_head and response_head (run.sh compiles it into
// both): what a parse produced, as a value two parses can be compared by, and the check that a
// reset parser reads the next head as a fresh one does.

import CutoverHTTP

/// A header field as the parser reported it.
struct FieldSummary: Equatable {
    var name: ByteRange
    var value: ByteRange
    var kind: HeaderKind
    var listedInConnection: Bool

    static func of(_ fields: UnsafeMutableBufferPointer<HeaderField>, count: Int) -> [FieldSummary] {
        (0..<count).map {
            FieldSummary(name: fields[$0].name, value: fields[$0].value, kind: fields[$0].kind,
                         listedInConnection: fields[$0].listedInConnection)
        }
    }
}

/// What feeding a message gave: the same for every way of cutting it into reads.
enum HeadOutcome<Summary: Equatable>: Equatable {
    case needMore
    case invalid(status: Int, reason: String)
    case complete(Summary)
}

/// Feeds the first `end` bytes for each end in turn (everything received so far, as a
/// connection does) until the parser answers.
func feed<Head, Summary: Equatable>(
    _ prefixes: PrefixBuffer, ends: [Int], fieldCapacity: Int,
    parse: (UnsafeRawBufferPointer, UnsafeMutableBufferPointer<HeaderField>) -> HeadParseResult<Head>,
    summary: (Head, Int, UnsafeMutableBufferPointer<HeaderField>) -> Summary
) -> HeadOutcome<Summary> {
    let fields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: fieldCapacity)
    defer { fields.deallocate() }
    for end in ends {
        switch parse(prefixes.prefix(end), fields) {
        case .needMore: continue
        case .invalid(let error): return .invalid(status: error.status, reason: error.reason.description)
        case .complete(let head, let consumed): return .complete(summary(head, consumed, fields))
        }
    }
    return .needMore
}

/// After a complete head the proxy resets the parser and reads the next head from the bytes that
/// follow (a pipelined request; the final response after a 1xx): `reused` (the reset parser)
/// and `fresh` (a new one) must give the same answer for `rest`.
func checkResetParserAgrees<Head, Summary: Equatable>(
    rest: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>,
    reused: (UnsafeRawBufferPointer, UnsafeMutableBufferPointer<HeaderField>) -> HeadParseResult<Head>,
    fresh: (UnsafeRawBufferPointer, UnsafeMutableBufferPointer<HeaderField>) -> HeadParseResult<Head>,
    summary: (Head, Int, UnsafeMutableBufferPointer<HeaderField>) -> Summary
) {
    let rest = OwnedBytes(rest)
    let reusedAnswer = reused(rest.buffer, fields)
    let freshFields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: fields.count)
    defer { freshFields.deallocate() }
    let freshAnswer = fresh(rest.buffer, freshFields)
    switch (reusedAnswer, freshAnswer) {
    case (.needMore, .needMore): break
    case (.invalid(let a), .invalid(let b)): check(a == b, "after reset: \(a) vs \(b)")
    case (.complete(let a, let ca), .complete(let b, let cb)):
        check(summary(a, ca, fields) == summary(b, cb, freshFields), "after reset: a different head")
    default: fail("after reset: \(reusedAnswer) vs a fresh parser's \(freshAnswer)")
    }
}

func slice(_ buffer: UnsafeRawBufferPointer, _ range: ByteRange) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: buffer[range.lowerBound..<range.upperBound])
}
