import CCutoverSys
import Glibc

/// Unix stream sockets of the control plane (the admin socket) and blocking-socket options.
public enum UnixSocket {
    /// Why a Unix socket could not be set up: the step and the errno text, as one sentence.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Binds and listens on `path`. The socket file is created with no permissions (umask
    /// 0777 around bind), then given `mode` and, when set, `groupID`: there is no moment at
    /// which it is wider than asked. On failure nothing is left behind.
    public static func listen(path: String, mode: UInt32, groupID: UInt32?, backlog: Int32 = 16) throws(Failure) -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket() failed: \(Posix.describe(cutover_errno()))") }
        let previousMask = umask(0o777)
        let bound = Posix.withUnixAddress(path) { bind(fd, $0, $1) }
        umask(previousMask)
        guard bound == 0 else {
            let message = Posix.describe(cutover_errno())
            Glibc.close(fd)
            throw Failure(description: "bind failed: \(message)")
        }
        func abandon(_ message: String) -> Failure {
            Glibc.close(fd)
            unlink(path)
            return Failure(description: message)
        }
        guard chmod(path, mode_t(mode)) == 0 else { throw abandon("chmod failed: \(Posix.describe(cutover_errno()))") }
        if let groupID, chown(path, uid_t.max, groupID) != 0 {
            throw abandon("cannot give it to group \(groupID): \(Posix.describe(cutover_errno()))")
        }
        guard Glibc.listen(fd, backlog) == 0 else { throw abandon("listen failed: \(Posix.describe(cutover_errno()))") }
        return fd
    }

    /// The connecting process's uid and pid (SO_PEERCRED); nil when the kernel does not say.
    public static func peerCredentials(_ fd: Int32) -> (uid: UInt32, pid: Int32)? {
        var uid: UInt32 = 0
        var pid: Int32 = 0
        guard cutover_peer_credentials(fd, &uid, &pid) == 0 else { return nil }
        return (uid, pid)
    }
}

extension Posix {
    /// Bounds every blocking recv and send on `fd` (SO_RCVTIMEO and SO_SNDTIMEO): a call that
    /// waits longer returns `.wouldBlock`.
    public static func setBlockingTimeouts(_ fd: Int32, milliseconds: Int) {
        var timeout = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }
}
