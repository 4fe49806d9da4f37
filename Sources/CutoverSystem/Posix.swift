import CCutoverSys
import Glibc

// The only place that talks to the kernel and reads errno. Each wrapper retries EINTR, turns
// EAGAIN into `.wouldBlock`, traps on EBADF/EFAULT (those are cutover's bugs, not the peer's)
// and throws `IOError` for everything else. Typed throws: no allocation on the error path.

extension IOError {
    /// The process itself ran out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM):
    /// nothing about the peer.
    public var isLocalShortage: Bool {
        errnoCode == EMFILE || errnoCode == ENFILE || errnoCode == ENOBUFS || errnoCode == ENOMEM
    }
}

public struct IOError: Error, CustomStringConvertible, Sendable {
    public let errnoCode: Int32
    public let function: StaticString

    public init(errnoCode: Int32, function: StaticString) {
        self.errnoCode = errnoCode
        self.function = function
    }

    public var description: String {
        "\(function) failed: \(String(cString: strerror(errnoCode))) (errno \(errnoCode))"
    }
}

public enum IOResult<Value> {
    case processed(Value)
    case wouldBlock
}

@usableFromInline
package enum Posix {
    // Inlinable: every request reads and writes through these from other targets, and a call
    // per syscall would show in the profile.
    @inlinable @inline(__always)
    static func check<T: FixedWidthInteger>(
        _ function: StaticString, _ body: () -> T
    ) throws(IOError) -> IOResult<T> {
        while true {
            let result = body()
            if result >= 0 { return .processed(result) }
            let code = cutover_errno()
            switch code {
            case EINTR: continue
            case EAGAIN: return .wouldBlock
            case EBADF, EFAULT: fatalError("\(function): \(code) — a descriptor or pointer bug in cutover")
            default: throw IOError(errnoCode: code, function: function)
            }
        }
    }

    @inlinable @inline(__always)
    package static func read(_ fd: Int32, _ pointer: UnsafeMutableRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        try check("read") { Glibc.read(fd, pointer, count) }
    }

    @inlinable @inline(__always)
    package static func write(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        try check("write") { Glibc.write(fd, pointer, count) }
    }

    package static func accept(_ fd: Int32) throws(IOError) -> IOResult<(Int32, sockaddr_storage)> {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try withUnsafeMutablePointer(to: &storage) { pointer throws(IOError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address throws(IOError) in
                try check("accept4") {
                    cutover_accept4(fd, address, &length, Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue))
                }
            }
        }
        switch result {
        case .processed(let client): return .processed((client, storage))
        case .wouldBlock: return .wouldBlock
        }
    }

    /// close(2) is never retried on EINTR: on Linux the descriptor is gone either way.
    package static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// A non-blocking TCP socket (every socket cutover opens lives on an event loop).
    package static func socket(family: Int32) throws(IOError) -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue)
        switch try check("socket", { Glibc.socket(family, type, 0) }) {
        case .processed(let fd): return fd
        case .wouldBlock: throw IOError(errnoCode: EAGAIN, function: "socket")
        }
    }

    package static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws(IOError) {
        var value = value
        _ = try check("setsockopt") {
            setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// SO_LINGER with a zero timeout: the close that follows sends RST and the kernel drops
    /// whatever is still queued for the peer (nginx's `reset_timedout_connection`). Used when a
    /// client timed out: its unread bytes must not sit in kernel memory after we are done.
    public static func resetOnClose(_ fd: Int32) {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }

    package static func bind(_ fd: Int32, _ address: SocketAddress) throws(IOError) {
        _ = try address.withSockAddr { pointer, length throws(IOError) in
            try check("bind") { Glibc.bind(fd, pointer, length) }
        }
    }

    package static func listen(_ fd: Int32, backlog: Int32) throws(IOError) {
        _ = try check("listen") { Glibc.listen(fd, backlog) }
    }

    /// Starts a non-blocking connect. `true` when it completed at once, `false` when in progress.
    package static func connect(_ fd: Int32, _ address: SocketAddress) throws(IOError) -> Bool {
        let result = address.withSockAddr { pointer, length in Glibc.connect(fd, pointer, length) }
        if result == 0 { return true }
        let code = cutover_errno()
        if code == EINPROGRESS || code == EINTR { return false }
        throw IOError(errnoCode: code, function: "connect")
    }

    /// The pending error of a socket (why a non-blocking connect failed). Off the hot path.
    package static func socketError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) != 0 { return cutover_errno() }
        return value
    }

    package static func localAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? SocketAddress(storage: storage) : nil
    }

    /// O_NONBLOCK on a descriptor created blocking (a listener handed to an event loop).
    package static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    /// shutdown(SHUT_RDWR): wakes a thread blocked in accept or recv on `fd`.
    public static func shutdownBoth(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    package static func shutdownWrite(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }
}

@usableFromInline
package enum Epoll {
    package static let readable = UInt32(EPOLLIN.rawValue)
    package static let writable = UInt32(EPOLLOUT.rawValue)
    package static let peerHangup = UInt32(EPOLLRDHUP.rawValue)
    package static let hangup = UInt32(EPOLLHUP.rawValue)
    package static let error = UInt32(EPOLLERR.rawValue)
    package static let edgeTriggered = UInt32(EPOLLET.rawValue)

    package static func create() throws(IOError) -> Int32 {
        switch try Posix.check("epoll_create1", { epoll_create1(Int32(EPOLL_CLOEXEC)) }) {
        case .processed(let fd): return fd
        case .wouldBlock: throw IOError(errnoCode: EAGAIN, function: "epoll_create1")
        }
    }

    package static func add(_ epollFD: Int32, fd: Int32, events: UInt32, token: UInt64) throws(IOError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = try Posix.check("epoll_ctl") { epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) }
    }

    @inline(__always)
    /// Removes `fd` from the interest list. Needed before closing a descriptor whose open file
    /// another process shares (a listener handed over): closing alone would leave it
    /// registered, since epoll follows the open file, not the descriptor.
    package static func remove(_ epollFD: Int32, fd: Int32) {
        var event = epoll_event()
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, &event)
    }

    package static func wait(_ epollFD: Int32, _ events: UnsafeMutablePointer<epoll_event>, _ capacity: Int32, timeoutMs: Int32) throws(IOError) -> Int {
        switch try Posix.check("epoll_wait", { epoll_wait(epollFD, events, capacity, timeoutMs) }) {
        case .processed(let count): return Int(count)
        case .wouldBlock: return 0
        }
    }
}

/// A timer descriptor on the monotonic clock (the load generator's nanosecond schedule): armed
/// for an absolute time, readable when it passes.
package enum TimerFD {
    package static func create() throws(IOError) -> Int32 {
        switch try Posix.check("timerfd_create", { timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC)) }) {
        case .processed(let fd): return fd
        case .wouldBlock: throw IOError(errnoCode: EAGAIN, function: "timerfd_create")
        }
    }

    /// Fires once at `nanoseconds` of the monotonic clock (at once when already past).
    package static func arm(_ fd: Int32, atNanoseconds nanoseconds: Int64) {
        let due = max(1, nanoseconds)
        var spec = itimerspec(it_interval: timespec(tv_sec: 0, tv_nsec: 0),
                              it_value: timespec(tv_sec: Int(due / 1_000_000_000), tv_nsec: Int(due % 1_000_000_000)))
        _ = timerfd_settime(fd, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    /// Takes the expiry count so the next expiry is reported again.
    package static func drain(_ fd: Int32) {
        var expirations: UInt64 = 0
        _ = Glibc.read(fd, &expirations, 8)
    }
}

package enum EventFD {
    package static func create() throws(IOError) -> Int32 {
        switch try Posix.check("eventfd", { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }) {
        case .processed(let fd): return fd
        case .wouldBlock: throw IOError(errnoCode: EAGAIN, function: "eventfd")
        }
    }

    package static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    package static func drain(_ fd: Int32) {
        var value: UInt64 = 0
        _ = Glibc.read(fd, &value, 8)
    }
}

// MARK: Blocking sockets and files of the control plane

extension Posix {
    /// The errno of the call that just failed, for control-plane code that reports it.
    public static func lastError() -> Int32 { cutover_errno() }

    /// `strerror` text for an errno value.
    public static func describe(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// recv(2) on a blocking socket with SO_RCVTIMEO: `.wouldBlock` when the timeout passed,
    /// `.processed(0)` at end of stream.
    package static func receive(_ fd: Int32, _ pointer: UnsafeMutableRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        try check("recv") { Glibc.recv(fd, pointer, count, 0) }
    }

    /// send(2) without SIGPIPE; `.wouldBlock` when SO_SNDTIMEO passed.
    package static func sendNoSignal(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        try check("send") { Glibc.send(fd, pointer, count, Int32(MSG_NOSIGNAL)) }
    }

    /// Connects a Unix stream socket to `path`. Returns the descriptor or the error.
    public static func connectUnix(_ path: String) -> Result<Int32, IOError> {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(IOError(errnoCode: cutover_errno(), function: "socket")) }
        let connected = withUnixAddress(path) { Glibc.connect(fd, $0, $1) }
        guard connected == 0 else {
            let code = cutover_errno()
            Glibc.close(fd)
            return .failure(IOError(errnoCode: code, function: "connect"))
        }
        return .success(fd)
    }

    /// A `sockaddr_un` for `path` (at most 107 bytes; longer paths are cut), for bind and connect.
    public static func withUnixAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { target in
            let bytes = Array(path.utf8.prefix(target.count - 1))
            target.copyBytes(from: bytes)
            target[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A socket is readable now (poll with no wait): a listener with a connection waiting, or
    /// a connection with bytes (or an end) not read yet. Asked only at `max_connections`,
    /// before closing an idle connection to make room.
    public static func isReadable(_ fd: Int32) -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 1 && descriptor.revents & Int16(POLLIN) != 0
    }

    /// True when some socket — of this process or another — is bound to `address` and not
    /// just lingering: a probe bound with SO_REUSEADDR but without SO_REUSEPORT gets
    /// EADDRINUSE. Listeners with SO_REUSEPORT (ours) would otherwise share the port with a
    /// second process silently, and the kernel would split clients between two routing tables.
    public static func addressInUse(_ address: SocketAddress) -> Bool {
        guard let fd = try? Posix.socket(family: address.family) else { return false }
        defer { Posix.close(fd) }
        try? Posix.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
        if address.family == AF_INET6 { try? Posix.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
        do {
            try Posix.bind(fd, address)
            return false
        } catch {
            return error.errnoCode == EADDRINUSE
        }
    }

    /// The kernel's cap on a listen backlog (`net.core.somaxconn`), asked for in full: a burst
    /// of connections waits in the kernel instead of being refused. 4096 if unreadable.
    public static let listenBacklog: Int32 = {
        guard let bytes = try? FileIO.readWhole("/proc/sys/net/core/somaxconn", maxBytes: 32),
              let value = Int32(String(decoding: bytes.prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)) else { return 4096 }
        return Swift.max(128, Swift.min(value, 65_535))
    }()

    /// Opens a listening socket on `address` with SO_REUSEPORT, its backlog `listenBacklog`.
    public static func openListener(_ address: SocketAddress, backlog: Int32 = Posix.listenBacklog) throws(IOError) -> Int32 {
        let fd = try Posix.socket(family: address.family)
        do {
            try Posix.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            try Posix.setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1)
            if address.family == AF_INET6 { try Posix.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            try Posix.bind(fd, address)
            try Posix.listen(fd, backlog: backlog)
            return fd
        } catch {
            Posix.close(fd)
            throw error
        }
    }
}
