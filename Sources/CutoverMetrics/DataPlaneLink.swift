
/// The one link from the control plane to the data plane, built by the runtime that wires
/// them: the control plane reads figures and reaches the access log through it, never by
/// calling into the data plane's objects.
public struct DataPlaneLink: Sendable {
    /// The figures of a window merged across loops (and the since-start totals when asked).
    public var snapshot: @Sendable (_ window: WindowedStats.Window, _ includeTotals: Bool) -> MetricsSnapshot
    /// When the data plane started (monotonic ns): where the "total" window begins.
    public var startedNs: Int64
    /// Open client connections and open upstream connections.
    public var connections: @Sendable () -> (clients: Int, upstreams: Int)
    /// Access log lines dropped because the writer fell behind.
    public var accessLogDropped: @Sendable () -> UInt64
    /// Reopens the access log file; nil when done, else why not.
    public var reopenAccessLog: @Sendable () -> String?

    public init(snapshot: @escaping @Sendable (WindowedStats.Window, Bool) -> MetricsSnapshot, startedNs: Int64,
                connections: @escaping @Sendable () -> (clients: Int, upstreams: Int),
                accessLogDropped: @escaping @Sendable () -> UInt64,
                reopenAccessLog: @escaping @Sendable () -> String?) {
        self.snapshot = snapshot
        self.startedNs = startedNs
        self.connections = connections
        self.accessLogDropped = accessLogDropped
        self.reopenAccessLog = reopenAccessLog
    }
}
