import Foundation

/// Self-signed certificates made by the `openssl` command for a test, in a folder of their own.
package final class TestCertificates: @unchecked Sendable {
    package let folder: URL

    package init() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("cutover-certs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: folder) }

    package func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Makes `NAME.pem` and `NAME.key`: a certificate for `dnsNames` (its CN is `commonName`),
    /// ECDSA P-256 or RSA 2048, valid for `days`. No SAN when `dnsNames` is empty.
    @discardableResult
    package func make(_ name: String, commonName: String, dnsNames: [String], rsa: Bool = false, days: Int = 30) throws -> (chain: String, key: String) {
        var arguments = ["req", "-x509", "-nodes", "-days", String(days), "-subj", "/CN=\(commonName)",
                         "-keyout", path("\(name).key"), "-out", path("\(name).pem")]
        arguments += rsa ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if !dnsNames.isEmpty { arguments += ["-addext", "subjectAltName=" + dnsNames.map { "DNS:\($0)" }.joined(separator: ",")] }
        try Self.openssl(arguments)
        return (path("\(name).pem"), path("\(name).key"))
    }

    /// Runs the `openssl` command; throws with its output when it fails.
    package static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw NSError(domain: "openssl", code: Int(process.terminationStatus), userInfo: [NSLocalizedDescriptionKey: text])
        }
    }
}
