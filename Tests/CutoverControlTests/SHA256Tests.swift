import CutoverControl
import Foundation
import XCTest

final class SHA256Tests: XCTestCase {
    private func digest(_ text: String) -> String {
        SHA256.hex(SHA256.hash(text.utf8))
    }

    /// FIPS 180-4 examples (NIST CSRC "SHA256.pdf" and the SHA-2 test vectors).
    func testNISTVectors() {
        XCTAssertEqual(digest(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(
            digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(
            digest("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
    }

    func testOneMillionA() {
        // A lazy sequence: also checks that `hash` streams instead of needing an array.
        let million = repeatElement(UInt8(ascii: "a"), count: 1_000_000)
        XCTAssertEqual(SHA256.hex(SHA256.hash(million)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testHexFormatting() {
        XCTAssertEqual(SHA256.hex([]), "")
        XCTAssertEqual(SHA256.hex([0x00, 0x0f, 0xa0, 0xff]), "000fa0ff")
        XCTAssertEqual(SHA256.hash([UInt8]()).count, 32)
    }

    /// Every length from 0 to 130 bytes crosses the padding edge cases: 55 (length fits in
    /// the same block), 56...63 (padding spills into a second block), 64, 119/120, 128.
    /// The reference is coreutils' sha256sum, an implementation independent of ours. One
    /// sha256sum run over 131 files: spawning 131 processes would take seconds.
    func testLengths0To130AgainstSha256sum() throws {
        let sha256sum = "/usr/bin/sha256sum"
        guard FileManager.default.isExecutableFile(atPath: sha256sum) else {
            throw XCTSkip("\(sha256sum) is not installed")
        }
        let folder = NSTemporaryDirectory() + "cutover-sha256-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }

        var files: [String] = []
        var messages: [[UInt8]] = []
        for length in 0 ... 130 {
            // Bytes cover the whole 0...255 range in a length-dependent pattern.
            let message = (0 ..< length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ length) }
            let file = folder + "/\(length)"
            try Data(message).write(to: URL(fileURLWithPath: file))
            files.append(file)
            messages.append(message)
        }
        let expected = try runSha256sum(sha256sum, files: files)
        XCTAssertEqual(expected.count, messages.count)
        for (length, (message, reference)) in zip(messages, expected).enumerated() {
            XCTAssertEqual(SHA256.hex(SHA256.hash(message)), reference, "length \(length)")
        }
    }

    /// The digests sha256sum prints, one per file, in argument order.
    private func runSha256sum(_ executable: String, files: [String]) throws -> [String] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = files
        let stdout = Pipe()
        process.standardOutput = stdout
        try process.run()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        // "<64 hex digits>  <file>\n" per file.
        return String(decoding: output, as: UTF8.self).split(separator: "\n").map { String($0.prefix(64)) }
    }
}
