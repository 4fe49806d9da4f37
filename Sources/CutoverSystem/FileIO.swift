import CCutoverSys
import Glibc

/// A failed file operation: which step on which path, and the errno behind it.
public struct FileError: Error, CustomStringConvertible, Sendable {
    /// The errno of the failed call (0 when the failure is not the kernel's, e.g. injected).
    public let code: Int32
    /// The step, as it reads in a message: "write /var/lib/cutover/.state.tmp-12-9f".
    public let step: String
    /// Why, when `code` is 0.
    private let detail: String?
    /// Set when the new content is already in place although the operation reports a
    /// failure (an atomic write whose folder could not be synced).
    public let newContentInPlace: Bool

    public init(code: Int32, step: String, detail: String? = nil, newContentInPlace: Bool = false) {
        self.code = code
        self.step = step
        self.detail = detail
        self.newContentInPlace = newContentInPlace
    }

    /// `strerror` text (or the detail).
    public var reason: String { detail ?? Posix.describe(code) }
    public var description: String { "\(step): \(reason)" }
}

/// An open descriptor of a regular file, owned by one object and closed once. Blocking
/// calls: control plane and writer threads only, never a loop thread.
public final class OpenFile: @unchecked Sendable {
    public let path: String
    public let fd: Int32
    private var isOpen: Bool

    private init(path: String, fd: Int32, owned: Bool = true) {
        self.path = path
        self.fd = fd
        isOpen = owned
    }

    deinit { if isOpen { Glibc.close(fd) } }

    /// The process's standard output (never closed by this object).
    public static let standardOutput = OpenFile(path: "stdout", fd: STDOUT_FILENO, owned: false)

    /// For reading.
    public static func reading(_ path: String) throws(FileError) -> OpenFile {
        try open(path, O_RDONLY | O_CLOEXEC, mode: 0)
    }

    /// For appending (created with `mode` when missing).
    public static func appending(_ path: String, mode: mode_t) throws(FileError) -> OpenFile {
        try open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode: mode)
    }

    /// Created exclusively (fails with EEXIST when the path exists).
    public static func creatingExclusively(_ path: String, mode: mode_t) throws(FileError) -> OpenFile {
        try open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode: mode)
    }

    private static func open(_ path: String, _ flags: Int32, mode: mode_t) throws(FileError) -> OpenFile {
        while true {
            let fd = Glibc.open(path, flags, mode)
            if fd >= 0 { return OpenFile(path: path, fd: fd) }
            let code = cutover_errno()
            if code != EINTR { throw FileError(code: code, step: "open \(path)") }
        }
    }

    /// Writes every byte, retrying short writes and EINTR.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(FileError) {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                let code = cutover_errno()
                if code == EINTR { continue }
                throw FileError(code: code, step: "write \(path)")
            }
            if written == 0 { throw FileError(code: EIO, step: "write \(path)") }
            offset += written
        }
    }

    public func writeAll(_ bytes: some Collection<UInt8>) throws(FileError) {
        let array = Array(bytes)
        var failure: FileError? = nil
        array.withUnsafeBytes { buffer in
            do throws(FileError) { try writeAll(buffer) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Reads up to `count` bytes at the current offset; 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FileError) -> Int {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            let code = cutover_errno()
            if code != EINTR { throw FileError(code: code, step: "read \(path)") }
        }
    }

    /// Fills `buffer` from `offset` (pread); fails when the file ends first.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(FileError) {
        var filled = 0
        while filled < buffer.count {
            let got = pread(fd, buffer.baseAddress! + filled, buffer.count - filled, off_t(offset + filled))
            if got < 0 && cutover_errno() == EINTR { continue }
            guard got > 0 else {
                throw FileError(code: got < 0 ? cutover_errno() : 0, step: "read \(path)", detail: got < 0 ? nil : "file shrank")
            }
            filled += got
        }
    }

    public func size() throws(FileError) -> Int {
        var stats = stat()
        guard fstat(fd, &stats) == 0 else { throw FileError(code: cutover_errno(), step: "stat \(path)") }
        return Int(stats.st_size)
    }

    /// fsync(2): the bytes written so far are on disk when this returns.
    public func sync() throws(FileError) {
        // EINVAL: the descriptor does not support syncing (a pipe, /dev/stdout): nothing to do.
        guard fsync(fd) == 0 || cutover_errno() == EINVAL else { throw FileError(code: cutover_errno(), step: "fsync \(path)") }
    }

    /// Closes now, reporting a delayed write error (NFS) that close(2) may return.
    public func close() throws(FileError) {
        guard isOpen else { return }
        isOpen = false
        guard Glibc.close(fd) == 0 else { throw FileError(code: cutover_errno(), step: "close \(path)") }
    }
}

/// Files and folders for the control plane (blocking calls, never on a loop thread).
public enum FileIO {
    /// `strerror` text for an errno value.
    public static func describe(_ code: Int32) -> String {
        Posix.describe(code)
    }

    /// The whole file. Throws with `code == ENOENT` when it does not exist, and with a detail
    /// when it is larger than `maxBytes`.
    public static func readWhole(_ path: String, maxBytes: Int = .max) throws(FileError) -> [UInt8] {
        let file = try OpenFile.reading(path)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            var failure: FileError? = nil
            let count = chunk.withUnsafeMutableBytes { buffer -> Int in
                do throws(FileError) { return try file.read(into: buffer) } catch {
                    failure = error
                    return 0
                }
            }
            if let failure { throw failure }
            if count == 0 { return bytes }
            bytes.append(contentsOf: chunk[..<count])
            if bytes.count > maxBytes {
                throw FileError(code: 0, step: "read \(path)", detail: "larger than \(maxBytes) bytes")
            }
        }
    }

    /// Failures tests inject into `writeAtomically` to see what a full disk or a crash leaves
    /// behind. Production code passes the empty value.
    public struct WriteFaults: Sendable {
        /// Write this many bytes of the temp file, then fail as if the disk were full.
        public var failWriteAfterBytes: Int?
        /// Fail after the temp file is complete and synced, just before the rename.
        public var failBeforeRename = false

        public init(failWriteAfterBytes: Int? = nil, failBeforeRename: Bool = false) {
            self.failWriteAfterBytes = failWriteAfterBytes
            self.failBeforeRename = failBeforeRename
        }
    }

    /// Replaces `path` with `bytes` so that a reader (or a restart after a crash) sees the old
    /// file or the new one, never a mix: a temp file in the same folder, written, synced and
    /// closed, renamed over `path`, then the folder synced. Every failure but the last leaves
    /// the old file untouched; a failed folder sync is thrown with `newContentInPlace`.
    public static func writeAtomically(_ path: String, bytes: [UInt8], mode: mode_t = 0o644,
                                       faults: WriteFaults = WriteFaults()) throws(FileError) {
        let folder = parentFolder(of: path)
        if let problem = createFolder(folder, mode: 0o755) {
            throw FileError(code: 0, step: "cannot create folder \(folder)", detail: problem)
        }
        // Opened before the rename so that every failure that can still be reported as
        // "nothing changed" happens before the new file becomes visible.
        let folderFd = Glibc.open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard folderFd >= 0 else { throw FileError(code: cutover_errno(), step: "cannot open folder \(folder)") }
        defer { Glibc.close(folderFd) }

        let temp = try createTemp(besides: path, mode: mode)
        do throws(FileError) {
            let limit = min(bytes.count, faults.failWriteAfterBytes ?? bytes.count)
            try temp.writeAll(bytes[0..<limit])
            if limit < bytes.count { throw FileError(code: 0, step: "write \(temp.path)", detail: "\(describe(ENOSPC)) (injected)") }
            try temp.sync()
            try temp.close()
            if faults.failBeforeRename { throw FileError(code: 0, step: "rename \(temp.path)", detail: "interrupted (injected)") }
        } catch {
            try? temp.close()
            unlink(temp.path)
            throw error
        }
        guard rename(temp.path, path) == 0 else {
            let code = cutover_errno()
            unlink(temp.path)
            throw FileError(code: code, step: "rename \(temp.path)")
        }
        // Makes the rename itself durable. If this fails the new file is already in place
        // (complete, but perhaps not yet on disk).
        if fsync(folderFd) != 0 && cutover_errno() != EINVAL {
            throw FileError(code: cutover_errno(), step: "fsync of \(folder)", newContentInPlace: true)
        }
    }

    /// A new, exclusively created file next to `path` (same folder, so rename is atomic). The
    /// random suffix keeps a stale temp file left by a crashed writer (possibly with the same
    /// pid after a reboot) from blocking every later write.
    private static func createTemp(besides path: String, mode: mode_t) throws(FileError) -> OpenFile {
        let folder = parentFolder(of: path)
        let name = path.split(separator: "/").last.map(String.init) ?? "file"
        var lastError = FileError(code: EEXIST, step: "cannot create a temp file in \(folder)")
        for _ in 0..<16 {
            let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
            do {
                return try OpenFile.creatingExclusively("\(folder)/.\(name).tmp-\(getpid())-\(suffix)", mode: mode)
            } catch {
                lastError = FileError(code: error.code, step: "cannot create a temp file in \(folder)")
                if error.code != EEXIST { break }
            }
        }
        throw lastError
    }

    /// The folder part of a path: "." for a bare name, "/" for a file in the root.
    public static func parentFolder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let folder = String(path[..<slash])
        return folder.isEmpty ? "/" : folder
    }

    /// `mkdir -p` with an explicit mode; returns a problem description or nil on success.
    public static func createFolder(_ path: String, mode: mode_t) -> String? {
        if mkdir(path, mode) == 0 { return nil }
        switch cutover_errno() {
        case EEXIST:
            return nil
        case ENOENT:
            let parent = parentFolder(of: path)
            guard parent != path, createFolder(parent, mode: mode) == nil else { return describe(ENOENT) }
            if mkdir(path, mode) == 0 || cutover_errno() == EEXIST { return nil }
            return describe(cutover_errno())
        case let code:
            return describe(code)
        }
    }

    /// What is at `path`, without following a symbolic link.
    public enum Kind: Sendable, Equatable {
        case missing, socket, other
    }

    public static func kind(of path: String) -> Kind {
        var existing = stat()
        guard lstat(path, &existing) == 0 else { return .missing }
        return existing.st_mode & S_IFMT == S_IFSOCK ? .socket : .other
    }

    /// The names in a folder (no `.` and `..`), sorted; nil when `path` is not a readable folder.
    public static func folderEntries(_ path: String) -> [String]? {
        guard let folder = opendir(path) else { return nil }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// unlink(2), ignoring a missing file.
    public static func remove(_ path: String) {
        _ = unlink(path)
    }

    /// The process's working folder.
    public static func currentDirectory() -> String {
        guard let cwd = getcwd(nil, 0) else { return "." }
        defer { free(cwd) }
        return String(cString: cwd)
    }
}
