// Character classes of RFC 9110/9112 as 128-bit masks: a membership test is two shifts and
// no memory access, which matters because the head parser runs over every byte of every request.

@usableFromInline
struct ByteClass: Sendable {
    @usableFromInline let low: UInt64   // bytes 0..63
    @usableFromInline let high: UInt64  // bytes 64..127

    @inlinable
    init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    @inlinable @inline(__always)
    func contains(_ byte: UInt8) -> Bool {
        if byte < 64 { return (low >> UInt64(byte)) & 1 == 1 }
        if byte < 128 { return (high >> UInt64(byte &- 64)) & 1 == 1 }
        return false
    }

    /// `tchar` (RFC 9110 §5.6.2): method names, field names, coding names.
    @usableFromInline static let token = ByteClass(low: 0x03ff_6cfa_0000_0000, high: 0x57ff_ffff_c7ff_fffe)
    /// Visible ASCII except `#`: what a request target may contain (a fragment is never sent).
    @usableFromInline static let target = ByteClass(low: 0xffff_fff6_0000_0000, high: 0x7fff_ffff_ffff_ffff)
    /// reg-name / IP-literal / port characters of a Host value; no comma, so a list is rejected.
    @usableFromInline static let host = ByteClass(low: 0x2fff_6ff2_0000_0000, high: 0x47ff_fffe_afff_fffe)
    /// Characters accepted in a client's X-Request-Id (letters, digits, `-._:`).
    @usableFromInline static let requestID = ByteClass(low: 0x07ff_6000_0000_0000, high: 0x07ff_fffe_87ff_fffe)
}

@inlinable @inline(__always)
func asciiLower(_ byte: UInt8) -> UInt8 {
    (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte
}

@inlinable @inline(__always)
func isDigit(_ byte: UInt8) -> Bool { byte &- 0x30 < 10 }

@inlinable @inline(__always)
func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case 0x30...0x39: return byte &- 0x30
    case 0x41...0x46: return byte &- 0x41 &+ 10
    case 0x61...0x66: return byte &- 0x61 &+ 10
    default: return nil
    }
}

/// Field-value bytes (RFC 9110 §5.5): VCHAR, obs-text, SP and HTAB. No CR, LF, NUL or other
/// controls: those are how smuggling payloads hide inside an otherwise valid line.
@inlinable @inline(__always)
func isFieldValueByte(_ byte: UInt8) -> Bool {
    byte >= 0x20 ? byte != 0x7F : byte == 0x09
}
