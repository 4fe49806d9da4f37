import CutoverSystem
import Foundation
import Glibc
import XCTest

/// `cutover upgrade` and SIGUSR2 with the real binary under load: the new process takes the
/// listening sockets and the admin socket, the old one drains; no client sees a refused,
/// reset or failed request. A new binary that cannot start changes nothing.
final class HotUpgradeTests: XCTestCase {
    private func bench(_ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = BenchSmokeTests.bench
        process.arguments = arguments
        process.standardOutput = Pipe()
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    private func report(_ process: Process) -> JSON? {
        let data = (process.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return JSON.parse(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func testUpgradeUnderLoadLosesNothingAndAFailedOneChangesNothing() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-upgrade-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 2
            admin_socket run/cutover.sock
            state_file run/cutover.state
            audit_log run/audit.log
            metrics_listen 127.0.0.1:0
            health {
                interval 100ms
                rise 1
                ready_after 0s
            }
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let proxy = try CommandLineTests.RunningProxy(arguments: ["run", "-c", config], directory: folder)
        let port = try XCTUnwrap(proxy.listeningPort())
        var pids: [Int32] = [proxy.process.processIdentifier]
        defer { for pid in pids { kill(pid, SIGTERM) } }
        func cli(_ words: String...) throws -> CommandLineTests.Outcome { try OperatorViewsTests.cutover(words + ["-c", config]) }
        XCTAssertEqual(try cli("switch", "green", "--force", "--reason", "before the upgrade").status, 0)

        // A failed upgrade changes nothing: a binary that exits at once, one that does not exist.
        let failed = try cli("upgrade", "--binary", "/bin/false")
        XCTAssertEqual(failed.status, 1, failed.stdout + failed.stderr)
        XCTAssertTrue(failed.stdout.contains("upgrade failed: the new process ended before it was ready (exit code 1)"), failed.stdout)
        XCTAssertTrue(failed.stdout.contains("this process keeps serving, nothing changed"), failed.stdout)
        let missing = try cli("upgrade", "--binary", "/nonexistent/cutover")
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stdout.contains("is not an executable file; nothing changed"), missing.stdout)
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "green\n", "still serving, still green")

        // Under load, keep-alive and a new connection per request: upgrade to the same binary.
        let keepAlive = try bench(["load", "http://127.0.0.1:\(port)/", "-c", "10", "-t", "2", "-d", "4s", "--json"])
        let newConnections = try bench(["load", "http://127.0.0.1:\(port)/", "-c", "4", "-t", "1", "-d", "4s", "--new-conn", "--json"])
        usleep(1_000_000)
        let upgraded = try cli("upgrade")
        XCTAssertEqual(upgraded.status, 0, upgraded.stdout + upgraded.stderr)
        XCTAssertTrue(upgraded.stdout.hasPrefix("upgraded: pid \(proxy.process.processIdentifier) (0.2.0) → pid "), upgraded.stdout)
        let newPID = try XCTUnwrap(Int32(upgraded.stdout.split(separator: "→")[1].split(separator: " ")[1]))
        pids.append(newPID)
        usleep(500_000)
        // And again by signal, from the new process to a third.
        kill(newPID, SIGUSR2)
        let keepAliveReport = try XCTUnwrap(report(keepAlive))
        let newConnectionReport = try XCTUnwrap(report(newConnections))
        for load in [keepAliveReport, newConnectionReport] {
            XCTAssertGreaterThan(load["requests"]?.intValue ?? 0, 100, load.serialized())
            XCTAssertEqual(load["errors"], .object([]), "no refused, reset or failed request: \(load.serialized())")
            XCTAssertEqual(load["non_2xx"], 0, load.serialized())
            XCTAssertEqual(load["colors"]?["green"], load["requests"], "the state came across: every answer green")
        }
        // The old process drains and exits (a zombie until this process reaps it). Foundation's
        // own wait would also wait for the pipe its successors still hold open.
        let oldPID = proxy.process.processIdentifier
        let deadline = Date().addingTimeInterval(15)
        func exited() -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(oldPID)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return true }
            return stat[stat.index(close, offsetBy: 2)] == "Z"
        }
        while !exited() && Date() < deadline { usleep(50_000) }
        XCTAssertTrue(exited(), "the old process drained and exited")

        // The third process answers on the same admin socket and port, green at generation 1.
        let status = JSON.parse(try cli("status", "--json").stdout)
        XCTAssertEqual(status?["active"], "green")
        XCTAssertEqual(status?["generation"], 1)
        XCTAssertEqual(try RawHTTPClient(port: port).request().bodyString, "green\n")
        let records = try String(contentsOfFile: folder.appendingPathComponent("run/audit.log").path, encoding: .utf8)
            .split(separator: "\n").compactMap { JSON.parse(String($0)) }
        let upgrades = records.filter { $0["event"]?.stringValue == "upgrade" }
        XCTAssertEqual(upgrades.count, 2, "one record per upgrade: \(records.map { $0["event"]?.stringValue ?? "?" })")
        XCTAssertEqual(upgrades.first?["details"]?["old_version"], "0.2.0")
        XCTAssertEqual(upgrades.first?["details"]?["new_version"], "0.2.0")
        XCTAssertEqual(upgrades.first?["details"]?["new_pid"]?.stringValue, String(newPID))
        if let third = upgrades.last?["details"]?["new_pid"]?.stringValue.flatMap({ Int32($0) }) { pids.append(third) }
        XCTAssertEqual(records.filter { $0["event"]?.stringValue == "upgrade_failed" }.count, 1, "the binary that exited (a path that is no executable is refused before anything starts)")
        XCTAssertTrue(records.contains { $0["event"]?.stringValue == "start" && $0["details"]?["upgraded_from"] != nil })
        let verify = try cli("audit", "verify")
        XCTAssertEqual(verify.status, 0, "three processes appended to one chain: \(verify.stdout)\(verify.stderr)")
    }
}

