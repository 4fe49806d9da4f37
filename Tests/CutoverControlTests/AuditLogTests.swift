import CutoverControl
import CutoverSystem
import Foundation
import Glibc
import XCTest

final class AuditLogTests: XCTestCase {
    private var folder = ""
    private var path: String { folder + "/log/audit.log" }

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "cutover-audit-\(UUID().uuidString)"
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// 2026-11-24T03:50:00.123Z
    private let fixedTime = Date(timeIntervalSince1970: 1_795_492_200.123)
    private let operatorActor = AuditActor(uid: 1000, user: "alice", pid: 4242)

    private func sampleRecord(_ index: Int) -> AuditRecord {
        AuditRecord(time: fixedTime.addingTimeInterval(Double(index)), event: index.isMultiple(of: 2) ? "switch" : "rollback",
                    from: .blue, to: .green, reason: "deploy #\(index)", forced: index == 3,
                    actor: operatorActor, generation: UInt64(index),
                    details: ["gate.health": "ok", "gate.errors": "0.1%", "server": "api 127.0.0.1:\(8000 + index)"])
    }

    /// A log of `count` lines; returns the lines as `append` returned them.
    @discardableResult
    private func writeLog(_ count: Int) throws -> [String] {
        let log = try AuditLog(path: path)
        return try (1 ... count).map { try log.append(sampleRecord($0)) }
    }

    private func fileLines() throws -> [[UInt8]] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast().map(Array.init)
    }

    private func writeFile(_ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    // MARK: - Format

    func testLineFormat() throws {
        let log = try AuditLog(path: path)
        let line = try log.append(AuditRecord(time: fixedTime, event: "switch", from: .blue, to: .green,
                                              reason: "release 42", forced: true, actor: operatorActor,
                                              generation: 7, details: ["z": "last", "a": "first"]))
        XCTAssertEqual(line, #"{"time":"2026-11-24T03:50:00.123Z","event":"switch","from":"blue","to":"green","#
            + #""reason":"release 42","forced":true,"actor":{"uid":1000,"user":"alice","pid":4242},"#
            + #""generation":7,"details":{"a":"first","z":"last"},"prev":"\#(AuditLog.genesis)"}"#)
        let second = try log.append(AuditRecord(time: fixedTime, event: "start"))
        XCTAssertEqual(second, #"{"time":"2026-11-24T03:50:00.123Z","event":"start","from":null,"to":null,"#
            + #""reason":null,"forced":false,"actor":null,"generation":null,"details":{},"#
            + #""prev":"\#(SHA256.hex(SHA256.hash(line.utf8)))"}"#)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), line + "\n" + second + "\n")
    }

    func testFileModeAndCurrentActor() throws {
        try writeLog(1)
        var info = stat()
        XCTAssertEqual(stat(path, &info), 0)
        XCTAssertEqual(info.st_mode & 0o077 & ~0o040, 0, "audit log readable by others")
        let me = AuditActor.current()
        XCTAssertEqual(me.uid, getuid())
        XCTAssertEqual(me.pid, getpid())
        XCTAssertFalse(me.user.isEmpty)
    }

    // MARK: - Chain

    func testChainContinuesAcrossReopen() throws {
        let first = try writeLog(2)
        let reopened = try AuditLog(path: path)
        let third = try reopened.append(sampleRecord(3))
        XCTAssertTrue(third.hasSuffix(#""prev":"\#(SHA256.hex(SHA256.hash(first[1].utf8)))"}"#), third)
        XCTAssertEqual(AuditLog.verify(path: path), .ok(lines: 3))
    }

    func testVerifyGoodAndEmptyLogs() throws {
        _ = try AuditLog(path: path)
        XCTAssertEqual(AuditLog.verify(path: path), .ok(lines: 0))
        try writeLog(5)
        XCTAssertEqual(AuditLog.verify(path: path), .ok(lines: 5))
        guard case .broken(line: 0, _) = AuditLog.verify(path: folder + "/missing.log") else {
            return XCTFail("a missing log verified")
        }
    }

    /// Flipping any one byte of line k is reported at line k or k + 1:
    /// - at k when line k stops being a JSON object (a quote, brace or colon changed, an
    ///   invalid UTF-8 byte, its newline changed so it merges with line k + 1), or when the
    ///   byte is inside line k's own "prev" (which then no longer matches line k - 1);
    /// - at k + 1 when line k is still valid JSON (a letter of a reason, a digit of a pid):
    ///   line k's bytes, and so their SHA-256, changed, and line k + 1's "prev" names the old hash.
    /// The last line has no successor, so an edit that keeps it valid JSON cannot be seen by
    /// the chain alone; that is why k stops before the last line.
    func testChangingOneByteIsDetectedAtLineKOrNext() throws {
        try writeLog(5)
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let lines = try fileLines()
        var lineStart = 0
        var atK = 0, atNext = 0
        for k in 1 ..< lines.count {
            let lineEnd = lineStart + lines[k - 1].count   // the newline's offset
            for offset in lineStart ... lineEnd {
                for flip: UInt8 in [0x01, 0x80] {
                    var tampered = original
                    tampered[offset] ^= flip
                    try writeFile(tampered)
                    switch AuditLog.verify(path: path) {
                    case .broken(line: k, _): atK += 1
                    case .broken(line: k + 1, _): atNext += 1
                    case let other: XCTFail("byte \(offset - lineStart) of line \(k) ^ \(flip): \(other)")
                    }
                }
            }
            lineStart = lineEnd + 1
        }
        // Both kinds of detection really happen.
        XCTAssertGreaterThan(atK, 0)
        XCTAssertGreaterThan(atNext, 0)
    }

    func testDeletingALineIsDetected() throws {
        try writeLog(5)
        let lines = try fileLines()
        for removed in 0 ..< lines.count - 1 {
            var kept = lines
            kept.remove(at: removed)
            try writeFile(kept.flatMap { $0 + [UInt8(ascii: "\n")] })
            // The line after the gap now sits at the removed line's number (1-based) and
            // names the hash of a line that is no longer before it.
            guard case .broken(line: removed + 1, let reason) = AuditLog.verify(path: path) else {
                return XCTFail("deleting line \(removed + 1): \(AuditLog.verify(path: path))")
            }
            XCTAssertTrue(reason.contains("prev"), reason)
        }
    }

    func testInsertedOrReorderedLinesAreDetected() throws {
        try writeLog(4)
        let lines = try fileLines()
        try writeFile([lines[0], lines[2], lines[1], lines[3]].flatMap { $0 + [UInt8(ascii: "\n")] })
        XCTAssertEqual(brokenLine(), 2)
        try writeFile([lines[0], lines[1], lines[1], lines[2]].flatMap { $0 + [UInt8(ascii: "\n")] })
        XCTAssertEqual(brokenLine(), 3)
    }

    func testTornLastLineIsReportedAndAppendStartsAFreshLine() throws {
        try writeLog(3)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(#"{"time":"2026-11-2"#.utf8))   // a crash mid-append
        try handle.close()
        XCTAssertEqual(brokenLine(), 4)

        let log = try AuditLog(path: path)
        let next = try log.append(sampleRecord(5))
        XCTAssertEqual(try log.tail(1), [next])
        XCTAssertEqual(try fileLines().count, 5)
        // The torn line stays visible to verify; the new line chains from it.
        guard case .broken(line: 4, let reason) = AuditLog.verify(path: path) else {
            return XCTFail("\(AuditLog.verify(path: path))")
        }
        XCTAssertEqual(reason, "not a JSON object")
    }

    // MARK: - Tail

    func testTail() throws {
        let written = try writeLog(10)
        let log = try AuditLog(path: path)
        XCTAssertEqual(try log.tail(3), Array(written.suffix(3)))
        XCTAssertEqual(try log.tail(1), [written[9]])
        XCTAssertEqual(try log.tail(10), written)
        XCTAssertEqual(try log.tail(100), written)
        XCTAssertEqual(try log.tail(0), [])
    }

    func testTailAcrossReadBlocks() throws {
        // Lines of ~1 KB so that 150 lines span many 16 KB blocks read from the end.
        let log = try AuditLog(path: path)
        var written: [String] = []
        for index in 0 ..< 200 {
            var record = sampleRecord(index)
            record.details["padding"] = String(repeating: "x", count: 900 + index % 37)
            written.append(try log.append(record))
        }
        XCTAssertEqual(try log.tail(150), Array(written.suffix(150)))
        XCTAssertEqual(try log.tail(17), Array(written.suffix(17)))
        XCTAssertEqual(AuditLog.verify(path: path), .ok(lines: 200))
    }

    func testEmptyLogTail() throws {
        XCTAssertEqual(try AuditLog(path: path).tail(5), [])
    }

    // MARK: - Concurrency

    func testConcurrentAppendsKeepTheChain() throws {
        let log = try AuditLog(path: path)
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for index in 0 ..< 25 {
                do {
                    try log.append(AuditRecord(event: "drain", details: ["thread": "\(thread)", "i": "\(index)"]))
                } catch {
                    XCTFail("append failed: \(error)")
                }
            }
        }
        XCTAssertEqual(AuditLog.verify(path: path), .ok(lines: 100))
    }

    // MARK: - Escaping, checked by an independent parser

    func testTrickyStringsRoundTripThroughPython() throws {
        let python = "/usr/bin/env"
        let reasons = [
            #"say "hi" \o/ C:\path\"#,
            "two\nlines\r\nand\ttab",
            "nul \u{0} bell \u{7} esc \u{1b}[31m del \u{7f}",
            "unicode: é 日本語 🚀 \u{2028}\u{2029} \u{feff}",
            "",
            "}\"prev\":\"0000",
        ]
        let log = try AuditLog(path: path)
        for reason in reasons {
            try log.append(AuditRecord(time: fixedTime, event: "refused", reason: reason,
                                       actor: AuditActor(uid: 0, user: "ro\"ot\n", pid: 1),
                                       details: [reason: reason, "k\u{1}": "v"]))
        }
        XCTAssertEqual(AuditLog.verify(path: path), .ok(lines: reasons.count))

        // Python decodes each line and prints the reason, the details key and the user as
        // hex of their UTF-8 bytes (no further escaping to trust), plus the key order.
        let script = """
            import json, sys
            for raw in open(sys.argv[1], 'rb').read().split(b'\\n')[:-1]:
                o = json.loads(raw.decode('utf-8'))
                assert list(o) == ['time','event','from','to','reason','forced','actor','generation','details','prev'], list(o)
                assert list(o['actor']) == ['uid','user','pid']
                keys = sorted(k for k in o['details'] if k != 'k\\x01')
                print(o['reason'].encode().hex(), keys[0].encode().hex() if keys else '-', o['actor']['user'].encode().hex())
            """
        let output = try run(python, ["python3", "-c", script, path])
        let rows = output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: false).map(String.init) }
        XCTAssertEqual(rows.count, reasons.count, output)
        for (row, reason) in zip(rows, reasons) {
            let hex = SHA256.hex(Array(reason.utf8))
            XCTAssertEqual(row, [hex, hex, SHA256.hex(Array("ro\"ot\n".utf8))], reason.debugDescription)
        }
    }

    // MARK: - Helpers

    private func brokenLine() -> Int? {
        if case .broken(let line, _) = AuditLog.verify(path: path) { return line }
        return nil
    }

    private func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let stdout = Pipe()
        process.standardOutput = stdout
        do { try process.run() } catch { throw XCTSkip("cannot run python3: \(error)") }
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        if process.terminationStatus == 127 { throw XCTSkip("python3 is not installed") }
        XCTAssertEqual(process.terminationStatus, 0, "python3 failed")
        return String(decoding: output, as: UTF8.self)
    }
}
