import Glibc
import CutoverConfig
import CutoverHTTP
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS
import Dispatch
import Synchronization

/// Settings every loop reads; fixed for the life of the process (a reload that changes them
/// needs a restart, like listen addresses).
public struct ProxySettings: Sendable {
    public var timeouts: Timeouts
    public var limits: Limits
    public var http: HTTPLimits
    /// Size of every I/O buffer: it must hold a whole request head.
    public var bufferSize: Int

    public init(config: Config) {
        timeouts = config.timeouts
        limits = config.limits
        http = HTTPLimits(maxHeaderBytes: config.limits.maxHeaderBytes, maxHeaders: config.limits.maxHeaders,
                          maxURIBytes: config.limits.maxURIBytes)
        bufferSize = max(16 * 1024, config.limits.maxHeaderBytes + 4 * 1024)
    }
}

/// State shared by all loops: connection accounting and the drain flag.
final class SharedProxyState: Sendable {
    let openClients = Atomic<Int>(0)
    let maxClients: Int
    let draining = Atomic<Bool>(false)
    /// The drain is the gentle one of a hot upgrade (set before `draining`).
    let gentleDrain = Atomic<Bool>(false)
    /// The certificates new TLS connections start from (a reload replaces it; connections keep
    /// the one they started with). Read once per accepted TLS connection, never per request.
    let tls = Mutex<TLSServerContext?>(nil)
    /// The first TLS listener's port: where `redirect_http` listeners send clients.
    let httpsPort = Atomic<UInt16>(443)
    /// `upstream_tls` by app and server (`host:port` as configured); read per upstream
    /// connection taken, and only when some app has it.
    /// By app, then server: looked up with strings the routing snapshot holds (no key built,
    /// no allocation per request).
    let upstreamTLS = Mutex<[String: [String: UpstreamTLSTarget]]>([:])
    let anyUpstreamTLS = Atomic<Bool>(false)
    /// Bumped by every replacement: a loop copies the table once per change, not per request.
    let upstreamTLSGeneration = Atomic<Int>(0)

    /// Idle upstream connections one loop may keep: a quarter of the descriptors left after
    /// the reserve, shared by the loops (clients have half, live upstream connections the rest).
    let idleUpstreamsPerLoop: Int

    init(maxClients: Int, idleUpstreamsPerLoop: Int = .max) {
        self.maxClients = maxClients
        self.idleUpstreamsPerLoop = idleUpstreamsPerLoop
    }
}

/// The proxy's state on one loop: listeners, the routing snapshot, the idle upstream pool and
/// the request-id generator. Everything here is touched only by the loop's thread.
final class ProxyWorker {
    let loop: EventLoop
    let settings: ProxySettings
    let shared: SharedProxyState
    let publisher: RoutingPublisher
    let counters: DataPlaneCounters
    let logger: Logger
    let upstreamPool: UpstreamIdlePool
    private(set) var routing: LocalRouting
    private var listeners: [Listener] = []
    private var acceptPaused = false
    private var requestCounter: UInt64 = 0
    /// Random per process and loop, so ids are unique across restarts and threads without a
    /// syscall per request.
    private let requestIDPrefix: UInt64
    private(set) var isDraining = false
    /// Request figures of this loop, read by other threads only through `loop.execute`.
    let metrics: LoopMetrics
    /// This loop's share of the access log (nil: access_log off).
    let accessLog: AccessLogRing?

    /// Whether a response written now must close its connection. True from the moment `stop`
    /// is called, on every loop at once: a loop whose own drain message is still queued must
    /// not promise keep-alive to a client another loop has already started closing.
    var endsKeepAlive: Bool { isDraining || shared.draining.load(ordering: .relaxed) }
    /// Idle keep-alive connections are closed at once when a drain begins — unless it is the
    /// gentle drain after a hot upgrade, where they wait for their next request (answered with
    /// `Connection: close`): closing one as its client sends would lose that request.
    var closesIdleConnections: Bool { endsKeepAlive && !shared.gentleDrain.load(ordering: .relaxed) }

    init(loop: EventLoop, settings: ProxySettings, shared: SharedProxyState, publisher: RoutingPublisher,
         counters: DataPlaneCounters, logger: Logger, apps: AppRegistry, accessLog: AccessLogRing?) {
        self.loop = loop
        self.counters = counters
        self.settings = settings
        self.shared = shared
        self.publisher = publisher
        self.logger = logger
        upstreamPool = UpstreamIdlePool(
            maxPerServer: settings.limits.upstreamIdlePerServer, idleTimeoutMs: settings.timeouts.upstreamIdleMs,
            maxTotal: shared.idleUpstreamsPerLoop)
        requestIDPrefix = UInt64.random(in: 0...UInt64.max) ^ UInt64(loop.index)
        let snapshot = publisher.snapshot()
        self.accessLog = accessLog
        let metrics = LoopMetrics(apps: apps)
        self.metrics = metrics
        routing = LocalRouting(table: snapshot.table, generation: snapshot.generation, metrics: metrics)
    }

    /// The routing snapshot for a request parsed now. One atomic load per request; the lock is
    /// taken only when a new table was published.
    @inline(__always)
    func currentRouting() -> LocalRouting {
        if publisher.generation != routing.generation {
            let snapshot = publisher.snapshot()
            routing = LocalRouting(table: snapshot.table, generation: snapshot.generation, metrics: metrics, previous: routing)
            trimIdleUpstreams(snapshot.table)
        }
        return routing
    }

    /// After a new table: idle connections to servers whose pool takes no traffic now (no
    /// share, no pin, no copies, no preview) are closed — after a switch the old color's idle
    /// connections would otherwise hold descriptors until `upstream_idle`.
    private func trimIdleUpstreams(_ table: RoutingTable) {
        guard upstreamPool.total > 0 else { return }
        let preview = listeners.contains { $0.kind == .preview }
        var live = Set<Int>()
        for app in table.apps {
            var pools = app.policy.split.shares.filter { $0.basisPoints > 0 }.map(\.pool)
            pools += app.policy.pins.map { PoolID($0.color) }
            if preview || app.policy.mirror.basisPoints > 0 { pools.append(app.policy.candidate) }
            for pool in pools { for server in app.servers(pool) { live.insert(server.id) } }
        }
        let closed = upstreamPool.trim(keeping: live)
        if closed > 0 { counters.idleTrimmed(closed) }
    }

    func nextRequestID() -> (UInt64, UInt64) {
        requestCounter &+= 1
        return (requestIDPrefix, requestCounter)
    }

    /// xoshiro256** state for sticky ids, seeded from the system's generator at start: ids
    /// must be spread evenly over the buckets, and making one costs no syscall.
    private var stickyRandom: (UInt64, UInt64, UInt64, UInt64) = {
        var system = SystemRandomNumberGenerator()
        return (system.next() | 1, system.next(), system.next(), system.next())
    }()

    /// A fresh sticky id (never zero: zero means "no cookie to set").
    func nextStickyID() -> UInt64 {
        let id = nextStickyRandom()
        return id == 0 ? 1 : id
    }

    private func nextStickyRandom() -> UInt64 {
        var s = stickyRandom
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        stickyRandom = s
        return result
    }

    func log(_ level: LogLevel, _ message: @autoclosure () -> String) {
        logger.log(level, message())
    }

    // MARK: Accepting

    var httpsPort: UInt16 { shared.httpsPort.load(ordering: .relaxed) }

    /// This loop's copy of the `upstream_tls` table, and the generation it was taken at.
    private var upstreamTLSTable: [String: [String: UpstreamTLSTarget]] = [:]
    private var upstreamTLSSeen = -1

    /// How `app` speaks TLS to `server` (nil: plain). No lock per request: the table is copied
    /// (a reference, copy-on-write) when its generation changed.
    func upstreamTLS(app: String, server: ServerEntry) -> UpstreamTLSTarget? {
        guard shared.anyUpstreamTLS.load(ordering: .relaxed) else { return nil }
        let generation = shared.upstreamTLSGeneration.load(ordering: .acquiring)
        if generation != upstreamTLSSeen {
            upstreamTLSTable = shared.upstreamTLS.withLock { $0 }
            upstreamTLSSeen = generation
        }
        return upstreamTLSTable[app]?[server.name]
    }

    /// The handshake deadline of the TLS context connections were last accepted with.
    private(set) var tlsHandshakeTimeoutMs = 10_000

    /// Closes this loop's listeners (a hot upgrade handed them to the new process).
    func stopAccepting() {
        for listener in listeners { loop.closeSharedChannel(listener) }
        listeners.removeAll()
    }

    func addListener(fd: Int32, kind: ListenerKind = .main, tls: Bool = false) throws(IOError) {
        let listener = Listener(fd: fd, worker: self, kind: kind, tls: tls)
        try loop.register(listener)
        listeners.append(listener)
    }

    func acceptConnections(on listener: Listener) {
        while !acceptPaused && !isDraining {
            if shared.openClients.load(ordering: .relaxed) >= shared.maxClients {
                // At the cap, an idle connection of this loop makes room (nginx's reusable
                // connections): a new client is served rather than kept out for client_idle.
                if Posix.isReadable(listener.fd) && evictIdleConnection() { continue }
                // Resumed when a client of this loop closes, or by the retry in case the
                // connection that frees a place belongs to another loop.
                pauseAccepting(retryAfterMs: 100, listener: listener)
                return
            }
            let accepted: (Int32, sockaddr_storage)
            do {
                switch try Posix.accept(listener.fd) {
                case .processed(let result): accepted = result
                case .wouldBlock: return
                }
            } catch {
                switch error.errnoCode {
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of descriptors: pause instead of spinning on a listener that stays
                    // readable, and look again shortly (other loops may free descriptors).
                    log(.warning, "accept paused: \(error)")
                    pauseAccepting(retryAfterMs: 100, listener: listener)
                    return
                case ECONNABORTED, EPROTO, EPERM:
                    continue
                default:
                    // Unexpected: look again shortly so an edge-triggered listener never stalls.
                    log(.error, "accept: \(error)")
                    pauseAccepting(retryAfterMs: 100, listener: listener)
                    return
                }
            }
            let (fd, address) = accepted
            shared.openClients.add(1, ordering: .relaxed)
            _ = try? Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            var session: TLSConnection?
            if listener.tls {
                guard let context = shared.tls.withLock({ $0 }), let connection = context.accept(fd: fd) else {
                    Posix.close(fd)  // no certificates loaded (or no memory for a session)
                    shared.openClients.subtract(1, ordering: .relaxed)
                    continue
                }
                session = connection
                tlsHandshakeTimeoutMs = context.handshakeTimeoutMs
            }
            let client = ClientConnection(fd: fd, worker: self, clientAddress: PeerAddress(address), listener: listener.kind, tls: session)
            do {
                try loop.register(client)
            } catch {
                session?.free()
                Posix.close(fd)
                shared.openClients.subtract(1, ordering: .relaxed)
                continue
            }
            // A connection that sends nothing is closed at client_header, not client_idle: the
            // idle allowance is for keep-alive clients between requests.
            client.setDeadline(after: session == nil ? settings.timeouts.clientHeaderMs : tlsHandshakeTimeoutMs)
        }
    }

    /// Closes this loop's reusable connection nearest its deadline — the longest idle one (a
    /// keep-alive connection between requests, or one that has not sent a byte). False when
    /// this loop has none. A scan of the loop's channels: it runs only at `max_connections`.
    private func evictIdleConnection() -> Bool {
        var reusable: [(client: ClientConnection, since: Int64)] = []
        loop.forEachChannel { channel in
            if let client = channel as? ClientConnection, client.isReusable, let since = client.idleSinceMs {
                reusable.append((client, since))
            }
        }
        // The longest idle first; one whose request is already in the socket (not read yet)
        // is not idle: the next one.
        for (client, _) in reusable.sorted(by: { $0.since < $1.since }) where !Posix.isReadable(client.fd) {
            counters.idleClientEvicted()
            client.close()
            return true
        }
        return false
    }

    private func pauseAccepting(retryAfterMs: Int, listener: Listener) {
        acceptPaused = true
        listener.setDeadline(after: retryAfterMs)
    }

    func resumeAccepting() {
        guard acceptPaused else { return }
        acceptPaused = false
        for listener in listeners where listener.slot >= 0 {
            acceptConnections(on: listener)
        }
    }

    func tlsHandshakeFinished(_ stream: SocketStream) {
        guard case .tls(let connection) = stream.transport else { return }
        let version: DataPlaneCounters.TLSVersionLabel
        switch connection.versionName.map({ String(cString: $0) }) {
        case "TLSv1.3": version = .tls13
        case "TLSv1.2": version = .tls12
        default: version = .other
        }
        counters.count(.handshake(version: version, resumed: connection.sessionReused))
    }

    func tlsHandshakeFailed(_ reason: TLSFailure) {
        counters.count(.failure(reason: Int(reason.rawValue)))
    }

    func clientClosed() {
        shared.openClients.subtract(1, ordering: .relaxed)
        if acceptPaused { resumeAccepting() }
        if isDraining { checkDrained() }
    }

    // MARK: Draining

    private var onDrained: (() -> Void)?

    /// Stops accepting, closes idle keep-alive connections and lets in-flight exchanges finish
    /// (their responses carry `Connection: close`). `done` runs once every client is gone.
    /// `soft` (after a hot upgrade): idle connections are left a second to send their next
    /// request — answered with `Connection: close` — and only those still idle then are closed.
    func beginDrain(soft: Bool = false, done: @escaping () -> Void) {
        isDraining = true
        onDrained = done
        for listener in listeners { loop.closeChannel(listener) }
        listeners.removeAll()
        if soft {
            let box = UncheckedBox(self)
            DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(1)) {
                box.value.loop.execute { box.value.closeIdleClients() }
            }
        } else {
            closeIdleClients()
        }
        upstreamPool.closeAll()
        checkDrained()
    }

    private func closeIdleClients() {
        loop.forEachChannel { channel in
            if let client = channel as? ClientConnection, client.isIdle { client.close() }
        }
        checkDrained()
    }

    /// Closes everything still open (the drain deadline passed).
    func closeAll() {
        loop.forEachChannel { channel in
            if let client = channel as? ClientConnection { client.closeAtDrainDeadline() }
        }
        upstreamPool.closeAll()
    }

    private func checkDrained() {
        guard isDraining, let done = onDrained else { return }
        var clients = 0
        loop.forEachChannel { channel in
            if channel is ClientConnection { clients += 1 }
        }
        if clients == 0 {
            onDrained = nil
            done()
        }
    }
}

/// A listening socket of one loop (SO_REUSEPORT: every loop has its own and the kernel spreads
/// connections across them).
package final class Listener: Channel {
    unowned(unsafe) let worker: ProxyWorker
    /// Preview listeners send every request to the candidate pool.
    let kind: ListenerKind
    /// `listen … tls`: connections start with a TLS handshake.
    let tls: Bool

    init(fd: Int32, worker: ProxyWorker, kind: ListenerKind, tls: Bool) {
        self.worker = worker
        self.kind = kind
        self.tls = tls
        super.init(fd: fd, loop: worker.loop)
    }

    package override func handle(events: UInt32) {
        worker.acceptConnections(on: self)
    }

    package override func deadlineReached() {
        worker.resumeAccepting()
    }
}
