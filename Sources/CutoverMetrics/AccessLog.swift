import CutoverRouting
import CutoverConfig
import CutoverSystem
import Foundation
import Synchronization

/// A byte field of an access-log record: up to `Room` bytes inline (longer input is cut), so a
/// record is one fixed-size value with no reference to anything.
package struct RecordText<let Room: Int> {
    private var bytes = InlineArray<Room, UInt8>(repeating: 0)
    private(set) var count: UInt16 = 0
    /// The input was longer than the room.
    private(set) var truncated = false

    package init() {}

    @inline(__always)
    package mutating func set(_ source: UnsafeRawBufferPointer) {
        let length = min(source.count, Room)
        if length > 0 {
            withUnsafeMutableBytes(of: &bytes) { $0.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: length) }
        }
        count = UInt16(length)
        truncated = source.count > length
    }

    package mutating func clear() {
        count = 0
        truncated = false
    }

    /// The bytes, valid for the call.
    package mutating func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        let length = Int(count)
        return withUnsafeBytes(of: &bytes) { body(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
    }
}

/// One access-log record. The loop fills the request part when it parses the head and the
/// outcome when the exchange ends; the writer thread turns it into a JSON line. Long fields are
/// cut to their room (the path to 512 bytes).
package struct AccessRecord {
    var endNs: Int64 = 0
    var durationMicros: Int64 = 0
    /// -1: no response head came.
    var upstreamMicros: Int64 = -1
    var bytesIn: UInt64 = 0
    var bytesOut: UInt64 = 0
    /// The id generated when the request carried none ((0, 0): none).
    var generatedID: (high: UInt64, low: UInt64) = (0, 0)
    /// Numbers in the server and app registries (-1: none).
    var serverID: Int64 = -1
    var appID: Int32 = -1
    var status: UInt16 = 0
    /// A mirror line: the primary's status (0: the primary failed).
    var primaryStatus: UInt16 = 0
    /// What the line is about: a request, or the comparison of a mirrored copy.
    var kind: AccessRecordKind = .request
    /// The listener a request came in on.
    var listener: ListenerKind = .main
    /// A TLS connection's protocol version and cipher: libssl's static strings (nil: plain).
    var tlsVersion: UnsafePointer<CChar>? = nil
    var tlsCipher: UnsafePointer<CChar>? = nil
    /// A mirror line's differences: `ShadowDifference` bits.
    var differences: UInt8 = 0
    /// Pool index + 1 (0: none).
    var pool: UInt8 = 0
    /// Upstream failure kind + 1 (0: none).
    var error: UInt8 = 0
    var termination: Termination = .none
    var method = RecordText<16>()
    var client = RecordText<48>()
    var requestID = RecordText<128>()
    var host = RecordText<128>()
    var path = RecordText<512>()
}

package enum AccessRecordKind: UInt8 {
    case request
    case mirror
}

/// What a mirror line reports as different, as bits.
package enum ShadowDifference {
    package static let status: UInt8 = 1
    package static let headers: UInt8 = 2
    package static let body: UInt8 = 4
    package static let candidateFailed: UInt8 = 8
    package static let primaryFailed: UInt8 = 16
}

/// Why an exchange ended short of its full response, apart from an upstream failure: the
/// access log's `error` when no upstream failure explains it.
package enum Termination: UInt8 {
    case none = 0
    /// The client closed or reset the connection first.
    case clientClosed
    /// The client stopped sending its request or reading its response for `client_body`.
    case clientTimeout
    /// The proxy stopped and the drain deadline passed.
    case drainTimeout

    var label: StaticString {
        switch self {
        case .none: return ""
        case .clientClosed: return "client_closed"
        case .clientTimeout: return "client_timeout"
        case .drainTimeout: return "drain_timeout"
        }
    }
}

/// One loop's share of the access log: a pool of record slots and two single-producer,
/// single-consumer queues of slot numbers — finished records to the writer, written slots back
/// to the loop. The loop never waits: with no free slot the line is counted as dropped.
package final class AccessLogRing: @unchecked Sendable {
    let capacity: Int
    private let slots: UnsafeMutablePointer<AccessRecord>
    /// Free slot numbers; touched only by the loop (capacity reserved up front, never grows).
    private var free: [Int32]
    private let finished: UnsafeMutablePointer<Int32>
    private let finishedRead = Atomic<Int>(0)   // writer
    private let finishedWrite = Atomic<Int>(0)  // loop
    private let returned: UnsafeMutablePointer<Int32>
    private let returnedRead = Atomic<Int>(0)   // loop
    private let returnedWrite = Atomic<Int>(0)  // writer
    /// Lines lost because every slot was waiting for the writer (written by the loop only).
    let dropped = Atomic<UInt64>(0)

    package init(capacity: Int) {
        self.capacity = capacity
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: AccessRecord(), count: capacity)
        finished = .allocate(capacity: capacity)
        returned = .allocate(capacity: capacity)
        free = []
        free.reserveCapacity(capacity)
        for index in (0..<Int32(capacity)).reversed() { free.append(index) }
    }

    deinit {
        slots.deinitialize(count: capacity)
        slots.deallocate()
        finished.deallocate()
        returned.deallocate()
    }

    @inline(__always)
    func record(_ slot: Int32) -> UnsafeMutablePointer<AccessRecord> { slots + Int(slot) }

    // MARK: Loop side

    /// A slot for a new record, or -1 (counted as a dropped line) when the writer is behind.
    package func claim() -> Int32 {
        if free.isEmpty {
            var read = returnedRead.load(ordering: .relaxed)
            let written = returnedWrite.load(ordering: .acquiring)
            while read < written {
                free.append(returned[read % capacity])
                read += 1
            }
            returnedRead.store(read, ordering: .releasing)
        }
        guard let slot = free.popLast() else {
            dropped.store(dropped.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
            return -1
        }
        return slot
    }

    /// Hands a completed record to the writer.
    func publish(_ slot: Int32) {
        let written = finishedWrite.load(ordering: .relaxed)
        finished[written % capacity] = slot
        finishedWrite.store(written + 1, ordering: .releasing)
    }

    // MARK: Writer side

    /// Visits every finished record in order, then gives the slots back. Returns the count.
    package func consume(_ visit: (UnsafeMutablePointer<AccessRecord>) -> Void) -> Int {
        var read = finishedRead.load(ordering: .relaxed)
        let written = finishedWrite.load(ordering: .acquiring)
        let count = written - read
        var back = returnedWrite.load(ordering: .relaxed)
        while read < written {
            let slot = finished[read % capacity]
            visit(record(slot))
            returned[back % capacity] = slot
            back += 1
            read += 1
        }
        finishedRead.store(read, ordering: .relaxed)
        returnedWrite.store(back, ordering: .releasing)
        return count
    }
}

extension AccessLogRing {
    /// Fills the request part of a record from the parsed head (loop thread).
    @inline(__always)
    package func fillRequest(_ slot: Int32, method: UnsafeRawBufferPointer, host: UnsafeRawBufferPointer,
                     target: UnsafeRawBufferPointer, requestID: UnsafeRawBufferPointer, generatedID: (UInt64, UInt64),
                     client: UnsafeRawBufferPointer) {
        let record = record(slot)
        record.pointee.method.set(method)
        record.pointee.host.set(host)
        record.pointee.requestID.set(requestID)
        record.pointee.client.set(client)
        record.pointee.path.set(target)
        record.pointee.generatedID = generatedID
        record.pointee.kind = .request
        record.pointee.listener = .main
        record.pointee.tlsVersion = nil
        record.pointee.tlsCipher = nil
    }

    /// Marks a filled record as a preview (or redirect) listener's request.
    package func markListener(_ slot: Int32, _ kind: ListenerKind) {
        record(slot).pointee.listener = kind
    }

    /// Marks a filled record as a TLS connection's request; `version` and `cipher` must be
    /// static strings (libssl's names live as long as the process).
    package func markTLS(_ slot: Int32, version: UnsafePointer<CChar>?, cipher: UnsafePointer<CChar>?) {
        record(slot).pointee.tlsVersion = version
        record(slot).pointee.tlsCipher = cipher
    }

    /// Finishes a mirror line (loop thread): the copy's server, pool, status and latency next
    /// to the primary's, and what differed.
    package func finishMirror(_ slot: Int32, endNs: Int64, appID: Int32, pool: PoolID, serverID: Int, status: UInt16,
                              primaryStatus: UInt16, differences: UInt8, candidateMicros: Int64, primaryMicros: Int64) {
        let record = record(slot)
        record.pointee.kind = .mirror
        record.pointee.endNs = endNs
        record.pointee.durationMicros = candidateMicros
        record.pointee.upstreamMicros = primaryMicros
        record.pointee.bytesIn = 0
        record.pointee.bytesOut = 0
        record.pointee.serverID = Int64(serverID)
        record.pointee.appID = appID
        record.pointee.status = status
        record.pointee.primaryStatus = primaryStatus
        record.pointee.pool = pool.index + 1
        record.pointee.differences = differences
        record.pointee.error = 0
        record.pointee.termination = .none
        publish(slot)
    }

    /// A record for a request whose head could not be parsed: no request fields.
    package func clearRequest(_ slot: Int32, client: UnsafeRawBufferPointer) {
        let record = record(slot)
        record.pointee.method.clear()
        record.pointee.host.clear()
        record.pointee.requestID.clear()
        record.pointee.path.clear()
        record.pointee.generatedID = (0, 0)
        record.pointee.client.set(client)
        record.pointee.kind = .request
        record.pointee.listener = .main
    }

    /// Fills the outcome and hands the record to the writer (loop thread).
    @inline(__always)
    package func finish(_ slot: Int32, endNs: Int64, sample: RequestSample, error: WindowedStats.Outcome?,
                termination: Termination, serverID: Int, appID: Int32, pool: PoolID?) {
        let record = record(slot)
        record.pointee.endNs = endNs
        record.pointee.durationMicros = Int64(sample.latencyMicros)
        record.pointee.upstreamMicros = sample.upstreamMicros
        record.pointee.bytesIn = sample.bytesIn
        record.pointee.bytesOut = sample.bytesOut
        record.pointee.serverID = Int64(serverID)
        record.pointee.appID = appID
        record.pointee.status = sample.status
        record.pointee.pool = pool.map { $0.index + 1 } ?? 0
        record.pointee.error = error.map { UInt8($0.rawValue) + 1 } ?? 0
        record.pointee.termination = termination
        publish(slot)
    }
}

/// The access log: JSON lines written by one thread from every loop's ring, so a loop never
/// blocks on the disk. `reopen` (admin command, SIGUSR1) switches to a fresh file after
/// logrotate moved the old one.
public final class AccessLog: @unchecked Sendable {
    public let target: AccessLogTarget
    package let rings: [AccessLogRing]
    private let serverNames: @Sendable () -> [String]
    private let appNames: @Sendable () -> [String]
    /// Held while records are taken from the rings and written: the writer thread and `flush`
    /// never interleave. Nothing else waits for it (a write may block on a slow disk or pipe).
    private let writeLock = NSLock()
    private var file: OpenFile
    /// A file opened by `reopen`, taken up by the writer before its next write.
    private let reopened = Mutex<OpenFile?>(nil)
    private var formatter = AccessLogFormatter()
    private let lostOnWrite = Atomic<UInt64>(0)
    private let stopRequested = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private var threadStarted = false

    /// Slots per loop: at 1 KiB each, 4 MiB of address space per loop, touched as used.
    public static let slotsPerLoop = 4096
    /// How often the writer looks for new records when idle.
    static let pollMs = 20

    /// Opens the file (appending, created 0640) or stdout. Throws when the file cannot be opened.
    public init(target: AccessLogTarget, loops: Int, serverNames: @escaping @Sendable () -> [String],
                appNames: @escaping @Sendable () -> [String], slotsPerLoop: Int = AccessLog.slotsPerLoop) throws {
        self.target = target
        self.serverNames = serverNames
        self.appNames = appNames
        rings = (0..<loops).map { _ in AccessLogRing(capacity: slotsPerLoop) }
        switch target {
        case .off, .stdout:
            file = .standardOutput
        case .file(let path):
            file = try Self.open(path)
        }
    }

    static func open(_ path: String) throws -> OpenFile {
        do {
            return try OpenFile.appending(path, mode: 0o640)
        } catch {
            throw StartupError("access_log \(path): \(error.reason)")
        }
    }

    public func start() {
        threadStarted = true
        let thread = Thread { [self] in
            while !stopRequested.load(ordering: .acquiring) {
                if drain() == 0 { _ = wake.wait(timeout: .now() + .milliseconds(Self.pollMs)) }
            }
            drain()
            stopped.signal()
        }
        thread.name = "cutover-access-log"
        thread.start()
    }

    /// Writes what the loops finished, then stops the writer. Gives up waiting after 5 s (the
    /// disk or the pipe behind stdout is stuck): stopping the proxy never hangs on its log.
    public func stop() {
        guard threadStarted else { return }
        threadStarted = false
        stopRequested.store(true, ordering: .releasing)
        wake.signal()
        _ = stopped.wait(timeout: .now() + .seconds(5))
    }

    /// Writes every record finished so far (tests, shutdown).
    public func flush() { drain() }

    /// Lines lost: the writer fell behind (no free slot), or the file refused the write.
    public var dropped: UInt64 {
        rings.reduce(0) { $0 + $1.dropped.load(ordering: .relaxed) } + lostOnWrite.load(ordering: .relaxed)
    }

    /// Opens the configured path again; the writer continues there from its next batch (lines
    /// of the batch under way finish in the old file). Nil when done, else why not — the old
    /// file then stays in use. Never waits for the writer.
    public func reopen() -> String? {
        guard case .file(let path) = target else { return "access_log is \(target == .stdout ? "stdout" : "off"): nothing to reopen" }
        let fresh: OpenFile
        do { fresh = try Self.open(path) } catch { return "\(error)" }
        // Two reopens before one batch: the newer wins (the older closes when released).
        reopened.withLock { $0 = fresh }
        wake.signal()
        return nil
    }

    @discardableResult
    private func drain() -> Int {
        writeLock.withLock { drainLocked() }
    }

    private func drainLocked() -> Int {
        if let fresh = reopened.withLock({ pending -> OpenFile? in
            defer { pending = nil }
            return pending
        }) {
            file = fresh  // the old file closes when released
        }
        // Names are read when a record needs them (an idle writer takes no lock every 20 ms).
        var servers: [String] = []
        var apps: [String] = []
        let wallOffset = realtimeNanoseconds() - monotonicNanoseconds()
        var total = 0
        for ring in rings {
            total += ring.consume { record in
                // An app or server registered after the names were read (a reload): read again.
                if Int(record.pointee.appID) >= apps.count { apps = appNames() }
                if Int(record.pointee.serverID) >= servers.count { servers = serverNames() }
                formatter.format(record, wallOffset: wallOffset, servers: servers, apps: apps)
                if formatter.line.count > 192 * 1024 { writeOut() }
            }
        }
        writeOut()
        return total
    }

    private func writeOut() {
        guard !formatter.line.isEmpty else { return }
        let ok = formatter.line.withUnsafeBytes { bytes -> Bool in
            do {
                try file.writeAll(bytes)
                return true
            } catch {
                return false
            }
        }
        if !ok { lostOnWrite.add(UInt64(formatter.line.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }), ordering: .relaxed) }
        formatter.line.removeAll(keepingCapacity: true)
    }
}

/// Turns access-log records into JSON lines, appended to `line` (the writer thread's; no
/// allocation once `line` has grown). The time up to the second is formatted once a second.
struct AccessLogFormatter {
    /// The lines formatted and not yet written.
    var line: [UInt8] = []
    private var cachedSecond: Int64 = -1
    private var cachedSecondText: [UInt8] = []

    init() {
    }


    mutating func format(_ record: UnsafeMutablePointer<AccessRecord>, wallOffset: Int64, servers: [String], apps: [String]) {
        append("{\"time\":\"")
        appendTime(record.pointee.endNs + wallOffset)
        append(record.pointee.kind == .mirror ? "\",\"type\":\"mirror" : "\",\"type\":\"request")
        append("\",\"request_id\":")
        let generated = record.pointee.generatedID
        if record.pointee.requestID.count > 0 {
            record.pointee.requestID.withBytes { appendString($0) }
        } else if generated.high == 0 && generated.low == 0 {
            append("null")
        } else {
            line.append(0x22)
            appendHex16(generated.high)
            appendHex16(generated.low)
            line.append(0x22)
        }
        append(",\"client\":")
        record.pointee.client.withBytes { appendString($0) }
        // A parsed request always has a method: without one, the head could not be parsed
        // (400, 408) and method, host and path are unknown.
        if record.pointee.method.count == 0 {
            append(",\"method\":null,\"host\":null,\"path\":null")
        } else {
            append(",\"method\":")
            record.pointee.method.withBytes { appendString($0) }
            append(",\"host\":")
            record.pointee.host.withBytes { appendString($0) }
            append(",\"path\":")
            let truncated = record.pointee.path.truncated
            record.pointee.path.withBytes { appendString($0, truncated: truncated) }
        }
        append(",\"status\":")
        if record.pointee.kind == .mirror && record.pointee.differences & ShadowDifference.candidateFailed != 0 {
            append("null")
        } else {
            appendNumber(Int64(record.pointee.status))
        }
        if record.pointee.kind == .request {
            switch record.pointee.listener {
            case .main: append(",\"listener\":\"main\"")
            case .preview: append(",\"listener\":\"preview\"")
            case .redirect: append(",\"listener\":\"redirect\"")
            }
            if let version = record.pointee.tlsVersion, let cipher = record.pointee.tlsCipher {
                append(",\"tls_version\":")
                appendString(UnsafeRawBufferPointer(start: version, count: strlen(version)))
                append(",\"tls_cipher\":")
                appendString(UnsafeRawBufferPointer(start: cipher, count: strlen(cipher)))
            }
        }
        let appID = Int(record.pointee.appID)
        append(",\"app\":")
        if appID >= 0 && appID < apps.count { appendString(apps[appID]) } else { append("null") }
        // The pool is named by its color (the field operators know from earlier releases).
        append(",\"color\":")
        let pool = Int(record.pointee.pool)
        if pool > 0 && pool <= PoolID.all.count { appendString(PoolID.all[pool - 1].name) } else { append("null") }
        append(",\"server\":")
        let serverID = Int(record.pointee.serverID)
        if serverID >= 0 && serverID < servers.count { appendString(servers[serverID]) } else { append("null") }
        if record.pointee.kind == .mirror {
            formatMirrorTail(record)
            return
        }
        append(",\"bytes_in\":")
        appendNumber(Int64(bitPattern: record.pointee.bytesIn))
        append(",\"bytes_out\":")
        appendNumber(Int64(bitPattern: record.pointee.bytesOut))
        append(",\"duration_us\":")
        appendNumber(record.pointee.durationMicros)
        append(",\"upstream_us\":")
        let upstream = record.pointee.upstreamMicros
        if upstream >= 0 { appendNumber(upstream) } else { append("null") }
        append(",\"error\":")
        let error = Int(record.pointee.error)
        if error > 0, let kind = WindowedStats.Outcome(rawValue: error - 1) {
            appendString(kind.label)
        } else if record.pointee.termination != .none {
            line.append(0x22)
            append(record.pointee.termination.label)
            line.append(0x22)
        } else {
            append("null")
        }
        append("}\n")
    }

    /// A mirror line after `server`: the primary's status, what differed, both latencies.
    private mutating func formatMirrorTail(_ record: UnsafeMutablePointer<AccessRecord>) {
        let differences = record.pointee.differences
        append(",\"primary_status\":")
        if differences & ShadowDifference.primaryFailed != 0 { append("null") } else { appendNumber(Int64(record.pointee.primaryStatus)) }
        append(",\"diff\":[")
        var first = true
        for (bit, name) in [(ShadowDifference.status, "\"status\"" as StaticString), (ShadowDifference.headers, "\"headers\""),
                            (ShadowDifference.body, "\"body\"")] where differences & bit != 0 {
            if !first { line.append(0x2C) }
            append(name)
            first = false
        }
        append("],\"duration_us\":")
        appendNumber(record.pointee.durationMicros)
        append(",\"primary_us\":")
        let primary = record.pointee.upstreamMicros
        if primary >= 0 { appendNumber(primary) } else { append("null") }
        append(",\"error\":")
        if differences & ShadowDifference.candidateFailed != 0 {
            append("\"candidate_failed\"")
        } else if differences & ShadowDifference.primaryFailed != 0 {
            append("\"primary_failed\"")
        } else {
            append("null")
        }
        append("}\n")
    }

    private mutating func append(_ text: StaticString) {
        line.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    private mutating func appendString(_ text: String) {
        var copy = text
        copy.withUTF8 { appendString(UnsafeRawBufferPointer($0)) }
    }

    /// A JSON string of raw bytes. Request bytes are not necessarily UTF-8: bytes outside
    /// printable ASCII are written as \u00XX (read as Latin-1), so every line is valid JSON.
    private mutating func appendString(_ bytes: UnsafeRawBufferPointer, truncated: Bool = false) {
        line.append(0x22)
        Escaping.append(bytes, .jsonASCII, to: &line)
        if truncated { append("...") }
        line.append(0x22)
    }

    private mutating func appendHexDigit(_ value: UInt8) {
        line.append(value < 10 ? 0x30 + value : 0x61 + value - 10)
    }

    private mutating func appendHex16(_ value: UInt64) {
        for shift in stride(from: 60, through: 0, by: -4) { appendHexDigit(UInt8((value >> UInt64(shift)) & 0x0F)) }
    }

    private mutating func appendNumber(_ value: Int64) {
        if value < 0 {
            line.append(0x2D)
            appendNumber(value == .min ? .max : -value)
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: enough for 19 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            var remaining = UInt64(value)
            var count = 0
            repeat {
                buffer[count] = 0x30 + UInt8(remaining % 10)
                remaining /= 10
                count += 1
            } while remaining > 0
            while count > 0 {
                count -= 1
                line.append(buffer[count])
            }
        }
    }

    /// RFC 3339 UTC with milliseconds; the part up to the second is formatted once a second.
    private mutating func appendTime(_ wallNs: Int64) {
        let second = wallNs / 1_000_000_000
        if second != cachedSecond {
            var seconds = time_t(second)
            var parts = tm()
            gmtime_r(&seconds, &parts)
            let text = String(format: "%04d-%02d-%02dT%02d:%02d:%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                              Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
            cachedSecond = second
            cachedSecondText = Array(text.utf8)
        }
        line.append(contentsOf: cachedSecondText)
        line.append(0x2E)
        let millis = Int((wallNs / 1_000_000) % 1_000)
        line.append(0x30 + UInt8(millis / 100))
        line.append(0x30 + UInt8(millis / 10 % 10))
        line.append(0x30 + UInt8(millis % 10))
        line.append(0x5A)
    }
}
