import CutoverMetrics

/// What one exchange is recorded with when it ends: its pool's figures, its timings, its byte
/// counts, the status the client saw, and why it ended short when it did. Recorded once
/// (`recorded`), however the exchange ends. Fields are grouped by size (Swift keeps declaration
/// order): every idle keep-alive connection carries one.
package struct ExchangeRecord {
    /// The app and pool the request was routed to (nil: it matched no app). Unowned: a loop
    /// keeps its figures for its whole life, and a request must not pay a retain.
    unowned(unsafe) var stats: PoolStats? = nil
    /// Loop time of the first byte of the request head.
    package var startedNs: Int64 = 0
    /// Loop time the request (head and body) was fully written upstream (0: not yet).
    package var requestSentNs: Int64 = 0
    package var upstreamMicros: Int64 = -1
    package var serverID: Int32 = -1
    /// The access-log record being filled (-1: none yet; -2: none free, counted as dropped).
    package var logSlot: Int32 = -1
    /// Head bytes (at most max_header_bytes, or a local answer's) for the byte counts.
    package var headBytesIn: Int32 = 0
    package var headBytesOut: Int32 = 0
    /// The final status sent to the client (0: none yet).
    package var status: UInt16 = 0
    /// Why the exchange ended short of its full response, when it did.
    package var termination: Termination = .none
    package var recorded = false

    package init(startedNs: Int64 = 0) {
        self.startedNs = startedNs
    }

    /// An exchange that will be recorded when it ends: it was routed to a pool, or its
    /// access-log line was begun, and it is not recorded yet.
    package var isPending: Bool { !recorded && (stats != nil || logSlot >= 0) }

    /// A final response head from `serverID` was queued for the client. An answer before the
    /// request body was complete (an early 413 or 401) is timed from the request's start.
    @inline(__always)
    package mutating func responseHead(status: Int, serverID: Int, nowNs: Int64) {
        self.status = UInt16(truncatingIfNeeded: status)
        self.serverID = Int32(truncatingIfNeeded: serverID)
        let sent = requestSentNs != 0 ? requestSentNs : startedNs
        upstreamMicros = max(0, nowNs - sent) / 1_000
    }

    /// The exchange is cut short: recorded with `status` unless a response was already under
    /// way (then the client saw that one's status), and with the client's or the proxy's part.
    package mutating func cutShort(status: Int, responseStarted: Bool, termination: Termination) {
        if self.status == 0 || !responseStarted { self.status = UInt16(status) }
        self.termination = termination
    }

    /// The connection ended mid-exchange: the client reset it. Nothing answered yet is 499; a
    /// response under way keeps its status.
    package mutating func connectionEnded(responseStarted: Bool) {
        if !responseStarted { status = 499 }
        if termination == .none { termination = .clientClosed }
    }

    /// The drain deadline ended the exchange: the proxy's doing, 503 when nothing was answered.
    package mutating func drainDeadlinePassed(responseStarted: Bool) {
        if !responseStarted { status = 503 }
        termination = .drainTimeout
    }

    /// The figures of the exchange as it ends now. `error`: the upstream failure the client was
    /// answered for or cut off by.
    package func sample(error: WindowedStats.Outcome?, requestBodyBytes: UInt64, responseBodyBytes: UInt64, nowNs: Int64) -> RequestSample {
        RequestSample(
            outcome: error ?? WindowedStats.Outcome(status: Int(status)),
            status: status,
            latencyMicros: UInt64(max(0, nowNs - startedNs) / 1_000),
            upstreamMicros: upstreamMicros,
            bytesIn: UInt64(headBytesIn) &+ requestBodyBytes,
            bytesOut: UInt64(headBytesOut) &+ responseBodyBytes)
    }
}
