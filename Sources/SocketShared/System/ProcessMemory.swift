import CShims
#if canImport(Glibc)
import Glibc
#endif

/// Direct copies between this process and another one's memory with `process_vm_readv` /
/// `process_vm_writev`: one copy, no staging buffer. The kernel allows it when this process may
/// ptrace the other: same user (or CAP_SYS_PTRACE) and, under Yama `ptrace_scope` 1, only a
/// descendant or the one process the other named with `prctl(PR_SET_PTRACER)`; `ptrace_scope` 2
/// needs CAP_SYS_PTRACE, 3 allows nobody.
public struct ProcessMemory: Sendable {
    public let pid: Int32

    public init(pid: Int32) { self.pid = pid }

    /// A range of the other process's memory.
    public struct Range: Sendable, Equatable {
        public var address: UInt64
        public var length: Int
        public init(address: UInt64, length: Int) {
            self.address = address
            self.length = length
        }
    }

    /// Copies from `remote` ranges (in order) into the `local` buffers (in order).
    /// - Returns: bytes copied (less than asked when a remote range ends early).
    /// - Throws: `.notPermitted` (EPERM) when the kernel refuses access, `.outOfBounds` (EFAULT) for
    ///   a bad address, `.systemCall` otherwise. The corresponding C function is `process_vm_readv`.
    public func read(_ remote: [Range], into local: [UnsafeMutableRawBufferPointer]) throws(SharedError) -> Int {
        let localIOV = local.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        return try transfer("process_vm_readv", localIOV, remote) { l, nl, r, nr in
            cshims_process_vm_readv(pid, l, nl, r, nr)
        }
    }

    /// Copies the `local` buffers (in order) into the `remote` ranges (in order).
    /// - Returns: bytes copied.
    /// - Throws: as `read`. The corresponding C function is `process_vm_writev`.
    public func write(_ local: [UnsafeRawBufferPointer], to remote: [Range]) throws(SharedError) -> Int {
        let localIOV = local.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        return try transfer("process_vm_writev", localIOV, remote) { l, nl, r, nr in
            cshims_process_vm_writev(pid, l, nl, r, nr)
        }
    }

    private func transfer(
        _ name: String, _ localIOV: [iovec], _ remote: [Range],
        _ call: (UnsafePointer<iovec>?, UInt, UnsafePointer<iovec>?, UInt) -> Int
    ) throws(SharedError) -> Int {
        let remoteIOV = remote.map { iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt($0.address)), iov_len: $0.length) }
        while true {
            let n = localIOV.withUnsafeBufferPointer { l in
                remoteIOV.withUnsafeBufferPointer { r in
                    call(l.baseAddress, UInt(l.count), r.baseAddress, UInt(r.count))
                }
            }
            if n >= 0 { return n }
            let err = errno
            switch err {
            case EINTR: continue
            case EPERM, EACCES: throw SharedError(.notPermitted, "\(name) to pid \(pid)", errno: Errno(err))
            case EFAULT: throw SharedError(.outOfBounds, "\(name) to pid \(pid)", errno: Errno(err))
            default: throw SharedError.system(name, Errno(err))
            }
        }
    }

    /// Yama's ptrace_scope, or nil where Yama is absent.
    public static var yamaPtraceScope: Int? {
        let v = cshims_yama_ptrace_scope()
        return v < 0 ? nil : Int(v)
    }
}
