import CutoverHTTP

/// Moves one message body from a source buffer to a destination buffer, re-framing it: bytes of
/// a Content-Length body are copied as they are; a chunked body is decoded strictly and written
/// as fresh chunks (or as plain bytes for an HTTP/1.0 client); an until-close body is copied
/// until the source ends. It only moves what fits in the destination, which is how
/// back-pressure works: a full destination stops the relay, a full source stops reading.
package struct BodyRelay {
    enum Input {
        case length(remaining: UInt64)
        case chunked(ChunkedDecoder)
        case untilClose
        case finished
    }

    package enum Outcome {
        case progressed
        case blocked  // nothing to move, or no room
        case finished
        case invalid(StaticString)
    }

    var input: Input
    /// Re-chunk decoded chunked data (false: write it raw, the receiver reads until close).
    var rechunk: Bool
    /// Body bytes moved so far (after decoding), for `max_body` and logs.
    package var transferred: UInt64 = 0
    private var finalChunkPending = false
    /// Hash the decoded payload into `digest` (a mirrored exchange's shadow diff).
    package var digesting = false
    /// FNV-1a 64 of the decoded payload moved so far, when `digesting`.
    package private(set) var digest: UInt64 = BodyRelay.digestBasis

    package static let digestBasis: UInt64 = 0xCBF2_9CE4_8422_2325

    @inline(__always)
    private mutating func addToDigest(_ bytes: UnsafeRawBufferPointer) {
        guard digesting else { return }
        var hash = digest
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        digest = hash
    }

    package init(framing: BodyFraming, rechunk: Bool) {
        switch framing {
        case .none: input = .finished
        case .contentLength(let length): input = length == 0 ? .finished : .length(remaining: length)
        case .chunked: input = .chunked(ChunkedDecoder())
        case .untilClose: input = .untilClose
        }
        self.rechunk = rechunk
    }

    package var isFinished: Bool {
        if case .finished = input { return !finalChunkPending }
        return false
    }

    /// Moves as much as possible from `source` to `destination`.
    package mutating func move(from source: inout IOBuffer, to destination: inout IOBuffer) -> Outcome {
        var moved = false
        while true {
            if finalChunkPending {
                guard destination.spaceAtEnd >= 5 else { return moved ? .progressed : .blocked }
                destination.append(UnsafeRawBufferPointer(start: Self.lastChunk.utf8Start, count: 5))
                finalChunkPending = false
                return .finished
            }
            switch input {
            case .finished:
                return .finished
            case .length(let remaining):
                let count = min(Int(clamping: remaining), source.count, destination.spaceAtEnd)
                guard count > 0 else { return moved ? .progressed : .blocked }
                addToDigest(UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<count]))
                destination.append(UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<count]))
                source.consume(count)
                transferred += UInt64(count)
                moved = true
                if remaining == UInt64(count) {
                    input = .finished
                    return .finished
                }
                input = .length(remaining: remaining - UInt64(count))
            case .untilClose:
                let count = min(source.count, destination.spaceAtEnd)
                guard count > 0 else { return moved ? .progressed : .blocked }
                addToDigest(UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<count]))
                destination.append(UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<count]))
                source.consume(count)
                transferred += UInt64(count)
                moved = true
            case .chunked(var decoder):
                // Leave room for a chunk-size line and the CRLF after the data.
                let framingRoom = rechunk ? 20 : 0
                let room = destination.spaceAtEnd - framingRoom
                guard room > 0, !source.isEmpty else { return moved ? .progressed : .blocked }
                let window = UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<min(source.count, room)])
                let (consumed, step) = decoder.decode(window, from: 0)
                switch step {
                case .data(let start, let count):
                    addToDigest(UnsafeRawBufferPointer(rebasing: window[start..<(start + count)]))
                    if rechunk {
                        var writer = ByteWriter(destination.writableBytes)
                        writer.writeHex(UInt64(count))
                        writer.write("\r\n")
                        writer.write(UnsafeRawBufferPointer(rebasing: window[start..<(start + count)]))
                        writer.write("\r\n")
                        destination.end += writer.count
                    } else {
                        destination.append(UnsafeRawBufferPointer(rebasing: window[start..<(start + count)]))
                    }
                    transferred += UInt64(count)
                    source.consume(consumed)
                    input = .chunked(decoder)
                    moved = true
                case .needMore:
                    source.consume(consumed)
                    input = .chunked(decoder)
                    return consumed > 0 || moved ? .progressed : .blocked
                case .end:
                    source.consume(consumed)
                    input = .finished
                    if rechunk {
                        finalChunkPending = true
                    } else {
                        return .finished
                    }
                case .invalid(let reason):
                    return .invalid(reason)
                }
            }
        }
    }

    /// The source ended (EOF). Returns true when that completes the body (until-close framing).
    package mutating func sourceEnded() -> Bool {
        if case .untilClose = input {
            input = .finished
            return true
        }
        return isFinished
    }

    private static let lastChunk: StaticString = "0\r\n\r\n"
}
