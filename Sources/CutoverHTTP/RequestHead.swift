/// A parsed request head. Ranges point into the buffer it was parsed from.
public struct RequestHead: Sendable {
    public var method: HTTPMethod = .other
    public var methodName: ByteRange = .empty
    /// The request target exactly as received.
    public var target: ByteRange = .empty
    /// The origin-form to forward: path and query. For an absolute-form target this is what
    /// follows the authority and may be empty or start with `?` (the writer prefixes `/`).
    public var path: ByteRange = .empty
    public var version: HTTPVersion = .http11
    /// The authority the request is for: the absolute-form authority when present (it wins over
    /// Host, RFC 9112 §3.2.2), otherwise the Host value.
    public var authority: ByteRange = .empty
    public var fieldCount: Int = 0
    public var framing: BodyFraming = .none
    /// The client wants the connection kept after this exchange (version default and Connection).
    public var keepAlive: Bool = true
    /// The Upgrade value when the client asked for a protocol upgrade the proxy may tunnel
    /// (Connection: upgrade plus Upgrade, never h2c); empty otherwise.
    public var upgrade: ByteRange = .empty
    public var expectContinue: Bool = false
    /// A client X-Request-Id that is safe to pass on; empty when absent or invalid.
    public var requestID: ByteRange = .empty

    @inlinable public init() {}

    /// Body bytes follow the head (chunked, or a Content-Length above 0).
    @inlinable public var hasBody: Bool {
        switch framing {
        case .none, .contentLength(0), .untilClose: return false
        case .contentLength, .chunked: return true
        }
    }
}

/// A strict, re-entrant request head parser (RFC 9112 §2–§7 with the rules of an edge proxy).
///
/// Feed it the bytes received so far, from the start of the message, each time more arrive;
/// it answers `.needMore`, `.complete(head, consumed)` or `.invalid(error)`. Fields go into
/// caller-provided storage so parsing allocates nothing.
public struct RequestHeadParser: Sendable {
    public var limits: HTTPLimits
    @usableFromInline var scanner = HeadScanner()

    @inlinable
    public init(limits: HTTPLimits) {
        self.limits = limits
    }

    /// Forget a previous partial scan (call before parsing the next message).
    @inlinable
    public mutating func reset() { scanner.reset() }

    public mutating func parse(
        _ buffer: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>
    ) -> HeadParseResult<RequestHead> {
        // One empty line before the request line may be ignored (RFC 9112 §2.2): some clients
        // send a CRLF after a POST body.
        var start = 0
        if buffer.count >= 1 && buffer[0] == 0x0D {
            if buffer.count < 2 { return .needMore }
            if buffer[1] == 0x0A { start = 2 }
        }
        // HTTPLimits.maxHeaders holds even when the caller's field storage is larger.
        let fields = fields.count > limits.maxHeaders
            ? UnsafeMutableBufferPointer(rebasing: fields[0..<limits.maxHeaders]) : fields
        // The scan never looks past the limits (the request line's while it is incomplete, then
        // the head's): bytes beyond them must not change the outcome, or the same request would
        // get 400, 414 or 431 depending on how it was split into reads (a 20 KiB target read at
        // once was 431, read in pieces 414; a bare LF past 16 KiB was 400 or 431).
        let lineLimit = start + limits.maxURIBytes + 33
        let headLimit = start + limits.maxHeaderBytes
        // The request line is checked as soon as it ends, before the scan goes on: "GET /" CRLF
        // (HTTP/0.9's form, no version) is a 400 at once rather than a connection left waiting
        // for a head that will never come — and the verdict is the same however the bytes came.
        var requestLine: (head: RequestHead, next: Int)? = nil
        while true {
            let bound = Swift.min(buffer.count, scanner.hasFirstLine ? headLimit : Swift.min(lineLimit, headLimit))
            switch scanner.scan(UnsafeRawBufferPointer(rebasing: buffer[0..<bound]), start: start, stopAtFirstLine: true) {
            case .firstLine(let lineEnd):
                switch parseRequestLine(buffer, start: start, lineEnd: lineEnd) {
                case .success(let parsed): requestLine = parsed
                case .failure(let error): return .invalid(error)
                }
                continue
            case .bareLineFeed:
                return .invalid(HTTPParseError(400, "bare LF"))
            case .needMore:
                if !scanner.hasFirstLine && bound - start > limits.maxURIBytes + 32 {
                    return .invalid(HTTPParseError(414, "request line too long"))
                }
                if bound - start >= limits.maxHeaderBytes {
                    return .invalid(HTTPParseError(431, "request head too large"))
                }
                // The request line ended below the line limit: scan the rest up to the head limit.
                if bound < buffer.count { continue }
                return .needMore
            case .found(let end):
                if end - start > limits.maxHeaderBytes {
                    return .invalid(HTTPParseError(431, "request head too large"))
                }
                switch parseHead(buffer, start: start, end: end, requestLine: requestLine, fields: fields) {
                case .success(let head): return .complete(head, consumed: end)
                case .failure(let error): return .invalid(error)
                }
            }
        }
    }

    @usableFromInline
    func parseHead(
        _ buffer: UnsafeRawBufferPointer, start: Int, end: Int, requestLine: (head: RequestHead, next: Int)?,
        fields: UnsafeMutableBufferPointer<HeaderField>
    ) -> Result<RequestHead, HTTPParseError> {
        // The line was parsed in this call when it ended here; a line that ended in an earlier
        // read was checked then and is parsed again now (the buffer may have moved).
        var (head, index): (RequestHead, Int)
        if let requestLine {
            (head, index) = requestLine
        } else {
            switch parseRequestLine(buffer, start: start, lineEnd: end) {
            case .success(let parsed): (head, index) = parsed
            case .failure(let error): return .failure(error)
            }
        }
        let fieldCount: Int
        switch parseFieldLines(buffer, from: index, to: end - 2, fields: fields, tooManyStatus: 431) {
        case .success(let count): fieldCount = count
        case .failure(let error): return .failure(error)
        }
        head.fieldCount = fieldCount
        if let error = applySemantics(buffer, fields: fields, &head) { return .failure(error) }
        return .success(head)
    }

    /// method SP request-target SP HTTP-version CRLF, from `start`; `lineEnd` is past its LF (or
    /// any later bound). Returns the head so far and the index after the line.
    @usableFromInline
    func parseRequestLine(
        _ buffer: UnsafeRawBufferPointer, start: Int, lineEnd end: Int
    ) -> Result<(head: RequestHead, next: Int), HTTPParseError> {
        var head = RequestHead()
        var index = start

        // method = token, case-sensitive.
        while index < end && ByteClass.token.contains(buffer[index]) { index += 1 }
        if index == start || index >= end || buffer[index] != 0x20 {
            return .failure(HTTPParseError(400, "invalid method"))
        }
        head.methodName = ByteRange(start: start, count: index - start)
        head.method = Self.classifyMethod(buffer, head.methodName)
        if head.method == .connect {
            return .failure(HTTPParseError(501, "CONNECT is not supported"))
        }
        index += 1

        // request-target: visible ASCII, no fragment.
        let targetStart = index
        while index < end {
            let byte = buffer[index]
            if ByteClass.target.contains(byte) { index += 1; continue }
            if byte == 0x23 { return .failure(HTTPParseError(400, "fragment in request target")) }
            break
        }
        if index == targetStart || index >= end || buffer[index] != 0x20 {
            return .failure(HTTPParseError(400, "invalid request target"))
        }
        if index - targetStart > limits.maxURIBytes {
            return .failure(HTTPParseError(414, "request target too long"))
        }
        head.target = ByteRange(start: targetStart, count: index - targetStart)
        index += 1

        // HTTP-version CRLF
        guard index + 10 <= end,
              buffer[index] == 0x48, buffer[index + 1] == 0x54, buffer[index + 2] == 0x54,
              buffer[index + 3] == 0x50, buffer[index + 4] == 0x2F,
              isDigit(buffer[index + 5]), buffer[index + 6] == 0x2E, isDigit(buffer[index + 7]),
              buffer[index + 8] == 0x0D, buffer[index + 9] == 0x0A
        else { return .failure(HTTPParseError(400, "invalid HTTP version")) }
        switch (buffer[index + 5], buffer[index + 7]) {
        case (0x31, 0x31): head.version = .http11
        case (0x31, 0x30): head.version = .http10
        default: return .failure(HTTPParseError(505, "HTTP version not supported"))
        }
        index += 10

        if let error = classifyTarget(buffer, &head) { return .failure(error) }
        return .success((head, index))
    }

    /// origin-form, absolute-form (`http://authority/path`) or `*` (OPTIONS only). Authority-form
    /// is CONNECT's and was refused before.
    @usableFromInline
    func classifyTarget(_ buffer: UnsafeRawBufferPointer, _ head: inout RequestHead) -> HTTPParseError? {
        let target = head.target
        let first = buffer[target.lowerBound]
        if first == 0x2F {  // "/"
            head.path = target
            return nil
        }
        if first == 0x2A && target.count == 1 {  // "*"
            if head.method != .options { return HTTPParseError(400, "asterisk target without OPTIONS") }
            head.path = target
            return nil
        }
        // absolute-form: scheme "://" authority [path-abempty] [ "?" query ]
        var index = target.lowerBound
        let end = target.upperBound
        let schemeStart = index
        while index < end && buffer[index] != 0x3A { index += 1 }
        let scheme = ByteRange(start: schemeStart, count: index - schemeStart)
        guard equalsLowercase(buffer, scheme, "http") || equalsLowercase(buffer, scheme, "https"),
              index + 3 <= end, buffer[index + 1] == 0x2F, buffer[index + 2] == 0x2F
        else { return HTTPParseError(400, "invalid request target") }
        index += 3
        let authorityStart = index
        while index < end && buffer[index] != 0x2F && buffer[index] != 0x3F {
            // userinfo is deprecated and a classic way to confuse what "the host" is.
            guard ByteClass.host.contains(buffer[index]) else {
                return HTTPParseError(400, "invalid authority in request target")
            }
            index += 1
        }
        if index == authorityStart { return HTTPParseError(400, "empty authority in request target") }
        head.authority = ByteRange(start: authorityStart, count: index - authorityStart)
        head.path = ByteRange(start: index, count: end - index)
        return nil
    }

    /// Host, framing, Connection, Upgrade, Expect and X-Request-Id, checked together once every
    /// field is known (order of fields must not change the outcome).
    @usableFromInline
    func applySemantics(
        _ buffer: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>, _ head: inout RequestHead
    ) -> HTTPParseError? {
        var hostSeen = false
        var contentLength: UInt64? = nil
        var transferEncodingSeen = false
        var chunkedCount = 0
        var chunkedIsLast = false
        var connectionClose = false
        var connectionKeepAlive = false
        var connectionUpgrade = false
        var upgradeValue = ByteRange.empty

        for fieldIndex in 0..<head.fieldCount {
            let field = fields[fieldIndex]
            switch field.kind {
            case .host:
                if hostSeen { return HTTPParseError(400, "duplicate Host") }
                hostSeen = true
                if field.value.isEmpty { return HTTPParseError(400, "empty Host") }
                for offset in field.value.lowerBound..<field.value.upperBound
                where !ByteClass.host.contains(buffer[offset]) {
                    return HTTPParseError(400, "invalid Host")
                }
                if head.authority.isEmpty { head.authority = field.value }
            case .contentLength:
                guard let value = parseContentLength(buffer, field.value) else {
                    return HTTPParseError(400, "invalid Content-Length")
                }
                if let previous = contentLength, previous != value {
                    return HTTPParseError(400, "conflicting Content-Length")
                }
                contentLength = value
            case .transferEncoding:
                transferEncodingSeen = true
                var unknownCoding = false
                forEachListElement(buffer, field.value) { coding in
                    if equalsLowercase(buffer, coding, "chunked") {
                        chunkedCount += 1
                        chunkedIsLast = true
                    } else {
                        unknownCoding = true
                        chunkedIsLast = false
                    }
                    return true
                }
                // Only chunked is implemented; a coding after chunked or an empty value is
                // malformed framing rather than an unsupported feature.
                if unknownCoding {
                    if chunkedCount > 0 && !chunkedIsLast { return HTTPParseError(400, "chunked is not the final coding") }
                    return HTTPParseError(501, "transfer coding not implemented")
                }
            case .connection:
                var invalid = false
                forEachListElement(buffer, field.value) { option in
                    if equalsLowercase(buffer, option, "close") { connectionClose = true }
                    else if equalsLowercase(buffer, option, "keep-alive") { connectionKeepAlive = true }
                    else if equalsLowercase(buffer, option, "upgrade") { connectionUpgrade = true }
                    for offset in option.lowerBound..<option.upperBound where !ByteClass.token.contains(buffer[offset]) {
                        invalid = true
                        return false
                    }
                    // Every field this option names is hop-by-hop.
                    for other in 0..<head.fieldCount where equalsIgnoringCase(buffer, fields[other].name, option) {
                        fields[other].listedInConnection = true
                    }
                    return true
                }
                if invalid { return HTTPParseError(400, "invalid Connection option") }
            case .upgrade:
                if !upgradeValue.isEmpty { return HTTPParseError(400, "duplicate Upgrade") }
                upgradeValue = field.value
            case .expect:
                if equalsLowercase(buffer, field.value, "100-continue") {
                    head.expectContinue = true
                } else {
                    return HTTPParseError(417, "unsupported expectation")
                }
            case .xRequestID:
                let value = field.value
                if head.requestID.isEmpty && value.count > 0 && value.count <= 128 {
                    var valid = true
                    for offset in value.lowerBound..<value.upperBound where !ByteClass.requestID.contains(buffer[offset]) {
                        valid = false
                        break
                    }
                    if valid { head.requestID = value }
                }
            default:
                break
            }
        }

        if head.version == .http11 && !hostSeen { return HTTPParseError(400, "missing Host") }
        if transferEncodingSeen {
            if head.version == .http10 { return HTTPParseError(400, "Transfer-Encoding in HTTP/1.0") }
            if contentLength != nil { return HTTPParseError(400, "both Transfer-Encoding and Content-Length") }
            if chunkedCount != 1 || !chunkedIsLast { return HTTPParseError(400, "invalid chunked framing") }
            head.framing = .chunked
        } else if let length = contentLength {
            // Kept even when 0: a POST forwarded without any length may get 411 upstream.
            head.framing = .contentLength(length)
        } else {
            head.framing = .none
        }
        if head.version == .http11 {
            head.keepAlive = !connectionClose
        } else {
            head.keepAlive = connectionKeepAlive && !connectionClose
            head.expectContinue = false  // never a 1xx to an HTTP/1.0 client; body follows anyway
        }
        // RFC 9110 §7.8: an Upgrade received in an HTTP/1.0 request is ignored (never tunnelled).
        // A request with a body is forwarded as a plain request, its Upgrade removed: an upstream
        // that answered 101 before reading the body would take the body's bytes as tunnel data.
        var hasBody = false
        switch head.framing {
        case .chunked: hasBody = true
        case .contentLength(let length): hasBody = length > 0
        default: break
        }
        if head.version == .http11 && connectionUpgrade && !upgradeValue.isEmpty && !hasBody && !Self.mentionsH2C(buffer, upgradeValue) {
            head.upgrade = upgradeValue
        }
        return nil
    }

    @inlinable
    static func mentionsH2C(_ buffer: UnsafeRawBufferPointer, _ value: ByteRange) -> Bool {
        var found = false
        forEachListElement(buffer, value) { element in
            var name = element
            // "h2c/1.0" style: compare the protocol name only.
            for offset in element.lowerBound..<element.upperBound where buffer[offset] == 0x2F {
                name = ByteRange(start: element.lowerBound, count: offset - element.lowerBound)
                break
            }
            if equalsLowercase(buffer, name, "h2c") { found = true; return false }
            return true
        }
        return found
    }

    @inlinable
    static func classifyMethod(_ buffer: UnsafeRawBufferPointer, _ range: ByteRange) -> HTTPMethod {
        @inline(__always) func equals(_ literal: StaticString) -> Bool {
            guard Int(range.count) == literal.utf8CodeUnitCount else { return false }
            for offset in 0..<Int(range.count) where buffer[range.lowerBound + offset] != literal.utf8Start[offset] {
                return false
            }
            return true
        }
        switch range.count {
        case 3:
            if equals("GET") { return .get }
            if equals("PUT") { return .put }
        case 4:
            if equals("HEAD") { return .head }
            if equals("POST") { return .post }
        case 5:
            if equals("PATCH") { return .patch }
            if equals("TRACE") { return .trace }
        case 6:
            if equals("DELETE") { return .delete }
        case 7:
            if equals("OPTIONS") { return .options }
            if equals("CONNECT") { return .connect }
        default: break
        }
        return .other
    }
}
