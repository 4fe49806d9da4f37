import CCutoverSys
import CutoverLoop
import CutoverSystem
import Foundation
import Synchronization

/// The admin Unix socket. Clients are read and answered on the control loop (non-blocking, no
/// thread per client); each command line runs on a small fixed pool of command threads, since a
/// switch waits for its gate's verify requests and the state file's fsync. Every client is
/// bounded: a line longer than `AdminCommands.maxLineBytes` gets a JSON error and the
/// connection is closed; a client that sends nothing for `idleTimeoutMs`, does not finish a line
/// within it, or stops reading its replies, is dropped; at most `maxClients` are served at once.
/// Other clients and the data plane are never affected.
///
/// Slots are kept for operators: a connection must send a complete line within `lineTimeoutMs`
/// (silent connections cannot sit on the slots), one uid holds at most `maxPerUser` of them
/// (one script reconnecting in a loop cannot take them all), and root and the proxy's own user
/// have `reservedSlots` more, so a `rollback` gets in even when every ordinary slot is taken.
/// A client refused a slot reads `{"ok":false,"busy":true,…}` (the CLI exits 3, "busy").
public final class AdminServer: @unchecked Sendable {
    public let path: String
    private let handler: @Sendable (String, AuditActor) -> JSON
    private let logger: Logger
    let idleTimeoutMs: Int
    let lineTimeoutMs: Int
    let maxClients = 32
    static let maxPerUser = 8
    static let reservedSlots = 4
    /// Open connections by uid (the control loop's thread).
    var clientsByUser: [UInt32: Int] = [:]
    let ownUID = ProcessIdentity.userID
    private let control: ControlLoop
    /// Runs command lines: two, so a switch waiting for its verify requests never holds up a
    /// `status` or a `rollback`.
    let commands = CommandThreads(count: 2, name: "cutover-admin")
    /// Set by `start`, cleared by `stop` (the owner's thread).
    private var listener: Channel?
    var clients = 0
    /// The listening socket (what a hot upgrade hands on); -1 before `start`.
    public private(set) var listenerFD: Int32 = -1
    /// The socket went to a new process: `stop` leaves its file in place.
    private let handedOver = Atomic<Bool>(false)
    /// Started on a socket inherited in a hot upgrade.
    private var inheritedSocket = false

    public init(path: String, idleTimeoutMs: Int = 30_000, lineTimeoutMs: Int = 5_000, logger: Logger, control: ControlLoop,
                handler: @escaping @Sendable (String, AuditActor) -> JSON) {
        self.path = path
        self.handler = handler
        self.logger = logger
        self.idleTimeoutMs = idleTimeoutMs
        self.lineTimeoutMs = min(lineTimeoutMs, idleTimeoutMs)
        self.control = control
    }

    /// Binds the socket with `mode` (and `group`, when given). A stale socket file is replaced;
    /// a socket another running cutover answers on is an error.
    public func start(mode: UInt32, group: String?, inheritedFD: Int32? = nil) throws {
        if let inheritedFD {
            // A hot upgrade: the old process's socket, its file and permissions as they are. The
            // file is never removed by this process: if it fails to take over, the old process
            // goes on answering there.
            inheritedSocket = true
            Posix.setNonBlocking(inheritedFD)
            listenerFD = inheritedFD
            let box = UncheckedBox(self)
            listener = control.addListener { loop in AdminListener(fd: inheritedFD, loop: loop, server: box.value) }
            logger.log(.info, "admin socket \(path) (inherited)")
            return
        }
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty { try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
        guard path.utf8.count < 108 else { throw StartupError("admin socket path is too long (max 107 bytes): \(path)") }
        switch FileIO.kind(of: path) {
        case .missing:
            break
        case .other:
            throw StartupError("admin socket \(path) exists and is not a socket; refusing to replace it")
        case .socket:
            switch Posix.connectUnix(path) {
            case .success(let fd):
                Posix.close(fd)
                throw StartupError("admin socket \(path) is in use: another cutover is running with it (stop it, or use another admin_socket)")
            case .failure(let error) where error.errnoCode == ECONNREFUSED:
                FileIO.remove(path)  // stale: left by a process that died
            case .failure(let error):
                throw StartupError("admin socket \(path): \(Posix.describe(error.errnoCode))")
            }
        }
        var groupID: UInt32? = nil
        if let group {
            guard let id = ProcessIdentity.groupID(named: group) else { throw StartupError("admin_group '\(group)' does not exist") }
            groupID = id
        }
        let fd: Int32
        do {
            // The backlog holds as many waiting connections as there are slots, no more.
            fd = try UnixSocket.listen(path: path, mode: mode, groupID: groupID, backlog: Int32(maxClients + Self.reservedSlots))
        } catch {
            throw StartupError("admin socket \(path): \(error)")
        }
        Posix.setNonBlocking(fd)
        listenerFD = fd
        let box = UncheckedBox(self)
        listener = control.addListener { loop in AdminListener(fd: fd, loop: loop, server: box.value) }
        logger.log(.info, "admin socket \(path) (mode \(String(mode, radix: 8)))")
    }

    /// Stops accepting and closes every client (commands under way finish; their replies are
    /// dropped), then removes the socket file.
    public func stop() {
        if let listener {
            self.listener = nil
            let box = UncheckedBox(self)
            control.removeListener(listener, closing: { ($0 as? AdminClient)?.server === box.value },
                                   shutDown: { ($0 as? AdminClient)?.close() })
        }
        commands.stop()
        if !isHandedOver && !inheritedSocket { FileIO.remove(path) }
    }

    /// The new process of a hot upgrade answers on the socket now: stop accepting and leave
    /// the file. Connected clients get the reply of a command under way (the `upgrade` itself),
    /// then their connection closes; their next command goes to the new process.
    public func handOver() {
        handedOver.store(true, ordering: .releasing)
        listenerFD = -1
        if let listener {
            self.listener = nil
            control.removeListener(listener, closing: { _ in false }, shutDown: { _ in })
        }
    }

    /// Read on the control loop by clients deciding whether to stay open after a reply.
    var isHandedOver: Bool { handedOver.load(ordering: .acquiring) }

    /// The reply to one line (on a command thread).
    func reply(to line: [UInt8], actor: AuditActor) -> String {
        let reply: JSON
        if line.count > AdminCommands.maxLineBytes {
            reply = ["ok": false, "error": .string("command line longer than \(AdminCommands.maxLineBytes) bytes")]
        } else if let text = String(validating: line, as: UTF8.self), !text.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\t" }) {
            if actor.pid < 0, case .success(let command) = AdminCommands.parse(text), command.changesState {
                // Every change is recorded with who made it; without an identity, no change.
                reply = ["ok": false, "error": "the caller's identity (SO_PEERCRED) is unavailable; state-changing commands are refused"]
            } else {
                reply = handler(text, actor)
            }
        } else {
            reply = ["ok": false, "error": "commands are lines of printable text; try 'help'"]
        }
        return reply.serialized()
    }

    /// Why a new connection from `actor` gets no slot, or nil when it gets one.
    func refusal(for actor: AuditActor) -> String? {
        let operator_ = actor.pid >= 0 && (actor.uid == 0 || actor.uid == ownUID)
        if clients >= maxClients + (operator_ ? Self.reservedSlots : 0) {
            return "every admin slot is taken (\(clients) clients); try again"
        }
        if !operator_ && (clients >= maxClients || clientsByUser[actor.uid, default: 0] >= Self.maxPerUser) {
            return clients >= maxClients ? "every admin slot is taken (\(clients) clients); try again"
                : "user \(actor.user) holds \(Self.maxPerUser) admin connections already; try again"
        }
        return nil
    }

    /// The caller's identity from SO_PEERCRED, recorded for every state-changing command.
    static func peer(_ fd: Int32) -> AuditActor {
        guard let peer = UnixSocket.peerCredentials(fd) else { return AuditActor(uid: UInt32.max, user: "unknown", pid: -1) }
        return AuditActor(uid: peer.uid, user: AuditActor.userName(uid: peer.uid), pid: peer.pid)
    }
}

/// The listening admin socket on the control loop.
final class AdminListener: Channel {
    unowned let server: AdminServer

    init(fd: Int32, loop: EventLoop, server: AdminServer) {
        self.server = server
        super.init(fd: fd, loop: loop)
    }

    override func handle(events: UInt32) {
        while true {
            let accepted: IOResult<(Int32, sockaddr_storage)>
            do {
                accepted = try Posix.accept(fd)
            } catch {
                return  // ECONNABORTED, EMFILE…: the next connection tries again
            }
            guard case .processed(let (client, _)) = accepted else { return }
            let actor = AdminServer.peer(client)
            if let refusal = server.refusal(for: actor) {
                let reply = Array(((["ok": false, "busy": true, "error": .string(refusal)] as JSON).serialized() + "\n").utf8)
                reply.withUnsafeBytes { _ = try? Posix.write(client, $0.baseAddress!, $0.count) }
                Posix.close(client)
                continue
            }
            let connection = AdminClient(fd: client, loop: loop, server: server, actor: actor)
            do {
                try loop.register(connection)
                server.clients += 1
                server.clientsByUser[actor.uid, default: 0] += 1
                connection.start()
            } catch {
                Posix.close(client)
            }
        }
    }
}

/// One admin client on the control loop: reads lines, runs one command at a time on the
/// command threads, writes each reply; bounded in line length, idle time and unread replies.
final class AdminClient: Channel {
    unowned let server: AdminServer
    private let actor: AuditActor
    private var pending: [UInt8] = []
    private var output: [UInt8] = []
    /// A command of this client is running: nothing more is read into commands until it answers.
    private var busy = false
    private var peerClosed = false
    private var closeWhenFlushed = false
    private var closed = false
    /// When the first byte of the unfinished line arrived (loop ms; nil: none).
    private var lineStartedAt: Int64? = nil
    /// When the client last sent anything (loop ms).
    private var lastReceivedAt: Int64 = 0
    /// Since when the client owes its first complete line: its connection (after a reply, the
    /// idle timeout applies).
    private var waitingSince: Int64 = 0
    /// A complete line arrived since `waitingSince`'s connection (a silent connection is not).
    private var sentALine = false

    init(fd: Int32, loop: EventLoop, server: AdminServer, actor: AuditActor) {
        self.server = server
        self.actor = actor
        super.init(fd: fd, loop: loop)
    }

    func start() {
        lastReceivedAt = loop.now
        waitingSince = loop.now
        advance()
    }

    override func handle(events: UInt32) {
        if events & (Epoll.readable | Epoll.peerHangup | Epoll.hangup | Epoll.error) != 0 { readAvailable() }
        advance()
    }

    override func deadlineReached() {
        guard !closed, !busy else { return }
        if !output.isEmpty {
            close()  // the client stopped reading its replies
        } else if !sentALine && loop.now - waitingSince >= Int64(server.lineTimeoutMs) {
            // Connected and silent (or trickling): a slot is for a command, not a placeholder.
            answer((["ok": false, "error": .string("no complete command line within \(server.lineTimeoutMs) ms of connecting")] as JSON).serialized())
            closeWhenFlushed = true
            advance()
        } else if loop.now - lastReceivedAt >= Int64(server.idleTimeoutMs) {
            close()  // idle, in the middle of a line or not
        } else if lineStartedAt != nil {
            // A line must be complete within the idle timeout of its first byte: a client trickling
            // one byte per timeout cannot hold one of the few admin slots for hours.
            answer((["ok": false, "error": "command line not completed in time"] as JSON).serialized())
            closeWhenFlushed = true
            advance()
        } else {
            close()  // idle
        }
    }

    private func readAvailable() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !peerClosed && !closed {
            let result = chunk.withUnsafeMutableBytes { buffer in
                Result { () throws(IOError) in try Posix.read(fd, buffer.baseAddress!, buffer.count) }
            }
            switch result {
            case .success(.processed(0)):
                peerClosed = true
            case .success(.processed(let count)):
                pending.append(contentsOf: chunk[0..<count])
                lastReceivedAt = loop.now
                if pending.count > AdminCommands.maxLineBytes * 2 { return }  // enough to judge the line
            case .success(.wouldBlock):
                return
            case .failure:
                close()
                return
            }
        }
    }

    /// Runs the next complete line, or decides what the connection waits for.
    private func advance() {
        guard !closed else { return }
        flush()
        guard !closed else { return }
        if !busy && !closeWhenFlushed {
            while let newline = pending.firstIndex(of: 0x0A) {
                var line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                if line.last == 0x0D { line.removeLast() }
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }  // blank lines are ignored
                lineStartedAt = nil
                sentALine = true
                if line.count > AdminCommands.maxLineBytes {
                    // However it arrived (in one piece or many): the error, then the close.
                    answer((["ok": false, "error": .string("command line longer than \(AdminCommands.maxLineBytes) bytes")] as JSON).serialized())
                    closeWhenFlushed = true
                    break
                }
                run(line, last: false)
                return
            }
            if closeWhenFlushed {
                // A line too long was just answered.
            } else if pending.count > AdminCommands.maxLineBytes {
                answer((["ok": false, "error": .string("command line longer than \(AdminCommands.maxLineBytes) bytes")] as JSON).serialized())
                closeWhenFlushed = true
            } else if peerClosed {
                // End of stream: a final unterminated line is still answered.
                if !pending.isEmpty {
                    let line = pending
                    pending.removeAll()
                    run(line, last: true)
                    return
                }
                closeWhenFlushed = true
            }
        }
        flush()  // an answer decided above goes out now: no new writability edge would announce it
        guard !closed else { return }
        if closeWhenFlushed && output.isEmpty && !busy {
            close()
            return
        }
        lineStartedAt = pending.isEmpty ? nil : (lineStartedAt ?? loop.now)
        // One deadline at a time: replies not read, a line not finished, or nothing at all.
        deadline = 0
        if busy { return }
        let idle = Int64(server.idleTimeoutMs)
        var due = (output.isEmpty ? lastReceivedAt : loop.now) + idle
        if let started = lineStartedAt, output.isEmpty { due = min(due, started + idle) }
        if !sentALine, output.isEmpty { due = min(due, waitingSince + Int64(server.lineTimeoutMs)) }
        setDeadline(after: Int(max(0, due - loop.now)))
    }

    private func run(_ line: [UInt8], last: Bool) {
        busy = true
        deadline = 0
        let box = UncheckedBox(self)
        let server = self.server
        let actor = self.actor
        let loop = UncheckedBox(self.loop)
        server.commands.run {
            let reply = server.reply(to: line, actor: actor)
            loop.value.execute {
                let client = box.value
                guard !client.closed else { return }
                client.busy = false
                client.answer(reply)
                if last || client.server.isHandedOver { client.closeWhenFlushed = true }
                client.advance()
            }
        }
    }

    private func answer(_ text: String) {
        output.append(contentsOf: (text + "\n").utf8)
    }

    private func flush() {
        while !output.isEmpty {
            let result = output.withUnsafeBytes { buffer in
                Result { () throws(IOError) in try Posix.sendNoSignal(fd, buffer.baseAddress!, buffer.count) }
            }
            switch result {
            case .success(.processed(let count)):
                output.removeFirst(count)
            case .success(.wouldBlock):
                return  // the writability edge calls `advance` again
            case .failure:
                close()
                return
            }
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        server.clients -= 1
        let left = server.clientsByUser[actor.uid, default: 1] - 1
        server.clientsByUser[actor.uid] = left > 0 ? left : nil
        loop.closeChannel(self)
    }
}
