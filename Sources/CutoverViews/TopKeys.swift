/// The keys of `cutover top` as a state machine value: bytes in, an action out. Every change
/// it asks for is an admin command line, sent over the same socket as `cutover switch` and so
/// written to the audit log with the operator's uid. A change is sent only after an explicit
/// `y`; Esc (or Ctrl-C in a prompt) cancels.
public struct TopKeys: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        case none
        /// The prompt line changed: redraw.
        case redraw
        /// Send this admin command line, then show its outcome.
        case send(String)
        case quit
    }

    enum Field: Sendable, Equatable {
        case color, percent, reason, confirm
    }

    enum Command: String, Sendable, Equatable {
        case switchColor = "switch"
        case rollback
        case pause = "release pause"
        case resume = "release resume"
        case weight
    }

    private var command: Command?
    private var field: Field = .color
    private var input = ""
    private var color = ""
    private var percent = ""
    private var reason = ""
    /// Why the last answer was not taken (a color that is not one, a percent out of range).
    private var problem: String?

    public init() {}

    /// A prompt is open: the footer shows it instead of the keys.
    public var prompt: String? {
        guard let command else { return nil }
        let problem = self.problem.map { "(\($0)) " } ?? ""
        switch field {
        case .color: return "\(problem)\(command == .weight ? "weight of which color" : "switch to") (blue/green): \(input)"
        case .percent: return "\(problem)\(color)'s share in percent (0-100): \(input)"
        case .reason: return "\(problem)reason (Enter for none): \(input)"
        case .confirm: return "\(line(for: command)) — send? [y/N] "
        }
    }

    public mutating func key(_ byte: UInt8) -> Action {
        guard let command else { return idle(byte) }
        switch byte {
        case 0x1B, 0x03:  // Esc, Ctrl-C: cancel the prompt
            self = TopKeys()
            return .redraw
        default:
            break
        }
        if field == .confirm {
            let line = line(for: command)
            self = TopKeys()
            return byte == UInt8(ascii: "y") || byte == UInt8(ascii: "Y") ? .send(line) : .redraw
        }
        switch byte {
        case 0x0D, 0x0A:
            return submit()
        case 0x7F, 0x08:
            if !input.isEmpty { input.removeLast() }
            return .redraw
        case 0x20...0x7E:
            if input.utf8.count < 200 { input.unicodeScalars.append(Unicode.Scalar(byte)) }
            return .redraw
        default:
            return .none
        }
    }

    private mutating func idle(_ byte: UInt8) -> Action {
        switch byte {
        case UInt8(ascii: "q"), UInt8(ascii: "Q"), 0x03, 0x04: return .quit
        case UInt8(ascii: "s"): start(.switchColor, at: .color)
        case UInt8(ascii: "r"): start(.rollback, at: .reason)
        case UInt8(ascii: "p"): start(.pause, at: .reason)
        case UInt8(ascii: "u"): start(.resume, at: .confirm)
        case UInt8(ascii: "w"): start(.weight, at: .color)
        default: return .none
        }
        return .redraw
    }

    private mutating func start(_ command: Command, at field: Field) {
        self = TopKeys()
        self.command = command
        self.field = field
    }

    private mutating func submit() -> Action {
        let answer = input.trimmingSpaces
        input = ""
        problem = nil
        switch field {
        case .color:
            guard answer == "blue" || answer == "green" else {
                problem = "'\(answer)' is not blue or green"
                return .redraw
            }
            color = answer
            field = command == .weight ? .percent : .reason
        case .percent:
            guard let value = Double(answer), value >= 0, value <= 100, answer.allSatisfy({ $0.isNumber || $0 == "." }) else {
                problem = "'\(answer)' is not a percentage from 0 to 100"
                return .redraw
            }
            percent = answer
            field = .reason
        case .reason:
            reason = answer
            field = .confirm
        case .confirm:
            break
        }
        return .redraw
    }

    /// The admin command line the answers make.
    private func line(for command: Command) -> String {
        var words: [String]
        switch command {
        case .switchColor: words = ["switch", color]
        case .rollback: words = ["rollback"]
        case .pause: words = ["release", "pause"]
        case .resume: words = ["release", "resume"]
        case .weight: words = ["weight", color, percent]
        }
        if !reason.isEmpty { words += ["reason", reason] }
        return words.joined(separator: " ")
    }
}

extension String {
    var trimmingSpaces: String {
        var text = Substring(self)
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return String(text)
    }
}
