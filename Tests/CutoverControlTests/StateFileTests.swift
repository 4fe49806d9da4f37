import CutoverConfig
import CutoverControl
import CutoverSystem
import Foundation
import Glibc
import Synchronization
import XCTest

final class StateFileTests: XCTestCase {
    private var folder = ""

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "cutover-state-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: folder)
    }

    private var path: String { folder + "/cutover.state" }

    private let sample = PersistentState(active: .green, previous: .blue, generation: 7,
                                         drained: ["web [::1]:8081", "api 127.0.0.1:8093"])

    private func write(_ text: String) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
    }

    private func filesInFolder() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
    }

    // MARK: - Round trip and format

    func testRoundTrip() throws {
        try StateFile.save(sample, path: path)
        var expected = sample
        expected.drained.sort()
        XCTAssertEqual(try StateFile.load(path: path), expected)

        let minimal = PersistentState(active: .blue)
        try StateFile.save(minimal, path: path)
        XCTAssertEqual(try StateFile.load(path: path), minimal)
    }

    /// A canary's weights and salts, run-time pins and suspensions survive a restart exactly.
    func testReleaseStateRoundTripsAndReadsLikeTheConfig() throws {
        var state = PersistentState(active: .blue, previous: .green, generation: 12)
        state.releases = ["web": AppRelease(candidateBasisPoints: 1_050, salt: 0x00ab_cdef_0123_4567),
                          "api": AppRelease(candidateBasisPoints: 10_000, salt: 1)]
        state.pins = ["api": [PinRule(source: .header, name: "X-Tenant", values: ["pilot-1", "pilot-2"], color: .green),
                              PinRule(source: .cookie, name: "Beta", values: ["yes"], color: .blue)]]
        state.suspendedPins = [.green]
        state.mirrors = ["api": 500]
        state.releasePlan = ("canary-by-tenant", 2, "3f9a0c2d71b4e815")
        try StateFile.save(state, path: path)
        XCTAssertEqual(try StateFile.load(path: path), state)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.contains("\nweight api 10000 0000000000000001\nweight web 1050 00abcdef01234567\n"), text)
        XCTAssertTrue(text.contains("\npin api header x-tenant green pilot-1,pilot-2\npin api cookie Beta blue yes\n"), text)
        XCTAssertTrue(text.hasSuffix("\nmirror api 500\nrelease canary-by-tenant step 2 hash 3f9a0c2d71b4e815\npins_suspended green\n"), text)
    }

    func testFileIsHumanReadable() throws {
        try StateFile.save(sample, path: path)
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 6)
        XCTAssertTrue(lines[0].hasPrefix("# cutover state, written "), lines[0])
        let time = String(lines[0].dropFirst("# cutover state, written ".count))
        XCTAssertNotNil(time.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression), time)
        XCTAssertEqual(Array(lines.dropFirst()), [
            "active green", "previous blue", "generation 7",
            "drained api 127.0.0.1:8093", "drained web [::1]:8081",
        ])
    }

    func testHandWrittenFileWithCommentsAndBlankLines() throws {
        try write("# edited by hand\n\nactive   blue\r\n  generation 12  \n# previous green\n")
        XCTAssertEqual(try StateFile.load(path: path), PersistentState(active: .blue, generation: 12))
    }

    func testMissingFileIsNil() throws {
        XCTAssertNil(try StateFile.load(path: path))
        XCTAssertNil(try StateFile.load(path: folder + "/no/such/folder/cutover.state"))
    }

    func testSaveCreatesFolderAndUsesMode0644() throws {
        let nested = folder + "/run/deeper/cutover.state"
        try StateFile.save(sample, path: nested)
        var isFolder: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/run/deeper", isDirectory: &isFolder))
        XCTAssertTrue(isFolder.boolValue)
        var info = stat()
        XCTAssertEqual(stat(nested, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o644 & ~currentUmask())
        XCTAssertEqual(try StateFile.load(path: nested)?.active, .green)
    }

    func testRelativePathInCurrentFolder() throws {
        XCTAssertEqual(FileIO.parentFolder(of: "cutover.state"), ".")
        XCTAssertEqual(FileIO.parentFolder(of: "/cutover.state"), "/")
        XCTAssertEqual(FileIO.parentFolder(of: "run/cutover.state"), "run")
    }

    // MARK: - Corruption

    func testEveryKindOfCorruptionNamesTheFileAndTheWayOut() throws {
        let cases: [(text: String, detail: String)] = [
            ("active green\nx 1\n", "line 2: unknown key 'x'"),
            ("# only a comment\n", "no 'active' line"),
            ("", "no 'active' line"),
            ("generation 3\nprevious blue\n", "no 'active' line"),
            ("active purple\n", "line 1: bad color 'purple'"),
            ("active Green\n", "line 1: bad color 'Green'"),
            ("active\n", "line 1: bad color ''"),
            ("active green\nprevious red\n", "line 2: bad color 'red' for 'previous'"),
            ("active green\ngeneration 7x\n", "line 2: bad number '7x'"),
            ("active green\ngeneration -1\n", "line 2: bad number '-1'"),
            ("active green\ngeneration +7\n", "line 2: bad number '+7'"),
            ("active green\ngeneration 99999999999999999999999\n", "line 2: bad number"),
            ("active green\ngeneration\n", "line 2: bad number ''"),
            ("active green\nactive blue\n", "line 2: duplicate key 'active'"),
            ("active green\ngeneration 1\ngeneration 2\n", "line 3: duplicate key 'generation'"),
            ("active green\nprevious blue\nprevious blue\n", "line 3: duplicate key 'previous'"),
            ("active green\ndrained api 127.0.0.1:1\ndrained api 127.0.0.1:1\n", "line 3: duplicate drained entry"),
            ("active green\ndrained api\n", "line 2: bad drained entry 'api'"),
            ("active green\ndrained api 127.0.0.1\n", "line 2: bad drained entry"),
            ("active green\ndrained api 127.0.0.1:70000\n", "line 2: bad drained entry"),
            ("active green\ndrained api 127.0.0.1:80 extra\n", "line 2: bad drained entry"),
            ("active blue\nweight api -1 0123456789abcdef\n", "line 2: bad weight entry"),
            ("active blue\nweight api 10001 0123456789abcdef\n", "line 2: bad weight entry"),
            ("active blue\nweight api 1000 0123\n", "line 2: bad weight entry"),
            ("active blue\nweight api 1000\n", "line 2: bad weight entry"),
            ("active blue\nweight api 1000 0123456789abcdef\nweight api 2000 0123456789abcdef\n", "line 3: duplicate weight for app 'api'"),
            ("active blue\npin api query tenant green a\n", "line 2: bad pin entry"),
            ("active blue\npin api header x-tenant purple a\n", "line 2: bad pin entry"),
            ("active blue\npin api header x-tenant green a,,b\n", "line 2: bad pin values"),
            ("active blue\npins_suspended red\n", "line 2: bad color 'red' for 'pins_suspended'"),
        ]
        for (text, detail) in cases {
            try write(text)
            assertCorrupt(detail: detail, file: text)
        }
        // Not text at all (a binary file, or a disk block of garbage).
        try Data([0x61, 0x63, 0xff, 0xfe, 0x0a]).write(to: URL(fileURLWithPath: path))
        assertCorrupt(detail: "not UTF-8 text", file: "binary")
    }

    func testErrorDescriptionFormat() throws {
        try write("active green\nx 1\n")
        XCTAssertThrowsError(try StateFile.load(path: path)) { error in
            XCTAssertEqual(String(describing: error),
                           "\(path): corrupt state file (line 2: unknown key 'x'); "
                               + "move it away or start with `cutover run --reset-state`")
        }
    }

    func testUnreadablePathIsAnErrorNotNil() throws {
        // A folder where the file should be: open succeeds, read fails with EISDIR.
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        XCTAssertThrowsError(try StateFile.load(path: path)) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.hasPrefix("\(path): cannot read state file"), text)
            XCTAssertTrue(text.contains("--reset-state"), text)
        }
    }

    func testSaveRefusesEntriesThatLoadWouldReject() throws {
        try StateFile.save(sample, path: path)
        var bad = sample
        bad.drained = ["api 127.0.0.1:1\nactive blue"]
        XCTAssertThrowsError(try StateFile.save(bad, path: path))
        XCTAssertEqual(try StateFile.load(path: path)?.active, .green)
    }

    // MARK: - Crash safety

    func testFailedWriteMidwayLeavesOldStateAndNoTempFile() throws {
        try StateFile.save(sample, path: path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        var next = sample
        next.active = .blue
        next.generation = 8
        for cut in [0, 1, 10, 40] {
            // The temp file gets `cut` bytes, then the write "fails" (as with ENOSPC).
            let faults = StateFile.SaveFaults(failWriteAfterBytes: cut)
            XCTAssertThrowsError(try StateFile.save(next, path: path, faults: faults)) { error in
                XCTAssertTrue(String(describing: error).contains("previous state file is unchanged"), "\(error)")
            }
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before, "cut at \(cut)")
            XCTAssertEqual(try StateFile.load(path: path)?.generation, 7)
            XCTAssertEqual(try filesInFolder(), ["cutover.state"], "temp file left behind (cut at \(cut))")
        }
    }

    func testFailureJustBeforeRenameLeavesOldState() throws {
        try StateFile.save(sample, path: path)
        let faults = StateFile.SaveFaults(failBeforeRename: true)
        XCTAssertThrowsError(try StateFile.save(PersistentState(active: .blue, generation: 8), path: path, faults: faults))
        XCTAssertEqual(try StateFile.load(path: path)?.generation, 7)
        XCTAssertEqual(try filesInFolder(), ["cutover.state"])
    }

    func testStaleTempFileFromCrashedWriterIsHarmless() throws {
        try StateFile.save(sample, path: path)
        // What a writer killed between write and rename leaves: a partial temp file. Also
        // one named with our own pid, as after a reboot that reused the pid.
        let stale = [".cutover.state.tmp-12345-dead", ".cutover.state.tmp-\(getpid())-0"]
        for name in stale {
            try "# cutover state, written 2026-01-01T00:00:00.000Z\nactive bl".write(
                toFile: folder + "/" + name, atomically: false, encoding: .utf8)
        }
        XCTAssertEqual(try StateFile.load(path: path)?.generation, 7)
        try StateFile.save(PersistentState(active: .blue, generation: 8), path: path)
        XCTAssertEqual(try StateFile.load(path: path), PersistentState(active: .blue, generation: 8))
        XCTAssertEqual(try filesInFolder(), (stale + ["cutover.state"]).sorted())
    }

    func testSaveIntoUnusableFolderFails() throws {
        // The parent "folder" is a regular file: the temp file cannot be created.
        let blocker = folder + "/blocker"
        try "x".write(toFile: blocker, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try StateFile.save(sample, path: blocker + "/cutover.state")) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.hasPrefix(blocker + "/cutover.state: cannot save state"), text)
        }
    }

    /// A reader never sees a half-written file: it sees the old or the new one.
    func testConcurrentReadsAlwaysParse() throws {
        try StateFile.save(PersistentState(active: .blue, generation: 0), path: path)
        let done = Flag()
        let path = self.path
        let writer = Thread {
            for generation in 1 ... 500 {
                let color: Color = generation.isMultiple(of: 2) ? .blue : .green
                let drained = (0 ..< generation % 5).map { "app\($0) 127.0.0.1:\(8000 + $0)" }
                try? StateFile.save(PersistentState(active: color, previous: color.other,
                                                    generation: UInt64(generation), drained: drained), path: path)
            }
            done.set()
        }
        writer.start()
        var reads = 0
        var lastGeneration: UInt64 = 0
        while !done.isSet || reads == 0 {
            do {
                guard let state = try StateFile.load(path: path) else { return XCTFail("state file vanished") }
                XCTAssertGreaterThanOrEqual(state.generation, lastGeneration)
                XCTAssertEqual(state.drained.count, Int(state.generation % 5))
                lastGeneration = state.generation
            } catch {
                return XCTFail("read \(reads) failed: \(error)")
            }
            reads += 1
        }
        XCTAssertEqual(try StateFile.load(path: path)?.generation, 500)
        XCTAssertGreaterThan(reads, 0)
        XCTAssertEqual(try filesInFolder(), ["cutover.state"])
    }

    // MARK: - Helpers

    private func assertCorrupt(detail: String, file: String, line: UInt = #line) {
        XCTAssertThrowsError(try StateFile.load(path: path), "accepted: \(file.debugDescription)", line: line) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.hasPrefix("\(path): corrupt state file ("), text, line: line)
            XCTAssertTrue(text.contains(detail), "\(text) lacks \(detail)", line: line)
            XCTAssertTrue(text.hasSuffix("move it away or start with `cutover run --reset-state`"), text, line: line)
            XCTAssertEqual((error as? StateFileError)?.path, path, line: line)
        }
    }

    private func currentUmask() -> mode_t {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("Umask:") }
        let digits = line?.split(separator: "\t").last.map(String.init) ?? "022"
        return mode_t(digits, radix: 8) ?? 0o022
    }
}

/// A one-way flag shared between a test's threads.
private final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
