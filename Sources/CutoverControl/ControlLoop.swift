import CutoverHTTP
import CutoverLoop
import CutoverSystem
import CutoverTLS
import Foundation
import Synchronization

/// One request a probe makes: `GET path` with `Host: host` against `address`, bounded by
/// `timeoutMs` in total (connect, send and the response head).
public struct ProbeRequest: Sendable, Equatable {
    public var address: SocketAddress
    public var host: String
    public var path: String
    public var timeoutMs: Int
    /// `upstream_tls`: the check speaks TLS (and verifies) as proxied requests do.
    public var tls: UpstreamTLSTarget?

    public init(address: SocketAddress, host: String, path: String, timeoutMs: Int, tls: UpstreamTLSTarget? = nil) {
        self.address = address
        self.host = host
        self.path = path
        self.timeoutMs = timeoutMs
        self.tls = tls
    }

    public static func == (lhs: ProbeRequest, rhs: ProbeRequest) -> Bool {
        lhs.address == rhs.address && lhs.host == rhs.host && lhs.path == rhs.path && lhs.timeoutMs == rhs.timeoutMs
            && lhs.tls === rhs.tls
    }
}

/// How the control plane checks a server: asynchronously; `done` is called exactly once, on
/// any thread. The default is `ControlLoop.networkProbe` (non-blocking, on the checker's
/// loop); tests inject scripted answers.
public typealias Probe = @Sendable (_ request: ProbeRequest, _ done: @escaping @Sendable (CheckOutcome) -> Void) -> Void

/// The control plane's event loop, one thread: every active health check and every verify
/// request of the switch gate (non-blocking connect, send and read, each probe with its total
/// deadline in the loop's timer wheel), the control plane's periodic work, and the admin
/// socket's clients. One thread whatever the number of servers or clients: a hung server costs
/// one timeout and one descriptor, never a thread, and never delays another server's check.
public final class ControlLoop: @unchecked Sendable {
    /// Check targets by key, with when each is due; touched only on the loop thread.
    package struct Target: Sendable {
        package var key: ControlPlane.ServerKey
        package var request: ProbeRequest
        package var intervalMs: Int

        package init(key: ControlPlane.ServerKey, request: ProbeRequest, intervalMs: Int) {
            self.key = key
            self.request = request
            self.intervalMs = intervalMs
        }
    }

    private let loop: EventLoop
    private let started = Mutex<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private var scheduler: CheckScheduler?

    public init() throws(IOError) {
        loop = try EventLoop(index: -1, bufferSize: 16 * 1024, maxHeaders: 100)
    }

    deinit {
        stop()
    }

    /// Starts the loop thread (once; later calls do nothing).
    public func start() {
        let first = started.withLock { running -> Bool in
            defer { running = true }
            return !running
        }
        guard first else { return }
        let box = UncheckedBox(loop)
        let thread = Thread { [finished] in
            box.value.run()
            finished.signal()
        }
        thread.name = "cutover-control"
        thread.start()
    }

    /// Stops the loop; in-flight probes are abandoned (their `done` is not called).
    public func stop() {
        let wasRunning = started.withLock { running -> Bool in
            defer { running = false }
            return running
        }
        guard wasRunning else { return }
        loop.requestStop()
        finished.wait()
    }

    /// The loop, started: for channels of the control plane (admin clients). Their methods run
    /// on its thread only; other threads reach it through `execute`.
    package var eventLoop: EventLoop {
        start()
        return loop
    }

    /// Runs `work` on the loop's thread.
    package func execute(_ work: @escaping @Sendable () -> Void) {
        start()
        loop.execute(work)
    }

    /// Registers a listening channel built on the loop's thread and waits until it is in place.
    /// Nil when it could not be registered (its descriptor is closed then).
    package func addListener(_ make: @escaping @Sendable (EventLoop) -> Channel) -> Channel? {
        let registered = DispatchSemaphore(value: 0)
        let result = Mutex<UncheckedBox<Channel>?>(nil)
        let box = UncheckedBox(eventLoop)
        loop.execute {
            let listener = make(box.value)
            do {
                try box.value.register(listener)
                result.withLock { $0 = UncheckedBox(listener) }
            } catch {
                Posix.close(listener.fd)
            }
            registered.signal()
        }
        registered.wait()
        return result.withLock { $0?.value }
    }

    /// Closes `listener` and every client channel `isClient` picks, on the loop's thread, and
    /// waits (at most 5 s: a stopped loop runs nothing).
    package func removeListener(_ listener: Channel, closing isClient: @escaping @Sendable (Channel) -> Bool,
                                shutDown: @escaping @Sendable (Channel) -> Void) {
        let removed = DispatchSemaphore(value: 0)
        let box = UncheckedBox(listener)
        loop.execute {
            let listener = box.value
            listener.loop.forEachChannel { channel in if isClient(channel) { shutDown(channel) } }
            listener.loop.closeChannel(listener)
            removed.signal()
        }
        _ = removed.wait(timeout: .now() + 5)
    }

    /// The default probe: a non-blocking `GET` on the checker's loop.
    public var networkProbe: Probe {
        start()
        let box = UncheckedBox(loop)
        return { request, done in
            box.value.execute { ProbeConnection.start(request, loop: box.value, done: done) }
        }
    }

    /// One probe, waited for (tools and tests; the control plane never waits on one probe).
    public func probeAndWait(_ request: ProbeRequest) -> CheckOutcome {
        let answered = DispatchSemaphore(value: 0)
        let result = Mutex<CheckOutcome>(.failure(reason: "not run"))
        networkProbe(request) { outcome in
            result.withLock { $0 = outcome }
            answered.signal()
        }
        _ = answered.wait(timeout: .now() + .milliseconds(request.timeoutMs + 2_000))
        return result.withLock { $0 }
    }

    /// Replaces the checked targets: each is probed with `probe` at once, then every
    /// `intervalMs` after its previous check ended; `report` gets each outcome on the loop
    /// thread. Outcomes of the targets replaced arrive no more (their generation ended).
    /// `periodic` runs every `periodMs` besides.
    package func check(_ targets: [Target], probe: @escaping Probe, periodMs: Int,
                      periodic: @escaping @Sendable () -> Void,
                      report: @escaping @Sendable (ControlPlane.ServerKey, CheckOutcome) -> Void) {
        start()
        let box = UncheckedBox(self)
        loop.execute {
            let checker = box.value
            checker.scheduler?.retire()
            do {
                let scheduler = try CheckScheduler(loop: checker.loop, targets: targets, probe: probe, periodMs: periodMs,
                                                   periodic: periodic, report: report)
                checker.scheduler = scheduler
            } catch {
                checker.scheduler = nil
            }
        }
    }
}

/// Runs the checks of one generation of targets: a channel whose only event is its deadline
/// (an eventfd that is never signalled keeps its place in the loop), set to the earliest due
/// check or periodic run.
private final class CheckScheduler: Channel {
    private struct Entry {
        var target: ControlLoop.Target
        var due: Int64
        var inFlight = false
    }

    private var entries: [Entry]
    private let probe: Probe
    private let periodMs: Int
    private var nextPeriodic: Int64
    private let periodic: @Sendable () -> Void
    private let report: @Sendable (ControlPlane.ServerKey, CheckOutcome) -> Void
    private var retired = false

    init(loop: EventLoop, targets: [ControlLoop.Target], probe: @escaping Probe, periodMs: Int,
         periodic: @escaping @Sendable () -> Void,
         report: @escaping @Sendable (ControlPlane.ServerKey, CheckOutcome) -> Void) throws(IOError) {
        entries = targets.map { Entry(target: $0, due: loop.now) }
        self.probe = probe
        self.periodMs = periodMs
        nextPeriodic = loop.now + Int64(periodMs)
        self.periodic = periodic
        self.report = report
        super.init(fd: try EventFD.create(), loop: loop)
        try loop.register(self)
        runDue()
    }

    /// This generation ends: no more checks, no more reports.
    func retire() {
        retired = true
        loop.closeChannel(self)
    }

    override func deadlineReached() {
        runDue()
    }

    private func runDue() {
        guard !retired else { return }
        let now = loop.now
        if now >= nextPeriodic {
            periodic()
            nextPeriodic = now + Int64(periodMs)
        }
        var next = nextPeriodic
        for index in entries.indices {
            if !entries[index].inFlight && entries[index].due <= now {
                entries[index].inFlight = true
                let key = entries[index].target.key
                let box = UncheckedBox(self)
                probe(entries[index].target.request) { outcome in
                    // Back on the loop thread (a probe may answer on any thread, or at once).
                    box.value.loop.execute { box.value.finished(index, key, outcome) }
                }
            }
            if !entries[index].inFlight { next = min(next, entries[index].due) }
        }
        deadline = 0
        setDeadline(after: Int(max(1, next - now)))
    }

    private func finished(_ index: Int, _ key: ControlPlane.ServerKey, _ outcome: CheckOutcome) {
        guard !retired, index < entries.count, entries[index].target.key == key else { return }
        report(key, outcome)
        entries[index].inFlight = false
        entries[index].due = loop.now + Int64(entries[index].target.intervalMs)
        runDue()
    }
}

/// One non-blocking `GET` on the control loop: connect, send, read the response head; the
/// whole of it bounded by the request's deadline. Reasons read as an operator would say them:
/// "refused", "timeout (connect)", "status 503", "closed without a response".
private struct ProbeFailure: Error {
    var reason: String
}

private final class ProbeConnection: Channel {
    private enum Phase {
        case connecting, sending, receiving, done
    }

    private let request: ProbeRequest
    private let done: @Sendable (CheckOutcome) -> Void
    private var phase: Phase
    private let startedAt: Int64
    private let bytes: [UInt8]
    private var sent = 0
    private var received: [UInt8] = []
    private var parser = ResponseHeadParser(limits: HTTPLimits(maxHeaderBytes: 8192))
    private static let maxHead = 8192
    /// `upstream_tls`: the session the request and response go through.
    private var tls: TLSConnection?

    static func start(_ request: ProbeRequest, loop: EventLoop, done: @escaping @Sendable (CheckOutcome) -> Void) {
        let fd: Int32
        let connected: Bool
        do {
            fd = try Posix.socket(family: request.address.family)
        } catch {
            done(.failure(reason: "socket: \(error)"))
            return
        }
        do {
            connected = try Posix.connect(fd, request.address)
        } catch {
            Posix.close(fd)
            done(.failure(reason: connectReason(error.errnoCode)))
            return
        }
        let probe = ProbeConnection(fd: fd, loop: loop, request: request, connected: connected, done: done)
        if let target = request.tls {
            guard let session = target.context.connect(fd: fd, serverName: target.serverName, verifyName: target.verifyName) else {
                Posix.close(fd)
                done(.failure(reason: "tls: out of memory"))
                return
            }
            probe.tls = session
        }
        do {
            try loop.register(probe)
        } catch {
            probe.tls?.free()
            probe.tls = nil
            Posix.close(fd)
            done(.failure(reason: "register: \(error)"))
            return
        }
        probe.setDeadline(after: request.timeoutMs)
        if connected { probe.advance() }
    }

    private init(fd: Int32, loop: EventLoop, request: ProbeRequest, connected: Bool, done: @escaping @Sendable (CheckOutcome) -> Void) {
        self.request = request
        self.done = done
        phase = connected ? .sending : .connecting
        startedAt = loop.now
        bytes = Array("GET \(request.path) HTTP/1.1\r\nHost: \(request.host)\r\nUser-Agent: cutover-health\r\nConnection: close\r\n\r\n".utf8)
        super.init(fd: fd, loop: loop)
    }

    override func handle(events: UInt32) {
        if phase == .connecting {
            guard events & (Epoll.writable | Epoll.error | Epoll.hangup) != 0 else { return }
            let code = Posix.socketError(fd)
            guard code == 0 else { return finish(.failure(reason: Self.connectReason(code))) }
            phase = .sending
        }
        advance()
    }

    override func deadlineReached() {
        switch phase {
        case .connecting: finish(.failure(reason: "timeout (connect)"))
        case .sending: finish(.failure(reason: "timeout (send)"))
        case .receiving: finish(.failure(reason: "timeout (\(request.timeoutMs) ms)"))
        case .done: break
        }
    }

    /// One send: bytes taken, nil to wait for the next event, or the failure's reason.
    private func send() -> Result<Int?, ProbeFailure> {
        if let tls {
            let outcome = bytes.withUnsafeBytes { tls.write(from: $0.baseAddress! + sent, count: $0.count - sent) }
            switch outcome {
            case .bytes(let count): return .success(count)
            case .wantRead, .wantWrite: return .success(nil)
            case .closed, .failed: return .failure(ProbeFailure(reason: tlsReason(tls)))
            }
        }
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(IOError) in try Posix.sendNoSignal(fd, buffer.baseAddress! + sent, buffer.count - sent) }
        }
        switch result {
        case .success(.processed(let count)): return .success(count)
        case .success(.wouldBlock): return .success(nil)
        case .failure: return .failure(ProbeFailure(reason: "reset"))
        }
    }

    /// One receive into `chunk`: bytes (0: end of stream), nil to wait, or the failure's reason.
    private func receive(_ chunk: inout [UInt8]) -> Result<Int?, ProbeFailure> {
        if let tls {
            let outcome = chunk.withUnsafeMutableBytes { tls.read(into: $0.baseAddress!, count: $0.count) }
            switch outcome {
            case .bytes(let count): return .success(count)
            case .closed: return .success(0)
            case .wantRead, .wantWrite: return .success(nil)
            case .failed: return .failure(ProbeFailure(reason: tlsReason(tls)))
            }
        }
        let result = chunk.withUnsafeMutableBytes { raw in
            Result { () throws(IOError) in try Posix.receive(fd, raw.baseAddress!, raw.count) }
        }
        switch result {
        case .success(.processed(let read)): return .success(read)
        case .success(.wouldBlock): return .success(nil)
        case .failure: return .failure(ProbeFailure(reason: "reset"))
        }
    }

    private func tlsReason(_ tls: TLSConnection) -> String {
        "tls: " + (tls.verifyFailure ?? (tls.handshakeDone ? "connection failed" : "handshake failed"))
    }

    fileprivate func advance() {
        while phase == .sending {
            switch send() {
            case .success(let count?):
                sent += count
                if sent == bytes.count { phase = .receiving }
            case .success(nil):
                return
            case .failure(let failure):
                return finish(.failure(reason: failure.reason))
            }
        }
        var chunk = [UInt8](repeating: 0, count: 4096)
        while phase == .receiving {
            let count: Int
            switch receive(&chunk) {
            case .success(let read?): count = read
            case .success(nil): return
            case .failure(let failure): return finish(.failure(reason: failure.reason))
            }
            if count == 0 {
                return finish(.failure(reason: received.isEmpty ? "closed without a response" : "bad response (truncated)"))
            }
            received += chunk[0..<count]
            guard received.count <= Self.maxHead else { return finish(.failure(reason: "bad response (head too large)")) }
            let outcome = received.withUnsafeBytes { raw in parser.parse(raw, requestMethod: .get, fields: loop.fields) }
            switch outcome {
            case .needMore:
                continue
            case .invalid(let error):
                return finish(.failure(reason: "bad response (\(error.reason))"))
            case .complete(let head, _):
                if head.isInformational { return finish(.failure(reason: "bad response (status \(head.status))")) }
                let latency = Int(loop.now - startedAt)
                if (200..<300).contains(head.status) { return finish(.success(status: head.status, latencyMs: latency)) }
                return finish(.failure(reason: "status \(head.status)"))
            }
        }
    }

    private func finish(_ outcome: CheckOutcome) {
        guard phase != .done else { return }
        phase = .done
        if let tls {
            tls.closeNotify()
            tls.free()
            self.tls = nil
        }
        loop.closeChannel(self)
        done(outcome)
    }

    private static func connectReason(_ code: Int32) -> String {
        switch code {
        case ECONNREFUSED: return "refused"
        case ETIMEDOUT: return "timeout (connect)"
        case EHOSTUNREACH, ENETUNREACH: return "unreachable"
        default: return "connect failed (errno \(code))"
        }
    }
}
