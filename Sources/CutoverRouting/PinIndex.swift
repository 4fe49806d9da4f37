import CutoverConfig

/// The pins of one app as a loop looks them up: per (header or cookie) name, an open-addressing
/// table from the value's bytes to the pool it is pinned to. A lookup hashes the value once
/// and compares bytes; nothing is allocated per request. Built per loop from the published
/// pins (only when they change), then owned by that loop.
public final class PinIndex {
    /// One pinned header or cookie name and its values.
    public struct Lookup {
        public let source: PinSource
        /// Lowercased for headers (compared case-insensitively), exact for cookies.
        public let name: [UInt8]
        public let table: PinTable
    }

    public let lookups: [Lookup]
    public var isEmpty: Bool { lookups.isEmpty }

    public init(_ pins: [PinRule]) {
        var grouped: [(source: PinSource, name: String, entries: [(String, PoolID)])] = []
        for pin in pins {
            let entries = pin.values.map { ($0, PoolID(pin.color)) }
            if let index = grouped.firstIndex(where: { $0.source == pin.source && $0.name == pin.name }) {
                grouped[index].entries += entries
            } else {
                grouped.append((pin.source, pin.name, entries))
            }
        }
        lookups = grouped.map { Lookup(source: $0.source, name: Array($0.name.utf8), table: PinTable($0.entries)) }
    }
}

/// Values → pool, for one pinned name. The first pin of a value wins (the control plane
/// refuses a value pinned twice to different colors).
public final class PinTable {
    private let bytes: [UInt8]
    /// (offset, length, pool index) per entry.
    private let entries: [(offset: Int32, length: Int32, pool: UInt8)]
    /// Entry index + 1 per slot (0: empty); a power of two at least twice the entries.
    private let slots: [Int32]
    private let mask: Int

    public init(_ values: [(String, PoolID)]) {
        var bytes: [UInt8] = []
        var entries: [(offset: Int32, length: Int32, pool: UInt8)] = []
        var capacity = 8
        while capacity < values.count * 2 { capacity *= 2 }
        var slots = [Int32](repeating: 0, count: capacity)
        mask = capacity - 1
        for (value, pool) in values {
            let utf8 = Array(value.utf8)
            var slot = utf8.withUnsafeBytes { Self.hash($0) } & mask
            var duplicate = false
            while slots[slot] != 0 {
                let entry = entries[Int(slots[slot]) - 1]
                if Int(entry.length) == utf8.count && bytes[Int(entry.offset)..<Int(entry.offset + entry.length)].elementsEqual(utf8) {
                    duplicate = true
                    break
                }
                slot = (slot + 1) & mask
            }
            if duplicate { continue }
            entries.append((Int32(bytes.count), Int32(utf8.count), pool.index))
            bytes += utf8
            slots[slot] = Int32(entries.count)
        }
        self.bytes = bytes
        self.entries = entries
        self.slots = slots
    }

    public var count: Int { entries.count }

    /// The pool `value` is pinned to, if any (exact, case-sensitive).
    public func pool(for value: UnsafeRawBufferPointer) -> PoolID? {
        guard !entries.isEmpty, !value.isEmpty else { return nil }
        var slot = Self.hash(value) & mask
        return bytes.withUnsafeBytes { stored in
            while true {
                let index = Int(slots[slot])
                if index == 0 { return nil }
                let entry = entries[index - 1]
                if Int(entry.length) == value.count {
                    let offset = Int(entry.offset)
                    var same = true
                    for index in 0..<value.count where stored[offset + index] != value[index] {
                        same = false
                        break
                    }
                    if same { return PoolID(index: entry.pool) }
                }
                slot = (slot + 1) & mask
            }
        }
    }

    private static func hash(_ bytes: UnsafeRawBufferPointer) -> Int {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return Int(truncatingIfNeeded: StickyHash.finalize(hash) >> 1)
    }
}
