/// Reading a request's cookies (RFC 6265 §4.2.1 and §5.4) without building strings: the proxy
/// only ever needs one cookie's value (a sticky id, a pinned tenant), so it scans the Cookie
/// fields for that name and answers the value's range in the head's bytes.
///
/// The scan is forgiving where browsers are and strict where it matters: pairs are split on
/// `;` with optional whitespace, a pair that is not `name=value` with a token name and a
/// cookie-value (cookie-octets, optionally in double quotes) is skipped, not fatal, and a
/// value that is malformed is treated as absent. Several Cookie fields are read in order.
public enum CookieScanner {
    /// Longest cookie value the proxy acts on; longer ones are treated as absent.
    public static let maxValueBytes = 256

    /// The value of the first well-formed cookie named `name` (exact, case-sensitive) in the
    /// request's Cookie fields, as a range of `source` (quotes removed).
    @inlinable
    public static func value(
        named name: UnsafeRawBufferPointer, source: UnsafeRawBufferPointer,
        fields: UnsafeMutableBufferPointer<HeaderField>, count: Int
    ) -> ByteRange? {
        for index in 0..<count where fields[index].kind == .cookie {
            if let found = value(named: name, in: source, field: fields[index].value) { return found }
        }
        return nil
    }

    /// The value of the first well-formed cookie named `name` in one Cookie field value.
    @inlinable
    public static func value(named name: UnsafeRawBufferPointer, in source: UnsafeRawBufferPointer, field: ByteRange) -> ByteRange? {
        var index = field.lowerBound
        let end = field.upperBound
        while index < end {
            // Skip separators and whitespace before a pair.
            while index < end && (source[index] == 0x3B || source[index] == 0x20 || source[index] == 0x09) { index += 1 }
            let pairStart = index
            while index < end && source[index] != 0x3B { index += 1 }
            var pairEnd = index
            while pairEnd > pairStart && (source[pairEnd - 1] == 0x20 || source[pairEnd - 1] == 0x09) { pairEnd -= 1 }
            guard pairEnd > pairStart else { continue }
            var equals = pairStart
            while equals < pairEnd && source[equals] != 0x3D { equals += 1 }
            guard equals < pairEnd, equals - pairStart == name.count else { continue }
            var sameName = true
            for offset in 0..<name.count where source[pairStart + offset] != name[offset] {
                sameName = false
                break
            }
            guard sameName else { continue }
            var valueStart = equals + 1
            var valueEnd = pairEnd
            if valueEnd - valueStart >= 2 && source[valueStart] == 0x22 && source[valueEnd - 1] == 0x22 {
                valueStart += 1
                valueEnd -= 1
            }
            guard valueEnd > valueStart, valueEnd - valueStart <= maxValueBytes else { continue }
            var valid = true
            for offset in valueStart..<valueEnd where !isCookieOctet(source[offset]) {
                valid = false
                break
            }
            if valid { return ByteRange(start: valueStart, count: valueEnd - valueStart) }
        }
        return nil
    }

    /// cookie-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
    @inlinable @inline(__always)
    public static func isCookieOctet(_ byte: UInt8) -> Bool {
        byte >= 0x21 && byte <= 0x7E && byte != 0x22 && byte != 0x2C && byte != 0x3B && byte != 0x5C
    }
}

/// The first value of a request field by name (lowercase ASCII, compared case-insensitively):
/// a sticky or pinned header. Repeated fields: the first wins.
public enum RequestFields {
    @inlinable
    public static func firstValue(
        named lowercaseName: UnsafeRawBufferPointer, source: UnsafeRawBufferPointer,
        fields: UnsafeMutableBufferPointer<HeaderField>, count: Int
    ) -> ByteRange? {
        for index in 0..<count {
            let field = fields[index]
            guard field.name.count == lowercaseName.count else { continue }
            var same = true
            for offset in 0..<lowercaseName.count where asciiLower(source[field.name.lowerBound + offset]) != lowercaseName[offset] {
                same = false
                break
            }
            if same { return field.value }
        }
        return nil
    }
}

/// A sticky cookie to set on the response: the id a request without one was routed by.
public struct StickyCookieField {
    public var name: UnsafeRawBufferPointer
    public var id: UInt64
    public var maxAgeSeconds: Int

    @inlinable
    public init(name: UnsafeRawBufferPointer, id: UInt64, maxAgeSeconds: Int) {
        self.name = name
        self.id = id
        self.maxAgeSeconds = maxAgeSeconds
    }

    /// The id as the cookie carries it: 16 lowercase hex digits (64 random bits: enough to place
    /// users evenly and never mistake one for another in practice).
    @inlinable
    public func write(into writer: inout ByteWriter) {
        writer.write("Set-Cookie: ")
        writer.write(name)
        writer.write("=")
        writer.writeHex16(id)
        writer.write("; Path=/; HttpOnly; SameSite=Lax; Max-Age=")
        writer.writeDecimal(UInt64(maxAgeSeconds))
        writer.write("\r\n")
    }
}
