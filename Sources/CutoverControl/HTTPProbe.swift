import Glibc
import CutoverHTTP
import CutoverSystem

/// One `GET path` against one server with a total deadline: the active health check and the
/// switch gate's verify requests. Runs on control-plane threads, never on a data-plane loop;
/// non-blocking sockets and poll(2) bound every step by the deadline, so a hung server costs
/// at most `timeoutMs` and never delays another server's check.
public enum HTTPProbe {
    public static func get(
        _ address: SocketAddress, host: String, path: String, timeoutMs: Int,
        now: () -> Int64 = monotonicMilliseconds
    ) -> CheckOutcome {
        let started = now()
        let deadline = started + Int64(timeoutMs)
        let fd: Int32
        do {
            fd = try Posix.socket(family: address.family)
        } catch {
            return .failure(reason: "socket: \(error)")
        }
        defer { Posix.close(fd) }
        do {
            if try !Posix.connect(fd, address) {
                guard waitFor(fd, events: Int16(POLLOUT), until: deadline, now: now) else {
                    return .failure(reason: "timeout (connect)")
                }
                let code = Posix.socketError(fd)
                if code != 0 { return .failure(reason: connectReason(code)) }
            }
        } catch {
            return .failure(reason: connectReason(error.errnoCode))
        }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: cutover-health\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let result = request.withUnsafeBytes { buffer in
                Result { () throws(IOError) in try Posix.sendNoSignal(fd, buffer.baseAddress! + sent, buffer.count - sent) }
            }
            switch result {
            case .success(.processed(let count)):
                sent += count
            case .success(.wouldBlock):
                guard waitFor(fd, events: Int16(POLLOUT), until: deadline, now: now) else { return .failure(reason: "timeout (send)") }
            case .failure:
                return .failure(reason: "reset")
            }
        }
        var buffer = [UInt8](repeating: 0, count: 8192)
        var received = 0
        var parser = ResponseHeadParser(limits: HTTPLimits(maxHeaderBytes: 8192))
        let fields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: 100)
        fields.initialize(repeating: HeaderField(name: .empty, value: .empty, kind: .other))
        defer { fields.deallocate() }
        while true {
            guard received < buffer.count else { return .failure(reason: "bad response (head too large)") }
            guard waitFor(fd, events: Int16(POLLIN), until: deadline, now: now) else {
                return .failure(reason: "timeout (\(timeoutMs) ms)")
            }
            let result = buffer.withUnsafeMutableBytes { raw in
                Result { () throws(IOError) in try Posix.receive(fd, raw.baseAddress! + received, raw.count - received) }
            }
            let count: Int
            switch result {
            case .success(.processed(let read)): count = read
            case .success(.wouldBlock): continue
            case .failure: return .failure(reason: "reset")
            }
            if count == 0 { return .failure(reason: received == 0 ? "closed without a response" : "bad response (truncated)") }
            received += count
            let outcome = buffer.withUnsafeBytes { raw in
                parser.parse(UnsafeRawBufferPointer(rebasing: raw[0..<received]), requestMethod: .get, fields: fields)
            }
            switch outcome {
            case .needMore:
                continue
            case .invalid(let error):
                return .failure(reason: "bad response (\(error.reason))")
            case .complete(let head, _):
                if head.isInformational { return .failure(reason: "bad response (status \(head.status))") }
                let latency = Int(now() - started)
                if (200..<300).contains(head.status) { return .success(status: head.status, latencyMs: latency) }
                return .failure(reason: "status \(head.status)")
            }
        }
    }

    private static func waitFor(_ fd: Int32, events: Int16, until deadline: Int64, now: () -> Int64) -> Bool {
        let remaining = deadline - now()
        return remaining > 0 && Posix.waitFor(fd, events: events, timeoutMs: Int(remaining))
    }

    private static func connectReason(_ code: Int32) -> String {
        switch code {
        case ECONNREFUSED: return "refused"
        case ETIMEDOUT: return "timeout (connect)"
        case EHOSTUNREACH, ENETUNREACH: return "unreachable"
        default: return "connect failed (errno \(code))"
        }
    }
}
