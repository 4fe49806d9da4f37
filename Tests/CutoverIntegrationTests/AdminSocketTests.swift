import CutoverConfig
import CutoverControl
import CutoverRuntime
import CutoverSystem
import Foundation
import Glibc
import XCTest

/// The control plane as an operator or a deploy script uses it: a runtime with real upstreams,
/// health checks and an admin socket in a temporary folder.
final class AdminSocketTests: XCTestCase {

    /// A line-oriented client of the admin socket.
    final class AdminConnection {
        let fd: Int32
        private var buffer: [UInt8] = []

        init(path: String, timeout: Int = 10) throws {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var tv = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let connected = Posix.withUnixAddress(path) { connect(fd, $0, $1) }
            guard connected == 0 else {
                close(fd)
                throw RawClientError.closed
            }
        }

        deinit { close(fd) }

        func send(_ bytes: [UInt8]) {
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        }

        func command(_ line: String) throws -> JSON {
            send(Array((line + "\n").utf8))
            return try reply()
        }

        func reply() throws -> JSON {
            while true {
                if let newline = buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: buffer[..<newline], as: UTF8.self)
                    buffer.removeSubrange(...newline)
                    guard let json = JSON.parse(line) else { throw RawClientError.malformed(line) }
                    return json
                }
                var chunk = [UInt8](repeating: 0, count: 65536)
                let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                guard count > 0 else { throw RawClientError.closed }
                buffer += chunk[0..<count]
            }
        }

        /// True when the server closed the connection within `timeout` seconds.
        func closedWithin(_ timeout: Double) -> Bool {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(timeout * 1000)) > 0 else { return false }
            var byte: UInt8 = 0
            return recv(fd, &byte, 1, 0) <= 0
        }
    }

    struct Setup {
        let folder: URL
        let configPath: String
        let runtime: CutoverRuntime
        var socket: String { runtime.config.adminSocket! }
        var port: UInt16 { runtime.server.listenAddresses[0].port }
    }

    private func makeFolder() throws -> URL {
        let folder = URL(fileURLWithPath: "/tmp/cutover-admin-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return folder
    }

    private func configText(blue: UInt16, green: UInt16, extra: String = "") -> String {
        """
        listen 127.0.0.1:0
        workers 2
        admin_socket run/cutover.sock
        state_file run/cutover.state
        audit_log run/audit.log
        \(extra)
        health {
            interval 100ms
            timeout 300ms
            rise 1
            fall 1
            ready_after 200ms
        }
        app web {
            host *
            health_path /api/system/status
            verify /api/system/status
            blue 127.0.0.1:\(blue)
            green 127.0.0.1:\(green)
        }
        """
    }

    private func start(folder: URL, blue: UInt16, green: UInt16, extra: String = "") throws -> Setup {
        let path = folder.appendingPathComponent("cutover.conf").path
        try configText(blue: blue, green: green, extra: extra).write(toFile: path, atomically: true, encoding: .utf8)
        let config = try ConfigParser.load(path: path)
        let runtime = try CutoverRuntime(config: config, configPath: path, logger: Logger(minimumLevel: .error),
                                         adminIdleTimeoutMs: 500)
        try runtime.start()
        return Setup(folder: folder, configPath: path, runtime: runtime)
    }

    /// Polls `status` until `condition` holds (readiness has no event to wait on from outside).
    private func waitForStatus(_ setup: Setup, timeout: Double = 10, _ condition: (JSON) -> Bool) throws -> JSON {
        let deadline = Date().addingTimeInterval(timeout)
        let admin = try AdminConnection(path: setup.socket)
        while true {
            let status = try admin.command("status")
            if condition(status) { return status }
            if Date() > deadline {
                XCTFail("condition not reached; last status: \(status.serialized())")
                return status
            }
            usleep(20_000)
        }
    }

    func testProtocolCommandsAndBadInput() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let setup = try start(folder: folder, blue: blue.port, green: green.port)
        defer { setup.runtime.stop() }

        var mode = stat()
        stat(setup.socket, &mode)
        XCTAssertEqual(mode.st_mode & 0o777, 0o600, "the admin socket is private by default")

        let admin = try AdminConnection(path: setup.socket)
        // Several commands on one connection, one JSON object per line.
        let help = try admin.command("help")
        XCTAssertEqual(help["ok"], true)
        XCTAssertEqual(help["commands"]?.arrayValue?.compactMap { $0["command"]?.stringValue.map { String($0.split(separator: " ")[0]) } },
                       ["help", "status", "switch", "rollback", "weight", "pin", "unpin", "mirror", "release", "pins", "health", "drain", "undrain", "reload", "verify", "stats", "overview", "upgrade", "reopen", "history"])
        XCTAssertEqual(try admin.command("status")["active"], "blue")
        XCTAssertEqual(try admin.command("frobnicate")["error"], "unknown command 'frobnicate'; try 'help'")
        XCTAssertEqual(try admin.command("switch purple")["error"], "usage: switch <blue|green> [watch <duration>] [force] [reason <text…>]")
        XCTAssertEqual(try admin.command("drain web")["error"], "usage: drain <app> <host:port>")
        XCTAssertEqual(try admin.command("history 0")["error"], "usage: history [n]")
        admin.send([0x01, 0xFF, 0xFE, 0x00, 0x0A])
        XCTAssertEqual(try admin.reply()["error"], "commands are lines of printable text; try 'help'")
        admin.send(Array("\n   \n".utf8))  // blank lines are ignored
        XCTAssertEqual(try admin.command("status")["ok"], true, "the connection is still in sync")

        // An overlong line gets an error and the connection is closed.
        let long = try AdminConnection(path: setup.socket)
        long.send(Array(String(repeating: "x", count: 5000).utf8))
        XCTAssertEqual(try long.reply()["error"], "command line longer than 4096 bytes")
        XCTAssertTrue(long.closedWithin(2))

        // A client that never finishes its line is dropped after the idle timeout (500 ms here).
        let silent = try AdminConnection(path: setup.socket)
        silent.send(Array("stat".utf8))
        XCTAssertEqual(try silent.reply()["error"], "no complete command line within 500 ms of connecting")
        XCTAssertTrue(silent.closedWithin(5))

        // Meanwhile traffic flows and the socket answers others.
        XCTAssertEqual(try RawHTTPClient(port: setup.port).request().status, 200)
        XCTAssertEqual(try AdminConnection(path: setup.socket).command("health")["ok"], true)
    }

    /// Silent connections cannot lock operators out: each must send a complete line within the
    /// line timeout (500 ms here), one uid holds at most 8 slots, root and the proxy's own user
    /// have 4 more than the 32, and a client refused a slot is told "busy" (the CLI exits 3).
    func testSilentConnectionsCannotLockOperatorsOut() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let setup = try start(folder: folder, blue: blue.port, green: green.port, extra: "admin_mode 0666")
        defer { setup.runtime.stop() }

        // This test runs as root: the 32 slots and the 4 kept for operators.
        var silent: [AdminConnection] = []
        for _ in 0..<36 { silent.append(try AdminConnection(path: setup.socket)) }
        let refused = try AdminConnection(path: setup.socket)
        let busy = try refused.reply()
        XCTAssertEqual(busy["busy"], true, busy.serialized())
        XCTAssertTrue(busy["error"]?.stringValue?.hasPrefix("every admin slot is taken") ?? false, busy.serialized())
        let cli = try OperatorViewsTests.cutover(["rollback", "-s", setup.socket])
        XCTAssertEqual(cli.status, 3, cli.stdout + cli.stderr)
        XCTAssertTrue(cli.stderr.hasPrefix("cutover: busy: every admin slot is taken"), cli.stderr)
        XCTAssertTrue(cli.stderr.contains("nothing was run"), cli.stderr)

        // Within the line timeout every silent connection is told why and closed.
        for connection in silent {
            XCTAssertEqual(try connection.reply()["error"], "no complete command line within 500 ms of connecting")
            XCTAssertTrue(connection.closedWithin(5))
        }
        XCTAssertEqual(try AdminConnection(path: setup.socket).command("status")["ok"], true, "the slots are free again")

        // Another user holds at most 8 slots: the ninth connection of `nobody` is refused. (The
        // folder of the socket is opened to others for this.)
        chmod(setup.folder.appendingPathComponent("run").path, 0o755)
        let script = """
            import socket, sys
            held = []
            for _ in range(9):
                s = socket.socket(socket.AF_UNIX)
                s.connect(sys.argv[1])
                held.append(s)
            held[-1].settimeout(5)
            print(held[-1].recv(4096).decode().strip())
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
        process.arguments = ["-u", "nobody", "--", "python3", "-c", script, setup.socket]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertTrue(output.contains("\"busy\":true"), output)
        XCTAssertTrue(output.contains("user nobody holds 8 admin connections already"), output)

        // A line over 4 KiB closes the connection also when it arrives in one piece with its newline.
        let long = try AdminConnection(path: setup.socket)
        long.send(Array((String(repeating: "x", count: 6000) + "\nstatus\n").utf8))
        XCTAssertEqual(try long.reply()["error"], "command line longer than 4096 bytes")
        XCTAssertTrue(long.closedWithin(2), "closed, and the status after it was not run")
    }

    func testSwitchThroughTheSocketUnderLoadLosesNothing() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let setup = try start(folder: folder, blue: blue.port, green: green.port)
        defer { setup.runtime.stop() }
        _ = try waitForStatus(setup) { $0["colors"]?["green"]?["ready"] == true }

        let load = SwitchLoad(port: setup.port, threads: 4)
        load.waitForRequests(200)
        let reply = try AdminConnection(path: setup.socket).command("switch green reason load test")
        load.markSwitched()
        XCTAssertEqual(reply["ok"], true, reply.serialized())
        XCTAssertNotNil(reply["publish_us"]?.intValue)
        load.waitForRequestsAfterSwitch(400)
        load.stop()
        XCTAssertEqual(load.failures, [])
        XCTAssertEqual(load.stale, [], "no answer from blue to a request sent after the switch reply")
        XCTAssertEqual(load.reconnects, 0)

        // The old color's in-flight count reaches zero and the time is reported.
        let status = try waitForStatus(setup) { $0["last_switch"]?["drained_at"]?.stringValue != nil }
        XCTAssertEqual(status["last_switch"]?["from"], "blue")
        XCTAssertEqual(status["last_switch"]?["old_color_inflight"], 0)
    }

    func testRefusedSwitchExplainsItselfAndForceIsRecorded() throws {
        let blue = try TestUpstream.named("blue")
        defer { blue.stop() }
        let deadGreen = RefusingPort()
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder); withExtendedLifetime(deadGreen) {} }
        let setup = try start(folder: folder, blue: blue.port, green: deadGreen.port)
        defer { setup.runtime.stop() }
        _ = try waitForStatus(setup) { status in
            status["apps"]?.arrayValue?.first?["green"]?.arrayValue?.first?["health"] == "down"
        }
        let admin = try AdminConnection(path: setup.socket)
        let refused = try admin.command("switch green reason release 2")
        XCTAssertEqual(refused["ok"], false)
        let reasons = refused["reasons"]?.arrayValue?.compactMap(\.stringValue) ?? []
        XCTAssertEqual(reasons.first, "app web: 0 of 1 green servers up, min_healthy is 1")
        XCTAssertTrue(reasons.contains { $0.hasPrefix("app web green 127.0.0.1:\(deadGreen.port): down since ") && $0.hasSuffix("(last check: refused)") },
                      "\(reasons)")
        XCTAssertEqual(try RawHTTPClient(port: setup.port).request().bodyString, "blue\n", "traffic never moved")

        // Forced: the switch happens, and green, being down, gets 503 rather than blue's answer.
        XCTAssertEqual(try admin.command("switch green force reason emergency")["ok"], true)
        let response = try RawHTTPClient(port: setup.port).request()
        XCTAssertEqual(response.status, 503)
        XCTAssertEqual(response.bodyString, "no server available in the active pool\n")
        let history = try admin.command("history 5")["records"]?.arrayValue ?? []
        XCTAssertEqual(history.suffix(2).compactMap { $0["event"]?.stringValue }, ["refused", "switch"])
        XCTAssertEqual(history.last?["forced"], true)
        XCTAssertEqual(history.last?["actor"]?["pid"]?.intValue, Int64(getpid()), "SO_PEERCRED identifies the caller")
    }

    func testReloadKeepsColorAndRejectsABrokenFile() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        let green2 = try TestUpstream.named("green-2")
        defer { blue.stop(); green.stop(); green2.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let setup = try start(folder: folder, blue: blue.port, green: green.port)
        defer { setup.runtime.stop() }
        let admin = try AdminConnection(path: setup.socket)
        XCTAssertEqual(try admin.command("switch green force")["ok"], true)
        XCTAssertEqual(try admin.command("drain web 127.0.0.1:\(blue.port)")["ok"], true)

        try "listen 127.0.0.1:0\nbogus_directive 1\n".write(toFile: setup.configPath, atomically: true, encoding: .utf8)
        let broken = try admin.command("reload")
        XCTAssertEqual(broken["ok"], false)
        XCTAssertEqual(broken["error"], .string("\(setup.configPath):2: unknown directive 'bogus_directive'"))
        XCTAssertEqual(try RawHTTPClient(port: setup.port).request().bodyString, "green\n")

        try configText(blue: blue.port, green: green2.port).write(toFile: setup.configPath, atomically: true, encoding: .utf8)
        XCTAssertEqual(try admin.command("reload")["ok"], true)
        XCTAssertEqual(try RawHTTPClient(port: setup.port).request().bodyString, "green-2\n", "new servers, same color")
        XCTAssertEqual(setup.runtime.controlPlane.persistentState.drained, ["web 127.0.0.1:\(blue.port)"], "drains kept")
        let events = try admin.command("history 10")["records"]?.arrayValue?.compactMap { $0["event"]?.stringValue } ?? []
        XCTAssertEqual(events.suffix(2), ["reload_failed", "reload"])

        // A drain whose server a reload removed can still be lifted.
        try configText(blue: green.port, green: green2.port).write(toFile: setup.configPath, atomically: true, encoding: .utf8)
        XCTAssertEqual(try admin.command("reload")["ok"], true)
        XCTAssertEqual(try admin.command("undrain web 127.0.0.1:\(blue.port)")["ok"], true)
        XCTAssertEqual(setup.runtime.controlPlane.persistentState.drained, [])
        XCTAssertEqual(try admin.command("undrain web 127.0.0.1:\(blue.port)")["error"],
                       .string("app web has no server 127.0.0.1:\(blue.port)"), "only entries that exist can be lifted that way")
    }

    func testRestartKeepsTheColorAndTheSocketIsExclusive() throws {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        defer { blue.stop(); green.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        // A stale socket file from a process that died is replaced.
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("run"), withIntermediateDirectories: true)
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        _ = Posix.withUnixAddress(folder.appendingPathComponent("run/cutover.sock").path) { bind(stale, $0, $1) }
        close(stale)

        var setup = try start(folder: folder, blue: blue.port, green: green.port)
        XCTAssertEqual(try AdminConnection(path: setup.socket).command("switch green force reason release")["ok"], true)

        // A second instance on the same socket refuses to start.
        let config = try ConfigParser.load(path: setup.configPath)
        let second = try CutoverRuntime(config: config, configPath: setup.configPath, logger: Logger(minimumLevel: .error))
        XCTAssertThrowsError(try second.start()) { error in
            XCTAssertTrue("\(error)".contains("is in use: another cutover is running"), "\(error)")
        }
        setup.runtime.stop()

        setup = try start(folder: folder, blue: blue.port, green: green.port)
        defer { setup.runtime.stop() }
        XCTAssertEqual(setup.runtime.controlPlane.activeColor, .green, "the state file wins over initial_color")
        XCTAssertEqual(try RawHTTPClient(port: setup.port).request().bodyString, "green\n")
        let events = try AdminConnection(path: setup.socket).command("history 10")["records"]?.arrayValue?.compactMap { $0["event"]?.stringValue }
        XCTAssertEqual(events, ["start", "switch", "stop", "start"])
    }

    func testCorruptStateFileStopsStartUpWithTheWayOut() throws {
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("run"), withIntermediateDirectories: true)
        try "active purple\n".write(to: folder.appendingPathComponent("run/cutover.state"), atomically: true, encoding: .utf8)
        let path = folder.appendingPathComponent("cutover.conf").path
        try configText(blue: 1, green: 2).write(toFile: path, atomically: true, encoding: .utf8)
        let config = try ConfigParser.load(path: path)
        XCTAssertThrowsError(try CutoverRuntime(config: config, configPath: path, logger: Logger(minimumLevel: .error))) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("run/cutover.state"), text)
            XCTAssertTrue(text.contains("cutover run --reset-state"), text)
        }
        let reset = try CutoverRuntime(config: config, configPath: path, logger: Logger(minimumLevel: .error), resetState: true)
        XCTAssertEqual(reset.controlPlane.activeColor, .blue)
        XCTAssertThrowsError(try StateFile.load(path: config.stateFile!), "nothing is written before the instance starts")
        try reset.start()
        defer { reset.stop() }
        XCTAssertEqual(try StateFile.load(path: config.stateFile!)?.active, .blue)
    }

    func testPassiveFailuresMarkAServerDownBetweenChecksAndHungServersDelayNothing() throws {
        let first = try TestUpstream.named("blue-1")
        let second = try TestUpstream.named("blue-2")
        defer { first.stop(); second.stop() }
        // A server that accepts connections and never answers.
        let hung = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(hung) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(hung, $0, length); return getsockname(hung, $0, &length) }
        }
        listen(hung, 16)
        let hungPort = UInt16(bigEndian: address.sin_port)

        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
            health {
                interval 1h
                timeout 2s
                rise 1
                fall 2
            }
            app web {
                host *
                health_host health.internal
                health_path /healthz
                blue 127.0.0.1:\(first.port) 127.0.0.1:\(second.port)
                green 127.0.0.1:\(hungPort)
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path,
                                         logger: Logger(minimumLevel: .error), adminIdleTimeoutMs: 500)
        try runtime.start()
        defer { runtime.stop() }
        let setup = Setup(folder: folder, configPath: path, runtime: runtime)
        let started = Date()
        _ = try waitForStatus(setup) { status in
            status["apps"]?.arrayValue?.first?["blue"]?.arrayValue?.allSatisfy { $0["health"] == "up" } == true
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5, "the hung green server (2 s timeout) did not hold up blue's checks")
        XCTAssertEqual(first.requests.first?.target, "/healthz")
        XCTAssertEqual(first.requests.first?.header("Host"), "health.internal")

        // The second server dies. The next active check is an hour away; the data plane's
        // connect failures take it out of the pool.
        second.stop()
        for _ in 0..<6 { XCTAssertEqual(try RawHTTPClient(port: setup.port).request().status, 200, "retried on the live server") }
        let status = try waitForStatus(setup, timeout: 5) { status in
            status["apps"]?.arrayValue?.first?["blue"]?.arrayValue?.last?["health"] == "down"
        }
        XCTAssertEqual(status["apps"]?.arrayValue?.first?["blue"]?.arrayValue?.last?["last_result"],
                       "passive: connection to the server failed")
    }

    func testAdminModeAndGroupWidenTheSocketAndOtherFilesAreNeverReplaced() throws {
        let blue = try TestUpstream.named("blue")
        defer { blue.stop() }
        let folder = try makeFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        guard let daemon = getgrnam("daemon") else { throw XCTSkip("no 'daemon' group on this machine") }
        let gid = daemon.pointee.gr_gid
        let setup = try start(folder: folder, blue: blue.port, green: blue.port, extra: "admin_mode 0660\nadmin_group daemon")
        var info = stat()
        XCTAssertEqual(stat(setup.socket, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o660)
        XCTAssertEqual(info.st_gid, gid)
        setup.runtime.stop()

        // A regular file where the socket should be (a typo in admin_socket) is left alone.
        let path = folder.appendingPathComponent("run/cutover.sock").path
        try "precious".write(toFile: path, atomically: true, encoding: .utf8)
        let config = try ConfigParser.load(path: setup.configPath)
        let runtime = try CutoverRuntime(config: config, configPath: setup.configPath, logger: Logger(minimumLevel: .error))
        XCTAssertThrowsError(try runtime.start()) { error in
            XCTAssertTrue("\(error)".contains("exists and is not a socket"), "\(error)")
        }
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "precious")
    }
}
