import CutoverConfig
import CutoverProxy
import CutoverRouting
import CutoverSystem
import Foundation
import Glibc
import XCTest

/// An app as a test declares it: names of hosts, an optional path prefix, upstream ports.
struct TestApp {
    var name: String
    var hosts: [String] = ["*"]
    var path: String? = nil
    var blue: [UInt16]
    var green: [UInt16]
}

/// Starts a real `ProxyServer` on 127.0.0.1:0 with a generated config, in this process.
final class ProxyHarness: @unchecked Sendable {
    let server: ProxyServer
    let publisher: RoutingPublisher
    let config: Config
    let port: UInt16

    init(apps: [TestApp], workers: Int = 2, extra: String = "", initial: Color = .blue) throws {
        var text = "listen 127.0.0.1:0\nworkers \(workers)\ninitial_color \(initial.rawValue)\n\(extra)\n"
        for app in apps {
            text += "app \(app.name) {\n    host \(app.hosts.joined(separator: " "))\n"
            if let path = app.path { text += "    path \(path)\n" }
            text += "    blue \(app.blue.map { "127.0.0.1:\($0)" }.joined(separator: " "))\n"
            text += "    green \(app.green.map { "127.0.0.1:\($0)" }.joined(separator: " "))\n}\n"
        }
        config = try ConfigParser.parse(text, path: "<test>")
        let table = try RoutingTable(config: config, activeColor: initial, registry: ServerRegistry())
        publisher = RoutingPublisher(table)
        server = ProxyServer(config: config, publisher: publisher, logger: Logger(minimumLevel: .error))
        try server.start()
        port = server.listenAddresses[0].port
    }

    func client(timeout: Double = 10) throws -> RawHTTPClient {
        try RawHTTPClient(port: port, timeout: timeout)
    }

    func stop() { server.stop() }
}

/// A TCP port on 127.0.0.1 that refuses connections for as long as this value lives: a socket
/// bound to it and never listening holds it, so no other test can take it meanwhile (unlike a
/// port bound, closed and hoped to stay free).
final class RefusingPort: @unchecked Sendable {
    let port: UInt16
    private let fd: Int32

    init() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length)
                return getsockname(fd, pointer, &length)
            }
        }
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(fd) }
}

/// Deterministic bytes for body round trips.
func patternBytes(_ count: Int, seed: UInt8 = 7) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var state = UInt32(seed) &* 2_654_435_761
    for index in 0..<count {
        state = state &* 1_103_515_245 &+ 12_345
        bytes[index] = UInt8(truncatingIfNeeded: state >> 16)
    }
    return bytes
}
