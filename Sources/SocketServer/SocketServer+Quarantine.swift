import CLwIP
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// Send buffers of an ended process-vm session, held until the client process exits.
///
/// With process-vm the client library writes datagrams straight into lwIP buffers in this process
/// (`process_vm_writev`), at addresses it read from its send ring. When the server ends a session
/// (the client broke its segment, or sent malformed messages) the library does not know yet and may
/// still be writing into those buffers: freeing them would let it write into freed server memory.
/// So they are kept, unused, until the process is gone (a pidfd in the event loop), and the process
/// gets the shared-memory transport for any new session meanwhile, so this happens at most once per
/// session it holds. Without a pidfd (the process already exited) they are freed at once.
struct Quarantine {
    let pidfd: Int32
    let pid: Int32
    let buffers: [UnsafeMutablePointer<pbuf>]
}

extension SocketServer {
    /// Holds `buffers` (process-vm send buffers of an ended session of `pid`) until `pid` exits.
    func quarantine(_ buffers: [UnsafeMutablePointer<pbuf>], of pid: Int32) {
        guard !buffers.isEmpty else { return }
        let pidfd = cstack_pidfd_open(pid)
        guard pidfd >= 0 else {
            for p in buffers { pbuf_free(p) }
            return
        }
        let token = Self.quarantineToken + nextQuarantine
        nextQuarantine = (nextQuarantine + 1) % ((1 << 32) - Self.quarantineToken)
        do {
            try loop.add(pidfd, token: token)
        } catch {
            // Cannot watch it: keep the buffers for good rather than risk the client writing into
            // freed memory (bounded by the session's --client-buffer-memory).
            logger.warning("cannot watch client pid \(pid) (\(error)); keeping its \(buffers.count) buffers")
            close(pidfd)
            return
        }
        quarantines[token] = Quarantine(pidfd: pidfd, pid: pid, buffers: buffers)
        demotedPIDs.insert(pid)
    }

    /// The process of a quarantine exited: its buffers are safe to free.
    func releaseQuarantine(_ token: UInt64) {
        guard let q = quarantines.removeValue(forKey: token) else { return }
        loop.remove(q.pidfd)
        close(q.pidfd)
        for p in q.buffers { pbuf_free(p) }
        if !quarantines.values.contains(where: { $0.pid == q.pid }) { demotedPIDs.remove(q.pid) }
    }
}
