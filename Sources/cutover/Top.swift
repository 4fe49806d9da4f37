import CutoverControl
import CutoverSystem
import CutoverViews
import Foundation

/// `cutover top`: the overview of a running proxy, redrawn every interval, with keys for the
/// release commands. Figures come from the `overview` admin command; every change a key makes
/// is an admin command line on the same socket (and so an audit record with the operator's
/// uid). `--once` prints one frame as plain text and exits: for scripts, tests and terminals
/// that cannot do full screen.
struct TopCommand {
    let socket: String
    let intervalMs: Int

    /// The series length the sparklines cover.
    static let seconds = 60

    enum Fetched {
        case figures(Overview)
        case failed(String, unreachable: Bool)
    }

    func fetch() -> Fetched {
        switch AdminLine.exchange("overview \(Self.seconds)", socket: socket, timeoutSeconds: 10) {
        case .failure(let failure):
            if case .unreachable = failure { return .failed("cannot reach \(socket): \(failure)", unreachable: true) }
            return .failed(failure.description, unreachable: false)
        case .success(let text):
            guard let json = JSON.parse(text) else { return .failed("the reply is not JSON", unreachable: false) }
            do {
                return .figures(try Overview(json))
            } catch {
                return .failed(error.description, unreachable: false)
            }
        }
    }

    /// One plain frame on standard output: every line, no colors, no keys.
    func once() -> Int32 {
        let width = Terminal(output: 1).size?.columns ?? ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init) ?? 132
        switch fetch() {
        case .figures(let overview):
            let lines = TopFrame.render(overview, .init(width: width, height: 1_000, colors: false, source: socket, keys: false))
            print(lines.joined(separator: "\n"))
            return 0
        case .failed(let reason, let unreachable):
            FileHandle.standardError.write(Data("cutover top: \(reason)\n".utf8))
            return unreachable ? 3 : 1
        }
    }

    func run() -> Int32 {
        guard Terminal.isTerminal(0), Terminal.isTerminal(1) else {
            FileHandle.standardError.write(Data("cutover top: standard input and output must be a terminal; for one plain frame use `cutover top --once`\n".utf8))
            return 2
        }
        let environment = ProcessInfo.processInfo.environment
        // https://no-color.org: any value of NO_COLOR turns colors off; so does a dumb terminal.
        let colors = environment["NO_COLOR"] == nil && environment["TERM"] != "dumb"
        let terminal = Terminal()
        do {
            try terminal.enterFullScreen()
        } catch {
            FileHandle.standardError.write(Data("cutover top: cannot use the terminal: \(error)\n".utf8))
            return 1
        }
        defer { terminal.restore() }
        var keys = TopKeys()
        var figures: Overview?
        var fetchError: String?
        var message: String?
        var nextFetch: Int64 = 0
        while true {
            let now = monotonicMilliseconds()
            if now >= nextFetch {
                switch fetch() {
                case .figures(let overview):
                    figures = overview
                    fetchError = nil
                case .failed(let reason, _):
                    fetchError = reason
                }
                nextFetch = monotonicMilliseconds() + Int64(intervalMs)
            }
            let size = terminal.size ?? (rows: 24, columns: 80)
            terminal.draw(TopFrame.render(figures, .init(width: size.columns, height: size.rows, colors: colors, source: socket,
                                                         fetchError: fetchError, prompt: keys.prompt, message: message)))
            switch terminal.next(timeoutMs: Int(max(0, nextFetch - monotonicMilliseconds()))) {
            case .key(let byte):
                switch keys.key(byte) {
                case .quit:
                    return 0
                case .send(let line):
                    message = outcome(of: line)
                    nextFetch = 0  // show the change at once
                case .redraw, .none:
                    break
                }
            case .resized, .timeout:
                continue
            case .stop, .closed:
                return 0
            }
        }
    }

    /// What an action's reply says, in one line under the table.
    private func outcome(of line: String) -> String {
        switch AdminLine.exchange(line, socket: socket) {
        case .failure(let failure):
            return "error: \(line): \(failure) (check the figures: it may have happened)"
        case .success(let text):
            guard let reply = JSON.parse(text) else { return "error: \(line): the reply is not JSON" }
            guard reply["ok"]?.boolValue == true else {
                let reasons = (reply["reasons"]?.arrayValue ?? []).compactMap(\.stringValue)
                return "error: \(line): \(reply["error"]?.stringValue ?? "refused")" + (reasons.isEmpty ? "" : " — " + reasons.joined(separator: "; "))
            }
            return "done: \(line)"
        }
    }
}
