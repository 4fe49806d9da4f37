import CutoverHTTP
import CutoverLoop
import CutoverMetrics
import CutoverRouting

/// One side of a mirrored exchange as the shadow diff compares it: the status, the headers (by
/// name and value hash, framing and ignored names left out), the decoded body's hash and
/// length, and how long it took.
struct ShadowSide {
    var status: UInt16
    /// (name hash, value hash), sorted by name hash; repeated names are folded in order.
    var headers: [(name: UInt64, value: UInt64)]
    var bodyHash: UInt64
    var bodyLength: UInt64
    var micros: UInt64

    /// The header digest of a response head, and the names seen (registered in `names` the
    /// first time, for reports).
    static func headers(_ head: ResponseHead, source: UnsafeRawBufferPointer, fields: UnsafeMutableBufferPointer<HeaderField>,
                        ignored: Set<UInt64>, names: ShadowHeaderNames) -> [(name: UInt64, value: UInt64)] {
        var result: [(name: UInt64, value: UInt64)] = []
        result.reserveCapacity(head.fieldCount)
        for index in 0..<head.fieldCount {
            let field = fields[index]
            // Framing and hop-by-hop: the proxy's business, not the app's answer.
            if field.kind.isResponseFramingOrHopByHop { continue }
            let nameBytes = UnsafeRawBufferPointer(rebasing: source[field.name.lowerBound..<field.name.upperBound])
            let name = ShadowHeaderNames.hashLowercased(nameBytes)
            if ignored.contains(name) { continue }
            names.register(name, nameBytes)
            let value = ShadowHeaderNames.hash(UnsafeRawBufferPointer(rebasing: source[field.value.lowerBound..<field.value.upperBound]))
            if let existing = result.firstIndex(where: { $0.name == name }) {
                result[existing].value = (result[existing].value &* 31) ^ value
            } else {
                result.append((name, value))
            }
        }
        result.sort { $0.name < $1.name }
        return result
    }

    /// Where `other` differs from this side.
    func verdict(against other: ShadowSide, names: ShadowHeaderNames) -> ShadowVerdict {
        var verdict = ShadowVerdict()
        verdict.statusDiffers = status != other.status
        verdict.bodyDiffers = bodyHash != other.bodyHash || bodyLength != other.bodyLength
        var mine = 0
        var theirs = 0
        while mine < headers.count || theirs < other.headers.count {
            if theirs == other.headers.count || (mine < headers.count && headers[mine].name < other.headers[theirs].name) {
                verdict.headersDiffering.append(names.name(headers[mine].name))
                mine += 1
            } else if mine == headers.count || other.headers[theirs].name < headers[mine].name {
                verdict.headersDiffering.append(names.name(other.headers[theirs].name))
                theirs += 1
            } else {
                if headers[mine].value != other.headers[theirs].value { verdict.headersDiffering.append(names.name(headers[mine].name)) }
                mine += 1
                theirs += 1
            }
        }
        return verdict
    }
}

/// Header names by hash, per loop and app: a name becomes a String once, the first time it is
/// seen, never per request. At most `limit` names (an upstream inventing header names must not
/// grow memory): later ones are reported together as `(other)`.
final class ShadowHeaderNames {
    static let limit = 256
    private var names: [UInt64: String] = [:]

    func register(_ hash: UInt64, _ bytes: UnsafeRawBufferPointer) {
        if names[hash] == nil && names.count < Self.limit { names[hash] = String(decoding: bytes, as: UTF8.self).lowercased() }
    }

    func name(_ hash: UInt64) -> String { names[hash] ?? "(other)" }

    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return hash
    }

    static func hashLowercased(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes {
            let lower = byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
            hash = (hash ^ UInt64(lower)) &* 0x0000_0100_0000_01B3
        }
        return hash
    }

    static func hashLowercased(_ name: String) -> UInt64 {
        var name = name
        return name.withUTF8 { hashLowercased(UnsafeRawBufferPointer($0)) }
    }
}

/// The comparison of one mirrored request: waits for the primary, the candidate and (with
/// noise on) a second stable server, then records what differed. Any side may finish first;
/// a failed primary means nothing is compared, a failed noise copy means no noise figure.
final class ShadowComparison {
    enum Role { case candidate, noise }

    let stats: ShadowStats
    let names: ShadowHeaderNames
    /// Hashes of `mirror_ignore_headers`.
    let ignored: Set<UInt64>
    /// When the copies were sent: both sides' latencies are measured from here.
    let startedNs: Int64
    /// The primary's status and headers, kept from its response head until its body ends.
    var primaryHead: ShadowSide?
    /// The primary's decoded body as it is relayed (FNV-1a 64).
    var primaryDigest = BodyRelay.digestBasis
    private var primary: ShadowSide?
    private var primaryDone = false
    private var candidate: ShadowSide?
    private var candidateDone = false
    private var noise: ShadowSide?
    private var noiseDone: Bool
    private var settled = false
    /// The access log's mirror line for this copy (slot -1: none).
    var log: (ring: AccessLogRing, slot: Int32, appID: Int32)?
    /// Where the candidate copy went, for the mirror line.
    var candidateServer: (id: Int, pool: PoolID) = (-1, .green)

    init(stats: ShadowStats, names: ShadowHeaderNames, ignored: Set<UInt64>, expectsNoise: Bool, startedNs: Int64) {
        self.stats = stats
        self.names = names
        self.ignored = ignored
        self.startedNs = startedNs
        noiseDone = !expectsNoise
    }

    func primaryFinished(_ side: ShadowSide?, atNanoseconds now: Int64) {
        guard !primaryDone else { return }
        primaryDone = true
        primary = side
        settle(atNanoseconds: now)
    }

    func copyFinished(_ role: Role, _ side: ShadowSide?, atNanoseconds now: Int64) {
        switch role {
        case .candidate:
            candidateDone = true
            candidate = side
            if side == nil { stats.count(\.candidateFailed, atSecond: now / 1_000_000_000) }
        case .noise:
            noiseDone = true
            noise = side
        }
        settle(atNanoseconds: now)
    }

    private func settle(atNanoseconds now: Int64) {
        let second = now / 1_000_000_000
        guard !settled, primaryDone, candidateDone, noiseDone else { return }
        settled = true
        var differences: UInt8 = 0
        if primary == nil { differences |= ShadowDifference.primaryFailed }
        if candidate == nil { differences |= ShadowDifference.candidateFailed }
        if primary == nil { stats.count(\.primaryFailed, atSecond: second) }
        if let primary, let candidate {
            let verdict = primary.verdict(against: candidate, names: names)
            stats.compared(candidate: verdict, noise: noise.map { primary.verdict(against: $0, names: names) },
                           candidateMicros: candidate.micros, primaryMicros: primary.micros, atSecond: second)
            if verdict.statusDiffers { differences |= ShadowDifference.status }
            if verdict.headersDiffering.contains(where: { !stats.isNoisy($0) }) { differences |= ShadowDifference.headers }
            if verdict.bodyDiffers { differences |= ShadowDifference.body }
        }
        if let log {
            log.ring.finishMirror(log.slot, endNs: now, appID: log.appID, pool: candidateServer.pool,
                                  serverID: candidateServer.id, status: candidate?.status ?? 0, primaryStatus: primary?.status ?? 0,
                                  differences: differences, candidateMicros: Int64(candidate?.micros ?? 0),
                                  primaryMicros: primary.map { Int64($0.micros) } ?? -1)
        }
    }
}
