import CutoverSystem
import Glibc

/// A client of the admin socket: one command line out, one reply line back. Used by the
/// `cutover` command line and by `cutover-bench switch`.
public enum AdminLine {
    public enum Failure: Error, CustomStringConvertible {
        /// The socket could not be reached (missing, refused, permission).
        case unreachable(String)
        /// Connected, but no complete reply arrived.
        case noReply(String)

        public var description: String {
            switch self {
            case .unreachable(let reason): return reason
            case .noReply(let reason): return reason
            }
        }
    }

    /// Sends `line` and returns the reply line (without its newline). `timeoutSeconds` bounds
    /// the wait: a switch waits for its gate's verify requests.
    public static func exchange(_ line: String, socket path: String, timeoutSeconds: Int = 120) -> Result<String, Failure> {
        let fd: Int32
        switch Posix.connectUnix(path) {
        case .success(let connected): fd = connected
        case .failure(let error) where error.errnoCode == EAGAIN:
            return .failure(.unreachable("busy: the admin socket's backlog is full; try again"))
        case .failure(let error): return .failure(.unreachable(Posix.describe(error.errnoCode)))
        }
        defer { Posix.close(fd) }
        Posix.setBlockingTimeouts(fd, milliseconds: timeoutSeconds * 1000)
        let request = Array((line + "\n").utf8)
        var sent = 0
        while sent < request.count {
            let result = request.withUnsafeBytes { buffer in
                Result { () throws(IOError) in try Posix.sendNoSignal(fd, buffer.baseAddress! + sent, buffer.count - sent) }
            }
            guard case .success(.processed(let count)) = result, count > 0 else {
                // A server that refused this connection a slot wrote why and closed: that reply
                // may be waiting to be read even though the command could not be sent.
                if let refusal = readLine(fd), JSON.parse(refusal)?["busy"]?.boolValue == true { return .success(refusal) }
                return .failure(.noReply("could not send the command"))
            }
            sent += count
        }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !reply.contains(0x0A) {
            let result = chunk.withUnsafeMutableBytes { buffer in
                Result { () throws(IOError) in try Posix.receive(fd, buffer.baseAddress!, buffer.count) }
            }
            switch result {
            case .success(.processed(let count)) where count > 0: reply += chunk[0..<count]
            case .success(.wouldBlock): return .failure(.noReply("no reply within \(timeoutSeconds) s"))
            default: return .failure(.noReply("the connection closed without a reply"))
            }
        }
        return .success(String(decoding: reply.prefix { $0 != 0x0A }, as: UTF8.self))
    }

    private static func readLine(_ fd: Int32) -> String? {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let result = chunk.withUnsafeMutableBytes { buffer in
            Result { () throws(IOError) in try Posix.receive(fd, buffer.baseAddress!, buffer.count) }
        }
        guard case .success(.processed(let count)) = result, count > 0 else { return nil }
        return String(decoding: chunk[0..<count].prefix { $0 != 0x0A }, as: UTF8.self)
    }

    /// Sends a command; nil when the reply says `"ok":true`, else the error text.
    public static func send(_ line: String, to path: String) -> String? {
        switch exchange(line, socket: path) {
        case .failure(let failure): return failure.description
        case .success(let text):
            let json = JSON.parse(text)
            if json?["ok"]?.boolValue == true { return nil }
            return json?["error"]?.stringValue ?? "invalid reply"
        }
    }
}
