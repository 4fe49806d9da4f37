import CutoverConfig
import CutoverSystem
import Foundation

/// Delivers release, watch, switch and rollback events to `notify` targets: each event is one
/// JSON document (the audit record's fields), on the standard input of a program or as an
/// HTTP/1.1 POST. Delivery runs on one thread per target, off the data plane and off the
/// decision path: a bounded queue per target (over it the oldest event is dropped and counted),
/// a timeout per attempt, three attempts with backoff; failures are logged and counted, and
/// never block or undo a decision.
public final class Notifier: @unchecked Sendable {
    public static let queueLimit = 1_000
    static let attempts = 3
    static let timeoutMs = 5_000

    /// Events that are delivered (the audit's other events are not).
    static let events: Set<String> = [
        "switch", "rollback", "release", "release_started", "release_step", "release_paused", "release_resumed",
        "release_promoted", "release_rolledback", "release_completed", "auto_rollback", "watch_started", "watch_passed",
    ]

    private let targets: [NotifyTarget]
    private let logger: Logger
    /// One queue and thread per target: a dead webhook never delays a program, or the reverse.
    private let workers: [Worker]
    /// Backoff before attempt 2 and 3, in milliseconds (tests shorten it).
    let backoffMs: [Int]

    private final class Worker: @unchecked Sendable {
        let condition = NSCondition()
        var queue: [[UInt8]] = []
        var stopped = false
        var delivered: UInt64 = 0
        var failed: UInt64 = 0
        var dropped: UInt64 = 0
    }

    public init(targets: [NotifyTarget], logger: Logger, backoffMs: [Int] = [500, 2_000]) {
        self.targets = targets
        self.logger = logger
        self.backoffMs = backoffMs
        workers = targets.map { _ in Worker() }
    }

    public func start() {
        guard !targets.isEmpty else { return }
        ProcessResources.ignoreBrokenPipes()  // a program that exits early must not kill the proxy
        for (index, target) in targets.enumerated() {
            let worker = workers[index]
            let thread = Thread { [self] in run(worker, target) }
            thread.name = "cutover-notify-\(index)"
            thread.start()
        }
    }

    public func stop() {
        for worker in workers {
            worker.condition.withLock {
                worker.stopped = true
                worker.condition.broadcast()
            }
        }
    }

    /// Queues an audit record when its event is one that is delivered.
    package func send(_ record: AuditRecord) {
        guard !targets.isEmpty, Self.events.contains(record.event) else { return }
        let document = Array(AuditLog.encode(record, prev: "").replacingOccurrences(of: ",\"prev\":\"\"", with: "").utf8)
        for worker in workers {
            worker.condition.withLock {
                if worker.queue.count >= Self.queueLimit {
                    worker.queue.removeFirst()
                    worker.dropped &+= 1
                }
                worker.queue.append(document)
                worker.condition.signal()
            }
        }
    }

    /// Per target: delivered and failed events; and events dropped from full queues.
    package var figures: (targets: [(target: String, delivered: UInt64, failed: UInt64)], dropped: UInt64) {
        var dropped: UInt64 = 0
        let list = targets.indices.map { index -> (target: String, delivered: UInt64, failed: UInt64) in
            let worker = workers[index]
            return worker.condition.withLock {
                dropped &+= worker.dropped
                return (targets[index].description, worker.delivered, worker.failed)
            }
        }
        return (list, dropped)
    }

    private func run(_ worker: Worker, _ target: NotifyTarget) {
        while true {
            let document: [UInt8]? = worker.condition.withLock {
                while worker.queue.isEmpty && !worker.stopped { worker.condition.wait() }
                return worker.stopped ? nil : worker.queue.removeFirst()
            }
            guard let document else { return }
            let ok = deliver(document, to: target)
            worker.condition.withLock { if ok { worker.delivered &+= 1 } else { worker.failed &+= 1 } }
        }
    }

    private func deliver(_ document: [UInt8], to target: NotifyTarget) -> Bool {
        var problem = ""
        for attempt in 0..<Self.attempts {
            if attempt > 0 { usleep(useconds_t(backoffMs[min(attempt - 1, backoffMs.count - 1)] * 1_000)) }
            switch target {
            case .exec(let path):
                switch BlockingDelivery.run(path, input: document + [0x0A], timeoutMs: Self.timeoutMs) {
                case .success(0): return true
                case .success(let status): problem = "exited with status \(status)"
                case .failure(let failure): problem = failure.description
                }
            case .webhook(let host, let port, let path):
                guard let address = SocketAddress.resolve(host: host, port: port) else {
                    problem = "cannot resolve \(host)"
                    continue
                }
                let hostHeader = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
                switch BlockingDelivery.post(to: address, host: hostHeader, path: path, body: document, timeoutMs: Self.timeoutMs) {
                case .success(let status) where (200..<300).contains(status): return true
                case .success(let status): problem = "answered \(status)"
                case .failure(let failure): problem = failure.description
                }
            }
        }
        logger.log(.warning, "notify \(target): gave up after \(Self.attempts) attempts: \(problem)")
        return false
    }
}
