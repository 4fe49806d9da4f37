import CutoverConfig
import CutoverHTTP
import CutoverMetrics

/// The facts of one request that the exchange's decisions depend on, from its parsed head.
package struct RequestFacts: Equatable {
    package var method: HTTPMethod = .get
    package var version: HTTPVersion = .http11
    /// The client may send another request after this one (its head allows it and the proxy
    /// was not draining when it arrived).
    package var keepAlive = true
    package var upgradeRequested = false
    package var hasBody = false

    package init(method: HTTPMethod = .get, version: HTTPVersion = .http11, keepAlive: Bool = true,
                 upgradeRequested: Bool = false, hasBody: Bool = false) {
        self.method = method
        self.version = version
        self.keepAlive = keepAlive
        self.upgradeRequested = upgradeRequested
        self.hasBody = hasBody
    }
}

/// What the connection knows that the machine does not keep: its buffers, its socket and the
/// upstream it drives. Passed to each decision, so the machine holds no copy that could go stale.
package struct ConnectionFacts: Equatable {
    package var inputEmpty = true
    package var outputEmpty = true
    /// The client's socket took everything offered last time.
    package var clientWritable = true
    /// The whole request body was read from the client (or there is none).
    package var requestFinished = true
    /// The upstream attached to the exchange (nil: none).
    package var upstream: UpstreamFacts? = nil
    /// The proxy is draining: no new keep-alive promises.
    package var draining = false

    package init(inputEmpty: Bool = true, outputEmpty: Bool = true, clientWritable: Bool = true, requestFinished: Bool = true,
                 upstream: UpstreamFacts? = nil, draining: Bool = false) {
        self.inputEmpty = inputEmpty
        self.outputEmpty = outputEmpty
        self.clientWritable = clientWritable
        self.requestFinished = requestFinished
        self.upstream = upstream
        self.draining = draining
    }
}

package struct UpstreamFacts: Equatable {
    /// Its connect has not completed.
    package var connecting = false
    /// Request bytes wait for it and its socket takes none: the upstream stopped reading.
    package var stalledOnWrite = false

    package init(connecting: Bool = false, stalledOnWrite: Bool = false) {
        self.connecting = connecting
        self.stalledOnWrite = stalledOnWrite
    }
}

/// The deadlines a connection arms. One at a time; each is a total, not an inactivity timer,
/// unless it says otherwise.
package enum DeadlineKind: Equatable {
    /// No request under way: the next one's first byte (`client_idle`, re-armed by progress).
    case clientIdle
    /// The rest of a request head, from its first byte (`client_header`: trickled bytes do not
    /// extend it — slowloris).
    case clientHeader
    /// The upstream connect (`connect`).
    case connect
    /// From the end of the request to the final response head (`upstream_header`, once per
    /// attempt: interim 1xx answers do not extend it).
    case upstreamHeader
    /// A body stalled in either direction, or a client not reading (`client_body`, re-armed by
    /// progress); also bounds the flush of a closing connection.
    case clientBody
}

/// One proxied exchange as a value: which phase the connection is in, what the current
/// request and its response have reached, and every decision about them — what deadline to
/// arm, what a deadline or a failure means, whether to retry, how to frame and whether to keep
/// alive. It does no I/O: `ClientConnection` reads and writes, turns what happened into calls
/// here, and carries out the answers. Table tests drive it without sockets.
///
/// Phases and the events each takes (anything else is a bug in the connection, and traps):
///
/// | phase | events |
/// |---|---|
/// | awaitingHead | head bytes, head complete (→ proxying, or a local answer → awaitingHead/closing), deadline, client gone |
/// | proxying | upstream failure (→ retry or fail), response head (→ interim, tunnel, streaming), body done (→ awaitingHead/closing), deadline, abort |
/// | tunnel | either side's end (→ closed), deadline (→ closed) |
/// | closing | flushed (half-close), linger read, deadline (→ closed) |
/// | closed | none |
package struct ExchangeMachine {
    package enum State: Equatable {
        /// Between requests, or reading a head. `headArmed`: the client_header deadline runs for
        /// the head being read (its first byte arrived).
        case awaitingHead(headArmed: Bool)
        case proxying(Proxying)
        /// After a 101: bytes flow both ways until both sides ended.
        case tunnel(TunnelEnds)
        /// The last response is flushed, then the write side is shut down and the client's
        /// FIN awaited briefly, so that it sees the response rather than a reset.
        case closing(shutdownSent: Bool)
        case closed
    }

    package struct Proxying: Equatable {
        package var attempts: UInt8 = 1
        package var response: ResponseStage = .awaitingHead(sentContinue: false, deadlineArmed: false)
    }

    package enum ResponseStage: Equatable {
        /// No final head yet. `sentContinue`: a 100 was forwarded (at most one is);
        /// `deadlineArmed`: upstream_header runs for this attempt.
        case awaitingHead(sentContinue: Bool, deadlineArmed: Bool)
        /// The final head went to the client; `reusable`: the upstream may carry another
        /// request after this response.
        case streaming(reusable: Bool)
    }

    package struct TunnelEnds: Equatable {
        /// The client's FIN was passed on to the upstream.
        package var upstreamShut = false
        /// The upstream's end was passed on to the client.
        package var clientShut = false

        package init(upstreamShut: Bool = false, clientShut: Bool = false) {
            self.upstreamShut = upstreamShut
            self.clientShut = clientShut
        }
    }

    package private(set) var state: State = .awaitingHead(headArmed: false)
    /// The current (or last) request's facts.
    private(set) var request = RequestFacts()

    /// A final response (the upstream's head or a local answer) was queued for the client: from
    /// then on a failure can only be shown by closing the connection.
    package private(set) var finalResponseStarted = false

    package init() {}

    // MARK: Reading a head

    /// A complete head was parsed: a new exchange begins (routing comes next).
    package mutating func headReceived(_ facts: RequestFacts, draining: Bool) {
        guard case .awaitingHead = state else { preconditionFailure("a request head outside awaitingHead: \(state)") }
        request = facts
        request.keepAlive = facts.keepAlive && !draining
        finalResponseStarted = false
        state = .awaitingHead(headArmed: false)  // the next head gets its own client_header deadline
    }

    /// An invalid head, or one that timed out: the exchange that never began is answered and
    /// the connection closes after it.
    package mutating func headRejected() {
        request = RequestFacts()
        request.keepAlive = false
        finalResponseStarted = false
        state = .awaitingHead(headArmed: false)
    }

    /// The request was routed and its upstream attached.
    package mutating func routed() {
        guard case .awaitingHead = state else { preconditionFailure("routed outside awaitingHead: \(state)") }
        state = .proxying(Proxying())
    }

    /// The keep-alive promise of a local answer to the current request.
    package func localAnswerKeepsAlive(requested: Bool, draining: Bool) -> Bool {
        requested && !draining
    }

    /// A local answer (404, 503, a 502 for a failed upstream…) was queued.
    package mutating func answeredLocally(keepAlive: Bool) {
        request.keepAlive = keepAlive
        finalResponseStarted = true
        state = keepAlive ? .awaitingHead(headArmed: false) : .closing(shutdownSent: false)
    }

    // MARK: Deadlines

    /// Which deadline to arm after a pass of the connection, if any. `progressed`: bytes moved
    /// or state changed; `armed`: a deadline is set. `restart`: arm it even if one is set.
    package mutating func deadlineToArm(progressed: Bool, armed: Bool, facts: ConnectionFacts) -> (kind: DeadlineKind, restart: Bool)? {
        switch state {
        case .awaitingHead(let headArmed):
            if facts.inputEmpty {
                state = .awaitingHead(headArmed: false)
                return progressed || !armed ? (.clientIdle, false) : nil
            }
            guard !headArmed else { return nil }
            state = .awaitingHead(headArmed: true)
            return (.clientHeader, false)
        case .proxying(var proxying):
            if case .awaitingHead(let sentContinue, let deadlineArmed) = proxying.response,
               facts.requestFinished, facts.upstream?.connecting != true {
                guard !deadlineArmed else { return nil }
                proxying.response = .awaitingHead(sentContinue: sentContinue, deadlineArmed: true)
                state = .proxying(proxying)
                return (.upstreamHeader, true)
            }
            guard progressed || !armed else { return nil }
            if case .awaitingHead = proxying.response, facts.upstream?.connecting == true { return (.connect, false) }
            return (.clientBody, false)
        case .tunnel:
            return progressed || !armed ? (.clientIdle, false) : nil
        case .closing(let shutdownSent):
            return progressed && !shutdownSent ? (.clientBody, false) : nil
        case .closed:
            return nil
        }
    }

    package enum DeadlineAction: Equatable {
        case none
        case close
        /// The head did not arrive in time: 408 and close.
        case answerHeadTimeout
        /// The upstream connect timed out: an upstream failure before any byte (may retry).
        case upstreamConnectTimedOut
        /// The request was sent and no final head came: 504.
        case upstreamHeadTimedOut
        /// End the exchange at once; `blameUpstream`: count a timeout against the upstream.
        case abort(status: Int, error: WindowedStats.Outcome?, termination: Termination, blameUpstream: Bool)
        /// The client did not take the last bytes in time: reset the connection, so the kernel
        /// drops what it still holds for that client instead of keeping it in an orphaned socket.
        case reset
    }

    /// What the deadline that just passed means.
    package func deadlinePassed(_ facts: ConnectionFacts) -> DeadlineAction {
        switch state {
        case .awaitingHead:
            return facts.inputEmpty ? .close : .answerHeadTimeout
        case .proxying(let proxying):
            if case .awaitingHead = proxying.response, let upstream = facts.upstream {
                if upstream.connecting { return .upstreamConnectTimedOut }
                if facts.requestFinished { return .upstreamHeadTimedOut }
                // The body stalled. The side that stopped is blamed: the upstream when request
                // bytes wait for its full socket, else the client, which stopped sending.
                if upstream.stalledOnWrite { return .abort(status: 504, error: .timeout, termination: .none, blameUpstream: true) }
                return .abort(status: 408, error: nil, termination: .clientTimeout, blameUpstream: false)
            }
            if !facts.clientWritable && !facts.outputEmpty {
                // The client stopped reading the response (its socket buffer is full).
                return .abort(status: 408, error: nil, termination: .clientTimeout, blameUpstream: false)
            }
            // The upstream stopped sending its body.
            return .abort(status: 504, error: .timeout, termination: .none, blameUpstream: facts.upstream != nil)
        case .tunnel:
            return .close
        case .closing(let shutdownSent):
            // Past the half-close the response was delivered: a plain close. Before it, the
            // client stopped reading what was queued.
            return shutdownSent ? .close : .reset
        case .closed:
            return .none
        }
    }

    // MARK: Upstream failures

    /// The failed attempt's retry decision (does not change the state: the retry may find no
    /// server to go to).
    package func retryDecision(_ failed: RetryPolicy.FailedAttempt) -> RetryPolicy.Decision {
        guard case .proxying(let proxying) = state else { preconditionFailure("an upstream failure outside proxying: \(state)") }
        return RetryPolicy.decide(failed, method: request.method, requestHasBody: request.hasBody, attempts: Int(proxying.attempts))
    }

    /// A retry went out on another connection: a new attempt with its own upstream_header.
    package mutating func retryStarted() {
        guard case .proxying(var proxying) = state,
              case .awaitingHead(let sentContinue, _) = proxying.response
        else { preconditionFailure("a retry after the response began: \(state)") }
        proxying.attempts += 1
        proxying.response = .awaitingHead(sentContinue: sentContinue, deadlineArmed: false)
        state = .proxying(proxying)
    }

    package enum FailureAction: Equatable {
        /// Answer `status` locally, keeping the connection when `keepAlive`.
        case answer(keepAlive: Bool)
        /// A response is under way: cut it off (the client sees the truncation).
        case abort
    }

    /// The exchange failed (the upstream, or the client's body): how the client learns of it.
    package func exchangeFailed(requestFinished: Bool) -> FailureAction {
        finalResponseStarted ? .abort : .answer(keepAlive: request.keepAlive && requestFinished)
    }

    // MARK: Response

    package enum ResponseHeadAction: Equatable {
        /// An interim 1xx: forward it to the client when `forward` (never to HTTP/1.0 clients,
        /// at most one 100), then parse the next head.
        case interim(forward: Bool)
        /// A 101 to a request that asked to upgrade, with its body complete: forward it and
        /// relay bytes both ways.
        case startTunnel
        /// A 101 nobody asked for (or before the request body ended): a 502.
        case rejectSwitch
        /// A final head: forward it framed as `framing`, promising keep-alive when `keepAlive`.
        case forward(framing: ClientFraming, keepAlive: Bool)
    }

    package func responseHead(status: Int, framing: BodyFraming, requestFinished: Bool, draining: Bool) -> ResponseHeadAction {
        guard case .proxying(let proxying) = state, case .awaitingHead(let sentContinue, _) = proxying.response else {
            preconditionFailure("a response head when none is expected: \(state)")
        }
        if status >= 100 && status < 200 && status != 101 {
            return .interim(forward: request.version == .http11 && !(status == 100 && sentContinue))
        }
        if status == 101 {
            return request.upgradeRequested && requestFinished ? .startTunnel : .rejectSwitch
        }
        let clientFraming: ClientFraming
        switch framing {
        case .none: clientFraming = .none
        case .contentLength(let length): clientFraming = .contentLength(length)
        case .chunked: clientFraming = request.version == .http11 ? .chunked : .close
        case .untilClose: clientFraming = .close
        }
        // A response that arrives before the request body finished leaves unread body bytes on
        // the client connection: they must never be parsed as a request, so close after.
        let keepAlive = request.keepAlive && clientFraming != .close && requestFinished && !draining
        return .forward(framing: clientFraming, keepAlive: keepAlive)
    }

    /// An interim head was forwarded.
    package mutating func interimForwarded(status: Int) {
        guard status == 100, case .proxying(var proxying) = state,
              case .awaitingHead(_, let deadlineArmed) = proxying.response
        else { return }
        proxying.response = .awaitingHead(sentContinue: true, deadlineArmed: deadlineArmed)
        state = .proxying(proxying)
    }

    /// The final head was queued for the client.
    package mutating func finalHeadForwarded(keepAlive: Bool, upstreamReusable: Bool) {
        guard case .proxying(var proxying) = state else { preconditionFailure("a final head outside proxying: \(state)") }
        request.keepAlive = keepAlive
        finalResponseStarted = true
        proxying.response = .streaming(reusable: upstreamReusable)
        state = .proxying(proxying)
    }

    package mutating func tunnelStarted() {
        guard case .proxying = state else { preconditionFailure("a tunnel outside proxying: \(state)") }
        finalResponseStarted = true
        state = .tunnel(TunnelEnds())
    }

    /// The response is complete. Whether the upstream may go back to the idle pool (its
    /// response allowed it and the request body was all sent; the caller then checks that
    /// nothing unread is left in the socket), and whether the client connection stays open.
    package func responseFinished(requestFinished: Bool, draining: Bool) -> (mayParkUpstream: Bool, keepAlive: Bool) {
        guard case .proxying(let proxying) = state else { preconditionFailure("a finished response outside proxying: \(state)") }
        var reusable = false
        if case .streaming(let allowed) = proxying.response { reusable = allowed }
        return (reusable && requestFinished, request.keepAlive && !draining)
    }

    package mutating func exchangeEnded(keepAlive: Bool) {
        state = keepAlive ? .awaitingHead(headArmed: false) : .closing(shutdownSent: false)
    }

    // MARK: Ending

    /// Cut the exchange short: after a response began, what was queued is delivered and the
    /// connection closes (→ closing, returns true); before, the caller closes it at once.
    package mutating func aborted() -> Bool {
        guard finalResponseStarted else { return false }
        request.keepAlive = false
        state = .closing(shutdownSent: false)
        return true
    }

    /// The client is gone, or there is nothing more to say: flush what is queued, then close.
    package mutating func startClosing() {
        state = .closing(shutdownSent: false)
    }

    package mutating func writeSideShutDown() {
        guard case .closing = state else { preconditionFailure("a half-close outside closing: \(state)") }
        state = .closing(shutdownSent: true)
    }

    package mutating func tunnelEnded(upstreamShut: Bool, clientShut: Bool) {
        guard case .tunnel(var ends) = state else { preconditionFailure("a tunnel end outside tunnel: \(state)") }
        ends.upstreamShut = ends.upstreamShut || upstreamShut
        ends.clientShut = ends.clientShut || clientShut
        state = .tunnel(ends)
    }

    package mutating func closed() {
        state = .closed
    }

    // MARK: Reading the state

    package var isAwaitingHead: Bool { if case .awaitingHead = state { return true } else { return false } }
    package var isProxying: Bool { if case .proxying = state { return true } else { return false } }
    package var isClosed: Bool { state == .closed }

    /// The final response head arrived (streaming, or a tunnel).
    package var responseHeadReceived: Bool {
        switch state {
        case .proxying(let proxying):
            if case .streaming = proxying.response { return true }
            return false
        case .tunnel: return true
        default: return false
        }
    }
}
