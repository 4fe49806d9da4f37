import CutoverHTTP
import CutoverMetrics
import CutoverProxy
import XCTest

/// The exchange's decisions, driven without sockets: each test walks the machine through the
/// events a connection would report and checks the answers against the README's tables.
final class ExchangeMachineTests: XCTestCase {
    private func facts(inputEmpty: Bool = true, outputEmpty: Bool = true, clientWritable: Bool = true,
                       requestFinished: Bool = true, upstream: UpstreamFacts? = UpstreamFacts(), draining: Bool = false) -> ConnectionFacts {
        ConnectionFacts(inputEmpty: inputEmpty, outputEmpty: outputEmpty, clientWritable: clientWritable,
                        requestFinished: requestFinished, upstream: upstream, draining: draining)
    }

    private func routed(_ request: RequestFacts = RequestFacts(), draining: Bool = false) -> ExchangeMachine {
        var machine = ExchangeMachine()
        machine.headReceived(request, draining: draining)
        machine.routed()
        return machine
    }

    private func kind(_ machine: inout ExchangeMachine, progressed: Bool, armed: Bool, _ facts: ConnectionFacts) -> DeadlineKind? {
        machine.deadlineToArm(progressed: progressed, armed: armed, facts: facts)?.kind
    }

    // MARK: Deadlines (README "Timeouts")

    func testAnIdleConnectionWaitsClientIdleAndAHeadGetsOneClientHeaderDeadline() {
        var machine = ExchangeMachine()
        XCTAssertEqual(kind(&machine, progressed: false, armed: false, facts(inputEmpty: true)), .clientIdle)
        XCTAssertNil(kind(&machine, progressed: false, armed: true, facts(inputEmpty: true)), "idle and armed: nothing to change")
        // The first bytes of a head arm client_header once; trickled bytes do not extend it.
        XCTAssertEqual(kind(&machine, progressed: true, armed: true, facts(inputEmpty: false)), .clientHeader)
        XCTAssertNil(kind(&machine, progressed: true, armed: true, facts(inputEmpty: false)))
        XCTAssertNil(kind(&machine, progressed: true, armed: true, facts(inputEmpty: false)))
        // After the head, the next one gets its own.
        machine.headReceived(RequestFacts(), draining: false)
        XCTAssertEqual(kind(&machine, progressed: true, armed: true, facts(inputEmpty: false)), .clientHeader)
    }

    func testProxyingArmsConnectThenUpstreamHeaderOncePerAttemptThenClientBody() {
        var machine = routed()
        XCTAssertEqual(kind(&machine, progressed: true, armed: true, facts(requestFinished: true, upstream: UpstreamFacts(connecting: true))), .connect)
        // The request is sent and the connect done: upstream_header, restarted, once.
        let armed = machine.deadlineToArm(progressed: true, armed: true, facts: facts(requestFinished: true))
        XCTAssertEqual(armed?.kind, .upstreamHeader)
        XCTAssertEqual(armed?.restart, true)
        XCTAssertNil(kind(&machine, progressed: true, armed: true, facts(requestFinished: true)), "interim answers do not extend it")
        // A retry gets its own.
        machine.retryStarted()
        XCTAssertEqual(kind(&machine, progressed: true, armed: true, facts(requestFinished: true)), .upstreamHeader)
        // While the body is still coming: client_body, re-armed by progress only.
        var uploading = routed(RequestFacts(method: .post, hasBody: true))
        XCTAssertEqual(kind(&uploading, progressed: true, armed: true, facts(requestFinished: false)), .clientBody)
        XCTAssertNil(kind(&uploading, progressed: false, armed: true, facts(requestFinished: false)))
        // Streaming the response: client_body too.
        machine.finalHeadForwarded(keepAlive: true, upstreamReusable: true)
        XCTAssertEqual(kind(&machine, progressed: true, armed: true, facts()), .clientBody)
    }

    func testEveryDeadlineMeansWhatTheTimeoutTableSays() {
        var idle = ExchangeMachine()
        XCTAssertEqual(idle.deadlinePassed(facts(inputEmpty: true)), .close, "client_idle: close quietly")
        XCTAssertEqual(idle.deadlinePassed(facts(inputEmpty: false)), .answerHeadTimeout, "client_header: 408")
        idle.closed()
        XCTAssertEqual(idle.deadlinePassed(facts()), .none)

        let machine = routed()
        XCTAssertEqual(machine.deadlinePassed(facts(upstream: UpstreamFacts(connecting: true))), .upstreamConnectTimedOut)
        XCTAssertEqual(machine.deadlinePassed(facts(requestFinished: true)), .upstreamHeadTimedOut, "upstream_header: 504")
        XCTAssertEqual(machine.deadlinePassed(facts(requestFinished: false)),
                       .abort(status: 408, error: nil, termination: .clientTimeout, blameUpstream: false),
                       "the client stopped sending its body")
        XCTAssertEqual(machine.deadlinePassed(facts(requestFinished: false, upstream: UpstreamFacts(stalledOnWrite: true))),
                       .abort(status: 504, error: .timeout, termination: .none, blameUpstream: true),
                       "the upstream stopped reading the body: it is blamed, not the client")
        var streaming = routed()
        streaming.finalHeadForwarded(keepAlive: true, upstreamReusable: true)
        XCTAssertEqual(streaming.deadlinePassed(facts(outputEmpty: false, clientWritable: false)),
                       .abort(status: 408, error: nil, termination: .clientTimeout, blameUpstream: false),
                       "the client stopped reading")
        XCTAssertEqual(streaming.deadlinePassed(facts(outputEmpty: true, clientWritable: true)),
                       .abort(status: 504, error: .timeout, termination: .none, blameUpstream: true),
                       "the upstream stopped sending its body")
        var closing = routed()
        closing.startClosing()
        XCTAssertEqual(closing.deadlinePassed(facts()), .reset, "the last response not taken in time: reset, nothing left queued")
        closing.writeSideShutDown()
        XCTAssertEqual(closing.deadlinePassed(facts()), .close, "delivered and half-closed: the linger ends quietly")
    }

    // MARK: Responses

    func testInterimAnswersAreForwardedToHTTP11ClientsAndOnly100Once() {
        var machine = routed()
        XCTAssertEqual(machine.responseHead(status: 100, framing: .none, requestFinished: false, draining: false), .interim(forward: true))
        machine.interimForwarded(status: 100)
        XCTAssertEqual(machine.responseHead(status: 100, framing: .none, requestFinished: false, draining: false), .interim(forward: false))
        XCTAssertEqual(machine.responseHead(status: 103, framing: .none, requestFinished: false, draining: false), .interim(forward: true))
        let old = routed(RequestFacts(version: .http10))
        XCTAssertEqual(old.responseHead(status: 103, framing: .none, requestFinished: true, draining: false), .interim(forward: false))
    }

    func testA101StartsATunnelOnlyWhenAskedForAndTheBodyIsDone() {
        let asked = routed(RequestFacts(upgradeRequested: true))
        XCTAssertEqual(asked.responseHead(status: 101, framing: .none, requestFinished: true, draining: false), .startTunnel)
        XCTAssertEqual(asked.responseHead(status: 101, framing: .none, requestFinished: false, draining: false), .rejectSwitch)
        XCTAssertEqual(routed().responseHead(status: 101, framing: .none, requestFinished: true, draining: false), .rejectSwitch)
    }

    func testFramingAndKeepAliveOfAFinalHead() {
        let http11 = routed()
        XCTAssertEqual(http11.responseHead(status: 200, framing: .contentLength(5), requestFinished: true, draining: false),
                       .forward(framing: .contentLength(5), keepAlive: true))
        XCTAssertEqual(http11.responseHead(status: 200, framing: .chunked, requestFinished: true, draining: false),
                       .forward(framing: .chunked, keepAlive: true))
        XCTAssertEqual(http11.responseHead(status: 200, framing: .untilClose, requestFinished: true, draining: false),
                       .forward(framing: .close, keepAlive: false))
        XCTAssertEqual(http11.responseHead(status: 204, framing: .none, requestFinished: true, draining: false),
                       .forward(framing: .none, keepAlive: true))
        XCTAssertEqual(http11.responseHead(status: 413, framing: .contentLength(0), requestFinished: false, draining: false),
                       .forward(framing: .contentLength(0), keepAlive: false), "an early answer leaves unread body bytes: close")
        XCTAssertEqual(http11.responseHead(status: 200, framing: .contentLength(1), requestFinished: true, draining: true),
                       .forward(framing: .contentLength(1), keepAlive: false), "draining: Connection: close")
        let http10 = routed(RequestFacts(version: .http10))
        XCTAssertEqual(http10.responseHead(status: 200, framing: .chunked, requestFinished: true, draining: false),
                       .forward(framing: .close, keepAlive: false), "no chunked to an HTTP/1.0 client")
        let closeAsked = routed(RequestFacts(keepAlive: false))
        XCTAssertEqual(closeAsked.responseHead(status: 200, framing: .contentLength(1), requestFinished: true, draining: false),
                       .forward(framing: .contentLength(1), keepAlive: false))
        let drainingWhenParsed = routed(draining: true)
        XCTAssertEqual(drainingWhenParsed.responseHead(status: 200, framing: .contentLength(1), requestFinished: true, draining: false),
                       .forward(framing: .contentLength(1), keepAlive: false))
    }

    func testAFinishedResponseParksTheUpstreamOnlyWhenItAndTheRequestAllowIt() {
        var machine = routed()
        machine.finalHeadForwarded(keepAlive: true, upstreamReusable: true)
        XCTAssertEqual(machine.responseFinished(requestFinished: true, draining: false).mayParkUpstream, true)
        XCTAssertEqual(machine.responseFinished(requestFinished: false, draining: false).mayParkUpstream, false)
        XCTAssertEqual(machine.responseFinished(requestFinished: true, draining: false).keepAlive, true)
        XCTAssertEqual(machine.responseFinished(requestFinished: true, draining: true).keepAlive, false)
        var closing = routed()
        closing.finalHeadForwarded(keepAlive: true, upstreamReusable: false)
        XCTAssertEqual(closing.responseFinished(requestFinished: true, draining: false).mayParkUpstream, false)
        machine.exchangeEnded(keepAlive: true)
        XCTAssertEqual(machine.state, .awaitingHead(headArmed: false))
        closing.exchangeEnded(keepAlive: false)
        XCTAssertEqual(closing.state, .closing(shutdownSent: false))
    }

    // MARK: Failures

    func testAFailureBeforeTheResponseIsAnsweredAfterItTheResponseIsCutOff() {
        let before = routed()
        XCTAssertEqual(before.exchangeFailed(requestFinished: true), .answer(keepAlive: true))
        XCTAssertEqual(before.exchangeFailed(requestFinished: false), .answer(keepAlive: false), "unread body bytes: close after")
        var after = routed()
        after.finalHeadForwarded(keepAlive: true, upstreamReusable: true)
        XCTAssertEqual(after.exchangeFailed(requestFinished: true), .abort)
        XCTAssertTrue(after.aborted(), "what was queued is delivered, then the connection closes")
        XCTAssertEqual(after.state, .closing(shutdownSent: false))
        var unanswered = routed()
        XCTAssertFalse(unanswered.aborted(), "nothing to deliver: close at once")
    }

    func testALocalAnswerKeepsTheConnectionOnlyWhenAskedAndNotDraining() {
        var machine = ExchangeMachine()
        machine.headReceived(RequestFacts(), draining: false)
        XCTAssertTrue(machine.localAnswerKeepsAlive(requested: true, draining: false))
        XCTAssertFalse(machine.localAnswerKeepsAlive(requested: true, draining: true))
        machine.answeredLocally(keepAlive: true)
        XCTAssertEqual(machine.state, .awaitingHead(headArmed: false))
        XCTAssertTrue(machine.finalResponseStarted)
        machine.headRejected()
        XCTAssertFalse(machine.finalResponseStarted)
        machine.answeredLocally(keepAlive: false)
        XCTAssertEqual(machine.state, .closing(shutdownSent: false))
    }

    func testRetriesCountAttemptsAndStopAtThree() {
        var machine = routed(RequestFacts(method: .get))
        let fresh = RetryPolicy.FailedAttempt(bytesSent: 0, reused: false, serverID: 7)
        XCTAssertEqual(machine.retryDecision(fresh), .retry(excludingServer: 7, headOnly: false))
        machine.retryStarted()
        XCTAssertEqual(machine.retryDecision(fresh), .retry(excludingServer: 7, headOnly: false))
        machine.retryStarted()
        XCTAssertEqual(machine.retryDecision(fresh), .giveUp, "three attempts per request")
    }

    func testTunnelEndsWhenBothDirectionsHaveEnded() {
        var machine = routed(RequestFacts(upgradeRequested: true))
        machine.tunnelStarted()
        machine.tunnelEnded(upstreamShut: true, clientShut: false)
        XCTAssertEqual(machine.state, .tunnel(.init(upstreamShut: true, clientShut: false)))
        machine.tunnelEnded(upstreamShut: false, clientShut: true)
        XCTAssertEqual(machine.state, .tunnel(.init(upstreamShut: true, clientShut: true)))
        XCTAssertEqual(machine.deadlinePassed(facts()), .close)
    }
}

/// RFC 9110 §9.2.2 as the proxy applies it (README "Retries").
final class RetryPolicyTests: XCTestCase {
    func testTheRetryTable() {
        typealias Attempt = RetryPolicy.FailedAttempt
        let rows: [(Attempt, HTTPMethod, Bool, Int, RetryPolicy.Decision, String)] = [
            (Attempt(bytesSent: 0, reused: false, serverID: 1), .post, true, 1, .retry(excludingServer: 1, headOnly: false),
             "nothing sent: any method, any body, to another server"),
            (Attempt(bytesSent: 0, reused: true, serverID: 1), .post, true, 1, .retry(excludingServer: nil, headOnly: false),
             "a stale pooled connection says nothing about its server"),
            (Attempt(bytesSent: 120, reused: true, serverID: 1), .get, false, 1, .retry(excludingServer: nil, headOnly: true),
             "a reused connection took an idempotent bodiless request: send the head again"),
            (Attempt(bytesSent: 120, reused: true, serverID: 1), .post, false, 1, .giveUp, "POST is not idempotent"),
            (Attempt(bytesSent: 120, reused: true, serverID: 1), .put, true, 1, .giveUp, "a body may have been consumed"),
            (Attempt(bytesSent: 120, reused: false, serverID: 1), .get, false, 1, .giveUp, "a fresh connection took the request"),
            (Attempt(bytesSent: 0, reused: false, serverID: 1), .get, false, 3, .giveUp, "three attempts at most"),
        ]
        for (attempt, method, body, attempts, expected, why) in rows {
            XCTAssertEqual(RetryPolicy.decide(attempt, method: method, requestHasBody: body, attempts: attempts), expected, why)
        }
    }

    func testOnlyAFreshConnectionFailingBeforeAByteCountsAgainstItsServer() {
        XCTAssertTrue(RetryPolicy.isConnectFailure(.init(bytesSent: 0, reused: false, serverID: 1)))
        XCTAssertFalse(RetryPolicy.isConnectFailure(.init(bytesSent: 0, reused: true, serverID: 1)))
        XCTAssertFalse(RetryPolicy.isConnectFailure(.init(bytesSent: 10, reused: false, serverID: 1)))
    }
}

/// What an exchange is recorded with, however it ends (README "Observability").
final class ExchangeRecordTests: XCTestCase {
    func testStatusesOfExchangesCutShort() {
        var unanswered = ExchangeRecord(startedNs: 0)
        unanswered.cutShort(status: 504, responseStarted: false, termination: .none)
        XCTAssertEqual(unanswered.status, 504)
        var underWay = ExchangeRecord(startedNs: 0)
        underWay.responseHead(status: 200, serverID: 3, nowNs: 5_000)
        underWay.cutShort(status: 502, responseStarted: true, termination: .none)
        XCTAssertEqual(underWay.status, 200, "the client saw a 200 begin: it keeps that status")
        XCTAssertEqual(underWay.serverID, 3)

        var reset = ExchangeRecord(startedNs: 0)
        reset.connectionEnded(responseStarted: false)
        XCTAssertEqual(reset.status, 499)
        XCTAssertEqual(reset.termination, .clientClosed)
        var stalled = ExchangeRecord(startedNs: 0)
        stalled.cutShort(status: 408, responseStarted: false, termination: .clientTimeout)
        stalled.connectionEnded(responseStarted: false)
        XCTAssertEqual(stalled.termination, .clientTimeout, "a known cause is kept")

        var drained = ExchangeRecord(startedNs: 0)
        drained.drainDeadlinePassed(responseStarted: false)
        XCTAssertEqual(drained.status, 503)
        XCTAssertEqual(drained.termination, .drainTimeout)
    }

    func testTimingsAndBytes() {
        var record = ExchangeRecord(startedNs: 1_000_000)
        record.headBytesIn = 100
        record.headBytesOut = 50
        record.requestSentNs = 3_000_000
        record.responseHead(status: 201, serverID: 1, nowNs: 5_000_000)
        XCTAssertEqual(record.upstreamMicros, 2_000, "from the request sent to the response head")
        let sample = record.sample(error: nil, requestBodyBytes: 10, responseBodyBytes: 20, nowNs: 9_000_000)
        XCTAssertEqual(sample.latencyMicros, 8_000)
        XCTAssertEqual(sample.bytesIn, 110)
        XCTAssertEqual(sample.bytesOut, 70)
        XCTAssertEqual(sample.outcome, .success)
        XCTAssertEqual(record.sample(error: .reset, requestBodyBytes: 0, responseBodyBytes: 0, nowNs: 9_000_000).outcome, .reset)
        var early = ExchangeRecord(startedNs: 1_000_000)
        early.responseHead(status: 413, serverID: 1, nowNs: 4_000_000)
        XCTAssertEqual(early.upstreamMicros, 3_000, "an answer before the request was sent is timed from its start")
    }

    func testPendingUntilRecorded() {
        var record = ExchangeRecord()
        XCTAssertFalse(record.isPending, "nothing routed, no log line: nothing to record")
        record.logSlot = 4
        XCTAssertTrue(record.isPending)
        record.recorded = true
        XCTAssertFalse(record.isPending)
    }
}
