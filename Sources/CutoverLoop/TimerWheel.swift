/// The deadlines of one loop's channels, kept so that finding the due ones costs nothing per
/// idle connection.
///
/// A hashed wheel of `slotCount` buckets, each `tickMs` wide, with intrusive doubly linked
/// lists over channel slot numbers (plain `Int32` arrays: no allocation, no reference counting
/// once the arrays have grown to the loop's channel count). A bitmap of non-empty buckets gives
/// the next wake-up without scanning buckets.
///
/// Deadlines are rounded up to the next tick: a timer never fires early, and at most `tickMs`
/// late. A deadline farther away than one turn of the wheel (`slotCount × tickMs`) sits in its
/// bucket and is passed over, not fired, until its own turn comes: an idle keep-alive connection
/// is looked at about once per turn, not on every expiry. Channels extend their deadline on every
/// event, so `EventLoop` moves an entry only when its deadline comes *earlier* than the bucket it
/// is in; a later deadline is found when the bucket comes due, and the entry is moved then.
///
/// Owned by one loop; not thread-safe.
package struct TimerWheel {
    package let tickMs: Int64
    /// log2(tickMs) when it is a power of two (the default): rounding is then a shift, not a
    /// division, on every deadline a connection sets. -1 otherwise.
    private let tickShift: Int64
    private let slotMask: Int
    /// First entry of each bucket (-1: empty).
    private var heads: [Int32]
    /// One bit per bucket: set while the bucket is not empty.
    private var occupied: [UInt64]
    /// Per entry: its neighbours in its bucket (-1: none) and the tick it waits for (0: not linked).
    private var next: [Int32] = []
    private var previous: [Int32] = []
    private var ticks: [Int64] = []
    /// The last tick whose bucket was expired.
    private var expiredThrough: Int64
    package private(set) var count = 0
    /// Entries looked at by `expire` since the start (due or not): what expiry costs.
    package private(set) var visitedEntries = 0

    /// `slotCount` must be a power of two.
    package init(tickMs: Int64 = 4, slotCount: Int = 16_384, now: Int64) {
        precondition(slotCount > 0 && slotCount & (slotCount - 1) == 0, "slotCount must be a power of two")
        self.tickMs = tickMs
        tickShift = tickMs > 0 && tickMs & (tickMs - 1) == 0 ? Int64(tickMs.trailingZeroBitCount) : -1
        slotMask = slotCount - 1
        heads = Array(repeating: -1, count: slotCount)
        occupied = Array(repeating: 0, count: (slotCount + 63) / 64)
        expiredThrough = now / tickMs
    }

    /// The tick a deadline waits for: rounded up, so it never fires early.
    @inline(__always)
    package func tick(for deadlineMs: Int64) -> Int64 {
        tickShift >= 0 ? (deadlineMs + tickMs - 1) >> tickShift : (deadlineMs + tickMs - 1) / tickMs
    }

    /// The tick `id` is linked for (0: not scheduled).
    @inline(__always)
    package func scheduledTick(_ id: Int32) -> Int64 {
        Int(id) < ticks.count ? ticks[Int(id)] : 0
    }

    /// Links `id` into the bucket of `deadlineMs` (moving it when already linked).
    package mutating func schedule(_ id: Int32, at deadlineMs: Int64) {
        let index = Int(id)
        if index >= ticks.count { grow(to: index + 1) }
        if ticks[index] != 0 { unlink(index) }
        // Never into a bucket already expired: a deadline in the past fires at the next expiry.
        let tick = max(tick(for: deadlineMs), expiredThrough + 1)
        let bucket = Int(tick) & slotMask
        let head = heads[bucket]
        next[index] = head
        previous[index] = -1
        if head >= 0 { previous[Int(head)] = id }
        heads[bucket] = id
        ticks[index] = tick
        occupied[bucket >> 6] |= 1 << UInt64(bucket & 63)
        count += 1
    }

    /// Unlinks `id` if it is scheduled.
    package mutating func cancel(_ id: Int32) {
        let index = Int(id)
        guard index < ticks.count, ticks[index] != 0 else { return }
        unlink(index)
    }

    private mutating func unlink(_ index: Int) {
        let bucket = Int(ticks[index]) & slotMask
        let before = previous[index]
        let after = next[index]
        if before >= 0 { next[Int(before)] = after } else { heads[bucket] = after }
        if after >= 0 { previous[Int(after)] = before }
        if heads[bucket] < 0 { occupied[bucket >> 6] &= ~(1 << UInt64(bucket & 63)) }
        ticks[index] = 0
        count -= 1
    }

    private mutating func grow(to size: Int) {
        let target = max(size, ticks.count * 2, 64)
        next.append(contentsOf: repeatElement(-1, count: target - next.count))
        previous.append(contentsOf: repeatElement(-1, count: target - previous.count))
        ticks.append(contentsOf: repeatElement(0, count: target - ticks.count))
    }

    /// When the loop must wake next (monotonic ms), or `.max` with nothing scheduled. The
    /// earliest non-empty bucket's time in the current turn: its entries may belong to a later
    /// turn, in which case that wake-up finds nothing due and asks again.
    package func nextWakeMs() -> Int64 {
        guard count > 0 else { return .max }
        let slots = slotMask + 1
        let start = Int((expiredThrough + 1) & Int64(slotMask))
        // Buckets from `start` to the end of the wheel, then from 0 to `start`.
        if let found = firstOccupied(from: start, to: slots) {
            return (expiredThrough + 1 + Int64(found - start)) * tickMs
        }
        if let found = firstOccupied(from: 0, to: start) {
            return (expiredThrough + 1 + Int64(slots - start + found)) * tickMs
        }
        return .max
    }

    private func firstOccupied(from lower: Int, to upper: Int) -> Int? {
        var word = lower >> 6
        guard lower < upper else { return nil }
        var bits = occupied[word] & (~0 << UInt64(lower & 63))
        while true {
            if bits != 0 {
                let found = word << 6 + bits.trailingZeroBitCount
                return found < upper ? found : nil
            }
            word += 1
            if word << 6 >= upper { return nil }
            bits = occupied[word]
        }
    }

    /// Unlinks every entry whose tick has come by `now` and appends it to `due` (which the
    /// caller keeps between calls, so steady expiry allocates nothing). Each bucket between the
    /// last expiry and now is visited once; entries of a later turn stay where they are.
    package mutating func expire(now: Int64, into due: inout [Int32]) {
        let current = now / tickMs
        guard current > expiredThrough else { return }
        let turns = current - expiredThrough
        let buckets = turns > Int64(slotMask) ? slotMask + 1 : Int(turns)
        var tick = expiredThrough + 1
        for _ in 0..<buckets {
            let bucket = Int(tick) & slotMask
            if occupied[bucket >> 6] & (1 << UInt64(bucket & 63)) != 0 {
                var entry = heads[bucket]
                while entry >= 0 {
                    let index = Int(entry)
                    let following = next[index]
                    visitedEntries &+= 1
                    if ticks[index] <= current {
                        unlink(index)
                        due.append(entry)
                    }
                    entry = following
                }
            }
            tick += 1
        }
        expiredThrough = current
    }
}
