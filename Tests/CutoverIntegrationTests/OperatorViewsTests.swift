import CutoverSystem
import Foundation
import XCTest

/// `cutover top` and the status page against a real proxy (the built binary, real upstreams):
/// one frame checked during a canary and after a switch, the keys typed into a pseudo-terminal,
/// and the page rendered by headless Chromium.
final class OperatorViewsTests: XCTestCase {
    struct Setup {
        let folder: URL
        let config: String
        let proxy: CommandLineTests.RunningProxy
        let port: UInt16
        let metricsPort: UInt16
        let blue: TestUpstream
        let green: TestUpstream

        func stop() {
            _ = proxy.terminate()
            blue.stop()
            green.stop()
            try? FileManager.default.removeItem(at: folder)
        }
    }

    private func start() throws -> Setup {
        let blue = try TestUpstream.named("blue")
        let green = try TestUpstream.named("green")
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-views-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let config = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0
            workers 1
            admin_socket run/cutover.sock
            state_file run/cutover.state
            audit_log run/audit.log
            metrics_listen 127.0.0.1:0
            health {
                interval 100ms
                rise 1
                fall 1
                ready_after 200ms
            }
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let proxy = try CommandLineTests.RunningProxy(arguments: ["run", "-c", config])
        let port = try XCTUnwrap(proxy.listeningPort())
        let log = try XCTUnwrap(proxy.waitForLog(", the status page on "))
        let metrics = try XCTUnwrap(log.range(of: "metrics on http://127.0.0.1:"))
        let metricsPort = try XCTUnwrap(UInt16(log[metrics.upperBound...].prefix { $0.isNumber }))
        let setup = Setup(folder: folder, config: config, proxy: proxy, port: port, metricsPort: metricsPort, blue: blue, green: green)
        let deadline = Date().addingTimeInterval(10)
        while try !cli(setup, "status", "--json").stdout.contains("\"green\":{\"ready\":true") {
            guard Date() < deadline else {
                setup.stop()
                XCTFail("green never became ready")
                throw CocoaError(.featureUnsupported)
            }
            usleep(50_000)
        }
        return setup
    }

    private func cli(_ setup: Setup, _ words: String...) throws -> CommandLineTests.Outcome {
        try Self.cutover(words + ["-c", setup.config])
    }

    static func cutover(_ arguments: [String]) throws -> CommandLineTests.Outcome {
        let process = Process()
        process.executableURL = CommandLineTests.binary
        process.arguments = arguments
        process.currentDirectoryURL = CommandLineTests.repositoryRoot
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return .init(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                     stderr: String(decoding: stderr, as: UTF8.self))
    }

    private func traffic(_ setup: Setup, requests: Int) throws {
        let client = try RawHTTPClient(port: setup.port)
        for index in 0..<requests {
            // Different users, so that a 10 % canary gets some of them.
            let response = try client.request(headers: [("Cookie", "session=user-\(index)")])
            XCTAssertEqual(response.status, 200)
        }
    }

    /// Waits until the history has a second with traffic (the sampler runs once a second).
    private func waitForSeries(_ setup: Setup) throws {
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            let reply = JSON.parse(try cli(setup, "overview", "5", "--json").stdout)
            let rps = reply?["apps"]?.arrayValue?.first?["colors"]?.arrayValue?.first?["series"]?["rps"]?.arrayValue ?? []
            if rps.contains(where: { ($0.doubleValue ?? 0) > 0 }) { return }
            usleep(100_000)
        }
        XCTFail("no second with traffic in the history")
    }

    func testTopOnceShowsACanaryAndThenASwitch() throws {
        let setup = try start()
        defer { setup.stop() }
        try traffic(setup, requests: 50)
        XCTAssertEqual(try cli(setup, "weight", "green", "10", "--reason", "canary 1.4").status, 0)
        try traffic(setup, requests: 200)
        try waitForSeries(setup)

        let canary = try cli(setup, "top", "--once")
        XCTAssertEqual(canary.status, 0, canary.stderr)
        let frame = canary.stdout
        XCTAssertTrue(frame.hasPrefix("cutover top  "), frame)
        XCTAssertTrue(frame.contains("active blue  candidate green web 10%  generation 1"), frame)
        let lines = frame.split(separator: "\n").map(String.init)
        let blue = try XCTUnwrap(lines.first { $0.hasPrefix("web blue") }, frame)
        let green = try XCTUnwrap(lines.first { $0.hasPrefix("web green") }, frame)
        XCTAssertTrue(blue.contains(" 90% ") && blue.contains("0.00%") && blue.contains(" 1/1"), blue)
        XCTAssertTrue(green.contains(" 10% ") && green.contains(" 1/1"), green)
        XCTAssertTrue(frame.contains("weight blue→green by \(ProcessIdentity.userName(uid: getuid())): canary 1.4"), frame)
        XCTAssertFalse(frame.contains("\u{1B}"), "a plain frame")
        XCTAssertFalse(frame.contains(TopFrameFooter.keys), "no keys in --once")

        XCTAssertEqual(try cli(setup, "switch", "green", "--reason", "release 1.4").status, 0)
        let switched = try cli(setup, "top", "--once").stdout
        XCTAssertTrue(switched.contains("active green  previous blue  generation 2"), switched)
        XCTAssertTrue(switched.contains("last switch "), switched)
        XCTAssertTrue(switched.contains("blue→green"), switched)
        let greenAfter = try XCTUnwrap(switched.split(separator: "\n").first { $0.hasPrefix("web green") }, switched)
        XCTAssertTrue(greenAfter.contains(" 100% "), String(greenAfter))

        // Bad input: a clear usage error, and an unreachable socket is exit code 3.
        let bad = try cli(setup, "top", "--interval", "5ms")
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("--interval: a duration from 100ms to 60s"), bad.stderr)
        let gone = try Self.cutover(["top", "--once", "-s", setup.folder.appendingPathComponent("nothing.sock").path])
        XCTAssertEqual(gone.status, 3, gone.stderr)
        let overview = JSON.parse(try cli(setup, "overview", "301", "--json").stdout)
        XCTAssertNil(overview, "a usage error, not a reply")
    }

    /// The keys, typed into a pseudo-terminal: a weight through its prompts and confirmation,
    /// a resize, and `q` — then the terminal is as it was.
    func testTopKeysInAPseudoTerminal() throws {
        let setup = try start()
        defer { setup.stop() }
        try traffic(setup, requests: 20)
        let script = setup.folder.appendingPathComponent("drive_top.py").path
        try Self.ptyDriver.write(toFile: script, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, CommandLineTests.binary.path, setup.config]
        process.currentDirectoryURL = CommandLineTests.repositoryRoot
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, output)
        XCTAssertTrue(output.contains("PASS"), output)

        // The weight the keys asked for took effect, recorded with the operator's uid.
        let history = try cli(setup, "history", "3", "--json").stdout
        XCTAssertTrue(history.contains("\"event\":\"weight\""), history)
        XCTAssertTrue(history.contains("\"reason\":\"typed in top\""), history)
        XCTAssertTrue(history.contains("\"uid\":\(getuid())"), history)
        let overview = JSON.parse(try cli(setup, "overview", "--json").stdout)
        XCTAssertEqual(overview?["apps"]?.arrayValue?.first?["candidate_bp"]?.intValue, 2_500)
    }

    /// Runs `cutover top` on a pty of 24×80 and checks what a person would see.
    static let ptyDriver = #"""
        import os, select, signal, struct, subprocess, sys, termios, fcntl, time

        binary, config = sys.argv[1], sys.argv[2]
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        before = termios.tcgetattr(slave)
        env = dict(os.environ, TERM="xterm-256color")
        env.pop("NO_COLOR", None)
        top = subprocess.Popen([binary, "top", "-c", config], stdin=slave, stdout=slave, stderr=slave,
                               env=env, start_new_session=True,
                               preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        seen = b""

        def read_until(marker, timeout=10):
            global seen
            start = len(seen)
            deadline = time.time() + timeout
            while time.time() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        break
                    if marker in seen[start:]:
                        return
            sys.exit("FAIL: never saw %r; last output: %r" % (marker, seen[-2000:]))

        def type_keys(text):
            for ch in text:
                os.write(master, ch.encode())
                time.sleep(0.02)

        read_until(b"\x1b[?1049h")                 # the alternate screen
        read_until(b"s switch  r rollback")           # the keys
        read_until(b"web")                            # a frame with figures
        assert b"P99 60s" not in seen, "no sparklines at 80 columns"
        type_keys("w")
        read_until(b"weight of which color (blue/green): ")
        type_keys("green\r")
        read_until(b"green's share in percent (0-100): ")
        type_keys("25\r")
        read_until(b"reason (Enter for none): ")
        type_keys("typed in top\r")
        read_until(b"weight green 25 reason typed in top")
        read_until(b"send? [y/N]")
        type_keys("y")
        read_until(b"done: weight green 25 reason typed in top")
        read_until(b"25%")                              # the new split on screen
        # A wider terminal: the next frame has room for the sparklines.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 180, 0, 0))
        read_until(b"P99 60s")
        type_keys("q")
        code = top.wait(timeout=10)
        time.sleep(0.1)
        try:
            while select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
        except OSError:
            pass
        assert code == 0, "exit code %d" % code
        assert seen.rstrip().endswith(b"\x1b[?1049l"), "the main screen is back: %r" % seen[-200:]
        after = termios.tcgetattr(slave)
        assert after[3] == before[3], "local modes (echo, canonical input) restored"

        # Ctrl-C leaves the same way.
        top = subprocess.Popen([binary, "top", "-c", config], stdin=slave, stdout=slave, stderr=slave,
                               env=env, start_new_session=True,
                               preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        read_until(b"s switch  r rollback")
        type_keys("\x03")
        assert top.wait(timeout=10) == 0
        assert termios.tcgetattr(slave)[3] == before[3], "restored after Ctrl-C"
        # And SIGTERM.
        top = subprocess.Popen([binary, "top", "-c", config], stdin=slave, stdout=slave, stderr=slave,
                               env=env, start_new_session=True,
                               preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        read_until(b"s switch  r rollback")
        top.send_signal(signal.SIGTERM)
        assert top.wait(timeout=10) == 0
        assert termios.tcgetattr(slave)[3] == before[3], "restored after SIGTERM"
        print("PASS")
        """#

    /// The page in a real browser: headless Chromium loads it from the running proxy, the
    /// DOM it built holds the figures, a hostile reason is text, and a screenshot is taken.
    func testStatusPageInHeadlessChromium() throws {
        guard let chromium = ["chromium", "chromium-browser", "google-chrome"].lazy.compactMap(Self.which).first else {
            throw XCTSkip("Chromium is not installed here (apt-get install chromium; .ci/run installs it): the status page was not loaded in a browser")
        }
        let setup = try start()
        defer { setup.stop() }
        let hostile = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"
        XCTAssertEqual(try cli(setup, "weight", "green", "10", "--reason", hostile).status, 0)
        try traffic(setup, requests: 300)
        try waitForSeries(setup)

        // /status.json: the documented reply, and the page's headers.
        let client = try RawHTTPClient(port: setup.metricsPort)
        let json = try client.request("GET", "/status.json?seconds=30")
        XCTAssertEqual(json.status, 200)
        XCTAssertEqual(json.header("Content-Type"), "application/json")
        let reply = try XCTUnwrap(JSON.parse(json.bodyString))
        XCTAssertEqual(reply["active"]?.stringValue, "blue")
        let app = try XCTUnwrap(reply["apps"]?.arrayValue?.first)
        XCTAssertEqual(app["candidate_bp"]?.intValue, 1_000)
        XCTAssertEqual(app["colors"]?.arrayValue?.first?["series"]?["rps"]?.arrayValue?.count, 30)
        let page = try RawHTTPClient(port: setup.metricsPort).request("GET", "/")
        XCTAssertEqual(page.status, 200)
        XCTAssertEqual(page.header("Content-Type"), "text/html; charset=utf-8")
        XCTAssertTrue(page.header("Content-Security-Policy")?.contains("default-src 'none'") ?? false)
        XCTAssertEqual(try RawHTTPClient(port: setup.metricsPort).request("POST", "/", body: Array("x".utf8)).status, 405, "read-only")
        XCTAssertEqual(try RawHTTPClient(port: setup.metricsPort).request("GET", "/status.json?seconds=0").status, 400)

        let profile = setup.folder.appendingPathComponent("chromium-profile").path
        let url = "http://127.0.0.1:\(setup.metricsPort)/"
        let common = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(profile)", "--window-size=1280,1500"]
        let dom = try Self.run(chromium, common + ["--dump-dom", url])
        XCTAssertTrue(dom.contains("<h2>app web</h2>"), dom)
        XCTAssertTrue(dom.contains("data-figure=\"active\"><span class=\"blue\">blue</span>"), dom)
        XCTAssertTrue(dom.contains("<div style=\"width:90.00%;background:#2563eb\">blue 90%</div>"), dom)
        XCTAssertTrue(dom.contains("<td data-figure=\"share\" data-color=\"green\">10%</td>"), dom)
        let rps = try XCTUnwrap(dom.range(of: "<td data-figure=\"rps\" data-color=\"blue\">"), dom)
        XCTAssertGreaterThan(Double(dom[rps.upperBound...].prefix { $0 != "<" }) ?? 0, 0, "blue's requests per second")
        XCTAssertEqual(dom.components(separatedBy: "<svg ").count - 1, 3, "three charts")
        XCTAssertTrue(dom.contains("127.0.0.1:\(setup.green.port)"), "the servers")
        // The hostile reason is text in the audit table: no element was made of it.
        XCTAssertTrue(dom.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"), dom)
        XCTAssertFalse(dom.contains("<script"), dom)
        XCTAssertFalse(dom.contains("<img"), dom)
        XCTAssertTrue(dom.contains("<title>cutover: blue active</title>"), "the title was not changed by a script")

        let screenshot = setup.folder.appendingPathComponent("status-page.png").path
        _ = try Self.run(chromium, common + ["--screenshot=\(screenshot)", url])
        let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47], "a PNG")
        XCTAssertGreaterThan(png.count, 20_000, "a page, not a blank")
        if let keep = ProcessInfo.processInfo.environment["CUTOVER_SCREENSHOT"] {
            try? FileManager.default.removeItem(atPath: keep)
            try FileManager.default.copyItem(atPath: screenshot, toPath: keep)
        }
    }

    static func which(_ name: String) -> String? {
        for folder in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let path = "\(folder)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}

enum TopFrameFooter {
    static let keys = "s switch  r rollback"
}
