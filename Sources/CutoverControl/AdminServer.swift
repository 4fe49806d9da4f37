import CCutoverSys
import CutoverLoop
import CutoverSystem
import Foundation

/// The admin Unix socket. Clients are read and answered on the control loop (non-blocking, no
/// thread per client); each command line runs on a small fixed pool of command threads, since a
/// switch waits for its gate's verify requests and the state file's fsync. Every client is
/// bounded: a line longer than `AdminCommands.maxLineBytes` gets a JSON error and the
/// connection is closed; a client that sends nothing for `idleTimeoutMs`, does not finish a line
/// within it, or stops reading its replies, is dropped; at most `maxClients` are served at once.
/// Other clients and the data plane are never affected.
public final class AdminServer: @unchecked Sendable {
    public let path: String
    private let handler: @Sendable (String, AuditActor) -> JSON
    private let logger: Logger
    let idleTimeoutMs: Int
    let maxClients = 32
    private let control: ControlLoop
    /// Runs command lines: two, so a switch waiting for its verify requests never holds up a
    /// `status` or a `rollback`.
    let commands = CommandThreads(count: 2, name: "cutover-admin")
    /// Set by `start`, cleared by `stop` (the owner's thread).
    private var listener: Channel?
    var clients = 0

    public init(path: String, idleTimeoutMs: Int = 30_000, logger: Logger, control: ControlLoop,
                handler: @escaping @Sendable (String, AuditActor) -> JSON) {
        self.path = path
        self.handler = handler
        self.logger = logger
        self.idleTimeoutMs = idleTimeoutMs
        self.control = control
    }

    /// Binds the socket with `mode` (and `group`, when given). A stale socket file is replaced;
    /// a socket another running cutover answers on is an error.
    public func start(mode: UInt32, group: String?) throws {
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
            fd = try UnixSocket.listen(path: path, mode: mode, groupID: groupID)
        } catch {
            throw StartupError("admin socket \(path): \(error)")
        }
        Posix.setNonBlocking(fd)
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
        FileIO.remove(path)
    }

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
            guard server.clients < server.maxClients else {
                let refusal = Array(((["ok": false, "error": "too many admin clients; try again"] as JSON).serialized() + "\n").utf8)
                refusal.withUnsafeBytes { _ = try? Posix.write(client, $0.baseAddress!, $0.count) }
                Posix.close(client)
                continue
            }
            let connection = AdminClient(fd: client, loop: loop, server: server, actor: actor)
            do {
                try loop.register(connection)
                server.clients += 1
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

    init(fd: Int32, loop: EventLoop, server: AdminServer, actor: AuditActor) {
        self.server = server
        self.actor = actor
        super.init(fd: fd, loop: loop)
    }

    func start() {
        lastReceivedAt = loop.now
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
                run(line, last: false)
                return
            }
            if pending.count > AdminCommands.maxLineBytes {
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
                if last { client.closeWhenFlushed = true }
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
        loop.closeChannel(self)
    }
}
