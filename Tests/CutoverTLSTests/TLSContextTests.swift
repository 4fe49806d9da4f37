import CutoverConfig
import CutoverTestSupport
import CutoverTLS
import XCTest

/// Loading certificates as `run`, `check` and `reload` do: what is served for which name, and
/// the error (with its config line) for each broken certificate.
final class TLSContextTests: XCTestCase {
    private var certificates: TestCertificates!

    override func setUpWithError() throws {
        certificates = try TestCertificates()
    }

    private func settings(_ pairs: [(String, String)], defaultName: String? = nil) -> TLSSettings {
        var settings = TLSSettings()
        settings.certificates = pairs.enumerated().map { TLSSettings.Certificate(chainPath: $1.0, keyPath: $1.1, line: 10 + $0) }
        settings.defaultName = defaultName
        settings.defaultLine = 20
        return settings
    }

    func testNamesAreChosenExactlyThenByWildcardThenByDefault() throws {
        let site = try certificates.make("site", commonName: "site", dnsNames: ["example.com", "www.example.com"])
        let wild = try certificates.make("wild", commonName: "wild", dnsNames: ["*.example.net"], rsa: true)
        let old = try certificates.make("old", commonName: "old.example.org", dnsNames: [])
        let context = try TLSServerContext(settings: settings([site, wild, old], defaultName: "example.com"), configPath: "c.conf")
        XCTAssertEqual(context.certificates.map(\.names), [["example.com", "www.example.com"], ["*.example.net"], ["old.example.org"]],
                       "SAN DNS names, or the CN when there is no SAN")
        XCTAssertEqual(context.certificate(forServerName: "WWW.Example.com")?.label, "example.com")
        XCTAssertEqual(context.certificate(forServerName: "a.example.net")?.label, "*.example.net")
        XCTAssertEqual(context.certificate(forServerName: "a.b.example.net")?.label, "example.com", "a wildcard covers one label only")
        XCTAssertEqual(context.certificate(forServerName: "example.net")?.label, "example.com")
        XCTAssertEqual(context.certificate(forServerName: "old.example.org")?.label, "old.example.org")
        XCTAssertEqual(context.certificate(forServerName: nil)?.label, "example.com", "no SNI: the default")
        let strict = try TLSServerContext(settings: settings([site, wild]), configPath: "c.conf")
        XCTAssertNil(strict.certificate(forServerName: "unknown.test"), "no default: unrecognized_name")
        XCTAssertNil(strict.certificate(forServerName: nil))
    }

    func testEachBrokenCertificateIsItsOwnErrorOnItsLine() throws {
        let site = try certificates.make("site", commonName: "site", dnsNames: ["example.com"])
        let other = try certificates.make("other", commonName: "other", dnsNames: ["other.test"])
        func error(_ settings: TLSSettings, now: Int64? = nil) -> String {
            do {
                if let now {
                    _ = try TLSServerContext(settings: settings, configPath: "c.conf", nowSeconds: now)
                } else {
                    _ = try TLSServerContext(settings: settings, configPath: "c.conf")
                }
                return "loaded"
            } catch {
                return error.description
            }
        }
        XCTAssertEqual(error(settings([site, (certificates.path("missing.pem"), site.1)])),
                       "c.conf:11: certificate: no such file: \(certificates.path("missing.pem"))")
        XCTAssertTrue(error(settings([(site.0, other.1)])).hasPrefix("c.conf:10: certificate \(site.0): the private key does not match"),
                      error(settings([(site.0, other.1)])))
        try "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n".write(toFile: certificates.path("bad.pem"),
                                                                                              atomically: true, encoding: .utf8)
        XCTAssertTrue(error(settings([(certificates.path("bad.pem"), site.1)])).hasPrefix("c.conf:10: certificate \(certificates.path("bad.pem")): cannot load the certificate chain"))
        // Expiry, with the clock moved: a year on, the 30-day certificate has expired.
        let now = Int64(Date().timeIntervalSince1970)
        XCTAssertTrue(error(settings([site]), now: now + 365 * 86_400).hasPrefix("c.conf:10: certificate \(site.0) (example.com) expired on "))
        XCTAssertTrue(error(settings([site]), now: now - 365 * 86_400).contains("is not valid before"))
        let expiring = try TLSServerContext(settings: settings([site]), configPath: "c.conf", nowSeconds: now + 25 * 86_400)
        XCTAssertEqual(expiring.warnings.count, 1)
        XCTAssertTrue(expiring.warnings[0].hasPrefix("c.conf:10: certificate example.com expires on "), expiring.warnings[0])
        XCTAssertEqual(try TLSServerContext(settings: settings([site]), configPath: "c.conf").warnings, [])
        XCTAssertEqual(error(settings([site], defaultName: "nope.test")),
                       "c.conf:20: default_certificate: no certificate carries the name 'nope.test' (names: example.com)")
        var ciphers = settings([site])
        ciphers.ciphers = "NOT-A-CIPHER"
        ciphers.ciphersLine = 30
        XCTAssertTrue(error(ciphers).hasPrefix("c.conf:30: ciphers: no usable cipher"), error(ciphers))
    }

    func testTicketKeysRotateEveryTwelveHoursAndLiveADay() {
        // Far from any real clock reading, so the test owns the rotation.
        let base: Int64 = 1 << 40
        let start = TLSTicketKeys.rotate(nowSeconds: base + 100 * 86_400)
        XCTAssertEqual(start, 1, "keys older than a day are gone; one fresh key")
        XCTAssertEqual(TLSTicketKeys.rotate(nowSeconds: base + 100 * 86_400 + 11 * 3_600), 1)
        XCTAssertEqual(TLSTicketKeys.rotate(nowSeconds: base + 100 * 86_400 + 12 * 3_600), 2, "a new key every 12 h; the old one still decrypts")
        XCTAssertEqual(TLSTicketKeys.rotate(nowSeconds: base + 100 * 86_400 + 24 * 3_600), 2, "the first is 24 h old: forgotten; a third made")
        XCTAssertEqual(TLSTicketKeys.rotate(nowSeconds: base + 200 * 86_400), 1)
    }
}
