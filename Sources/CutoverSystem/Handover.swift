import CCutoverSys
import Glibc

/// The sockets a running cutover hands to its successor in a hot upgrade, and how the
/// successor finds them: the descriptors are inherited across execve, and
/// `CUTOVER_INHERIT` names each — `main@127.0.0.1:8080=5,6;admin=9;metrics=10` (one descriptor
/// per loop for a data-plane listener). `CUTOVER_UPGRADE_FD` is the write end of a pipe on
/// which the successor says `ready PID VERSION` (or `error MESSAGE`) once it serves.
public struct InheritedSockets: Sendable, Equatable {
    public static let variable = "CUTOVER_INHERIT"
    public static let readyVariable = "CUTOVER_UPGRADE_FD"
    /// The read end of a pipe on which the old process writes `go` once it has stopped
    /// accepting (or closes it: it is gone); until then the new process changes nothing.
    public static let goVariable = "CUTOVER_UPGRADE_GO_FD"

    /// Descriptors by key: `KIND@ADDRESS` for listeners, `admin`, `metrics`.
    public var descriptors: [String: [Int32]]

    public init(descriptors: [String: [Int32]] = [:]) {
        self.descriptors = descriptors
    }

    /// The value of `CUTOVER_INHERIT`.
    public var encoded: String {
        descriptors.keys.sorted().map { key in "\(key)=" + descriptors[key]!.map(String.init).joined(separator: ",") }
            .joined(separator: ";")
    }

    /// Reads `CUTOVER_INHERIT`; nil when absent or malformed (then nothing is inherited).
    public init?(encoded: String) {
        var descriptors: [String: [Int32]] = [:]
        for entry in encoded.split(separator: ";") {
            guard let equals = entry.lastIndex(of: "=") else { return nil }
            let key = String(entry[..<equals])
            let fds = entry[entry.index(after: equals)...].split(separator: ",").compactMap { Int32($0) }
            guard !key.isEmpty, !fds.isEmpty, fds.allSatisfy({ $0 > 2 }) else { return nil }
            descriptors[key] = fds
        }
        self.descriptors = descriptors
    }

    public var all: [Int32] { descriptors.values.flatMap { $0 } }

    /// Takes the descriptors of `key` (they are then the caller's to use or close).
    public mutating func take(_ key: String) -> [Int32]? {
        descriptors.removeValue(forKey: key)
    }

    /// Closes what nobody took (a listener the new configuration no longer has).
    public mutating func closeRest() -> [String] {
        let keys = descriptors.keys.sorted()
        for fd in all { Glibc.close(fd) }
        descriptors.removeAll()
        return keys
    }
}

/// Starting the successor process of a hot upgrade, and the pipe it reports on.
public enum Successor {
    /// Starts `path` with `arguments` (argv[1…]) and `environment`, `keep` inherited; returns
    /// the pid.
    public static func spawn(path: String, arguments: [String], environment: [String: String], keep: [Int32]) throws(IOError) -> Int32 {
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        let pid = keep.withUnsafeBufferPointer { keepPointer in
            cutover_spawn(path, argv, envp, keepPointer.baseAddress, Int32(keep.count))
        }
        guard pid > 0 else { throw IOError(errnoCode: Posix.lastError(), function: "fork") }
        return pid
    }

    /// A pipe for the successor's report: (read end, write end), both close-on-exec (the write
    /// end is inherited explicitly).
    public static func reportPipe() throws(IOError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard cutover_pipe_cloexec(&fds) == 0 else { throw IOError(errnoCode: Posix.lastError(), function: "pipe2") }
        return (fds[0], fds[1])
    }

    /// The successor's report line, waiting at most `timeoutMs`: `.line` (its text), `.closed`
    /// (it exited or closed the pipe first) or `.timeout`.
    public enum Report: Equatable, Sendable {
        case line(String)
        case closed
        case timeout
    }

    public static func readReport(_ fd: Int32, timeoutMs: Int) -> Report {
        let deadline = monotonicMilliseconds() + Int64(timeoutMs)
        var received: [UInt8] = []
        while true {
            let left = deadline - monotonicMilliseconds()
            guard left > 0 else { return .timeout }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(left))
            if ready < 0 && Posix.lastError() == EINTR { continue }
            guard ready > 0 else { return .timeout }
            var chunk = [UInt8](repeating: 0, count: 512)
            let count = read(fd, &chunk, chunk.count)
            if count < 0 && Posix.lastError() == EINTR { continue }
            guard count > 0 else { return received.isEmpty ? .closed : .line(String(decoding: received, as: UTF8.self)) }
            received += chunk[0..<count]
            if let newline = received.firstIndex(of: 0x0A) { return .line(String(decoding: received[..<newline], as: UTF8.self)) }
        }
    }

    /// Writes the successor's report (`ready …` or `error …`) and closes the pipe.
    public static func report(_ fd: Int32, _ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// Waits (blocking) until the old process says `go` or closes the pipe.
    public static func awaitGo(_ fd: Int32) {
        var byte: UInt8 = 0
        while true {
            let count = read(fd, &byte, 1)
            if count < 0 && Posix.lastError() == EINTR { continue }
            if count <= 0 || byte == 0x0A { break }
        }
        close(fd)
    }

    /// Tells the new process to go ahead (the caller closes the pipe).
    public static func sendGo(_ fd: Int32) {
        let bytes = Array("go\n".utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// The exit code when `pid` has exited (reaped), nil while it runs.
    public static func exitCode(_ pid: Int32) -> Int32? {
        var status: Int32 = 0
        guard cutover_wait_nohang(pid, &status) == pid else { return nil }
        return cutover_exit_code(status)
    }

    public static func terminate(_ pid: Int32, waitMs: Int = 2_000) {
        kill(pid, SIGTERM)
        let deadline = monotonicMilliseconds() + Int64(waitMs)
        while monotonicMilliseconds() < deadline {
            if exitCode(pid) != nil { return }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    public static func closeDescriptor(_ fd: Int32) { close(fd) }

    /// The absolute path of `path` (as the process was started), resolved now: the binary a
    /// later upgrade starts by default, even if the file there was replaced meanwhile.
    public static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        if path.contains("/") {
            guard let resolved = realpath(path, nil) else { return path }
            defer { free(resolved) }
            return String(cString: resolved)
        }
        for folder in (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin").split(separator: ":") {
            let candidate = "\(folder)/\(path)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return path
    }

    public static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }
}

extension OpenFile {
    /// flock(LOCK_EX) around `body`: appends of two processes (a hot upgrade's old and new)
    /// never interleave.
    public func withExclusiveLock<R>(_ body: () throws -> R) rethrows -> R {
        while cutover_lock_exclusive(fd) != 0 && Posix.lastError() == EINTR {}
        defer { _ = cutover_unlock(fd) }
        return try body()
    }
}
