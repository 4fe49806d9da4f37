import CutoverMetrics
import CutoverConfig
import CutoverHTTP
import CutoverLoop
import CutoverSystem
import Foundation

/// What `cutover-bench load` runs: HTTP/1.1 keep-alive clients on epoll loops, closed loop (each
/// connection sends its next request when the last answer arrived) or open loop at a fixed rate
/// with latency measured from each request's intended send time (coordinated omission
/// corrected, like wrk2).
public struct LoadOptions: Sendable {
    public var address: SocketAddress
    public var hostHeader: String
    public var path: String
    public var connections: Int = 50
    public var durationMs: Int = 10_000
    public var threads: Int = 1
    /// Requests per second over all connections; nil: closed loop.
    public var rate: Double? = nil
    public var method: String = "GET"
    public var bodySize: Int = 0
    /// Extra request header lines (`Name: value`), sent with every request.
    public var headers: [String] = []
    /// A new connection for every request (no keep-alive).
    public var newConnection = false
    public var timeoutMs: Int = 10_000

    public init(address: SocketAddress, hostHeader: String, path: String) {
        self.address = address
        self.hostHeader = hostHeader
        self.path = path
    }

    /// `http://host:port/path`
    public static func parse(url: String) -> (address: SocketAddress, host: String, path: String)? {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst(7)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        let hostPort = authority.split(separator: ":", maxSplits: 1)
        guard let host = hostPort.first else { return nil }
        let port = hostPort.count > 1 ? UInt16(hostPort[1]) : 80
        guard let port, let address = SocketAddress.resolve(host: String(host), port: port) else { return nil }
        return (address, String(authority), path.isEmpty ? "/" : String(path))
    }
}

/// One answered (or failed) request, for observers such as the switch benchmark.
public struct ResponseSample: Sendable {
    /// When the request was meant to be sent (open loop) or was sent (closed loop), monotonic ns.
    public var intendedNs: Int64
    public var completedNs: Int64
    public var status: Int
    /// "blue", "green" or nil, from `X-Color` or the first word of the body.
    public var color: String?
    /// Set when the request failed: connect, reset, closed, timeout, invalid.
    public var error: String?
}

public struct LoadReport: Sendable {
    public var requests = 0
    public var seconds = 0.0
    public var errors: [String: Int] = [:]
    public var non2xx = 0
    public var latency = LatencyHistogram()
    public var colors: [String: Int] = [:]

    public var rps: Double { seconds > 0 ? Double(requests) / seconds : 0 }

    mutating func merge(_ other: LoadReport) {
        requests += other.requests
        non2xx += other.non2xx
        latency.merge(other.latency)
        for (key, value) in other.errors { errors[key, default: 0] += value }
        for (key, value) in other.colors { colors[key, default: 0] += value }
    }

    public var text: String {
        func ms(_ micros: UInt64) -> String { String(format: "%.3f ms", Double(micros) / 1000) }
        var lines = [
            String(format: "requests %d in %.2f s: %.0f req/s", requests, seconds, rps),
            "latency p50 \(ms(latency.percentile(50)))  p90 \(ms(latency.percentile(90)))  p99 \(ms(latency.percentile(99)))  "
                + "p99.9 \(ms(latency.percentile(99.9)))  max \(ms(latency.max == 0 ? 0 : latency.max))",
            "non-2xx \(non2xx)   errors \(errors.isEmpty ? "0" : errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))",
        ]
        if !colors.isEmpty {
            lines.append("colors " + colors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }

    public var json: JSON {
        func microsJSON(_ p: Double) -> JSON { .int(Int64(latency.percentile(p))) }
        return ["requests": .int(Int64(requests)), "seconds": .double(seconds), "rps": .double(rps.rounded()),
                "non_2xx": .int(Int64(non2xx)),
                "errors": .object(errors.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }),
                "latency_us": ["p50": microsJSON(50), "p90": microsJSON(90), "p99": microsJSON(99), "p99_9": microsJSON(99.9),
                               "max": .int(Int64(latency.count == 0 ? 0 : latency.max))],
                "colors": .object(colors.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }),
                "percentile_curve": .array(percentileCurve.map { [.double($0.percentile), .int(Int64($0.micros))] })]
    }

    /// The points of an HdrHistogram-style percentile plot, up to the max.
    public static let plottedPercentiles: [Double] = [0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 97.5, 98, 98.5,
                                                      99, 99.25, 99.5, 99.75, 99.9, 99.925, 99.95, 99.975, 99.99, 99.995, 99.999, 100]

    public var percentileCurve: [(percentile: Double, micros: UInt64)] {
        guard latency.count > 0 else { return [] }
        return Self.plottedPercentiles.map { ($0, $0 >= 100 ? latency.max : latency.percentile($0)) }
    }
}

public enum LoadGenerator {
    /// Runs the load and returns the merged report. `observer` is called for every sample on
    /// the loop threads (keep it cheap and thread-safe).
    public static func run(_ options: LoadOptions, observer: (@Sendable (ResponseSample) -> Void)? = nil) throws -> LoadReport {
        ProcessResources.ignoreBrokenPipes()
        let threads = max(1, min(options.threads, options.connections))
        let start = monotonicNanoseconds()
        let endNs = start + Int64(options.durationMs) * 1_000_000
        var workers: [LoadWorker] = []
        for index in 0..<threads {
            let share = options.connections / threads + (index < options.connections % threads ? 1 : 0)
            workers.append(try LoadWorker(index: index, connections: share, options: options, endNs: endNs, observer: observer))
        }
        let group = DispatchGroup()
        for worker in workers {
            let box = UncheckedBox(worker)
            group.enter()
            Thread.detachNewThread {
                box.value.run()
                group.leave()
            }
        }
        group.wait()
        var report = LoadReport()
        for worker in workers { report.merge(worker.report) }
        report.seconds = Double(monotonicNanoseconds() - start) / 1e9
        report.seconds = min(report.seconds, Double(options.durationMs) / 1000 + 0.05)
        return report
    }
}

/// One load thread: an event loop and its share of the connections.
final class LoadWorker {
    let loop: EventLoop
    let options: LoadOptions
    let endNs: Int64
    let request: [UInt8]
    let observer: (@Sendable (ResponseSample) -> Void)?
    var report = LoadReport()
    private var connections: [LoadConnection] = []
    private var finished = 0
    /// Open loop: connections waiting for their next request to be due.
    private var sleepers: [(due: Int64, connection: LoadConnection)] = []
    /// The earliest due time the timer is armed for (.max: none).
    private var nextDueNs: Int64 = .max
    private var dueTimer: DueTimer?

    init(index: Int, connections count: Int, options: LoadOptions, endNs: Int64,
         observer: (@Sendable (ResponseSample) -> Void)?) throws {
        loop = try EventLoop(index: index, bufferSize: 64 * 1024, maxHeaders: 100)
        self.options = options
        self.endNs = endNs
        self.observer = observer
        var head = "\(options.method) \(options.path) HTTP/1.1\r\nHost: \(options.hostHeader)\r\nUser-Agent: cutover-bench\r\n"
        for header in options.headers { head += header + "\r\n" }
        if options.newConnection { head += "Connection: close\r\n" }
        if options.bodySize > 0 || options.method == "POST" || options.method == "PUT" {
            head += "Content-Length: \(options.bodySize)\r\n"
        }
        request = Array((head + "\r\n").utf8) + Array(repeating: UInt8(ascii: "x"), count: options.bodySize)
        // Open loop: connection k's requests are due at start + k·gap/n + i·gap.
        let perConnectionGap: Int64? = options.rate.map { Int64(Double(options.connections) / $0 * 1e9) }
        let start = monotonicNanoseconds()
        for slot in 0..<count {
            let offset = perConnectionGap.map { $0 * Int64(slot) / Int64(max(1, count)) } ?? 0
            connections.append(LoadConnection(worker: self, gapNs: perConnectionGap, firstDueNs: start + offset))
        }
    }

    func run() {
        // Requests become due with nanosecond precision (a timerfd armed for the earliest due
        // request): the loop's millisecond deadlines would add up to a tick to every latency
        // measured from the intended send time.
        if let timer = try? DueTimer(loop: loop, worker: self) {
            try? loop.register(timer)
            dueTimer = timer
        }
        for connection in connections { connection.begin() }
        if connections.isEmpty { return }
        loop.run()
    }

    func sleep(_ connection: LoadConnection, until due: Int64) {
        sleepers.append((due, connection))
        if due < nextDueNs {
            nextDueNs = due
            dueTimer?.arm(atNanoseconds: due)
        }
    }

    fileprivate func wakeDueConnections() {
        let now = monotonicNanoseconds()
        var due: [LoadConnection] = []
        var next: Int64 = .max
        sleepers.removeAll { entry in
            if entry.due <= now {
                due.append(entry.connection)
                return true
            }
            next = min(next, entry.due)
            return false
        }
        nextDueNs = next
        if next != .max { dueTimer?.arm(atNanoseconds: next) }
        for connection in due { connection.wakeUp() }
    }

    func connectionFinished() {
        finished += 1
        if finished == connections.count { loop.requestStop() }
    }

    func record(_ sample: ResponseSample) {
        if let error = sample.error {
            report.errors[error, default: 0] += 1
        } else {
            report.requests += 1
            if sample.status < 200 || sample.status >= 300 { report.non2xx += 1 }
            report.latency.record(UInt64(max(0, sample.completedNs - sample.intendedNs) / 1000))
            if let color = sample.color { report.colors[color, default: 0] += 1 }
        }
        observer?(sample)
    }
}

/// One client connection of the load generator.
final class LoadConnection {
    unowned let worker: LoadWorker
    private var socket: LoadSocket?
    private let gapNs: Int64?
    private var dueNs: Int64
    private var sentNs: Int64 = 0
    private var done = false

    init(worker: LoadWorker, gapNs: Int64?, firstDueNs: Int64) {
        self.worker = worker
        self.gapNs = gapNs
        dueNs = firstDueNs
    }

    func begin() { scheduleNext() }

    /// Sends the next request now, or waits until it is due (open loop).
    func scheduleNext() {
        let now = monotonicNanoseconds()
        guard now < worker.endNs else {
            finish()
            return
        }
        if gapNs != nil && dueNs > now {
            _ = ensureSocket()  // connect ahead of time; the request leaves when due
            worker.sleep(self, until: dueNs)
            return
        }
        send()
    }

    private func ensureSocket() -> LoadSocket? {
        if let socket, socket.isOpen { return socket }
        do {
            let fresh = try LoadSocket.connect(worker.options.address, loop: worker.loop, owner: self)
            socket = fresh
            return fresh
        } catch {
            failed("connect")
            return nil
        }
    }

    private func send() {
        sentNs = gapNs == nil ? monotonicNanoseconds() : dueNs
        if let gapNs { dueNs += gapNs }
        guard let socket = ensureSocket() else { return }
        socket.send(worker.request, timeoutMs: worker.options.timeoutMs)
    }

    /// An open-loop request became due.
    func wakeUp() { scheduleNext() }

    func completed(status: Int, color: String?, reusable: Bool) {
        worker.record(ResponseSample(intendedNs: sentNs, completedNs: monotonicNanoseconds(), status: status, color: color, error: nil))
        if !reusable || worker.options.newConnection {
            socket?.close()
            socket = nil
        }
        scheduleNext()
    }

    func failed(_ kind: String) {
        worker.record(ResponseSample(intendedNs: sentNs, completedNs: monotonicNanoseconds(), status: 0, color: nil, error: kind))
        socket?.close()
        socket = nil
        guard monotonicNanoseconds() < worker.endNs else {
            finish()
            return
        }
        // Do not hammer a refusing server: try again a little later.
        if kind == "connect" {
            usleep(1_000)
        }
        scheduleNext()
    }

    private func finish() {
        guard !done else { return }
        done = true
        socket?.close()
        socket = nil
        worker.connectionFinished()
    }
}

/// The socket of a `LoadConnection`: writes one request, parses one response.
final class LoadSocket: Channel {
    unowned let owner: LoadConnection
    private var input = IOBuffer()
    private var pending: [UInt8] = []
    private var pendingOffset = 0
    private var connected: Bool
    private var awaiting = false
    private var parser = ResponseHeadParser(limits: HTTPLimits(maxHeaderBytes: 64 * 1024))
    private var head: ResponseHead? = nil
    private var color: String? = nil
    private var body = BodyRelay(framing: .none, rechunk: false)
    private var discard = IOBuffer()
    private var readable = false
    private var hangupSeen = false
    private(set) var isOpen = true

    init(fd: Int32, loop: EventLoop, owner: LoadConnection, connected: Bool) {
        self.owner = owner
        self.connected = connected
        super.init(fd: fd, loop: loop)
    }

    static func connect(_ address: SocketAddress, loop: EventLoop, owner: LoadConnection) throws(IOError) -> LoadSocket {
        let fd = try Posix.socket(family: address.family)
        do {
            try Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let connected = try Posix.connect(fd, address)
            let socket = LoadSocket(fd: fd, loop: loop, owner: owner, connected: connected)
            try loop.register(socket)
            return socket
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    func send(_ request: [UInt8], timeoutMs: Int) {
        pending = request
        pendingOffset = 0
        awaiting = true
        head = nil
        color = nil
        parser.reset()
        setDeadline(after: timeoutMs)
        flush()
    }

    package override func handle(events: UInt32) {
        if events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup | Epoll.error) != 0 { readable = true }
        if events & (Epoll.peerHangup | Epoll.hangup) != 0 { hangupSeen = true }
        if events & Epoll.error != 0 && !connected {
            owner.failed("connect")
            return
        }
        if events & Epoll.writable != 0 { connected = true }
        flush()
        if isOpen { readResponse() }
    }

    package override func deadlineReached() {
        if awaiting { owner.failed("timeout") }
    }

    private func flush() {
        guard connected, isOpen, pendingOffset < pending.count else { return }
        let result = pending.withUnsafeBytes { try? Posix.write(fd, $0.baseAddress! + pendingOffset, pending.count - pendingOffset) }
        switch result {
        case .processed(let count)?: pendingOffset += count
        case .wouldBlock?: break
        case nil: owner.failed("reset")
        }
    }

    private func readResponse() {
        while isOpen && readable {
            loop.buffers.acquire(into: &input)
            input.compactIfNeeded(minimumSpace: input.capacity / 4)
            let space = input.spaceAtEnd
            let result = try? Posix.read(fd, input.writableBytes.baseAddress!, space)
            switch result {
            case .processed(0)?:
                readable = false
                if awaiting { owner.failed(head == nil && input.isEmpty ? "closed" : "truncated") } else { close() }
                return
            case .processed(let count)?:
                input.end += count
                if count < space && !hangupSeen { readable = false }
                if !consume() { return }
            case .wouldBlock?:
                readable = false
            case nil:
                if awaiting { owner.failed("reset") } else { close() }
                return
            }
        }
    }

    /// Parses what arrived. False when the connection was handed back (response complete).
    private func consume() -> Bool {
        while awaiting {
            if head == nil {
                switch parser.parse(input.readableBytes, requestMethod: .get, fields: loop.fields) {
                case .needMore:
                    return true
                case .invalid:
                    owner.failed("invalid")
                    return false
                case .complete(let parsed, let consumed):
                    if parsed.isInformational {
                        input.consume(consumed)
                        parser.reset()
                        continue
                    }
                    color = findColor(parsed, source: input.readableBytes)
                    input.consume(consumed)
                    head = parsed
                    body = BodyRelay(framing: parsed.framing, rechunk: false)
                }
            }
            guard let head else { return true }
            if color == nil && !input.isEmpty { color = Self.colorWord(input.readableBytes) }
            loop.buffers.acquire(into: &discard)
            let outcome = body.move(from: &input, to: &discard)
            discard.consume(discard.count)
            switch outcome {
            case .finished:
                awaiting = false
                clearDeadline()
                let reusable = head.reusable && input.isEmpty
                owner.completed(status: head.status, color: color, reusable: reusable)
                return false
            case .invalid:
                owner.failed("invalid")
                return false
            case .progressed, .blocked:
                if input.isEmpty { return true }
            }
        }
        return true
    }

    private func findColor(_ head: ResponseHead, source: UnsafeRawBufferPointer) -> String? {
        for index in 0..<head.fieldCount {
            let field = loop.fields[index]
            guard field.name.count == 7 else { continue }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: source[field.name.lowerBound..<field.name.upperBound]), as: UTF8.self)
            if name.lowercased() == "x-color" {
                return String(decoding: UnsafeRawBufferPointer(rebasing: source[field.value.lowerBound..<field.value.upperBound]), as: UTF8.self)
            }
        }
        return nil
    }

    private static func colorWord(_ body: UnsafeRawBufferPointer) -> String? {
        if body.starts(with: "blue".utf8) { return "blue" }
        if body.starts(with: "green".utf8) { return "green" }
        return nil
    }

    func close() {
        guard isOpen else { return }
        isOpen = false
        loop.buffers.release(&input)
        loop.buffers.release(&discard)
        loop.closeChannel(self)
    }
}

/// The open-loop schedule's timer: a timerfd on the worker's loop, armed for the earliest due
/// request; its expiry wakes the due connections.
final class DueTimer: Channel {
    unowned let worker: LoadWorker

    init(loop: EventLoop, worker: LoadWorker) throws(IOError) {
        self.worker = worker
        super.init(fd: try TimerFD.create(), loop: loop)
    }

    func arm(atNanoseconds due: Int64) {
        TimerFD.arm(fd, atNanoseconds: due)
    }

    override func handle(events: UInt32) {
        guard events & Epoll.readable != 0 else { return }
        TimerFD.drain(fd)
        worker.wakeDueConnections()
    }
}
