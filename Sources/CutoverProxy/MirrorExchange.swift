import CutoverHTTP
import CutoverLoop
import CutoverMetrics
import CutoverRouting
import CutoverSystem

/// One copy of a request, sent to a candidate (or, for noise, a second stable) server: it
/// writes the copy, reads and decodes the response, hashes it, and reports to its
/// `ShadowComparison`. It never touches the client connection: the client only ever sees the
/// primary's response, and a dead, hung or slow copy costs it nothing. Bounded by the loop's
/// `mirror_max_inflight`, by one deadline (`upstream_header`) for the whole copy, and by
/// `maxResponseBytes` (a candidate streaming without end fails the copy instead of keeping the
/// loop hashing).
final class MirrorExchange {
    private unowned(unsafe) let worker: ProxyWorker
    private let comparison: ShadowComparison
    private let role: ShadowComparison.Role
    private let upstream: UpstreamConnection
    private let method: HTTPMethod
    private var parser: ResponseHeadParser
    private var body = BodyRelay(framing: .none, rechunk: false)
    private var digest = BodyRelay.digestBasis
    private var sink = IOBuffer()
    private var side: ShadowSide?
    private var done = false
    /// Largest response body a copy reads before it counts as failed.
    static let maxResponseBytes: UInt64 = 8 << 20

    /// Starts a copy on `upstream` whose output already holds the request bytes.
    init(worker: ProxyWorker, comparison: ShadowComparison, role: ShadowComparison.Role, upstream: UpstreamConnection,
         method: HTTPMethod) {
        self.worker = worker
        self.comparison = comparison
        self.role = role
        self.upstream = upstream
        self.method = method
        parser = ResponseHeadParser(limits: worker.settings.http)
        comparison.stats.inflight += 1
        upstream.shadowOwner = self
        upstream.deadline = 0
        upstream.setDeadline(after: worker.settings.timeouts.upstreamHeaderMs)
    }

    func drive() {
        while !done {
            var progressed = false
            if upstream.phase == .open && !upstream.output.isEmpty && upstream.writable {
                // A failed write is not the end: the server may have answered; reads decide.
                let before = upstream.output.count
                _ = upstream.flush()
                if upstream.output.count != before { progressed = true }
            }
            if upstream.readAvailable() > 0 { progressed = true }
            if side == nil {
                if upstream.input.isEmpty {
                    if upstream.failed || upstream.peerClosed { return fail() }
                } else {
                    switch parser.parse(upstream.input.readableBytes, requestMethod: method, fields: worker.loop.fields) {
                    case .needMore:
                        if upstream.failed || upstream.peerClosed { return fail() }
                    case .invalid:
                        return fail()
                    case .complete(let head, let consumed):
                        parser.reset()
                        if head.isInformational {
                            upstream.input.consume(consumed)
                            progressed = true
                        } else {
                            side = ShadowSide(
                                status: UInt16(head.status),
                                headers: ShadowSide.headers(head, source: upstream.input.readableBytes, fields: worker.loop.fields,
                                                            ignored: comparison.ignored, names: comparison.names),
                                bodyHash: 0, bodyLength: 0, micros: 0)
                            upstream.input.consume(consumed)
                            body = BodyRelay(framing: head.framing, rechunk: false)
                            if !head.reusable { reusable = false }
                            progressed = true
                        }
                    }
                }
            }
            if side != nil {
                worker.loop.buffers.acquire(into: &sink)
                switch body.move(from: &upstream.input, to: &sink, digest: &digest) {
                case .finished:
                    sink.consume(sink.count)
                    return finish()
                case .progressed:
                    progressed = true
                case .blocked:
                    break
                case .invalid:
                    return fail()
                }
                sink.consume(sink.count)
                if body.transferred > Self.maxResponseBytes { return fail() }
                if upstream.input.isEmpty && (upstream.peerClosed || upstream.failed) {
                    if !upstream.failed && body.sourceEnded() { return finish() }
                    return fail()
                }
            }
            if !progressed { return }
        }
    }

    private var reusable = true

    /// The copy's deadline passed.
    func timedOut() {
        guard !done else { return }
        fail()
    }

    private func finish() {
        guard var side else { return fail() }
        side.bodyHash = digest
        side.bodyLength = body.transferred
        side.micros = UInt64(max(0, worker.loop.nowNs - comparison.startedNs) / 1_000)
        end()
        if reusable && upstream.isCleanForReuse() {
            upstream.shadowOwner = nil
            worker.upstreamPool.park(upstream)
        } else {
            upstream.close()
        }
        comparison.copyFinished(role, side, atNanoseconds: worker.loop.nowNs)
    }

    private func fail() {
        guard !done else { return }
        end()
        upstream.close()
        comparison.copyFinished(role, nil, atNanoseconds: worker.loop.nowNs)
    }

    private func end() {
        done = true
        comparison.stats.inflight -= 1
        upstream.shadowOwner = nil
        worker.loop.buffers.release(&sink)
    }
}
