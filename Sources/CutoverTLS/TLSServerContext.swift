import CCutoverTLS
import CutoverConfig
import CutoverSystem

/// One certificate as loaded: where it came from, the names it serves and when it expires.
public struct LoadedCertificate: Sendable, Equatable {
    public var chainPath: String
    public var line: Int
    /// DNS names from its subjectAltName (or its CN when it has none), lowercased.
    public var names: [String]
    /// notAfter, seconds since 1970.
    public var expiresAt: Int64

    /// The name a gauge and a log line use: the first DNS name, or the file.
    public var label: String { names.first ?? chainPath }
}

/// The server side of TLS for every `listen … tls` listener: one OpenSSL context per
/// certificate, a front context connections start from (it picks the certificate by SNI and
/// answers ALPN), and the settings a connection needs. Immutable once loaded; a reload builds
/// a new one, and connections keep the context they started with (OpenSSL counts references),
/// so a reload never closes an established connection.
public final class TLSServerContext: @unchecked Sendable {
    public let certificates: [LoadedCertificate]
    public let handshakeTimeoutMs: Int
    /// Certificates that expire within `expiryWarningSeconds` of loading (warnings, not errors).
    public let warnings: [String]
    public static let expiryWarningSeconds: Int64 = 14 * 86_400

    private let contexts: [OpaquePointer]
    private let front: OpaquePointer
    private let sni: OpaquePointer

    /// Loads and checks every certificate of `settings`. Errors name the config line: a missing
    /// or unreadable file, a chain or key that does not parse, a key that does not match its
    /// certificate, a certificate outside its validity period, a `default_certificate` no
    /// certificate carries.
    public init(settings: TLSSettings, configPath: String, nowSeconds: Int64 = realtimeNanoseconds() / 1_000_000_000) throws(ConfigError) {
        func failure(_ line: Int, _ message: String) -> ConfigError { ConfigError(file: configPath, line: line, message: message) }
        var contexts: [OpaquePointer] = []
        var loaded: [LoadedCertificate] = []
        var warnings: [String] = []
        let release = { for context in contexts { ctls_context_free(context) } }
        _ = ctls_ticket_keys_rotate(monotonicMilliseconds() / 1_000, 12 * 3_600, 24 * 3_600)
        for certificate in settings.certificates {
            for path in [certificate.chainPath, certificate.keyPath] {
                if FileIO.kind(of: path) == .missing {
                    release()
                    throw failure(certificate.line, "certificate: no such file: \(path)")
                }
                do {
                    _ = try FileIO.readWhole(path, maxBytes: 1 << 20)
                } catch {
                    release()
                    throw failure(certificate.line, "certificate: cannot read it: \(error)")
                }
            }
            var error = [CChar](repeating: 0, count: 512)
            guard let context = ctls_server_context(certificate.chainPath, certificate.keyPath, Int32(settings.minVersion.rawValue),
                                                    settings.ciphers, settings.sessionTickets ? 1 : 0, settings.sessionCache,
                                                    &error, error.count) else {
                release()
                var reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if reason.hasSuffix("key values mismatch") { reason = "the private key does not match the certificate" }
                let line = reason.hasPrefix("ciphers:") ? settings.ciphersLine : certificate.line
                throw failure(line, reason.hasPrefix("ciphers:") ? reason : "certificate \(certificate.chainPath): \(reason)")
            }
            contexts.append(context)
            var names = [CChar](repeating: 0, count: 8_192)
            let length = ctls_context_names(context, &names, names.count)
            let text = String(decoding: names.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let entry = LoadedCertificate(chainPath: certificate.chainPath, line: certificate.line,
                                          names: text.split(separator: "\n").map(String.init), expiresAt: ctls_context_not_after(context))
            if entry.names.isEmpty {
                release()
                throw failure(certificate.line, "certificate \(certificate.chainPath): no DNS name (no subjectAltName DNS entry and no CN)")
            }
            if entry.expiresAt <= nowSeconds {
                release()
                throw failure(certificate.line, "certificate \(certificate.chainPath) (\(entry.label)) expired on \(Self.date(entry.expiresAt))")
            }
            let validFrom = ctls_context_not_before(context)
            if validFrom > nowSeconds {
                release()
                throw failure(certificate.line, "certificate \(certificate.chainPath) (\(entry.label)) is not valid before \(Self.date(validFrom))")
            }
            if entry.expiresAt - nowSeconds < Self.expiryWarningSeconds {
                warnings.append("\(configPath):\(certificate.line): certificate \(entry.label) expires on \(Self.date(entry.expiresAt)) "
                                + "(in \((entry.expiresAt - nowSeconds) / 86_400) days)")
            }
            loaded.append(entry)
        }
        var fallback: OpaquePointer?
        if let name = settings.defaultName {
            guard let index = loaded.firstIndex(where: { $0.names.contains(name) }) else {
                release()
                throw failure(settings.defaultLine, "default_certificate: no certificate carries the name '\(name)' "
                              + "(names: \(loaded.flatMap(\.names).joined(separator: ", ")))")
            }
            fallback = contexts[index]
        }
        let sni = ctls_sni_new()!
        // Earlier certificates win a name both carry (as nginx's first server block does).
        for (context, certificate) in zip(contexts, loaded) {
            for name in certificate.names where ctls_sni_add(sni, name, context) != 0 {
                ctls_sni_free(sni)
                release()
                throw failure(certificate.line, "certificate \(certificate.chainPath): out of memory")
            }
        }
        ctls_sni_set_default(sni, fallback)
        let front = fallback ?? contexts[0]
        ctls_sni_install(sni, front)
        self.contexts = contexts
        self.front = front
        self.sni = sni
        self.certificates = loaded
        self.warnings = warnings
        handshakeTimeoutMs = settings.handshakeTimeoutMs
    }

    deinit {
        // The SNI table goes with the front context's last reference (a connection still in
        // its handshake may hold one); these are the proxy's own references.
        for context in contexts { ctls_context_free(context) }
    }

    /// A server connection on `fd` (non-blocking), or nil when OpenSSL is out of memory. The
    /// handshake runs in its first reads and writes.
    public func accept(fd: Int32) -> TLSConnection? {
        ctls_accept(front, fd).map(TLSConnection.init)
    }

    /// Which certificate a client naming `serverName` gets (nil: none, an `unrecognized_name`
    /// alert).
    public func certificate(forServerName serverName: String?) -> LoadedCertificate? {
        guard let chosen = ctls_sni_lookup(sni, serverName) else { return nil }
        return contexts.firstIndex(of: chosen).map { certificates[$0] }
    }

    static func date(_ seconds: Int64) -> String {
        String(RFC3339.string(millisecondsSince1970: seconds * 1_000).prefix(10))
    }
}

/// Why a TLS connection failed, as counted in `cutover_tls_handshake_failures_total{reason}`.
public enum TLSFailure: Int32, Sendable, CaseIterable {
    case plaintextHTTP = 1
    case badRecord = 2
    case version = 3
    case noSharedCipher = 4
    case noALPN = 5
    case unknownName = 6
    case peerClosed = 7
    case other = 8
    case timeout = 9

    public var label: String {
        switch self {
        case .plaintextHTTP: "plaintext_http"
        case .badRecord: "bad_record"
        case .version: "protocol_version"
        case .noSharedCipher: "no_shared_cipher"
        case .noALPN: "no_application_protocol"
        case .unknownName: "unrecognized_name"
        case .peerClosed: "peer_closed"
        case .other: "other"
        case .timeout: "timeout"
        }
    }
}

/// One TLS connection (an OpenSSL `SSL *`), a plain value: the owner frees it with `free()`
/// exactly once, when the socket closes.
public struct TLSConnection: Equatable {
    @usableFromInline let ssl: OpaquePointer

    init(_ ssl: OpaquePointer) { self.ssl = ssl }

    public enum Outcome: Equatable {
        case bytes(Int)
        case closed
        case wantRead
        case wantWrite
        case failed(TLSFailure)
    }

    @inline(__always)
    static func outcome(_ result: Int32) -> Outcome {
        if result > 0 { return .bytes(Int(result)) }
        switch result {
        case Int32(CTLS_CLOSED): return .closed
        case Int32(CTLS_WANT_READ): return .wantRead
        case Int32(CTLS_WANT_WRITE): return .wantWrite
        default: return .failed(TLSFailure(rawValue: Int32(CTLS_FAILED) - result) ?? .other)
        }
    }

    @inline(__always)
    public func read(into pointer: UnsafeMutableRawPointer, count: Int) -> Outcome {
        Self.outcome(ctls_read(ssl, pointer, Int32(clamping: count)))
    }

    @inline(__always)
    public func write(from pointer: UnsafeRawPointer, count: Int) -> Outcome {
        Self.outcome(ctls_write(ssl, pointer, Int32(clamping: count)))
    }

    public var handshakeDone: Bool { ctls_handshake_done(ssl) != 0 }
    public var sessionReused: Bool { ctls_session_reused(ssl) != 0 }
    /// "TLSv1.3", "TLSv1.2" (static strings in libssl: the pointer stays valid).
    public var versionName: UnsafePointer<CChar>? { ctls_version_name(ssl) }
    public var cipherName: UnsafePointer<CChar>? { ctls_cipher_name(ssl) }

    /// Sends close_notify when the handshake finished (never waits for the peer's).
    public func closeNotify() { ctls_close_notify(ssl) }
    public func free() { ctls_free(ssl) }
}

/// Session ticket keys (process-wide, in memory): a new one every 12 h, each kept 24 h.
public enum TLSTicketKeys {
    /// Rotates for a given steady time in seconds; returns the number of keys held.
    public static func rotate(nowSeconds: Int64, rotateSeconds: Int64 = 12 * 3_600, keepSeconds: Int64 = 24 * 3_600) -> Int {
        Int(ctls_ticket_keys_rotate(nowSeconds, rotateSeconds, keepSeconds))
    }
}

/// A self-signed certificate for demos: an ECDSA P-256 key and a certificate for `name` and
/// 127.0.0.1, written as PEM files.
public enum SelfSignedCertificate {
    public static func write(chainPath: String, keyPath: String, name: String, days: Int = 30) throws(ConfigError) {
        var error = [CChar](repeating: 0, count: 512)
        guard ctls_make_self_signed(chainPath, keyPath, name, Int32(days), &error, error.count) == 0 else {
            let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ConfigError(file: "<demo>", line: 0, message: reason)
        }
    }
}

/// The client side, for `upstream_tls`: one context per app (its CA file, or none for
/// `insecure`), shared by the loops; each upstream connection is a `TLSConnection` from it.
public final class TLSClientContext: @unchecked Sendable {
    private let context: OpaquePointer
    public let verifies: Bool

    public init(settings: UpstreamTLS, configPath: String) throws(ConfigError) {
        if let caFile = settings.caFile, FileIO.kind(of: caFile) == .missing {
            throw ConfigError(file: configPath, line: settings.line, message: "upstream_tls: no such file: \(caFile)")
        }
        var error = [CChar](repeating: 0, count: 512)
        guard let context = ctls_client_context(settings.caFile, &error, error.count) else {
            let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ConfigError(file: configPath, line: settings.line, message: "upstream_tls \(settings.caFile ?? ""): \(reason)")
        }
        self.context = context
        verifies = settings.caFile != nil
    }

    deinit { ctls_context_free(context) }

    /// A client session on a connected (or connecting) non-blocking socket; the handshake runs in
    /// its first writes and reads.
    public func connect(fd: Int32, serverName: String?, verifyName: String?) -> TLSConnection? {
        ctls_connect(context, fd, serverName, verifies ? verifyName : nil).map(TLSConnection.init)
    }
}

/// What a new connection to one upstream server needs: the app's client context and the names.
/// A class: a pooled connection is reused only for the very target it was made with (`===`).
public final class UpstreamTLSTarget: Sendable {
    public let context: TLSClientContext
    public let settings: UpstreamTLS
    /// The app and the server (`host:port` as configured) it serves.
    public let app: String
    public let server: String
    /// Sent as SNI (unless an address).
    public let serverName: String?
    /// The name (or address) the certificate must carry, when the context verifies.
    public let verifyName: String?

    public init(context: TLSClientContext, settings: UpstreamTLS, app: String, server: String, serverName: String?, verifyName: String?) {
        self.context = context
        self.settings = settings
        self.app = app
        self.server = server
        self.serverName = serverName
        self.verifyName = verifyName
    }

    /// The key of `targets(for:)`: an app and one of its servers (`host:port`).
    public static func key(app: String, server: String) -> String { app + "|" + server }

    /// Every server of every app with `upstream_tls`, by app and server. Targets of `previous`
    /// whose settings did not change are kept, with their pooled connections.
    public static func targets(for config: Config, previous: [String: UpstreamTLSTarget] = [:]) throws(ConfigError) -> [String: UpstreamTLSTarget] {
        var targets: [String: UpstreamTLSTarget] = [:]
        for app in config.apps {
            guard let settings = app.upstreamTLS else { continue }
            var context: TLSClientContext?
            for server in app.blue + app.green {
                let key = Self.key(app: app.name, server: server.description)
                if let kept = previous[key], kept.settings.caFile == settings.caFile, kept.settings.serverName == settings.serverName {
                    targets[key] = kept
                    continue
                }
                if context == nil { context = try TLSClientContext(settings: settings, configPath: config.path) }
                let name = settings.serverName ?? server.host
                targets[key] = UpstreamTLSTarget(context: context!, settings: settings, app: app.name, server: server.description,
                                                 serverName: name, verifyName: name)
            }
        }
        return targets
    }
}

extension TLSConnection {
    /// Why a client handshake failed, in words (for logs and health check reasons).
    public var verifyFailure: String? {
        ctls_verify_error(ssl).map { "certificate verify failed: \(String(cString: $0))" }
    }
}
