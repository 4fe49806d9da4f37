import CutoverConfig
import Foundation
import XCTest

final class ConfigParserTests: XCTestCase {
    /// The example from the design notes, parsed as if it lived in /etc/cutover.
    private let fullExample = """
        # conf/cutover.conf
        listen 127.0.0.1:8080
        workers auto
        admin_socket run/cutover.sock
        admin_mode 0640
        admin_group deploy
        state_file run/cutover.state
        audit_log /var/log/cutover/audit.log
        access_log off
        metrics_listen 127.0.0.1:9090
        initial_color green

        timeouts {
            connect 2s
            client_header 10s            # total deadline for a request head
            client_body 30s
            client_idle 1m
            upstream_header 30s
            upstream_idle 1h
            drain 0s
        }
        limits {
            max_connections 10000
            max_header_bytes 16k
            max_headers 100
            max_uri_bytes 8k
            max_body 10m
            upstream_idle_per_server 64
        }
        health {
            interval 1s
            timeout 500ms
            rise 2
            fall 3
            ready_after 30s
            min_healthy 1
        }
        app api {
            host Api.Example.com www.example.com   # or *
            path /api/
            health_path /api/system/status
            verify /api/system/status /api/monitor/slo
            blue 127.0.0.1:8091 127.0.0.1:8093
            green 127.0.0.1:8092
        }
        """

    /// Smallest valid file: six lines, used as a prefix for many cases.
    private let minimal = """
        listen 127.0.0.1:8080
        app a {
            host *
            blue 127.0.0.1:8091
            green 127.0.0.1:8092
        }

        """

    // MARK: Good files

    func testFullExample() throws {
        let config = try ConfigParser.parse(fullExample, path: "/etc/cutover/cutover.conf")
        let expected = Config(
            path: "/etc/cutover/cutover.conf",
            listen: [Endpoint(host: "127.0.0.1", port: 8080, line: 2)],
            workers: nil,
            adminSocket: "/etc/cutover/run/cutover.sock",
            adminMode: 0o640,
            adminGroup: "deploy",
            stateFile: "/etc/cutover/run/cutover.state",
            auditLog: "/var/log/cutover/audit.log",
            accessLog: .off,
            metricsListen: Endpoint(host: "127.0.0.1", port: 9090, line: 10),
            initialColor: .green,
            timeouts: Timeouts(connectMs: 2_000, clientHeaderMs: 10_000, clientBodyMs: 30_000,
                               clientIdleMs: 60_000, upstreamHeaderMs: 30_000,
                               upstreamIdleMs: 3_600_000, drainMs: 0),
            limits: Limits(maxConnections: 10_000, maxHeaderBytes: 16_384, maxHeaders: 100,
                           maxURIBytes: 8_192, maxBody: 10 * 1_048_576, upstreamIdlePerServer: 64),
            health: HealthSettings(intervalMs: 1_000, timeoutMs: 500, rise: 2, fall: 3,
                                   readyAfterMs: 30_000, minHealthy: 1),
            apps: [AppConfig(
                name: "api", line: 38,
                hosts: ["api.example.com", "www.example.com"],
                pathPrefix: "/api/",
                healthPath: "/api/system/status",
                verifyPaths: ["/api/system/status", "/api/monitor/slo"],
                blue: [Endpoint(host: "127.0.0.1", port: 8091, line: 43),
                       Endpoint(host: "127.0.0.1", port: 8093, line: 43)],
                green: [Endpoint(host: "127.0.0.1", port: 8092, line: 44)])])
        XCTAssertEqual(config, expected)
        XCTAssertEqual(config.apps[0].servers(.blue).map(\.description), ["127.0.0.1:8091", "127.0.0.1:8093"])
        XCTAssertEqual(config.apps[0].servers(.green).map(\.description), ["127.0.0.1:8092"])
    }

    func testGateThresholds() throws {
        let config = try ConfigParser.parse(minimal + "gate {\n window 5m\n max_5xx_rate 0.5%\n max_p95_ratio 1.25\n min_requests 500\n}\n",
                                            path: "t.conf")
        XCTAssertEqual(config.gate, GateThresholds(window: .fiveMinutes, max5xxRate: 0.005, maxP95Ratio: 1.25, minRequests: 500))
        let fraction = try ConfigParser.parse(minimal + "gate {\n max_5xx_rate 0.01\n}\n", path: "t.conf")
        XCTAssertEqual(fraction.gate, GateThresholds(window: .oneMinute, max5xxRate: 0.01, maxP95Ratio: nil, minRequests: 100),
                       "a fraction is a rate too; window 1m and min_requests 100 by default")
        XCTAssertNil(try ConfigParser.parse(minimal, path: "t.conf").gate, "no block: health and verify only")
    }

    func testDefaultsWhenAbsent() throws {
        let config = try ConfigParser.parse(minimal, path: "t.conf")
        XCTAssertEqual(config.path, "t.conf")
        XCTAssertNil(config.workers)
        XCTAssertEqual(config.adminMode, 0o600)
        XCTAssertNil(config.adminSocket)
        XCTAssertNil(config.adminGroup)
        XCTAssertNil(config.stateFile)
        XCTAssertNil(config.auditLog)
        XCTAssertEqual(config.accessLog, .off)
        XCTAssertNil(config.metricsListen)
        XCTAssertEqual(config.initialColor, .blue)
        XCTAssertEqual(config.timeouts, .defaults)
        XCTAssertEqual(config.limits, .defaults)
        XCTAssertNil(config.limits.maxBody)
        XCTAssertEqual(config.health, .defaults)
        XCTAssertEqual(config.apps[0].healthPath, "/")
        XCTAssertEqual(config.apps[0].verifyPaths, [])
        XCTAssertNil(config.apps[0].pathPrefix)
        XCTAssertEqual(config.apps[0].hosts, ["*"])
    }

    func testDefaultValuesMatchTheDocumentedOnes() {
        XCTAssertEqual(Timeouts.defaults, Timeouts(connectMs: 2_000, clientHeaderMs: 10_000, clientBodyMs: 30_000,
                                                   clientIdleMs: 60_000, upstreamHeaderMs: 30_000,
                                                   upstreamIdleMs: 60_000, drainMs: 10_000))
        XCTAssertEqual(Limits.defaults, Limits(maxConnections: 10_000, maxHeaderBytes: 16_384, maxHeaders: 100,
                                               maxURIBytes: 8_192, maxBody: nil, upstreamIdlePerServer: 64))
        XCTAssertEqual(HealthSettings.defaults, HealthSettings(intervalMs: 1_000, timeoutMs: 500, rise: 2, fall: 2,
                                                               readyAfterMs: 30_000, minHealthy: 1))
    }

    func testPartialBlockKeepsOtherDefaults() throws {
        let config = try ConfigParser.parse(minimal + "timeouts {\n    drain 2m\n}\nhealth {\n}\n", path: "t.conf")
        var expected = Timeouts.defaults
        expected.drainMs = 120_000
        XCTAssertEqual(config.timeouts, expected)
        XCTAssertEqual(config.health, .defaults)
    }

    func testRelativePathsResolveAgainstTheFilesFolder() throws {
        let text = minimal + "admin_socket run/cutover.sock\nstate_file ./run/x.state\naccess_log logs/access.log\naudit_log /abs/audit.log\n"
        let config = try ConfigParser.parse(text, path: "/srv/cutover/conf/cutover.conf")
        XCTAssertEqual(config.adminSocket, "/srv/cutover/conf/run/cutover.sock")
        XCTAssertEqual(config.stateFile, "/srv/cutover/conf/run/x.state")
        XCTAssertEqual(config.accessLog, .file("/srv/cutover/conf/logs/access.log"))
        XCTAssertEqual(config.auditLog, "/abs/audit.log")
    }

    func testExplicitBaseDirectoryWins() throws {
        let config = try ConfigParser.parse(minimal + "state_file run/s\n", path: "/etc/x.conf", baseDirectory: "/var/lib/cutover/")
        XCTAssertEqual(config.stateFile, "/var/lib/cutover/run/s")
    }

    func testRelativeConfigPathAndEmbeddedUseTheCurrentDirectory() throws {
        let cwd = FileManager.default.currentDirectoryPath
        let relative = try ConfigParser.parse(minimal + "state_file run/s\n", path: "conf/cutover.conf")
        XCTAssertEqual(relative.stateFile, cwd + "/conf/run/s")
        let embedded = try ConfigParser.parse(minimal + "state_file run/s\n", path: "<embedded>")
        XCTAssertEqual(embedded.stateFile, cwd + "/run/s")
        XCTAssertEqual(embedded.path, "<embedded>")
    }

    func testOffValues() throws {
        let text = minimal + "admin_socket off\nstate_file off\naudit_log off\nmetrics_listen off\nlimits {\n    max_body off\n}\n"
        let config = try ConfigParser.parse(text, path: "t.conf")
        XCTAssertNil(config.adminSocket)
        XCTAssertNil(config.stateFile)
        XCTAssertNil(config.auditLog)
        XCTAssertNil(config.metricsListen)
        XCTAssertNil(config.limits.maxBody)
    }

    func testAccessLogStdoutAndWorkersNumber() throws {
        let config = try ConfigParser.parse(minimal + "access_log stdout\nworkers 8\n", path: "t.conf")
        XCTAssertEqual(config.accessLog, .stdout)
        XCTAssertEqual(config.workers, 8)
    }

    func testListenForms() throws {
        let text = """
            listen [::1]:8080
            listen *:8081
            listen 0.0.0.0:0
            listen [2001:DB8::1]:443
            app a {
                host *
                blue [::1]:8091 localhost:8093 Backend-1.internal:80
                green 10.0.0.2:8092
            }
            """
        let config = try ConfigParser.parse(text, path: "t.conf")
        XCTAssertEqual(config.listen, [
            Endpoint(host: "::1", port: 8080, line: 1),
            Endpoint(host: "0.0.0.0", port: 8081, line: 2),
            Endpoint(host: "0.0.0.0", port: 0, line: 3),
            Endpoint(host: "2001:db8::1", port: 443, line: 4),
        ])
        XCTAssertEqual(config.listen.map(\.description), ["[::1]:8080", "0.0.0.0:8081", "0.0.0.0:0", "[2001:db8::1]:443"])
        XCTAssertEqual(config.apps[0].blue.map(\.description), ["[::1]:8091", "localhost:8093", "backend-1.internal:80"])
    }

    func testHostRoutingAllowsSameHostWithDifferentPaths() throws {
        let text = """
            listen 127.0.0.1:8080
            app web {
                host *
                blue 127.0.0.1:1
                green 127.0.0.1:2
            }
            app api {
                host *
                path /api/
                blue 127.0.0.1:3
                green 127.0.0.1:4
            }
            """
        let config = try ConfigParser.parse(text, path: "t.conf")
        XCTAssertEqual(config.apps.map(\.name), ["web", "api"])
        XCTAssertEqual(config.apps.map(\.hosts), [["*"], ["*"]])
        XCTAssertEqual(config.apps.map(\.line), [2, 7])
    }

    func testCommentsCRLFAndHashInsideToken() throws {
        let text = "# only a comment\r\nlisten 127.0.0.1:8080 # trailing\r\nadmin_group wheel#1\r\napp a { # opening\r\n host *\r\n blue 127.0.0.1:1\r\n green 127.0.0.1:2\r\n} # closing\r\n"
        let config = try ConfigParser.parse(text, path: "t.conf")
        XCTAssertEqual(config.adminGroup, "wheel#1")
        XCTAssertEqual(config.apps[0].blue, [Endpoint(host: "127.0.0.1", port: 1, line: 6)])
    }

    /// Found by Tests/Fuzz/config: a blank followed by a combining mark is one Swift Character,
    /// so a split on Characters glued tokens together and missed a `#` that a mark followed.
    func testBlanksAndCommentsAreFoundAmongScalarsNotCharacters() throws {
        let text = "listen 127.0.0.1:8080 #\u{0301} a comment that starts with a combining mark\n"
            + "app a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n"
        let config = try ConfigParser.parse(text, path: "t.conf")
        XCTAssertEqual(config.listen.count, 1)
        XCTAssertThrowsError(try ConfigParser.parse("listen \u{0301}127.0.0.1:8080\n", path: "t.conf")) { error in
            // The mark is its own token: the address is not glued to the directive's name.
            XCTAssertEqual((error as? ConfigError)?.line, 1)
            XCTAssertFalse((error as? ConfigError)?.message.contains("unknown directive") ?? true, "\(error)")
        }
    }

    func testColorOther() {
        XCTAssertEqual(Color.blue.other, .green)
        XCTAssertEqual(Color.green.other, .blue)
        XCTAssertEqual(Color.allCases, [.blue, .green])
    }

    // MARK: Values

    func testParseDuration() {
        XCTAssertEqual(ConfigParser.parseDuration("500ms"), 500)
        XCTAssertEqual(ConfigParser.parseDuration("1s"), 1_000)
        XCTAssertEqual(ConfigParser.parseDuration("2m"), 120_000)
        XCTAssertEqual(ConfigParser.parseDuration("1h"), 3_600_000)
        XCTAssertEqual(ConfigParser.parseDuration("0s"), 0)
        for bad: Substring in ["", "5", "s", "1.5s", "-1s", "+1s", "1S", "1 s", "1sec", "99999999999999999999h"] {
            XCTAssertNil(ConfigParser.parseDuration(bad), String(bad))
        }
    }

    func testParseSize() {
        XCTAssertEqual(ConfigParser.parseSize("0"), 0)
        XCTAssertEqual(ConfigParser.parseSize("512"), 512)
        XCTAssertEqual(ConfigParser.parseSize("16k"), 16_384)
        XCTAssertEqual(ConfigParser.parseSize("1m"), 1_048_576)
        XCTAssertEqual(ConfigParser.parseSize("2g"), 2_147_483_648)
        for bad: Substring in ["", "k", "1kb", "1K", "-1", "1.5k", "99999999999999999g"] {
            XCTAssertNil(ConfigParser.parseSize(bad), String(bad))
        }
    }

    // MARK: Bad files

    func testBadFiles() {
        let m = minimal  // lines 1-6; the next line is 7
        let cases: [(String, String)] = [
            // Structure.
            ("", "t.conf:1: no 'listen' directive (at least one is required)"),
            ("listen 127.0.0.1:8080\n# no apps\n", "t.conf:2: no 'app' block (at least one is required)"),
            ("app a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}", "t.conf:5: no 'listen' directive (at least one is required)"),
            (m + "timeouts {\n    connect 2s\n", "t.conf:7: unclosed block 'timeouts' (missing '}')"),
            (m + "app b {\n host b\napp c {\n}\n", "t.conf:7: unclosed block 'app b' (no '}' before the block at line 9)"),
            (m + "}\n", "t.conf:7: unexpected '}' (no block is open)"),
            (m + "timeouts { connect 2s }\n", "t.conf:7: '}' must stand alone on its line"),
            (m + "timeouts { connect 2s\n}\n", "t.conf:7: '{' must end the line (put each directive on its own line)"),
            (m + "timeouts\n{\n}\n", "t.conf:7: timeouts: expected '{' at the end of the line"),
            (m + "{\n", "t.conf:7: '{' must follow a block name on the same line"),
            (m + "limits\n", "t.conf:7: limits: expected '{' at the end of the line"),
            (m + "workers 4 {\n}\n", "t.conf:7: 'workers' is not a block (blocks are timeouts, limits, health, gate, tls, app, plan and watch)"),
            (m + "timeouts extra {\n}\n", "t.conf:7: timeouts: unexpected extra value 'extra'"),
            // Unknown directives.
            (m + "worker 4\n", "t.conf:7: unknown directive 'worker'"),
            (m + "timeouts {\n    conect 2s\n}\n", "t.conf:8: unknown directive 'conect' in timeouts block"),
            (m + "limits {\n    max_bodies 1\n}\n", "t.conf:8: unknown directive 'max_bodies' in limits block"),
            (m + "health {\n    intervals 1s\n}\n", "t.conf:8: unknown directive 'intervals' in health block"),
            (m + "app b {\n host b\n weight 5\n}\n", "t.conf:9: unknown directive 'weight' in app 'b'"),
            // Values: missing, extra, duplicate.
            (m + "workers\n", "t.conf:7: workers: missing value"),
            (m + "listen 127.0.0.1:8081 127.0.0.1:8082\n", "t.conf:7: listen: unexpected '127.0.0.1:8082' (only 'tls' may follow the address)"),
            (m + "workers 2\nworkers 3\n", "t.conf:8: duplicate 'workers' (first at line 7)"),
            (m + "timeouts {\n}\ntimeouts {\n}\n", "t.conf:9: duplicate 'timeouts' (first at line 7)"),
            (m + "health {\n rise 2\n rise 3\n}\n", "t.conf:9: duplicate 'rise' (first at line 8)"),
            (m + "listen 127.0.0.1:8080\n", "t.conf:7: listen: 127.0.0.1:8080 is already listed at line 1"),
            (m + "app {\n}\n", "t.conf:7: app: missing value"),
            // Apps.
            (m + "app a {\n host b\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n", "t.conf:7: duplicate app 'a' (first at line 2)"),
            (m + "app b {\n host b\n blue 127.0.0.1:1\n}\n", "t.conf:7: app 'b': missing 'green'"),
            (m + "app b {\n host b\n green 127.0.0.1:1\n}\n", "t.conf:7: app 'b': missing 'blue'"),
            (m + "app b {\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n", "t.conf:7: app 'b': missing 'host'"),
            (m + "app b {\n host B.example *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n",
             "t.conf:8: host: '*' with no path is already routed by app 'a' (line 2)"),
            (m + "app b {\n host x\n path /v1/\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\napp c {\n host X\n path /v1/\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n",
             "t.conf:14: host: 'x' with path '/v1/' is already routed by app 'b' (line 7)"),
            (m + "app b {\n host x.example X.example\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n", "t.conf:8: host: 'x.example' is listed twice"),
            (m + "app b {\n host bad_host!\n}\n", "t.conf:8: host: bad host name 'bad_host!'"),
            (m + "app b/c {\n}\n", "t.conf:7: app: bad name 'b/c' (use letters, digits, '-', '_' and '.')"),
            (m + "app b {\n host b\n blue *:8091\n}\n", "t.conf:9: blue: bad host '*' in '*:8091'"),
            // Paths.
            (m + "app b {\n host b\n health_path status\n}\n", "t.conf:9: health_path: 'status' must start with '/'"),
            (m + "app b {\n host b\n path api/\n}\n", "t.conf:9: path: 'api/' must start with '/'"),
            (m + "app b {\n host b\n verify /ok ok\n}\n", "t.conf:9: verify: 'ok' must start with '/'"),
            // Numbers, durations, sizes.
            (m + "workers 0\n", "t.conf:7: workers: expected 'auto' or a number 1..256, got '0'"),
            (m + "workers 257\n", "t.conf:7: workers: expected 'auto' or a number 1..256, got '257'"),
            (m + "workers many\n", "t.conf:7: workers: expected 'auto' or a number 1..256, got 'many'"),
            (m + "limits {\n max_headers ten\n}\n", "t.conf:8: max_headers: 'ten' is not a number"),
            (m + "limits {\n max_headers 1001\n}\n", "t.conf:8: max_headers: 1001 is out of range (1..1000)"),
            (m + "limits {\n max_connections -5\n}\n", "t.conf:8: max_connections: '-5' is not a number"),
            (m + "limits {\n max_connections 99999999999999999999\n}\n", "t.conf:8: max_connections: 99999999999999999999 is out of range (1..1000000)"),
            (m + "health {\n rise 0\n}\n", "t.conf:8: rise: 0 is out of range (1..1000)"),
            (m + "health {\n min_healthy 0\n}\n", "t.conf:8: min_healthy: 0 is out of range (1..1000)"),
            (m + "timeouts {\n connect 2\n}\n", "t.conf:8: connect: '2' needs a unit (ms, s, m or h), e.g. 500ms or 2s"),
            (m + "timeouts {\n connect 2sec\n}\n", "t.conf:8: connect: '2sec' is not a duration (a number with ms, s, m or h, e.g. 500ms or 2s)"),
            (m + "health {\n timeout 0ms\n}\n", "t.conf:8: timeout: must be greater than 0"),
            (m + "limits {\n max_header_bytes 16kb\n}\n", "t.conf:8: max_header_bytes: '16kb' is not a size (bytes, or a number with k, m or g, e.g. 16k)"),
            (m + "limits {\n max_header_bytes 128k\n}\n", "t.conf:8: max_header_bytes: 128k is out of range (1k..64k)"),
            (m + "limits {\n max_header_bytes 512\n}\n", "t.conf:8: max_header_bytes: 512 is out of range (1k..64k)"),
            (m + "limits {\n max_uri_bytes 16k\n max_header_bytes 8k\n}\n",
             "t.conf:8: max_uri_bytes (16384 bytes) must not exceed max_header_bytes (8192 bytes)"),
            (m + "limits {\n max_body lots\n}\n", "t.conf:8: max_body: 'lots' is not a size (bytes, or a number with k, m or g, e.g. 16k)"),
            (m + "admin_mode 0800\n", "t.conf:7: admin_mode: '0800' is not an octal file mode 0000..0777 (e.g. 0600)"),
            (m + "admin_mode 4755\n", "t.conf:7: admin_mode: '4755' is not an octal file mode 0000..0777 (e.g. 0600)"),
            (m + "initial_color red\n", "t.conf:7: initial_color: expected blue or green, got 'red'"),
            // Gate thresholds.
            (m + "gate {\n window 1m\n}\n", "t.conf:7: gate: set max_5xx_rate, max_p95_ratio, max_shadow_diff_rate or watch (the block checks nothing otherwise)"),
            (m + "gate {\n window total\n max_5xx_rate 1%\n}\n", "t.conf:8: window: 'total' is not a window (10s, 1m or 5m)"),
            (m + "gate {\n max_5xx_rate 150%\n}\n", "t.conf:8: max_5xx_rate: '150%' is more than 100%"),
            (m + "gate {\n max_5xx_rate half\n}\n",
             "t.conf:8: max_5xx_rate: 'half' is not a rate (a percentage such as 0.5% or a fraction such as 0.005)"),
            (m + "gate {\n max_p95_ratio 0.9\n}\n", "t.conf:8: max_p95_ratio: '0.9' is not a ratio of 1 or more (e.g. 1.1)"),
            (m + "gate {\n max_p95_ratio 1.1\n min_requests 0\n}\n", "t.conf:9: min_requests: 0 is out of range (1..1000000000)"),
            (m + "gate {\n max_p95_ratio 1.1\n p99 2\n}\n", "t.conf:9: unknown directive 'p99' in gate block"),
            // Addresses and ports.
            (m + "listen 127.0.0.1:65536\n", "t.conf:7: listen: bad port '65536' in '127.0.0.1:65536' (0..65535)"),
            (m + "listen 127.0.0.1\n", "t.conf:7: listen: '127.0.0.1' is not an address (expected host:port, [IPv6]:port or *:port)"),
            (m + "listen ::1:8080\n", "t.conf:7: listen: '::1:8080' is not an address (expected host:port, [IPv6]:port or *:port)"),
            (m + "listen [::g]:8080\n", "t.conf:7: listen: bad host '::g' in '[::g]:8080'"),
            (m + "listen 999.1.1.1:80\n", "t.conf:7: listen: bad host '999.1.1.1' in '999.1.1.1:80'"),
            (m + "listen 127.0.0.1:\n", "t.conf:7: listen: bad port '' in '127.0.0.1:' (0..65535)"),
            (m + "app b {\n host b\n green 127.0.0.1:0\n}\n", "t.conf:9: green: bad port '0' in '127.0.0.1:0' (1..65535)"),
            (m + "app b {\n host b\n green 127.0.0.1:http\n}\n", "t.conf:9: green: bad port 'http' in '127.0.0.1:http' (1..65535)"),
            (m + "app b {\n host b\n blue 127.0.0.1\n}\n", "t.conf:9: blue: '127.0.0.1' is not an address (expected host:port or [IPv6]:port)"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try ConfigParser.parse(text, path: "t.conf"), expected) { error in
                XCTAssertEqual("\(error)", expected)
            }
        }
    }

    func testErrorCarriesFileAndLineFields() {
        do {
            _ = try ConfigParser.parse("listen 1.2.3.4:80\nbogus\n", path: "conf/x.conf")
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error, ConfigError(file: "conf/x.conf", line: 2, message: "unknown directive 'bogus'"))
        }
    }

    // MARK: Files

    func testLoadMissingFile() {
        XCTAssertThrowsError(try ConfigParser.load(path: "/nonexistent/cutover.conf")) { error in
            XCTAssertEqual("\(error)", "/nonexistent/cutover.conf:0: cannot read: No such file or directory")
        }
    }

    func testLoadReadsAFile() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("c.conf")
        try (minimal + "state_file run/s\n").write(to: file, atomically: true, encoding: .utf8)
        let config = try ConfigParser.load(path: file.path)
        XCTAssertEqual(config.path, file.path)
        XCTAssertEqual(config.stateFile, folder.path + "/run/s")
    }

    func testShippedExampleParses() throws {
        let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent("conf/cutover.conf").path
        let config = try ConfigParser.load(path: path)
        let folder = root.appendingPathComponent("conf").path
        XCTAssertEqual(config.listen, [Endpoint(host: "127.0.0.1", port: 8080, line: config.listen.first?.line ?? 0)])
        XCTAssertEqual(config.adminSocket, folder + "/run/cutover.sock")
        XCTAssertEqual(config.stateFile, folder + "/run/cutover.state")
        XCTAssertEqual(config.auditLog, folder + "/run/audit.log")
        XCTAssertEqual(config.adminMode, 0o600)
        XCTAssertEqual(config.timeouts, .defaults)
        XCTAssertEqual(config.limits, .defaults)
        XCTAssertEqual(config.health, .defaults)
        XCTAssertEqual(config.apps.count, 1)
        let web = try XCTUnwrap(config.apps.first)
        XCTAssertEqual(web.name, "web")
        XCTAssertEqual(web.hosts, ["*"])
        XCTAssertEqual(web.healthPath, "/api/system/status")
        XCTAssertEqual(web.verifyPaths, ["/api/system/status"])
        XCTAssertEqual(web.blue.map(\.description), ["127.0.0.1:8091"])
        XCTAssertEqual(web.green.map(\.description), ["127.0.0.1:8092"])
    }

    // MARK: Progressive delivery

    private let twoApps = """
        listen 127.0.0.1:8080
        preview_listen 127.0.0.1:8081
        preview_listen 127.0.0.1:8082
        app api {
            host api.example
            sticky cookie cutover_id max_age 12h
            pin header X-Tenant pilot-1,pilot-2 green
            pin cookie beta yes green
            pin header X-Tenant big-customer blue
            blue 127.0.0.1:9001
            green 127.0.0.1:9002
        }
        app web {
            host *
            sticky header X-User-Id
            blue 127.0.0.1:9011
            green 127.0.0.1:9012
        }
        """

    func testStickyPinsAndPreviewListeners() throws {
        let config = try ConfigParser.parse(twoApps, path: "t.conf")
        XCTAssertEqual(config.previewListen.map(\.description), ["127.0.0.1:8081", "127.0.0.1:8082"])
        XCTAssertEqual(config.apps[0].sticky, .cookie(name: "cutover_id", maxAgeSeconds: 43_200))
        XCTAssertEqual(config.apps[1].sticky, .header(name: "x-user-id"))
        XCTAssertEqual(config.apps[0].pins, [
            PinRule(source: .header, name: "x-tenant", values: ["pilot-1", "pilot-2"], color: .green, line: 7),
            PinRule(source: .cookie, name: "beta", values: ["yes"], color: .green, line: 8),
            PinRule(source: .header, name: "x-tenant", values: ["big-customer"], color: .blue, line: 9),
        ])
        let defaults = try ConfigParser.parse("listen 127.0.0.1:1\napp a {\n host *\n sticky cookie c\n blue 127.0.0.1:2\n green 127.0.0.1:3\n}\n",
                                              path: "t.conf")
        XCTAssertEqual(defaults.apps[0].sticky, .cookie(name: "c", maxAgeSeconds: StickyRule.defaultCookieMaxAgeSeconds))
        XCTAssertEqual(try ConfigParser.parse("listen 127.0.0.1:1\napp a {\n host *\n sticky ip\n blue 127.0.0.1:2\n green 127.0.0.1:3\n}\n",
                                              path: "t.conf").apps[0].sticky, .clientAddress)
        XCTAssertEqual(try ConfigParser.parse("listen 127.0.0.1:1\napp a {\n host *\n blue 127.0.0.1:2\n green 127.0.0.1:3\n}\n",
                                              path: "t.conf").apps[0].sticky, .none)
    }

    func testBadStickyAndPinLinesNameTheirLine() {
        let m = "listen 127.0.0.1:8080\napp a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n"
        let cases: [(String, String)] = [
            (m + " sticky\n}\n", "t.conf:6: sticky: missing mode (cookie NAME, header NAME, ip or none)"),
            (m + " sticky session\n}\n", "t.conf:6: sticky: unknown mode 'session' (expected cookie NAME, header NAME, ip or none)"),
            (m + " sticky cookie\n}\n", "t.conf:6: sticky cookie: missing the cookie name"),
            (m + " sticky cookie a;b\n}\n", "t.conf:6: sticky cookie: 'a;b' is not a valid cookie name"),
            (m + " sticky cookie id max_age\n}\n", "t.conf:6: sticky cookie: expected 'max_age DURATION' after the name, got 'max_age'"),
            (m + " sticky cookie id max_age 0s\n}\n",
             "t.conf:6: sticky cookie: max_age '0s' must be a duration from 1s to 9600h (400 days, the longest a browser keeps a cookie), e.g. 24h"),
            (m + " sticky header\n}\n", "t.conf:6: sticky header: missing the header name"),
            (m + " sticky ip extra\n}\n", "t.conf:6: sticky: unexpected extra value 'extra'"),
            (m + " sticky ip\n sticky none\n}\n", "t.conf:7: duplicate 'sticky' (first at line 6)"),
            (m + " pin header X-Tenant green\n}\n", "t.conf:6: pin: expected 'pin header|cookie NAME VALUE[,VALUE…] blue|green'"),
            (m + " pin query tenant a green\n}\n", "t.conf:6: pin: 'query' is not header or cookie"),
            (m + " pin header X-Tenant a,,b green\n}\n",
             "t.conf:6: pin: bad value '' (1 to 256 visible characters, no ',', ';', '\"' or '\\')"),
            (m + " pin header X-Tenant a,a green\n}\n", "t.conf:6: pin: a value is listed twice"),
            (m + " pin header X-Tenant a purple\n}\n", "t.conf:6: pin: expected blue or green, got 'purple'"),
            (m + " pin header X-Tenant a green\n pin header x-tenant b,a blue\n}\n",
             "t.conf:7: pin: header x-tenant value 'a' is already pinned at line 6"),
            ("listen 127.0.0.1:8080\npreview_listen 127.0.0.1:8080\n", "t.conf:2: preview_listen: 127.0.0.1:8080 is already listed at line 1"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try ConfigParser.parse(text, path: "t.conf"), expected) { error in
                XCTAssertEqual("\(error)", expected)
            }
        }
        let many = (0...PinRule.maxValuesPerApp).map { "t\($0)" }
        let tooMany = m + " pin header X-Tenant \(many[..<5_000].joined(separator: ",")) green\n"
            + " pin header X-Tenant \(many[5_000...].joined(separator: ",")) blue\n}\n"
        XCTAssertThrowsError(try ConfigParser.parse(tooMany, path: "t.conf")) { error in
            XCTAssertEqual("\(error)", "t.conf:7: pin: app 'a' pins more than 10000 values")
        }
    }

    // MARK: TLS

    func testTheTLSBlock() throws {
        let apps = "app a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n"
        let config = try ConfigParser.parse("""
            listen 127.0.0.1:8443 tls
            listen 127.0.0.1:8080
            tls {
                certificate certs/site.pem certs/site.key
                certificate /etc/cutover/wild.pem /etc/cutover/wild.key
                default_certificate Example.com
                min_version 1.3
                ciphers ECDHE+AESGCM:!aNULL
                session_tickets off
                session_cache off
                handshake_timeout 5s
                redirect_http listen 127.0.0.1:8081
            }
            """ + "\n" + apps, path: "/etc/cutover/cutover.conf")
        XCTAssertEqual(config.listen.map(\.tls), [true, false])
        let tls = try XCTUnwrap(config.tls)
        XCTAssertEqual(tls.certificates, [.init(chainPath: "/etc/cutover/certs/site.pem", keyPath: "/etc/cutover/certs/site.key", line: 4),
                                          .init(chainPath: "/etc/cutover/wild.pem", keyPath: "/etc/cutover/wild.key", line: 5)])
        XCTAssertEqual(tls.defaultName, "example.com")
        XCTAssertEqual(tls.minVersion, .tls13)
        XCTAssertEqual(tls.ciphers, "ECDHE+AESGCM:!aNULL")
        XCTAssertFalse(tls.sessionTickets)
        XCTAssertEqual(tls.sessionCache, 0)
        XCTAssertEqual(tls.handshakeTimeoutMs, 5_000)
        XCTAssertEqual(tls.redirectHTTP.map(\.port), [8081])
        let defaults = try XCTUnwrap(try ConfigParser.parse("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem a.key\n}\n" + apps, path: "t.conf").tls)
        XCTAssertEqual(defaults.minVersion, .tls12)
        XCTAssertNil(defaults.ciphers)
        XCTAssertTrue(defaults.sessionTickets)
        XCTAssertEqual(defaults.sessionCache, 20_000)
        XCTAssertEqual(defaults.handshakeTimeoutMs, 10_000)
    }

    func testUpstreamTLS() throws {
        func app(_ line: String) throws -> AppConfig {
            let config = try ConfigParser.parse("listen 127.0.0.1:1\napp a {\n host *\n \(line)\n blue 127.0.0.1:1\n green 10.0.0.2:443\n}\n",
                                                path: "/etc/cutover/c.conf")
            return config.apps[0]
        }
        XCTAssertEqual(try app("upstream_tls verify ca.pem").upstreamTLS, UpstreamTLS(caFile: "/etc/cutover/ca.pem", line: 4))
        XCTAssertEqual(try app("upstream_tls verify /ca.pem sni Green.Internal").upstreamTLS,
                       UpstreamTLS(caFile: "/ca.pem", serverName: "green.internal", line: 4))
        XCTAssertEqual(try app("upstream_tls insecure").upstreamTLS, UpstreamTLS(caFile: nil, line: 4))
        XCTAssertNil(try app("health_path /").upstreamTLS)
        for bad in ["upstream_tls", "upstream_tls verify", "upstream_tls verify ca.pem green.internal", "upstream_tls on",
                    "upstream_tls insecure ca.pem"] {
            XCTAssertThrowsError(try app(bad), bad) { error in
                XCTAssertEqual("\(error)", "/etc/cutover/c.conf:4: upstream_tls: expected 'verify CAFILE [sni NAME]' or 'insecure [sni NAME]'")
            }
        }
    }

    func testBadTLSLinesNameTheirLine() {
        let apps = "app a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n"
        let cases: [(String, String)] = [
            ("listen 127.0.0.1:8443 tls\n" + apps, "t.conf:1: listen 127.0.0.1:8443 tls: no 'tls { }' block with its certificates"),
            ("listen 127.0.0.1:8443 ssl\n" + apps, "t.conf:1: listen: unexpected 'ssl' (only 'tls' may follow the address)"),
            ("listen 127.0.0.1:8443\ntls {\n certificate a.pem a.key\n}\n" + apps, "t.conf:2: tls: no 'listen ADDRESS tls' uses this block"),
            ("listen 127.0.0.1:8443 tls\ntls {\n}\n" + apps, "t.conf:2: tls: no certificate (add 'certificate CHAIN.pem KEY.pem')"),
            ("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem\n}\n" + apps,
             "t.conf:3: certificate: expected CHAIN.pem KEY.pem (the certificate chain, then its private key)"),
            ("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem a.key\n min_version 1.1\n}\n" + apps,
             "t.conf:4: min_version: expected 1.2 or 1.3, got '1.1'"),
            ("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem a.key\n session_tickets maybe\n}\n" + apps,
             "t.conf:4: session_tickets: expected on or off, got 'maybe'"),
            ("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem a.key\n redirect_http 127.0.0.1:80\n}\n" + apps,
             "t.conf:4: redirect_http: expected 'listen ADDRESS' (a plain listener that answers 308 to https)"),
            ("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem a.key\n ocsp on\n}\n" + apps, "t.conf:4: unknown directive 'ocsp' in tls block"),
            ("listen 127.0.0.1:8443 tls\ntls {\n certificate a.pem a.key\n min_version 1.2\n min_version 1.3\n}\n" + apps,
             "t.conf:5: duplicate 'min_version' (first at line 4)"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try ConfigParser.parse(text, path: "t.conf"), expected) { error in
                XCTAssertEqual("\(error)", expected)
            }
        }
    }

    // MARK: Plans

    func testThePlansShippedInConfParse() throws {
        let config = try ConfigParser.load(path: Self.repositoryRoot + "/conf/cutover.conf")
        XCTAssertEqual(config.plans.map(\.name), ["canary-by-tenant", "canary-to-full", "gate-then-switch"])
        let tenant = try XCTUnwrap(config.plans.first)
        XCTAssertTrue(tenant.file.hasSuffix("conf/plans/canary-by-tenant.conf"), tenant.file)
        XCTAssertEqual(tenant.steps.map(\.weight), [1_000, 5_000, 10_000])
        XCTAssertEqual(tenant.steps.map(\.holdMs), [900_000, 1_800_000, 1_800_000])
        XCTAssertEqual(tenant.steps[1].pins.first?.values, ["pilot-1", "pilot-2", "pilot-3", "pilot-4", "pilot-5"])
        XCTAssertEqual(tenant.steps[1].pins.first?.name, "x-tenant")
        XCTAssertEqual(tenant.pauseIf, [.errorRate(above: 0.01), .p95(aboveMs: 500)])
        XCTAssertEqual(tenant.rollbackIf, [.errorRate(above: 0.02), .errorRegression(minExcess: 0), .healthFailed, .shadowDiffRate(above: 0.01)])
        XCTAssertEqual(tenant.minRequests, 200)
        let gate = try XCTUnwrap(config.plans.last)
        XCTAssertEqual(gate.watchMs, 900_000)
        XCTAssertTrue(gate.rollbackIf.contains(.burnRate(rate: 14.4, budget: 0.001, windowMs: 3_600_000, minErrors: 5)))
        XCTAssertTrue(gate.rollbackIf.contains(.p95Regression(ratio: 1.2, slackMs: 25)))
    }

    func testBadPlansNameTheirFileAndLine() throws {
        let m = "listen 127.0.0.1:8080\napp a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n"  // lines 1-6
        let cases: [(String, String)] = [
            (m + "plan p {\n}\n", "t.conf:7: plan 'p': no 'step'"),
            (m + "plan p {\n step weight 10 hold 1m\n}\n", "t.conf:7: plan 'p': the last step must reach weight 100 (it reaches 10.0%)"),
            (m + "plan p {\n step weight 50\n step weight 10\n step weight 100\n}\n",
             "t.conf:9: step: weight 10.0% is below the previous step's 50.0% (a plan only moves forward; rollback is its own decision)"),
            (m + "plan p {\n step hold 1m\n}\n", "t.conf:8: step: sets nothing (give weight, pin or mirror)"),
            (m + "plan p {\n step weight 101\n}\n", "t.conf:8: step: weight '101' is not a percentage from 0 to 100 with at most two decimals"),
            (m + "plan p {\n step weight 10 weight 20\n}\n", "t.conf:8: step: 'weight' is given twice"),
            (m + "plan p {\n step weight 100 hold soon\n}\n", "t.conf:8: step: hold 'soon' is not a duration (a number with ms, s, m or h, e.g. 15m)"),
            (m + "plan p {\n step weight 100 speed 3\n}\n", "t.conf:8: step: unknown 'speed' (weight, pin, mirror, hold)"),
            (m + "plan p {\n step pin header X-Tenant a,,b weight 100\n}\n",
             "t.conf:8: step: bad pin value '' (1 to 256 visible characters, no ',', ';', '\"' or '\\')"),
            (m + "plan p {\n step weight 100\n rollback_if error_rate 2%\n}\n", "t.conf:9: rollback_if: expected 'error_rate > 1%'"),
            (m + "plan p {\n step weight 100\n rollback_if error_rate > 100%\n}\n", "t.conf:9: rollback_if: '100%' must be below 100%"),
            (m + "plan p {\n step weight 100\n pause_if latency > 1s\n}\n",
             "t.conf:9: pause_if: unknown condition 'latency' (error_rate, error_regression, p95, p95_regression, burn_rate, health_failed, shadow_diff_rate)"),
            (m + "plan p {\n step weight 100\n rollback_if burn_rate > 14.4 budget 0.1% window 10s\n}\n",
             "t.conf:9: rollback_if: window '10s' must be a duration of at least 12s (its short window is 1/12 of it)"),
            (m + "plan p {\n step weight 100\n false_alarm 20%\n}\n", "t.conf:9: false_alarm: must be above 0 and at most 10%"),
            (m + "plan p {\n step weight 100\n}\nplan p {\n step weight 100\n}\n", "t.conf:10: duplicate plan 'p' (first at t.conf:7)"),
            (m + "plan p {\n step weight 100\n hold 5m\n}\n",
             "t.conf:9: unknown directive 'hold' in plan 'p' (step, pause_if, rollback_if, min_requests, false_alarm, watch)"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try ConfigParser.parse(text, path: "t.conf"), expected) { error in
                XCTAssertEqual("\(error)", expected)
            }
        }
        // A plan file holds plan blocks only; its errors name its own lines.
        let folder = NSTemporaryDirectory() + "cutover-plans-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder + "/plans", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "# a comment\nplan ok {\n step weight 100\n}\n".write(toFile: folder + "/plans/a.conf", atomically: true, encoding: .utf8)
        try "plan bad {\n step weight 100\n rollback_if sometimes\n}\n".write(toFile: folder + "/plans/b.conf", atomically: true, encoding: .utf8)
        try "listen 127.0.0.1:1\nplans plans\napp a {\n host *\n blue 127.0.0.1:2\n green 127.0.0.1:3\n}\n"
            .write(toFile: folder + "/cutover.conf", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ConfigParser.load(path: folder + "/cutover.conf")) { error in
            XCTAssertEqual("\(error)", folder + "/plans/b.conf:3: rollback_if: unknown condition 'sometimes' (error_rate, error_regression, p95, p95_regression, burn_rate, health_failed, shadow_diff_rate)")
        }
        try "listen 127.0.0.1:1\n".write(toFile: folder + "/plans/b.conf", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ConfigParser.load(path: folder + "/cutover.conf")) { error in
            XCTAssertEqual("\(error)", folder + "/plans/b.conf:1: only 'plan NAME {' blocks belong in a plan file (found 'listen')")
        }
        try FileManager.default.removeItem(atPath: folder + "/plans/b.conf")
        XCTAssertEqual(try ConfigParser.load(path: folder + "/cutover.conf").plans.map(\.name), ["ok"])
    }

    private static var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }
}
