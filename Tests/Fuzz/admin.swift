// Fuzz harness: the admin command parser (AdminCommands.parse).
//
// Input: one command line (bytes decoded as UTF-8, invalid sequences replaced).
// Checks:
//   - parsing is deterministic;
//   - an error is `empty` only for a line without words, names the line's first word (at most
//     64 characters) when the command is unknown, and otherwise gives that command's usage;
//   - an accepted line's words, joined by single spaces (the command name lowercased), parse to
//     the same command: tabs, runs of blanks and the name's case carry no meaning;
//   - round trip: an accepted command, written back as a line with single spaces (what
//     `cutover COMMAND ARGS…` sends; the serialiser below), parses to an equal command, and
//     writing that one gives the same line. A command added to AdminCommand after the
//     serialiser was written gets the check above only (noted once in the log).

import CutoverConfig
import CutoverControl
import Glibc

/// A command as a line the parser accepts, words joined by single spaces; nil for a command
/// this serialiser does not know yet (added to AdminCommand after it was written).
func line(_ command: AdminCommand) -> String? {
    func percent(_ basisPoints: Int) -> String {
        let fraction = basisPoints % 100
        return "\(basisPoints / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
    func tail(force: Bool = false, _ reason: String?) -> String {
        (force ? " force" : "") + (reason.map { " reason \($0)" } ?? "")
    }
    func app(_ name: String?) -> String { name.map { " app \($0)" } ?? "" }
    switch command {
    case .help: return "help"
    case .status: return "status"
    case .health: return "health"
    case .reload: return "reload"
    case .reopen: return "reopen"
    case .pins: return "pins"
    case .switchColor(let color, let watchMs, let force, let reason):
        return "switch \(color.rawValue)" + (watchMs.map { " watch \($0)ms" } ?? "") + tail(force: force, reason)
    case .rollback(let force, let reason):
        return "rollback" + tail(force: force, reason)
    case .drain(let name, let server):
        return "drain \(name) \(server)"
    case .undrain(let name, let server):
        return "undrain \(name) \(server)"
    case .verify(let color):
        return "verify \(color.rawValue)"
    case .history(let count):
        return "history \(count)"
    case .stats(let window):
        return "stats \(window.rawValue)"
    case .overview(let seconds):
        return "overview \(seconds)"
    case .weight(let color, let basisPoints, let name, let force, let reason):
        return "weight \(color.rawValue) \(percent(basisPoints))" + app(name) + tail(force: force, reason)
    case .pin(let name, let source, let field, let values, let color, let reason):
        return "pin \(name) \(source.rawValue) \(field) \(values.joined(separator: ",")) \(color.rawValue)" + tail(reason)
    case .unpin(let name, let source, let field, let value, let reason):
        var text = "unpin \(name)"
        if let source, let field { text += " \(source.rawValue) \(field)" }
        if let value { text += " \(value)" }
        return text + tail(reason)
    case .mirror(let basisPoints, let name, let reason):
        return "mirror \(percent(basisPoints))" + app(name) + tail(reason)
    case .upgrade(let binary):
        return "upgrade" + (binary.map { " binary \($0)" } ?? "")
    case .release(let release):
        switch release {
        case .start(let plan, let color, let force, let reason):
            return "release start \(plan)" + (color.map { " to \($0.rawValue)" } ?? "") + tail(force: force, reason)
        case .status: return "release status"
        case .report: return "release report"
        case .resume: return "release resume"
        case .pause(let reason): return "release pause" + tail(reason)
        case .promote(let reason): return "release promote" + tail(reason)
        case .abort(let reason): return "release abort" + tail(reason)
        }
    @unknown default:
        return nil
    }
}

let usages = Set(AdminCommands.table.map(\.usage))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeRawBufferPointer(start: data, count: size), as: UTF8.self)
    let input = UnsafeRawBufferPointer(start: data, count: size)
    func what() -> String { "line \"\(escaped(input))\"" }
    let result = AdminCommands.parse(text)
    if case .failure(let error) = result {
        check(!error.message.isEmpty && !error.message.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F },
              "\(what()): error message '\(error.message)' is empty or has control characters")
    }
    check(AdminCommands.parse(text) == result, "\(what()): parsed twice differently")
    let words = text.unicodeScalars.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(Substring.init)
    switch result {
    case .failure(.empty):
        check(words.isEmpty, "\(what()): 'empty' for a line with words")
    case .failure(.unknownCommand(let name)):
        check(!words.isEmpty && name == String(words[0].prefix(64)), "\(what()): unknown command '\(name)'")
    case .failure(.usage(let usage)):
        check(usages.contains(usage), "\(what()): usage '\(usage)' is not in the table")
    case .success(let command):
        // The words alone carry the command: the same words with single spaces (the command
        // name in lowercase) parse to the same command.
        let normalised = ([words[0].lowercased()] + words.dropFirst().map(String.init)).joined(separator: " ")
        let fromWords = AdminCommands.parse(normalised)
        check(fromWords == result, "\(what()): \(command), but its words joined by spaces \"\(normalised)\" parse as \(fromWords)")
        guard let written = line(command) else {
            note("no serialiser", "\(command) is not in the harness's serialiser: only the normalised line is checked")
            return 0
        }
        let again = AdminCommands.parse(written)
        check(again == .success(command), "\(what()): \(command) written as \"\(written)\" parses as \(again)")
        if case .success(let second) = again {
            check(line(second) == written, "\(what()): written again as \"\(line(second) ?? "nil")\"")
        }
    }
    return 0
}
