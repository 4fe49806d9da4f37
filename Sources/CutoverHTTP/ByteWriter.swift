/// Appends bytes to a fixed region of memory. It never grows: when the region is full it sets
/// `overflowed` and drops the rest, and the caller treats the message as too large.
public struct ByteWriter {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public var count: Int = 0
    public var overflowed = false

    @inlinable
    public init(base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    @inlinable
    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.init(base: buffer.baseAddress!, capacity: buffer.count)
    }

    @inlinable public var remainingCapacity: Int { capacity - count }

    @inlinable
    public mutating func write(_ literal: StaticString) {
        write(UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    @inlinable
    public mutating func write(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        guard bytes.count <= capacity - count else {
            overflowed = true
            return
        }
        (base + count).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        count += bytes.count
    }

    @inlinable
    public mutating func write(_ source: UnsafeRawBufferPointer, _ range: ByteRange) {
        guard range.count > 0 else { return }
        write(UnsafeRawBufferPointer(rebasing: source[range.lowerBound..<range.upperBound]))
    }

    @inlinable
    public mutating func write(byte: UInt8) {
        guard count < capacity else {
            overflowed = true
            return
        }
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    @inlinable
    public mutating func writeDecimal(_ value: UInt64) {
        var scratch: (UInt64, UInt64, UInt64) = (0, 0, 0)  // room for 20 digits, kept off the heap
        var remaining = value
        var length = 0
        withUnsafeMutableBytes(of: &scratch) { digits in
            repeat {
                digits[23 - length] = UInt8(truncatingIfNeeded: remaining % 10) &+ 0x30
                remaining /= 10
                length += 1
            } while remaining > 0
            write(UnsafeRawBufferPointer(rebasing: digits[(24 - length)..<24]))
        }
    }

    /// Lowercase hexadecimal without leading zeros (chunk sizes).
    @inlinable
    public mutating func writeHex(_ value: UInt64) {
        var shift = 60
        while shift > 0 && (value >> UInt64(shift)) & 0xF == 0 { shift -= 4 }
        while shift >= 0 {
            write(byte: Self.hexDigit(UInt8(truncatingIfNeeded: (value >> UInt64(shift)) & 0xF)))
            shift -= 4
        }
    }

    /// Exactly 16 lowercase hexadecimal digits (request ids).
    @inlinable
    public mutating func writeHex16(_ value: UInt64) {
        var shift = 60
        while shift >= 0 {
            write(byte: Self.hexDigit(UInt8(truncatingIfNeeded: (value >> UInt64(shift)) & 0xF)))
            shift -= 4
        }
    }

    @inlinable
    static func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 0x30 &+ nibble : 0x57 &+ nibble }
}
