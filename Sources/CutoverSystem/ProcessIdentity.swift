import Glibc

/// Who this process runs as, and names for user ids (audit records name their actor).
public enum ProcessIdentity {
    public static var userID: UInt32 { getuid() }
    public static var processID: Int32 { getpid() }

    /// The login name for `uid`, or the number when there is no passwd entry (containers
    /// often run with uids that have none).
    public static func userName(uid: UInt32) -> String {
        let suggested = sysconf(Int32(_SC_GETPW_R_SIZE_MAX))
        var buffer = [CChar](repeating: 0, count: suggested > 0 ? suggested : 4096)
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        let status = getpwuid_r(uid, &entry, &buffer, buffer.count, &result)
        guard status == 0, result != nil, let name = entry.pw_name else { return String(uid) }
        return String(cString: name)
    }

    /// The id of a group by name (nil: no such group).
    public static func groupID(named name: String) -> UInt32? {
        guard let entry = getgrnam(name) else { return nil }
        return entry.pointee.gr_gid
    }
}
