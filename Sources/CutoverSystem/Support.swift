public struct StartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Hands a loop-owned object to the loop's thread. Safe because the object is used by exactly
/// one thread at a time: the creating thread before `start`, the loop thread after.
public struct UncheckedBox<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}
