// Finding where a head ends, shared by the request and response parsers.
//
// The scan is incremental (it remembers how far it looked) so a head that arrives in many small
// reads is scanned once in total. It enforces the line-ending rule as it goes: every LF must
// follow a CR, so a bare-LF head is rejected at once instead of waiting for a CRLFCRLF that a
// lenient peer would never send.

public struct HeadScanner: Sendable {
    /// Index the next scan starts from.
    @usableFromInline var scanned: Int32 = 0
    /// Index just past the first LF, or 0 while the first line is incomplete.
    @usableFromInline var firstLineEnd: Int32 = 0

    @inlinable
    public init() {}

    @inlinable
    public mutating func reset() {
        scanned = 0
        firstLineEnd = 0
    }

    public enum Outcome: Sendable, Equatable {
        case needMore
        /// The head spans `start ..< end`; `end` is just past the empty line.
        case found(end: Int)
        case bareLineFeed
        /// The first line just ended (only with `stopAtFirstLine`): `end` is past its LF. The
        /// next scan goes on from there.
        case firstLine(end: Int)
    }

    /// Scans `buffer[start...]` (the head begins at `start`) for the empty line ending the head.
    @inlinable
    public mutating func scan(_ buffer: UnsafeRawBufferPointer, start: Int, stopAtFirstLine: Bool = false) -> Outcome {
        var index = Swift.max(Int(scanned), start)
        let count = buffer.count
        while index < count {
            if buffer[index] == 0x0A {
                if index == start || buffer[index - 1] != 0x0D { return .bareLineFeed }
                if firstLineEnd == 0 {
                    firstLineEnd = Int32(truncatingIfNeeded: index + 1)
                    if stopAtFirstLine {
                        scanned = Int32(truncatingIfNeeded: index + 1)
                        return .firstLine(end: index + 1)
                    }
                }
                // "\r\n\r\n": the line that just ended was empty.
                if index - start >= 3 && buffer[index - 2] == 0x0A {
                    scanned = Int32(truncatingIfNeeded: index + 1)
                    return .found(end: index + 1)
                }
            }
            index += 1
        }
        scanned = Int32(truncatingIfNeeded: count)
        return .needMore
    }

    @inlinable
    public var hasFirstLine: Bool { firstLineEnd != 0 }
}

/// Splits and validates the field lines of a head (RFC 9112 §5) into `fields`.
/// Returns the number of fields, or the error a client must see.
@inlinable
func parseFieldLines(
    _ buffer: UnsafeRawBufferPointer,
    from start: Int,
    to end: Int,  // index of the CR of the final empty line
    fields: UnsafeMutableBufferPointer<HeaderField>,
    tooManyStatus: Int
) -> Result<Int, HTTPParseError> {
    var count = 0
    var index = start
    while index < end {
        let first = buffer[index]
        if first == 0x20 || first == 0x09 { return .failure(HTTPParseError(400, "obsolete line folding")) }
        // field-name = token, immediately followed by ':' (no whitespace before the colon).
        let nameStart = index
        while index < end && ByteClass.token.contains(buffer[index]) { index += 1 }
        if index == nameStart { return .failure(HTTPParseError(400, "invalid field name")) }
        if index >= end || buffer[index] != 0x3A {
            return .failure(HTTPParseError(400, "invalid character in field name"))
        }
        let nameEnd = index
        index += 1
        while index < end && (buffer[index] == 0x20 || buffer[index] == 0x09) { index += 1 }
        let valueStart = index
        var valueEnd = index
        while index < end {
            let byte = buffer[index]
            if byte == 0x0D { break }
            if !isFieldValueByte(byte) { return .failure(HTTPParseError(400, "invalid character in field value")) }
            index += 1
            if byte != 0x20 && byte != 0x09 { valueEnd = index }
        }
        // The scanner guarantees each LF follows a CR; a CR must also be followed by its LF.
        if index + 1 >= buffer.count || buffer[index] != 0x0D || buffer[index + 1] != 0x0A {
            return .failure(HTTPParseError(400, "bare CR in field line"))
        }
        index += 2
        if count == fields.count { return .failure(HTTPParseError(tooManyStatus, "too many header fields")) }
        let name = ByteRange(start: nameStart, count: nameEnd - nameStart)
        fields[count] = HeaderField(
            name: name,
            value: ByteRange(start: valueStart, count: valueEnd - valueStart),
            kind: HeaderKind.classify(buffer, name))
        count += 1
    }
    return .success(count)
}

/// Iterates the comma-separated elements of a list-valued field (RFC 9110 §5.6.1), skipping
/// empty elements and trimming whitespace. `body` returns false to stop early.
@inlinable
func forEachListElement(
    _ buffer: UnsafeRawBufferPointer, _ range: ByteRange, _ body: (ByteRange) -> Bool
) {
    var index = range.lowerBound
    let end = range.upperBound
    while index < end {
        while index < end && (buffer[index] == 0x20 || buffer[index] == 0x09 || buffer[index] == 0x2C) { index += 1 }
        let elementStart = index
        var elementEnd = index
        while index < end && buffer[index] != 0x2C {
            if buffer[index] != 0x20 && buffer[index] != 0x09 { elementEnd = index + 1 }
            index += 1
        }
        if elementEnd > elementStart {
            if !body(ByteRange(start: elementStart, count: elementEnd - elementStart)) { return }
        }
    }
}

/// Case-insensitive comparison of a range with a lowercase literal.
@inlinable
func equalsLowercase(_ buffer: UnsafeRawBufferPointer, _ range: ByteRange, _ literal: StaticString) -> Bool {
    guard Int(range.count) == literal.utf8CodeUnitCount else { return false }
    let bytes = literal.utf8Start
    for offset in 0..<Int(range.count) where asciiLower(buffer[range.lowerBound + offset]) != bytes[offset] {
        return false
    }
    return true
}

/// Case-insensitive comparison of two ranges of the same buffer.
@inlinable
func equalsIgnoringCase(_ buffer: UnsafeRawBufferPointer, _ a: ByteRange, _ b: ByteRange) -> Bool {
    guard a.count == b.count else { return false }
    for offset in 0..<Int(a.count) where asciiLower(buffer[a.lowerBound + offset]) != asciiLower(buffer[b.lowerBound + offset]) {
        return false
    }
    return true
}

/// Content-Length (RFC 9110 §8.6): `1*DIGIT`, or a list of identical such values. Anything
/// else — signs, hex, spaces inside, an empty value, junk after the digits, 64-bit overflow —
/// is nil: a length two hops could read differently is a smuggling vector.
@inlinable
func parseContentLength(_ buffer: UnsafeRawBufferPointer, _ range: ByteRange) -> UInt64? {
    var result: UInt64? = nil
    var valid = true
    var sawElement = false
    // Split on commas ourselves: an empty element ("5,,5" or ",") is malformed here.
    var index = range.lowerBound
    let end = range.upperBound
    while valid {
        while index < end && (buffer[index] == 0x20 || buffer[index] == 0x09) { index += 1 }
        var value: UInt64 = 0
        var digits = 0
        while index < end && isDigit(buffer[index]) {
            // 18 digits cannot overflow; more is never a plausible body length.
            if digits == 18 { return nil }
            value = value &* 10 &+ UInt64(buffer[index] &- 0x30)
            digits += 1
            index += 1
        }
        if digits == 0 { return nil }
        while index < end && (buffer[index] == 0x20 || buffer[index] == 0x09) { index += 1 }
        if let previous = result, previous != value { return nil }
        result = value
        sawElement = true
        if index == end { break }
        if buffer[index] != 0x2C { valid = false; break }
        index += 1
    }
    return valid && sawElement ? result : nil
}
