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

    // Ordered for packing (every client connection carries two relays): the 8-byte count
    // first, the one-byte flags after the enum's tag.
    /// Body bytes moved so far (after decoding), for `max_body` and logs.
    package var transferred: UInt64 = 0
    var input: Input
    /// Re-chunk decoded chunked data (false: write it raw, the receiver reads until close).
    var rechunk: Bool
    private var finalChunkPending = false
    /// The start of a payload digest (FNV-1a 64): see `move(from:to:digest:)`.
    package static let digestBasis: UInt64 = 0xCBF2_9CE4_8422_2325

    /// Hashes decoded payload bytes into `digest` (a mirrored exchange's shadow diff). The
    /// digest lives with the caller, not here: every connection carries two relays.
    @inline(__always)
    private static func addToDigest(_ bytes: UnsafeRawBufferPointer, _ digest: UnsafeMutablePointer<UInt64>?) {
        guard let digest else { return }
        var hash = digest.pointee
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        digest.pointee = hash
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

    /// Moves as much as possible from `source` to `destination`, hashing the decoded payload
    /// into `digest` when one is given.
    package mutating func move(from source: inout IOBuffer, to destination: inout IOBuffer,
                               digest: UnsafeMutablePointer<UInt64>? = nil) -> Outcome {
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
                Self.addToDigest(UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<count]), digest)
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
                Self.addToDigest(UnsafeRawBufferPointer(rebasing: source.readableBytes[0..<count]), digest)
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
                    Self.addToDigest(UnsafeRawBufferPointer(rebasing: window[start..<(start + count)]), digest)
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
