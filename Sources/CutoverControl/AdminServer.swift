import CCutoverSys
import CutoverSystem
import Foundation

/// The admin Unix socket: one thread accepts, one short-lived thread serves each client (a few
/// operators and scripts, never the request path). Every client is bounded: a line longer than
/// `AdminCommands.maxLineBytes` gets a JSON error and the connection is closed; a client that
/// sends nothing for `idleTimeoutMs`, or stops reading its replies, is dropped; at most
/// `maxClients` are served at once. Other clients and the data plane are never affected.
public final class AdminServer: @unchecked Sendable {
    public let path: String
    private let handler: @Sendable (String, AuditActor) -> JSON
    private let logger: Logger
    private let idleTimeoutMs: Int
    private let maxClients = 32
    private var threads: ClientThreads?

    public init(path: String, idleTimeoutMs: Int = 30_000, logger: Logger,
                handler: @escaping @Sendable (String, AuditActor) -> JSON) {
        self.path = path
        self.handler = handler
        self.logger = logger
        self.idleTimeoutMs = idleTimeoutMs
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
        // Weak: the threads are the server's, and must not keep it alive after its owner let go.
        let threads = ClientThreads(name: "cutover-admin", maxClients: maxClients, serve: { [weak self] in self?.serve($0) },
                                    refuse: { [weak self] in
            self?.writeLine($0, (["ok": false, "error": "too many admin clients; try again"] as JSON).serialized())
        })
        threads.start(listening: fd)
        self.threads = threads
        logger.log(.info, "admin socket \(path) (mode \(String(mode, radix: 8)))")
    }

    public func stop() {
        guard let threads else { return }
        threads.stop()
        FileIO.remove(path)
    }

    private func serve(_ fd: Int32) {
        Posix.setBlockingTimeouts(fd, milliseconds: idleTimeoutMs)
        let actor = Self.peer(fd)
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        // A line must be complete within the idle timeout of its first byte: a client trickling
        // one byte per timeout cannot hold one of the few admin slots for hours.
        var lineStartedAt: Int64? = nil
        while true {
            while let newline = pending.firstIndex(of: 0x0A) {
                var line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                if line.last == 0x0D { line.removeLast() }
                guard respond(to: line, actor: actor, fd: fd) else { return }
            }
            lineStartedAt = pending.isEmpty ? nil : (lineStartedAt ?? monotonicMilliseconds())
            if let started = lineStartedAt, monotonicMilliseconds() - started > Int64(idleTimeoutMs) {
                writeLine(fd, (["ok": false, "error": "command line not completed in time"] as JSON).serialized())
                return
            }
            if pending.count > AdminCommands.maxLineBytes {
                let reply: JSON = ["ok": false, "error": .string("command line longer than \(AdminCommands.maxLineBytes) bytes")]
                writeLine(fd, reply.serialized())
                return
            }
            let received = chunk.withUnsafeMutableBytes { buffer in
                Result { () throws(IOError) in try Posix.receive(fd, buffer.baseAddress!, buffer.count) }
            }
            guard case .success(.processed(let count)) = received else { return }  // idle timeout or error
            if count > 0 {
                pending.append(contentsOf: chunk[0..<count])
                continue
            }
            // End of stream: a final unterminated line is still answered.
            if !pending.isEmpty && pending.count <= AdminCommands.maxLineBytes {
                _ = respond(to: pending, actor: actor, fd: fd)
            }
            return
        }
    }

    /// Answers one line. False when the client stopped reading (the connection is dropped).
    private func respond(to line: [UInt8], actor: AuditActor, fd: Int32) -> Bool {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return true }  // blank lines are ignored
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
        return writeLine(fd, reply.serialized())
    }

    @discardableResult
    private func writeLine(_ fd: Int32, _ text: String) -> Bool {
        let bytes = Array((text + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes { buffer in
                Result { () throws(IOError) in try Posix.sendNoSignal(fd, buffer.baseAddress! + sent, buffer.count - sent) }
            }
            // A failure, or a client that stopped reading for the whole send timeout: drop it.
            guard case .success(.processed(let count)) = result, count > 0 else { return false }
            sent += count
        }
        return true
    }

    /// The caller's identity from SO_PEERCRED, recorded for every state-changing command.
    static func peer(_ fd: Int32) -> AuditActor {
        guard let peer = UnixSocket.peerCredentials(fd) else { return AuditActor(uid: UInt32.max, user: "unknown", pid: -1) }
        return AuditActor(uid: peer.uid, user: AuditActor.userName(uid: peer.uid), pid: peer.pid)
    }
}
