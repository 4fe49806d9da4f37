// Progressive delivery settings of an app: how a user keeps their color while the candidate's
// weight moves (sticky), and which requests go to a color whatever the weights (pins).

/// What keeps a user on one color for a whole release. The user's key is hashed with the
/// release salt into one of 10,000 buckets; the candidate takes the lowest buckets, so raising
/// its weight only ever moves users onto it, and lowering it only ever moves them back.
public enum StickyRule: Sendable, Equatable, CustomStringConvertible {
    /// A choice per request (evenly spread, exact shares).
    case none
    /// A cookie the proxy sets when a request has none; `maxAgeSeconds` is its Max-Age.
    case cookie(name: String, maxAgeSeconds: Int)
    /// A request header (lowercased name) the client sends, such as a user or session id.
    /// A request without it is placed per request.
    case header(name: String)
    /// The client's address.
    case clientAddress

    /// Max-Age of a sticky cookie when the config names none: one day outlives any wave.
    public static let defaultCookieMaxAgeSeconds = 86_400

    /// As written in the config (`cookie cutover_id max_age 86400s`).
    public var description: String {
        switch self {
        case .none: return "none"
        case .cookie(let name, let maxAge): return "cookie \(name) max_age \(maxAge)s"
        case .header(let name): return "header \(name)"
        case .clientAddress: return "ip"
        }
    }
}

/// Where a pin reads the value it matches.
public enum PinSource: String, Sendable, Equatable, Hashable, CaseIterable {
    case header, cookie
}

/// `pin header X-Tenant pilot-1,pilot-2 green`: requests whose header (or cookie) has one of
/// `values` go to `color`, whatever the weights.
public struct PinRule: Sendable, Equatable, Hashable {
    public var source: PinSource
    /// Header names are stored lowercased (they are case-insensitive); cookie names as given.
    public var name: String
    public var values: [String]
    public var color: Color
    /// Config line (0: added at run time).
    public var line: Int

    public init(source: PinSource, name: String, values: [String], color: Color, line: Int = 0) {
        self.source = source
        self.name = source == .header ? name.lowercased() : name
        self.values = values
        self.color = color
        self.line = line
    }

    /// At most this many pinned values per app (config and run time together).
    public static let maxValuesPerApp = 10_000
    /// Longest pinned value, in bytes.
    public static let maxValueBytes = 256

    /// A value a pin can match: visible ASCII without `,` (the list separator), `;` and `"`
    /// (cookie syntax), 1…256 bytes.
    public static func isValidValue<S: StringProtocol>(_ value: S) -> Bool {
        let bytes = value.utf8
        return !bytes.isEmpty && bytes.count <= maxValueBytes
            && bytes.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: ";") && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
    }

    /// An HTTP token (RFC 9110 §5.6.2): a header or cookie name.
    public static func isToken<S: StringProtocol>(_ name: S) -> Bool {
        let bytes = name.utf8
        return !bytes.isEmpty && bytes.count <= 128 && bytes.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}

/// `mirror PERCENT` and its companions in an app block: copies of requests sent to the
/// candidate, whose responses are compared with the primary's (the shadow diff).
public struct MirrorSettings: Sendable, Equatable {
    /// Share of eligible requests copied, in basis points (0: off).
    public var basisPoints: Int = 0
    /// Methods that are copied (uppercase); a copy of a non-idempotent request would act twice.
    public var methods: [String] = ["GET", "HEAD", "OPTIONS"]
    /// Larger request bodies are not copied (counted as skipped).
    public var maxBody: Int = 64 * 1024
    /// Copies in flight per worker loop; over it a copy is dropped (counted).
    public var maxInflight: Int = 100
    /// Send the same request to a second stable server too: differences between two stable
    /// servers are noise, not the candidate's doing.
    public var noise: Bool = false
    /// Header names (lowercased) left out of every comparison.
    public var ignoreHeaders: [String] = ["date"]

    public init() {}
}
