// Shared by every fuzz harness (compiled into each one by Tests/Fuzz/run.sh).
//
// The HTTP harnesses read their input as three control bytes and then the message:
//   byte 0, byte 1  two split points (the message is also fed in the three pieces they cut)
//   byte 2          limits and options, each harness reads it its own way
// A broken invariant calls `fail`, which prints what disagreed and traps: libFuzzer then saves
// the input as a crash artifact.

import Glibc

/// Writes to standard error unbuffered (libFuzzer's log).
func printError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = Glibc.write(2, bytes.baseAddress, bytes.count) }
}

func fail(_ message: String) -> Never {
    printError("FUZZ ASSERTION FAILED: \(message)\n")
    fatalError(message)
}

@inline(__always)
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fail(message()) }
}

/// A note about something a check had to let pass (a known, already-reported problem; a case a
/// check does not cover yet): printed the first few times and at powers of two, and counted.
/// It does not stop the run; run.sh shows that there were notes.
nonisolated(unsafe) var noteCounts: [String: Int] = [:]

func note(_ name: String, _ detail: @autoclosure () -> String) {
    let count = (noteCounts[name] ?? 0) + 1
    noteCounts[name] = count
    if count <= 3 || count & (count - 1) == 0 {
        printError("FUZZ NOTE (\(name), seen \(count) times): \(detail())\n")
    }
}

/// The message part of a framed input and the control bytes in front of it.
struct FramedInput {
    var control: UInt8
    var firstSplit: Int
    var secondSplit: Int
    var message: UnsafeRawBufferPointer

    init?(_ data: UnsafePointer<UInt8>, _ size: Int) {
        guard size >= 3 else { return nil }
        message = UnsafeRawBufferPointer(start: data + 3, count: size - 3)
        control = data[2]
        let a = FramedInput.splitPoint(data[0], message.count)
        let b = FramedInput.splitPoint(data[1], message.count)
        firstSplit = min(a, b)
        secondSplit = max(a, b)
    }

    /// Exact positions for short messages, proportional ones for long messages.
    static func splitPoint(_ byte: UInt8, _ count: Int) -> Int {
        count <= 255 ? Int(byte) % (count + 1) : Int(byte) * count / 255
    }

    /// How the message is fed: where each read ends (ascending, the last is the message's
    /// length, no empty read except for an empty message).
    var feeds: [(name: String, ends: [Int])] {
        let count = message.count
        var split: [Int] = []
        for end in [firstSplit, secondSplit, count] where end > (split.last ?? 0) { split.append(end) }
        if split.isEmpty { split = [count] }
        return [
            ("whole", [count]),
            ("split at \(firstSplit),\(secondSplit)", split),
            ("byte by byte", count == 0 ? [0] : Array(1...count)),
        ]
    }
}

/// Hands out the first `n` bytes of a message in memory that ends exactly where they end, so
/// AddressSanitizer reports a read past the bytes a parser was given (a parser must never look
/// beyond them, even when more of the message has arrived elsewhere).
final class PrefixBuffer {
    let message: UnsafeRawBufferPointer
    private let storage: UnsafeMutableRawPointer

    init(_ message: UnsafeRawBufferPointer) {
        self.message = message
        storage = UnsafeMutableRawPointer.allocate(byteCount: max(message.count, 1), alignment: 1)
    }

    deinit { storage.deallocate() }

    func prefix(_ count: Int) -> UnsafeRawBufferPointer {
        let start = storage + (message.count - count)
        if count > 0 { start.copyMemory(from: message.baseAddress!, byteCount: count) }
        return UnsafeRawBufferPointer(start: start, count: count)
    }

    /// Bytes `from ..< to` alone, ending where the allocation ends (decoders fed only new bytes).
    func piece(_ from: Int, _ to: Int) -> UnsafeRawBufferPointer {
        let count = to - from
        let start = storage + (message.count - count)
        if count > 0 { start.copyMemory(from: message.baseAddress! + from, byteCount: count) }
        return UnsafeRawBufferPointer(start: start, count: count)
    }
}

/// An exact-size copy of bytes (for re-parsing what a writer produced).
final class OwnedBytes {
    let buffer: UnsafeRawBufferPointer

    init(_ bytes: UnsafeRawBufferPointer) {
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        if bytes.count > 0 { storage.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        buffer = UnsafeRawBufferPointer(start: storage.baseAddress, count: bytes.count)
    }

    deinit { UnsafeMutableRawPointer(mutating: buffer.baseAddress!).deallocate() }
}

/// Bytes for messages: `"a\r\n"` → escaped text.
func escaped(_ bytes: UnsafeRawBufferPointer) -> String {
    var text = ""
    for byte in bytes {
        switch byte {
        case 0x0D: text += "\\r"
        case 0x0A: text += "\\n"
        case 0x5C: text += "\\\\"
        case 0x20..<0x7F: text.unicodeScalars.append(Unicode.Scalar(byte))
        default: text += "\\x" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16)
        }
    }
    return text
}

func bytesEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
}
