import Glibc

/// The sd_notify protocol, spoken directly (no libsystemd): one datagram of `KEY=value` lines
/// to the Unix socket named by `$NOTIFY_SOCKET` — a path, or an abstract name written with a
/// leading `@`. Without the variable (not started by systemd's `Type=notify`) every call does
/// nothing. systemd reads: `READY=1` (started: listening, health known), `RELOADING=1` then
/// `READY=1` around a reload, `STOPPING=1` when a drain begins, `STATUS=…` (shown by
/// `systemctl status`), `MAINPID=…` when another process takes over (a hot upgrade).
public struct ServiceNotify: Sendable {
    public let socketPath: String?

    public init(environment: [String: String]) {
        let path = environment["NOTIFY_SOCKET"]
        socketPath = (path?.isEmpty ?? true) ? nil : path
    }

    public var enabled: Bool { socketPath != nil }

    /// Sends one message (lines joined by newlines). Returns an error text, or nil when sent
    /// (or when there is no socket to send to).
    @discardableResult
    public func send(_ lines: String...) -> String? { send(lines: lines) }

    @discardableResult
    public func send(lines: [String]) -> String? {
        guard let socketPath else { return nil }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "socket: \(Posix.describe(Posix.lastError()))" }
        defer { Glibc.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var name = Array(socketPath.utf8)
        if name.first == UInt8(ascii: "@") { name[0] = 0 }  // the abstract namespace
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard name.count < capacity else { return "NOTIFY_SOCKET is too long" }
        withUnsafeMutableBytes(of: &address.sun_path) { target in
            target.copyBytes(from: name)
            if name.count < target.count { target[name.count] = 0 }
        }
        // An abstract name's length is exact (no terminating NUL counts).
        let length = socklen_t(MemoryLayout<sa_family_t>.size + name.count + (name.first == 0 ? 0 : 1))
        let message = Array(lines.joined(separator: "\n").utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length) }
            }
        }
        return sent < 0 ? "sendto \(socketPath): \(Posix.describe(Posix.lastError()))" : nil
    }
}
