import Foundation
import Glibc

/// RFC 3339 timestamps in UTC with milliseconds ("2026-11-24T03:50:00.123Z"), formatted by
/// hand: DateFormatter is not cheap to create and its thread-safety on Linux has varied.
public enum RFC3339 {
    public static func string(from date: Date) -> String {
        string(millisecondsSince1970: Int64((date.timeIntervalSince1970 * 1000).rounded(.down)))
    }

    public static func string(nanosecondsSince1970 nanoseconds: Int64) -> String {
        let milliseconds = nanoseconds >= 0 ? nanoseconds / 1_000_000 : (nanoseconds - 999_999) / 1_000_000
        return string(millisecondsSince1970: milliseconds)
    }

    public static func string(millisecondsSince1970 totalMs: Int64) -> String {
        // Floor division so dates before 1970 still give a 0...999 millisecond part.
        var seconds = time_t(totalMs >= 0 ? totalMs / 1000 : (totalMs - 999) / 1000)
        let milliseconds = Int(totalMs - Int64(seconds) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return pad(Int(parts.tm_year) + 1900, 4) + "-" + pad(Int(parts.tm_mon) + 1, 2) + "-" + pad(Int(parts.tm_mday), 2)
            + "T" + pad(Int(parts.tm_hour), 2) + ":" + pad(Int(parts.tm_min), 2) + ":" + pad(Int(parts.tm_sec), 2)
            + "." + pad(milliseconds, 3) + "Z"
    }

    private static func pad(_ value: Int, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }
}
