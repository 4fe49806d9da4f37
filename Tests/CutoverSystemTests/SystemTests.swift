import CutoverSystem
import Foundation
import XCTest

/// The one escaper, in each of its dialects.
final class EscapingTests: XCTestCase {
    private func escaped(_ bytes: [UInt8], _ dialect: Escaping.Dialect) -> String {
        var out: [UInt8] = []
        bytes.withUnsafeBytes { Escaping.append($0, dialect, to: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    func testEachDialectEscapesWhatItsReaderNeeds() {
        let input = Array("a\"b\\c\nd\te\r".utf8) + [0x01, 0x7F]
        XCTAssertEqual(escaped(input, .json), #"a\"b\\c\nd\te\r\u0001\u007f"#)
        XCTAssertEqual(escaped(input, .jsonASCII), #"a\"b\\c\u000ad\u0009e\u000d\u0001\u007f"#)
        XCTAssertEqual(escaped(input, .prometheusLabel), "a\\\"b\\\\c\\nd\te\r\u{01}\u{7F}")
        XCTAssertEqual(escaped(input, .prometheusHelp), "a\"b\\\\c\\nd\te\r\u{01}\u{7F}")
    }

    func testUTF8StaysInJSONAndBecomesEscapesInRequestLines() {
        let text = "café"
        XCTAssertEqual(Escaping.escaped(text, .json), "café")
        XCTAssertEqual(escaped(Array(text.utf8), .jsonASCII), #"caf\u00c3\u00a9"#, "request bytes need not be UTF-8: read as Latin-1")
    }
}

/// Files as the state file and the audit log use them.
final class FileIOTests: XCTestCase {
    private func folder() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-fileio-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func testAtomicWriteReplacesTheFileAndAFailureLeavesTheOldOne() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/nested/state"
        try FileIO.writeAtomically(path, bytes: Array("one\n".utf8))
        XCTAssertEqual(try FileIO.readWhole(path), Array("one\n".utf8), "the folder is created")
        XCTAssertThrowsError(try FileIO.writeAtomically(path, bytes: Array("two\n".utf8), faults: .init(failWriteAfterBytes: 2))) {
            XCTAssertTrue("\($0)".hasPrefix("write \(dir)/nested/.state.tmp-"), "\($0)")
        }
        XCTAssertThrowsError(try FileIO.writeAtomically(path, bytes: Array("two\n".utf8), faults: .init(failBeforeRename: true)))
        XCTAssertEqual(try FileIO.readWhole(path), Array("one\n".utf8), "a failed write leaves the old file whole")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/nested"), ["state"], "no temp file is left behind")
        try FileIO.writeAtomically(path, bytes: Array("two\n".utf8))
        XCTAssertEqual(try FileIO.readWhole(path), Array("two\n".utf8))
    }

    func testReadingSaysWhyItFailed() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertThrowsError(try FileIO.readWhole(dir + "/missing")) { error in
            XCTAssertEqual((error as? FileError)?.code, ENOENT)
            XCTAssertEqual("\(error)", "open \(dir)/missing: No such file or directory")
        }
        try FileIO.writeAtomically(dir + "/big", bytes: Array(repeating: 0x61, count: 100))
        XCTAssertThrowsError(try FileIO.readWhole(dir + "/big", maxBytes: 10)) { error in
            XCTAssertEqual((error as? FileError)?.reason, "larger than 10 bytes")
        }
        XCTAssertEqual(FileIO.kind(of: dir + "/big"), .other)
        XCTAssertEqual(FileIO.kind(of: dir + "/missing"), .missing)
        XCTAssertEqual(FileIO.parentFolder(of: "state"), ".")
        XCTAssertEqual(FileIO.parentFolder(of: "/state"), "/")
    }

    func testAppendedBytesAreThereAfterSync() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try OpenFile.appending(dir + "/log", mode: 0o640)
        try file.writeAll(Array("a\n".utf8))
        try file.writeAll(Array("b\n".utf8))
        try file.sync()
        XCTAssertEqual(try file.size(), 4)
        try file.close()
        XCTAssertEqual(try FileIO.readWhole(dir + "/log"), Array("a\nb\n".utf8))
    }
}

final class RFC3339Tests: XCTestCase {
    func testMillisecondsInUTCAndBefore1970() {
        XCTAssertEqual(RFC3339.string(millisecondsSince1970: 1_796_549_400_123), "2026-12-06T09:30:00.123Z")
        XCTAssertEqual(RFC3339.string(millisecondsSince1970: -1), "1969-12-31T23:59:59.999Z")
        XCTAssertEqual(RFC3339.string(nanosecondsSince1970: 1_500_000), "1970-01-01T00:00:00.001Z")
    }
}
