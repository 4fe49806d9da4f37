import CutoverSystem

/// How a client connection's bytes cross the socket: the seam between the socket and the HTTP
/// codec. Plain TCP today. TLS termination adds a case holding the session, which decrypts on
/// read and encrypts on write; `ClientConnection` calls only these methods, so it does not
/// change. An enum rather than a protocol: no existential or allocation on the request path.
enum ClientTransport {
    case plain

    enum ReadOutcome {
        case bytes(Int)
        case endOfStream
        case wouldBlock
        case failed
    }

    enum WriteOutcome {
        case written(Int)
        case wouldBlock
        case failed
    }

    @inline(__always)
    func read(_ fd: Int32, into pointer: UnsafeMutableRawPointer, count: Int) -> ReadOutcome {
        switch self {
        case .plain:
            do {
                switch try Posix.read(fd, pointer, count) {
                case .processed(0): return .endOfStream
                case .processed(let count): return .bytes(count)
                case .wouldBlock: return .wouldBlock
                }
            } catch {
                return .failed
            }
        }
    }

    @inline(__always)
    func write(_ fd: Int32, from pointer: UnsafeRawPointer, count: Int) -> WriteOutcome {
        switch self {
        case .plain:
            do {
                switch try Posix.write(fd, pointer, count) {
                case .processed(let written): return .written(written)
                case .wouldBlock: return .wouldBlock
                }
            } catch {
                return .failed
            }
        }
    }

    /// Ends the sending direction (for TLS: after close_notify).
    func shutdownWrite(_ fd: Int32) {
        switch self {
        case .plain: Posix.shutdownWrite(fd)
        }
    }
}
