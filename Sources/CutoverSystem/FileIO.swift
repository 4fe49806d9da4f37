import CCutoverSys
import Glibc

/// Files and folders for the control plane (blocking calls, never on a loop thread).
public enum FileIO {
    /// `strerror` text for an errno value.
    public static func describe(_ code: Int32) -> String {
        Posix.describe(code)
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
        switch Posix.lastError() {
        case EEXIST:
            return nil
        case ENOENT:
            let parent = FileIO.parentFolder(of: path)
            guard parent != path, FileIO.createFolder(parent, mode: mode) == nil else { return FileIO.describe(ENOENT) }
            if mkdir(path, mode) == 0 || Posix.lastError() == EEXIST { return nil }
            return FileIO.describe(Posix.lastError())
        case let code:
            return FileIO.describe(code)
        }
    }

    /// Writes every byte, retrying short writes and EINTR; returns a problem description.
    public static func writeAll(fd: Int32, bytes: ArraySlice<UInt8>) -> String? {
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if Posix.lastError() == EINTR { continue }
                return FileIO.describe(Posix.lastError())
            }
            offset += written
        }
        return nil
    }
}
