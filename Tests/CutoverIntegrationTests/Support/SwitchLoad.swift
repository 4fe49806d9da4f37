import Foundation

/// Keep-alive load from several client threads while a test switches colors. Each answer is
/// judged against the moment the test says the switch returned: an answer other than the new
/// color to a request sent after it is stale.
final class SwitchLoad: @unchecked Sendable {
    private let lock = NSLock()
    private let group = DispatchGroup()
    private var switchedNs: UInt64 = .max
    private var stopping = false
    private(set) var requests = 0
    private(set) var afterSwitch = 0
    private(set) var failures: [String] = []
    private(set) var stale: [String] = []
    private(set) var reconnects = 0

    /// Starts `threads` clients on `port`; client k sends its requests to `hosts` in turn,
    /// starting at host k.
    init(port: UInt16, threads: Int, hosts: [String] = ["example.com"], newColorBody: String = "green\n") {
        for thread in 0..<threads {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                run(port: port, hosts: hosts, first: thread, newColorBody: newColorBody)
            }
        }
    }

    private func run(port: UInt16, hosts: [String], first: Int, newColorBody: String) {
        guard var client = try? RawHTTPClient(port: port) else { return record { $0.failures.append("connect") } }
        var index = first
        while !lock.withLock({ stopping }) {
            let host = hosts[index % hosts.count]
            index += 1
            let sentNs = DispatchTime.now().uptimeNanoseconds
            do {
                let response = try client.request("GET", "/", host: host)
                record { load in
                    let after = sentNs > load.switchedNs
                    load.requests += 1
                    if after { load.afterSwitch += 1 }
                    if response.status != 200 { load.failures.append("\(host): status \(response.status)") }
                    if after && response.bodyString != newColorBody {
                        load.stale.append("\(host) answered \(response.bodyString) after the switch")
                    }
                }
            } catch {
                record { load in
                    load.failures.append("\(host): \(error)")
                    load.reconnects += 1
                }
                guard let fresh = try? RawHTTPClient(port: port) else { return }
                client = fresh
            }
        }
    }

    private func record(_ body: (SwitchLoad) -> Void) { lock.withLock { body(self) } }

    /// Waits until at least `count` answers arrived (before the switch: the load is running).
    func waitForRequests(_ count: Int) {
        while lock.withLock({ requests }) < count { usleep(1_000) }
    }

    /// The switch returned now: requests sent from here on must be answered by the new color.
    func markSwitched() { lock.withLock { switchedNs = DispatchTime.now().uptimeNanoseconds } }

    func waitForRequestsAfterSwitch(_ count: Int) {
        while lock.withLock({ afterSwitch }) < count { usleep(1_000) }
    }

    /// Stops every client and waits for them.
    func stop() {
        lock.withLock { stopping = true }
        group.wait()
    }
}
