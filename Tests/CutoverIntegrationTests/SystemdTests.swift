import Foundation
import Glibc
import XCTest

/// Running under systemd: the unit in conf/ verifies, and the sd_notify protocol as systemd
/// would read it — a datagram socket of the test's own named by NOTIFY_SOCKET.
final class SystemdTests: XCTestCase {
    /// `systemd-analyze verify` on conf/cutover.service, with the binary path pointed at the
    /// built one (verify checks that ExecStart exists). Any warning fails the test too.
    func testTheUnitFileVerifies() throws {
        guard let analyze = OperatorViewsTests.which("systemd-analyze") else {
            throw XCTSkip("systemd-analyze is not installed here (apt-get install systemd; .ci/run installs it)")
        }
        let unit = try String(contentsOf: CommandLineTests.repositoryRoot.appendingPathComponent("conf/cutover.service"), encoding: .utf8)
        XCTAssertTrue(unit.contains("Type=notify"))
        XCTAssertTrue(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-unit-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("cutover.service").path
        try unit.replacingOccurrences(of: "/usr/local/bin/cutover", with: CommandLineTests.binary.path)
            .write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: analyze)
        process.arguments = ["verify", path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, output)
        XCTAssertEqual(output.trimmingCharacters(in: .whitespacesAndNewlines), "", "no warning either")
    }

    /// READY=1 once listening with health known (and MAINPID), STATUS= following a switch,
    /// RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
    func testNotifyProtocol() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-notify-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let notifyPath = folder.appendingPathComponent("notify.sock").path
        let listener = try NotifyListener(path: notifyPath)
        let config = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
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
        let process = Process()
        process.executableURL = CommandLineTests.binary
        process.arguments = ["run", "-c", config]
        process.currentDirectoryURL = folder
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = notifyPath
        process.environment = environment
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate(); process.waitUntilExit() } }

        let ready = try XCTUnwrap(listener.next(timeout: 10), "no READY=1")
        XCTAssertTrue(ready.contains("READY=1"), ready)
        XCTAssertTrue(ready.contains("MAINPID=\(process.processIdentifier)"), ready)
        XCTAssertTrue(ready.contains("STATUS=active blue, generation 0"), ready)

        let switched = try OperatorViewsTests.cutover(["switch", "green", "-c", config])
        XCTAssertEqual(switched.status, 0, switched.stdout + switched.stderr)
        let status = try XCTUnwrap(listener.next(timeout: 5), "no STATUS after the switch")
        XCTAssertEqual(status, "STATUS=active green, generation 1")

        kill(process.processIdentifier, SIGHUP)
        let reloading = try XCTUnwrap(listener.next(timeout: 5))
        XCTAssertTrue(reloading.hasPrefix("RELOADING=1\nMONOTONIC_USEC="), reloading)
        let reloaded = try XCTUnwrap(listener.next(timeout: 5))
        XCTAssertEqual(reloaded, "READY=1\nSTATUS=active green, generation 1")

        process.terminate()  // SIGTERM
        let stopping = try XCTUnwrap(listener.next(timeout: 5))
        XCTAssertTrue(stopping.hasPrefix("STOPPING=1\nSTATUS=draining"), stopping)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
    }
}

/// A Unix datagram socket standing in for systemd's notification socket.
final class NotifyListener {
    let fd: Int32
    let path: String

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { target in
            let bytes = Array(path.utf8)
            target.copyBytes(from: bytes)
            target[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0 else { throw CocoaError(.fileWriteUnknown) }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// The next datagram, or nil after `timeout` seconds.
    func next(timeout: Double) -> String? {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }
}
