import Foundation

/// A small fixed pool of threads for work that may block (an admin command waiting for its
/// verify requests, an fsync): the control loop hands work here and never waits itself. The
/// number of threads is fixed, whatever the number of clients.
final class CommandThreads: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [@Sendable () -> Void] = []
    private var stopped = false

    init(count: Int, name: String) {
        for index in 0..<count {
            let thread = Thread { [self] in work() }
            thread.name = "\(name)-\(index)"
            thread.start()
        }
    }

    /// Queues `work`; a free thread runs it.
    func run(_ work: @escaping @Sendable () -> Void) {
        condition.withLock {
            guard !stopped else { return }
            queue.append(work)
            condition.signal()
        }
    }

    /// The threads end once the queue is empty; work queued later is dropped.
    func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
        }
    }

    private func work() {
        while true {
            let next: (@Sendable () -> Void)? = condition.withLock {
                while queue.isEmpty && !stopped { condition.wait() }
                return queue.isEmpty ? nil : queue.removeFirst()
            }
            guard let next else { return }
            next()
        }
    }
}
