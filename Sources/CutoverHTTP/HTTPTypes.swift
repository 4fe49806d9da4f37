// Value types shared by the request and response codecs. Heads are described by offsets into
// the caller's read buffer (never copied into Strings): the proxy parses and re-serialises in
// place, so a request costs no allocation.

/// A span of bytes inside the buffer a head was parsed from.
public struct ByteRange: Sendable, Equatable {
    public var start: Int32
    public var count: Int32

    @inlinable
    public init(start: Int, count: Int) {
        self.start = Int32(truncatingIfNeeded: start)
        self.count = Int32(truncatingIfNeeded: count)
    }

    public static let empty = ByteRange(start: 0, count: 0)

    @inlinable public var lowerBound: Int { Int(start) }
    @inlinable public var upperBound: Int { Int(start) + Int(count) }
    @inlinable public var isEmpty: Bool { count == 0 }
}

public enum HTTPVersion: UInt8, Sendable {
    case http10
    case http11
}

public enum HTTPMethod: UInt8, Sendable {
    case get, head, post, put, delete, options, trace, patch, connect, other

    /// RFC 9110 §9.2.2. Only these may be retried on another connection automatically.
    @inlinable
    public var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options, .trace: return true
        case .post, .patch, .connect, .other: return false
        }
    }
}

/// Field names the proxy acts on. Everything else is `.other` and forwarded unchanged.
public enum HeaderKind: UInt8, Sendable {
    case other
    case host
    case contentLength
    case transferEncoding
    case connection
    case keepAlive
    case proxyConnection
    case te
    case trailer
    case upgrade
    case expect
    case xForwardedFor
    case xForwardedProto
    case xForwardedHost
    case xRequestID
    /// Read for sticky ids and pins; forwarded unchanged.
    case cookie
    /// The mark of a mirrored copy: only the proxy sets it, a client's is removed.
    case xCutoverMirror
    /// Other fields upstream frameworks read as the client's scheme or address (`Forwarded`,
    /// `X-Real-IP`, `X-Forwarded-Ssl`, `X-Forwarded-Scheme`, `X-Forwarded-Port`,
    /// `Front-End-Https`): cutover is the edge, so a client's are removed, never trusted.
    case spoofableForwarding
    /// A field named `Close`: the name is reserved (RFC 9110 §7.6.1) because it collides with
    /// the `close` connection option. Next to the `Connection: close` the proxy may send, the
    /// next hop would take it for a hop-by-hop field, so it is removed in both directions.
    case close

    /// Fields of an upstream's response that never reach the client as sent: framing and
    /// hop-by-hop (the response writer drops them; the shadow diff ignores them).
    @inlinable
    public var isResponseFramingOrHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .contentLength, .upgrade, .close:
            return true
        default:
            return false
        }
    }

    /// Fields the proxy always removes before forwarding (RFC 9110 §7.6.1) or replaces with
    /// values of its own (framing, X-Forwarded-*, X-Request-Id).
    @inlinable
    public var isReplacedByProxy: Bool {
        switch self {
        case .other, .host, .expect, .cookie: return false
        case .upgrade: return false  // kept only when the upgrade is tunnelled; decided by the writer
        default: return true
        }
    }
}

public struct HeaderField: Sendable {
    public var name: ByteRange
    public var value: ByteRange
    public var kind: HeaderKind
    /// Named by a `Connection` token: hop-by-hop, removed before forwarding.
    public var listedInConnection: Bool

    @inlinable
    public init(name: ByteRange, value: ByteRange, kind: HeaderKind) {
        self.name = name
        self.value = value
        self.kind = kind
        self.listedInConnection = false
    }
}

/// How the body of a message is delimited.
public enum BodyFraming: Sendable, Equatable {
    case none
    case contentLength(UInt64)
    case chunked
    /// Responses only: the body runs until the upstream closes the connection.
    case untilClose
}

/// Bounds the parser enforces; every violation is an error with the status a client must see.
public struct HTTPLimits: Sendable {
    // Stored narrow: every connection carries two parsers holding a copy.
    @usableFromInline var headerBytes: Int32
    @usableFromInline var headers: Int32
    @usableFromInline var uriBytes: Int32

    public init(maxHeaderBytes: Int = 16 * 1024, maxHeaders: Int = 100, maxURIBytes: Int = 8 * 1024) {
        headerBytes = Int32(clamping: maxHeaderBytes)
        headers = Int32(clamping: maxHeaders)
        uriBytes = Int32(clamping: maxURIBytes)
    }

    @inlinable public var maxHeaderBytes: Int {
        get { Int(headerBytes) }
        set { headerBytes = Int32(clamping: newValue) }
    }
    @inlinable public var maxHeaders: Int {
        get { Int(headers) }
        set { headers = Int32(clamping: newValue) }
    }
    @inlinable public var maxURIBytes: Int {
        get { Int(uriBytes) }
        set { uriBytes = Int32(clamping: newValue) }
    }
}

/// Why a message was rejected: the status the client gets and a short reason for logs/tests.
public struct HTTPParseError: Error, Sendable, Equatable {
    public var status: Int
    public var reason: StaticString

    @inlinable
    public init(_ status: Int, _ reason: StaticString) {
        self.status = status
        self.reason = reason
    }

    public static func == (lhs: HTTPParseError, rhs: HTTPParseError) -> Bool {
        lhs.status == rhs.status && lhs.reason.description == rhs.reason.description
    }
}

/// The result of feeding a buffer to a head parser.
public enum HeadParseResult<Head: Sendable>: Sendable {
    /// The head is not complete yet; call again when more bytes arrived.
    case needMore
    /// The head ends at `consumed` (the body, if any, starts there).
    case complete(Head, consumed: Int)
    case invalid(HTTPParseError)
}
