import CutoverConfig
import CutoverHTTP
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem

/// One client connection and the exchange it is in. Owned by one loop for its whole life.
///
/// Request path (see README "How a request flows"):
///   read head → parse strictly → route by the loop's routing snapshot → take an idle upstream
///   connection (or connect) → write the canonical head (+ body) upstream → read the response
///   head → write the canonical head (+ body) to the client → park the upstream connection →
///   parse the next request.
///
/// `drive()` runs the connection forward until nothing more can happen without a new event. It
/// reads a socket only when its readiness flag is set (edge-triggered epoll) and treats a short
/// read as "drained", so a keep-alive request costs one read and one write per direction.
final class ClientConnection: Channel {
    enum Phase {
        /// Waiting for (more of) a request head. Pipelined bytes may already be buffered.
        case awaitingHead
        /// A request is routed to `upstream`; bodies stream both ways.
        case proxying
        /// After a 101: bytes are relayed both ways until either side closes.
        case tunnel
        /// The last response is being flushed; then write-shutdown and a short lingering read so
        /// the client sees the response rather than a reset.
        case closing
        case closed
    }

    /// Per-request state, reset for every request on the connection. Fields are grouped by
    /// size (Swift keeps declaration order): every idle keep-alive connection carries one.
    struct Exchange {
        var requestBody = BodyRelay(framing: .none, rechunk: false)
        var responseBody = BodyRelay(framing: .none, rechunk: false)

        // What the request is recorded with when it ends (`recordExchange`).
        /// The app and color the request was routed to (nil: it matched no app). Unowned: a
        /// loop keeps its figures for its whole life, and a request must not pay a retain.
        unowned(unsafe) var stats: PoolStats? = nil
        /// Loop time of the first byte of the request head.
        var startedNs: Int64 = 0
        /// Loop time the request (head and body) was fully written upstream (0: not yet).
        var requestSentNs: Int64 = 0
        var upstreamMicros: Int64 = -1
        var serverID: Int32 = -1
        /// The access-log record being filled (-1: none yet; -2: none free, counted as dropped).
        var logSlot: Int32 = -1
        /// Head bytes (at most max_header_bytes, or a local answer's) for the byte counts.
        var headBytesIn: Int32 = 0
        var headBytesOut: Int32 = 0
        /// Length of the rewritten head at the start of the upstream output, to re-send it on a
        /// retry after a stale keep-alive connection failed.
        var headLength: Int32 = 0
        /// The final status sent to the client (0: none yet).
        var status: UInt16 = 0
        var attempts: UInt8 = 0
        var method: HTTPMethod = .get
        var version: HTTPVersion = .http11
        /// The pool this request is counted in flight for (nil: not counted).
        var inflightPool: PoolID? = nil
        /// Why the exchange ended short of its full response, when it did.
        var termination: Termination = .none
        var keepAlive = true
        var upgradeRequested = false
        var requestHasBody = false
        var responseHeadDone = false
        /// A final response head (or a local response) was queued for the client: from then on
        /// a failure can only be shown by closing the connection.
        var finalResponseStarted = false
        var sentContinue = false
        var responseReusable = false
        /// The upstream_header deadline was set for the current upstream attempt.
        var responseDeadlineSet = false
        var recorded = false
    }

    unowned(unsafe) let worker: ProxyWorker
    private let transport: ClientTransport = .plain
    private(set) var phase: Phase = .awaitingHead
    private var input = IOBuffer()
    private var output = IOBuffer()
    private var readable = false
    private var writable = true
    private var peerClosed = false
    /// The client's FIN was reported: the short-read rule no longer applies (no further edge
    /// will announce the end of the stream).
    private var hangupSeen = false
    private var failed = false
    /// The write side toward the client was shut down (closing, or a tunnel's upstream ended).
    private var shutdownSent = false
    /// A tunnel passed the client's FIN on to the upstream.
    private var tunnelUpstreamShut = false
    /// The client's address, for X-Forwarded-For.
    private let clientAddress: PeerAddress
    private var parser: RequestHeadParser
    private var responseParser: ResponseHeadParser
    /// When the first byte of the current request head arrived (0: none yet).
    private var headStartedAt: Int64 = 0
    /// The same, in loop nanoseconds, for the request's recorded latency.
    private var headFirstByteNs: Int64 = 0
    private var exchange = Exchange()
    private var upstream: UpstreamConnection?
    private var pool: LocalPool?

    private static let maxAttempts = 3
    /// Room a local response needs in the output buffer.
    private static let localResponseRoom = 512
    private static let lingerMs = 2_000

    init(fd: Int32, worker: ProxyWorker, clientAddress: PeerAddress) {
        self.worker = worker
        self.clientAddress = clientAddress
        parser = RequestHeadParser(limits: worker.settings.http)
        responseParser = ResponseHeadParser(limits: worker.settings.http)
        super.init(fd: fd, loop: worker.loop)
    }

    var isIdle: Bool { phase == .awaitingHead && input.isEmpty && output.isEmpty }

    package override func handle(events: UInt32) {
        if events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup | Epoll.error) != 0 { readable = true }
        if events & (Epoll.peerHangup | Epoll.hangup) != 0 { hangupSeen = true }
        if events & Epoll.writable != 0 { writable = true }
        drive()
    }

    // MARK: The driver

    func drive() {
        var anyProgress = false
        while phase != .closed {
            var progressed = false
            if failed {
                // The client reset the connection: nothing can be delivered any more.
                close()
                return
            }
            switch phase {
            case .awaitingHead:
                progressed = readClient()
                if processHead() { progressed = true }
            case .proxying:
                if !exchange.requestBody.isFinished, readClient() { progressed = true }
                if pumpRequest() { progressed = true }
                if phase == .proxying, pumpResponse() { progressed = true }
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
        guard phase != .closed else { return }
        if input.isEmpty && phase != .tunnel { loop.buffers.release(&input) }
        if output.isEmpty { loop.buffers.release(&output) }
        updateDeadline(progressed: anyProgress)
    }

    private func updateDeadline(progressed: Bool) {
        let timeouts = worker.settings.timeouts
        switch phase {
        case .awaitingHead:
            if input.isEmpty {
                headStartedAt = 0
                if progressed || deadline == 0 { setDeadline(after: timeouts.clientIdleMs) }
            } else if headStartedAt == 0 {
                // A total deadline for the head (slowloris), not extended by trickled bytes.
                headStartedAt = loop.now
                setDeadline(after: timeouts.clientHeaderMs)
            }
        case .proxying:
            if !exchange.responseHeadDone && exchange.requestBody.isFinished && upstream?.phase != .connecting {
                // upstream_header runs from the end of the request to the final response head,
                // once: interim 1xx answers are progress but must not extend it.
                if !exchange.responseDeadlineSet {
                    exchange.responseDeadlineSet = true
                    deadline = 0
                    setDeadline(after: timeouts.upstreamHeaderMs)
                }
                return
            }
            guard progressed || deadline == 0 else { return }
            if !exchange.responseHeadDone && upstream?.phase == .connecting {
                setDeadline(after: timeouts.connectMs)
            } else {
                setDeadline(after: timeouts.clientBodyMs)
            }
        case .tunnel:
            if progressed || deadline == 0 { setDeadline(after: timeouts.clientIdleMs) }
        case .closing:
            if progressed && !shutdownSent { setDeadline(after: timeouts.clientBodyMs) }
        case .closed:
            break
        }
    }

    package override func deadlineReached() {
        switch phase {
        case .awaitingHead:
            if input.isEmpty {
                close()
            } else {
                input.consume(input.count)
                exchange = Exchange()
                exchange.startedNs = headFirstByteNs != 0 ? headFirstByteNs : loop.nowNs
                headFirstByteNs = 0
                respondLocally(status: 408, message: "request head not received in time", keepAlive: false)
            }
        case .proxying:
            if !exchange.responseHeadDone, let upstream {
                if upstream.phase == .connecting {
                    upstream.failed = true
                    upstreamFailed(reason: "connect timeout", kind: .connectFailure)
                } else if exchange.requestBody.isFinished {
                    noteUpstreamFailure(.timeout, upstream)
                    closeUpstream()
                    failExchange(status: 504, message: "upstream did not answer in time", error: .timeout)
                } else {
                    abort(status: 408, termination: .clientTimeout)  // the client stopped sending its body
                }
            } else if !writable && !output.isEmpty {
                // The client stopped reading the response (its socket buffer is full).
                abort(status: 408, termination: .clientTimeout)
            } else {
                // The upstream stopped sending its body.
                if let upstream { noteUpstreamFailure(.timeout, upstream) }
                abort(status: 504, error: .timeout)
            }
        case .tunnel, .closing:
            close()
        case .closed:
            return
        }
        drive()
    }

    // MARK: Client socket

    /// Reads what the client sent. Returns true when something changed (bytes or EOF).
    private func readClient() -> Bool {
        guard readable, !peerClosed else { return false }
        loop.buffers.acquire(into: &input)
        input.compactIfNeeded(minimumSpace: input.capacity / 4)
        let space = input.spaceAtEnd
        guard space > 0 else { return false }
        switch transport.read(fd, into: input.writableBytes.baseAddress!, count: space) {
        case .endOfStream:
            peerClosed = true
            readable = false
            return true
        case .bytes(let count):
            input.end += count
            if count < space && !hangupSeen { readable = false }
            return true
        case .wouldBlock:
            readable = false
            return false
        case .failed:
            failed = true
            peerClosed = true
            readable = false
            return true
        }
    }

    /// Writes queued response bytes. Returns true when bytes left or the connection failed.
    private func flushClient() -> Bool {
        guard writable, !output.isEmpty, !failed else { return false }
        let pending = output.count
        switch transport.write(fd, from: output.readableBytes.baseAddress!, count: pending) {
        case .written(let count):
            output.consume(count)
            if count < pending { writable = false }
            return true
        case .wouldBlock:
            writable = false
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
            if peerClosed || worker.endsKeepAlive {
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
            if peerClosed {
                close()  // the client gave up in the middle of a head: nothing to answer
                return true
            }
            if headFirstByteNs == 0 { headFirstByteNs = loop.nowNs }
            return false
        case .invalid(let error):
            parser.reset()
            headStartedAt = 0
            input.consume(input.count)
            exchange = Exchange()
            exchange.startedNs = headFirstByteNs != 0 ? headFirstByteNs : loop.nowNs
            headFirstByteNs = 0
            respondLocally(status: error.status, message: error.reason, keepAlive: false)
            return true
        case .complete(let head, let consumed):
            parser.reset()
            headStartedAt = 0  // the next head gets its own client_header deadline
            let startedNs = headFirstByteNs != 0 ? headFirstByteNs : loop.nowNs
            headFirstByteNs = 0
            startExchange(head, consumed: consumed, startedNs: startedNs)
            return true
        }
    }

    private func startExchange(_ head: RequestHead, consumed: Int, startedNs: Int64) {
        let source = input.readableBytes
        exchange = Exchange()
        exchange.startedNs = startedNs
        exchange.headBytesIn = Int32(truncatingIfNeeded: consumed)
        exchange.method = head.method
        exchange.version = head.version
        exchange.keepAlive = head.keepAlive && !worker.endsKeepAlive
        exchange.upgradeRequested = !head.upgrade.isEmpty
        exchange.requestHasBody = head.hasBody
        let routing = worker.currentRouting()
        let id = worker.nextRequestID()

        let authority = UnsafeRawBufferPointer(rebasing: source[head.authority.lowerBound..<head.authority.upperBound])
        if let log = worker.accessLog { beginAccessRecord(log, head: head, source: source, authority: authority, id: id) }
        var path = UnsafeRawBufferPointer(rebasing: source[head.path.lowerBound..<head.path.upperBound])
        if path.first != 0x2F { path = Self.rootPath }  // absolute-form without a path, or "*"
        guard let appIndex = routing.matcher.match(authority: authority, path: path) else {
            input.consume(consumed)
            respondLocally(status: 404, message: "no app is configured for this host and path",
                           keepAlive: exchange.keepAlive && !exchange.requestHasBody)
            return
        }
        let pool = routing.apps[appIndex].choosePool(RoutingRequest(authority: authority, path: path))
        exchange.stats = pool.stats
        if case .contentLength(let length) = head.framing, let maxBody = worker.settings.limits.maxBody,
           length > UInt64(maxBody) {
            input.consume(consumed)
            respondLocally(status: 413, message: "request body exceeds max_body", keepAlive: false)
            return
        }
        guard let server = pool.next() else {
            input.consume(consumed)
            respondLocally(status: 503, message: "no server available in the active pool",
                           keepAlive: exchange.keepAlive && !exchange.requestHasBody)
            return
        }
        exchange.serverID = Int32(truncatingIfNeeded: server.id)
        guard let upstream = acquireUpstream(server, pool: pool.pool) else {
            input.consume(consumed)
            pool.stats.upstreamFailed(serverID: server.id, kind: .connectFailure)
            respondLocally(status: 502, message: "could not connect to an upstream server",
                           keepAlive: exchange.keepAlive && !exchange.requestHasBody, error: .connectFailure)
            return
        }
        loop.buffers.acquire(into: &upstream.output)
        var writer = ByteWriter(upstream.output.writableBytes)
        clientAddress.withText { address in
            server.hostHeader.withUnsafeBytes { fallbackHost in
                RequestHeadWriter.write(
                    head, source: source, fields: loop.fields,
                    context: ForwardingContext(clientAddress: address, scheme: "http", generatedRequestID: id,
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
        exchange.headLength = Int32(truncatingIfNeeded: writer.count)
        exchange.requestBody = BodyRelay(framing: head.framing, rechunk: true)
        exchange.attempts = 1
        responseParser.reset()
        upstream.owner = self
        self.upstream = upstream
        self.pool = pool
        beginInflight(pool.pool)
        phase = .proxying
    }

    private static let rootPathStorage: StaticString = "/"
    private static var rootPath: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: rootPathStorage.utf8Start, count: 1)
    }

    private func acquireUpstream(_ server: ServerEntry, pool: PoolID) -> UpstreamConnection? {
        if let idle = worker.upstreamPool.take(serverID: server.id) { return idle }
        do {
            return try UpstreamConnection.connect(
                to: server, pool: pool, loop: loop, idlePool: worker.upstreamPool, counters: worker.counters)
        } catch {
            worker.log(.warning, "connect to \(server.name) failed: \(error)")
            worker.counters.connectFailed(serverID: server.id)
            return nil
        }
    }

    /// Counts this request in flight for its pool until it ends, however it ends.
    private func beginInflight(_ pool: PoolID) {
        exchange.inflightPool = pool
        worker.counters.add(1, .inflight(pool), loop: loop.index)
    }

    private func endInflight() {
        guard let pool = exchange.inflightPool else { return }
        exchange.inflightPool = nil
        worker.counters.add(-1, .inflight(pool), loop: loop.index)
    }

    // MARK: Request body and upstream writes

    private func pumpRequest() -> Bool {
        guard let upstream else { return false }
        var progressed = false
        if !exchange.requestBody.isFinished && upstream.output.hasStorage {
            switch exchange.requestBody.move(from: &input, to: &upstream.output) {
            case .progressed, .finished:
                progressed = true
            case .blocked:
                break
            case .invalid(let reason):
                closeUpstream()
                failExchange(status: 400, message: reason, error: nil)
                return true
            }
            if let maxBody = worker.settings.limits.maxBody, exchange.requestBody.transferred > UInt64(maxBody) {
                closeUpstream()
                failExchange(status: 413, message: "request body exceeds max_body", error: nil)
                return true
            }
            if !exchange.requestBody.isFinished && peerClosed && input.isEmpty {
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
        if exchange.requestSentNs == 0 && exchange.requestBody.isFinished && upstream.phase == .open
            && upstream.output.isEmpty {
            exchange.requestSentNs = loop.nowNs
        }
        return progressed
    }

    // MARK: Response

    private func pumpResponse() -> Bool {
        guard let upstream else { return false }
        var progressed = upstream.readAvailable() > 0
        if !exchange.responseHeadDone {
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
            guard exchange.responseHeadDone, phase == .proxying, self.upstream === upstream else { return progressed }
        }
        loop.buffers.acquire(into: &output)
        switch exchange.responseBody.move(from: &upstream.input, to: &output) {
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
            if !upstream.failed && exchange.responseBody.sourceEnded() {
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
        switch responseParser.parse(upstream.input.readableBytes, requestMethod: exchange.method, fields: loop.fields) {
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
        if head.isInformational && head.status != 101 {
            // 1xx are forwarded in order, never to HTTP/1.0 clients, and at most one 100.
            let forward = exchange.version == .http11 && !(head.status == 100 && exchange.sentContinue)
            if forward {
                guard writeResponseHead(head, source: source, framing: .none, keepAlive: true) else { return false }
                if head.status == 100 { exchange.sentContinue = true }
            }
            upstream.input.consume(consumed)
            responseParser.reset()
            return true
        }
        if head.status == 101 {
            guard exchange.upgradeRequested, exchange.requestBody.isFinished else {
                noteUpstreamFailure(.invalidResponse, upstream)
                closeUpstream()
                failExchange(status: 502, message: "upstream switched protocols unasked", error: .invalidResponse)
                return true
            }
            guard writeResponseHead(head, source: source, framing: .none, keepAlive: true) else { return false }
            upstream.input.consume(consumed)
            noteResponseHead(head.status, upstream)
            recordExchange()  // a tunnel is recorded when it opens; its bytes are not counted
            exchange.responseHeadDone = true
            exchange.requestBody = BodyRelay(framing: .untilClose, rechunk: false)
            exchange.responseBody = BodyRelay(framing: .untilClose, rechunk: false)
            phase = .tunnel
            return true
        }
        let framing: ClientFraming
        switch head.framing {
        case .none: framing = .none
        case .contentLength(let length): framing = .contentLength(length)
        case .chunked: framing = exchange.version == .http11 ? .chunked : .close
        case .untilClose: framing = .close
        }
        // A response that arrives before the request body finished leaves unread body bytes
        // on the client connection: they must never be parsed as a request, so close after.
        let keepAlive = exchange.keepAlive && framing != .close && exchange.requestBody.isFinished
            && !worker.endsKeepAlive
        guard writeResponseHead(head, source: source, framing: framing, keepAlive: keepAlive) else { return false }
        upstream.input.consume(consumed)
        noteResponseHead(head.status, upstream)
        exchange.keepAlive = keepAlive
        exchange.responseHeadDone = true
        exchange.responseReusable = head.reusable
        exchange.responseBody = BodyRelay(framing: head.framing, rechunk: framing == .chunked)
        if exchange.responseBody.isFinished {
            finishExchange()
        }
        return true
    }

    /// Queues a response head for the client. False when there is no room yet (the previous
    /// bytes are still being flushed); the head is then written on a later pass.
    private func writeResponseHead(
        _ head: ResponseHead, source: UnsafeRawBufferPointer, framing: ClientFraming, keepAlive: Bool
    ) -> Bool {
        loop.buffers.acquire(into: &output)
        output.compactIfNeeded(minimumSpace: output.capacity)
        var writer = ByteWriter(output.writableBytes)
        ResponseHeadWriter.write(head, source: source, fields: loop.fields, framing: framing,
                                 keepAlive: keepAlive, clientVersion: exchange.version, into: &writer)
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
        exchange.headBytesOut &+= Int32(truncatingIfNeeded: writer.count)
        if !head.isInformational { exchange.finalResponseStarted = true }
        return true
    }

    private func finishExchange() {
        recordExchange()
        endInflight()
        if let upstream {
            let reusable = exchange.responseReusable && exchange.requestBody.isFinished && upstream.isCleanForReuse()
            self.upstream = nil
            if reusable {
                worker.upstreamPool.park(upstream)
            } else {
                upstream.close()
            }
        }
        pool = nil
        if exchange.keepAlive && !worker.endsKeepAlive {
            phase = .awaitingHead
        } else {
            startClosing()
        }
    }

    // MARK: Failures and retries

    /// The upstream failed before any response byte arrived. Retries on another server of the
    /// same pool when that is safe (RFC 9110 §9.2.2): nothing of the request was sent, or a
    /// reused keep-alive connection failed and the request is idempotent and bodiless.
    private func upstreamFailed(reason: StaticString, kind: WindowedStats.Outcome) {
        guard let failedUpstream = upstream, let pool else { return }
        noteUpstreamFailure(kind, failedUpstream)
        let nothingSent = failedUpstream.bytesSent == 0
        if !failedUpstream.reused && nothingSent {
            // A fresh connection that failed before carrying a byte: a passive health signal.
            worker.counters.connectFailed(serverID: failedUpstream.server.id)
        }
        let staleReuse = failedUpstream.reused && exchange.method.isIdempotent && !exchange.requestHasBody
        if (nothingSent || staleReuse) && exchange.attempts < Self.maxAttempts,
           let server = pool.next(excluding: failedUpstream.reused ? -1 : failedUpstream.server.id),
           let next = acquireUpstream(server, pool: pool.pool) {
            worker.log(.info, "retrying request on \(server.name) after \(reason) on \(failedUpstream.server.name)")
            // The request bytes still sit in the failed connection's output buffer.
            var requestBytes = failedUpstream.output
            if !nothingSent {
                requestBytes.start = 0
                requestBytes.end = Int(exchange.headLength)
            }
            failedUpstream.output = IOBuffer()
            closeUpstream()
            loop.buffers.release(&next.output)
            next.output = requestBytes
            next.owner = self
            upstream = next
            exchange.attempts += 1
            exchange.responseDeadlineSet = false
            exchange.requestSentNs = 0
            exchange.serverID = Int32(truncatingIfNeeded: server.id)
            return
        }
        worker.log(.warning, "upstream \(failedUpstream.server.name): \(reason)")
        closeUpstream()
        failExchange(status: 502, message: "upstream connection failed", error: kind)
    }

    /// Ends the exchange with a local error response if none started yet, else aborts.
    /// `error` is the upstream failure behind it (nil: the client's fault, 400/413).
    private func failExchange(status: Int, message: StaticString, error: WindowedStats.Outcome?) {
        pool = nil
        endInflight()
        if exchange.finalResponseStarted {
            abort(status: status, error: error)
            return
        }
        respondLocally(status: status, message: message,
                       keepAlive: exchange.keepAlive && exchange.requestBody.isFinished, error: error)
    }

    // MARK: Recording

    /// A final response head from the upstream was queued for the client.
    @inline(__always)
    private func noteResponseHead(_ status: Int, _ upstream: UpstreamConnection) {
        exchange.status = UInt16(truncatingIfNeeded: status)
        exchange.serverID = Int32(truncatingIfNeeded: upstream.server.id)
        // An answer before the request body was complete (an early 413 or 401) is timed from the
        // request's start.
        let sent = exchange.requestSentNs != 0 ? exchange.requestSentNs : exchange.startedNs
        exchange.upstreamMicros = max(0, loop.nowNs - sent) / 1_000
    }

    /// Counts a failure against the server (every attempt, also one retried elsewhere).
    private func noteUpstreamFailure(_ kind: WindowedStats.Outcome, _ upstream: UpstreamConnection) {
        exchange.stats?.upstreamFailed(serverID: upstream.server.id, kind: kind)
    }

    /// Records the request once, however it ended: its app and color figures, or the
    /// unrouted counts for a request that matched no app. `error` names the upstream failure
    /// the client was answered for or cut off by.
    private func recordExchange(error: WindowedStats.Outcome? = nil) {
        guard !exchange.recorded else { return }
        exchange.recorded = true
        let now = loop.nowNs
        let sample = RequestSample(
            outcome: error ?? WindowedStats.Outcome(status: Int(exchange.status)),
            status: exchange.status,
            latencyMicros: UInt64(max(0, now - exchange.startedNs) / 1_000),
            upstreamMicros: exchange.upstreamMicros,
            bytesIn: UInt64(exchange.headBytesIn) &+ exchange.requestBody.transferred,
            bytesOut: UInt64(exchange.headBytesOut) &+ exchange.responseBody.transferred)
        if let stats = exchange.stats {
            stats.record(sample, atNanoseconds: now)
        } else {
            worker.metrics.recordUnrouted(status: Int(exchange.status))
        }
        if let log = worker.accessLog { finishAccessRecord(log, sample: sample, error: error, now: now) }
    }

    /// Copies the request's fields into an access-log record (only when the log is on).
    private func beginAccessRecord(_ log: AccessLogRing, head: RequestHead, source: UnsafeRawBufferPointer,
                                   authority: UnsafeRawBufferPointer, id: (UInt64, UInt64)) {
        let slot = log.claim()
        exchange.logSlot = slot >= 0 ? slot : -2  // -2: no free slot, the line is counted as dropped
        guard slot >= 0 else { return }
        func bytes(_ range: ByteRange) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: source[range.lowerBound..<range.upperBound])
        }
        clientAddress.withText { client in
            log.fillRequest(slot, method: bytes(head.methodName), host: authority, target: bytes(head.target),
                            requestID: bytes(head.requestID), generatedID: id, client: client)
        }
    }

    private func finishAccessRecord(_ log: AccessLogRing, sample: RequestSample, error: WindowedStats.Outcome?, now: Int64) {
        var slot = exchange.logSlot
        exchange.logSlot = -1
        if slot == -1 {
            // A request answered before it could be parsed (400, 408): a line without its fields.
            slot = log.claim()
            guard slot >= 0 else { return }
            clientAddress.withText { log.clearRequest(slot, client: $0) }
        }
        guard slot >= 0 else { return }
        log.finish(slot, endNs: now, sample: sample, error: error, termination: exchange.termination, serverID: Int(exchange.serverID),
                   appID: exchange.stats?.appID ?? -1, pool: exchange.stats?.pool)
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
    private func abort(status: Int, error: WindowedStats.Outcome? = nil, termination: Termination = .none) {
        if !exchange.recorded {
            if exchange.status == 0 || !exchange.finalResponseStarted { exchange.status = UInt16(status) }
            exchange.termination = termination
            recordExchange(error: error)
        }
        endInflight()
        closeUpstream()
        if exchange.finalResponseStarted {
            // Deliver what was already queued, then close: truncation stays visible.
            exchange.keepAlive = false
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
        let keepAlive = requestedKeepAlive && !worker.endsKeepAlive
        loop.buffers.acquire(into: &output)
        output.compactIfNeeded(minimumSpace: 512)
        var writer = ByteWriter(output.writableBytes)
        LocalResponse.write(status: status, message: message, close: !keepAlive, into: &writer)
        guard !writer.overflowed else {
            // No room behind what the client has not read yet (forwarded 1xx heads): it sees
            // the connection close. Recorded as the answer it should have had.
            exchange.status = UInt16(status)
            recordExchange(error: error)
            close()
            return
        }
        output.end += writer.count
        exchange.headBytesOut &+= Int32(truncatingIfNeeded: writer.count)
        exchange.status = UInt16(status)
        recordExchange(error: error)
        exchange.keepAlive = keepAlive
        exchange.finalResponseStarted = true
        if keepAlive {
            phase = .awaitingHead
        } else {
            startClosing()
        }
    }

    private func startClosing() {
        phase = .closing
        input.consume(input.count)  // nothing after a closing response is processed
        // Flushing the last response is bounded like any write to a slow client; the short
        // linger starts after the half-close.
        deadline = 0
        setDeadline(after: worker.settings.timeouts.clientBodyMs)
    }

    /// Flushes, then half-closes and reads until the client closes (or the linger time ends):
    /// closing with unread input would make the kernel send RST and could destroy the response.
    private func linger() -> Bool {
        if !output.isEmpty {
            return false
        }
        if !shutdownSent {
            shutdownSent = true
            transport.shutdownWrite(fd)
            deadline = 0
            setDeadline(after: Self.lingerMs)
            return true
        }
        guard readable else { return false }
        loop.buffers.acquire(into: &input)
        input.consume(input.count)
        _ = readClient()
        input.consume(input.count)
        if peerClosed {
            close()
            return true
        }
        return readable
    }

    /// The drain deadline passed with this exchange still running: recorded as the proxy's
    /// doing (503 when nothing was answered yet), then closed.
    func closeAtDrainDeadline() {
        if !exchange.recorded && (exchange.stats != nil || exchange.logSlot >= 0) && phase == .proxying {
            if !exchange.finalResponseStarted { exchange.status = 503 }
            exchange.termination = .drainTimeout
            recordExchange(error: nil)
        }
        close()
    }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        if !exchange.recorded && (exchange.stats != nil || exchange.logSlot >= 0) {
            // The connection ended mid-exchange: the client reset it (or the drain deadline, see
            // `closeAtDrainDeadline`). A response under way keeps its status.
            if !exchange.finalResponseStarted { exchange.status = 499 }
            if exchange.termination == .none { exchange.termination = .clientClosed }
            recordExchange()
        }
        endInflight()
        closeUpstream()
        loop.buffers.release(&input)
        loop.buffers.release(&output)
        loop.closeChannel(self)
        worker.clientClosed()
    }

    // MARK: Tunnel

    private func pumpTunnel() -> Bool {
        guard let upstream else {
            startClosing()
            return true
        }
        var progressed = readClient()
        loop.buffers.acquire(into: &upstream.output)
        if case .progressed = exchange.requestBody.move(from: &input, to: &upstream.output) { progressed = true }
        if upstream.writable && !upstream.output.isEmpty {
            let before = upstream.output.count
            _ = upstream.flush()
            if before != upstream.output.count { progressed = true }
        }
        if upstream.readAvailable() > 0 { progressed = true }
        loop.buffers.acquire(into: &output)
        if case .progressed = exchange.responseBody.move(from: &upstream.input, to: &output) { progressed = true }
        if failed || upstream.failed || upstream.writeFailed {
            closeUpstream()
            close()
            return true
        }
        // Each direction ends on its own: a client's FIN is passed on once its bytes were
        // delivered, and the upstream may keep answering until it closes too.
        if peerClosed && input.isEmpty && upstream.output.isEmpty && !tunnelUpstreamShut {
            tunnelUpstreamShut = true
            Posix.shutdownWrite(upstream.fd)
            progressed = true
        }
        if upstream.peerClosed && upstream.input.isEmpty && output.isEmpty && !shutdownSent {
            shutdownSent = true
            transport.shutdownWrite(fd)
            progressed = true
        }
        if tunnelUpstreamShut && shutdownSent {
            closeUpstream()
            close()
            return true
        }
        return progressed
    }
}
