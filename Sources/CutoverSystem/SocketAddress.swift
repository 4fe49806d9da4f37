import Glibc

/// An IPv4 or IPv6 socket address. Built once at configuration time; the data plane only passes
/// it to connect(2).
public struct SocketAddress: Sendable, CustomStringConvertible, Hashable {
    // sockaddr_in6 holds either family; stored by value so copying the table never allocates.
    var storage: sockaddr_in6
    var length: socklen_t

    public var family: Int32 { Int32(storage.sin6_family) }

    init?(storage source: sockaddr_storage) {
        var copy = source
        switch Int32(source.ss_family) {
        case AF_INET:
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        case AF_INET6:
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        default:
            return nil
        }
        storage = sockaddr_in6()
        withUnsafeMutableBytes(of: &storage) { target in
            withUnsafeBytes(of: &copy) { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<Int(length)])) }
        }
    }

    /// Parses a numeric IPv4 or IPv6 address (without brackets).
    public init?(numericHost host: String, port: UInt16) {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = v4
            storage = sockaddr_in6()
            withUnsafeMutableBytes(of: &storage) { target in
                withUnsafeBytes(of: &address) { target.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            storage = sockaddr_in6()
            storage.sin6_family = sa_family_t(AF_INET6)
            storage.sin6_port = port.bigEndian
            storage.sin6_addr = v6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            return
        }
        return nil
    }

    /// Resolves a host name or literal (first result, IPv4 preferred). Blocking: configuration
    /// time only, never on a data-plane thread.
    public static func resolve(host: String, port: UInt16) -> SocketAddress? {
        let literal = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if let numeric = SocketAddress(numericHost: literal, port: port) { return numeric }
        var hints = addrinfo()
        hints.ai_socktype = Int32(Glibc.SOCK_STREAM.rawValue)
        var results: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(literal, nil, &hints, &results) == 0, let first = results else { return nil }
        defer { freeaddrinfo(results) }
        var candidate: SocketAddress? = nil
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            if let address = current.pointee.ai_addr {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(current.pointee.ai_addrlen)))
                }
                if var found = SocketAddress(storage: storage) {
                    found.port = port
                    if found.family == AF_INET { return found }
                    if candidate == nil { candidate = found }
                }
            }
            entry = current.pointee.ai_next
        }
        return candidate
    }

    public var port: UInt16 {
        get { UInt16(bigEndian: storage.sin6_port) }  // sin_port sits at the same offset
        set { storage.sin6_port = newValue.bigEndian }
    }

    func withSockAddr<R, E: Error>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R) throws(E) -> R {
        var copy = storage
        let length = self.length
        return try withUnsafePointer(to: &copy) { pointer throws(E) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address throws(E) in try body(address, length) }
        }
    }

    /// The address without the port, as text (`127.0.0.1`, `::1`).
    public var hostText: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        var copy = storage
        if family == AF_INET {
            withUnsafeBytes(of: &copy) { raw in
                var v4 = raw.load(as: sockaddr_in.self).sin_addr
                _ = inet_ntop(AF_INET, &v4, &buffer, socklen_t(buffer.count))
            }
        } else {
            _ = inet_ntop(AF_INET6, &copy.sin6_addr, &buffer, socklen_t(buffer.count))
        }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String {
        family == AF_INET6 ? "[\(hostText)]:\(port)" : "\(hostText):\(port)"
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.description == rhs.description
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(description) }
}
