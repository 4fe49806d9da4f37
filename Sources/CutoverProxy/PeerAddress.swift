import Glibc

/// A client's IP address kept in binary (17 bytes inline, no heap), formatted as text only when
/// a request is forwarded (X-Forwarded-For). Idle connections stay small.
struct PeerAddress {
    private var bytes: (UInt64, UInt64) = (0, 0)
    private var isIPv6 = false

    init(_ storage: sockaddr_storage) {
        var copy = storage
        withUnsafeBytes(of: &copy) { raw in
            switch Int32(storage.ss_family) {
            case AF_INET:
                let address = raw.load(as: sockaddr_in.self)
                bytes.0 = UInt64(address.sin_addr.s_addr)  // network order: first octet in the low byte
            case AF_INET6:
                let address = raw.load(as: sockaddr_in6.self)
                isIPv6 = true
                withUnsafeMutableBytes(of: &bytes) { target in
                    withUnsafeBytes(of: address.sin6_addr) { target.copyMemory(from: $0) }
                }
            default:
                break
            }
        }
    }

    /// Calls `body` with the address as text (`203.0.113.9`, `2001:db8::1`).
    @inline(__always)
    func withText<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        var scratch: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)  // 48 bytes
        return withUnsafeMutableBytes(of: &scratch) { text in
            let count = isIPv6 ? formatIPv6(into: text) : formatIPv4(into: text)
            return body(UnsafeRawBufferPointer(rebasing: text[0..<count]))
        }
    }

    private func formatIPv4(into text: UnsafeMutableRawBufferPointer) -> Int {
        var count = 0
        for octetIndex in 0..<4 {
            if octetIndex > 0 {
                text[count] = 0x2E
                count += 1
            }
            let octet = UInt8(truncatingIfNeeded: bytes.0 >> UInt64(octetIndex * 8))
            if octet >= 100 {
                text[count] = 0x30 + octet / 100
                count += 1
            }
            if octet >= 10 {
                text[count] = 0x30 + (octet / 10) % 10
                count += 1
            }
            text[count] = 0x30 + octet % 10
            count += 1
        }
        return count
    }

    private func formatIPv6(into text: UnsafeMutableRawBufferPointer) -> Int {
        var address = bytes
        let written = withUnsafeBytes(of: &address) { raw in
            inet_ntop(AF_INET6, raw.baseAddress, text.baseAddress!.assumingMemoryBound(to: CChar.self), socklen_t(text.count))
        }
        guard written != nil else { return 0 }
        return strlen(text.baseAddress!.assumingMemoryBound(to: CChar.self))
    }
}
