/// An incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
///
/// It validates the framing strictly — chunk sizes are `1*HEXDIG` with an overflow bound,
/// extensions are bounded and contain no control bytes, every line ends in CRLF, data is exactly
/// as long as declared — and hands out data segments as ranges of the input, so the caller can
/// re-frame them without copying. Trailers are validated and discarded: they are never merged
/// into the header section.
public struct ChunkedDecoder: Sendable {
    public enum Step: Sendable {
        /// `buffer[start ..< start + count]` is body data.
        case data(start: Int, count: Int)
        /// Every byte given was consumed; call again with more.
        case needMore
        /// The last chunk and the trailer section ended.
        case end
        case invalid(StaticString)
    }

    @usableFromInline enum State: UInt8, Sendable {
        case size, sizeWhitespace, extensions, sizeLineFeed, data, dataCarriageReturn, dataLineFeed
        case trailerLineStart, trailerName, trailerLine, trailerLineFeed, finalLineFeed, done
    }

    @usableFromInline var state: State = .size
    @usableFromInline var remaining: UInt64 = 0
    // Narrow fields: a decoder lives in every connection's exchange state, and idle
    // connections should cost as little memory as possible.
    @usableFromInline var sizeDigits: UInt8 = 0
    @usableFromInline var lineBytes: Int32 = 0
    @usableFromInline var trailerBytes: Int32 = 0
    @usableFromInline let extensionLimit: Int32
    @usableFromInline let trailerLimit: Int32

    @inlinable
    public init(maxExtensionBytes: Int = 4096, maxTrailerBytes: Int = 16 * 1024) {
        extensionLimit = Int32(clamping: maxExtensionBytes)
        trailerLimit = Int32(clamping: maxTrailerBytes)
    }

    public var maxExtensionBytes: Int { Int(extensionLimit) }
    public var maxTrailerBytes: Int { Int(trailerLimit) }

    @inlinable public var isDone: Bool { state == .done }

    /// Decodes from `buffer[start...]`. Returns how many bytes were consumed (including the data
    /// segment it reports) and what was found.
    public mutating func decode(_ buffer: UnsafeRawBufferPointer, from start: Int) -> (consumed: Int, step: Step) {
        var index = start
        let end = buffer.count
        while index < end {
            let byte = buffer[index]
            switch state {
            case .size:
                if let digit = hexValue(byte) {
                    // 15 hex digits (2^60) is far beyond any body we would stream; more is an attack.
                    if sizeDigits == 15 { return (index - start, .invalid("chunk size too large")) }
                    remaining = remaining << 4 | UInt64(digit)
                    sizeDigits += 1
                } else if sizeDigits == 0 {
                    return (index - start, .invalid("invalid chunk size"))
                } else if byte == 0x3B {  // ";"
                    state = .extensions
                    lineBytes = 0
                } else if byte == 0x20 || byte == 0x09 {  // BWS before ";"
                    state = .sizeWhitespace
                    lineBytes = 0
                } else if byte == 0x0D {
                    state = .sizeLineFeed
                } else {
                    return (index - start, .invalid("invalid chunk size"))
                }
            case .sizeWhitespace:
                // Only BWS may follow the size before ";" (RFC 9112 §7.1.1): "5 6" or "5 x" is not
                // a chunk-size line, and another hop could read it differently.
                lineBytes += 1
                if lineBytes > extensionLimit { return (index - start, .invalid("chunk extension too long")) }
                if byte == 0x3B {
                    state = .extensions
                } else if byte == 0x0D {
                    state = .sizeLineFeed
                } else if byte != 0x20 && byte != 0x09 {
                    return (index - start, .invalid("invalid chunk size"))
                }
            case .extensions:
                if byte == 0x0D {
                    state = .sizeLineFeed
                } else {
                    lineBytes += 1
                    if lineBytes > extensionLimit { return (index - start, .invalid("chunk extension too long")) }
                    if !isFieldValueByte(byte) { return (index - start, .invalid("invalid chunk extension")) }
                }
            case .sizeLineFeed:
                guard byte == 0x0A else { return (index - start, .invalid("bare CR in chunk size line")) }
                sizeDigits = 0
                if remaining == 0 {
                    state = .trailerLineStart
                } else {
                    state = .data
                }
            case .data:
                let available = UInt64(end - index)
                let take = Int(remaining < available ? remaining : available)
                remaining -= UInt64(take)
                if remaining == 0 { state = .dataCarriageReturn }
                return (index + take - start, .data(start: index, count: take))
            case .dataCarriageReturn:
                guard byte == 0x0D else { return (index - start, .invalid("chunk data longer than its size")) }
                state = .dataLineFeed
            case .dataLineFeed:
                guard byte == 0x0A else { return (index - start, .invalid("bare CR after chunk data")) }
                state = .size
            case .trailerLineStart:
                if byte == 0x0D {
                    state = .finalLineFeed
                } else {
                    guard ByteClass.token.contains(byte) else { return (index - start, .invalid("invalid trailer field")) }
                    state = .trailerName
                    trailerBytes += 1
                }
            case .trailerName:
                // A trailer field line is `token ":" value` like a header (RFC 9112 §7.1.2):
                // no whitespace before the colon, no line without one, no non-token byte in the name.
                trailerBytes += 1
                if trailerBytes > trailerLimit { return (index - start, .invalid("trailer section too large")) }
                if byte == 0x3A {
                    state = .trailerLine
                } else if !ByteClass.token.contains(byte) {
                    return (index - start, .invalid("invalid trailer field name"))
                }
            case .trailerLine:
                trailerBytes += 1
                if trailerBytes > trailerLimit { return (index - start, .invalid("trailer section too large")) }
                if byte == 0x0D {
                    state = .trailerLineFeed
                } else if !isFieldValueByte(byte) {
                    return (index - start, .invalid("invalid trailer field"))
                }
            case .trailerLineFeed:
                guard byte == 0x0A else { return (index - start, .invalid("bare CR in trailer")) }
                state = .trailerLineStart
            case .finalLineFeed:
                guard byte == 0x0A else { return (index - start, .invalid("bare CR after last chunk")) }
                state = .done
                return (index + 1 - start, .end)
            case .done:
                return (index - start, .end)
            }
            index += 1
        }
        if state == .done { return (index - start, .end) }
        return (index - start, .needMore)
    }
}
