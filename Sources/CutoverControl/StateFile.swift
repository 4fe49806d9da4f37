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
//     weight api 1000 5f0c2d7e9a41b386
//     pin api header x-tenant green pilot-1,pilot-2
//     pins_suspended green
//     mirror api 500
//     release canary-by-tenant step 2 hash 3f9a0c2d71b4e815
//
// `weight APP BASISPOINTS SALT` is an app's candidate share (1/100 %) during a canary and the
// salt its sticky users are hashed with; `pin` lines are pins added at run time (the config's
// own pins stay in the config); `pins_suspended` names a color whose pins a rollback suspended;
// `mirror APP BASISPOINTS` is a mirror share set at run time (it wins over the config's);
// `release PLAN step N hash H` is the plan running, the wave it reached and the plan's hash
// (after a restart it resumes there, paused, if the plan is unchanged).
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
    /// Apps whose candidate (the color that is not `active`) takes a share — or took one in
    /// this release (share 0, salt kept) — by app name.
    public var releases: [String: AppRelease] = [:]
    /// Pins added at run time, by app name.
    public var pins: [String: [PinRule]] = [:]
    /// Colors whose pins a rollback suspended: listed, not applied.
    public var suspendedPins: Set<Color> = []
    /// Mirror shares set at run time (basis points), overriding the config's, by app name.
    public var mirrors: [String: Int] = [:]
    /// The release plan running: its name, the step it reached (1-based) and the hash of the
    /// plan as it was configured then (a changed plan is not resumed).
    public var releasePlan: (name: String, step: Int, hash: String)? = nil
    /// The SHA-256 of the audit log's last record when this state was saved: `audit verify`
    /// finds a log cut short below it (not compared by `==`: it is bookkeeping, not state).
    public var auditAnchor: String? = nil

    public static func == (lhs: PersistentState, rhs: PersistentState) -> Bool {
        lhs.active == rhs.active && lhs.previous == rhs.previous && lhs.generation == rhs.generation && lhs.drained == rhs.drained
            && lhs.releases == rhs.releases && lhs.pins == rhs.pins && lhs.suspendedPins == rhs.suspendedPins && lhs.mirrors == rhs.mirrors
            && lhs.releasePlan?.name == rhs.releasePlan?.name && lhs.releasePlan?.step == rhs.releasePlan?.step
            && lhs.releasePlan?.hash == rhs.releasePlan?.hash
    }

    public init(active: Color, previous: Color? = nil, generation: UInt64 = 0, drained: [String] = []) {
        self.active = active
        self.previous = previous
        self.generation = generation
        self.drained = drained
    }

    /// The candidate's share of `app`, in basis points (0 without a canary).
    public func candidateBasisPoints(_ app: String) -> Int { releases[app]?.candidateBasisPoints ?? 0 }

    /// A canary is under way: some app's candidate takes a share.
    public var canaryInProgress: Bool { releases.values.contains { $0.candidateBasisPoints > 0 } }
}

/// An app's canary: the candidate's share and the salt sticky keys are hashed with. The salt
/// is drawn when the share first leaves 0 and kept until the release ends (a switch or a
/// rollback), so a user stays on one color for the whole release — a pause at 0 % included —
/// across restarts.
public struct AppRelease: Equatable, Sendable {
    /// 0…10,000 (1/100 %).
    public var candidateBasisPoints: Int
    public var salt: UInt64

    public init(candidateBasisPoints: Int, salt: UInt64) {
        self.candidateBasisPoints = candidateBasisPoints
        self.salt = salt
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
        for (app, release) in state.releases.sorted(by: { $0.key < $1.key }) {
            guard appNameIsValid(app), (0...10_000).contains(release.candidateBasisPoints) else {
                throw StateFileError(path: path, message: "cannot save state: invalid weight for app '\(app)'")
            }
            text += "weight \(app) \(release.candidateBasisPoints) \(hex16(release.salt))\n"
        }
        for (app, pins) in state.pins.sorted(by: { $0.key < $1.key }) {
            for pin in pins {
                guard appNameIsValid(app), PinRule.isToken(pin.name), !pin.values.isEmpty, pin.values.allSatisfy(PinRule.isValidValue) else {
                    throw StateFileError(path: path, message: "cannot save state: invalid pin for app '\(app)'")
                }
                text += "pin \(app) \(pin.source.rawValue) \(pin.name) \(pin.color.rawValue) \(pin.values.joined(separator: ","))\n"
            }
        }
        for (app, basisPoints) in state.mirrors.sorted(by: { $0.key < $1.key }) {
            guard appNameIsValid(app), (0...10_000).contains(basisPoints) else {
                throw StateFileError(path: path, message: "cannot save state: invalid mirror share for app '\(app)'")
            }
            text += "mirror \(app) \(basisPoints)\n"
        }
        if let plan = state.releasePlan {
            guard appNameIsValid(plan.name), plan.step >= 1, plan.hash.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }),
                  !plan.hash.isEmpty else {
                throw StateFileError(path: path, message: "cannot save state: invalid release plan '\(plan.name)'")
            }
            text += "release \(plan.name) step \(plan.step) hash \(plan.hash)\n"
        }
        for color in Color.allCases where state.suspendedPins.contains(color) {
            text += "pins_suspended \(color.rawValue)\n"
        }
        if let anchor = state.auditAnchor {
            guard StateFile.isHash(anchor) else { throw StateFileError(path: path, message: "cannot save state: invalid audit anchor") }
            text += "audit_anchor \(anchor)\n"
        }
        return text
    }

    static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    static func appNameIsValid(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || "-_.".utf8.contains(byte)
        }
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
        var state = PersistentState(active: active, previous: fields.previous,
                                    generation: fields.generation ?? 0, drained: fields.drained.sorted())
        state.releases = fields.releases
        state.pins = fields.pins
        state.suspendedPins = fields.suspendedPins
        state.mirrors = fields.mirrors
        state.releasePlan = fields.releasePlan
        state.auditAnchor = fields.auditAnchor
        return state
    }

    /// 64 lowercase hex digits (a SHA-256).
    static func isHash(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// Removes what an interrupted save left beside the state file (`.NAME.tmp-PID-…`): the
    /// rename never happened, so those files hold nothing the state file does not. Returns
    /// the names removed.
    @discardableResult
    public static func removeLeftovers(of path: String) -> [String] {
        let folder = FileIO.parentFolder(of: path)
        let prefix = "." + (path.split(separator: "/").last.map(String.init) ?? path) + ".tmp-"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        var removed: [String] = []
        for name in names where name.hasPrefix(prefix) {
            FileIO.remove(folder + "/" + name)
            removed.append(name)
        }
        return removed
    }

    /// The keys seen so far; `apply` returns a problem description instead of throwing so
    /// the caller can add the line number in one place.
    private struct ParsedFields {
        var active: Color?
        var previous: Color?
        var generation: UInt64?
        var drained: [String] = []
        var releases: [String: AppRelease] = [:]
        var pins: [String: [PinRule]] = [:]
        var suspendedPins: Set<Color> = []
        var mirrors: [String: Int] = [:]
        var releasePlan: (name: String, step: Int, hash: String)?
        var auditAnchor: String?
        private var seen: Set<String> = []
        private static let repeatable: Set<String> = ["drained", "weight", "pin", "pins_suspended", "mirror"]

        mutating func apply(key: String, value: String) -> String? {
            // A second `active` would be ambiguous; list keys repeat.
            if !Self.repeatable.contains(key) && !seen.insert(key).inserted { return "duplicate key '\(key)'" }
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
            case "weight":
                let words = value.split(separator: " ")
                guard words.count == 3, StateFile.appNameIsValid(String(words[0])),
                      let basisPoints = StateFile.decimal(String(words[1])), basisPoints <= 10_000,
                      words[2].utf8.count == 16, let salt = UInt64(words[2], radix: 16)
                else { return "bad weight entry '\(value)' (expected 'app basis-points salt', 0..10000 and 16 hex digits)" }
                guard releases[String(words[0])] == nil else { return "duplicate weight for app '\(words[0])'" }
                releases[String(words[0])] = AppRelease(candidateBasisPoints: Int(basisPoints), salt: salt)
            case "pin":
                let words = value.split(separator: " ")
                guard words.count == 5, StateFile.appNameIsValid(String(words[0])), let source = PinSource(rawValue: String(words[1])),
                      PinRule.isToken(words[2]), let color = Color(rawValue: String(words[3]))
                else { return "bad pin entry '\(value)' (expected 'app header|cookie name color value[,value…]')" }
                let values = words[4].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                guard values.allSatisfy(PinRule.isValidValue) else { return "bad pin values in '\(value)'" }
                pins[String(words[0]), default: []].append(PinRule(source: source, name: String(words[2]), values: values, color: color))
            case "mirror":
                let words = value.split(separator: " ")
                guard words.count == 2, StateFile.appNameIsValid(String(words[0])),
                      let basisPoints = StateFile.decimal(String(words[1])), basisPoints <= 10_000
                else { return "bad mirror entry '\(value)' (expected 'app basis-points', 0..10000)" }
                guard mirrors[String(words[0])] == nil else { return "duplicate mirror for app '\(words[0])'" }
                mirrors[String(words[0])] = Int(basisPoints)
            case "release":
                let words = value.split(separator: " ")
                guard words.count == 5, StateFile.appNameIsValid(String(words[0])), words[1] == "step",
                      let step = StateFile.decimal(String(words[2])), step >= 1, step <= 1_000, words[3] == "hash",
                      !words[4].isEmpty, words[4].utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
                else { return "bad release entry '\(value)' (expected 'plan step N hash H')" }
                releasePlan = (String(words[0]), Int(step), String(words[4]))
            case "pins_suspended":
                guard let color = Color(rawValue: value) else { return "bad color '\(value)' for 'pins_suspended'" }
                suspendedPins.insert(color)
            case "audit_anchor":
                guard StateFile.isHash(value) else { return "bad audit anchor '\(value)' (expected 64 hex digits)" }
                auditAnchor = value
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

