import CutoverConfig
import CutoverHTTP
import CutoverLoop
import CutoverMetrics
import CutoverSystem
import CutoverViews
import Foundation

/// `metrics_listen`: a small HTTP/1.1 endpoint for Prometheus and people, apart from the data
/// plane (a scrape never takes a loop's time beyond the figures it merges). `GET /metrics` is
/// text exposition format 0.0.4; `GET /healthz` answers 200 while the process runs; `GET /`
/// (and `/status`) is the status page, `GET /status.json` its figures (the `overview` reply).
/// The page is read-only and served with a policy that allows no script and no fetch. Requests are
/// parsed by the same strict codec as proxied ones; every answer closes the connection. Clients
/// are read and answered on the control loop; the exposition (which asks every data-plane loop
/// for its figures) is built on a command thread.
public final class MetricsServer: @unchecked Sendable {
    let exposition: @Sendable () -> String?
    /// The `overview` reply with that many seconds of history; nil: no status page.
    let overview: (@Sendable (Int) -> JSON)?
    private let logger: Logger
    private let control: ControlLoop
    let commands = CommandThreads(count: 1, name: "cutover-metrics")
    /// Set by `start`, cleared by `stop` (the owner's thread).
    private var listener: Channel?
    var clients = 0
    public private(set) var address: SocketAddress?
    /// The listening socket (what a hot upgrade hands on).
    public private(set) var listenerFD: Int32 = -1

    static let maxClients = 16
    static let timeoutMs = 5_000
    static let maxHeadBytes = 8 * 1024

    /// `exposition` returns nil when the figures are incomplete: the scrape gets a 503.
    public init(logger: Logger, control: ControlLoop, overview: (@Sendable (Int) -> JSON)? = nil,
                exposition: @escaping @Sendable () -> String?) {
        self.logger = logger
        self.control = control
        self.overview = overview
        self.exposition = exposition
    }

    public func start(_ endpoint: Endpoint, inheritedFD: Int32? = nil) throws {
        guard var address = SocketAddress.resolve(host: endpoint.host, port: endpoint.port) else {
            throw StartupError("metrics_listen: cannot resolve '\(endpoint.host)'")
        }
        var fd: Int32 = -1
        if let inheritedFD {
            fd = inheritedFD  // a hot upgrade: the old process's socket
            Posix.setNonBlocking(fd)
        } else { do {
            fd = try Posix.socket(family: address.family)
            try Posix.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            try Posix.bind(fd, address)
            try Posix.listen(fd, backlog: 64)
        } catch {
            if fd >= 0 { Posix.close(fd) }
            throw StartupError("cannot listen on \(address) for metrics: \(error)")
        } }
        listenerFD = fd
        if let bound = Posix.localAddress(fd) { address = bound }
        self.address = address
        let box = UncheckedBox(self)
        let listening = fd
        listener = control.addListener { loop in MetricsListener(fd: listening, loop: loop, server: box.value) }
        logger.log(.info, "metrics on http://\(address)/metrics\(overview == nil ? "" : ", the status page on http://\(address)/")")
    }

    public func stop() {
        if let listener {
            self.listener = nil
            let box = UncheckedBox(self)
            control.removeListener(listener, closing: { ($0 as? MetricsClient)?.server === box.value },
                                   shutDown: { ($0 as? MetricsClient)?.close() })
        }
        commands.stop()
    }

    /// The answer to a parsed request: a complete HTTP/1.1 message that closes the connection.
    /// `/metrics` runs the exposition, so call it on a command thread.
    func answer(method: HTTPMethod, path: String) -> [UInt8] {
        let parts = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let route = parts.first.map(String.init) ?? path
        let statusRoutes: Set<String> = overview == nil ? [] : ["/", "/status", "/status.json"]
        guard route == "/metrics" || route == "/healthz" || statusRoutes.contains(route) else {
            return Self.message(status: 404, reason: "Not Found",
                                body: "not found: try \(overview == nil ? "" : "/ (the status page), /status.json, ")/metrics or /healthz\n")
        }
        guard method == .get || method == .head else {
            return Self.message(status: 405, reason: "Method Not Allowed", body: "use GET or HEAD\n", extra: "Allow: GET, HEAD\r\n")
        }
        if let overview, statusRoutes.contains(route) {
            // /status.json?seconds=N: the length of the series (default 300, the page's 5 min).
            var seconds = StatusHistory.capacity
            if parts.count == 2, let query = parts.last, query.hasPrefix("seconds=") {
                guard let value = Int(query.dropFirst("seconds=".count)), (1...StatusHistory.capacity).contains(value) else {
                    return Self.message(status: 400, reason: "Bad Request", body: "seconds: a number from 1 to \(StatusHistory.capacity)\n")
                }
                seconds = value
            }
            let report = overview(seconds)
            if route == "/status.json" {
                return Self.message(status: report["ok"]?.boolValue == true ? 200 : 503, reason: report["ok"]?.boolValue == true ? "OK" : "Service Unavailable",
                                    body: report.serialized() + "\n", headOnly: method == .head,
                                    contentType: "application/json", extra: "Cache-Control: no-store\r\n")
            }
            guard let figures = try? Overview(report) else {
                return Self.message(status: 503, reason: "Service Unavailable", body: "figures unavailable: \(report["error"]?.stringValue ?? "no reply")\n")
            }
            return Self.message(status: 200, reason: "OK", body: StatusPage.render(figures), headOnly: method == .head,
                                contentType: "text/html; charset=utf-8", extra: Self.pageHeaders)
        }
        if route == "/healthz" {
            return Self.message(status: 200, reason: "OK", body: "ok\n", headOnly: method == .head)
        } else if let text = exposition() {
            return Self.message(status: 200, reason: "OK", body: text, headOnly: method == .head,
                                contentType: "text/plain; version=0.0.4; charset=utf-8")
        } else {
            return Self.message(status: 503, reason: "Service Unavailable",
                                body: "figures incomplete: a worker loop did not answer in time\n")
        }
    }

    /// The page needs inline styles and nothing else: no script runs, nothing is fetched, no
    /// frame may embed it, whatever a hostile name in the figures tried.
    static let pageHeaders = "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'\r\n"
        + "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n"

    static func message(status: Int, reason: String, body: String, headOnly: Bool = false,
                        contentType: String = "text/plain; charset=utf-8", extra: String = "") -> [UInt8] {
        let bodyBytes = Array(body.utf8)
        var message = Array(("HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\n"
                             + "Content-Length: \(bodyBytes.count)\r\n\(extra)Connection: close\r\n\r\n").utf8)
        if !headOnly { message += bodyBytes }
        return message
    }
}

/// The metrics listener on the control loop.
final class MetricsListener: Channel {
    unowned let server: MetricsServer

    init(fd: Int32, loop: EventLoop, server: MetricsServer) {
        self.server = server
        super.init(fd: fd, loop: loop)
    }

    override func handle(events: UInt32) {
        while true {
            let accepted: IOResult<(Int32, sockaddr_storage)>
            do {
                accepted = try Posix.accept(fd)
            } catch {
                return
            }
            guard case .processed(let (client, _)) = accepted else { return }
            guard server.clients < MetricsServer.maxClients else {
                Posix.close(client)
                continue
            }
            let connection = MetricsClient(fd: client, loop: loop, server: server)
            do {
                try loop.register(connection)
                server.clients += 1
                connection.setDeadline(after: MetricsServer.timeoutMs)
            } catch {
                Posix.close(client)
            }
        }
    }
}

/// One scrape: the request head within one total deadline (a client trickling bytes holds a
/// slot for `timeoutMs` at most), then one answer, a half-close and a close.
final class MetricsClient: Channel {
    unowned let server: MetricsServer
    private var received: [UInt8] = []
    private var output: [UInt8] = []
    private var parser = RequestHeadParser(limits: HTTPLimits(maxHeaderBytes: MetricsServer.maxHeadBytes, maxHeaders: 64, maxURIBytes: 2048))
    /// The request was parsed: what is left is the answer.
    private var answered = false
    private var closed = false

    init(fd: Int32, loop: EventLoop, server: MetricsServer) {
        self.server = server
        super.init(fd: fd, loop: loop)
    }

    override func handle(events: UInt32) {
        if !answered { readRequest() }
        flush()
    }

    override func deadlineReached() {
        guard !closed else { return }
        if answered {
            close()  // the answer was not taken in time
        } else {
            respond(MetricsServer.message(status: 408, reason: "Request Timeout", body: "request head not received in time\n"))
        }
    }

    private func readRequest() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !answered && !closed {
            let result = chunk.withUnsafeMutableBytes { buffer in
                Result { () throws(IOError) in try Posix.read(fd, buffer.baseAddress!, buffer.count) }
            }
            switch result {
            case .success(.processed(0)), .failure:
                close()  // gone before a complete request: nothing to answer
                return
            case .success(.processed(let count)):
                received.append(contentsOf: chunk[0..<count])
            case .success(.wouldBlock):
                return
            }
            let outcome = received.withUnsafeBytes { parser.parse($0, fields: loop.fields) }
            switch outcome {
            case .needMore:
                if received.count >= MetricsServer.maxHeadBytes {
                    respond(MetricsServer.message(status: 431, reason: "Request Header Fields Too Large", body: "request head too large\n"))
                }
            case .invalid(let error):
                respond(MetricsServer.message(status: error.status, reason: "\(LocalResponse.reasonPhrase(error.status))",
                                              body: "\(error.reason)\n"))
            case .complete(let head, _):
                answered = true
                let path = String(decoding: received[Int(head.path.start)..<Int(head.path.start + head.path.count)], as: UTF8.self)
                let method = head.method
                let server = self.server
                let box = UncheckedBox(self)
                let loop = UncheckedBox(self.loop)
                server.commands.run {
                    let message = server.answer(method: method, path: path)
                    loop.value.execute { box.value.respond(message) }
                }
            }
        }
    }

    private func respond(_ message: [UInt8]) {
        guard !closed else { return }
        answered = true
        output = message
        deadline = 0
        setDeadline(after: MetricsServer.timeoutMs)
        flush()
    }

    private func flush() {
        guard !closed, answered, !output.isEmpty else { return }
        while !output.isEmpty {
            let result = output.withUnsafeBytes { buffer in
                Result { () throws(IOError) in try Posix.sendNoSignal(fd, buffer.baseAddress!, buffer.count) }
            }
            switch result {
            case .success(.processed(let count)):
                output.removeFirst(count)
            case .success(.wouldBlock):
                return
            case .failure:
                close()
                return
            }
        }
        Posix.shutdownWrite(fd)
        close()
    }

    func close() {
        guard !closed else { return }
        closed = true
        server.clients -= 1
        loop.closeChannel(self)
    }
}
