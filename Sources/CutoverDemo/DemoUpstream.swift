import CutoverConfig
import CutoverHTTP
import CutoverLoop
import CutoverSystem
import Foundation

/// A small, fast upstream that names its color: `GET /` answers the color word with an
/// `X-Color` header, `/api/system/status` answers a JSON status. Used by `cutover demo`, the
/// tests and the benchmarks. It runs on its own event loop thread.
public final class DemoUpstream: @unchecked Sendable {
    public struct Options: Sendable {
        public var color: String
        public var host: String = "127.0.0.1"
        public var port: UInt16 = 0
        /// Extra bytes appended to the body of `/` (benchmarks of larger responses).
        public var bodySize: Int = 0
        /// Every answer is held back this long (a slow release, for benchmarks and demos).
        public var delayMs: Int = 0
        /// Share of answers on paths other than the status endpoint that are a 500.
        public var failRate: Double = 0

        public init(color: String, host: String = "127.0.0.1", port: UInt16 = 0, bodySize: Int = 0,
                    delayMs: Int = 0, failRate: Double = 0) {
            self.color = color
            self.host = host
            self.port = port
            self.bodySize = bodySize
            self.delayMs = delayMs
            self.failRate = failRate
        }
    }

    public let options: Options
    public private(set) var address: SocketAddress?
    private var loop: EventLoop?
    private let finished = DispatchSemaphore(value: 0)

    public init(_ options: Options) {
        self.options = options
    }

    public var port: UInt16 { address?.port ?? 0 }

    public func start() throws {
        ProcessResources.ignoreBrokenPipes()
        guard let bindAddress = SocketAddress.resolve(host: options.host, port: options.port) else {
            throw StartupError("demo upstream: cannot resolve \(options.host)")
        }
        let loop = try EventLoop(index: 0, bufferSize: 16 * 1024, maxHeaders: 100)
        let fd: Int32
        do {
            fd = try Posix.openListener(bindAddress)
        } catch {
            throw StartupError("demo upstream \(options.color): cannot listen on \(bindAddress): \(error)")
        }
        address = Posix.localAddress(fd)
        let responses = DemoResponses(options: options)
        try loop.register(DemoListener(fd: fd, loop: loop, responses: responses))
        self.loop = loop
        let box = UncheckedBox(loop)
        let done = finished
        let thread = Thread {
            box.value.run()
            done.signal()
        }
        thread.name = "cutover-demo-\(options.color)"
        thread.start()
    }

    public func stop() {
        guard let loop else { return }
        loop.requestStop()
        finished.wait()
        let box = UncheckedBox(loop)
        // Close what is still open; the loop thread has stopped, so this thread owns it now.
        for channel in box.value.channelsSnapshot() { box.value.closeChannel(channel) }
        self.loop = nil
    }
}

/// Pre-rendered responses: nothing is formatted per request.
final class DemoResponses {
    let root: [UInt8]
    let rootHead: [UInt8]
    let status: [UInt8]
    let statusHead: [UInt8]
    let badRequest: [UInt8]
    let failure: [UInt8]
    let delayMs: Int
    let failRate: Double

    init(options: DemoUpstream.Options) {
        delayMs = options.delayMs
        failRate = options.failRate
        let word = options.color + "\n"
        let body = word + String(repeating: "x", count: options.bodySize)
        func response(_ contentType: String, _ body: String, headOnly: Bool) -> [UInt8] {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: \(contentType)\r\nX-Color: \(options.color)\r\n"
                + "Content-Length: \(body.utf8.count)\r\n\r\n"
            return Array((headOnly ? head : head + body).utf8)
        }
        root = response("text/plain", body, headOnly: false)
        rootHead = response("text/plain", body, headOnly: true)
        let json = "{\"status\":\"ok\",\"color\":\"\(options.color)\"}\n"
        status = response("application/json", json, headOnly: false)
        statusHead = response("application/json", json, headOnly: true)
        badRequest = Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
        let failed = "injected failure (\(options.color))\n"
        failure = Array(("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nX-Color: \(options.color)\r\n"
                         + "Content-Length: \(failed.utf8.count)\r\n\r\n" + failed).utf8)
    }
}

final class DemoListener: Channel {
    let responses: DemoResponses

    init(fd: Int32, loop: EventLoop, responses: DemoResponses) {
        self.responses = responses
        super.init(fd: fd, loop: loop)
    }

    package override func handle(events: UInt32) {
        while true {
            guard case .processed(let (fd, _))? = try? Posix.accept(fd) else { return }
            _ = try? Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let connection = DemoConnection(fd: fd, loop: loop, responses: responses)
            do { try loop.register(connection) } catch { Posix.close(fd) }
        }
    }
}

/// One connection to the demo upstream: parse a head, skip its body, answer, repeat. It keeps
/// to the data plane's syscall discipline (edge-triggered, a short read means drained, one
/// write per batch of answers) so that, in benchmarks, the upstream costs as little as possible.
final class DemoConnection: Channel {
    private let responses: DemoResponses
    private var input = IOBuffer()
    private var output = IOBuffer()
    private var discard = IOBuffer()
    private var parser = RequestHeadParser(limits: HTTPLimits())
    private var body: BodyRelay? = nil
    private var pendingResponse: [UInt8] = []
    /// A response held back by `delayMs`; nothing more is parsed until it went out.
    private var delayed: [UInt8]? = nil
    private var keepAlive = true
    private var closed = false
    private var readable = false
    private var hangupSeen = false
    private var random: UInt64

    init(fd: Int32, loop: EventLoop, responses: DemoResponses) {
        self.responses = responses
        // Each connection fails its own random requests: benchmark runs must not repeat one
        // failure pattern (the rollback-speed runs would all measure the same sequence).
        random = UInt64.random(in: 1...UInt64.max)
        super.init(fd: fd, loop: loop)
    }

    package override func handle(events: UInt32) {
        guard !closed else { return }
        if events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup | Epoll.error) != 0 { readable = true }
        if events & (Epoll.peerHangup | Epoll.hangup) != 0 { hangupSeen = true }
        pump()
    }

    package override func deadlineReached() {
        guard !closed, let response = delayed else { return }
        delayed = nil
        queue(response)
        flush()
        pump()
    }

    private func pump() {
        var progressed = true
        while progressed && !closed {
            progressed = false
            if readSome() { progressed = true }
            if processRequests() { progressed = true }
        }
        flush()
        if !closed && input.isEmpty { loop.buffers.release(&input) }
    }

    private func readSome() -> Bool {
        guard readable else { return false }
        loop.buffers.acquire(into: &input)
        input.compactIfNeeded(minimumSpace: input.capacity / 4)
        let space = input.spaceAtEnd
        guard space > 0 else { return false }
        switch try? Posix.read(fd, input.writableBytes.baseAddress!, space) {
        case .processed(0)?, nil:
            if delayed != nil {
                // A half-closed client still gets its delayed answer; then the connection ends.
                keepAlive = false
                readable = false
            } else {
                close()
            }
            return false
        case .processed(let count)?:
            input.end += count
            if count < space && !hangupSeen { readable = false }
            return true
        case .wouldBlock?:
            readable = false
            return false
        }
    }

    private func processRequests() -> Bool {
        var progressed = false
        loop.buffers.acquire(into: &output)
        while !closed && !input.isEmpty && delayed == nil {
            if var relay = body {
                loop.buffers.acquire(into: &discard)
                let outcome = relay.move(from: &input, to: &discard)
                discard.consume(discard.count)
                body = relay
                switch outcome {
                case .finished:
                    body = nil
                    answer(pendingResponse)
                    progressed = true
                case .invalid:
                    close()
                    return false
                case .progressed:
                    progressed = true
                case .blocked:
                    return progressed
                }
                continue
            }
            switch parser.parse(input.readableBytes, fields: loop.fields) {
            case .needMore:
                return progressed
            case .invalid:
                keepAlive = false
                queue(responses.badRequest)
                input.consume(input.count)
            case .complete(let head, let consumed):
                parser.reset()
                let source = input.readableBytes
                let path = UnsafeRawBufferPointer(rebasing: source[head.path.lowerBound..<head.path.upperBound])
                let isStatus = path.starts(with: Self.statusPath)
                let isHead = head.method == .head
                var response = isStatus ? (isHead ? responses.statusHead : responses.status)
                                        : (isHead ? responses.rootHead : responses.root)
                if !isStatus && responses.failRate > 0 && nextRandomUnit() < responses.failRate {
                    response = responses.failure
                }
                keepAlive = head.keepAlive
                input.consume(consumed)
                if !head.hasBody {
                    answer(response)
                } else {
                    body = BodyRelay(framing: head.framing, rechunk: false)
                    pendingResponse = response
                }
            }
            progressed = true
        }
        return progressed
    }

    private static let statusPath = Array("/api/system/status".utf8)

    /// Queues an answer now, or after `delayMs`.
    private func answer(_ response: [UInt8]) {
        if responses.delayMs > 0 {
            delayed = response
            setDeadline(after: responses.delayMs)
        } else {
            queue(response)
        }
    }

    private func nextRandomUnit() -> Double {
        random ^= random << 13
        random ^= random >> 7
        random ^= random << 17
        return Double(random >> 11) / Double(1 << 53)
    }

    private func queue(_ response: [UInt8]) {
        var offset = 0
        while offset < response.count && !closed {
            loop.buffers.acquire(into: &output)
            output.compactIfNeeded(minimumSpace: output.capacity)
            let count = min(output.spaceAtEnd, response.count - offset)
            if count == 0 {
                flush()
                if output.spaceAtEnd == 0 { break }  // the client stopped reading: give up on it
                continue
            }
            response.withUnsafeBytes { output.append(UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + count)])) }
            offset += count
        }
        if !keepAlive { flush() }
    }

    private func flush() {
        while !output.isEmpty && !closed {
            guard case .processed(let count)? = try? Posix.write(fd, output.readableBytes.baseAddress!, output.count) else {
                break
            }
            output.consume(count)
        }
        if output.isEmpty {
            loop.buffers.release(&output)
            if !keepAlive && delayed == nil { close() }  // a delayed answer still has to go out
        }
    }

    private func close() {
        guard !closed else { return }
        closed = true
        loop.buffers.release(&input)
        loop.buffers.release(&output)
        loop.buffers.release(&discard)
        loop.closeChannel(self)
    }
}
