// A blocking, thread-per-connection HTTP/1.1 origin server for integration tests.
//
// Deliberately simple: one accept thread plus one thread per connection, plain blocking
// sockets. It never shares code with the proxy under test, so a bug in the proxy's codec
// cannot be masked by the same bug on the upstream side.

import CutoverConfig
import Foundation
import Glibc

// MARK: - Request

/// One request as the upstream received it.
struct TestRequest: Sendable, HTTPMessageFields {
    var method: String
    var target: String
    var version: String
    var headers: [(name: String, value: String)]
    /// Decoded body (chunked coding removed). Empty while `expectsContinue` is true and the
    /// handler has not called `TestUpstreamConnection.readBody(for:)` yet.
    var body: [UInt8]
    /// Request line and header block exactly as received, including the final CRLFCRLF.
    var rawHead: [UInt8]
    /// The request carried `Expect: 100-continue` and a body: the body is left unread so the
    /// handler can decide whether to send `100 Continue` first.
    var expectsContinue: Bool = false
    /// Index into `TestUpstream.requests`; lets `readBody(for:)` update the recorded copy.
    var sequence: Int = -1
}

enum TestUpstreamError: Error {
    case socket(String)
}

/// How the body of a request is delimited.
private enum UpstreamBodyFraming: Equatable {
    case none
    case length(Int)
    case chunked
}

// MARK: - Connection

/// One accepted connection, handed to the handler together with each request.
/// The handler runs on this connection's own thread; only `stop()` touches it from outside,
/// which is why the fd is guarded by a lock.
final class TestUpstreamConnection: @unchecked Sendable {
    let id: Int
    private let lock = NSLock()
    private var fd: Int32                  // -1 once closed (guarded by lock)
    private var writeClosed = false        // close() half-closed us; the serve loop finishes the job
    private var _keepAlive = true
    private var pending: (framing: UpstreamBodyFraming, sequence: Int)?
    fileprivate var onBodyRead: (@Sendable (Int, [UInt8]) -> Void)?

    // Receive buffer; only used from the connection thread (the handler runs on it).
    private var buffer: [UInt8] = []
    private var start = 0
    private var scratch = [UInt8](repeating: 0, count: 256 * 1024)

    fileprivate init(fd: Int32, id: Int) {
        self.fd = fd
        self.id = id
    }

    /// Defaults to HTTP keep-alive semantics of the current request; set false to close the
    /// connection after the handler returns.
    var keepAlive: Bool {
        get { lock.withLock { _keepAlive } }
        set { lock.withLock { _keepAlive = newValue } }
    }

    /// True after close() or reset() (or after stop()).
    var isClosed: Bool { lock.withLock { fd < 0 || writeClosed } }

    private var currentFD: Int32 { lock.withLock { fd } }

    // MARK: Writing

    /// Writes all bytes; failures (peer gone) are swallowed and just disable keep-alive,
    /// because tests often make the upstream talk to a proxy that already gave up.
    func write(_ bytes: [UInt8]) {
        let fd = currentFD
        guard fd >= 0, !bytes.isEmpty else { return }
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                // MSG_NOSIGNAL: a peer that closed must not kill the test process with SIGPIPE.
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 { offset += n; continue }
                if n < 0 && errno == EINTR { continue }
                return false
            }
            return true
        }
        if !ok { keepAlive = false }
    }

    func write(_ s: String) { write(Array(s.utf8)) }

    /// TCP_CORK: hold written bytes until uncorked or until close() sends them together with the
    /// FIN, so the peer receives an answer and its end of stream in one segment.
    func setCork(_ on: Bool) {
        let fd = currentFD
        guard fd >= 0 else { return }
        var value: Int32 = on ? 1 : 0
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sends a complete response in a single write. Adds `Content-Length: body.count` unless the
    /// caller supplied Content-Length or Transfer-Encoding, or the status never has a body.
    func respond(status: Int = 200, reason: String = "OK", headers: [(String, String)] = [], body: [UInt8] = []) {
        var head = "HTTP/1.1 \(status) \(reason)\r\n"
        var hasFraming = false
        for (name, value) in headers {
            let lower = name.lowercased()
            if lower == "content-length" || lower == "transfer-encoding" { hasFraming = true }
            head += "\(name): \(value)\r\n"
        }
        let bodyless = (100..<200).contains(status) || status == 204 || status == 304
        if !hasFraming && !bodyless {
            head += "Content-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        write(Array(head.utf8) + body)
    }

    /// Sends a chunked response. Empty chunks are skipped (an empty chunk would end the body).
    func respondChunked(status: Int = 200, reason: String = "OK", headers: [(String, String)] = [], chunks: [[UInt8]]) {
        var head = "HTTP/1.1 \(status) \(reason)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "Transfer-Encoding: chunked\r\n\r\n"
        var out = Array(head.utf8)
        for chunk in chunks where !chunk.isEmpty {
            out += Array(String(chunk.count, radix: 16).utf8) + [13, 10]
            out += chunk
            out += [13, 10]
        }
        out += Array("0\r\n\r\n".utf8)
        write(out)
    }

    // MARK: Reading

    /// Blocking read of whatever arrives next (buffered bytes first, e.g. tunnel data that came
    /// in right behind a CONNECT head). Returns [] on EOF, error or after stop().
    func readRaw(max: Int) -> [UInt8] {
        guard max > 0 else { return [] }
        if start == buffer.count {
            guard fill() else { return [] }
        }
        let n = Swift.min(max, buffer.count - start)
        let out = Array(buffer[start..<(start + n)])
        start += n
        return out
    }

    /// Reads the body of a request that had `Expect: 100-continue` (after the handler sent 100,
    /// or decided the client will send the body anyway). Returns `request.body` if there is
    /// nothing pending. On a truncated body returns [] and disables keep-alive.
    func readBody(for request: TestRequest) -> [UInt8] {
        let p: (framing: UpstreamBodyFraming, sequence: Int)? = lock.withLock {
            guard let p = pending, p.sequence == request.sequence else { return nil }
            pending = nil
            return p
        }
        guard let p else { return request.body }
        guard let body = readBody(p.framing) else {
            keepAlive = false
            return []
        }
        onBodyRead?(p.sequence, body)
        return body
    }

    fileprivate var hasPendingBody: Bool { lock.withLock { pending != nil } }

    fileprivate func setPending(_ framing: UpstreamBodyFraming, sequence: Int) {
        lock.withLock { pending = (framing, sequence) }
    }

    // MARK: Closing

    /// Graceful close: sends FIN now. The fd itself is closed by the serve loop after a short
    /// drain ("lingering close"), because closing a socket with unread input makes the kernel
    /// send RST, which can destroy the response still in flight to the peer.
    func close() {
        lock.withLock {
            guard fd >= 0, !writeClosed else { return }
            writeClosed = true
            _keepAlive = false
            _ = Glibc.shutdown(fd, Int32(SHUT_WR))
        }
    }

    /// Abortive close: SO_LINGER {1, 0} then close(), so the peer sees ECONNRESET.
    func reset() {
        lock.withLock {
            guard fd >= 0 else { return }
            var l = linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
            _ = Glibc.close(fd)
            fd = -1
            _keepAlive = false
        }
    }

    /// Used by TestUpstream.stop(): wakes any blocked read/write without closing the fd (the
    /// owning thread closes it, so the number can't be reused under its feet).
    fileprivate func shutdownForStop() {
        lock.withLock {
            _keepAlive = false
            if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Final close from the serve loop: half-close, drain input for up to `linger` seconds or
    /// until the peer closes, then close the fd.
    fileprivate func finish(linger: Double = 2) {
        let fd: Int32 = lock.withLock {
            if self.fd >= 0 && !writeClosed {
                writeClosed = true
                _ = Glibc.shutdown(self.fd, Int32(SHUT_WR))
            }
            return self.fd
        }
        guard fd >= 0 else { return }
        let deadline = Date().addingTimeInterval(linger)
        while true {
            let ms = Int32(deadline.timeIntervalSinceNow * 1000)
            if ms <= 0 { break }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, ms)
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { continue }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            break
        }
        lock.withLock {
            if self.fd >= 0 {
                _ = Glibc.close(self.fd)
                self.fd = -1
            }
        }
    }

    // MARK: Buffered parsing helpers (connection thread only)

    /// One recv appended to the buffer. False on EOF/error/closed.
    private func fill() -> Bool {
        let fd = currentFD
        guard fd >= 0 else { return false }
        // Compact so a long keep-alive connection or a 10 MiB body doesn't grow without bound.
        if start > 0 && (start == buffer.count || start > 1 << 20) {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        while true {
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: scratch[0..<n])
                return true
            }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    private func find(_ pattern: [UInt8], from: Int) -> Int? {
        firstIndex(of: pattern, in: buffer, from: from)
    }

    /// Head up to and including CRLFCRLF; nil on EOF before a complete head (or > 1 MiB).
    fileprivate func readHead() -> [UInt8]? {
        var scanFrom = start
        while true {
            if let i = find([13, 10, 13, 10], from: scanFrom) {
                let head = Array(buffer[start..<(i + 4)])
                start = i + 4
                return head
            }
            scanFrom = Swift.max(start, buffer.count - 3)
            if buffer.count - start > 1 << 20 { return nil }
            let before = start
            guard fill() else { return nil }
            scanFrom -= before - start   // fill() may have compacted the buffer
        }
    }

    /// One CRLF-terminated line without the CRLF.
    private func readLine() -> [UInt8]? {
        var scanFrom = start
        while true {
            if let i = find([13, 10], from: scanFrom) {
                let line = Array(buffer[start..<i])
                start = i + 2
                return line
            }
            scanFrom = Swift.max(start, buffer.count - 1)
            if buffer.count - start > 64 * 1024 { return nil }
            let before = start
            guard fill() else { return nil }
            scanFrom -= before - start
        }
    }

    private func readExact(_ n: Int) -> [UInt8]? {
        while buffer.count - start < n {
            guard fill() else { return nil }
        }
        let out = Array(buffer[start..<(start + n)])
        start += n
        return out
    }

    private func readChunked() -> [UInt8]? {
        var out: [UInt8] = []
        while true {
            guard let line = readLine() else { return nil }
            let text = String(decoding: line, as: UTF8.self)
            let sizeText = text.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else { return nil }
            if size == 0 {
                // Trailer section: read and ignore until the empty line.
                while true {
                    guard let trailer = readLine() else { return nil }
                    if trailer.isEmpty { return out }
                }
            }
            guard let data = readExact(size) else { return nil }
            out += data
            guard let crlf = readLine(), crlf.isEmpty else { return nil }
        }
    }

    fileprivate func readBody(_ framing: UpstreamBodyFraming) -> [UInt8]? {
        switch framing {
        case .none: return []
        case .length(let n): return readExact(n)
        case .chunked: return readChunked()
        }
    }
}

// MARK: - Server

final class TestUpstream: @unchecked Sendable {
    typealias Handler = @Sendable (TestRequest, TestUpstreamConnection) -> Void

    let name: String
    let port: UInt16
    private let handler: Handler
    private let listenFD: Int32
    private let acceptDone = DispatchSemaphore(value: 0)

    private let lock = NSLock()
    private var _requests: [TestRequest] = []
    private var _accepted = 0
    private var open: [Int: TestUpstreamConnection] = [:]
    private var stopped = false

    /// Binds 127.0.0.1:0 and is listening (backlog 512) when this returns.
    init(name: String = "upstream", handler: @escaping Handler) throws {
        self.name = name
        self.handler = handler
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestUpstreamError.socket("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 512) == 0 else {
            let msg = String(cString: strerror(errno))
            _ = Glibc.close(fd)
            throw TestUpstreamError.socket("bind/listen: \(msg)")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        self.port = UInt16(bigEndian: addr.sin_port)
        self.listenFD = fd

        let thread = Thread { [self] in self.acceptLoop() }
        thread.name = "\(name)-accept"
        thread.start()
    }

    /// An upstream that answers `body`, but holds every request for `path` until the test
    /// signals `release`; `arrived` is signalled when such a request comes in.
    static func holding(_ path: String, name: String = "blue", body: String)
        throws -> (upstream: TestUpstream, arrived: DispatchSemaphore, release: DispatchSemaphore) {
        let arrived = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let upstream = try TestUpstream(name: name) { request, connection in
            if request.target == path {
                arrived.signal()
                release.wait()
            }
            connection.respond(body: Array(body.utf8))
        }
        return (upstream, arrived, release)
    }

    /// Convenience upstream: 200 with `X-Color: <color>` and body "<color>\n" (no body on HEAD,
    /// but the Content-Length a GET would have).
    static func named(_ color: String) throws -> TestUpstream {
        try TestUpstream(name: color) { request, conn in
            let body = Array("\(color)\n".utf8)
            if request.method == "HEAD" {
                conn.respond(headers: [("X-Color", color), ("Content-Length", "\(body.count)")])
            } else {
                conn.respond(headers: [("X-Color", color)], body: body)
            }
        }
    }

    /// Every request received, in order. Bodies of Expect: 100-continue requests appear once the
    /// handler has read them.
    var requests: [TestRequest] { lock.withLock { _requests } }
    var requestCount: Int { lock.withLock { _requests.count } }
    var acceptedConnections: Int { lock.withLock { _accepted } }

    /// Closes the listener and shuts down every open connection so blocked reads return.
    /// Never waits for handlers: a hanging handler's thread is simply left behind.
    func stop() {
        let conns: [TestUpstreamConnection]? = lock.withLock {
            if stopped { return nil }
            stopped = true
            return Array(open.values)
        }
        guard let conns else { return }
        // shutdown() on a listening socket wakes accept() (EINVAL) on Linux and refuses new
        // connections; close only after the accept thread is out, so the fd can't be reused.
        _ = Glibc.shutdown(listenFD, Int32(SHUT_RDWR))
        _ = acceptDone.wait(timeout: .now() + 2)
        _ = Glibc.close(listenFD)
        for c in conns { c.shutdownForStop() }
    }

    private func acceptLoop() {
        defer { acceptDone.signal() }
        var nextID = 0
        while true {
            let cfd = accept(listenFD, nil, nil)
            if cfd < 0 {
                if lock.withLock({ stopped }) { return }
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(10_000)   // e.g. EMFILE under load: back off instead of spinning
                continue
            }
            var one: Int32 = 1
            // No Nagle: tests write small responses in pieces and expect them promptly.
            _ = setsockopt(cfd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            nextID += 1
            let conn = TestUpstreamConnection(fd: cfd, id: nextID)
            let registered: Bool = lock.withLock {
                if stopped { return false }
                _accepted += 1
                open[conn.id] = conn
                return true
            }
            guard registered else {
                conn.reset()
                return
            }
            conn.onBodyRead = { [weak self] sequence, body in
                guard let self else { return }
                self.lock.withLock {
                    if sequence < self._requests.count { self._requests[sequence].body = body }
                }
            }
            let thread = Thread { [self] in self.serve(conn) }
            thread.name = "\(name)-conn-\(conn.id)"
            thread.start()
        }
    }

    private func serve(_ conn: TestUpstreamConnection) {
        defer {
            conn.finish()
            lock.withLock { _ = open.removeValue(forKey: conn.id) }
        }
        while !lock.withLock({ stopped }) {
            guard let rawHead = conn.readHead() else { return }
            guard let parsed = Self.parseHead(rawHead) else {
                conn.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            }
            var request = parsed.0
            let framing = parsed.1
            let expects = request.header("Expect")?.trimmingCharacters(in: .whitespaces).lowercased() == "100-continue"
            let deferBody = expects && framing != .none && framing != .length(0)
            if !deferBody {
                guard let body = conn.readBody(framing) else { return }   // truncated: not recorded
                request.body = body
            }
            request.expectsContinue = deferBody
            lock.withLock {
                request.sequence = _requests.count
                _requests.append(request)
            }
            if deferBody { conn.setPending(framing, sequence: request.sequence) }

            let tokens = request.headers(named: "Connection")
                .flatMap { $0.split(separator: ",") }
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            conn.keepAlive = request.version == "HTTP/1.1" && !tokens.contains("close")

            handler(request, conn)

            if conn.isClosed || !conn.keepAlive { return }
            // The handler never consumed an Expect body: we can't tell whether the client will
            // send it, so the stream position is unknown. Close.
            if conn.hasPendingBody { return }
        }
    }

    /// Parses request line + headers and decides the body framing. nil if malformed.
    private static func parseHead(_ raw: [UInt8]) -> (TestRequest, UpstreamBodyFraming)? {
        let text = String(decoding: raw.dropLast(4), as: UTF8.self)
        var lines = text.components(separatedBy: "\r\n")
        guard !lines.isEmpty else { return nil }
        let requestLine = lines.removeFirst().split(separator: " ", omittingEmptySubsequences: false)
        guard requestLine.count == 3, !requestLine[0].isEmpty, requestLine[2].hasPrefix("HTTP/") else { return nil }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let name = String(line[..<colon])
            guard !name.isEmpty, !name.contains(" ") else { return nil }
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers.append((name: name, value: value))
        }
        let request = TestRequest(method: String(requestLine[0]), target: String(requestLine[1]),
                                  version: String(requestLine[2]), headers: headers, body: [], rawHead: raw)
        let framing: UpstreamBodyFraming
        if let te = request.headers(named: "Transfer-Encoding").last {
            let last = te.split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard last == "chunked" else { return nil }
            framing = .chunked
        } else if let cl = request.header("Content-Length") {
            guard let n = Int(cl), n >= 0 else { return nil }
            framing = .length(n)
        } else {
            framing = .none
        }
        return (request, framing)
    }
}
