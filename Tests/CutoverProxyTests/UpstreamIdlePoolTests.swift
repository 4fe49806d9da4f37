import CutoverConfig
import CutoverLoop
import CutoverMetrics
import CutoverProxy
import CutoverRouting
import CutoverSystem
import Glibc
import XCTest

/// The per-loop pool of idle upstream connections, on socket pairs (no network): warmest first,
/// bounded per server, and an idle connection that hears anything is never reused.
final class UpstreamIdlePoolTests: XCTestCase {
    private var peers: [Int32] = []

    override func tearDown() {
        for fd in peers { close(fd) }
        peers.removeAll()
    }

    private func server(_ id: Int) -> ServerEntry {
        ServerEntry(id: id, name: "127.0.0.1:\(9000 + id)", address: SocketAddress(numericHost: "127.0.0.1", port: UInt16(9000 + id))!,
                    routable: true)
    }

    private func connection(to server: ServerEntry, loop: EventLoop, pool: UpstreamIdlePool,
                            counters: DataPlaneCounters) throws -> UpstreamConnection {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        peers.append(fds[1])
        let connection = UpstreamConnection(fd: fds[0], loop: loop, server: server, pool: .blue, connected: true,
                                            idlePool: pool, counters: counters)
        try loop.register(connection)
        return connection
    }

    func testWarmestFirstBoundedPerServerAndNeverReusedAfterItHeardSomething() throws {
        let loop = try EventLoop(index: 0, bufferSize: 16 * 1024, maxHeaders: 16)
        let counters = DataPlaneCounters(loops: 1)
        let pool = UpstreamIdlePool(maxPerServer: 2, idleTimeoutMs: 60_000)
        defer { withExtendedLifetime((counters, pool)) {} }
        let one = server(1)
        let first = try connection(to: one, loop: loop, pool: pool, counters: counters)
        let second = try connection(to: one, loop: loop, pool: pool, counters: counters)
        let third = try connection(to: one, loop: loop, pool: pool, counters: counters)
        pool.park(first)
        pool.park(second)
        pool.park(third)
        XCTAssertEqual(third.phase, .closed, "the pool keeps upstream_idle_per_server connections; the next is closed")
        XCTAssertNil(pool.take(serverID: 2), "connections of one server are never handed out for another")

        let taken = try XCTUnwrap(pool.take(serverID: 1))
        XCTAssertTrue(taken === second, "the warmest (last parked) first")
        XCTAssertTrue(taken.reused)
        XCTAssertEqual(taken.phase, .open)
        XCTAssertTrue(try XCTUnwrap(pool.take(serverID: 1)) === first)
        XCTAssertNil(pool.take(serverID: 1))

        // Parked again, then the server speaks out of turn (or closes): closed, not reused.
        pool.park(first)
        first.handle(events: Epoll.readable)
        XCTAssertEqual(first.phase, .closed)
        XCTAssertNil(pool.take(serverID: 1))
        // A writability edge alone (the send buffer drained) is expected and harmless.
        pool.park(second)
        second.handle(events: Epoll.writable)
        XCTAssertTrue(try XCTUnwrap(pool.take(serverID: 1)) === second)
    }

    func testTheIdleTimeoutClosesAParkedConnection() throws {
        let loop = try EventLoop(index: 0, bufferSize: 16 * 1024, maxHeaders: 16)
        let pool = UpstreamIdlePool(maxPerServer: 4, idleTimeoutMs: 100)
        // The connection holds its pool and counters unowned (as on a loop, which outlives it).
        let counters = DataPlaneCounters(loops: 1)
        defer { withExtendedLifetime(counters) {} }
        let parked = try connection(to: server(1), loop: loop, pool: pool, counters: counters)
        pool.park(parked)
        XCTAssertNotEqual(parked.deadline, 0, "upstream_idle is armed")
        parked.deadlineReached()
        XCTAssertEqual(parked.phase, .closed)
        XCTAssertNil(pool.take(serverID: 1))
    }
}
