import CutoverConfig
import CutoverRouting
import Synchronization

/// What the data plane tells the control plane, without ever calling into it: per-pool
/// requests in flight and open upstream connections, and per-server connect failures (passive
/// health checks). The control plane reads and sums; the data plane only writes.
///
/// Each loop writes its own cache-line-padded slots (a relaxed load and store, no contended
/// read-modify-write on the request path); failures are rare and use one shared counter per
/// server.
public final class DataPlaneCounters: @unchecked Sendable {
    public static let maxServers = 4096
    private static let slotStride = 16  // 128 bytes per loop: no false sharing between loops

    /// Per loop: requests in flight for each pool, then open upstream connections of each pool.
    package enum Field {
        case inflight(PoolID)
        case upstreamConnections(PoolID)

        @inline(__always)
        var offset: Int {
            switch self {
            case .inflight(let pool): return Int(pool.index)
            case .upstreamConnections(let pool): return PoolID.limit + Int(pool.index)
            }
        }
    }

    private let loops: Int
    private let perLoop: UnsafeMutablePointer<Atomic<Int>>
    private let connectFailures: UnsafeMutablePointer<Atomic<UInt64>>
    private let localFailures = Atomic<UInt64>(0)
    private let trimmed = Atomic<UInt64>(0)
    private let evicted = Atomic<UInt64>(0)
    /// TLS handshakes (a shared counter each: a handshake costs a millisecond of crypto, an
    /// atomic add is nothing beside it).
    private let tls: UnsafeMutablePointer<Atomic<UInt64>>

    /// What `tls` counts, by slot.
    public enum TLSEvent {
        case handshake(version: TLSVersionLabel, resumed: Bool)
        /// A connection that ended before its handshake did, by reason (see `tlsFailureReasons`).
        case failure(reason: Int)

        var slot: Int {
            switch self {
            case .handshake(let version, let resumed): return version.rawValue * 2 + (resumed ? 1 : 0)
            case .failure(let reason): return 8 + min(max(reason, 0), DataPlaneCounters.tlsFailureReasons.count - 1)
            }
        }
    }

    public enum TLSVersionLabel: Int, CaseIterable {
        case tls12 = 0, tls13 = 1, other = 2
        public var label: String { ["TLSv1.2", "TLSv1.3", "other"][rawValue] }
    }

    /// Failure reasons by number (the TLS layer's numbering; 0 is unused).
    public static let tlsFailureReasons = ["none", "plaintext_http", "bad_record", "protocol_version", "no_shared_cipher",
                                           "no_application_protocol", "unrecognized_name", "peer_closed", "other", "timeout"]
    private static let tlsSlots = 8 + 16

    public init(loops: Int) {
        self.loops = loops
        perLoop = .allocate(capacity: loops * Self.slotStride)
        for index in 0..<(loops * Self.slotStride) { (perLoop + index).initialize(to: Atomic(0)) }
        connectFailures = .allocate(capacity: Self.maxServers)
        for index in 0..<Self.maxServers { (connectFailures + index).initialize(to: Atomic(0)) }
        tls = .allocate(capacity: Self.tlsSlots)
        for index in 0..<Self.tlsSlots { (tls + index).initialize(to: Atomic(0)) }
    }

    deinit {
        perLoop.deinitialize(count: loops * Self.slotStride)
        perLoop.deallocate()
        connectFailures.deinitialize(count: Self.maxServers)
        connectFailures.deallocate()
        tls.deinitialize(count: Self.tlsSlots)
        tls.deallocate()
    }

    package func count(_ event: TLSEvent) {
        tls[event.slot].add(1, ordering: .relaxed)
    }

    public func tlsCount(_ event: TLSEvent) -> UInt64 { tls[event.slot].load(ordering: .relaxed) }

    /// Called only by loop `loop`'s thread.
    @inline(__always)
    package func add(_ delta: Int, _ field: Field, loop: Int) {
        let slot = perLoop + (loop * Self.slotStride + field.offset)
        slot.pointee.store(slot.pointee.load(ordering: .relaxed) &+ delta, ordering: .relaxed)
    }

    package func connectFailed(serverID: Int) {
        guard serverID < Self.maxServers else { return }
        connectFailures[serverID].add(1, ordering: .relaxed)
    }

    /// The proxy itself ran out of descriptors or memory for an upstream connection (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM): never the server's fault, so counted here and nowhere else.
    package func localResourceFailed() {
        localFailures.add(1, ordering: .relaxed)
    }

    /// Requests answered 503 because the proxy had no descriptor or memory for an upstream
    /// connection.
    public var localResourceFailures: UInt64 { localFailures.load(ordering: .relaxed) }

    /// Idle upstream connections closed because their pool took no traffic any more.
    package func idleTrimmed(_ count: Int) {
        trimmed.add(UInt64(count), ordering: .relaxed)
    }

    public var idleUpstreamsTrimmed: UInt64 { trimmed.load(ordering: .relaxed) }

    /// Idle client connections closed at `max_connections` to admit new clients.
    package func idleClientEvicted() {
        evicted.add(1, ordering: .relaxed)
    }

    public var idleClientsEvicted: UInt64 { evicted.load(ordering: .relaxed) }

    // MARK: Reading (control plane)

    public func inflight(_ pool: PoolID) -> Int { sum(.inflight(pool)) }
    public func inflight(_ color: Color) -> Int { inflight(PoolID(color)) }

    public func upstreamConnections(_ pool: PoolID) -> Int { sum(.upstreamConnections(pool)) }
    public func upstreamConnections(_ color: Color) -> Int { upstreamConnections(PoolID(color)) }

    /// Total connect failures the data plane saw for a server since start.
    public func connectFailures(serverID: Int) -> UInt64 {
        guard serverID < Self.maxServers else { return 0 }
        return connectFailures[serverID].load(ordering: .relaxed)
    }

    private func sum(_ field: Field) -> Int {
        var total = 0
        for loop in 0..<loops {
            total += perLoop[loop * Self.slotStride + field.offset].load(ordering: .relaxed)
        }
        return total
    }
}
