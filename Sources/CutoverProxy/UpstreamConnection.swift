import Glibc
import CutoverConfig
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem

/// A connection to one upstream server, owned by one loop. While it carries a request its
/// `owner` drives it; while idle it sits in the loop's `UpstreamIdlePool` and any event on it
/// (the server closed, or sent bytes nobody asked for) closes it — so a pooled connection is
/// reused without a liveness syscall and without risking unread bytes.
final class UpstreamConnection: Channel {
    enum Phase {
        case connecting
        case open
        case idle
        case closed
    }

    let server: ServerEntry
    var phase: Phase
    /// Request bytes to send (head and re-framed body).
    var output = IOBuffer()
    /// Response bytes received.
    var input = IOBuffer()
    var readable = false
    var writable = false
    /// read() returned 0.
    var peerClosed = false
    /// The peer's FIN was reported: read until 0 even after a short read, since no further
    /// edge will announce the end of the stream.
    var hangupSeen = false
    /// A socket error was seen on read or connect (reset, refused).
    var failed = false
    /// A write failed (the server reset or closed): nothing more is sent, but what the server
    /// already answered is still read.
    var writeFailed = false
    /// Taken from the idle pool rather than freshly connected.
    var reused = false
    /// Request bytes this connection accepted (retry rules depend on it).
    var bytesSent = 0
    var owner: ClientConnection?
    unowned(unsafe) let idlePool: UpstreamIdlePool
    unowned(unsafe) let counters: DataPlaneCounters
    /// The pool that opened this connection (for the per-pool connection count).
    let pool: PoolID

    init(fd: Int32, loop: EventLoop, server: ServerEntry, pool: PoolID, connected: Bool,
         idlePool: UpstreamIdlePool, counters: DataPlaneCounters) {
        self.server = server
        self.idlePool = idlePool
        self.counters = counters
        self.pool = pool
        phase = connected ? .open : .connecting
        writable = connected
        super.init(fd: fd, loop: loop)
    }

    package override func handle(events: UInt32) {
        if events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup) != 0 { readable = true }
        if events & (Epoll.peerHangup | Epoll.hangup) != 0 { hangupSeen = true }
        if events & Epoll.error != 0 {
            readable = true
            // A failed connect is final. On an open connection, bytes that arrived before a
            // reset are still readable (an early 413 before the RST its unread body caused):
            // reads find the error after them.
            if phase == .connecting { failed = true }
        }
        if events & Epoll.writable != 0 {
            writable = true
            if phase == .connecting && !failed { phase = .open }
        }
        switch phase {
        case .idle:
            // Writability edges are expected (the send buffer drained); anything else means
            // the server closed or spoke out of turn: never reuse it.
            guard events & ~Epoll.writable != 0 else { return }
            idlePool.remove(self)
            close()
        case .connecting, .open:
            owner?.drive()
        case .closed:
            break
        }
    }

    package override func deadlineReached() {
        if phase == .idle {
            idlePool.remove(self)
            close()
        }
    }

    /// Reads what is available into `input`. Returns bytes read; 0 when nothing was read.
    /// A short read means the socket is drained (no extra read to see EAGAIN).
    func readAvailable() -> Int {
        guard readable, !peerClosed, !failed else { return 0 }
        loop.buffers.acquire(into: &input)
        input.compactIfNeeded(minimumSpace: input.capacity / 4)
        let space = input.spaceAtEnd
        guard space > 0 else { return 0 }
        do {
            switch try Posix.read(fd, input.writableBytes.baseAddress!, space) {
            case .processed(0):
                peerClosed = true
                readable = false
                return 0
            case .processed(let count):
                input.end += count
                if count < space && !hangupSeen { readable = false }
                return count
            case .wouldBlock:
                readable = false
                return 0
            }
        } catch {
            failed = true
            readable = false
            return 0
        }
    }

    /// Writes pending output. Returns false when the connection failed.
    func flush() -> Bool {
        guard phase == .open, writable, !writeFailed, !output.isEmpty else { return !failed }
        do {
            let pending = output.count
            switch try Posix.write(fd, output.readableBytes.baseAddress!, pending) {
            case .processed(let count):
                output.consume(count)
                bytesSent += count
                if count < pending { writable = false }
            case .wouldBlock:
                writable = false
            }
            return true
        } catch {
            writeFailed = true
            readable = true  // look for a response or the error the server left
            return false
        }
    }

    /// True when the connection may carry another request: nothing unread in the socket (a
    /// read that filled the buffer leaves `readable` set: one more read must find it empty)
    /// and no end of stream reported.
    func isCleanForReuse() -> Bool {
        guard phase == .open, !failed, !writeFailed, !peerClosed, !hangupSeen, output.isEmpty, input.isEmpty else {
            return false
        }
        if readable {
            _ = readAvailable()
            return input.isEmpty && !peerClosed && !failed && !readable
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
        releaseBuffers()
        loop.closeChannel(self)
    }

    /// Opens a non-blocking connection to `server` and registers it. Throws on immediate
    /// failures (no descriptors, network unreachable): the caller treats those like a refused
    /// connect.
    static func connect(
        to server: ServerEntry, pool: PoolID, loop: EventLoop, idlePool: UpstreamIdlePool, counters: DataPlaneCounters
    ) throws(IOError) -> UpstreamConnection {
        let fd = try Posix.socket(family: server.address.family)
        do {
            try Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let connected = try Posix.connect(fd, server.address)
            let connection = UpstreamConnection(
                fd: fd, loop: loop, server: server, pool: pool, connected: connected, idlePool: idlePool,
                counters: counters)
            try loop.register(connection)
            counters.add(1, .upstreamConnections(pool), loop: loop.index)
            return connection
        } catch {
            Posix.close(fd)
            throw error
        }
    }
}

/// A loop's idle upstream connections, LIFO per server (the warmest connection first), bounded
/// per server by `upstream_idle_per_server`, each closed after `upstream_idle`.
final class UpstreamIdlePool {
    private var idle: [[UpstreamConnection]] = []
    let maxPerServer: Int
    let idleTimeoutMs: Int

    init(maxPerServer: Int, idleTimeoutMs: Int) {
        self.maxPerServer = maxPerServer
        self.idleTimeoutMs = idleTimeoutMs
    }

    func take(serverID: Int) -> UpstreamConnection? {
        guard serverID < idle.count, let connection = idle[serverID].popLast() else { return nil }
        connection.clearDeadline()
        connection.reused = true
        connection.phase = .open
        connection.bytesSent = 0
        return connection
    }

    /// Parks a connection that finished a response cleanly; closes it when the pool is full.
    func park(_ connection: UpstreamConnection) {
        let id = connection.server.id
        while idle.count <= id { idle.append([]) }
        connection.owner = nil
        connection.releaseBuffers()
        guard idle[id].count < maxPerServer, connection.phase == .open else {
            connection.close()
            return
        }
        connection.phase = .idle
        connection.setDeadline(after: idleTimeoutMs)
        idle[id].append(connection)
    }

    func remove(_ connection: UpstreamConnection) {
        let id = connection.server.id
        guard id < idle.count, let position = idle[id].firstIndex(where: { $0 === connection }) else { return }
        idle[id].remove(at: position)
    }

    func closeAll() {
        for list in idle { for connection in list { connection.close() } }
        idle.removeAll()
    }
}
