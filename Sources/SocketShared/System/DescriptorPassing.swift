import CShims
#if canImport(Glibc)
import Glibc
#endif

/// A message received from a `SOCK_SEQPACKET` socket, with the descriptors that came with it.
/// The receiver owns `descriptors` and must close every one it does not keep.
public struct ReceivedPacket {
    public var bytes: [UInt8]
    public var descriptors: [Int32]
    /// The message was longer than the buffer (the rest is lost) or descriptors did not fit.
    public var truncated: Bool

    public func closeDescriptors() {
        for fd in descriptors { close(fd) }
    }
}

/// `SCM_RIGHTS` message passing on a connected `SOCK_SEQPACKET` socket. Sends use `MSG_NOSIGNAL`
/// (a dead peer is `EPIPE`, never `SIGPIPE`); receives use `MSG_CMSG_CLOEXEC`.
public enum DescriptorPassing {
    /// Sends one message with `descriptors` attached (the caller keeps ownership of them).
    /// - Throws: `SharedError.system("sendmsg")`, e.g. EPIPE when the peer is gone.
    public static func send(_ socket: Int32, _ bytes: [UInt8], descriptors: [Int32] = []) throws(SharedError) {
        let sent = bytes.withUnsafeBytes { buffer in
            descriptors.withUnsafeBufferPointer { fds in
                cshims_send_with_fds(socket, buffer.baseAddress, buffer.count, fds.baseAddress, Int32(fds.count))
            }
        }
        if sent < 0 { throw SharedError.system("sendmsg", .current) }
        if sent != bytes.count { throw SharedError(.systemCall, "sendmsg: short send") }
    }

    /// Receives one message of at most `maxBytes`.
    /// - Parameter nonBlocking: returns nil instead of waiting when nothing is queued.
    /// - Returns: the packet, or nil (nothing queued, non-blocking).
    /// - Throws: `.peerClosed` at end of stream, `SharedError.system("recvmsg")` otherwise.
    public static func receive(_ socket: Int32, maxBytes: Int, nonBlocking: Bool = false) throws(SharedError) -> ReceivedPacket? {
        var bytes = [UInt8](repeating: 0, count: maxBytes)
        var fds = [Int32](repeating: -1, count: Int(CSHIMS_MAX_FDS))
        var nfds: Int32 = 0
        var truncated: Int32 = 0
        let n = bytes.withUnsafeMutableBytes { buffer in
            fds.withUnsafeMutableBufferPointer { fdBuffer in
                cshims_recv_with_fds(socket, buffer.baseAddress, buffer.count, nonBlocking ? Int32(MSG_DONTWAIT) : 0,
                                     fdBuffer.baseAddress, Int32(fdBuffer.count), &nfds, &truncated)
            }
        }
        if n < 0 {
            let err = errno
            if err == EAGAIN { return nil }
            if err == ECONNRESET { throw SharedError(.peerClosed, "recvmsg", errno: Errno(err)) }
            throw SharedError.system("recvmsg", Errno(err))
        }
        // A SEQPACKET read of 0 bytes is either the end of the stream or an empty message: only a
        // peer that shut down sets POLLRDHUP. (An empty message is then the caller's malformed input.)
        if n == 0 && nfds == 0 && truncated == 0 {
            var pfd = pollfd(fd: socket, events: Int16(POLLRDHUP_), revents: 0)
            if poll(&pfd, 1, 0) != 0 && pfd.revents & (Int16(POLLHUP) | Int16(POLLRDHUP_)) != 0 {
                throw SharedError(.peerClosed, "recvmsg")
            }
        }
        bytes.removeSubrange(Int(n)...)
        return ReceivedPacket(bytes: bytes, descriptors: Array(fds[..<Int(nfds)]), truncated: truncated != 0)
    }
}

/// Credentials of the process at the other end of a Unix socket, as the kernel recorded them.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    /// Reads `SO_PEERCRED`.
    public init(socket: Int32) throws(SharedError) {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        try syscall("getsockopt(SO_PEERCRED)") { cshims_peer_credentials(socket, &pid, &uid, &gid) }
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}
