import CCutoverSys
import Glibc

/// The controlling terminal for `cutover top`: raw keys, the size, the alternate screen, and
/// a guaranteed way back. `restore` puts the saved mode back and leaves the alternate screen;
/// the caller runs it on every exit path (q, Ctrl-C, SIGTERM, an error).
public final class Terminal {
    public enum Event: Equatable, Sendable {
        case key(UInt8)
        case resized
        /// SIGINT, SIGTERM or SIGHUP: leave.
        case stop
        case timeout
        /// Standard input closed.
        case closed
    }

    private let input: Int32
    private let output: Int32
    private var saved = termios()
    private var raw = false

    public init(input: Int32 = 0, output: Int32 = 1) {
        self.input = input
        self.output = output
    }

    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Rows and columns, or nil when `output` is not a terminal.
    public var size: (rows: Int, columns: Int)? {
        var rows: UInt16 = 0
        var columns: UInt16 = 0
        guard cutover_terminal_size(output, &rows, &columns) == 0, rows > 0, columns > 0 else { return nil }
        return (Int(rows), Int(columns))
    }

    /// Keys one at a time, no echo, no line editing; output post-processing kept (so "\n" is
    /// still a new line). Signals are noted, not fatal: the loop restores the screen first.
    public func enterFullScreen() throws(IOError) {
        guard tcgetattr(input, &saved) == 0 else { throw IOError(errnoCode: Posix.lastError(), function: "tcgetattr") }
        var mode = saved
        mode.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
        mode.c_iflag &= ~tcflag_t(IXON | ICRNL)
        withUnsafeMutableBytes(of: &mode.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(input, TCSAFLUSH, &mode) == 0 else { throw IOError(errnoCode: Posix.lastError(), function: "tcsetattr") }
        raw = true
        cutover_watch_terminal_signals()
        // Alternate screen, cursor hidden.
        write("\u{1B}[?1049h\u{1B}[?25l")
    }

    /// Back to the shell as it was: cursor shown, main screen, the saved mode.
    public func restore() {
        guard raw else { return }
        raw = false
        write("\u{1B}[0m\u{1B}[?25h\u{1B}[?1049l")
        _ = tcsetattr(input, TCSAFLUSH, &saved)
    }

    /// Draws a frame from the top-left corner, clearing what the previous frame left.
    public func draw(_ lines: [String]) {
        var text = "\u{1B}[H"
        for (index, line) in lines.enumerated() {
            text += line + "\u{1B}[K"
            if index < lines.count - 1 { text += "\r\n" }
        }
        write(text + "\u{1B}[J")
    }

    /// The next key, resize or stop, or `.timeout` after `timeoutMs`.
    public func next(timeoutMs: Int) -> Event {
        if let event = pendingSignal() { return event }
        var descriptor = pollfd(fd: input, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, Int32(clamping: timeoutMs))
        if ready < 0 { return pendingSignal() ?? .timeout }  // EINTR
        if let event = pendingSignal() { return event }
        guard ready > 0 else { return .timeout }
        var byte: UInt8 = 0
        let count = read(input, &byte, 1)
        if count == 1 { return .key(byte) }
        return count == 0 ? .closed : (pendingSignal() ?? .timeout)
    }

    private func pendingSignal() -> Event? {
        let pending = cutover_take_terminal_signals()
        if pending & 2 != 0 { return .stop }
        if pending & 1 != 0 { return .resized }
        return nil
    }

    public func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { Glibc.write(output, $0.baseAddress! + offset, $0.count - offset) }
            if written <= 0 {
                if written < 0 && Posix.lastError() == EINTR { continue }
                return
            }
            offset += written
        }
    }
}
