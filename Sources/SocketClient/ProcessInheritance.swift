import CShims
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// Stack sockets across fork and exec, as the kernel's descriptors go across them.
//
// fork: the parent tells the server, before fork returns, that the child holds every socket it
// holds (`forked`). The child keeps the socket objects, the segment mappings and the eventfds (its
// data path works at once); its old connection is abandoned, and its first control request makes a
// session of its own that attaches the sockets (`attachInherited`), the abandoned connection
// forwarding requests to it.
//
// exec: before the exec, the old image tells the server which sockets the new program keeps (those
// with a descriptor not marked FD_CLOEXEC: `execing`), leaves their segments' memfds open, and
// hands the new program, in the environment variable SOCKET_OFFLOAD_EXEC, one entry per
// descriptor: "FD/HANDLE/NONBLOCKING/MEMFD". The new program's library adopts each socket on first
// use (`adopt`): it maps the segment and takes the socket's stack eventfd from the server. The
// session of the old image closes at the exec; its other sockets close in an orderly way.

/// One socket the old image kept across exec, as the new program finds it in SOCKET_OFFLOAD_EXEC.
struct ExecInheritance {
    let handle: UInt32
    let nonBlocking: Bool
    let memfd: Int32
}

extension ClientState {
    /// Before fork: a process holding sockets makes sure it has a live session that holds them (a
    /// child that has not attached its inherited sockets yet does so now), so that it can hand
    /// them on. - Returns: how many sockets the process holds.
    func beforeFork() -> Int {
        let count = sockets.withLock { $0.count }
        if count > 0 { _ = try? connection() }
        return count
    }

    /// In the parent after fork: the child holds every socket we hold (the server is told before
    /// fork returns, so a close that follows cannot close the child's socket).
    func afterFork(child: Int32) {
        guard sockets.withLock({ !$0.isEmpty }), let c = connectionState.withLock({ $0.connection }), !c.isDead else { return }
        _ = try? c.request(.forked(child: child))
    }

    /// In a child after fork: the connection is the parent's session. It is abandoned (our copy of
    /// its control socket closed) but its segment mapping stays, and the sockets stay: their data
    /// path works at once, and the first control request makes a session of our own that attaches
    /// them (`connection()`).
    func inheritAfterFork() {
        connectionState.withLock { state in
            if let c = state.connection {
                c.abandonAfterFork()
                state.abandoned = c
                state.connection = nil
            }
        }
    }

    /// Before exec: `kept` lists the descriptors that survive the exec (not FD_CLOEXEC) with the
    /// socket behind each. The server holds those sockets for the new program; their segments'
    /// memfds are left open across the exec.
    /// - Returns: the SOCKET_OFFLOAD_EXEC=... entry for the new program's environment; nil when
    ///   nothing is kept (or the server cannot be told).
    func beforeExec(_ kept: [(fd: Int32, socket: Int32)]) -> String? {
        guard !kept.isEmpty, let c = try? connection() else { return nil }
        var entries: [String] = [], handles: [UInt32] = [], memfds: [Int32] = []
        for (fd, socketFD) in kept {
            guard let s = sockets.withLock({ $0[socketFD] }) else { continue }
            let memfd = s.connection.segment.fd
            guard memfd >= 0 else { continue }
            entries.append("\(fd)/\(s.info.handle)/\(s.nonBlocking.load(ordering: .relaxed) ? 1 : 0)/\(memfd)")
            if !handles.contains(s.info.handle) { handles.append(s.info.handle) }
            if !memfds.contains(memfd) { memfds.append(memfd) }
        }
        guard !handles.isEmpty else { return nil }
        var start = 0
        while start < handles.count {
            let chunk = Array(handles[start..<min(start + ControlMessage.maximumExecHandles, handles.count)])
            guard case .ok? = try? c.request(.execing(keep: chunk)).0 else { return nil }
            start += chunk.count
        }
        for memfd in memfds { _ = fcntl(memfd, F_SETFD, 0) }
        execMemfds.withLock { $0 = memfds }
        return "SOCKET_OFFLOAD_EXEC=" + entries.joined(separator: ",")
    }

    /// The exec failed: the process goes on as before (its session holds its sockets again).
    func afterFailedExec() {
        for memfd in execMemfds.withLock({ m in defer { m = [] }; return m }) { _ = fcntl(memfd, F_SETFD, FD_CLOEXEC) }
        if let c = connectionState.withLock({ $0.connection }), !c.isDead { _ = try? c.request(.attachInherited) }
    }

    /// After exec: `fd` is the descriptor of a socket the old image kept (adopted on first use).
    func adoptable(_ fd: Int32, _ entry: ExecInheritance) {
        _ = fcntl(entry.memfd, F_SETFD, FD_CLOEXEC) // ours now: a later exec passes it on if needed
        adoptable.withLock { $0[fd] = entry }
    }

    /// The socket behind `fd` if the old image kept it: adopted now (nil when `fd` is not such a
    /// descriptor).
    /// - Throws: the connection's or the server's errno (EBADF: the server no longer holds it).
    func adopt(_ fd: Int32) throws(Errno) -> ClientSocket? {
        guard let entry = adoptable.withLock({ $0.removeValue(forKey: fd) }) else { return nil }
        let c = try connection()
        let (reply, fds) = try c.request(.adopt(handle: entry.handle))
        guard case .adopted(let info, let domain, let type, let listening) = reply, fds.count == 1 else {
            for d in fds { close(d) }
            if case .error(let err) = reply { throw Errno(err) }
            throw Errno(EPROTO)
        }
        let s: ClientSocket
        do throws(Errno) {
            let home = try adoptedSegment(entry.memfd, successor: c)
            if type == Int32(SOCK_STREAM.rawValue) {
                let stream = try StreamSocket(connection: home, info: info, domain: domain, type: type, fd: fd, stackFD: fds[0])
                if listening { stream.adoptListening() }
                s = stream
            } else {
                s = try DatagramSocket(connection: home, info: info, domain: domain, type: type, fd: fd, stackFD: fds[0])
            }
        } catch {
            close(fds[0])
            _ = try? c.request(.close(handle: info.handle))
            throw error
        }
        s.nonBlocking.store(entry.nonBlocking, ordering: .relaxed)
        // What the old image's library kept locally, asked again: a datagram socket's peer,
        // IPV6_V6ONLY. (SO_RCVTIMEO/SO_SNDTIMEO start afresh: none.)
        if type == Int32(SOCK_DGRAM.rawValue), case .address(let peer)? = try? s.request(.getpeername(handle: info.handle)) {
            s.didConnect(peer)
        }
        if domain == AF_INET6, case .option(let v)? = try? s.request(.getsockopt(handle: info.handle, level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, maxLength: 4)),
           v.count == 4 {
            s.v6Only.store(v.contains { $0 != 0 }, ordering: .relaxed)
        }
        register(s)
        return s
    }

    /// The mapping of the segment behind `memfd` (made once per memfd), whose requests go to
    /// `successor`.
    private func adoptedSegment(_ memfd: Int32, successor: ServerConnection) throws(Errno) -> ServerConnection {
        try adoptedSegments.withLock { segments throws(Errno) -> ServerConnection in
            if let home = segments[memfd] { return home }
            let segment: SharedSegment
            do {
                segment = try SharedSegment(adopting: memfd)
                try segment.validateHeader()
            } catch {
                throw Errno(EPROTO)
            }
            let home = ServerConnection(adoptedSegment: segment, successor: successor)
            segments[memfd] = home
            return home
        }
    }
}

/// Called before fork (the preload library's `fork` does): returns how many stack sockets the
/// process holds, after making sure its session holds them (see `sko_after_fork_in_parent`).
@_cdecl("sko_before_fork")
public func sko_before_fork() -> Int32 {
    Int32(clamping: ClientState.shared.beforeFork())
}

/// Called in the parent after fork with the child's pid: the server learns that the child holds
/// every stack socket the parent holds (each then closes only when both have closed it).
@_cdecl("sko_after_fork_in_parent")
public func sko_after_fork_in_parent(_ child: Int32) {
    ClientState.shared.afterFork(child: child)
}

/// Called in the child after fork (the preload library does, from pthread_atfork): the stack
/// sockets it inherited keep working; its first control request connects to the server as a
/// client of its own, which attaches them.
@_cdecl("sko_after_fork_in_child")
public func sko_after_fork_in_child() {
    ClientState.shared.inheritAfterFork()
}

/// Called before exec (the preload library's exec functions do) with the descriptors that survive
/// it and the socket behind each: writes the SOCKET_OFFLOAD_EXEC=... entry for the new program's
/// environment into `entry` (NUL-terminated) and returns its length; 0 when nothing is kept or
/// the entry does not fit in `size` bytes.
@_cdecl("sko_before_exec")
public func sko_before_exec(_ fds: UnsafePointer<Int32>, _ sockets: UnsafePointer<Int32>, _ count: Int,
                            _ entry: UnsafeMutablePointer<CChar>, _ size: Int) -> Int {
    let kept = (0..<count).map { (fd: fds[$0], socket: sockets[$0]) }
    guard let text = ClientState.shared.beforeExec(kept) else { return 0 }
    let bytes = Array(text.utf8)
    guard bytes.count < size else {
        ClientState.shared.afterFailedExec()
        return 0
    }
    for (i, b) in bytes.enumerated() { entry[i] = CChar(bitPattern: b) }
    entry[bytes.count] = 0
    return bytes.count
}

/// Called when the exec that `sko_before_exec` prepared failed: the process keeps its sockets.
@_cdecl("sko_after_failed_exec")
public func sko_after_failed_exec() {
    ClientState.shared.afterFailedExec()
}

/// Called by the new program's preload library for each socket descriptor SOCKET_OFFLOAD_EXEC
/// names (one per socket; its other descriptors are the library's aliases): the socket is adopted
/// on its first use.
@_cdecl("sko_adopt_after_exec")
public func sko_adopt_after_exec(_ fd: Int32, _ handle: UInt32, _ nonBlocking: Int32, _ memfd: Int32) {
    ClientState.shared.adoptable(fd, ExecInheritance(handle: handle, nonBlocking: nonBlocking != 0, memfd: memfd))
}
