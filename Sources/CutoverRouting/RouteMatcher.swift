/// Finds the app of a request by host and path prefix. Built once per published table (off
/// the request path); matching reads flat byte arrays and allocates nothing.
public struct RouteMatcher: Sendable {
    /// Host names and path prefixes, lowercased, back to back.
    private let names: [UInt8]
    private let routes: [Route]

    private struct Route {
        var hostOffset: Int
        var hostLength: Int  // -1 for the wildcard host
        var prefixOffset: Int
        var prefixLength: Int
        var app: Int
    }

    public init(apps: [AppRoute]) {
        var names: [UInt8] = []
        var routes: [Route] = []
        for (index, app) in apps.enumerated() {
            let prefix = Array((app.pathPrefix ?? "").utf8)
            for host in app.hosts {
                let hostBytes = Array(host.utf8)
                let hostOffset = names.count
                names.append(contentsOf: hostBytes)
                let prefixOffset = names.count
                names.append(contentsOf: prefix)
                routes.append(Route(
                    hostOffset: hostOffset, hostLength: host == "*" ? -1 : hostBytes.count,
                    prefixOffset: prefixOffset, prefixLength: prefix.count, app: index))
            }
        }
        // Exact hosts before the wildcard, longer prefixes first: the first match is the most
        // specific host, then the longest prefix.
        routes.sort { a, b in
            if (a.hostLength < 0) != (b.hostLength < 0) { return a.hostLength >= 0 }
            return a.prefixLength > b.prefixLength
        }
        self.names = names
        self.routes = routes
    }

    /// The app for a request: `authority` is the Host (port and one trailing dot ignored,
    /// case-insensitive), `path` the origin-form target. Routes are tried most specific first:
    /// apps naming this host by longest prefix, then wildcard apps by longest prefix (so a
    /// host's paths that none of its apps claim still reach a `host *` app).
    public func match(authority: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer) -> Int? {
        let host = Self.hostPart(authority)
        return names.withUnsafeBufferPointer { names -> Int? in
            for route in routes {
                if route.hostLength >= 0 {
                    guard route.hostLength == host.count else { continue }
                    var equal = true
                    for offset in 0..<host.count where asciiLowercase(host[offset]) != names[route.hostOffset + offset] {
                        equal = false
                        break
                    }
                    guard equal else { continue }
                }
                if Self.hasPrefix(path, names, route.prefixOffset, route.prefixLength) { return route.app }
            }
            return nil
        }
    }

    private static func hasPrefix(_ path: UnsafeRawBufferPointer, _ names: UnsafeBufferPointer<UInt8>, _ offset: Int, _ length: Int) -> Bool {
        guard path.count >= length else { return false }
        for index in 0..<length where path[index] != names[offset + index] { return false }
        return true
    }

    private static func hostPart(_ authority: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var end = authority.count
        if authority.first == 0x5B {  // "[v6]:port"
            if let close = authority.firstIndex(of: 0x5D) { end = close + 1 }
        } else if let colon = authority.firstIndex(of: 0x3A) {
            end = colon
        }
        if end > 0 && authority[end - 1] == 0x2E { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: authority[0..<end])
    }
}

@inline(__always)
private func asciiLowercase(_ byte: UInt8) -> UInt8 {
    (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte
}

