import XCTest
import CutoverHTTP

// Shared machinery of the codec tests: every input is fed the three ways a connection can
// receive it — all at once, one byte per read, and in random pieces — and the outcome must not
// depend on how the bytes were split. The random splits use a fixed-seed generator so a
// failure names a seed that reproduces it.

/// SplitMix64: tiny, deterministic, good enough to cut buffers.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum Feed: CustomStringConvertible {
    case whole
    case byteByByte
    case random(seed: UInt64)

    var description: String {
        switch self {
        case .whole: return "whole"
        case .byteByByte: return "byte-by-byte"
        case .random(let seed): return "random(seed: \(seed))"
        }
    }

    /// The whole feed, the byte-by-byte feed and `randomSplits` random ones.
    static func all(caseIndex: Int, randomSplits: Int = 6) -> [Feed] {
        [.whole, .byteByByte] + (0..<randomSplits).map { .random(seed: UInt64(caseIndex) &* 7919 &+ UInt64($0) &+ 1) }
    }

    /// Where each read ends: ascending, the last is `count` (one empty read for empty input).
    func pieceEnds(_ count: Int) -> [Int] {
        switch self {
        case .whole:
            return [count]
        case .byteByByte:
            return count == 0 ? [0] : Array(1...count)
        case .random(let seed):
            guard count > 0 else { return [0] }
            var rng = SplitMix64(seed: seed)
            var ends: [Int] = []
            var position = 0
            while position < count {
                // Mostly small reads (they cut through CRLFs and tokens), sometimes big ones.
                let maxPiece = Int.random(in: 0..<4, using: &rng) == 0 ? max(1, count / 2) : 7
                position = min(count, position + Int.random(in: 1...maxPiece, using: &rng))
                ends.append(position)
            }
            return ends
        }
    }
}

/// Bytes of a string (ASCII/UTF-8) so test tables read naturally.
func b(_ text: String) -> [UInt8] { Array(text.utf8) }

/// `text` without its last `count` UTF-8 bytes (String.dropLast counts "\r\n" as one Character).
func chop(_ text: String, _ count: Int) -> String {
    String(decoding: Array(text.utf8).dropLast(count), as: UTF8.self)
}

func string(_ bytes: [UInt8], _ range: ByteRange) -> String {
    String(decoding: bytes[range.lowerBound..<range.upperBound], as: UTF8.self)
}

/// Runs `body` with a field buffer of `capacity` entries.
func withFields<R>(_ capacity: Int, _ body: (UnsafeMutableBufferPointer<HeaderField>) -> R) -> R {
    let fields = UnsafeMutableBufferPointer<HeaderField>.allocate(capacity: capacity)
    defer { fields.deallocate() }
    return body(fields)
}

/// What a table case expects of a parse, for requests and responses alike.
enum ParseOutcome<Summary: Equatable & CustomStringConvertible>: Equatable, CustomStringConvertible {
    case needMore
    case invalid(Int)
    case complete(Summary)

    var description: String {
        switch self {
        case .needMore: return "needMore"
        case .invalid(let status): return "invalid(\(status))"
        case .complete(let summary): return "complete(\(summary))"
        }
    }
}
