import Glibc

/// Anonymous page mappings: the loops' I/O buffers (a mapping can be given back to the
/// system at once, which a malloc heap would keep).
public enum PageMemory {
    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// `size` bytes of zeroed, private, read-write memory. Traps when the system has none left:
    /// nothing sensible can continue without a 20 KiB buffer.
    public static func map(_ size: Int) -> UnsafeMutableRawPointer {
        guard let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              pointer != MAP_FAILED
        else {
            fatalError("cutover: cannot map \(size) bytes")
        }
        return pointer
    }

    public static func unmap(_ pointer: UnsafeMutableRawPointer, _ size: Int) {
        munmap(pointer, size)
    }
}

/// Limits and settings of the whole process.
public enum ProcessResources {
    /// Processors online now (`workers auto`).
    public static var onlineProcessors: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Raises the soft limit on open descriptors to the hard limit and returns the limit in force.
    public static func raiseOpenFileLimit() -> Int {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
            getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// A peer that vanished must not kill the process: writes to it fail with EPIPE instead.
    public static func ignoreBrokenPipes() {
        signal(SIGPIPE, SIG_IGN)
    }
}
