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

    /// Makes a CA (`NAME.pem`, `NAME.key`) that signs certificates made by `sign`.
    package func makeCA(_ name: String) throws {
        try Self.openssl(["req", "-x509", "-nodes", "-days", "30", "-subj", "/CN=\(name) test CA", "-newkey", "ec",
                          "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", path("\(name).key"), "-out", path("\(name).pem")])
    }

    /// Makes `NAME.pem` and `NAME.key` signed by the CA `ca`, for `subjectAltName` entries such
    /// as `DNS:green.internal` and `IP:127.0.0.1`.
    package func sign(_ name: String, ca: String, subjectAltNames: [String]) throws {
        try Self.openssl(["req", "-nodes", "-subj", "/CN=\(name)", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-keyout", path("\(name).key"), "-out", path("\(name).csr")])
        try "subjectAltName=\(subjectAltNames.joined(separator: ","))\n".write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
        try Self.openssl(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(ca).pem"), "-CAkey", path("\(ca).key"),
                          "-CAcreateserial", "-days", "30", "-extfile", path("\(name).ext"), "-out", path("\(name).pem")])
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
