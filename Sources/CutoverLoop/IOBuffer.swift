import CutoverSystem

/// A fixed-size byte buffer borrowed from a loop's `BufferPool`. Bytes are appended at `end`
/// and consumed from `start`; when it empties both return to 0, so a connection that keeps up
/// never moves memory.
package struct IOBuffer {
    package private(set) var base: UnsafeMutableRawPointer? = nil
    package private(set) var capacity = 0
    package var start = 0
    package var end = 0

    package init() {}

    package var hasStorage: Bool { base != nil }
    package var isEmpty: Bool { start == end }
    package var count: Int { end - start }
    package var spaceAtEnd: Int { capacity - end }

    package var readableBytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base.map { $0 + start }, count: end - start)
    }

    package var writableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base.map { $0 + end }, count: capacity - end)
    }

    mutating func attach(_ pointer: UnsafeMutableRawPointer, capacity: Int) {
        base = pointer
        self.capacity = capacity
        start = 0
        end = 0
    }

    /// Gives the storage back (the caller returns it to the pool).
    mutating func detach() -> UnsafeMutableRawPointer? {
        defer {
            base = nil
            capacity = 0
            start = 0
            end = 0
        }
        return base
    }

    package mutating func consume(_ count: Int) {
        start += count
        if start == end {
            start = 0
            end = 0
        }
    }

    /// Moves unread bytes to the front when the free tail has become small, so a peer that
    /// pipelines or sends in odd sizes never starves the buffer.
    package mutating func compactIfNeeded(minimumSpace: Int) {
        guard start > 0, capacity - end < minimumSpace, let base else { return }
        let pending = end - start
        base.copyMemory(from: base + start, byteCount: pending)  // memmove semantics
        start = 0
        end = pending
    }

    /// Appends bytes; the caller checked the space.
    package mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let base, bytes.count > 0 else { return }
        (base + end).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        end += bytes.count
    }
}

/// Per-loop free list of equally sized buffers. Connections borrow buffers only while they have
/// bytes in flight, so an idle keep-alive connection holds none (the memory target is ≤512 bytes
/// per idle connection).
///
/// Buffers are mapped directly (not malloc'd) so that memory taken during a burst really goes
/// back to the system: `trim` unmaps free buffers beyond a small reserve, which malloc would
/// keep in its heap. Steady traffic reuses the free list and makes no syscall.
package final class BufferPool {
    let bufferSize: Int
    private var free: [UnsafeMutableRawPointer] = []
    private let maxFree: Int

    package init(bufferSize: Int, maxFree: Int = 1024) {
        // Whole pages: the mapping is the buffer.
        let page = PageMemory.pageSize
        self.bufferSize = (bufferSize + page - 1) / page * page
        self.maxFree = maxFree
        free.reserveCapacity(maxFree)
    }

    deinit {
        for pointer in free { PageMemory.unmap(pointer, bufferSize) }
    }

    var freeCount: Int { free.count }
    /// The fewest free buffers seen since the last trim: that many were not needed at all.
    private var lowWater = 0

    package func acquire(into buffer: inout IOBuffer) {
        guard !buffer.hasStorage else { return }
        let pointer = free.popLast() ?? map()
        if free.count < lowWater { lowWater = free.count }
        buffer.attach(pointer, capacity: bufferSize)
    }

    package func release(_ buffer: inout IOBuffer) {
        guard let pointer = buffer.detach() else { return }
        if free.count < maxFree {
            free.append(pointer)
        } else {
            PageMemory.unmap(pointer, bufferSize)
        }
    }

    /// Unmaps free buffers that stayed unused since the last call, beyond `keep` (called once a
    /// second by the loop). Buffers that steady traffic cycles through are kept: trimming them
    /// would only map them again.
    func trim(keep: Int) {
        var surplus = Swift.min(lowWater, free.count - keep)
        while surplus > 0, let pointer = free.popLast() {
            PageMemory.unmap(pointer, bufferSize)
            surplus -= 1
        }
        lowWater = free.count
    }

    private func map() -> UnsafeMutableRawPointer {
        PageMemory.map(bufferSize)
    }
}
