import CutoverRouting
import CutoverConfig
import CutoverConfig
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

    public init(loops: Int) {
        self.loops = loops
        perLoop = .allocate(capacity: loops * Self.slotStride)
        for index in 0..<(loops * Self.slotStride) { (perLoop + index).initialize(to: Atomic(0)) }
        connectFailures = .allocate(capacity: Self.maxServers)
        for index in 0..<Self.maxServers { (connectFailures + index).initialize(to: Atomic(0)) }
    }

    deinit {
        perLoop.deinitialize(count: loops * Self.slotStride)
        perLoop.deallocate()
        connectFailures.deinitialize(count: Self.maxServers)
        connectFailures.deallocate()
    }

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
