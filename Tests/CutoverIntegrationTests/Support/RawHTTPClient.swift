// A blocking raw-socket HTTP/1.1 client for integration tests.
//
// It sends exactly the bytes a test gives it and parses responses strictly from its own
// buffer, so pipelined responses that arrive in one recv are split correctly and anything
// after one response stays available for the next read.

import Foundation
import Glibc

struct TestResponse: Sendable, HTTPMessageFields {
    var status: Int
    var reason: String
    var version: String
    var headers: [(name: String, value: String)]
    /// Decoded body (chunked coding removed).
    var body: [UInt8]
    /// Status line and header block exactly as received, including the final CRLFCRLF.
    var rawHead: [UInt8]
}

enum RawClientError: Error, Equatable {
    /// SO_RCVTIMEO/SO_SNDTIMEO expired.
    case timeout
    /// The peer closed (EOF or reset) before the expected message was complete.
    case closed
    case malformed(String)
}

/// FNV-1a 64-bit: a cheap checksum for comparing big bodies in assertions.
func fnv1a64(_ bytes: [UInt8]) -> UInt64 {
    bytes.withUnsafeBufferPointer { buf in
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in buf {
            hash ^= UInt64(b)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// Not thread-safe: use one client per thread (close() from another thread is fine to
/// abort, but results of a concurrent read are then undefined).
final class RawHTTPClient {
    let port: UInt16
    let host: String
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var scratch = [UInt8](repeating: 0, count: 256 * 1024)
    /// The kernel reports ECONNRESET only once (later recvs return 0), so remember it: a reset
    /// seen by waitForClose() must still make later reads throw .closed.
    private var sawReset = false

    private enum Fill { case data, eof, reset, timeout }

    /// Connects (blocking) and sets SO_RCVTIMEO/SO_SNDTIMEO to `timeout` seconds.
    /// Throws POSIXError when the socket can't be created or the connect fails.
    init(port: UInt16, host: String = "127.0.0.1", timeout: Double = 10) throws {
        self.port = port
        self.host = host
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        if inet_pton(AF_INET, host, &addr.sin_addr) != 1 {
            // Not a dotted quad ("localhost"): resolve to the first IPv4 address.
            var hints = addrinfo()
            hints.ai_family = AF_INET
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, nil, &hints, &res) == 0, let first = res else {
                throw RawClientError.malformed("cannot resolve \(host)")
            }
            defer { freeaddrinfo(res) }
            first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                addr.sin_addr = $0.pointee.sin_addr
            }
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1_000_000))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        // No Nagle: each send() goes out now, so tests that split a request into pieces really
        // deliver pieces, and pipelined writes aren't delayed by delayed ACKs.
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let err = errno
            _ = Glibc.close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: err) ?? .EIO)
        }
        self.fd = fd
    }

    deinit { close() }

    // MARK: Sending

    /// Sends all bytes. Throws .timeout (send buffer full for `timeout`) or .closed (EPIPE/reset).
    func send(_ bytes: [UInt8]) throws {
        guard fd >= 0 else { throw RawClientError.closed }
        guard !bytes.isEmpty else { return }
        let fd = self.fd
        let err: RawClientError? = bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                // MSG_NOSIGNAL: writing to a closed peer must not SIGPIPE the test process.
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 { offset += n; continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .timeout }
                return .closed
            }
            return nil
        }
        if let err { throw err }
    }

    func send(_ s: String) throws { try send(Array(s.utf8)) }

    /// Sends an HTTP/1.1 request and reads one response (a 1xx comes back as-is).
    /// Adds `Host: host` unless `headers` has a Host, and Content-Length when `body != nil`
    /// unless `headers` already frame the body.
    func request(_ method: String = "GET", _ target: String = "/", host: String = "example.com",
                 headers: [(String, String)] = [], body: [UInt8]? = nil) throws -> TestResponse {
        var head = "\(method) \(target) HTTP/1.1\r\n"
        let names = Set(headers.map { $0.0.lowercased() })
        if !names.contains("host") { head += "Host: \(host)\r\n" }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body, !names.contains("content-length"), !names.contains("transfer-encoding") {
            head += "Content-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        try send(Array(head.utf8) + (body ?? []))
        return try readResponse(forHEAD: method.uppercased() == "HEAD")
    }

    // MARK: Reading

    /// Parses exactly one response from the buffer/socket.
    /// Body: none for HEAD/1xx/204/304; else chunked (decoded), Content-Length, or until close.
    /// Throws .closed when the peer closes before the head or body is complete.
    func readResponse(forHEAD: Bool = false) throws -> TestResponse {
        let rawHead = try readHead()
        let text = String(decoding: rawHead.dropLast(4), as: UTF8.self)
        var lines = text.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), parts[1].count == 3, let status = Int(parts[1]) else {
            throw RawClientError.malformed("status line: \(statusLine)")
        }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { throw RawClientError.malformed("header line: \(line)") }
            headers.append((name: String(line[..<colon]),
                            value: line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        var response = TestResponse(status: status, reason: parts.count > 2 ? String(parts[2]) : "",
                                    version: String(parts[0]), headers: headers, body: [], rawHead: rawHead)

        if forHEAD || (100..<200).contains(status) || status == 204 || status == 304 {
            return response
        }
        if let te = response.headers(named: "Transfer-Encoding").last {
            let last = te.split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            if last == "chunked" {
                response.body = try readChunked()
                return response
            }
            response.body = try readToEOF(resetIsError: true)   // non-chunked TE: delimited by close
            return response
        }
        if let cl = response.header("Content-Length") {
            guard let n = Int(cl), n >= 0 else { throw RawClientError.malformed("Content-Length: \(cl)") }
            response.body = try readExact(n)
            return response
        }
        response.body = try readToEOF(resetIsError: true)
        return response
    }

    /// Everything (buffered + incoming) until EOF. A reset also ends it (bytes so far returned).
    func readUntilClose() throws -> [UInt8] {
        try readToEOF(resetIsError: false)
    }

    /// Buffered bytes if any, else one recv. [] on EOF; throws .timeout or .closed (reset).
    func readAvailable(max: Int) throws -> [UInt8] {
        if start == buffer.count {
            switch fill() {
            case .data: break
            case .eof: return []
            case .reset: throw RawClientError.closed
            case .timeout: throw RawClientError.timeout
            }
        }
        let n = Swift.min(max, buffer.count - start)
        let out = Array(buffer[start..<(start + n)])
        start += n
        return out
    }

    /// True once the peer closed (EOF or reset) within `timeout`; false if still open.
    /// Data arriving meanwhile is kept in the buffer.
    func waitForClose(timeout: Double) -> Bool {
        guard fd >= 0 else { return true }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let ms = Int32(Swift.max(0, deadline.timeIntervalSinceNow * 1000))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, ms)
            if r < 0 && errno == EINTR { continue }
            if r < 0 { return true }
            if r == 0 { return false }
            compact()
            let fd = self.fd
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                buffer.append(contentsOf: scratch[0..<n])
                if ms == 0 { return false }
                continue
            }
            if n == 0 { return true }
            if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
            sawReset = true
            return true
        }
    }

    /// Half-close: the peer reads EOF, we can still read.
    func shutdownWrite() {
        if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }
    }

    func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }

    // MARK: Buffer helpers

    private func compact() {
        if start > 0 && (start == buffer.count || start > 1 << 20) {
            buffer.removeSubrange(0..<start)
            start = 0
        }
    }

    private func fill() -> Fill {
        guard fd >= 0 else { return .eof }
        if sawReset { return .reset }
        compact()
        let fd = self.fd
        while true {
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: scratch[0..<n])
                return .data
            }
            if n == 0 { return .eof }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .timeout
            default:
                sawReset = true
                return .reset
            }
        }
    }

    /// fill() for reads that need more bytes: EOF/reset mean the message was cut short.
    private func fillOrThrow() throws {
        switch fill() {
        case .data: return
        case .eof, .reset: throw RawClientError.closed
        case .timeout: throw RawClientError.timeout
        }
    }

    private func find(_ pattern: [UInt8], from: Int) -> Int? {
        firstIndex(of: pattern, in: buffer, from: from)
    }

    private func readHead() throws -> [UInt8] {
        var scanFrom = start
        while true {
            if let i = find([13, 10, 13, 10], from: scanFrom) {
                let head = Array(buffer[start..<(i + 4)])
                start = i + 4
                return head
            }
            scanFrom = Swift.max(start, buffer.count - 3)
            if buffer.count - start > 1 << 20 { throw RawClientError.malformed("response head over 1 MiB") }
            let before = start
            try fillOrThrow()
            scanFrom -= before - start   // fill() may have compacted the buffer
        }
    }

    private func readLine() throws -> [UInt8] {
        var scanFrom = start
        while true {
            if let i = find([13, 10], from: scanFrom) {
                let line = Array(buffer[start..<i])
                start = i + 2
                return line
            }
            scanFrom = Swift.max(start, buffer.count - 1)
            if buffer.count - start > 64 * 1024 { throw RawClientError.malformed("line over 64 KiB") }
            let before = start
            try fillOrThrow()
            scanFrom -= before - start
        }
    }

    private func readExact(_ n: Int) throws -> [UInt8] {
        while buffer.count - start < n { try fillOrThrow() }
        let out = Array(buffer[start..<(start + n)])
        start += n
        return out
    }

    private func readChunked() throws -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let line = String(decoding: try readLine(), as: UTF8.self)
            let sizeText = line.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else {
                throw RawClientError.malformed("chunk size: \(line)")
            }
            if size == 0 {
                // Trailer section: read and ignore until the empty line.
                while try !readLine().isEmpty {}
                return out
            }
            out += try readExact(size)
            guard try readLine().isEmpty else { throw RawClientError.malformed("missing CRLF after chunk") }
        }
    }

    private func readToEOF(resetIsError: Bool) throws -> [UInt8] {
        while true {
            switch fill() {
            case .data: continue
            case .eof: break
            case .reset: if resetIsError { throw RawClientError.closed }
            case .timeout: throw RawClientError.timeout
            }
            break
        }
        let out = Array(buffer[start...])
        start = buffer.count
        return out
    }
}

/// Where `pattern` first occurs in `buffer` at or after `from` (the test client's and the test
/// upstream's head and line searches).
func firstIndex(of pattern: [UInt8], in buffer: [UInt8], from: Int) -> Int? {
    buffer.withUnsafeBufferPointer { bytes -> Int? in
        let length = pattern.count
        guard length > 0, bytes.count >= length, from <= bytes.count - length else { return nil }
        var index = max(0, from)
        while index <= bytes.count - length {
            if bytes[index] == pattern[0] {
                var matched = 1
                while matched < length && bytes[index + matched] == pattern[matched] { matched += 1 }
                if matched == length { return index }
            }
            index += 1
        }
        return nil
    }
}

/// A received request or response: header lookups and the body as text, shared by the test
/// upstream's requests and the test client's responses.
protocol HTTPMessageFields {
    var headers: [(name: String, value: String)] { get }
    var body: [UInt8] { get }
}

extension HTTPMessageFields {
    /// First header with this name (case-insensitive).
    func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name.lowercased() == lower }?.value
    }

    /// All values of headers with this name (case-insensitive), in arrival order.
    func headers(named name: String) -> [String] {
        let lower = name.lowercased()
        return headers.filter { $0.name.lowercased() == lower }.map(\.value)
    }

    var bodyString: String { String(decoding: body, as: UTF8.self) }
}
