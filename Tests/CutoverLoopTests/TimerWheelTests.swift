import CutoverLoop
import XCTest

final class TimerWheelTests: XCTestCase {
    /// Expires every tick from `from` to `to` (inclusive, in ms steps of the tick) and returns
    /// when each id came due.
    private func run(_ wheel: inout TimerWheel, from: Int64, to: Int64, step: Int64? = nil) -> [Int32: Int64] {
        var firedAt: [Int32: Int64] = [:]
        var due: [Int32] = []
        var now = from
        while now <= to {
            wheel.expire(now: now, into: &due)
            for id in due { firedAt[id] = now }
            due.removeAll()
            now += step ?? wheel.tickMs
        }
        return firedAt
    }

    func testADeadlineFiresAtItsTimeRoundedUpToATickNeverBefore() {
        var wheel = TimerWheel(tickMs: 4, slotCount: 64, now: 1_000)
        wheel.schedule(1, at: 1_010)  // between ticks: rounds up to 1_012
        wheel.schedule(2, at: 1_012)  // on a tick
        wheel.schedule(3, at: 1_001)
        XCTAssertEqual(wheel.nextWakeMs(), 1_004)
        let fired = run(&wheel, from: 1_000, to: 1_100, step: 1)
        XCTAssertEqual(fired[1], 1_012)
        XCTAssertEqual(fired[2], 1_012)
        XCTAssertEqual(fired[3], 1_004)
        XCTAssertEqual(wheel.count, 0)
        XCTAssertEqual(wheel.nextWakeMs(), .max)
    }

    func testCancelAndRescheduleMoveAnEntry() {
        var wheel = TimerWheel(tickMs: 1, slotCount: 64, now: 0)
        wheel.schedule(1, at: 10)
        wheel.schedule(2, at: 20)
        wheel.schedule(3, at: 30)
        wheel.cancel(2)
        wheel.schedule(3, at: 5)  // earlier: moves
        wheel.schedule(1, at: 40)  // later: moves too (the loop decides when to call)
        XCTAssertEqual(wheel.count, 2)
        XCTAssertEqual(wheel.nextWakeMs(), 5)
        let fired = run(&wheel, from: 0, to: 100)
        XCTAssertEqual(fired, [3: 5, 1: 40])
    }

    func testADeadlineBeyondOneTurnWaitsForItsOwnTurn() {
        // 16 buckets of 10 ms: one turn is 160 ms; 1_000 ms is six turns and a bit away.
        var wheel = TimerWheel(tickMs: 10, slotCount: 16, now: 0)
        wheel.schedule(7, at: 1_000)
        wheel.schedule(8, at: 1_005)
        let fired = run(&wheel, from: 0, to: 2_000)
        XCTAssertEqual(fired, [7: 1_000, 8: 1_010])
    }

    func testALongSleepExpiresEverythingDueAtOnce() {
        var wheel = TimerWheel(tickMs: 4, slotCount: 16, now: 0)
        for id in Int32(0)..<10 { wheel.schedule(id, at: Int64(id) * 50) }
        wheel.schedule(99, at: 100_000)
        var due: [Int32] = []
        wheel.expire(now: 10_000, into: &due)  // far more than one turn later
        XCTAssertEqual(Set(due), Set(Int32(0)..<10))
        XCTAssertEqual(wheel.count, 1)
        due.removeAll()
        wheel.expire(now: 99_999, into: &due)
        XCTAssertEqual(due, [])
        wheel.expire(now: 100_000, into: &due)
        XCTAssertEqual(due, [99])
    }

    func testAPastDeadlineFiresAtTheNextExpiry() {
        var wheel = TimerWheel(tickMs: 4, slotCount: 16, now: 0)
        var due: [Int32] = []
        wheel.expire(now: 400, into: &due)
        wheel.schedule(5, at: 100)  // already past
        XCTAssertEqual(wheel.nextWakeMs(), 404)
        wheel.expire(now: 404, into: &due)
        XCTAssertEqual(due, [5])
    }

    /// What the loop relies on for 50,000 idle keep-alive connections: while their deadlines
    /// are a minute away, the busy clients' expiries do not look at them at all, and over the
    /// minute each is looked at about once per turn of the wheel.
    func testIdleEntriesCostNothingUntilTheirBucketComesDue() {
        let idle = 50_000
        var wheel = TimerWheel(tickMs: 4, slotCount: 16_384, now: 0)  // one turn: 65.5 s
        for id in 0..<idle { wheel.schedule(Int32(id), at: 60_000 + Int64(id % 1_000)) }
        // Ten busy connections, each re-armed 10 ms ahead, expired every millisecond for 10 s.
        var due: [Int32] = []
        var busyFired = 0
        for now in Int64(1)...10_000 {
            for busy in 0..<10 where wheel.scheduledTick(Int32(idle + busy)) == 0 {
                wheel.schedule(Int32(idle + busy), at: now + 10)
            }
            wheel.expire(now: now, into: &due)
            busyFired += due.count
            due.removeAll()
        }
        XCTAssertGreaterThan(busyFired, 8_000)  // each re-armed about every 12 ms (10 ms rounded up to a tick)
        XCTAssertEqual(wheel.visitedEntries, busyFired, "expiry looked at idle entries whose time had not come")
        XCTAssertEqual(wheel.count, idle + 10)
    }

    /// Against a model: random schedules, cancels and clock steps; every entry fires exactly
    /// once, at the first expiry at or after its deadline rounded up to a tick.
    func testMatchesAModelUnderRandomOperations() {
        var random = SplitMix64(seed: 0xC0FFEE)
        for _ in 0..<20 {
            let tick = Int64(random.next(upTo: 8) + 1)
            var wheel = TimerWheel(tickMs: tick, slotCount: 32, now: 0)
            var model: [Int32: Int64] = [:]  // id → deadline
            var now: Int64 = 0
            var due: [Int32] = []
            for _ in 0..<2_000 {
                switch random.next(upTo: 10) {
                case 0..<5:
                    let id = Int32(random.next(upTo: 64))
                    let deadline = now + Int64(random.next(upTo: 1_500))
                    wheel.schedule(id, at: deadline)
                    model[id] = deadline
                case 5:
                    let id = Int32(random.next(upTo: 64))
                    wheel.cancel(id)
                    model[id] = nil
                default:
                    now += Int64(random.next(upTo: 40))
                    wheel.expire(now: now, into: &due)
                    let expected = model.filter { ($0.value + tick - 1) / tick * tick <= now }.map(\.key)
                    XCTAssertEqual(Set(due), Set(expected), "at \(now) ms, tick \(tick)")
                    for id in due { model[id] = nil }
                    due.removeAll()
                }
                XCTAssertEqual(wheel.count, model.count)
            }
        }
    }
}

/// A small seeded generator (SplitMix64): the same sequence on every run.
struct SplitMix64 {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func next(upTo bound: Int) -> Int { Int(next() % UInt64(bound)) }
}
