import CutoverConfig
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS
import Dispatch
import Foundation
import Synchronization

/// The data plane: one `EventLoop` thread per worker, each with its own SO_REUSEPORT listeners,
/// routing snapshot and upstream pools. The control plane talks to it only through the
/// `RoutingPublisher` (switch, reload) and `stop`.
public final class ProxyServer: @unchecked Sendable {
    public let config: Config
    public let publisher: RoutingPublisher
    public let logger: Logger
    /// Requests in flight and upstream connections per color, connect failures per server.
    public let counters: DataPlaneCounters
    /// The addresses actually bound (port 0 in the config becomes the kernel's choice).
    public private(set) var listenAddresses: [SocketAddress] = []
    /// The bound `preview_listen` addresses (ports the kernel picked included).
    public private(set) var previewAddresses: [SocketAddress] = []
    /// The bound `redirect_http` addresses.
    public private(set) var redirectAddresses: [SocketAddress] = []

    /// Apps and servers by number, as loops name them in records.
    public let apps = AppRegistry()
    public let servers: ServerRegistry
    /// The access log (nil: off); opened by `start`.
    public private(set) var accessLog: AccessLog?

    private let settings: ProxySettings
    private let shared: SharedProxyState
    private var workers: [ProxyWorker] = []
    private var finished: [DispatchSemaphore] = []
    private var started = false
    /// Set when `stop` begins: readers of the figures stop asking the loops.
    private let stopping = Atomic<Bool>(false)
    /// Listening sockets handed over by the process this one replaces (a hot upgrade), by
    /// `KIND@HOST:PORT` as configured; used instead of binding. Set before `start`.
    public var inherited = InheritedSockets()
    /// The listening descriptors, by the same keys: what a hot upgrade hands on.
    public private(set) var listenerDescriptors: [String: [Int32]] = [:]
    /// When `start` finished (monotonic ns): the beginning of the "total" window.
    public private(set) var startedNs: Int64 = 0

    /// `servers` names the server ids of the routing tables (the control plane's registry).
    public init(config: Config, publisher: RoutingPublisher, logger: Logger, servers: ServerRegistry = ServerRegistry()) {
        self.config = config
        self.publisher = publisher
        self.logger = logger
        self.servers = servers
        settings = ProxySettings(config: config)
        counters = DataPlaneCounters(loops: Self.workerCount(config.workers))
        let available = ProcessResources.raiseOpenFileLimit()
        shared = SharedProxyState(maxClients: Self.clientLimit(config.limits.maxConnections),
                                  idleUpstreamsPerLoop: max(16, (available - 64) / 4 / Self.workerCount(config.workers)))
    }

    /// The number of worker loops for `workers auto` or a number.
    public static func workerCount(_ configured: Int?) -> Int {
        configured ?? ProcessResources.onlineProcessors
    }

    /// Each client may need an upstream descriptor too: keep half of the descriptor limit (less
    /// a reserve) for upstream connections, so a flood of clients cannot starve them.
    private static func clientLimit(_ configured: Int) -> Int {
        let available = ProcessResources.raiseOpenFileLimit()
        return max(1, min(configured, (available - 64) / 2))
    }

    /// Binds every listener on every loop and starts the loop threads.
    public func start() throws {
        precondition(!started, "start() called twice")
        started = true
        startedNs = monotonicNanoseconds()
        ProcessResources.ignoreBrokenPipes()
        let count = Self.workerCount(config.workers)
        if config.accessLog != .off {
            accessLog = try AccessLog(target: config.accessLog, loops: count,
                                      serverNames: { [servers] in servers.names }, appNames: { [apps] in apps.names })
        }
        var loops: [EventLoop] = []
        for index in 0..<count {
            let loop = try EventLoop(index: index, bufferSize: settings.bufferSize, maxHeaders: settings.http.maxHeaders)
            loops.append(loop)
            workers.append(ProxyWorker(
                loop: loop, settings: settings, shared: shared, publisher: publisher, counters: counters, logger: logger,
                apps: apps, accessLog: accessLog?.rings[index]))
        }
        if config.listen.contains(where: \.tls) && shared.tls.withLock({ $0 }) == nil {
            throw StartupError("listen … tls: no certificates loaded (ProxyServer.replaceTLS before start)")
        }
        let redirects = config.tls?.redirectHTTP ?? []
        for (endpoint, kind) in config.listen.map({ ($0, ListenerKind.main) }) + config.previewListen.map({ ($0, .preview) })
            + redirects.map({ ($0, .redirect) }) {
            guard var address = SocketAddress.resolve(host: endpoint.host, port: endpoint.port) else {
                throw ConfigError(file: config.path, line: endpoint.line, message: "cannot resolve listen address '\(endpoint.host)'")
            }
            let key = Self.listenerKey(kind, endpoint)
            if let fds = inherited.take(key) {
                // The sockets of the process this one replaces: the same accept queues, so no
                // connection waiting in them is lost. Shared out among the loops.
                for (index, fd) in fds.enumerated() {
                    Posix.setNonBlocking(fd)
                    try workers[index % workers.count].addListener(fd: fd, kind: kind, tls: endpoint.tls)
                }
                if let bound = Posix.localAddress(fds[0]) { address = bound }
                listenerDescriptors[key] = fds
                recordAddress(address, kind: kind, endpoint: endpoint)
                continue
            }
            // Our listeners share a port among loops (SO_REUSEPORT), which would also let a second
            // cutover join silently: refuse a port someone already listens on.
            if address.port != 0 && Posix.addressInUse(address) {
                throw StartupError("cannot listen on \(address): another process is listening there (a second cutover on the same address? stop it first)")
            }
            for worker in workers {
                let fd: Int32
                do {
                    fd = try Posix.openListener(address)
                } catch {
                    throw StartupError("cannot listen on \(address): \(error)")
                }
                if address.port == 0, let bound = Posix.localAddress(fd) {
                    address = bound  // the other loops share the port the kernel picked
                }
                try worker.addListener(fd: fd, kind: kind, tls: endpoint.tls)
                listenerDescriptors[key, default: []].append(fd)
            }
            recordAddress(address, kind: kind, endpoint: endpoint)
        }
        for key in inherited.closeRest() {
            logger.log(.warning, "hot upgrade: \(key) is no longer in the configuration; its inherited socket is closed")
        }
        for worker in workers {
            let done = DispatchSemaphore(value: 0)
            finished.append(done)
            let box = UncheckedBox(worker)
            let thread = Thread {
                box.value.loop.run()
                done.signal()
            }
            thread.name = "cutover-loop-\(worker.loop.index)"
            thread.start()
        }
        accessLog?.start()
        let preview = previewAddresses.isEmpty ? "" : ", preview on \(previewAddresses.map(\.description).joined(separator: ", "))"
        logger.log(.info, "listening on \(listenAddresses.map(\.description).joined(separator: ", "))\(preview) with \(count) worker(s)")
    }

    private func recordAddress(_ address: SocketAddress, kind: ListenerKind, endpoint: Endpoint) {
        switch kind {
        case .main:
            listenAddresses.append(address)
            if endpoint.tls && !config.listen.prefix(while: { $0 != endpoint }).contains(where: \.tls) {
                shared.httpsPort.store(address.port, ordering: .relaxed)
            }
        case .preview: previewAddresses.append(address)
        case .redirect: redirectAddresses.append(address)
        }
    }

    /// How a listener is named between the two processes of a hot upgrade: its kind and its
    /// address as configured (`main@127.0.0.1:8080`; port 0 included — the socket says which).
    static func listenerKey(_ kind: ListenerKind, _ endpoint: Endpoint) -> String {
        "\(kind.rawValue)@\(endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host):\(endpoint.port)"
    }

    /// The new process serves: stop accepting (our copies of the listening sockets are closed;
    /// the sockets live on in the new process, their queues intact). Then `stop` drains.
    public func handOver() {
        guard started else { return }
        for worker in workers {
            let done = DispatchSemaphore(value: 0)
            let box = UncheckedBox(worker)
            worker.loop.execute {
                box.value.stopAccepting()
                done.signal()
            }
            done.wait()
        }
        listenerDescriptors.removeAll()
    }

    /// The certificates new TLS connections get from now on (start, and every reload).
    public func replaceTLS(_ context: TLSServerContext?) {
        shared.tls.withLock { $0 = context }
    }

    /// `upstream_tls` targets by server name (start, and every reload); connections already
    /// open keep their session.
    public func replaceUpstreamTLS(_ targets: [String: UpstreamTLSTarget]) {
        var byApp: [String: [String: UpstreamTLSTarget]] = [:]
        for target in targets.values { byApp[target.app, default: [:]][target.server] = target }
        shared.upstreamTLS.withLock { $0 = byApp }
        shared.upstreamTLSGeneration.add(1, ordering: .releasing)
        shared.anyUpstreamTLS.store(!targets.isEmpty, ordering: .relaxed)
    }

    /// The certificates TLS connections start from now.
    public var tlsContext: TLSServerContext? { shared.tls.withLock { $0 } }

    /// Stops accepting, lets in-flight requests finish for up to `timeouts.drain`, closes
    /// keep-alive connections, and returns when every loop has stopped.
    public func stop(soft: Bool = false) {
        guard started else { return }
        let drainMs = config.timeouts.drainMs
        if soft { shared.gentleDrain.store(true, ordering: .relaxed) }
        shared.draining.store(true, ordering: .relaxed)
        stopping.store(true, ordering: .releasing)
        for worker in workers {
            let box = UncheckedBox(worker)
            worker.loop.execute {
                let worker = box.value
                worker.beginDrain(soft: soft) { worker.loop.requestStop() }
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(drainMs)) {
                box.value.loop.execute {
                    box.value.closeAll()
                    box.value.loop.requestStop()
                }
            }
        }
        for done in finished { done.wait() }
        finished.removeAll()
        accessLog?.stop()  // after the loops: every finished request has its line
        logger.log(.info, "stopped")
    }

    /// Open client connections across all loops.
    public var openConnections: Int { shared.openClients.load(ordering: .relaxed) }

    /// The request figures of every loop for `window`, merged (and the since-start totals when
    /// `includeTotals`). Each loop adds its own figures on its own thread, between two events,
    /// so recording needs no lock; a loop that does not answer within `timeoutMs` (stopping)
    /// is left out and counted in `loopsMissing`.
    public func metrics(_ window: WindowedStats.Window, includeTotals: Bool, timeoutMs: Int = 2_000) -> MetricsSnapshot {
        let now = monotonicNanoseconds()
        var merged = MetricsSnapshot(window: window, nanoseconds: now, includesTotals: includeTotals)
        guard started else { return merged }
        guard !stopping.load(ordering: .acquiring) else {
            merged.loopsMissing = workers.count  // stopped loops run no more work
            return merged
        }
        // Every loop works on its part at once; the reader then collects them in turn.
        let results = workers.map { worker in
            let result = LoopMetricsResult()
            let box = UncheckedBox(worker)
            worker.loop.execute {
                var snapshot = MetricsSnapshot(window: window, nanoseconds: now, includesTotals: includeTotals)
                box.value.metrics.contribute(to: &snapshot)
                result.deliver(snapshot)
            }
            return result
        }
        let deadline = DispatchTime.now() + .milliseconds(timeoutMs)
        for result in results {
            if let snapshot = result.wait(until: deadline) {
                merged.merge(snapshot)
            } else {
                merged.loopsMissing += 1
            }
        }
        return merged
    }

    /// Runs `work` on every loop's thread, between events, and returns when all have run it.
    package func runOnEveryLoop(_ work: @escaping @Sendable () -> Void) {
        for worker in workers {
            let done = DispatchSemaphore(value: 0)
            worker.loop.execute {
                work()
                done.signal()
            }
            done.wait()
        }
    }

    /// Open client connections and open upstream connections (idle ones included).
    public var connectionCounts: (clients: Int, upstreams: Int) {
        (openConnections, PoolID.all.reduce(0) { $0 + counters.upstreamConnections($1) })
    }

    /// What the control plane reads and reaches of this data plane. Weak: the link must not
    /// keep a stopped data plane alive (its loops, buffers and figures).
    public var link: DataPlaneLink {
        DataPlaneLink(
            snapshot: { [weak self] window, totals in
                guard let self else {
                    var empty = MetricsSnapshot(window: window, nanoseconds: monotonicNanoseconds(), includesTotals: totals)
                    empty.loopsMissing = 1
                    return empty
                }
                return metrics(window, includeTotals: totals)
            },
            startedNs: startedNs,
            connections: { [weak self] in self?.connectionCounts ?? (0, 0) },
            accessLogDropped: { [weak self] in self?.accessLog?.dropped ?? 0 },
            reopenAccessLog: { [weak self] in
                guard let accessLog = self?.accessLog else { return "access_log is off: nothing to reopen" }
                return accessLog.reopen()  // nil: reopened
            })
    }
}

/// One loop's answer to `metrics`, handed from the loop thread to the reader.
private final class LoopMetricsResult: @unchecked Sendable {
    private let ready = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var snapshot: MetricsSnapshot?

    func deliver(_ value: MetricsSnapshot) {
        lock.withLock { snapshot = value }
        ready.signal()
    }

    func wait(until deadline: DispatchTime) -> MetricsSnapshot? {
        guard ready.wait(timeout: deadline) == .success else { return nil }
        return lock.withLock { snapshot }
    }
}

