import CutoverConfig
import CutoverSystem
import Foundation

// The state file remembers which color is live across restarts, so that a restarted (or
// rebooted) proxy does not silently fall back to `initial_color` after a cutover.
//
// It is a few `key value` lines rather than JSON so an operator can read it with `cat` and
// fix it with an editor during an incident:
//
//     # cutover state, written 2026-11-24T03:50:00.123Z
//     active green
//     previous blue
//     generation 7
//     drained api 127.0.0.1:8093
//
// Parsing is strict: a state file that cutover does not fully understand must stop the
// start-up instead of sending traffic to a guessed color. Saving is atomic (temp file,
// fsync, rename, fsync the folder), so a crash leaves either the old or the new file,
// never a mix of both.

/// What survives a restart.
public struct PersistentState: Equatable, Sendable {
    public var active: Color
    /// The color before the last switch (the one a rollback returns to).
    public var previous: Color?
    /// Incremented by every switch; lets audit records and admin replies be ordered.
    public var generation: UInt64
    /// Drained servers as `"app host:port"` entries, sorted.
    public var drained: [String]

    public init(active: Color, previous: Color? = nil, generation: UInt64 = 0, drained: [String] = []) {
        self.active = active
        self.previous = previous
        self.generation = generation
        self.drained = drained
    }
}

public struct StateFileError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var message: String
    /// The new state is in place (renamed over the old file) but its folder could not be
    /// synced: a caller must treat the change as made, not as refused.
    public var newStateInPlace = false

    public init(path: String, message: String, newStateInPlace: Bool = false) {
        self.path = path
        self.message = message
        self.newStateInPlace = newStateInPlace
    }

    public var description: String { "\(path): \(message)" }
}

public enum StateFile {
    /// Files larger than this are not state files cutover wrote; refusing them early avoids
    /// reading a log or a core dump that someone pointed `state_file` at.
    static let maximumSize = 1 << 20

    /// The state saved at `path`, or nil when there is no file yet (first start).
    public static func load(path: String) throws(StateFileError) -> PersistentState? {
        guard let bytes = try readFile(path: path) else { return nil }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw corrupt(path, "not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    /// Replaces the file at `path` atomically, creating its folder (0755) when missing.
    public static func save(_ state: PersistentState, path: String) throws(StateFileError) {
        try save(state, path: path, faults: SaveFaults())
    }

    // MARK: - Format

    /// The text `save` writes. Drained entries are sorted so the file (and its diff in a
    /// config-management tool) does not depend on the order servers were drained in.
    static func render(_ state: PersistentState, path: String) throws(StateFileError) -> String {
        var text = "# cutover state, written \(RFC3339.string(from: Date()))\n"
        text += "active \(state.active.rawValue)\n"
        if let previous = state.previous { text += "previous \(previous.rawValue)\n" }
        text += "generation \(state.generation)\n"
        for entry in Set(state.drained).sorted() {
            // Refuse to write what `load` would reject: the next start would fail on it.
            guard drainedEntryIsValid(entry) else {
                throw StateFileError(path: path, message: "cannot save state: invalid drained entry '\(entry)'")
            }
            text += "drained \(entry)\n"
        }
        return text
    }

    static func parse(_ text: String, path: String) throws(StateFileError) -> PersistentState {
        var fields = ParsedFields()
        // "\r\n" is one Character in Swift, so it must be named to split files edited on Windows.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, rawLine) in lines.enumerated() {
            let line = trimmed(rawLine)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let (key, value) = splitKey(line)
            if let problem = fields.apply(key: key, value: value) {
                throw corrupt(path, "line \(index + 1): \(problem)")
            }
        }
        guard let active = fields.active else { throw corrupt(path, "no 'active' line") }
        return PersistentState(active: active, previous: fields.previous,
                               generation: fields.generation ?? 0, drained: fields.drained.sorted())
    }

    /// The keys seen so far; `apply` returns a problem description instead of throwing so
    /// the caller can add the line number in one place.
    private struct ParsedFields {
        var active: Color?
        var previous: Color?
        var generation: UInt64?
        var drained: [String] = []
        private var seen: Set<String> = []

        mutating func apply(key: String, value: String) -> String? {
            // `drained` is the only repeatable key; a second `active` would be ambiguous.
            if key != "drained" && !seen.insert(key).inserted { return "duplicate key '\(key)'" }
            switch key {
            case "active", "previous":
                guard let color = Color(rawValue: value) else {
                    return "bad color '\(value)' for '\(key)' (expected blue or green)"
                }
                if key == "active" { active = color } else { previous = color }
            case "generation":
                // Bounded so that reports (signed 64-bit JSON numbers) and the next switch's + 1
                // cannot overflow, whatever an editor put in the file.
                guard let number = StateFile.decimal(value), number < UInt64(Int64.max) else {
                    return "bad number '\(value)' for 'generation'"
                }
                generation = number
            case "drained":
                guard StateFile.drainedEntryIsValid(value) else {
                    return "bad drained entry '\(value)' (expected 'app host:port')"
                }
                guard !drained.contains(value) else { return "duplicate drained entry '\(value)'" }
                drained.append(value)
            default:
                return "unknown key '\(key)'"
            }
            return nil
        }
    }

    /// Plain ASCII digits only: `UInt64("+7")` would accept a sign no writer produces.
    static func decimal(_ text: String) -> UInt64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return UInt64(text)
    }

    /// `app host:port`: two words, the second with a port after its last colon.
    static func drainedEntryIsValid(_ entry: String) -> Bool {
        let words = entry.split(separator: " ", omittingEmptySubsequences: false)
        guard words.count == 2, let app = words.first, let server = words.last, !app.isEmpty,
              entry.utf8.allSatisfy({ $0 > 0x20 || $0 == UInt8(ascii: " ") }) && !entry.utf8.contains(0x7f),
              let colon = server.lastIndex(of: ":")
        else { return false }
        let host = server[..<colon]
        let port = server[server.index(after: colon)...]
        guard !host.isEmpty, let number = decimal(String(port)) else { return false }
        return number <= UInt64(UInt16.max)
    }

    private static func trimmed(_ line: Substring) -> String {
        let blank: Set<Character> = [" ", "\t", "\r"]
        var slice = line
        while let first = slice.first, blank.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, blank.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }

    /// The first word and the rest of the line (which may contain spaces: `drained`).
    private static func splitKey(_ line: String) -> (String, String) {
        guard let space = line.firstIndex(where: { $0 == " " || $0 == "\t" }) else { return (line, "") }
        let rest = line[space...].drop(while: { $0 == " " || $0 == "\t" })
        return (String(line[..<space]), String(rest))
    }

    private static func corrupt(_ path: String, _ detail: String) -> StateFileError {
        StateFileError(path: path, message: "corrupt state file (\(detail)); \(wayOut)")
    }

    private static let wayOut = "move it away or start with `cutover run --reset-state`"

    // MARK: - Reading

    /// The file's bytes, or nil when it does not exist.
    private static func readFile(path: String) throws(StateFileError) -> [UInt8]? {
        do {
            return try FileIO.readWhole(path, maxBytes: maximumSize)
        } catch where error.code == ENOENT {
            return nil
        } catch where error.code == 0 {
            throw corrupt(path, error.reason)
        } catch {
            throw StateFileError(path: path, message: "cannot read state file (\(error.reason)); \(wayOut)")
        }
    }

    // MARK: - Atomic save

    /// Failures tests can inject into `save` to check what a crash or a full disk leaves
    /// behind. Production code always passes the empty value.
    package typealias SaveFaults = FileIO.WriteFaults

    package static func save(_ state: PersistentState, path: String, faults: SaveFaults) throws(StateFileError) {
        let bytes = Array(try render(state, path: path).utf8)
        do {
            try FileIO.writeAtomically(path, bytes: bytes, faults: faults)
        } catch where error.newContentInPlace {
            throw StateFileError(path: path, message: "state written but \(error.step) failed: \(error.reason)", newStateInPlace: true)
        } catch {
            throw saveError(path, error.description)
        }
    }

    private static func saveError(_ path: String, _ detail: String) -> StateFileError {
        StateFileError(path: path, message: "cannot save state (\(detail)); the previous state file is unchanged")
    }
}

