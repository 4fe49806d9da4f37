import Glibc
import Synchronization

public enum LogLevel: Int, Sendable, Comparable, CustomStringConvertible {
    case debug, info, warning, error

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .debug: return "debug"
        case .info: return "info"
        case .warning: return "warning"
        case .error: return "error"
        }
    }
}

/// One line per event on stderr: `2026-11-24T03:50:00.123Z warning message`. Never used on the
/// request path except for failures (connect errors, invalid upstream responses).
public final class Logger: Sendable {
    public let minimumLevel: LogLevel
    private let lock = Mutex<Void>(())
    private let sink: @Sendable (String) -> Void

    public init(minimumLevel: LogLevel = .info, sink: @escaping @Sendable (String) -> Void = Logger.standardError) {
        self.minimumLevel = minimumLevel
        self.sink = sink
    }

    public static let standardError: @Sendable (String) -> Void = { line in
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
    }

    public func log(_ level: LogLevel, _ message: @autoclosure () -> String) {
        guard level >= minimumLevel else { return }
        let line = "\(Self.timestamp()) \(level) \(message())\n"
        lock.withLock { _ in sink(line) }
    }

    /// RFC 3339 UTC with milliseconds.
    public static func timestamp() -> String {
        RFC3339.string(nanosecondsSince1970: realtimeNanoseconds())
    }
}
