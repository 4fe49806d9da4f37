import CutoverRouting
import CutoverConfig
import CutoverSystem
import Foundation
import Synchronization

/// One access-log record: a fixed 1 KiB slot of raw memory. The loop fills the request part
/// when it parses the head and the outcome when the exchange ends; the writer thread turns it
/// into a JSON line. Long fields are cut to their room (the path to 512 bytes).
enum AccessRecord {
    static let size = 1024
    // Numbers.
    static let endNs = 0, durationMicros = 8, upstreamMicros = 16, bytesIn = 24, bytesOut = 32
    static let generatedIDHigh = 40, generatedIDLow = 48, serverID = 56, appID = 64
    static let status = 68, pool = 70, error = 71
    // Lengths of the byte fields below.
    static let methodLength = 72, hostLength = 73, requestIDLength = 74, clientLength = 75
    static let pathLength = 76, pathTruncated = 78, termination = 79
    // Byte fields and their room.
    static let method = 80, methodRoom = 16
    static let client = 96, clientRoom = 48
    static let requestID = 144, requestIDRoom = 128
    static let host = 272, hostRoom = 128
    static let path = 400, pathRoom = 512
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
    private let slots: UnsafeMutableRawPointer
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
        slots = .allocate(byteCount: capacity * AccessRecord.size, alignment: 64)
        finished = .allocate(capacity: capacity)
        returned = .allocate(capacity: capacity)
        free = []
        free.reserveCapacity(capacity)
        for index in (0..<Int32(capacity)).reversed() { free.append(index) }
    }

    deinit {
        slots.deallocate()
        finished.deallocate()
        returned.deallocate()
    }

    @inline(__always)
    func record(_ slot: Int32) -> UnsafeMutableRawPointer { slots + Int(slot) * AccessRecord.size }

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
    package func consume(_ visit: (UnsafeRawPointer) -> Void) -> Int {
        var read = finishedRead.load(ordering: .relaxed)
        let written = finishedWrite.load(ordering: .acquiring)
        let count = written - read
        var back = returnedWrite.load(ordering: .relaxed)
        while read < written {
            let slot = finished[read % capacity]
            visit(UnsafeRawPointer(record(slot)))
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
        let base = record(slot)
        Self.copy(method, to: base, at: AccessRecord.method, room: AccessRecord.methodRoom, length: AccessRecord.methodLength)
        Self.copy(host, to: base, at: AccessRecord.host, room: AccessRecord.hostRoom, length: AccessRecord.hostLength)
        Self.copy(requestID, to: base, at: AccessRecord.requestID, room: AccessRecord.requestIDRoom, length: AccessRecord.requestIDLength)
        Self.copy(client, to: base, at: AccessRecord.client, room: AccessRecord.clientRoom, length: AccessRecord.clientLength)
        let pathCount = min(target.count, AccessRecord.pathRoom)
        if pathCount > 0 { (base + AccessRecord.path).copyMemory(from: target.baseAddress!, byteCount: pathCount) }
        base.storeBytes(of: UInt16(pathCount), toByteOffset: AccessRecord.pathLength, as: UInt16.self)
        base.storeBytes(of: target.count > pathCount ? 1 : 0, toByteOffset: AccessRecord.pathTruncated, as: UInt8.self)
        base.storeBytes(of: generatedID.0, toByteOffset: AccessRecord.generatedIDHigh, as: UInt64.self)
        base.storeBytes(of: generatedID.1, toByteOffset: AccessRecord.generatedIDLow, as: UInt64.self)
    }

    /// A record for a request whose head could not be parsed: no request fields.
    package func clearRequest(_ slot: Int32, client: UnsafeRawBufferPointer) {
        let base = record(slot)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.methodLength, as: UInt8.self)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.hostLength, as: UInt8.self)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.requestIDLength, as: UInt8.self)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.pathLength, as: UInt16.self)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.pathTruncated, as: UInt8.self)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.generatedIDHigh, as: UInt64.self)
        base.storeBytes(of: 0, toByteOffset: AccessRecord.generatedIDLow, as: UInt64.self)
        Self.copy(client, to: base, at: AccessRecord.client, room: AccessRecord.clientRoom, length: AccessRecord.clientLength)
    }

    /// Fills the outcome and hands the record to the writer (loop thread).
    @inline(__always)
    package func finish(_ slot: Int32, endNs: Int64, sample: RequestSample, error: WindowedStats.Outcome?,
                termination: Termination, serverID: Int, appID: Int32, pool: PoolID?) {
        let base = record(slot)
        base.storeBytes(of: endNs, toByteOffset: AccessRecord.endNs, as: Int64.self)
        base.storeBytes(of: Int64(sample.latencyMicros), toByteOffset: AccessRecord.durationMicros, as: Int64.self)
        base.storeBytes(of: sample.upstreamMicros, toByteOffset: AccessRecord.upstreamMicros, as: Int64.self)
        base.storeBytes(of: sample.bytesIn, toByteOffset: AccessRecord.bytesIn, as: UInt64.self)
        base.storeBytes(of: sample.bytesOut, toByteOffset: AccessRecord.bytesOut, as: UInt64.self)
        base.storeBytes(of: Int64(serverID), toByteOffset: AccessRecord.serverID, as: Int64.self)
        base.storeBytes(of: appID, toByteOffset: AccessRecord.appID, as: Int32.self)
        base.storeBytes(of: sample.status, toByteOffset: AccessRecord.status, as: UInt16.self)
        base.storeBytes(of: pool.map { $0.index + 1 } ?? 0, toByteOffset: AccessRecord.pool, as: UInt8.self)
        base.storeBytes(of: error.map { UInt8($0.rawValue) + 1 } ?? 0, toByteOffset: AccessRecord.error, as: UInt8.self)
        base.storeBytes(of: termination.rawValue, toByteOffset: AccessRecord.termination, as: UInt8.self)
        publish(slot)
    }

    @inline(__always)
    private static func copy(_ bytes: UnsafeRawBufferPointer, to base: UnsafeMutableRawPointer, at offset: Int, room: Int, length: Int) {
        let count = min(bytes.count, room)
        if count > 0 { (base + offset).copyMemory(from: bytes.baseAddress!, byteCount: count) }
        base.storeBytes(of: UInt8(count), toByteOffset: length, as: UInt8.self)
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
    private var line: [UInt8] = []
    private let lostOnWrite = Atomic<UInt64>(0)
    private let stopRequested = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private var threadStarted = false
    private var cachedSecond: Int64 = -1
    private var cachedSecondText: [UInt8] = []

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
        line.reserveCapacity(256 * 1024)
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
                if Int(record.loadUnaligned(fromByteOffset: AccessRecord.appID, as: Int32.self)) >= apps.count { apps = appNames() }
                if Int(record.loadUnaligned(fromByteOffset: AccessRecord.serverID, as: Int64.self)) >= servers.count { servers = serverNames() }
                formatLine(record, wallOffset: wallOffset, servers: servers, apps: apps)
                if line.count > 192 * 1024 { writeOut() }
            }
        }
        writeOut()
        return total
    }

    private func writeOut() {
        guard !line.isEmpty else { return }
        let ok = line.withUnsafeBytes { bytes -> Bool in
            do {
                try file.writeAll(bytes)
                return true
            } catch {
                return false
            }
        }
        if !ok { lostOnWrite.add(UInt64(line.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }), ordering: .relaxed) }
        line.removeAll(keepingCapacity: true)
    }

    // MARK: Formatting

    private func formatLine(_ record: UnsafeRawPointer, wallOffset: Int64, servers: [String], apps: [String]) {
        func int64(_ offset: Int) -> Int64 { record.loadUnaligned(fromByteOffset: offset, as: Int64.self) }
        func byte(_ offset: Int) -> Int { Int(record.load(fromByteOffset: offset, as: UInt8.self)) }
        func bytes(_ offset: Int, _ count: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: record + offset, count: count) }

        append("{\"time\":\"")
        appendTime(int64(AccessRecord.endNs) + wallOffset)
        append("\",\"request_id\":")
        let idLength = byte(AccessRecord.requestIDLength)
        if idLength > 0 {
            appendString(bytes(AccessRecord.requestID, idLength))
        } else if int64(AccessRecord.generatedIDHigh) == 0 && int64(AccessRecord.generatedIDLow) == 0 {
            append("null")
        } else {
            line.append(0x22)
            appendHex16(UInt64(bitPattern: int64(AccessRecord.generatedIDHigh)))
            appendHex16(UInt64(bitPattern: int64(AccessRecord.generatedIDLow)))
            line.append(0x22)
        }
        append(",\"client\":")
        appendString(bytes(AccessRecord.client, byte(AccessRecord.clientLength)))
        // A parsed request always has a method: without one, the head could not be parsed
        // (400, 408) and method, host and path are unknown.
        let methodLength = byte(AccessRecord.methodLength)
        if methodLength == 0 {
            append(",\"method\":null,\"host\":null,\"path\":null")
        } else {
            append(",\"method\":")
            appendString(bytes(AccessRecord.method, methodLength))
            append(",\"host\":")
            appendString(bytes(AccessRecord.host, byte(AccessRecord.hostLength)))
            append(",\"path\":")
            let pathLength = Int(record.loadUnaligned(fromByteOffset: AccessRecord.pathLength, as: UInt16.self))
            appendString(bytes(AccessRecord.path, pathLength), truncated: byte(AccessRecord.pathTruncated) != 0)
        }
        append(",\"status\":")
        appendNumber(Int64(record.loadUnaligned(fromByteOffset: AccessRecord.status, as: UInt16.self)))
        let appID = Int(record.loadUnaligned(fromByteOffset: AccessRecord.appID, as: Int32.self))
        append(",\"app\":")
        if appID >= 0 && appID < apps.count { appendString(apps[appID]) } else { append("null") }
        // The pool is named by its color (the field operators know from earlier releases).
        append(",\"color\":")
        let pool = Int(byte(AccessRecord.pool))
        if pool > 0 && pool <= PoolID.all.count { appendString(PoolID.all[pool - 1].name) } else { append("null") }
        append(",\"server\":")
        let serverID = Int(int64(AccessRecord.serverID))
        if serverID >= 0 && serverID < servers.count { appendString(servers[serverID]) } else { append("null") }
        append(",\"bytes_in\":")
        appendNumber(int64(AccessRecord.bytesIn))
        append(",\"bytes_out\":")
        appendNumber(int64(AccessRecord.bytesOut))
        append(",\"duration_us\":")
        appendNumber(int64(AccessRecord.durationMicros))
        append(",\"upstream_us\":")
        let upstream = int64(AccessRecord.upstreamMicros)
        if upstream >= 0 { appendNumber(upstream) } else { append("null") }
        append(",\"error\":")
        let error = byte(AccessRecord.error)
        if error > 0, let kind = WindowedStats.Outcome(rawValue: error - 1) {
            appendString(kind.label)
        } else if let termination = Termination(rawValue: UInt8(byte(AccessRecord.termination))), termination != .none {
            line.append(0x22)
            append(termination.label)
            line.append(0x22)
        } else {
            append("null")
        }
        append("}\n")
    }

    private func append(_ text: StaticString) {
        line.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    private func appendString(_ text: String) {
        var copy = text
        copy.withUTF8 { appendString(UnsafeRawBufferPointer($0)) }
    }

    /// A JSON string of raw bytes. Request bytes are not necessarily UTF-8: bytes outside
    /// printable ASCII are written as \u00XX (read as Latin-1), so every line is valid JSON.
    private func appendString(_ bytes: UnsafeRawBufferPointer, truncated: Bool = false) {
        line.append(0x22)
        Escaping.append(bytes, .jsonASCII, to: &line)
        if truncated { append("...") }
        line.append(0x22)
    }

    private func appendHexDigit(_ value: UInt8) {
        line.append(value < 10 ? 0x30 + value : 0x61 + value - 10)
    }

    private func appendHex16(_ value: UInt64) {
        for shift in stride(from: 60, through: 0, by: -4) { appendHexDigit(UInt8((value >> UInt64(shift)) & 0x0F)) }
    }

    private func appendNumber(_ value: Int64) {
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
    private func appendTime(_ wallNs: Int64) {
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
