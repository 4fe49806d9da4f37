import CutoverHTTP
import Foundation
import Glibc

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

        public init(color: String, host: String = "127.0.0.1", port: UInt16 = 0, bodySize: Int = 0) {
            self.color = color
            self.host = host
            self.port = port
            self.bodySize = bodySize
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
        signal(SIGPIPE, SIG_IGN)
        guard let bindAddress = SocketAddress.resolve(host: options.host, port: options.port) else {
            throw StartupError("demo upstream: cannot resolve \(options.host)")
        }
        let loop = try EventLoop(index: 0, bufferSize: 16 * 1024, maxHeaders: 100)
        let fd: Int32
        do {
            fd = try Listener.open(bindAddress)
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
    let notAllowed: [UInt8]

    init(options: DemoUpstream.Options) {
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
        notAllowed = Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
    }
}

final class DemoListener: Channel {
    let responses: DemoResponses

    init(fd: Int32, loop: EventLoop, responses: DemoResponses) {
        self.responses = responses
        super.init(fd: fd, loop: loop)
    }

    override func handle(events: UInt32) {
        while true {
            guard case .processed(let (fd, _))? = try? Posix.accept(fd) else { return }
            _ = try? Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let connection = DemoConnection(fd: fd, loop: loop, responses: responses)
            do { try loop.register(connection) } catch { Posix.close(fd) }
        }
    }
}

/// One connection to the demo upstream: parse a head, skip its body, answer, repeat.
final class DemoConnection: Channel {
    private let responses: DemoResponses
    private var input = IOBuffer()
    private var output = IOBuffer()
    private var discard = IOBuffer()
    private var parser = RequestHeadParser(limits: HTTPLimits())
    private var body: BodyRelay? = nil
    private var pendingResponse: [UInt8] = []
    private var keepAlive = true
    private var closed = false

    init(fd: Int32, loop: EventLoop, responses: DemoResponses) {
        self.responses = responses
        super.init(fd: fd, loop: loop)
    }

    override func handle(events: UInt32) {
        guard !closed else { return }
        var progressed = true
        while progressed && !closed {
            progressed = false
            if readSome() { progressed = true }
            if processRequests() { progressed = true }
        }
        if !closed && input.isEmpty { loop.buffers.release(&input) }
    }

    private func readSome() -> Bool {
        loop.buffers.acquire(into: &input)
        input.compactIfNeeded(minimumSpace: input.capacity / 4)
        guard input.spaceAtEnd > 0 else { return false }
        switch try? Posix.read(fd, input.writableBytes.baseAddress!, input.spaceAtEnd) {
        case .processed(0)?, nil:
            close()
            return false
        case .processed(let count)?:
            input.end += count
            return true
        case .wouldBlock?:
            return false
        }
    }

    private func processRequests() -> Bool {
        var progressed = false
        loop.buffers.acquire(into: &output)
        while !closed && !input.isEmpty {
            if var relay = body {
                loop.buffers.acquire(into: &discard)
                let outcome = relay.move(from: &input, to: &discard)
                discard.consume(discard.count)
                body = relay
                switch outcome {
                case .finished:
                    body = nil
                    queue(pendingResponse)
                    progressed = true
                case .invalid:
                    close()
                    return false
                case .progressed:
                    progressed = true
                    continue
                case .blocked:
                    return progressed
                }
                continue
            }
            switch parser.parse(input.readableBytes, fields: loop.fields) {
            case .needMore:
                return progressed
            case .invalid:
                queue(responses.notAllowed)
                keepAlive = false
            case .complete(let head, let consumed):
                parser.reset()
                let source = input.readableBytes
                let path = UnsafeRawBufferPointer(rebasing: source[head.path.lowerBound..<head.path.upperBound])
                let isStatus = path.starts(with: Self.statusPath)
                let isHead = head.method == .head
                let response = isStatus ? (isHead ? responses.statusHead : responses.status)
                                        : (isHead ? responses.rootHead : responses.root)
                keepAlive = head.keepAlive
                input.consume(consumed)
                if !head.hasBody {
                    queue(response)
                } else {
                    body = BodyRelay(framing: head.framing, rechunk: false)
                    pendingResponse = response
                }
            }
            progressed = true
        }
        flush()
        return progressed
    }

    private static let statusPath = Array("/api/system/status".utf8)

    private func queue(_ response: [UInt8]) {
        if output.spaceAtEnd < response.count { flush() }
        output.compactIfNeeded(minimumSpace: response.count)
        guard output.spaceAtEnd >= response.count else { return }
        response.withUnsafeBytes { output.append($0) }
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
            if !keepAlive { close() }
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
