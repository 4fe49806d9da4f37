import CutoverConfig
import CutoverSystem
import Foundation
import Synchronization

// The audit log answers "who switched production to green at 03:50, and why?".
//
// One JSON object per line, so `grep`, `jq` and log shippers handle it without a parser
// for our format. Each line carries the SHA-256 of the previous line ("prev"), so editing
// or deleting a line in the middle is visible to `cutover audit verify`: the edited line's
// successor no longer matches. This is tamper-evident, not tamper-proof: whoever can
// rewrite the whole file can rebuild the chain, and the last line (or a truncated tail)
// has no successor to give it away.
//
// Single writer: the chain is kept in memory, so two processes appending to the same file
// would break it. cutover holds one AuditLog per process, and one process per config.

/// Who caused an event: the admin-socket peer (SO_PEERCRED) or cutover itself.
public struct AuditActor: Sendable, Equatable {
    public var uid: UInt32
    public var user: String
    public var pid: Int32

    public init(uid: UInt32, user: String, pid: Int32) {
        self.uid = uid
        self.user = user
        self.pid = pid
    }

    /// This process: the actor of start, stop and SIGHUP reload events.
    public static func current() -> AuditActor {
        let uid = ProcessIdentity.userID
        return AuditActor(uid: uid, user: ProcessIdentity.userName(uid: uid), pid: ProcessIdentity.processID)
    }

    /// The login name for `uid`, or the number when there is no passwd entry.
    public static func userName(uid: UInt32) -> String {
        ProcessIdentity.userName(uid: uid)
    }
}

/// One audit event (one line of the log).
public struct AuditRecord: Sendable {
    public var time: Date
    /// start, stop, switch, rollback, refused, reload, reload_failed, drain, undrain.
    public var event: String
    public var from: Color?
    public var to: Color?
    public var reason: String?
    public var forced: Bool
    public var actor: AuditActor?
    public var generation: UInt64?
    /// Free-form facts: gate results, the server drained, the error of a failed reload.
    public var details: [String: String]

    public init(time: Date = Date(), event: String, from: Color? = nil, to: Color? = nil,
                reason: String? = nil, forced: Bool = false, actor: AuditActor? = nil,
                generation: UInt64? = nil, details: [String: String] = [:]) {
        self.time = time
        self.event = event
        self.from = from
        self.to = to
        self.reason = reason
        self.forced = forced
        self.actor = actor
        self.generation = generation
        self.details = details
    }
}

/// The result of checking a log's hash chain. Lines are numbered from 1.
public enum AuditVerification: Sendable, Equatable {
    case ok(lines: Int)
    case broken(line: Int, reason: String)
}

public struct AuditLogError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var message: String

    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { "\(path): \(message)" }
}

public final class AuditLog: @unchecked Sendable {
    /// "prev" of the first line: there is no previous line to hash.
    public static let genesis = String(repeating: "0", count: 64)

    public let path: String
    private let file: OpenFile
    /// The hash the next line must carry, and whether the file may end in a torn write
    /// (after a failed append) so the chain must be re-read before the next one.
    private struct Chain {
        var previousHash: String
        var needsResync: Bool
    }

    /// A pthread-backed lock (NSLock) rather than `Mutex`: ThreadSanitizer sees its ordering,
    /// so sanitizer runs of the concurrent-append tests stay clean.
    private let lock = NSLock()
    private var chainState: Chain

    /// Runs `body` with the chain under the lock.
    private func withChain<Result>(_ body: (inout Chain) throws(AuditLogError) -> Result) throws(AuditLogError) -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&chainState)
    }

    /// Opens (or creates, with its folder) the log and continues the chain from its last line.
    public init(path: String) throws {
        self.path = path
        let folder = FileIO.parentFolder(of: path)
        // 0750: the audit log names operators and reasons; not for every local user.
        if let problem = FileIO.createFolder(folder, mode: 0o750) {
            throw AuditLogError(path: path, message: "cannot create folder \(folder): \(problem)")
        }
        do {
            file = try OpenFile.appending(path, mode: 0o640)
        } catch {
            throw AuditLogError(path: path, message: "cannot open audit log: \(error.reason)")
        }
        chainState = Chain(previousHash: AuditLog.genesis, needsResync: true)
        try withChain { chain throws(AuditLogError) in try resync(&chain) }
    }

    /// Appends one line (with "prev" filled in), syncs it to disk, and returns it without
    /// its newline.
    @discardableResult
    public func append(_ record: AuditRecord) throws -> String {
        // Another process may append to the same log (the old and the new process of a hot
        // upgrade): under an exclusive lock on the file, chained from the line really last.
        try file.withExclusiveLock {
            try appendLocked(record)
        }
    }

    private func appendLocked(_ record: AuditRecord) throws -> String {
        try withChain { chain throws(AuditLogError) -> String in
            chain.needsResync = true
            if chain.needsResync { try resync(&chain) }
            let line = AuditLog.encode(record, prev: chain.previousHash)
            // Set before writing: if the write or fsync fails the file may hold a partial
            // line, and the next append must chain from what is really there.
            chain.needsResync = true
            do throws(FileError) {
                try file.writeAll((line + "\n").utf8)
            } catch {
                throw AuditLogError(path: path, message: "cannot append: \(error.reason)")
            }
            do throws(FileError) {
                try file.sync()
            } catch {
                throw AuditLogError(path: path, message: "cannot fsync: \(error.reason)")
            }
            chain.previousHash = SHA256.hex(SHA256.hash(line.utf8))
            chain.needsResync = false
            return line
        }
    }

    /// The SHA-256 of the last record (the next record's "prev"): the anchor a state file keeps.
    public var lastRecordHash: String? {
        (try? withChain { chain throws(AuditLogError) -> String? in
            if chain.needsResync { try resync(&chain) }
            return chain.previousHash == AuditLog.genesis ? nil : chain.previousHash
        }) ?? nil
    }

    /// Whether `hash` is the SHA-256 of one of the log's lines, and which: how `audit verify`
    /// checks that the log still reaches the record a state file anchored.
    public static func line(withHash hash: String, path: String) -> Int? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        var number = 0
        for line in [UInt8](data).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) where !line.isEmpty {
            number += 1
            if SHA256.hex(SHA256.hash(line)) == hash { return number }
        }
        return nil
    }

    /// The last `count` lines, oldest first, without newlines.
    public func tail(_ count: Int) throws -> [String] {
        guard count > 0 else { return [] }
        // Under the lock so a line being appended by this process is never half-seen.
        let lines = try withChain { _ throws(AuditLogError) in try AuditLog.lastLines(path: path, count: count) }
        return lines.map { String(decoding: $0, as: UTF8.self) }
    }

    /// Checks every line: it must be a JSON object whose "prev" is the SHA-256 of the
    /// previous line (64 zeros for the first). Reports the first line that is not.
    public static func verify(path: String) -> AuditVerification {
        guard let data = FileManager.default.contents(atPath: path) else {
            return .broken(line: 0, reason: "cannot read \(path)")
        }
        let bytes = [UInt8](data)
        var expected = genesis
        var number = 0
        var start = 0
        while start < bytes.count {
            number += 1
            guard let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) else {
                return .broken(line: number, reason: "incomplete last line (no newline): a torn write or truncation")
            }
            let line = bytes[start ..< end]
            if let problem = check(line: line, expectedPrev: expected, number: number) {
                return .broken(line: number, reason: problem)
            }
            expected = SHA256.hex(SHA256.hash(line))
            start = end + 1
        }
        return .ok(lines: number)
    }

    // MARK: - Chain

    /// Sets the next "prev" from the file's last line. A file that does not end in a
    /// newline ends in a torn write (crash or full disk mid-append): the newline is added
    /// so the next line starts on its own, and the torn line stays in the chain, where
    /// `verify` reports it rather than this process hiding it.
    private func resync(_ chain: inout Chain) throws(AuditLogError) {
        let last = try AuditLog.lastLines(path: path, count: 1, keepTornEnd: true).last
        guard let last else {
            chain = Chain(previousHash: AuditLog.genesis, needsResync: false)
            return
        }
        if last.last != UInt8(ascii: "\n") {
            do throws(FileError) {
                try file.writeAll([UInt8(ascii: "\n")])
            } catch {
                throw AuditLogError(path: path, message: "cannot terminate a torn last line: \(error.reason)")
            }
        }
        let content = last.last == UInt8(ascii: "\n") ? last.dropLast() : last[...]
        chain = Chain(previousHash: SHA256.hex(SHA256.hash(content)), needsResync: false)
    }

    private static func check(line: ArraySlice<UInt8>, expectedPrev: String, number: Int) -> String? {
        let object = try? JSONSerialization.jsonObject(with: Data(line))
        guard let fields = object as? [String: Any] else { return "not a JSON object" }
        guard let prev = fields["prev"] as? String else { return "no \"prev\" string" }
        guard prev == expectedPrev else {
            return number == 1
                ? "\"prev\" of the first line is not 64 zeros (lines before it were removed?)"
                : "\"prev\" does not match the SHA-256 of line \(number - 1) (a line was changed, removed or inserted)"
        }
        return nil
    }

    // MARK: - Reading the end of the file

    /// The last `count` lines. Reads backwards in blocks so a years-old log is not read
    /// whole for `history` or a restart. Lines are returned without their newline unless
    /// `keepTornEnd` is set, in which case the last element keeps its newline when it has
    /// one (so the caller can tell a torn write from a complete line).
    static func lastLines(path: String, count: Int, keepTornEnd: Bool = false) throws(AuditLogError) -> [[UInt8]] {
        let file: OpenFile
        let size: Int
        do {
            file = try OpenFile.reading(path)
        } catch {
            throw AuditLogError(path: path, message: "cannot read: \(error.reason)")
        }
        do {
            size = try file.size()
        } catch {
            throw AuditLogError(path: path, message: "cannot stat: \(error.reason)")
        }
        let tail = try readTail(file, size: size, newlinesWanted: count + 1, path: path)
        return split(tail, count: count, keepTornEnd: keepTornEnd)
    }

    /// Bytes from the end of the file back to (at least) `newlinesWanted` newlines, or the
    /// whole file if it has fewer.
    private static func readTail(_ file: OpenFile, size: Int, newlinesWanted: Int, path: String) throws(AuditLogError) -> [UInt8] {
        let blockSize = 16 * 1024
        var tail: [UInt8] = []
        var position = size
        var newlines = 0
        while position > 0 && newlines < newlinesWanted {
            let length = min(blockSize, position)
            position -= length
            var block = [UInt8](repeating: 0, count: length)
            var failure: FileError? = nil
            block.withUnsafeMutableBytes { buffer in
                do throws(FileError) { try file.read(into: buffer, at: position) } catch { failure = error }
            }
            if let failure { throw AuditLogError(path: path, message: "cannot read: \(failure.reason)") }
            newlines += block.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
            tail = block + tail
        }
        return tail
    }

    private static func split(_ tail: [UInt8], count: Int, keepTornEnd: Bool) -> [[UInt8]] {
        guard !tail.isEmpty else { return [] }
        var lines = tail.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(Array.init)
        let endsWithNewline = tail.last == UInt8(ascii: "\n")
        if endsWithNewline { lines.removeLast() }   // the empty piece after the final newline
        // Unless the whole file was read, the first piece is the end of an older line.
        lines = Array(lines.suffix(count))
        if keepTornEnd && endsWithNewline && !lines.isEmpty { lines[lines.count - 1].append(UInt8(ascii: "\n")) }
        return lines
    }

    // MARK: - Encoding

    /// One line of JSON, keys in a fixed order so lines diff and grep predictably and the
    /// hash of a line never depends on dictionary ordering.
    static func encode(_ record: AuditRecord, prev: String) -> String {
        var json = "{"
        json += "\"time\":" + quoted(RFC3339.string(from: record.time))
        json += ",\"event\":" + quoted(record.event)
        json += ",\"from\":" + (record.from.map { quoted($0.rawValue) } ?? "null")
        json += ",\"to\":" + (record.to.map { quoted($0.rawValue) } ?? "null")
        json += ",\"reason\":" + (record.reason.map(quoted) ?? "null")
        json += ",\"forced\":" + (record.forced ? "true" : "false")
        json += ",\"actor\":" + (record.actor.map(encode(actor:)) ?? "null")
        json += ",\"generation\":" + (record.generation.map { String($0) } ?? "null")
        json += ",\"details\":" + encode(details: record.details)
        json += ",\"prev\":" + quoted(prev)
        return json + "}"
    }

    private static func encode(actor: AuditActor) -> String {
        "{\"uid\":\(actor.uid),\"user\":\(quoted(actor.user)),\"pid\":\(actor.pid)}"
    }

    /// Keys sorted by their UTF-8 bytes: stable across platforms and Swift versions, unlike
    /// `String`'s Unicode-aware comparison.
    private static func encode(details: [String: String]) -> String {
        let pairs = details.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        return "{" + pairs.map { quoted($0.key) + ":" + quoted($0.value) }.joined(separator: ",") + "}"
    }

    /// A JSON string literal (RFC 8259, section 7). Everything below U+0020 and DEL is
    /// written as \u00XX so a reason pasted with a newline or an escape sequence can neither
    /// split the line nor drive an operator's terminal; other characters stay UTF-8.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

