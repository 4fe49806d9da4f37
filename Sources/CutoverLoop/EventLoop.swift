import CCutoverSys
import CutoverHTTP
import CutoverSystem
import Synchronization

/// Something registered with a loop's epoll instance. Subclasses override `handle(events:)`
/// and `deadlineReached()`. Owned by its loop; every method runs on the loop's thread.
open class Channel {
    public let fd: Int32
    public unowned(unsafe) let loop: EventLoop
    /// Index in the loop's channel table; -1 when not registered.
    package var slot: Int32 = -1
    /// Monotonic milliseconds at which `deadlineReached` runs; 0 = none. Set it through
    /// `setDeadline` (or to 0 to cancel): the loop's timer wheel learns of it there.
    package var deadline: Int64 = 0

    public init(fd: Int32, loop: EventLoop) {
        self.fd = fd
        self.loop = loop
    }

    open func handle(events: UInt32) {}
    open func deadlineReached() {}

    /// Sets the deadline. No syscall, and usually no timer work: the wheel entry moves only
    /// when the deadline comes earlier than the bucket it waits in (a later deadline is found
    /// when that bucket comes due).
    @inline(__always)
    package final func setDeadline(after milliseconds: Int) {
        // Clamped to a year: no setting can push the clock arithmetic into overflow (the config
        // bounds timeouts to 24 h; this is the second fence).
        deadline = loop.now + Int64(Swift.min(Swift.max(0, milliseconds), 366 * 86_400_000))
        loop.deadlineChanged(self)
    }

    @inline(__always)
    package final func clearDeadline() { deadline = 0 }
}

/// One data-plane thread: an epoll instance, its channels, a buffer pool, an eventfd for
/// wake-ups from other threads, and a timer wheel of the channels' deadlines (no timer syscall
/// per request: `epoll_wait`'s timeout comes from the wheel, and only due buckets are visited,
/// so idle connections cost nothing while they wait).
public final class EventLoop {
    package let index: Int
    let epollFD: Int32
    private let wakeFD: Int32
    package let buffers: BufferPool

    /// Monotonic milliseconds, read once per wake-up.
    package private(set) var now: Int64
    /// The same moment in nanoseconds: request latencies are measured between wake-ups, so
    /// recording them costs no clock read (the resolution is one loop iteration).
    package private(set) var nowNs: Int64
    /// The channels' deadlines, by channel slot.
    private var timers: TimerWheel
    /// Channel slots whose timer came due, reused between expiries.
    private var dueSlots: [Int32] = []

    private var channels: [Channel?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [Int32] = []

    /// Work posted from other threads (shutdown, tests). Rare; a lock is fine.
    private let inbox = Mutex<[@Sendable () -> Void]>([])
    private let stopFlag = Atomic<Bool>(false)

    /// Scratch space for header field offsets, shared by every parse on this thread.
    package let fields: UnsafeMutableBufferPointer<HeaderField>

    private static let wakeToken = UInt64.max
    /// Free I/O buffers kept mapped between bursts.
    private static let bufferReserve = 32

    package init(index: Int, bufferSize: Int, maxHeaders: Int) throws(IOError) {
        self.index = index
        epollFD = try Epoll.create()
        wakeFD = try EventFD.create()
        buffers = BufferPool(bufferSize: bufferSize)
        nowNs = monotonicNanoseconds()
        now = nowNs / 1_000_000
        fields = .allocate(capacity: maxHeaders)
        fields.initialize(repeating: HeaderField(name: .empty, value: .empty, kind: .other))
        timers = TimerWheel(now: now)
        try Epoll.add(epollFD, fd: wakeFD, events: Epoll.readable | Epoll.edgeTriggered, token: Self.wakeToken)
    }

    deinit {
        Posix.close(wakeFD)
        Posix.close(epollFD)
        fields.deallocate()
    }

    // MARK: Registration

    /// Registers a channel for IN|OUT|RDHUP, edge-triggered: once per descriptor for its life.
    package func register(_ channel: Channel) throws(IOError) {
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
            channels[Int(slot)] = channel
        } else {
            slot = Int32(channels.count)
            channels.append(channel)
            generations.append(0)
        }
        channel.slot = slot
        if channel.deadline != 0 { timers.schedule(slot, at: channel.deadline) }
        let token = UInt64(UInt32(bitPattern: slot)) | UInt64(generations[Int(slot)]) << 32
        do {
            try Epoll.add(epollFD, fd: channel.fd,
                          events: Epoll.readable | Epoll.writable | Epoll.peerHangup | Epoll.edgeTriggered,
                          token: token)
        } catch {
            release(slot: slot)
            channel.slot = -1
            throw error
        }
    }

    /// Forgets a channel whose open file another process shares: out of epoll first.
    package func closeSharedChannel(_ channel: Channel) {
        guard channel.slot >= 0 else { return }
        Epoll.remove(epollFD, fd: channel.fd)
        closeChannel(channel)
    }

    /// Forgets a channel and closes its descriptor (which also removes it from epoll).
    /// Events already fetched for it in this batch are dropped by the generation check.
    package func closeChannel(_ channel: Channel) {
        guard channel.slot >= 0 else { return }
        release(slot: channel.slot)
        channel.slot = -1
        Posix.close(channel.fd)
    }

    private func release(slot: Int32) {
        timers.cancel(slot)
        channels[Int(slot)] = nil
        generations[Int(slot)] &+= 1
        freeSlots.append(slot)
    }

    // MARK: Cross-thread

    /// Runs `work` on the loop's thread soon. Callable from any thread.
    package func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        EventFD.signal(wakeFD)
    }

    package func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        EventFD.signal(wakeFD)
    }

    // MARK: Running

    /// Runs until `requestStop`. Called on the loop's own thread.
    package func run() {
        let capacity: Int32 = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        defer { events.deallocate() }
        var nextMaintenance: Int64 = now + 1_000
        while !stopFlag.load(ordering: .acquiring) {
            var wake = timers.nextWakeMs()
            if buffers.freeCount > Self.bufferReserve { wake = min(wake, nextMaintenance) }
            let count: Int
            do {
                let timeout: Int32 = wake == .max ? -1 : Int32(clamping: max(0, wake - monotonicMilliseconds()))
                count = try Epoll.wait(epollFD, events, capacity, timeoutMs: timeout)
            } catch {
                fatalError("epoll_wait: \(error)")  // only EBADF/EINVAL: a bug
            }
            nowNs = monotonicNanoseconds()
            now = nowNs / 1_000_000
            for index in 0..<count {
                let event = events[index]
                let token = event.data.u64
                if token == Self.wakeToken {
                    EventFD.drain(wakeFD)
                    runInbox()
                    continue
                }
                let slot = Int(UInt32(truncatingIfNeeded: token))
                guard slot < channels.count, generations[slot] == UInt32(truncatingIfNeeded: token >> 32),
                      let channel = channels[slot]
                else { continue }
                channel.handle(events: event.events)
            }
            expireDeadlines()
            if now >= nextMaintenance {
                // Give back buffers a burst left behind; keep a reserve for the next requests.
                buffers.trim(keep: Self.bufferReserve)
                nextMaintenance = now + 1_000
            }
        }
    }

    private func runInbox() {
        let work = inbox.withLock { pending -> [@Sendable () -> Void] in
            defer { pending.removeAll(keepingCapacity: true) }
            return pending
        }
        for item in work { item() }
    }

    /// A channel's deadline changed: schedule it when it has none in the wheel or its new
    /// deadline comes before the bucket it waits in. Later deadlines stay where they are.
    @inline(__always)
    package func deadlineChanged(_ channel: Channel) {
        guard channel.slot >= 0, channel.deadline != 0 else { return }
        let scheduled = timers.scheduledTick(channel.slot)
        if scheduled == 0 || timers.tick(for: channel.deadline) < scheduled {
            timers.schedule(channel.slot, at: channel.deadline)
        }
    }

    /// Fires the deadlines that have passed. An entry whose channel moved its deadline later
    /// (or cleared it) is put back for the new time (or dropped) instead.
    private func expireDeadlines() {
        timers.expire(now: now, into: &dueSlots)
        guard !dueSlots.isEmpty else { return }
        for slot in dueSlots {
            // A channel closed by an earlier handler in this batch has left the wheel already;
            // a slot reused since then belongs to a new channel, which `register` scheduled.
            guard let channel = channels[Int(slot)], channel.deadline != 0 else { continue }
            if channel.deadline <= now {
                channel.deadline = 0
                channel.deadlineReached()
            } else if timers.scheduledTick(slot) == 0 {
                timers.schedule(slot, at: channel.deadline)
            }
        }
        dueSlots.removeAll(keepingCapacity: true)
    }

    /// The channels registered now (a copy, so the visitor may close them).
    package func channelsSnapshot() -> [Channel] { channels.compactMap { $0 } }

}

extension EventLoop {
    /// Visits every registered channel (drain, shutdown). Not for the request path.
    package func forEachChannel(_ body: (Channel) -> Void) {
        for channel in channelsSnapshot() { body(channel) }
    }
}
