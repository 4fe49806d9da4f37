/// One escaper for every quoted string cutover writes: admin replies (JSON), access-log lines
/// (JSON of raw request bytes) and Prometheus labels and help text. Byte by byte, into a byte
/// array: the access-log writer appends without building Strings.
public enum Escaping {
    public enum Dialect: Sendable {
        /// JSON of a Swift string (valid UTF-8): quote, backslash, `\n` `\r` `\t`, other control
        /// characters and DEL as `\u00XX`; everything else as is.
        case json
        /// JSON of bytes that need not be UTF-8 (request lines): quote and backslash escaped,
        /// printable ASCII as is, every other byte as `\u00XX` (read as Latin-1), so that every
        /// line is valid JSON whatever a client sent.
        case jsonASCII
        /// A Prometheus label value: backslash, quote and newline.
        case prometheusLabel
        /// Prometheus HELP text: backslash and newline.
        case prometheusHelp
    }

    /// Appends `bytes` escaped for `dialect` (without surrounding quotes).
    public static func append(_ bytes: UnsafeRawBufferPointer, _ dialect: Dialect, to out: inout [UInt8]) {
        for byte in bytes {
            switch (byte, dialect) {
            case (0x5C, _):
                out.append(0x5C)
                out.append(0x5C)
            case (0x22, .json), (0x22, .jsonASCII), (0x22, .prometheusLabel):
                out.append(0x5C)
                out.append(0x22)
            case (0x0A, .json), (0x0A, .prometheusLabel), (0x0A, .prometheusHelp):
                out.append(0x5C)
                out.append(0x6E)
            case (0x0D, .json):
                out.append(0x5C)
                out.append(0x72)
            case (0x09, .json):
                out.append(0x5C)
                out.append(0x74)
            case (0x00..<0x20, .json), (0x7F, .json), (0x00..<0x20, .jsonASCII), (0x7F..., .jsonASCII):
                appendUnicodeEscape(byte, to: &out)
            default:
                out.append(byte)
            }
        }
    }

    /// `text` escaped for `dialect` (without surrounding quotes).
    public static func escaped(_ text: String, _ dialect: Dialect) -> String {
        var copy = text
        var out: [UInt8] = []
        out.reserveCapacity(copy.utf8.count + 8)
        copy.withUTF8 { append(UnsafeRawBufferPointer($0), dialect, to: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    private static func appendUnicodeEscape(_ byte: UInt8, to out: inout [UInt8]) {
        out.append(contentsOf: [0x5C, 0x75, 0x30, 0x30])  // \u00
        out.append(hexDigit(byte >> 4))
        out.append(hexDigit(byte & 0x0F))
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? 0x30 + value : 0x61 + value - 10
    }
}
