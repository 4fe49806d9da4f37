import CutoverConfig
import CutoverHTTP
import CutoverSystem
import Foundation

/// `metrics_listen`: a small HTTP/1.1 endpoint for Prometheus, apart from the data plane (a
/// scrape never takes a loop's time beyond the figures it merges). `GET /metrics` is text
/// exposition format 0.0.4; `GET /healthz` answers 200 while the process runs. Requests are
/// parsed by the same strict codec as proxied ones; every answer closes the connection.
public final class MetricsServer: @unchecked Sendable {
    private let exposition: @Sendable () -> String?
    private let logger: Logger
    private var threads: ClientThreads?
    public private(set) var address: SocketAddress?

    static let maxClients = 16
    static let timeoutMs = 5_000
    static let maxHeadBytes = 8 * 1024

    /// `exposition` returns nil when the figures are incomplete: the scrape gets a 503.
    public init(logger: Logger, exposition: @escaping @Sendable () -> String?) {
        self.logger = logger
        self.exposition = exposition
    }

    public func start(_ endpoint: Endpoint) throws {
        guard var address = SocketAddress.resolve(host: endpoint.host, port: endpoint.port) else {
            throw StartupError("metrics_listen: cannot resolve '\(endpoint.host)'")
        }
        var fd: Int32 = -1
        do {
            fd = try Posix.socket(family: address.family, blocking: true)
            try Posix.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            try Posix.bind(fd, address)
            try Posix.listen(fd, backlog: 64)
        } catch {
            if fd >= 0 { Posix.close(fd) }
            throw StartupError("cannot listen on \(address) for metrics: \(error)")
        }
        if let bound = Posix.localAddress(fd) { address = bound }
        self.address = address
        let threads = ClientThreads(name: "cutover-metrics", maxClients: Self.maxClients, serve: { [weak self] in self?.serve($0) })
        threads.start(listening: fd)
        self.threads = threads
        logger.log(.info, "metrics on http://\(address)/metrics")
    }

    public func stop() {
        threads?.stop()
    }

    private func serve(_ fd: Int32) {
        Posix.setBlockingTimeouts(fd, milliseconds: Self.timeoutMs)
        var parser = RequestHeadParser(limits: HTTPLimits(maxHeaderBytes: Self.maxHeadBytes, maxHeaders: 64, maxURIBytes: 2048))
        let fields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: 64)
        fields.initialize(repeating: HeaderField(name: .empty, value: .empty, kind: .other))
        defer { fields.deallocate() }
        var buffer = [UInt8](repeating: 0, count: Self.maxHeadBytes)
        var received = 0
        let started = monotonicMilliseconds()
        while true {
            // One deadline for the whole head: each read waits only for what is left of it, so
            // a client trickling bytes holds a slot for `timeoutMs` at most.
            let left = Int64(Self.timeoutMs) - (monotonicMilliseconds() - started)
            guard left > 0, Posix.waitFor(fd, events: Int16(POLLIN), timeoutMs: Int(left)) else {
                respond(fd, status: 408, reason: "Request Timeout", body: "request head not received in time\n")
                return
            }
            let result = buffer.withUnsafeMutableBytes { bytes in
                Result { () throws(IOError) in try Posix.receive(fd, bytes.baseAddress! + received, bytes.count - received) }
            }
            guard case .success(.processed(let count)) = result, count > 0 else { return }
            received += count
            let outcome = buffer.withUnsafeBytes { bytes in
                parser.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<received]), fields: fields)
            }
            switch outcome {
            case .needMore:
                if received == buffer.count {
                    respond(fd, status: 431, reason: "Request Header Fields Too Large", body: "request head too large\n")
                    return
                }
            case .invalid(let error):
                respond(fd, status: error.status, reason: "\(LocalResponse.reasonPhrase(error.status))", body: "\(error.reason)\n")
                return
            case .complete(let head, _):
                let path = buffer.withUnsafeBytes { bytes in
                    String(decoding: bytes[Int(head.path.start)..<Int(head.path.start + head.path.count)], as: UTF8.self)
                }
                answer(fd, method: head.method, path: path)
                return
            }
        }
    }

    private func answer(_ fd: Int32, method: HTTPMethod, path: String) {
        let route = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? path
        guard route == "/metrics" || route == "/healthz" else {
            respond(fd, status: 404, reason: "Not Found", body: "not found: try /metrics or /healthz\n")
            return
        }
        guard method == .get || method == .head else {
            respond(fd, status: 405, reason: "Method Not Allowed", body: "use GET or HEAD\n", extra: "Allow: GET, HEAD\r\n")
            return
        }
        if route == "/healthz" {
            respond(fd, status: 200, reason: "OK", body: "ok\n", headOnly: method == .head)
        } else if let text = exposition() {
            respond(fd, status: 200, reason: "OK", body: text, headOnly: method == .head,
                    contentType: "text/plain; version=0.0.4; charset=utf-8")
        } else {
            respond(fd, status: 503, reason: "Service Unavailable",
                    body: "figures incomplete: a worker loop did not answer in time\n")
        }
    }

    private func respond(_ fd: Int32, status: Int, reason: String, body: String, headOnly: Bool = false,
                         contentType: String = "text/plain; charset=utf-8", extra: String = "") {
        let bodyBytes = Array(body.utf8)
        var message = Array(("HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\n"
                             + "Content-Length: \(bodyBytes.count)\r\n\(extra)Connection: close\r\n\r\n").utf8)
        if !headOnly { message += bodyBytes }
        var sent = 0
        while sent < message.count {
            let result = message.withUnsafeBytes { bytes in
                Result { () throws(IOError) in try Posix.sendNoSignal(fd, bytes.baseAddress! + sent, bytes.count - sent) }
            }
            guard case .success(.processed(let count)) = result, count > 0 else { return }
            sent += count
        }
        Posix.shutdownWrite(fd)
    }
}
