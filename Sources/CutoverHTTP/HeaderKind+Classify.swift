extension HeaderKind {
    /// Classifies a field name, case-insensitively, without building a String: dispatch on the
    /// length first so most names are rejected after one comparison.
    @inlinable
    public static func classify(_ buffer: UnsafeRawBufferPointer, _ range: ByteRange) -> HeaderKind {
        let base = range.lowerBound
        @inline(__always) func matches(_ literal: StaticString) -> Bool {
            let bytes = literal.utf8Start
            for index in 0..<literal.utf8CodeUnitCount where asciiLower(buffer[base + index]) != bytes[index] {
                return false
            }
            return true
        }
        switch range.count {
        case 2: return matches("te") ? .te : .other
        case 4: return matches("host") ? .host : .other
        case 5: return matches("close") ? .close : .other
        case 6:
            if matches("cookie") { return .cookie }
            return matches("expect") ? .expect : .other
        case 7:
            if matches("upgrade") { return .upgrade }
            return matches("trailer") ? .trailer : .other
        case 9:
            if matches("forwarded") { return .spoofableForwarding }
            return matches("x-real-ip") ? .spoofableForwarding : .other
        case 10:
            if matches("connection") { return .connection }
            return matches("keep-alive") ? .keepAlive : .other
        case 12: return matches("x-request-id") ? .xRequestID : .other
        case 14: return matches("content-length") ? .contentLength : .other
        case 15:
            if matches("x-forwarded-for") { return .xForwardedFor }
            if matches("x-forwarded-ssl") || matches("front-end-https") { return .spoofableForwarding }
            return .other
        case 16:
            if matches("proxy-connection") { return .proxyConnection }
            if matches("x-forwarded-host") { return .xForwardedHost }
            if matches("x-cutover-mirror") { return .xCutoverMirror }
            return matches("x-forwarded-port") ? .spoofableForwarding : .other
        case 17:
            if matches("transfer-encoding") { return .transferEncoding }
            return matches("x-forwarded-proto") ? .xForwardedProto : .other
        case 18: return matches("x-forwarded-scheme") ? .spoofableForwarding : .other
        default: return .other
        }
    }
}
