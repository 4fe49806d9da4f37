import CutoverSystem
import Foundation

/// The accept side of the control plane's small servers (admin socket, metrics endpoint): one
/// thread accepts on a blocking listener, one short-lived thread serves each client, at most
/// `maxClients` at once (a client over the limit is handed to `refuse`, then closed). A few
/// operators and scrapers, never the request path.
final class ClientThreads: @unchecked Sendable {
    private let name: String
    private let maxClients: Int
    private let serve: @Sendable (Int32) -> Void
    private let refuse: @Sendable (Int32) -> Void
    private let lock = NSLock()
    private var listenFD: Int32 = -1
    private var clients = 0
    private var stopped = false
    private let acceptDone = DispatchSemaphore(value: 0)

    /// `serve` owns nothing: the descriptor is closed after it returns.
    init(name: String, maxClients: Int, serve: @escaping @Sendable (Int32) -> Void,
         refuse: @escaping @Sendable (Int32) -> Void = { _ in }) {
        self.name = name
        self.maxClients = maxClients
        self.serve = serve
        self.refuse = refuse
    }

    func start(listening fd: Int32) {
        lock.withLock { listenFD = fd }
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = name
        thread.start()
    }

    /// Stops accepting (clients being served finish on their own) and closes the listener.
    func stop() {
        let fd: Int32 = lock.withLock {
            defer { listenFD = -1 }  // a second stop finds nothing to do
            stopped = true
            return listenFD
        }
        guard fd >= 0 else { return }
        Posix.shutdownBoth(fd)  // wakes the blocked accept
        acceptDone.wait()
        Posix.close(fd)
    }

    private func acceptLoop(_ listenFD: Int32) {
        defer { acceptDone.signal() }
        while true {
            let accepted = Result { () throws(IOError) in try Posix.acceptBlocking(listenFD) }
            if lock.withLock({ stopped }) {
                if case .success(let client) = accepted { Posix.close(client) }
                return
            }
            let client: Int32
            switch accepted {
            case .success(let fd):
                client = fd
            case .failure(let error):
                switch error.errnoCode {
                case ECONNABORTED, EAGAIN, EINTR: continue
                case EMFILE, ENFILE:
                    usleep(100_000)  // no descriptor now: try again shortly rather than spin
                    continue
                default:
                    return
                }
            }
            let admitted = lock.withLock { () -> Bool in
                guard clients < maxClients else { return false }
                clients += 1
                return true
            }
            guard admitted else {
                refuse(client)
                Posix.close(client)
                continue
            }
            let thread = Thread { [self] in
                serve(client)
                Posix.close(client)
                lock.withLock { clients -= 1 }
            }
            thread.name = name + "-client"
            thread.start()
        }
    }
}
