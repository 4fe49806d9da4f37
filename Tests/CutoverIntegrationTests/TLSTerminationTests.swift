import CutoverConfig
import CutoverControl
import CutoverRuntime
import CutoverSystem
import CutoverTestSupport
import Foundation
import Glibc
import XCTest

/// TLS on the listener, with real clients: Python's ssl module, curl and `openssl s_client`
/// against a running cutover in front of real upstreams.
final class TLSTerminationTests: XCTestCase {
    private var certificates: TestCertificates!
    private var folder: URL!
    private var runtime: CutoverRuntime?
    private var upstreams: [TestUpstream] = []
    private var tlsPort: UInt16 = 0
    private var plainPort: UInt16 = 0

    override func setUpWithError() throws {
        certificates = try TestCertificates()
        folder = certificates.folder
        try certificates.make("site", commonName: "site", dnsNames: ["example.com", "www.example.com"])
        try certificates.make("wild", commonName: "wild", dnsNames: ["*.example.net"], rsa: true)
        try Self.probeScript.write(to: folder.appendingPathComponent("probe.py"), atomically: true, encoding: .utf8)
    }

    override func tearDownWithError() throws {
        runtime?.stop()
        for upstream in upstreams { upstream.stop() }
    }

    /// Starts cutover with a TLS listener and a plain one; `tls` is the body of the `tls` block.
    private func start(tls: String = "certificate site.pem site.key\ncertificate wild.pem wild.key\ndefault_certificate example.com\n") throws {
        let blue = try TestUpstream(name: "blue") { request, connection in
            let proto = request.headers.first { $0.name.lowercased() == "x-forwarded-proto" }?.value ?? "-"
            connection.respond(headers: [("X-Color", "blue")], body: Array("blue \(proto)\n".utf8))
        }
        let green = try TestUpstream.named("green")
        upstreams = [blue, green]
        let path = folder.appendingPathComponent("cutover.conf").path
        try """
            listen 127.0.0.1:0 tls
            listen 127.0.0.1:0
            workers 2
            access_log access.log
            tls {
            \(tls)
                handshake_timeout 1s
                redirect_http listen 127.0.0.1:0
            }
            app web {
                host *
                blue 127.0.0.1:\(blue.port)
                green 127.0.0.1:\(green.port)
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path, logger: Logger(minimumLevel: .error))
        try runtime.start()
        self.runtime = runtime
        tlsPort = runtime.server.listenAddresses[0].port
        plainPort = runtime.server.listenAddresses[1].port
    }

    /// Runs probe.py; its last line is a JSON object.
    private func probe(_ arguments: [String], input: String? = nil) throws -> [String: Any] {
        let output = try run("/usr/bin/env", ["python3", folder.appendingPathComponent("probe.py").path, String(tlsPort)] + arguments, input: input)
        let last = output.split(separator: "\n").last.map(String.init) ?? ""
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], output)
    }

    private func run(_ executable: String, _ arguments: [String], input: String? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = folder
        let output = Pipe()
        let stdin = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try stdin.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    private func metric(_ name: String, _ labels: String) -> Double? {
        guard let text = runtime?.controlPlane.prometheusExposition() else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("\(name){\(labels)}") {
            return Double(line.split(separator: " ").last!)
        }
        return nil
    }

    func testCertificatesByNameWildcardAndDefaultWithHTTP11AndForwardedProto() throws {
        try start()
        for (name, expected) in [("example.com", "example.com"), ("www.example.com", "example.com"), ("a.example.net", "*.example.net"),
                                 ("unknown.test", "example.com")] {
            let result = try probe(["--name", name])
            XCTAssertEqual(result["certificate"] as? String, expected, "\(name): \(result)")
            XCTAssertEqual(result["alpn"] as? String, "http/1.1")
            XCTAssertEqual(result["status"] as? Int, 200)
            XCTAssertEqual(result["body"] as? String, "blue https\n", "the upstream learns the client spoke https")
        }
        // curl: ALPN offers h2 and http/1.1; http/1.1 is chosen; the plain listener still says http.
        let curl = try run("/usr/bin/env", ["curl", "-sk", "-v", "--resolve", "example.com:\(tlsPort):127.0.0.1", "https://example.com:\(tlsPort)/"])
        XCTAssertTrue(curl.contains("ALPN: server accepted http/1.1"), curl)
        XCTAssertTrue(curl.contains("blue https"), curl)
        let plain = try RawHTTPClient(port: plainPort, timeout: 5).request("GET", "/", host: "example.com")
        XCTAssertEqual(plain.bodyString, "blue http\n")
        XCTAssertEqual(metric("cutover_tls_handshakes_total", "version=\"TLSv1.3\",resumed=\"false\""), 5)
        // The access log names the listener, and the TLS version and cipher of TLS requests.
        let deadline = Date().addingTimeInterval(10)
        var lines: [String] = []
        while lines.count < 6 && Date() < deadline {
            usleep(50_000)
            lines = ((try? String(contentsOfFile: folder.appendingPathComponent("access.log").path, encoding: .utf8)) ?? "")
                .split(separator: "\n").map(String.init)
        }
        XCTAssertEqual(lines.filter { $0.contains("\"listener\":\"main\",\"tls_version\":\"TLSv1.3\",\"tls_cipher\":\"TLS_") }.count, 5,
                       lines.joined(separator: "\n"))
        XCTAssertEqual(lines.filter { !$0.contains("tls_version") }.count, 1, "the plain request")
    }

    func testThePlainRedirectListenerSendsClientsToHTTPS() throws {
        try start()
        let port = try XCTUnwrap(runtime?.server.redirectAddresses.first?.port)
        let client = try RawHTTPClient(port: port, timeout: 5)
        let response = try client.request("POST", "/cart/add?item=7", host: "www.example.com:8080")
        XCTAssertEqual(response.status, 308, "308 keeps the method and body")
        XCTAssertEqual(response.header("Location"), "https://www.example.com:\(tlsPort)/cart/add?item=7")
        let again = try client.request("GET", "/", host: "[::1]")
        XCTAssertEqual(again.header("Location"), "https://[::1]:\(tlsPort)/", "keep-alive: the next request on the same connection")
        let noHost = try RawHTTPClient(port: port, timeout: 5)
        try noHost.send("GET / HTTP/1.0\r\n\r\n")
        XCTAssertEqual(try noHost.readResponse().status, 400)
        XCTAssertEqual(try RawHTTPClient(port: port, timeout: 5).request("GET", "/", host: ":80").status, 400, "a Host without a name")
        // curl follows it to the TLS listener.
        let curl = try run("/usr/bin/env", ["curl", "-sk", "-L", "--resolve", "example.com:\(port):127.0.0.1",
                                            "--resolve", "example.com:\(tlsPort):127.0.0.1", "http://example.com:\(port)/"])
        XCTAssertEqual(curl, "blue https\n")
    }

    func testAnUnknownNameWithoutDefaultAndAnH2OnlyClientAreRefusedWithTheirAlerts() throws {
        try start(tls: "certificate site.pem site.key\n")
        let unknown = try probe(["--name", "unknown.test"])
        XCTAssertTrue((unknown["error"] as? String ?? "").contains("UNRECOGNIZED_NAME"), "\(unknown)")
        let h2 = try probe(["--name", "example.com", "--alpn", "h2"])
        XCTAssertTrue((h2["error"] as? String ?? "").lowercased().contains("no application protocol"), "\(h2)")
        XCTAssertEqual(try probe(["--name", "example.com"])["status"] as? Int, 200, "the listener goes on serving")
        XCTAssertEqual(metric("cutover_tls_handshake_failures_total", "reason=\"unrecognized_name\""), 1)
        XCTAssertEqual(metric("cutover_tls_handshake_failures_total", "reason=\"no_application_protocol\""), 1)
    }

    func testTLS12And13ResumptionAndTheMinimumVersion() throws {
        try start()
        for version in ["1.2", "1.3"] {
            let result = try probe(["--name", "example.com", "--max", version, "--resume"])
            XCTAssertEqual(result["version"] as? String, "TLSv\(version)", "\(result)")
            XCTAssertEqual(result["reused"] as? Bool, true, "the second connection resumes the first one's session (\(version))")
            XCTAssertEqual(result["status"] as? Int, 200)
        }
        XCTAssertEqual(metric("cutover_tls_handshakes_total", "version=\"TLSv1.2\",resumed=\"true\""), 1)
        XCTAssertEqual(metric("cutover_tls_handshakes_total", "version=\"TLSv1.3\",resumed=\"true\""), 1)
        // openssl s_client reports the resumption too.
        _ = try run("/usr/bin/env", ["sh", "-c", "echo | openssl s_client -connect 127.0.0.1:\(tlsPort) -tls1_2 -sess_out s.pem"])
        let again = try run("/usr/bin/env", ["sh", "-c", "echo | openssl s_client -connect 127.0.0.1:\(tlsPort) -tls1_2 -sess_in s.pem"])
        XCTAssertTrue(again.contains("Reused, TLSv1.2"), again)
        runtime?.stop()
        runtime = nil
        try start(tls: "certificate site.pem site.key\nmin_version 1.3\n")
        let old = try probe(["--name", "example.com", "--max", "1.2"])
        XCTAssertTrue((old["error"] as? String ?? "").contains("PROTOCOL_VERSION") || (old["error"] as? String ?? "").contains("UNSUPPORTED_PROTOCOL"),
                      "\(old)")
        XCTAssertEqual(try probe(["--name", "example.com"])["version"] as? String, "TLSv1.3")
        XCTAssertEqual(metric("cutover_tls_handshake_failures_total", "reason=\"protocol_version\""), 1)
    }

    func testPlaintextGarbageAndHalfOpenHandshakesAreClosedAndCounted() throws {
        try start()
        // Plain HTTP to the TLS port: closed, no HTTP answer.
        let plain = try RawHTTPClient(port: tlsPort, timeout: 5)
        try plain.send("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        XCTAssertEqual(try plain.readUntilClose().count, 0, "a TLS port does not answer plaintext")
        // Garbage that looks like a record header, then garbage.
        let garbage = try RawHTTPClient(port: tlsPort, timeout: 5)
        try garbage.send(Array([0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00] + patternBytes(2_000)))
        XCTAssertEqual(try garbage.readUntilClose().count, 7, "a fatal alert record, then the close")
        // 2,000 truncated client hellos that never complete: closed at handshake_timeout (1 s).
        let hello = try probe(["--client-hello"])
        let bytes = try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(hello["hello"] as? String)))
        var halfOpen: [RawHTTPClient] = []
        for _ in 0..<2_000 {
            let client = try RawHTTPClient(port: tlsPort, timeout: 5)
            try client.send(Array(bytes.prefix(bytes.count / 2)))
            halfOpen.append(client)
        }
        // Meanwhile, normal clients are served.
        for _ in 0..<3 { XCTAssertEqual(try probe(["--name", "example.com"])["status"] as? Int, 200) }
        let started = Date()
        XCTAssertEqual(try halfOpen[0].readUntilClose().count, 0)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3, "closed at the handshake deadline")
        for client in halfOpen.dropFirst() { XCTAssertEqual(try client.readUntilClose().count, 0) }
        XCTAssertEqual(metric("cutover_tls_handshake_failures_total", "reason=\"plaintext_http\""), 1)
        XCTAssertEqual(metric("cutover_tls_handshake_failures_total", "reason=\"bad_record\""), 1)
        XCTAssertEqual(metric("cutover_tls_handshake_failures_total", "reason=\"timeout\""), 2_000)
    }

    func testAReloadServesNewCertificatesAndKeepsEstablishedConnections() throws {
        try start()
        // A keep-alive connection: one request, then (after the reload) a second on it.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", folder.appendingPathComponent("probe.py").path, String(tlsPort), "--name", "example.com", "--wait"]
        let output = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardInput = input
        try process.run()
        let reader = output.fileHandleForReading
        var firstLine = Data()
        while !firstLine.contains(0x0A) { firstLine.append(reader.availableData) }
        XCTAssertTrue(String(decoding: firstLine, as: UTF8.self).contains("\"first\": 200"), String(decoding: firstLine, as: UTF8.self))

        // Replace example.com's certificate, and break the second one: the reload is refused
        // and nothing changes.
        let before = try probe(["--name", "example.com"])
        try certificates.make("site", commonName: "site2", dnsNames: ["example.com", "new.example.com"])
        try "broken".write(toFile: certificates.path("wild.pem"), atomically: true, encoding: .utf8)
        guard case .failed(let reason) = runtime!.controlPlane.reload(actor: .current()) else { return XCTFail("a broken certificate was loaded") }
        XCTAssertTrue(reason.contains("wild.pem"), reason)
        XCTAssertEqual(try probe(["--name", "example.com"])["serial"] as? String, before["serial"] as? String, "still the old certificate")
        try certificates.make("wild", commonName: "wild", dnsNames: ["*.example.net"], rsa: true)
        guard case .reloaded = runtime!.controlPlane.reload(actor: .current()) else { return XCTFail("the reload failed") }
        let after = try probe(["--name", "new.example.com"])
        XCTAssertEqual(after["certificate"] as? String, "example.com")
        XCTAssertNotEqual(after["serial"] as? String, before["serial"] as? String, "a new connection gets the new certificate")

        input.fileHandleForWriting.write(Data("go\n".utf8))
        try input.fileHandleForWriting.close()
        let rest = String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertTrue(rest.contains("\"second\": 200"), "the established connection survived the reload: \(rest)")
    }

    /// `upstream_tls`: green is a TLS server on another "host" (a Python server with a
    /// certificate from a test CA). Verified against the CA, with SNI, pooled like plain
    /// connections, health-checked over TLS; a wrong CA is refused (502, server down, the reason).
    func testUpstreamTLSVerifiesReusesAndRefusesAWrongCA() throws {
        try certificates.makeCA("ca")
        try certificates.makeCA("other")
        try certificates.sign("green", ca: "ca", subjectAltNames: ["DNS:green.internal", "IP:127.0.0.1"])
        try Self.upstreamScript.write(to: folder.appendingPathComponent("upstream.py"), atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", folder.appendingPathComponent("upstream.py").path, certificates.path("green.pem"), certificates.path("green.key")]
        let announced = Pipe()
        server.standardOutput = announced
        try server.run()
        defer { server.terminate() }
        var line = Data()
        while !line.contains(0x0A) { line.append(announced.fileHandleForReading.availableData) }
        let greenPort = try XCTUnwrap(UInt16(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
        let blue = try TestUpstream.named("blue")
        upstreams = [blue]
        let path = folder.appendingPathComponent("upstream.conf").path
        func write(_ tls: String) throws {
            try """
                listen 127.0.0.1:0
                workers 1
                initial_color green
                health {
                    interval 100ms
                    rise 1
                    fall 1
                }
                app web {
                    host *
                    upstream_tls \(tls)
                    blue 127.0.0.1:\(blue.port)
                    green 127.0.0.1:\(greenPort)
                }
                """.write(toFile: path, atomically: true, encoding: .utf8)
        }
        try write("verify ca.pem sni green.internal")
        let runtime = try CutoverRuntime(config: try ConfigParser.load(path: path), configPath: path, logger: Logger(minimumLevel: .error))
        try runtime.start()
        self.runtime = runtime
        let port = runtime.server.listenAddresses[0].port
        let client = try RawHTTPClient(port: port, timeout: 10)
        let first = try client.request("GET", "/a", host: "shop.example")
        let second = try client.request("GET", "/b", host: "shop.example")
        XCTAssertEqual(first.status, 200, first.bodyString)
        XCTAssertTrue(first.bodyString.hasPrefix("green-tls sni=green.internal conn="), first.bodyString)
        XCTAssertEqual(first.bodyString.split(separator: " ").last, second.bodyString.split(separator: " ").last,
                       "the second request reuses the pooled TLS connection")
        func greenHealth() -> JSON? {
            runtime.controlPlane.execute("health", actor: .current())["servers"]?.arrayValue?.first { $0["color"] == "green" }
        }
        let deadline = Date().addingTimeInterval(10)
        while greenHealth()?["health"] != "up" && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(greenHealth()?["health"], "up", "health checks speak TLS too: \(String(describing: greenHealth()))")

        // A CA that did not sign green's certificate: refused, by requests and checks alike.
        try write("verify other.pem sni green.internal")
        guard case .reloaded = runtime.controlPlane.reload(actor: .current()) else { return XCTFail("reload failed") }
        while greenHealth()?["health"] != "down" && Date() < deadline.addingTimeInterval(10) { usleep(50_000) }
        let reason = greenHealth()?["last_result"]?.stringValue ?? ""
        XCTAssertTrue(reason.contains("certificate verify failed"), reason)
        let refused = try RawHTTPClient(port: port, timeout: 10).request("GET", "/c", host: "shop.example")
        XCTAssertTrue(refused.status == 502 || refused.status == 503, "\(refused.status) \(refused.bodyString)")
        // A name the certificate does not carry is refused too; `insecure` takes any certificate.
        try write("verify ca.pem sni wrong.internal")
        guard case .reloaded = runtime.controlPlane.reload(actor: .current()) else { return XCTFail("reload failed") }
        let later = Date().addingTimeInterval(10)
        while !(greenHealth()?["last_result"]?.stringValue ?? "").contains("hostname mismatch") && Date() < later { usleep(50_000) }
        XCTAssertTrue((greenHealth()?["last_result"]?.stringValue ?? "").contains("hostname mismatch"), "\(String(describing: greenHealth()))")
        try write("insecure")
        guard case .reloaded = runtime.controlPlane.reload(actor: .current()) else { return XCTFail("reload failed") }
        while greenHealth()?["health"] != "up" && Date() < later.addingTimeInterval(10) { usleep(50_000) }
        let insecure = try RawHTTPClient(port: port, timeout: 10).request("GET", "/e", host: "shop.example")
        XCTAssertTrue(insecure.bodyString.hasPrefix("green-tls sni=None"), "insecure sends no SNI for an address: \(insecure.status) \(insecure.bodyString)")
    }

    /// An HTTPS upstream in Python: prints its port, answers `green-tls sni=NAME conn=N`.
    static let upstreamScript = #"""
        import http.server, socket, ssl, sys, threading
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[1], sys.argv[2])
        names = {}
        def remember(sock, name, ctx):
            names[id(sock)] = name
        context.sni_callback = remember
        counter = [0]
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def setup(self):
                super().setup()
                counter[0] += 1
                self.number = counter[0]
            def do_GET(self):
                body = ("green-tls sni=%s conn=%d" % (names.get(id(self.connection)), self.number)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        class Server(http.server.ThreadingHTTPServer):
            def get_request(self):
                raw, address = self.socket.accept()
                try:
                    return context.wrap_socket(raw, server_side=True), address
                except (ssl.SSLError, OSError):
                    raw.close()
                    raise
            def handle_error(self, request, address):
                pass
        server = Server(("127.0.0.1", 0), Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#

    /// A TLS client in Python: prints one JSON line with what it saw.
    static let probeScript = #"""
        import base64, json, socket, ssl, sys
        port = int(sys.argv[1]); args = sys.argv[2:]
        def option(name, default=None):
            return args[args.index(name) + 1] if name in args else default
        name = option("--name", "example.com")
        def context():
            c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            c.check_hostname = False
            c.verify_mode = ssl.CERT_NONE
            c.set_alpn_protocols((option("--alpn") or "http/1.1").split(","))
            if option("--max"):
                c.maximum_version = ssl.TLSVersion.TLSv1_2 if option("--max") == "1.2" else ssl.TLSVersion.TLSv1_3
            return c
        def request(tls):
            tls.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % name).encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += tls.recv(65536)
            return int(head.split(b" ")[1]), body.decode()
        def describe(tls):
            der = tls.getpeercert(binary_form=True)
            import subprocess
            text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-ext", "subjectAltName", "-serial"],
                                  input=der, capture_output=True).stdout.decode()
            names = [n.strip()[4:] for line in text.splitlines() for n in line.split(",") if n.strip().startswith("DNS:")]
            serial = [l.split("=")[1] for l in text.splitlines() if l.startswith("serial=")]
            return {"version": tls.version(), "cipher": tls.cipher()[0], "alpn": tls.selected_alpn_protocol(),
                    "certificate": names[0] if names else None, "serial": serial[0] if serial else None}
        try:
            if "--client-hello" in args:
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = context().wrap_bio(incoming, outgoing, server_hostname=name)
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                print(json.dumps({"hello": base64.b64encode(outgoing.read()).decode()}))
                sys.exit(0)
            c = context()
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            tls = c.wrap_socket(raw, server_hostname=name)
            result = describe(tls)
            status, body = request(tls)
            result.update({"status": status, "body": body})
            if "--wait" in args:
                print(json.dumps({"first": status}), flush=True)
                sys.stdin.readline()
                status, body = request(tls)
                print(json.dumps({"second": status}), flush=True)
                sys.exit(0)
            if "--resume" in args:
                session = tls.session
                tls.close()
                tls = c.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=name, session=session)
                status, body = request(tls)
                result.update({"reused": tls.session_reused, "status": status})
            tls.close()
            print(json.dumps(result))
        except Exception as error:
            print(json.dumps({"error": "%s: %s" % (type(error).__name__, error)}))
        """#
}
