import Foundation
import Glibc

/// Blocking deliveries for notifications: one HTTP/1.1 POST, one program run. They run on a
/// notifier's own thread, never on an event loop, and every wait is bounded.
public enum BlockingDelivery {
    /// Why a delivery failed, in words.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// POSTs `body` (JSON) to `http://host:port/path`; the status code, or why it failed.
    public static func post(to address: SocketAddress, host: String, path: String, body: [UInt8], timeoutMs: Int) -> Result<Int, Failure> {
        let fd = Glibc.socket(address.family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(Failure("socket: \(Posix.describe(Posix.lastError()))")) }
        defer { Glibc.close(fd) }
        Posix.setNonBlocking(fd)
        let started = address.withSockAddr { pointer, length in Glibc.connect(fd, pointer, length) }
        if started != 0 {
            let code = Posix.lastError()
            guard code == EINPROGRESS else { return .failure(Failure("connect: \(Posix.describe(code))")) }
            var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&poller, 1, Int32(timeoutMs)) == 1 else { return .failure(Failure("connect: timed out after \(timeoutMs) ms")) }
            let pending = Posix.socketError(fd)
            guard pending == 0 else { return .failure(Failure("connect: \(Posix.describe(pending))")) }
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        Posix.setBlockingTimeouts(fd, milliseconds: timeoutMs)
        let head = "POST \(path) HTTP/1.1\r\nHost: \(host)\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n"
            + "User-Agent: cutover\r\nConnection: close\r\n\r\n"
        let request = Array(head.utf8) + body
        var sent = 0
        while sent < request.count {
            let count = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, request.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { return .failure(Failure("send: " + (count == 0 ? "closed" : Posix.describe(Posix.lastError())))) }
            sent += count
        }
        var response = [UInt8](repeating: 0, count: 1024)
        var received = 0
        // One deadline for the whole answer: a server dribbling a byte at a time must not hold
        // the attempt beyond it (each recv is bounded on its own, too).
        let deadline = DispatchTime.now() + .milliseconds(timeoutMs)
        while received < response.count && DispatchTime.now() < deadline {
            let room = response.count - received
            let count = response.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + received, room, 0) }
            if count <= 0 { break }
            received += count
            if response[0..<received].contains(0x0A) { break }  // the status line is all we read
        }
        let line = String(decoding: response[0..<received].prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
        let words = line.split(separator: " ")
        guard words.count >= 2, words[0].hasPrefix("HTTP/1."), let status = Int(words[1]) else {
            return .failure(Failure(received == 0 ? "no response within \(timeoutMs) ms" : "not an HTTP response: '\(line.prefix(60))'"))
        }
        return .success(status)
    }

    /// Runs `path` with `input` on its standard input; its exit status, or why it failed. A
    /// program still running after `timeoutMs` is killed.
    public static func run(_ path: String, input: [UInt8], timeoutMs: Int) -> Result<Int32, Failure> {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        let stdin = Pipe()
        process.standardInput = stdin
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }
        do {
            try process.run()
        } catch {
            return .failure(Failure("cannot run \(path): \(error.localizedDescription)"))
        }
        // A program that exits without reading makes the write fail (EPIPE; SIGPIPE is ignored
        // by the notifier): that is its exit status's business, not a crash.
        try? stdin.fileHandleForWriting.write(contentsOf: Data(input))
        try? stdin.fileHandleForWriting.close()
        if finished.wait(timeout: .now() + .milliseconds(timeoutMs)) == .timedOut {
            process.terminate()
            if finished.wait(timeout: .now() + 1) == .timedOut {
                // It ignored SIGTERM: never leave a program behind per attempt.
                Glibc.kill(process.processIdentifier, SIGKILL)
                _ = finished.wait(timeout: .now() + 1)
            }
            return .failure(Failure("\(path) did not finish within \(timeoutMs) ms"))
        }
        return .success(process.terminationStatus)
    }
}
