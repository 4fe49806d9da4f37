// Canonical re-serialisation of heads. The proxy never forwards the received header bytes as a
// block: it writes a request/status line it validated, the end-to-end fields one by one with
// CRLF, exactly one framing field it computed itself, and its own fields last — so a client
// cannot use `Connection` to make the proxy drop what it adds.

/// What the proxy adds to a forwarded request.
public struct ForwardingContext {
    /// The client's address as text (`203.0.113.9`, `2001:db8::1`): becomes X-Forwarded-For.
    public var clientAddress: UnsafeRawBufferPointer
    /// X-Forwarded-Proto.
    public var scheme: StaticString
    /// A fresh request id, used when the client sent no valid X-Request-Id.
    public var generatedRequestID: (UInt64, UInt64)
    /// The Host sent for an HTTP/1.0 request that named none (the upstream server's
    /// `host:port`): an HTTP/1.1 request upstream must carry one.
    public var fallbackHost: UnsafeRawBufferPointer

    @inlinable
    public init(clientAddress: UnsafeRawBufferPointer, scheme: StaticString, generatedRequestID: (UInt64, UInt64),
                fallbackHost: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) {
        self.clientAddress = clientAddress
        self.scheme = scheme
        self.generatedRequestID = generatedRequestID
        self.fallbackHost = fallbackHost
    }
}

public enum RequestHeadWriter {
    /// Writes the head to send upstream. `framing` is the framing the body will be sent with
    /// (the parser's framing; chunked bodies are re-chunked by the proxy).
    /// The trust policy for X-Forwarded-*: cutover is the edge, so values a client sent are
    /// replaced, never appended to.
    public static func write(
        _ head: RequestHead,
        source: UnsafeRawBufferPointer,
        fields: UnsafeMutableBufferPointer<HeaderField>,
        context: ForwardingContext,
        into writer: inout ByteWriter
    ) {
        writer.write(source, head.methodName)
        writer.write(" ")
        if head.path.isEmpty || source[head.path.lowerBound] == 0x3F {  // absolute-form without a path
            writer.write("/")
        }
        writer.write(source, head.path)
        writer.write(" HTTP/1.1\r\nHost: ")
        if head.authority.isEmpty {
            writer.write(context.fallbackHost)
        } else {
            writer.write(source, head.authority)
        }
        writer.write("\r\n")
        let tunnels = !head.upgrade.isEmpty
        for index in 0..<head.fieldCount {
            let field = fields[index]
            if field.listedInConnection || field.kind.isReplacedByProxy || field.kind == .host { continue }
            if field.kind == .upgrade { continue }  // re-added below when the upgrade is tunnelled
            writer.writeField(field, source: source)
        }
        switch head.framing {
        case .contentLength(let length):
            writer.writeContentLength(length)
        case .chunked:
            writer.write("Transfer-Encoding: chunked\r\n")
        case .none, .untilClose:
            break
        }
        if tunnels {
            writer.write("Connection: upgrade\r\nUpgrade: ")
            writer.write(source, head.upgrade)
            writer.write("\r\n")
        }
        writer.write("X-Forwarded-For: ")
        writer.write(context.clientAddress)
        writer.write("\r\nX-Forwarded-Proto: ")
        writer.write(context.scheme)
        if !head.authority.isEmpty {
            writer.write("\r\nX-Forwarded-Host: ")
            writer.write(source, head.authority)
        }
        writer.write("\r\nX-Request-Id: ")
        if head.requestID.isEmpty {
            writer.writeHex16(context.generatedRequestID.0)
            writer.writeHex16(context.generatedRequestID.1)
        } else {
            writer.write(source, head.requestID)
        }
        writer.write("\r\n\r\n")
    }
}

/// How the proxy frames a response body towards the client.
public enum ClientFraming: Sendable, Equatable {
    case none
    case contentLength(UInt64)
    case chunked
    /// The body ends when the proxy closes the client connection (HTTP/1.0 clients, or an
    /// upstream body delimited by close).
    case close
}

public enum ResponseHeadWriter {
    /// Writes the head sent to the client. `contentLengthInfo` forwards a Content-Length of a
    /// bodiless response (HEAD, 304) as the upstream gave it.
    public static func write(
        _ head: ResponseHead,
        source: UnsafeRawBufferPointer,
        fields: UnsafeMutableBufferPointer<HeaderField>,
        framing: ClientFraming,
        keepAlive: Bool,
        clientVersion: HTTPVersion,
        stickyCookie: StickyCookieField? = nil,
        into writer: inout ByteWriter
    ) {
        writer.write("HTTP/1.1 ")
        writer.writeDecimal(UInt64(head.status))
        writer.write(" ")
        writer.write(source, head.reason)
        writer.write("\r\n")
        for index in 0..<head.fieldCount {
            let field = fields[index]
            if field.listedInConnection { continue }
            if field.kind.isResponseFramingOrHopByHop { continue }
            writer.writeField(field, source: source)
        }
        switch framing {
        case .contentLength(let length):
            writer.writeContentLength(length)
        case .chunked:
            writer.write("Transfer-Encoding: chunked\r\n")
        case .none:
            if let length = head.contentLength, head.status != 204, !head.isInformational {
                writer.writeContentLength(length)
            }
        case .close:
            break
        }
        // Added after the upstream's own Set-Cookie fields, never instead of them.
        if let stickyCookie, !head.isInformational { stickyCookie.write(into: &writer) }
        if head.status == 101 {
            writer.write("Connection: upgrade\r\nUpgrade: ")
            writer.write(source, head.upgrade)
            writer.write("\r\n")
        } else if !head.isInformational {
            if !keepAlive {
                writer.write("Connection: close\r\n")
            } else if clientVersion == .http10 {
                writer.write("Connection: keep-alive\r\n")
            }
        }
        writer.write("\r\n")
    }
}

/// Responses the proxy makes itself: short plain-text bodies saying what happened.
public enum LocalResponse {
    public static func write(status: Int, message: StaticString, close: Bool, into writer: inout ByteWriter) {
        writer.write("HTTP/1.1 ")
        writer.writeDecimal(UInt64(status))
        writer.write(" ")
        writer.write(reasonPhrase(status))
        writer.write("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ")
        writer.writeDecimal(UInt64(message.utf8CodeUnitCount + 1))
        writer.write(close ? "\r\nConnection: close\r\n\r\n" : "\r\n\r\n")
        writer.write(message)
        writer.write("\n")
    }

    /// `308 Permanent Redirect` to `https://HOST[:PORT]TARGET` (308 keeps the method and body,
    /// unlike 301). `host` is the request's authority without its port; `port` 443 is left out.
    public static func writeHTTPSRedirect(host: UnsafeRawBufferPointer, port: UInt16, target: UnsafeRawBufferPointer, close: Bool,
                                          into writer: inout ByteWriter) {
        writer.write("HTTP/1.1 308 Permanent Redirect\r\nLocation: https://")
        writer.write(host)
        if port != 443 {
            writer.write(":")
            writer.writeDecimal(UInt64(port))
        }
        writer.write(target)
        writer.write(close ? "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" : "\r\nContent-Length: 0\r\n\r\n")
    }

    /// The host part of an authority (`example.com:8080` → `example.com`, `[::1]:80` → `[::1]`).
    public static func hostOfAuthority(_ authority: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var end = authority.count
        if authority.first == 0x5B {  // [IPv6]
            if let close = authority.firstIndex(of: 0x5D) { end = close + 1 }
        } else if let colon = authority.firstIndex(of: 0x3A) {
            end = colon
        }
        return UnsafeRawBufferPointer(rebasing: authority[0..<end])
    }

    public static func reasonPhrase(_ status: Int) -> StaticString {
        switch status {
        case 100: return "Continue"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 417: return "Expectation Failed"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }
}

extension ByteWriter {
    /// `Name: value` CRLF, as received (name case kept, value already trimmed by the parser).
    @inlinable
    mutating func writeField(_ field: HeaderField, source: UnsafeRawBufferPointer) {
        write(source, field.name)
        write(": ")
        write(source, field.value)
        write("\r\n")
    }

    @inlinable
    mutating func writeContentLength(_ length: UInt64) {
        write("Content-Length: ")
        writeDecimal(length)
        write("\r\n")
    }
}
