import Glibc
import CutoverConfig
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS

/// A connection to one upstream server, owned by one loop. While it carries a request its
/// `owner` drives it; while idle it sits in the loop's `UpstreamIdlePool` and any event on it
/// (the server closed, or sent bytes nobody asked for) closes it — so a pooled connection is
/// reused without a liveness syscall and without risking unread bytes.
package final class UpstreamConnection: Channel {
    package enum Phase {
        case connecting
        case open
        case idle
        case closed
    }

    let server: ServerEntry
    package var phase: Phase
    /// Request bytes to send (head and re-framed body).
    var output = IOBuffer()
    /// Response bytes received.
    var input = IOBuffer()
    /// Readiness and end of the socket, and reads and writes through its transport.
    private var stream: SocketStream
    var writable: Bool { stream.writable }
    /// A read returned end of stream.
    var peerClosed: Bool { stream.peerClosed }
    /// A socket error was seen on read or connect (reset, refused).
    var failed = false
    /// A write failed (the server reset or closed): nothing more is sent, but what the server
    /// already answered is still read.
    var writeFailed = false
    /// Taken from the idle pool rather than freshly connected.
    package var reused = false
    /// Request bytes this connection accepted (retry rules depend on it).
    var bytesSent = 0
    var owner: ClientConnection?
    /// The copy of a mirrored request this connection carries (no client waits on it).
    var shadowOwner: MirrorExchange?
    unowned(unsafe) let idlePool: UpstreamIdlePool
    unowned(unsafe) let counters: DataPlaneCounters
    /// The pool that opened this connection (for the per-pool connection count).
    let pool: PoolID
    /// The `upstream_tls` target it was made with (nil: plain), held so that its identity is
    /// never reused: a pooled connection serves only requests with the very same target.
    let tlsTarget: UpstreamTLSTarget?

    package init(fd: Int32, loop: EventLoop, server: ServerEntry, pool: PoolID, connected: Bool,
         idlePool: UpstreamIdlePool, counters: DataPlaneCounters, tls: TLSConnection? = nil, tlsTarget: UpstreamTLSTarget? = nil) {
        self.server = server
        self.tlsTarget = tlsTarget
        self.idlePool = idlePool
        self.counters = counters
        self.pool = pool
        phase = connected ? .open : .connecting
        stream = SocketStream(transport: tls.map { .tls($0) } ?? .plain, writable: connected)
        super.init(fd: fd, loop: loop)
    }

    /// TLS to the server: why its certificate was refused, if it was.
    var tlsFailure: String? {
        guard case .tls(let connection) = stream.transport, stream.tlsFailure != nil || !stream.established else { return nil }
        return connection.verifyFailure ?? stream.tlsFailure.map { "TLS handshake failed (\($0.label))" }
    }

    package override func handle(events: UInt32) {
        // An error makes the socket readable: on an open connection, bytes that arrived before
        // a reset are still read (an early 413 before the RST its unread body caused), and
        // reads find the error after them. A failed connect is final.
        stream.note(readable: events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup | Epoll.error) != 0,
                    writable: events & Epoll.writable != 0,
                    hangup: events & (Epoll.peerHangup | Epoll.hangup) != 0)
        if events & Epoll.error != 0 && phase == .connecting { failed = true }
        if events & Epoll.writable != 0 && phase == .connecting && !failed { phase = .open }
        switch phase {
        case .idle:
            // Writability edges are expected (the send buffer drained); anything else means
            // the server closed or spoke out of turn: never reuse it.
            guard events & ~Epoll.writable != 0 else { return }
            idlePool.remove(self)
            close()
        case .connecting, .open:
            if let owner { owner.drive() } else { shadowOwner?.drive() }
        case .closed:
            break
        }
    }

    package override func deadlineReached() {
        if phase == .idle {
            idlePool.remove(self)
            close()
        } else {
            shadowOwner?.timedOut()
        }
    }

    /// Reads what is available into `input`. Returns bytes read; 0 when nothing was read.
    func readAvailable() -> Int {
        guard stream.readable, !stream.peerClosed, !failed else { return 0 }
        loop.buffers.acquire(into: &input)
        input.compactIfNeeded(minimumSpace: input.capacity / 4)
        switch stream.read(fd, into: &input) {
        case .bytes(let count):
            return count
        case .endOfStream, .nothing, .handshakeDone:
            return 0
        case .failed:
            failed = true
            return 0
        }
    }

    /// Writes pending output. Returns false when the connection failed.
    func flush() -> Bool {
        guard phase == .open, stream.writable, !writeFailed, !output.isEmpty else { return !failed }
        switch stream.write(fd, from: &output) {
        case .wrote(let count):
            bytesSent += count
            return true
        case .nothing:
            return true
        case .failed:
            writeFailed = true
            stream.readable = true  // look for a response or the error the server left
            return false
        }
    }

    /// Half-closes the connection (a tunnel passing on the client's FIN).
    func shutdownWrite() {
        stream.shutdownWrite(fd)
    }

    /// True when the connection may carry another request: nothing unread in the socket (a
    /// read that filled the buffer leaves `readable` set: one more read must find it empty)
    /// and no end of stream reported.
    func isCleanForReuse() -> Bool {
        guard phase == .open, !failed, !writeFailed, !stream.peerClosed, !stream.hangupSeen, output.isEmpty, input.isEmpty else {
            return false
        }
        if stream.readable {
            _ = readAvailable()
            return input.isEmpty && !stream.peerClosed && !failed && !stream.readable
        }
        return true
    }

    func releaseBuffers() {
        loop.buffers.release(&input)
        loop.buffers.release(&output)
    }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        counters.add(-1, .upstreamConnections(pool), loop: loop.index)
        owner = nil
        shadowOwner = nil
        releaseBuffers()
        stream.releaseTransport()
        loop.closeChannel(self)
    }

    /// Opens a non-blocking connection to `server` and registers it. Throws on immediate
    /// failures (no descriptors, network unreachable): the caller treats those like a refused
    /// connect.
    static func connect(
        to server: ServerEntry, pool: PoolID, loop: EventLoop, idlePool: UpstreamIdlePool, counters: DataPlaneCounters,
        tls: UpstreamTLSTarget? = nil
    ) throws(IOError) -> UpstreamConnection {
        let fd = try Posix.socket(family: server.address.family)
        var session: TLSConnection?
        do throws(IOError) {
            try Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let connected = try Posix.connect(fd, server.address)
            if let tls {
                // The handshake starts with the first write (the request), once connected.
                guard let connection = tls.context.connect(fd: fd, serverName: tls.serverName, verifyName: tls.verifyName) else {
                    throw IOError(errnoCode: ENOMEM, function: "SSL_new")
                }
                session = connection
            }
            let connection = UpstreamConnection(
                fd: fd, loop: loop, server: server, pool: pool, connected: connected, idlePool: idlePool,
                counters: counters, tls: session, tlsTarget: tls)
            try loop.register(connection)
            session = nil  // the connection owns it now
            counters.add(1, .upstreamConnections(pool), loop: loop.index)
            return connection
        } catch {
            session?.free()
            Posix.close(fd)
            throw error
        }
    }
}

/// A loop's idle upstream connections, LIFO per server (the warmest connection first), bounded
/// per server by `upstream_idle_per_server`, each closed after `upstream_idle`.
package final class UpstreamIdlePool {
    private var idle: [[UpstreamConnection]] = []
    let maxPerServer: Int
    let idleTimeoutMs: Int
    /// Idle connections this loop may hold in all: they spend descriptors too, and with a low
    /// limit a pool full of them made new connects fail with EMFILE.
    let maxTotal: Int
    private(set) var total = 0

    package init(maxPerServer: Int, idleTimeoutMs: Int, maxTotal: Int = .max) {
        self.maxPerServer = maxPerServer
        self.idleTimeoutMs = idleTimeoutMs
        self.maxTotal = maxTotal
    }

    package func take(serverID: Int) -> UpstreamConnection? {
        guard serverID < idle.count, let connection = idle[serverID].popLast() else { return nil }
        total -= 1
        connection.clearDeadline()
        connection.reused = true
        connection.phase = .open
        connection.bytesSent = 0
        return connection
    }

    /// Parks a connection that finished a response cleanly; closes it when the pool is full.
    package func park(_ connection: UpstreamConnection) {
        let id = connection.server.id
        while idle.count <= id { idle.append([]) }
        connection.owner = nil
        connection.shadowOwner = nil
        connection.releaseBuffers()
        guard idle[id].count < maxPerServer, total < maxTotal, connection.phase == .open else {
            connection.close()
            return
        }
        connection.phase = .idle
        connection.setDeadline(after: idleTimeoutMs)
        idle[id].append(connection)
        total += 1
    }

    func remove(_ connection: UpstreamConnection) {
        let id = connection.server.id
        guard id < idle.count, let position = idle[id].firstIndex(where: { $0 === connection }) else { return }
        idle[id].remove(at: position)
        total -= 1
    }

    /// Closes the idle connections to servers not in `keep` (their pool takes no traffic any
    /// more: the old color after a switch). Returns how many were closed.
    package func trim(keeping keep: Set<Int>) -> Int {
        var closed = 0
        for id in idle.indices where !idle[id].isEmpty && !keep.contains(id) {
            let list = idle[id]
            idle[id] = []
            total -= list.count
            closed += list.count
            for connection in list { connection.close() }
        }
        return closed
    }

    func closeAll() {
        let lists = idle
        idle.removeAll()
        total = 0
        for list in lists { for connection in list { connection.close() } }
    }
}
