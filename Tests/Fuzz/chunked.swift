// Fuzz harness: the chunked transfer-coding decoder (ChunkedDecoder).
//
// Input: byte 0 and 1 split points, byte 2 the extension and trailer limits, then the body.
// Checks:
//   - every step keeps its contract: a data segment lies inside the bytes given, is not empty,
//     and ends where consumption ends; needMore consumes everything; end leaves the decoder done;
//   - fed whole, in the three pieces the split points cut, and byte by byte — each time either
//     with everything received so far (resuming at the position reached) or with only the new
//     bytes — the outcome is the same: the same data, and the same end (bytes consumed), or the
//     same rejection (reason and position), or needMore;
//   - round trip: the decoded data, chunked again the way the proxy re-frames it (one chunk per
//     segment, lowercase hex, no extensions or trailers), decodes to the same data and ends
//     exactly at the end of the new encoding.

import CutoverHTTP
import Glibc

enum ChunkedOutcome: Equatable {
    case needMore(data: [UInt8])
    case end(data: [UInt8], consumed: Int)
    case invalid(reason: String, at: Int, data: [UInt8])
}

let extensionLimits = [4096, 0, 1, 8]
let trailerLimits = [16 * 1024, 0, 1, 8, 40]

struct Decoding {
    var outcome: ChunkedOutcome
    /// The data segments in order (the re-encoding writes one chunk each).
    var segments: [[UInt8]]
}

/// Feeds `ends` with the whole prefix each time (`freshPieces` false) or only the new bytes.
func decode(_ prefixes: PrefixBuffer, ends: [Int], freshPieces: Bool, extensionLimit: Int, trailerLimit: Int) -> Decoding {
    var decoder = ChunkedDecoder(maxExtensionBytes: extensionLimit, maxTrailerBytes: trailerLimit)
    var data: [UInt8] = []
    var segments: [[UInt8]] = []
    var position = 0  // index into the whole message of the next byte to decode
    var previousEnd = 0
    for end in ends {
        let buffer = freshPieces ? prefixes.piece(previousEnd, end) : prefixes.prefix(end)
        let offset = freshPieces ? previousEnd : 0  // message index of buffer[0]
        previousEnd = end
        while true {
            let from = position - offset
            let (consumed, step) = decoder.decode(buffer, from: from)
            check(consumed >= 0 && from + consumed <= buffer.count, "consumed \(consumed) from \(from) of \(buffer.count)")
            switch step {
            case .data(let start, let count):
                check(count > 0, "an empty data step")
                check(start >= from && start + count == from + consumed, "data \(start)+\(count) outside \(from)+\(consumed)")
                let segment = Array(UnsafeRawBufferPointer(rebasing: buffer[start..<(start + count)]))
                data += segment
                segments.append(segment)
                position += consumed
                if position - offset == buffer.count { break }
                continue
            case .needMore:
                position += consumed
                check(position - offset == buffer.count, "needMore left \(buffer.count - (position - offset)) bytes")
            case .end:
                position += consumed
                check(decoder.isDone, "end without isDone")
                // Done is sticky: more calls report the end and consume nothing.
                let (again, step2) = decoder.decode(buffer, from: position - offset)
                guard case .end = step2, again == 0 else { fail("after the end: \(again), \(step2)") }
                return Decoding(outcome: .end(data: data, consumed: position), segments: segments)
            case .invalid(let reason):
                return Decoding(outcome: .invalid(reason: reason.description, at: position + consumed, data: data), segments: segments)
            }
            break
        }
    }
    return Decoding(outcome: .needMore(data: data), segments: segments)
}

func hex(_ value: Int) -> [UInt8] { Array(String(value, radix: 16).utf8) }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard let input = FramedInput(data, size) else { return 0 }
    let extensionLimit = extensionLimits[Int(input.control) % extensionLimits.count]
    let trailerLimit = trailerLimits[Int(input.control / 4) % trailerLimits.count]
    let prefixes = PrefixBuffer(input.message)
    let feeds = input.feeds
    let whole = decode(prefixes, ends: feeds[0].ends, freshPieces: false, extensionLimit: extensionLimit, trailerLimit: trailerLimit)
    for feed in feeds.dropFirst() {
        for fresh in [false, true] {
            let other = decode(prefixes, ends: feed.ends, freshPieces: fresh, extensionLimit: extensionLimit, trailerLimit: trailerLimit)
            check(other.outcome == whole.outcome,
                  "body \"\(escaped(input.message))\" (limits \(extensionLimit)/\(trailerLimit)): whole \(whole.outcome), "
                      + "\(feed.name)\(fresh ? " (new bytes only)" : "") \(other.outcome)")
        }
    }

    guard case .end(let body, _) = whole.outcome else { return 0 }
    var encoded: [UInt8] = []
    for segment in whole.segments {
        encoded += hex(segment.count) + [0x0D, 0x0A] + segment + [0x0D, 0x0A]
    }
    encoded += Array("0\r\n\r\n".utf8)
    encoded.withUnsafeBytes { bytes in
        let again = decode(PrefixBuffer(bytes), ends: [bytes.count], freshPieces: false, extensionLimit: 0, trailerLimit: 0)
        check(again.outcome == .end(data: body, consumed: bytes.count),
              "body \"\(escaped(input.message))\" re-chunked as \"\(escaped(bytes))\" decodes to \(again.outcome)")
    }
    return 0
}
