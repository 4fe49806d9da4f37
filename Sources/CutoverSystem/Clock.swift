import CCutoverSys

/// Monotonic time from the vDSO: no syscall.
@inline(__always)
public func monotonicMilliseconds() -> Int64 { Int64(cutover_monotonic_ms()) }

@inline(__always)
public func monotonicNanoseconds() -> Int64 { Int64(cutover_monotonic_ns()) }

/// Wall-clock time (vDSO), for timestamps people read.
public func realtimeNanoseconds() -> Int64 { Int64(cutover_realtime_ns()) }
