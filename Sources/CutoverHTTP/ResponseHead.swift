/// A parsed response head from an upstream. Ranges point into the buffer it was parsed from.
public struct ResponseHead: Sendable {
    public var version: HTTPVersion = .http11
    public var status: Int = 0
    public var reason: ByteRange = .empty
    public var fieldCount: Int = 0
    public var framing: BodyFraming = .none
    /// Content-Length as sent, also for bodiless responses (HEAD, 304) where it is forwarded
    /// as information and not used for framing.
    public var contentLength: UInt64? = nil
    /// The upstream connection may carry another request after this response.
    public var reusable: Bool = true
    /// The Upgrade value of a 101 response.
    public var upgrade: ByteRange = .empty

    @inlinable public init() {}

    @inlinable public var isInformational: Bool { status >= 100 && status < 200 }
}

/// A strict parser for upstream response heads. Upstreams are untrusted too: whatever this
/// rejects becomes a 502 for the client and the upstream connection is closed.
public struct ResponseHeadParser: Sendable {
    public var limits: HTTPLimits
    @usableFromInline var scanner = HeadScanner()

    @inlinable
    public init(limits: HTTPLimits) {
        self.limits = limits
    }

    @inlinable
    public mutating func reset() { scanner.reset() }

    /// - Parameter requestMethod: the method of the request this answers (HEAD has no body).
    public mutating func parse(
        _ buffer: UnsafeRawBufferPointer,
        requestMethod: HTTPMethod,
        fields: UnsafeMutableBufferPointer<HeaderField>
    ) -> HeadParseResult<ResponseHead> {
        // HTTPLimits.maxHeaders holds even when the caller's field storage is larger.
        let fields = fields.count > limits.maxHeaders
            ? UnsafeMutableBufferPointer(rebasing: fields[0..<limits.maxHeaders]) : fields
        // The scan never looks past the limit, so bytes beyond it cannot change the verdict: a
        // bare LF after `maxHeaderBytes` is "too large" whether it came in one read or many.
        let bound = Swift.min(buffer.count, limits.maxHeaderBytes)
        switch scanner.scan(UnsafeRawBufferPointer(rebasing: buffer[0..<bound]), start: 0) {
        case .bareLineFeed:
            return .invalid(HTTPParseError(502, "bare LF in response"))
        case .needMore, .firstLine:
            if bound >= limits.maxHeaderBytes {
                return .invalid(HTTPParseError(502, "response head too large"))
            }
            return .needMore
        case .found(let end):
            switch parseHead(buffer, end: end, requestMethod: requestMethod, fields: fields) {
            case .success(let head): return .complete(head, consumed: end)
            case .failure(let error): return .invalid(error)
            }
        }
    }

    @usableFromInline
    func parseHead(
        _ buffer: UnsafeRawBufferPointer, end: Int, requestMethod: HTTPMethod,
        fields: UnsafeMutableBufferPointer<HeaderField>
    ) -> Result<ResponseHead, HTTPParseError> {
        var head = ResponseHead()
        // status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF; a missing SP before an
        // empty reason is tolerated (common in the wild, and unambiguous).
        guard end >= 14,
              buffer[0] == 0x48, buffer[1] == 0x54, buffer[2] == 0x54, buffer[3] == 0x50, buffer[4] == 0x2F,
              buffer[5] == 0x31, buffer[6] == 0x2E, buffer[8] == 0x20,
              isDigit(buffer[9]), isDigit(buffer[10]), isDigit(buffer[11])
        else { return .failure(HTTPParseError(502, "invalid status line")) }
        switch buffer[7] {
        case 0x31: head.version = .http11
        case 0x30: head.version = .http10
        default: return .failure(HTTPParseError(502, "invalid status line"))
        }
        head.status = Int(buffer[9] &- 0x30) * 100 + Int(buffer[10] &- 0x30) * 10 + Int(buffer[11] &- 0x30)
        // RFC 9110 §15: values outside 100...599 are invalid (a client cannot even classify them).
        if head.status < 100 || head.status > 599 { return .failure(HTTPParseError(502, "invalid status code")) }
        var index = 12
        if buffer[index] == 0x20 {
            index += 1
            let reasonStart = index
            while index < end && buffer[index] != 0x0D {
                if !isFieldValueByte(buffer[index]) { return .failure(HTTPParseError(502, "invalid reason phrase")) }
                index += 1
            }
            head.reason = ByteRange(start: reasonStart, count: index - reasonStart)
        }
        guard index + 1 < end, buffer[index] == 0x0D, buffer[index + 1] == 0x0A else {
            return .failure(HTTPParseError(502, "invalid status line"))
        }
        index += 2

        switch parseFieldLines(buffer, from: index, to: end - 2, fields: fields, tooManyStatus: 502) {
        case .success(let count): head.fieldCount = count
        case .failure(let error): return .failure(HTTPParseError(502, error.reason))
        }

        var contentLength: UInt64? = nil
        var transferEncodingSeen = false
        var chunkedIsLast = false
        var chunkedCount = 0
        var unknownCoding = false
        var connectionClose = false
        var connectionKeepAlive = false
        var invalid: HTTPParseError? = nil
        for fieldIndex in 0..<head.fieldCount {
            let field = fields[fieldIndex]
            switch field.kind {
            case .contentLength:
                guard let value = parseContentLength(buffer, field.value) else {
                    return .failure(HTTPParseError(502, "invalid Content-Length in response"))
                }
                if let previous = contentLength, previous != value {
                    return .failure(HTTPParseError(502, "conflicting Content-Length in response"))
                }
                contentLength = value
            case .transferEncoding:
                transferEncodingSeen = true
                forEachListElement(buffer, field.value) { coding in
                    if equalsLowercase(buffer, coding, "chunked") {
                        chunkedCount += 1
                        chunkedIsLast = true
                    } else {
                        chunkedIsLast = false
                        unknownCoding = true
                    }
                    return true
                }
            case .connection:
                forEachListElement(buffer, field.value) { option in
                    if equalsLowercase(buffer, option, "close") { connectionClose = true }
                    else if equalsLowercase(buffer, option, "keep-alive") { connectionKeepAlive = true }
                    for offset in option.lowerBound..<option.upperBound where !ByteClass.token.contains(buffer[offset]) {
                        invalid = HTTPParseError(502, "invalid Connection option in response")
                        return false
                    }
                    for other in 0..<head.fieldCount where equalsIgnoringCase(buffer, fields[other].name, option) {
                        fields[other].listedInConnection = true
                    }
                    return true
                }
            case .upgrade:
                head.upgrade = field.value
            default:
                break
            }
        }
        if let invalid { return .failure(invalid) }
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing; without
        // this, "HTTP/1.0 + keep-alive + chunked" would be decoded and the connection pooled.
        if transferEncodingSeen && head.version == .http10 {
            return .failure(HTTPParseError(502, "Transfer-Encoding in an HTTP/1.0 response"))
        }
        head.contentLength = contentLength
        head.reusable = head.version == .http11 ? !connectionClose : (connectionKeepAlive && !connectionClose)

        // Framing, RFC 9112 §6.3, in its order of precedence.
        if requestMethod == .head || head.isInformational || head.status == 204 || head.status == 304 {
            head.framing = .none
        } else if transferEncodingSeen {
            if contentLength != nil {
                return .failure(HTTPParseError(502, "both Transfer-Encoding and Content-Length in response"))
            }
            if chunkedCount > 1 { return .failure(HTTPParseError(502, "chunked applied twice in response")) }
            // The proxy re-frames bodies; it could not pass another transfer coding on intact.
            if unknownCoding || !chunkedIsLast {
                return .failure(HTTPParseError(502, "unsupported transfer coding in response"))
            }
            head.framing = .chunked
        } else if let length = contentLength {
            head.framing = .contentLength(length)
        } else {
            head.framing = .untilClose
            head.reusable = false
        }
        return .success(head)
    }
}
