import CutoverHTTP
import CutoverLoop
import XCTest

/// Re-framing a body between two buffers, with back-pressure: what goes in, what comes out,
/// and when the relay stops. No socket: the buffers are the pool's own.
final class BodyRelayTests: XCTestCase {
    private let pool = BufferPool(bufferSize: 4096)

    private func buffer(_ text: String) -> IOBuffer {
        var buffer = IOBuffer()
        pool.acquire(into: &buffer)
        Array(text.utf8).withUnsafeBytes { buffer.append($0) }
        return buffer
    }

    private func text(_ buffer: IOBuffer) -> String {
        String(decoding: buffer.readableBytes, as: UTF8.self)
    }

    func testAContentLengthBodyIsCopiedAsIsAndStopsAtItsLength() {
        var relay = BodyRelay(framing: .contentLength(5), rechunk: false)
        var source = buffer("hello GET /next")
        var destination = buffer("")
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "finished")
        XCTAssertEqual(text(destination), "hello")
        XCTAssertEqual(text(source), " GET /next", "the next request stays in the source")
        XCTAssertEqual(relay.transferred, 5)
        XCTAssertTrue(relay.isFinished)
    }

    func testAChunkedBodyIsDecodedStrictlyAndWrittenAsFreshChunks() {
        var relay = BodyRelay(framing: .chunked, rechunk: true)
        var source = buffer("3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
        var destination = buffer("")
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "finished")
        XCTAssertEqual(text(destination), "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", "extensions and trailers are not passed on")
        XCTAssertEqual(relay.transferred, 5)
    }

    func testAChunkedBodyForAnHTTP10ClientIsWrittenRaw() {
        var relay = BodyRelay(framing: .chunked, rechunk: false)
        var source = buffer("4\r\nbody\r\n0\r\n\r\n")
        var destination = buffer("")
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "finished")
        XCTAssertEqual(text(destination), "body")
    }

    func testAMalformedChunkIsInvalid() {
        var relay = BodyRelay(framing: .chunked, rechunk: true)
        var source = buffer("zz\r\nabc\r\n")
        var destination = buffer("")
        guard case .invalid = relay.move(from: &source, to: &destination) else { return XCTFail("accepted a bad chunk size") }
    }

    func testAFullDestinationBlocksAndTheRestMovesWhenThereIsRoom() {
        var relay = BodyRelay(framing: .contentLength(6000), rechunk: false)
        var source = buffer(String(repeating: "a", count: 4000))
        var destination = IOBuffer()
        pool.acquire(into: &destination)
        Array(repeating: UInt8(ascii: "x"), count: 4000).withUnsafeBytes { destination.append($0) }
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "progressed", "only what fits is moved")
        XCTAssertEqual(destination.spaceAtEnd, 0)
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "blocked")
        destination.consume(destination.count)
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "progressed")
        XCTAssertEqual(relay.transferred, 4000)
        XCTAssertFalse(relay.isFinished, "2000 bytes still to come")
    }

    func testAnUntilCloseBodyEndsOnlyWhenItsSourceDoes() {
        var relay = BodyRelay(framing: .untilClose, rechunk: false)
        var source = buffer("stream")
        var destination = buffer("")
        XCTAssertEqual("\(relay.move(from: &source, to: &destination))", "progressed")
        XCTAssertFalse(relay.isFinished)
        XCTAssertTrue(relay.sourceEnded())
        XCTAssertEqual(text(destination), "stream")
    }
}
