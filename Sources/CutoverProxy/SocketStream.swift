import CutoverLoop
import CutoverSystem
import CutoverTLS

/// How bytes cross a socket: the seam between the socket and the HTTP codec, for the client
/// and the upstream side alike. Plain TCP, or TLS: the session decrypts on read and encrypts on
/// write — and may need the *other* direction to make progress (a read that must first write a
/// handshake record, a write that must first read one): hence `wouldBlock(needs:)`. An enum
/// rather than a protocol: no existential or allocation on the request path.
enum Transport {
    case plain
    case tls(TLSConnection)

    /// The readiness an operation waits for.
    enum Interest {
        case readable, writable
    }

    enum ReadOutcome: Equatable {
        case bytes(Int)
        case endOfStream
        case wouldBlock(needs: Interest)
        case failed(TLSFailure?)
    }

    enum WriteOutcome: Equatable {
        case written(Int)
        case wouldBlock(needs: Interest)
        case failed(TLSFailure?)
    }

    var isTLS: Bool { if case .tls = self { return true } else { return false } }

    @inline(__always)
    func read(_ fd: Int32, into pointer: UnsafeMutableRawPointer, count: Int) -> ReadOutcome {
        switch self {
        case .plain:
            do {
                switch try Posix.read(fd, pointer, count) {
                case .processed(0): return .endOfStream
                case .processed(let count): return .bytes(count)
                case .wouldBlock: return .wouldBlock(needs: .readable)
                }
            } catch {
                return .failed(nil)
            }
        case .tls(let connection):
            switch connection.read(into: pointer, count: count) {
            case .bytes(let count): return .bytes(count)
            case .closed: return .endOfStream
            case .wantRead: return .wouldBlock(needs: .readable)
            case .wantWrite: return .wouldBlock(needs: .writable)
            case .failed(let reason): return .failed(reason)
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
                case .wouldBlock: return .wouldBlock(needs: .writable)
                }
            } catch {
                return .failed(nil)
            }
        case .tls(let connection):
            switch connection.write(from: pointer, count: count) {
            case .bytes(let count): return .written(count)
            case .closed: return .failed(nil)
            case .wantRead: return .wouldBlock(needs: .readable)
            case .wantWrite: return .wouldBlock(needs: .writable)
            case .failed(let reason): return .failed(reason)
            }
        }
    }

    /// Ends the sending direction (for TLS: after close_notify).
    func shutdownWrite(_ fd: Int32) {
        switch self {
        case .plain: Posix.shutdownWrite(fd)
        case .tls(let connection):
            connection.closeNotify()
            Posix.shutdownWrite(fd)
        }
    }
}

/// One socket as edge-triggered epoll reports it: what it is ready for (tracked in user space:
/// no epoll_ctl per request) and how it ended, with reads and writes through its `Transport`
/// into I/O buffers. The client and the upstream side share it, each with its own failure rules.
///
/// A short read means the socket is drained: no extra read to see EAGAIN — unless the peer's
/// FIN was reported (`hangupSeen`), after which no further edge will announce the end. Not so
/// with TLS: OpenSSL hands over one record per read (and writes one per call in partial-write
/// mode), so a TLS stream keeps reading and writing until the session says it would block.
struct SocketStream {
    var transport: Transport = .plain
    var readable = false
    var writable = false
    /// A read returned end of stream.
    var peerClosed = false
    /// The peer's FIN (or a hang-up) was reported.
    var hangupSeen = false
    /// The transport's last read waits for writability, or its last write for readability.
    private var readNeedsWritable = false
    private var writeNeedsReadable = false
    /// TLS: the handshake finished (reported once by `read` as `.handshakeDone`).
    private(set) var established = false
    /// TLS: why the session failed (nil: plain, or not a TLS failure).
    private(set) var tlsFailure: TLSFailure?

    init(transport: Transport = .plain, writable: Bool) {
        self.transport = transport
        self.writable = writable
        established = !transport.isTLS
    }

    /// Records an epoll event's readiness.
    @inline(__always)
    mutating func note(readable nowReadable: Bool, writable nowWritable: Bool, hangup: Bool) {
        if nowReadable {
            readable = true
            if writeNeedsReadable {
                writeNeedsReadable = false
                writable = true
            }
        }
        if hangup { hangupSeen = true }
        if nowWritable {
            writable = true
            if readNeedsWritable {
                readNeedsWritable = false
                readable = true
            }
        }
    }

    enum ReadResult: Equatable {
        /// Bytes were appended to the buffer.
        case bytes(Int)
        /// TLS: the handshake just finished (no bytes yet, but the connection moved on).
        case handshakeDone
        case endOfStream
        /// Nothing to read now (or no room in the buffer).
        case nothing
        case failed
    }

    /// Reads once into the free space at the end of `buffer` (which must have storage).
    @inline(__always)
    mutating func read(_ fd: Int32, into buffer: inout IOBuffer) -> ReadResult {
        let space = buffer.spaceAtEnd
        guard space > 0 else { return .nothing }
        switch transport.read(fd, into: buffer.writableBytes.baseAddress!, count: space) {
        case .bytes(let count):
            buffer.end += count
            if count < space && !hangupSeen && !transport.isTLS { readable = false }
            if !established { established = true }
            return .bytes(count)
        case .endOfStream:
            peerClosed = true
            readable = false
            return .endOfStream
        case .wouldBlock(let needs):
            readable = false
            if needs == .writable {
                // Already writable: no new edge will come, so the read is retried on the next
                // pass instead of waiting for one.
                if writable { readable = true } else { readNeedsWritable = true }
            }
            if !established, case .tls(let connection) = transport, connection.handshakeDone {
                established = true
                return .handshakeDone
            }
            return .nothing
        case .failed(let reason):
            readable = false
            tlsFailure = reason
            return .failed
        }
    }

    enum WriteResult: Equatable {
        case wrote(Int)
        case nothing
        case failed
    }

    /// Writes what `buffer` holds, once; consumes what was written.
    @inline(__always)
    mutating func write(_ fd: Int32, from buffer: inout IOBuffer) -> WriteResult {
        let pending = buffer.count
        switch transport.write(fd, from: buffer.readableBytes.baseAddress!, count: pending) {
        case .written(let count):
            buffer.consume(count)
            if count < pending && !transport.isTLS { writable = false }
            return .wrote(count)
        case .wouldBlock(let needs):
            writable = false
            if needs == .readable {
                if readable { writable = true } else { writeNeedsReadable = true }
            }
            return .nothing
        case .failed(let reason):
            tlsFailure = reason
            return .failed
        }
    }

    func shutdownWrite(_ fd: Int32) {
        transport.shutdownWrite(fd)
    }

    /// TLS: sends close_notify (unless the session failed) and frees the session. Once, when
    /// the socket closes.
    mutating func releaseTransport() {
        guard case .tls(let connection) = transport else { return }
        // After a clean end (the peer's close_notify or EOF included) our close_notify goes too,
        // or at least the session is marked cleanly shut: OpenSSL drops the session of a
        // connection freed without it from the resumption cache.
        if tlsFailure == nil { connection.closeNotify() }
        connection.free()
        transport = .plain
    }
}
