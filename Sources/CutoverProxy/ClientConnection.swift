import CutoverConfig
import CutoverHTTP
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import CutoverTLS

/// One client connection and the exchange it is in, owned by one loop for its whole life. It
/// does the I/O: reads and writes both sockets, parses heads, moves body bytes, routes and
/// records. Every decision about the exchange — which deadline, what a failure or a deadline
/// means, retry or not, framing and keep-alive — is `ExchangeMachine`'s; this class turns what
/// happened into calls on it and carries out its answers.
///
/// Request path (README "How a request flows"):
///   read head → parse strictly → route by the loop's routing snapshot → take an idle upstream
///   connection (or connect) → write the canonical head (+ body) upstream → read the response
///   head → write the canonical head (+ body) to the client → park the upstream connection →
///   parse the next request.
///
/// `drive()` runs the connection forward until nothing more can happen without a new event. It
/// reads a socket only when its readiness flag is set (edge-triggered epoll) and treats a short
/// read as "drained", so a keep-alive request costs one read and one write per direction.
final class ClientConnection: Channel {
    // Stored properties are ordered for packing (Swift lays them out as declared and does not
    // fill a struct's tail padding): every idle keep-alive connection carries all of them.
    unowned(unsafe) let worker: ProxyWorker
    private var upstream: UpstreamConnection?
    private var pool: LocalPool?
    /// When the first byte of the current request head arrived, in loop nanoseconds (0: none
    /// yet), for the request's recorded latency.
    private var headFirstByteNs: Int64 = 0
    /// A sticky id made for this request (no valid cookie came with it): its response sets the
    /// cookie. 0: none.
    private var newStickyID: UInt64 = 0
    /// This request was copied to the candidate: the primary's response is compared with it.
    private var shadow: ShadowComparison?
    private var input = IOBuffer()
    private var output = IOBuffer()
    private var parser: RequestHeadParser
    private var responseParser: ResponseHeadParser
    private var record = ExchangeRecord()
    /// Length of the rewritten head at the start of the upstream output, to re-send it on a
    /// retry after a stale keep-alive connection failed.
    private var headLength: Int32 = 0
    // 46 bytes, then 10 bytes of one-byte-aligned fields fill the relay's tail to the next
    // 8-byte boundary, and the machine fills the second relay's.
    private var requestBody = BodyRelay(framing: .none, rechunk: false)
    private var stream = SocketStream(writable: true)
    /// The client reset the connection: nothing can be delivered any more.
    private var failed = false
    /// The pool this request is counted in flight for (nil: not counted).
    private var inflightPool: PoolID?
    /// Preview connections reach the candidate pool only.
    private let listener: ListenerKind
    private var responseBody = BodyRelay(framing: .none, rechunk: false)
    private var machine = ExchangeMachine()
    /// The client's address, for X-Forwarded-For.
    private let clientAddress: PeerAddress

    /// Room a local response needs in the output buffer.
    private static let localResponseRoom = 512
    private static let lingerMs = 2_000

    init(fd: Int32, worker: ProxyWorker, clientAddress: PeerAddress, listener: ListenerKind = .main, tls: TLSConnection? = nil) {
        self.worker = worker
        self.clientAddress = clientAddress
        self.listener = listener
        parser = RequestHeadParser(limits: worker.settings.http)
        responseParser = ResponseHeadParser(limits: worker.settings.http)
        if let tls { stream = SocketStream(transport: .tls(tls), writable: true) }
        super.init(fd: fd, loop: worker.loop)
    }

    var isIdle: Bool { machine.isAwaitingHead && input.isEmpty && output.isEmpty }

    /// What the machine's decisions need to know about the buffers and sockets now.
    @inline(__always)
    private var facts: ConnectionFacts {
        ConnectionFacts(
            inputEmpty: input.isEmpty, outputEmpty: output.isEmpty, clientWritable: stream.writable,
            requestFinished: requestBody.isFinished,
            upstream: upstream.map {
                UpstreamFacts(connecting: $0.phase == .connecting, stalledOnWrite: !$0.output.isEmpty && !$0.writable)
            },
            draining: worker.endsKeepAlive)
    }

    override func handle(events: UInt32) {
        stream.note(readable: events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup | Epoll.error) != 0,
                    writable: events & Epoll.writable != 0,
                    hangup: events & (Epoll.peerHangup | Epoll.hangup) != 0)
        drive()
    }

    // MARK: The driver

    func drive() {
        var anyProgress = false
        while !machine.isClosed {
            var progressed = false
            if failed {
                close()
                return
            }
            switch machine.state {
            case .awaitingHead:
                progressed = readClient()
                if processHead() { progressed = true }
            case .proxying:
                if !requestBody.isFinished, readClient() { progressed = true }
                if pumpRequest() { progressed = true }
                if machine.isProxying, pumpResponse() { progressed = true }
            case .tunnel:
                progressed = pumpTunnel()
            case .closing:
                progressed = linger()
            case .closed:
                return
            }
            if flushClient() { progressed = true }
            if !progressed { break }
            anyProgress = true
        }
        guard !machine.isClosed else { return }
        if input.isEmpty, !isTunnel { loop.buffers.release(&input) }
        if output.isEmpty { loop.buffers.release(&output) }
        armDeadline(progressed: anyProgress)
    }

    private var isTunnel: Bool { if case .tunnel = machine.state { return true } else { return false } }

    private func armDeadline(progressed: Bool) {
        // The facts a deadline depends on only (no drain flag: an atomic load per event saved).
        let deadlineFacts = ConnectionFacts(
            inputEmpty: input.isEmpty, requestFinished: requestBody.isFinished,
            upstream: upstream.map { UpstreamFacts(connecting: $0.phase == .connecting) })
        guard let (kind, restart) = machine.deadlineToArm(progressed: progressed, armed: deadline != 0, facts: deadlineFacts) else {
            return
        }
        let timeouts = worker.settings.timeouts
        if restart { deadline = 0 }
        switch kind {
        case .clientIdle where !stream.established:
            // A TLS handshake in progress: its own deadline, counted from the accept (bytes of
            // a slow handshake are no progress, so it is never extended).
            if deadline == 0 { setDeadline(after: worker.tlsHandshakeTimeoutMs) }
        case .clientIdle: setDeadline(after: timeouts.clientIdleMs)
        case .clientHeader: setDeadline(after: timeouts.clientHeaderMs)
        case .connect: setDeadline(after: timeouts.connectMs)
        case .upstreamHeader: setDeadline(after: timeouts.upstreamHeaderMs)
        case .clientBody: setDeadline(after: timeouts.clientBodyMs)
        }
    }

    override func deadlineReached() {
        switch machine.deadlinePassed(facts) {
        case .none:
            return
        case .close:
            if !stream.established { worker.tlsHandshakeFailed(.timeout) }
            close()
        case .answerHeadTimeout:
            rejectHead(status: 408, message: "request head not received in time")
        case .upstreamConnectTimedOut:
            upstream?.failed = true
            upstreamFailed(reason: "connect timeout", kind: .connectFailure)
        case .upstreamHeadTimedOut:
            if let upstream { noteUpstreamFailure(.timeout, upstream) }
            closeUpstream()
            failExchange(status: 504, message: "upstream did not answer in time", error: .timeout)
        case .abort(let status, let error, let termination, let blameUpstream):
            if blameUpstream, let upstream { noteUpstreamFailure(.timeout, upstream) }
            // A client that stopped sending or reading is reset, not flushed to: no second
            // `client_body` for a final flush, and no orphaned socket holding its unread bytes.
            abort(status: status, error: error, termination: termination, reset: termination == .clientTimeout)
        case .reset:
            resetAndClose()
        }
        drive()
    }

    /// Closes with RST (SO_LINGER 0): the kernel frees what the client never read.
    private func resetAndClose() {
        Posix.resetOnClose(fd)
        close()
    }

    // MARK: Client socket

    /// Reads what the client sent. Returns true when something changed (bytes or EOF).
    private func readClient() -> Bool {
        guard stream.readable, !stream.peerClosed else { return false }
        loop.buffers.acquire(into: &input)
        input.compactIfNeeded(minimumSpace: input.capacity / 4)
        let wasEstablished = stream.established
        let result = stream.read(fd, into: &input)
        if !wasEstablished && stream.established { worker.tlsHandshakeFinished(stream) }
        switch result {
        case .bytes, .endOfStream, .handshakeDone:
            return true
        case .nothing:
            return false
        case .failed:
            if !stream.established { worker.tlsHandshakeFailed(stream.tlsFailure ?? .peerClosed) }
            failed = true
            stream.peerClosed = true
            return true
        }
    }

    /// Writes queued response bytes. Returns true when bytes left or the connection failed.
    private func flushClient() -> Bool {
        guard stream.writable, !output.isEmpty, !failed else { return false }
        switch stream.write(fd, from: &output) {
        case .wrote:
            return true
        case .nothing:
            return false
        case .failed:
            failed = true
            close()
            return true
        }
    }

    // MARK: Request head

    private func processHead() -> Bool {
        if input.isEmpty {
            if stream.peerClosed || worker.closesIdleConnections {
                // Finish sending what is queued (a half-closed client still gets its responses).
                if output.isEmpty { close() } else { startClosing() }
                return true
            }
            return false
        }
        // Parse the next request only when its answer could be queued: pipelined requests are
        // parsed ahead a bounded amount, and a local response (404, 503…) is never dropped.
        if output.hasStorage && !output.isEmpty {
            output.compactIfNeeded(minimumSpace: Self.localResponseRoom)
            if output.spaceAtEnd < Self.localResponseRoom { return false }
        }
        switch parser.parse(input.readableBytes, fields: loop.fields) {
        case .needMore:
            if stream.peerClosed {
                close()  // the client gave up in the middle of a head: nothing to answer
                return true
            }
            if headFirstByteNs == 0 { headFirstByteNs = loop.nowNs }
            return false
        case .invalid(let error):
            parser.reset()
            rejectHead(status: error.status, message: error.reason)
            return true
        case .complete(let head, let consumed):
            parser.reset()
            let startedNs = headFirstByteNs != 0 ? headFirstByteNs : loop.nowNs
            headFirstByteNs = 0
            startExchange(head, consumed: consumed, startedNs: startedNs)
            return true
        }
    }

    /// A head that cannot be served (invalid, or not received in time): answered, then closed.
    private func rejectHead(status: Int, message: StaticString) {
        input.consume(input.count)
        record = ExchangeRecord(startedNs: headFirstByteNs != 0 ? headFirstByteNs : loop.nowNs)
        requestBody = BodyRelay(framing: .none, rechunk: false)
        responseBody = BodyRelay(framing: .none, rechunk: false)
        headFirstByteNs = 0
        machine.headRejected()
        respondLocally(status: status, message: message, keepAlive: false)
    }

    private func startExchange(_ head: RequestHead, consumed: Int, startedNs: Int64) {
        let source = input.readableBytes
        record = ExchangeRecord(startedNs: startedNs)
        record.headBytesIn = Int32(truncatingIfNeeded: consumed)
        requestBody = BodyRelay(framing: .none, rechunk: false)
        responseBody = BodyRelay(framing: .none, rechunk: false)
        machine.headReceived(
            RequestFacts(method: head.method, version: head.version, keepAlive: head.keepAlive,
                         upgradeRequested: !head.upgrade.isEmpty, hasBody: head.hasBody),
            draining: worker.endsKeepAlive)
        let routing = worker.currentRouting()
        let id = worker.nextRequestID()

        let authority = UnsafeRawBufferPointer(rebasing: source[head.authority.lowerBound..<head.authority.upperBound])
        if let log = worker.accessLog { beginAccessRecord(log, head: head, source: source, authority: authority, id: id) }
        var path = UnsafeRawBufferPointer(rebasing: source[head.path.lowerBound..<head.path.upperBound])
        if path.first != 0x2F { path = Self.rootPath }  // absolute-form without a path, or "*"
        let keepAliveIfBodiless = machine.request.keepAlive && !head.hasBody
        if listener == .redirect {
            input.consume(consumed)
            redirectToHTTPS(authority: authority, target: path, keepAlive: keepAliveIfBodiless)
            return
        }
        guard let appIndex = routing.matcher.match(authority: authority, path: path) else {
            input.consume(consumed)
            respondLocally(status: 404, message: "no app is configured for this host and path", keepAlive: keepAliveIfBodiless)
            return
        }
        let decision = routing.apps[appIndex].choose(
            RoutingRequest(source: source, fields: loop.fields, fieldCount: head.fieldCount, clientAddress: clientAddress,
                           listener: listener),
            newID: worker.nextStickyID)
        let pool = decision.pool
        newStickyID = decision.newStickyID
        record.stats = pool.stats
        if case .contentLength(let length) = head.framing, let maxBody = worker.settings.limits.maxBody,
           length > UInt64(maxBody) {
            input.consume(consumed)
            respondLocally(status: 413, message: "request body exceeds max_body", keepAlive: false)
            return
        }
        guard let server = pool.next() else {
            input.consume(consumed)
            respondLocally(status: 503, message: listener == .preview ? "no healthy preview server" : "no server available in the active pool",
                           keepAlive: keepAliveIfBodiless)
            return
        }
        record.serverID = Int32(truncatingIfNeeded: server.id)
        let upstream: UpstreamConnection
        switch acquireUpstream(server, pool: pool.pool, app: pool.app) {
        case .connection(let connection):
            upstream = connection
        case .serverFailed:
            input.consume(consumed)
            pool.stats.upstreamFailed(serverID: server.id, kind: .connectFailure)
            respondLocally(status: 502, message: "could not connect to an upstream server", keepAlive: keepAliveIfBodiless,
                           error: .connectFailure)
            return
        case .localResources:
            // The proxy's own shortage: not the server's failure, not the color's 5xx. The
            // request is recorded apart (no app figures), and the client told what happened.
            input.consume(consumed)
            record.stats = nil
            worker.counters.localResourceFailed()
            respondLocally(status: 503, message: "the proxy is out of descriptors or memory; try again", keepAlive: false)
            return
        }
        loop.buffers.acquire(into: &upstream.output)
        var writer = ByteWriter(upstream.output.writableBytes)
        clientAddress.withText { address in
            server.hostHeader.withUnsafeBytes { fallbackHost in
                RequestHeadWriter.write(
                    head, source: source, fields: loop.fields,
                    context: ForwardingContext(clientAddress: address, scheme: stream.transport.isTLS ? "https" : "http", generatedRequestID: id,
                                               fallbackHost: fallbackHost),
                    into: &writer)
            }
        }
        input.consume(consumed)
        if writer.overflowed {
            upstream.owner = nil
            if upstream.reused { worker.upstreamPool.park(upstream) } else { upstream.close() }
            respondLocally(status: 431, message: "request head too large", keepAlive: false)
            return
        }
        upstream.output.end += writer.count
        headLength = Int32(truncatingIfNeeded: writer.count)
        if listener == .main, routing.apps[appIndex].selectsForMirror(pool) {
            startMirror(routing.apps[appIndex], head: head, source: source, consumed: consumed, primary: server, requestID: id,
                        headBytes: UnsafeRawBufferPointer(rebasing: upstream.output.readableBytes[0..<writer.count]))
        }
        requestBody = BodyRelay(framing: head.framing, rechunk: true)
        responseParser.reset()
        upstream.owner = self
        self.upstream = upstream
        self.pool = pool
        beginInflight(pool.pool)
        machine.routed()
    }

    // MARK: Mirroring

    /// Copies this request to a candidate server (and, with noise on, to a second stable
    /// server) when it qualifies: an allowed method, a body that came whole with the head and
    /// fits `mirror_max_body` and one buffer, and room under `mirror_max_inflight`. What does
    /// not qualify is counted, never delayed.
    private func startMirror(_ app: LocalApp, head: RequestHead, source: UnsafeRawBufferPointer, consumed: Int,
                             primary: ServerEntry, requestID: (UInt64, UInt64), headBytes: UnsafeRawBufferPointer) {
        let stats = app.shadowStats
        let second = loop.nowNs / 1_000_000_000
        // A protocol upgrade is not copied: the candidate would open a real session.
        guard head.upgrade.isEmpty,
              app.mirrorsMethod(UnsafeRawBufferPointer(rebasing: source[head.methodName.lowerBound..<head.methodName.upperBound])) else {
            return stats.count(\.skippedMethod, atSecond: second)
        }
        var bodyLength = 0
        switch head.framing {
        case .none:
            break
        case .contentLength(let length):
            guard length <= UInt64(app.mirror.maxBody), consumed + Int(length) <= source.count else {
                return stats.count(\.skippedBody, atSecond: second)
            }
            bodyLength = Int(length)
        case .chunked, .untilClose:
            return stats.count(\.skippedBody, atSecond: second)
        }
        // The copy is the head, the mark and the body in one buffer; a head that nearly fills
        // its own buffer leaves no room for the mark (every framing, bodiless ones too).
        guard headBytes.count + Self.mirrorMark.utf8CodeUnitCount + bodyLength <= worker.settings.bufferSize else {
            return stats.count(\.skippedBody, atSecond: second)
        }
        guard stats.inflight < app.mirror.maxInflight else { return stats.count(\.dropped, atSecond: second) }
        guard let candidate = app.candidatePool.next() else { return stats.count(\.candidateFailed, atSecond: second) }
        var noiseServer: ServerEntry? = nil
        if app.mirror.noise, let other = app.stablePool.next(excluding: primary.id), other.id != primary.id {
            noiseServer = other
        }
        let comparison = ShadowComparison(stats: stats, names: app.shadowNames, ignored: app.mirrorIgnored,
                                          expectsNoise: noiseServer != nil, startedNs: loop.nowNs)
        let body = UnsafeRawBufferPointer(rebasing: source[consumed..<(consumed + bodyLength)])
        stats.count(\.mirrored, atSecond: second)
        shadow = comparison
        comparison.candidateServer = (candidate.id, app.policy.candidate)
        if let log = worker.accessLog {
            let slot = log.claim()
            if slot >= 0 {
                func bytes(_ range: ByteRange) -> UnsafeRawBufferPointer {
                    UnsafeRawBufferPointer(rebasing: source[range.lowerBound..<range.upperBound])
                }
                clientAddress.withText { client in
                    log.fillRequest(slot, method: bytes(head.methodName), host: bytes(head.authority), target: bytes(head.target),
                                    requestID: bytes(head.requestID), generatedID: requestID, client: client)
                }
                comparison.log = (log, slot, stats.appID)
            }
        }
        if !launchCopy(.candidate, to: candidate, pool: app.policy.candidate, comparison: comparison, app: app,
                       method: head.method, headBytes: headBytes, body: body) {
            comparison.copyFinished(.candidate, nil, atNanoseconds: loop.nowNs)
        }
        if let noiseServer, !launchCopy(.noise, to: noiseServer, pool: app.policy.stable, comparison: comparison, app: app,
                                        method: head.method, headBytes: headBytes, body: body) {
            comparison.copyFinished(.noise, nil, atNanoseconds: loop.nowNs)
        }
    }

    private func launchCopy(_ role: ShadowComparison.Role, to server: ServerEntry, pool: PoolID, comparison: ShadowComparison,
                            app: LocalApp, method: HTTPMethod, headBytes: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer) -> Bool {
        guard case .connection(let connection) = acquireUpstream(server, pool: pool, app: app.name, forCopy: true) else { return false }
        loop.buffers.acquire(into: &connection.output)
        guard connection.output.spaceAtEnd >= headBytes.count - 2 + Self.mirrorMark.utf8CodeUnitCount + body.count else {
            connection.close()  // checked by the caller; never write past a buffer
            return false
        }
        // The primary's head, with the mark every copy carries before its blank line.
        connection.output.append(UnsafeRawBufferPointer(rebasing: headBytes[0..<(headBytes.count - 2)]))
        connection.output.append(UnsafeRawBufferPointer(start: Self.mirrorMark.utf8Start, count: Self.mirrorMark.utf8CodeUnitCount))
        if !body.isEmpty { connection.output.append(body) }
        MirrorExchange(worker: worker, comparison: comparison, role: role, upstream: connection, method: method).drive()
        return true
    }

    private static let mirrorMark: StaticString = "X-Cutover-Mirror: 1\r\n\r\n"

    /// The primary exchange ended: compared when it finished with a response, else counted as
    /// not comparable.
    private func settleShadow(finished: Bool) {
        guard let comparison = shadow else { return }
        shadow = nil
        let now = loop.nowNs
        var side = finished ? comparison.primaryHead : nil
        side?.bodyHash = comparison.primaryDigest
        side?.bodyLength = responseBody.transferred
        side?.micros = UInt64(max(0, now - comparison.startedNs) / 1_000)
        comparison.primaryFinished(side, atNanoseconds: now)
    }

    private static let rootPathStorage: StaticString = "/"
    private static var rootPath: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: rootPathStorage.utf8Start, count: 1)
    }

    enum Acquired {
        case connection(UpstreamConnection)
        /// The server (or the network to it) failed the connect.
        case serverFailed
        /// The proxy had no descriptor or memory for a socket: the server was never tried.
        case localResources
    }

    /// An idle connection to `server`, or a new one. A failed connect counts against the
    /// server's passive health only for live requests (`forCopy` false): a mirrored copy never
    /// marks a server down. A local shortage (EMFILE, ENFILE, ENOBUFS, ENOMEM) never does.
    private func acquireUpstream(_ server: ServerEntry, pool: PoolID, app: String, forCopy: Bool = false) -> Acquired {
        let tls = worker.upstreamTLS(app: app, server: server)
        if let idle = worker.upstreamPool.take(serverID: server.id) {
            // Same TLS target or both plain: the same SNI, verification and settings.
            if idle.tlsTarget === tls { return .connection(idle) }
            idle.close()  // made for another app's `upstream_tls`, or settings a reload replaced
        }
        do {
            return .connection(try UpstreamConnection.connect(
                to: server, pool: pool, loop: loop, idlePool: worker.upstreamPool, counters: worker.counters, tls: tls))
        } catch {
            if error.isLocalShortage {
                worker.log(.warning, "no upstream connection to \(server.name): \(error) (the proxy's own limit, not the server's failure)")
                return .localResources
            }
            worker.log(.warning, "connect to \(server.name) failed: \(error)")
            if !forCopy { worker.counters.connectFailed(serverID: server.id) }
            return .serverFailed
        }
    }

    /// A connection between requests (or one that has sent nothing yet) holding no buffer and
    /// no upstream: what may be closed at `max_connections` to admit a new client.
    var isReusable: Bool {
        guard case .awaitingHead = machine.state else { return false }
        return input.isEmpty && output.isEmpty && upstream == nil && stream.established
    }

    /// Since when (loop ms) a reusable connection has been idle, read back from its deadline:
    /// one that never sent a request waits under `client_header` from its accept, one between
    /// requests under `client_idle` from its last response. nil: accepted less than a second
    /// ago (its first request may be on its way).
    var idleSinceMs: Int64? {
        let timeouts = worker.settings.timeouts
        if record.startedNs == 0 {
            let accepted = deadline - Int64(timeouts.clientHeaderMs)
            return loop.now - accepted < 1_000 ? nil : accepted
        }
        return deadline - Int64(timeouts.clientIdleMs)
    }

    /// Counts this request in flight for its pool until it ends, however it ends.
    private func beginInflight(_ pool: PoolID) {
        inflightPool = pool
        worker.counters.add(1, .inflight(pool), loop: loop.index)
    }

    private func endInflight() {
        guard let pool = inflightPool else { return }
        inflightPool = nil
        worker.counters.add(-1, .inflight(pool), loop: loop.index)
    }

    // MARK: Request body and upstream writes

    private func pumpRequest() -> Bool {
        guard let upstream else { return false }
        var progressed = false
        if !requestBody.isFinished && upstream.output.hasStorage {
            switch requestBody.move(from: &input, to: &upstream.output) {
            case .progressed, .finished:
                progressed = true
            case .blocked:
                break
            case .invalid(let reason):
                closeUpstream()
                failExchange(status: 400, message: reason, error: nil)
                return true
            }
            if let maxBody = worker.settings.limits.maxBody, requestBody.transferred > UInt64(maxBody) {
                closeUpstream()
                failExchange(status: 413, message: "request body exceeds max_body", error: nil)
                return true
            }
            if !requestBody.isFinished && stream.peerClosed && input.isEmpty {
                // An incomplete body never becomes a complete request upstream.
                abort(status: 499, termination: .clientClosed)
                return true
            }
        }
        if upstream.phase == .open && !upstream.output.isEmpty && upstream.writable {
            let before = upstream.output.count
            _ = upstream.flush()
            if upstream.output.count != before { progressed = true }
        }
        if record.requestSentNs == 0 && requestBody.isFinished && upstream.phase == .open && upstream.output.isEmpty {
            record.requestSentNs = loop.nowNs
        }
        return progressed
    }

    // MARK: Response

    private func pumpResponse() -> Bool {
        guard let upstream else { return false }
        var progressed = upstream.readAvailable() > 0
        if !machine.responseHeadReceived {
            if upstream.input.isEmpty {
                if upstream.failed || upstream.peerClosed {
                    if upstream.phase == .connecting {
                        upstreamFailed(reason: "connect failed", kind: .connectFailure)
                    } else {
                        upstreamFailed(reason: "connection closed", kind: .reset)
                    }
                    return true
                }
                return progressed
            }
            if processResponseHead(upstream) { progressed = true }
            // Relay body bytes that arrived with the head in the same pass, so head and body
            // leave in one write.
            guard machine.responseHeadReceived, machine.isProxying, self.upstream === upstream else { return progressed }
        }
        loop.buffers.acquire(into: &output)
        let moved = shadow.map { responseBody.move(from: &upstream.input, to: &output, digest: &$0.primaryDigest) }
            ?? responseBody.move(from: &upstream.input, to: &output)
        switch moved {
        case .progressed:
            progressed = true
        case .finished:
            finishExchange()
            return true
        case .blocked:
            break
        case .invalid:
            // The head went out already: the client must see a truncated response.
            noteUpstreamFailure(.invalidResponse, upstream)
            abort(status: 502, error: .invalidResponse)
            return true
        }
        if upstream.input.isEmpty && (upstream.peerClosed || upstream.failed) {
            if !upstream.failed && responseBody.sourceEnded() {
                finishExchange()
            } else {
                noteUpstreamFailure(.reset, upstream)
                abort(status: 502, error: .reset)
            }
            return true
        }
        return progressed
    }

    private func processResponseHead(_ upstream: UpstreamConnection) -> Bool {
        switch responseParser.parse(upstream.input.readableBytes, requestMethod: machine.request.method, fields: loop.fields) {
        case .needMore:
            if upstream.peerClosed || upstream.failed {
                noteUpstreamFailure(.reset, upstream)
                closeUpstream()
                failExchange(status: 502, message: "upstream closed the connection mid-response", error: .reset)
                return true
            }
            return false
        case .invalid(let error):
            worker.log(.warning, "invalid response from \(upstream.server.name): \(error.reason)")
            noteUpstreamFailure(.invalidResponse, upstream)
            closeUpstream()
            failExchange(status: 502, message: "upstream sent an invalid response", error: .invalidResponse)
            return true
        case .complete(let head, let consumed):
            return acceptResponseHead(head, consumed: consumed, upstream: upstream)
        }
    }

    private func acceptResponseHead(_ head: ResponseHead, consumed: Int, upstream: UpstreamConnection) -> Bool {
        let source = upstream.input.readableBytes
        switch machine.responseHead(status: head.status, framing: head.framing, requestFinished: requestBody.isFinished,
                                    draining: worker.endsKeepAlive) {
        case .interim(let forward):
            if forward {
                guard writeResponseHead(head, source: source, framing: .none, keepAlive: true) else { return false }
                machine.interimForwarded(status: head.status)
            }
            upstream.input.consume(consumed)
            responseParser.reset()
            return true
        case .rejectSwitch:
            noteUpstreamFailure(.invalidResponse, upstream)
            closeUpstream()
            failExchange(status: 502, message: "upstream switched protocols unasked", error: .invalidResponse)
            return true
        case .startTunnel:
            guard writeResponseHead(head, source: source, framing: .none, keepAlive: true) else { return false }
            upstream.input.consume(consumed)
            record.responseHead(status: head.status, serverID: upstream.server.id, nowNs: loop.nowNs)
            machine.tunnelStarted()
            recordExchange()  // a tunnel is recorded when it opens; its bytes are not counted
            requestBody = BodyRelay(framing: .untilClose, rechunk: false)
            responseBody = BodyRelay(framing: .untilClose, rechunk: false)
            return true
        case .forward(let framing, let keepAlive):
            guard writeResponseHead(head, source: source, framing: framing, keepAlive: keepAlive) else { return false }
            if let shadow {
                shadow.primaryHead = ShadowSide(status: UInt16(head.status),
                                                headers: ShadowSide.headers(head, source: source, fields: loop.fields,
                                                                            ignored: shadow.ignored, names: shadow.names),
                                                bodyHash: 0, bodyLength: 0, micros: 0)
            }
            upstream.input.consume(consumed)
            record.responseHead(status: head.status, serverID: upstream.server.id, nowNs: loop.nowNs)
            machine.finalHeadForwarded(keepAlive: keepAlive, upstreamReusable: head.reusable)
            responseBody = BodyRelay(framing: head.framing, rechunk: framing == .chunked)
            if responseBody.isFinished {
                finishExchange()
            }
            return true
        }
    }

    /// Queues a response head for the client. False when there is no room yet (the previous
    /// bytes are still being flushed); the head is then written on a later pass.
    private func writeResponseHead(
        _ head: ResponseHead, source: UnsafeRawBufferPointer, framing: ClientFraming, keepAlive: Bool
    ) -> Bool {
        loop.buffers.acquire(into: &output)
        output.compactIfNeeded(minimumSpace: output.capacity)
        var writer = ByteWriter(output.writableBytes)
        // Not on a 304: a shared cache would hand the stored response's id to everyone.
        if newStickyID != 0, !head.isInformational, head.status != 101, head.status != 304, let cookie = pool?.stickyCookie {
            cookie.name.withUnsafeBytes { name in
                ResponseHeadWriter.write(head, source: source, fields: loop.fields, framing: framing, keepAlive: keepAlive,
                                         clientVersion: machine.request.version,
                                         stickyCookie: StickyCookieField(name: name, id: newStickyID, maxAgeSeconds: cookie.maxAge),
                                         into: &writer)
            }
        } else {
            ResponseHeadWriter.write(head, source: source, fields: loop.fields, framing: framing,
                                     keepAlive: keepAlive, clientVersion: machine.request.version, into: &writer)
        }
        if writer.overflowed {
            // Parse the head again on a later pass, from its start.
            responseParser.reset()
            if output.isEmpty {
                if let upstream { noteUpstreamFailure(.invalidResponse, upstream) }
                closeUpstream()
                failExchange(status: 502, message: "upstream response head too large", error: .invalidResponse)
            }
            return false
        }
        output.end += writer.count
        record.headBytesOut &+= Int32(truncatingIfNeeded: writer.count)
        return true
    }

    private func finishExchange() {
        settleShadow(finished: true)
        recordExchange()
        endInflight()
        let (mayPark, keepAlive) = machine.responseFinished(requestFinished: requestBody.isFinished, draining: worker.endsKeepAlive)
        if let upstream {
            self.upstream = nil
            // Nothing unread may be left (checked last: it may read the socket).
            if mayPark && upstream.isCleanForReuse() {
                worker.upstreamPool.park(upstream)
            } else {
                upstream.close()
            }
        }
        pool = nil
        if keepAlive {
            machine.exchangeEnded(keepAlive: true)
        } else {
            startClosing()
        }
    }

    // MARK: Failures and retries

    /// The upstream failed before any response byte arrived: retried on another server of the
    /// same pool when `RetryPolicy` allows and one is available, else answered with a 502.
    private func upstreamFailed(reason: StaticString, kind: WindowedStats.Outcome) {
        guard let failedUpstream = upstream, let pool else { return }
        noteUpstreamFailure(kind, failedUpstream)
        let attempt = RetryPolicy.FailedAttempt(bytesSent: failedUpstream.bytesSent, reused: failedUpstream.reused,
                                                serverID: failedUpstream.server.id)
        if RetryPolicy.isConnectFailure(attempt) {
            worker.counters.connectFailed(serverID: failedUpstream.server.id)
        }
        // A server that failed a fresh connection is not retried at once: another server of the
        // pool, or the 502 (three connects to one refusing server only tripled the wait).
        if case .retry(let excluding, let headOnly) = machine.retryDecision(attempt),
           let server = pool.next(excluding: excluding ?? -1, strictly: excluding != nil),
           case .connection(let next) = acquireUpstream(server, pool: pool.pool, app: pool.app) {
            worker.log(.info, "retrying request on \(server.name) after \(reason) on \(failedUpstream.server.name)")
            // The request bytes still sit in the failed connection's output buffer.
            var requestBytes = failedUpstream.output
            if headOnly {
                requestBytes.start = 0
                requestBytes.end = Int(headLength)
            }
            failedUpstream.output = IOBuffer()
            closeUpstream()
            loop.buffers.release(&next.output)
            next.output = requestBytes
            next.owner = self
            upstream = next
            machine.retryStarted()
            record.requestSentNs = 0
            record.serverID = Int32(truncatingIfNeeded: server.id)
            return
        }
        if let tlsFailure = failedUpstream.tlsFailure {
            worker.log(.warning, "upstream \(failedUpstream.server.name): \(reason): \(tlsFailure)")
        } else {
            worker.log(.warning, "upstream \(failedUpstream.server.name): \(reason)")
        }
        closeUpstream()
        failExchange(status: 502, message: "upstream connection failed", error: kind)
    }

    /// Ends the exchange with a local error response if none started yet, else aborts.
    /// `error` is the upstream failure behind it (nil: the client's fault, 400/413).
    private func failExchange(status: Int, message: StaticString, error: WindowedStats.Outcome?) {
        pool = nil
        endInflight()
        switch machine.exchangeFailed(requestFinished: requestBody.isFinished) {
        case .abort:
            abort(status: status, error: error)
        case .answer(let keepAlive):
            respondLocally(status: status, message: message, keepAlive: keepAlive, error: error)
        }
    }

    // MARK: Recording

    /// Counts a failure against the server (every attempt, also one retried elsewhere).
    private func noteUpstreamFailure(_ kind: WindowedStats.Outcome, _ upstream: UpstreamConnection) {
        record.stats?.upstreamFailed(serverID: upstream.server.id, kind: kind)
    }

    /// Records the request once, however it ended: its app and pool figures, or the unrouted
    /// counts for a request that matched no app. `error` names the upstream failure the client
    /// was answered for or cut off by.
    private func recordExchange(error: WindowedStats.Outcome? = nil) {
        settleShadow(finished: false)  // any end but a finished response: nothing to compare
        guard !record.recorded else { return }
        record.recorded = true
        let now = loop.nowNs
        let sample = record.sample(error: error, requestBodyBytes: requestBody.transferred,
                                   responseBodyBytes: responseBody.transferred, nowNs: now)
        if let stats = record.stats {
            stats.record(sample, atNanoseconds: now)
        } else {
            worker.metrics.recordUnrouted(status: Int(record.status))
        }
        if let log = worker.accessLog { finishAccessRecord(log, sample: sample, error: error, now: now) }
    }

    /// Copies the request's fields into an access-log record (only when the log is on).
    private func beginAccessRecord(_ log: AccessLogRing, head: RequestHead, source: UnsafeRawBufferPointer,
                                   authority: UnsafeRawBufferPointer, id: (UInt64, UInt64)) {
        let slot = log.claim()
        record.logSlot = slot >= 0 ? slot : -2  // -2: no free slot, the line is counted as dropped
        guard slot >= 0 else { return }
        func bytes(_ range: ByteRange) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: source[range.lowerBound..<range.upperBound])
        }
        clientAddress.withText { client in
            log.fillRequest(slot, method: bytes(head.methodName), host: authority, target: bytes(head.target),
                            requestID: bytes(head.requestID), generatedID: id, client: client)
        }
        if listener != .main { log.markListener(slot, listener) }
        if case .tls(let connection) = stream.transport {
            log.markTLS(slot, version: connection.versionName, cipher: connection.cipherName)
        }
    }

    private func finishAccessRecord(_ log: AccessLogRing, sample: RequestSample, error: WindowedStats.Outcome?, now: Int64) {
        var slot = record.logSlot
        record.logSlot = -1
        if slot == -1 {
            // A request answered before it could be parsed (400, 408): a line without its fields.
            slot = log.claim()
            guard slot >= 0 else { return }
            clientAddress.withText { log.clearRequest(slot, client: $0) }
        }
        guard slot >= 0 else { return }
        log.finish(slot, endNs: now, sample: sample, error: error, termination: record.termination, serverID: Int(record.serverID),
                   appID: record.stats?.appID ?? -1, pool: record.stats?.pool)
    }

    private func closeUpstream() {
        guard let upstream else { return }
        self.upstream = nil
        upstream.close()
    }

    /// Ends everything at once: the client sees the connection close (and a truncated body if a
    /// response was under way — never an invented final chunk).
    /// `status` is what the request is recorded with when no response started (499: the
    /// client left; 408: it stalled; 502/504: the upstream failed); `error` the upstream failure
    /// behind the abort, `termination` the client's or the proxy's part in it.
    private func abort(status: Int, error: WindowedStats.Outcome? = nil, termination: Termination = .none, reset: Bool = false) {
        if !record.recorded {
            record.cutShort(status: status, responseStarted: machine.finalResponseStarted, termination: termination)
            recordExchange(error: error)
        }
        endInflight()
        closeUpstream()
        if reset {
            resetAndClose()
        } else if machine.aborted() {
            // Deliver what was already queued, then close: truncation stays visible.
            startClosing()
        } else {
            close()
        }
    }

    // MARK: Local responses and closing

    private func respondLocally(status: Int, message: StaticString, keepAlive requestedKeepAlive: Bool,
                                error: WindowedStats.Outcome? = nil) {
        // Decided before the head is written: a drain that began during the exchange must be
        // announced by `Connection: close`, not by a silent close after it.
        let keepAlive = machine.localAnswerKeepsAlive(requested: requestedKeepAlive, draining: worker.endsKeepAlive)
        loop.buffers.acquire(into: &output)
        output.compactIfNeeded(minimumSpace: Self.localResponseRoom)
        var writer = ByteWriter(output.writableBytes)
        LocalResponse.write(status: status, message: message, close: !keepAlive, into: &writer)
        guard !writer.overflowed else {
            // No room behind what the client has not read yet (forwarded 1xx heads): it sees
            // the connection close. Recorded as the answer it should have had.
            record.status = UInt16(status)
            recordExchange(error: error)
            close()
            return
        }
        output.end += writer.count
        record.headBytesOut &+= Int32(truncatingIfNeeded: writer.count)
        record.status = UInt16(status)
        recordExchange(error: error)
        machine.answeredLocally(keepAlive: keepAlive)
        if !keepAlive { startClosing() }
    }

    /// `redirect_http`: the same URL in https, on the first TLS listener's port.
    private func redirectToHTTPS(authority: UnsafeRawBufferPointer, target: UnsafeRawBufferPointer, keepAlive requestedKeepAlive: Bool) {
        let host = LocalResponse.hostOfAuthority(authority)
        guard !host.isEmpty else {
            respondLocally(status: 400, message: "a redirect to https needs a Host", keepAlive: false)
            return
        }
        let keepAlive = machine.localAnswerKeepsAlive(requested: requestedKeepAlive, draining: worker.endsKeepAlive)
        loop.buffers.acquire(into: &output)
        output.compactIfNeeded(minimumSpace: output.capacity / 2)
        var writer = ByteWriter(output.writableBytes)
        LocalResponse.writeHTTPSRedirect(host: host, port: worker.httpsPort, target: target,
                                         close: !keepAlive, into: &writer)
        guard !writer.overflowed else {
            record.status = 308
            recordExchange()
            close()
            return
        }
        output.end += writer.count
        record.headBytesOut &+= Int32(truncatingIfNeeded: writer.count)
        record.status = 308
        recordExchange()
        machine.answeredLocally(keepAlive: keepAlive)
        if !keepAlive { startClosing() }
    }

    private func startClosing() {
        machine.startClosing()
        input.consume(input.count)  // nothing after a closing response is processed
        // Flushing the last response is bounded like any write to a slow client; the short
        // linger starts after the half-close.
        deadline = 0
        setDeadline(after: worker.settings.timeouts.clientBodyMs)
    }

    /// Flushes, then half-closes and reads until the client closes (or the linger time ends):
    /// closing with unread input would make the kernel send RST and could destroy the response.
    private func linger() -> Bool {
        guard case .closing(let shutdownSent) = machine.state else { return false }
        if !output.isEmpty {
            return false
        }
        if !shutdownSent {
            machine.writeSideShutDown()
            stream.shutdownWrite(fd)
            deadline = 0
            setDeadline(after: Self.lingerMs)
            return true
        }
        guard stream.readable else { return false }
        loop.buffers.acquire(into: &input)
        input.consume(input.count)
        _ = readClient()
        input.consume(input.count)
        if stream.peerClosed {
            close()
            return true
        }
        return stream.readable
    }

    /// The drain deadline passed with this exchange still running: recorded as the proxy's
    /// doing (503 when nothing was answered yet), then closed.
    func closeAtDrainDeadline() {
        if record.isPending && machine.isProxying {
            record.drainDeadlinePassed(responseStarted: machine.finalResponseStarted)
            recordExchange(error: nil)
        }
        close()
    }

    func close() {
        guard !machine.isClosed else { return }
        settleShadow(finished: false)
        machine.closed()
        if record.isPending {
            // The connection ended mid-exchange: the client reset it (or the drain deadline, see
            // `closeAtDrainDeadline`). A response under way keeps its status.
            record.connectionEnded(responseStarted: machine.finalResponseStarted)
            recordExchange()
        }
        endInflight()
        closeUpstream()
        loop.buffers.release(&input)
        loop.buffers.release(&output)
        stream.releaseTransport()
        loop.closeChannel(self)
        worker.clientClosed()
    }

    // MARK: Tunnel

    private func pumpTunnel() -> Bool {
        guard case .tunnel(let ends) = machine.state else { return false }
        guard let upstream else {
            startClosing()
            return true
        }
        var progressed = readClient()
        loop.buffers.acquire(into: &upstream.output)
        if case .progressed = requestBody.move(from: &input, to: &upstream.output) { progressed = true }
        if upstream.writable && !upstream.output.isEmpty {
            let before = upstream.output.count
            _ = upstream.flush()
            if before != upstream.output.count { progressed = true }
        }
        if upstream.readAvailable() > 0 { progressed = true }
        loop.buffers.acquire(into: &output)
        if case .progressed = responseBody.move(from: &upstream.input, to: &output) { progressed = true }
        if failed || upstream.failed || upstream.writeFailed {
            closeUpstream()
            close()
            return true
        }
        // Each direction ends on its own: a client's FIN is passed on once its bytes were
        // delivered, and the upstream may keep answering until it closes too.
        var upstreamShut = ends.upstreamShut
        var clientShut = ends.clientShut
        if stream.peerClosed && input.isEmpty && upstream.output.isEmpty && !upstreamShut {
            upstreamShut = true
            upstream.shutdownWrite()
            progressed = true
        }
        if upstream.peerClosed && upstream.input.isEmpty && output.isEmpty && !clientShut {
            clientShut = true
            stream.shutdownWrite(fd)
            progressed = true
        }
        machine.tunnelEnded(upstreamShut: upstreamShut, clientShut: clientShut)
        if upstreamShut && clientShut {
            closeUpstream()
            close()
            return true
        }
        return progressed
    }
}
