import CShims
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// The BSD-style layer: functions shaped like libc's socket calls (Int32 descriptors, -1 + errno,
// the same flag and option constants), exported to C under the same names (see
// include/socket_offload.h). The descriptors they return are the sockets' eventfds, so the
// application polls them with the ordinary poll/select/epoll.

/// Process-wide state: the server connection (made on first use) and the descriptor table.
final class ClientState: Sendable {
    static let shared = ClientState()

    /// `abandoned`: in a forked child, the parent's connection until the child's own one attaches
    /// its sockets (see ProcessInheritance.swift).
    let connectionState = Mutex<(path: String?, transport: DatagramTransport, connection: ServerConnection?,
                                 abandoned: ServerConnection?)>((nil, .auto, nil, nil))
    let sockets = Mutex<[Int32: ClientSocket]>([:])
    /// After exec: descriptors whose sockets the old image kept, adopted on first use.
    let adoptable = Mutex<[Int32: ExecInheritance]>([:])
    /// After exec: the mappings of the segments of adopted sockets, by memfd.
    let adoptedSegments = Mutex<[Int32: ServerConnection]>([:])
    /// Before exec: the memfds left open for the new program (closed on exec again if it fails).
    let execMemfds = Mutex<[Int32]>([])

    /// The path given to sko_configure, if any.
    var configuredPath: String? { connectionState.withLock { $0.path } }

    func configure(path: String?, transport: DatagramTransport) -> Int32 {
        connectionState.withLock { state in
            if state.connection != nil { return EISCONN }
            state.path = path
            state.transport = transport
            return 0
        }
    }

    /// The connection, made on first use; a dead one is replaced by a fresh attempt.
    func connection() throws(Errno) -> ServerConnection {
        try connectionState.withLock { state throws(Errno) -> ServerConnection in
            if let c = state.connection, !c.isDead { return c }
            let c = try ServerConnection.connect(path: state.path, transport: state.transport)
            if let abandoned = state.abandoned {
                // A forked child's own session: it takes over the sockets the parent handed it.
                _ = try? c.request(.attachInherited)
                abandoned.setSuccessor(c)
                state.abandoned = nil
            }
            state.connection = c
            c.startWatchdog { dead in ClientState.shared.wakeSockets(of: dead) }
            return c
        }
    }

    /// The socket behind `fd`, whatever the state of its connection.
    /// - Throws: EBADF for a descriptor that is not one of ours.
    func lookup(_ fd: Int32) throws(Errno) -> ClientSocket {
        if let s = sockets.withLock({ $0[fd] }) { return s }
        if let s = try adopt(fd) { return s }
        // Not one of ours: ENOTSOCK for an open descriptor (a file, a pipe...), as the kernel
        // says for a descriptor that is not a socket; EBADF for a closed one.
        throw Errno(fcntl(fd, F_GETFD) < 0 ? EBADF : ENOTSOCK)
    }

    /// The socket behind `fd`, on a live connection.
    /// - Throws: EBADF for a descriptor that is not one of ours, ENETDOWN once its server is gone.
    func socket(_ fd: Int32) throws(Errno) -> ClientSocket {
        let s = try lookup(fd)
        if s.connection.isDead { throw Errno(ENETDOWN) }
        return s
    }

    func register(_ s: ClientSocket) { sockets.withLock { $0[s.fd] = s } }

    func unregister(_ fd: Int32) -> ClientSocket? { sockets.withLock { $0.removeValue(forKey: fd) } }

    /// The server behind `connection` is gone: make every one of its sockets readable and writable.
    func wakeSockets(of connection: ServerConnection) {
        let affected = sockets.withLock { $0.values.filter { $0.connection.current === connection } }
        for s in affected { s.wakeForServerDeath() }
    }
}

/// Runs `body`, turning a thrown `Errno` into -1 + errno.
@inline(__always)
func bsd<R: FixedWidthInteger>(_ body: () throws(Errno) -> R) -> R {
    do {
        return try body()
    } catch {
        errno = error.rawValue
        return -1
    }
}

/// Runs `body` on the socket behind `fd`, turning a thrown `Errno` into -1 + errno. Every call on
/// a socket of a server that is gone fails with ENETDOWN, whatever else it would have said (EINVAL,
/// ENOTCONN, EPIPE... from the socket's own state).
@inline(__always)
func onSocket<R: FixedWidthInteger>(_ fd: Int32, _ body: (ClientSocket) throws(Errno) -> R) -> R {
    bsd { () throws(Errno) -> R in
        let s = try ClientState.shared.socket(fd)
        do throws(Errno) { return try body(s) } catch { throw s.reported(error) }
    }
}

/// Reads the address given to a call on a socket of `domain`, with Linux's checks in Linux's
/// order: a length too short for the family field (EINVAL), AF_UNSPEC where the call takes it
/// (connect: disconnect), a length too short for the socket's family (EINVAL: 16 bytes for IPv4,
/// the 24-byte RFC 2133 sockaddr_in6 for IPv6, whose missing scope id is 0), then the family
/// (EAFNOSUPPORT).
///
/// A datagram socket of an IPv6 socket also takes a `sockaddr_in` in `sendto` and `connect`
/// (Linux sends to it over IPv4: it becomes the v4-mapped address; an IPv6-only socket refuses it
/// with ENETUNREACH / EAFNOSUPPORT), and its `sendto` calls another family EINVAL.
private func address(_ addr: UnsafePointer<sockaddr>?, _ len: socklen_t, for s: ClientSocket, allowUnspecified: Bool = false,
                     sending: Bool = false) throws(Errno) -> SocketAddress {
    let domain = s.domain
    guard let addr else { throw Errno(EFAULT) }
    guard Int(len) >= MemoryLayout<sa_family_t>.size else { throw Errno(EINVAL) }
    let family = Int32(UnsafeRawPointer(addr).loadUnaligned(as: sa_family_t.self))
    if family == AF_UNSPEC && allowUnspecified { return .unspecified }
    if domain == AF_INET6 && s is DatagramSocket && (sending || allowUnspecified) {
        if family == AF_INET {
            guard Int(len) >= MemoryLayout<sockaddr_in>.size else { throw Errno(EINVAL) }
            guard !s.v6Only.load(ordering: .relaxed) else { throw Errno(sending ? ENETUNREACH : EAFNOSUPPORT) }
            guard let v4 = SocketAddress(sockaddr: UnsafeRawPointer(addr), length: Int(len)) else { throw Errno(EINVAL) }
            return v4.v4Mapped
        }
        if sending && family != AF_INET6 { throw Errno(EINVAL) }
    }
    let minimum = domain == AF_INET6 ? 24 : MemoryLayout<sockaddr_in>.size
    guard Int(len) >= minimum else { throw Errno(EINVAL) }
    guard family == domain else { throw Errno(EAFNOSUPPORT) }
    var storage = sockaddr_in6()
    let n = min(Int(len), MemoryLayout<sockaddr_in6>.size)
    withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.copyMemory(from: addr, byteCount: n) }
    guard let a = withUnsafeBytes(of: &storage, { SocketAddress(sockaddr: $0.baseAddress!, length: $0.count) }) else {
        throw Errno(EAFNOSUPPORT)
    }
    if sending && a.isV4Mapped && s.v6Only.load(ordering: .relaxed) { throw Errno(ENETUNREACH) }
    return a
}

/// Stores `a` into a caller's sockaddr buffer of *len bytes (truncating), and sets *len to its size.
private func store(_ a: SocketAddress?, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?) {
    guard let addr, let len, let a else { return }
    a.withSockAddr { raw, size in
        UnsafeMutableRawPointer(addr).copyMemory(from: raw, byteCount: min(size, Int(len.pointee)))
        len.pointee = socklen_t(size)
    }
}

/// Chooses the server and datagram transport for this process's connection. Call before the first
/// socket; `path` nil means the default (`$SOCKET_SERVER_PATH`, ...). `transport`: 0 auto,
/// 1 process-vm, 2 shared-memory. Returns -1 with EISCONN once connected.
@_cdecl("sko_configure")
public func sko_configure(_ path: UnsafePointer<CChar>?, _ transport: Int32) -> Int32 {
    bsd { () throws(Errno) -> Int32 in
        guard let t = DatagramTransport(rawValue: UInt8(clamping: transport)), transport >= 0 else { throw Errno(EINVAL) }
        let err = ClientState.shared.configure(path: path.map { String(cString: $0) }, transport: t)
        if err != 0 { throw Errno(err) }
        return 0
    }
}

/// The server path this process uses (configured, else the default rules), into `buffer` of
/// `size` bytes, NUL-terminated and truncated to fit. Returns the path's full length.
@_cdecl("sko_server_path")
public func sko_server_path(_ buffer: UnsafeMutablePointer<CChar>?, _ size: Int) -> Int {
    let path = ClientState.shared.configuredPath ?? ServerConnection.defaultPath
    let bytes = Array(path.utf8)
    if let buffer, size > 0 {
        let n = min(bytes.count, size - 1)
        for i in 0..<n { buffer[i] = CChar(bitPattern: bytes[i]) }
        buffer[n] = 0
    }
    return bytes.count
}

/// Creates a socket in the stack. The corresponding C function is `socket`.
/// `type` may carry SOCK_NONBLOCK and SOCK_CLOEXEC (FD_CLOEXEC on the descriptor as asked).
@_cdecl("sko_socket")
public func sko_socket(_ domain: Int32, _ type: Int32, _ proto: Int32) -> Int32 {
    bsd { () throws(Errno) -> Int32 in
        // Linux's checks, in its order: family, type and flags, protocol range, then the pair.
        let nonBlocking = type & Int32(SOCK_NONBLOCK.rawValue) != 0
        let flags = type & ~0xf
        let baseType = type & 0xf
        guard domain == AF_INET || domain == AF_INET6 else { throw Errno(EAFNOSUPPORT) }
        guard type >= 0, flags & ~(Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)) == 0,
              baseType < 10 /* SOCK_MAX */ else { throw Errno(EINVAL) }
        guard proto >= 0, proto < 263 /* IPPROTO_MAX */ else { throw Errno(EINVAL) }
        switch baseType {
        case Int32(SOCK_DGRAM.rawValue): guard proto == 0 || proto == Int32(IPPROTO_UDP) else { throw Errno(EPROTONOSUPPORT) }
        case Int32(SOCK_STREAM.rawValue): guard proto == 0 || proto == Int32(IPPROTO_TCP) else { throw Errno(EPROTONOSUPPORT) }
        default: throw Errno(ESOCKTNOSUPPORT)
        }
        let connection = try ClientState.shared.connection()
        let (reply, fds) = try connection.request(.socket(domain: domain, type: baseType, protocol: proto))
        let s = try makeSocket(connection, reply, fds, domain: domain, type: baseType)
        s.nonBlocking.store(nonBlocking, ordering: .relaxed)
        if type & Int32(SOCK_CLOEXEC.rawValue) == 0 { _ = fcntl(s.fd, F_SETFD, 0) }
        ClientState.shared.register(s)
        return s.fd
    }
}

/// Builds the client socket for a `.socket` or `.accepted` reply, taking ownership of its descriptors.
func makeSocket(_ connection: ServerConnection, _ reply: Reply, _ fds: [Int32], domain: Int32, type: Int32) throws(Errno) -> ClientSocket {
    let info: ChannelInfo
    switch reply {
    case .socket(let i), .accepted(let i, _): info = i
    case .error(let err):
        fds.forEach { close($0) }
        throw Errno(err)
    default:
        fds.forEach { close($0) }
        throw Errno(EPROTO)
    }
    guard fds.count == 2 else {
        fds.forEach { close($0) }
        throw Errno(EPROTO)
    }
    do {
        switch info.kind {
        case .datagram:
            return try DatagramSocket(connection: connection, info: info, domain: domain, type: type, fd: fds[0], stackFD: fds[1])
        case .stream, .listener:
            return try makeStreamSocket(connection, info, domain: domain, type: type, fd: fds[0], stackFD: fds[1])
        }
    } catch {
        fds.forEach { close($0) }
        // The server holds a socket for this handle: release it.
        _ = try? connection.request(.close(handle: info.handle))
        throw error
    }
}

/// The corresponding C function is `bind`.
@_cdecl("sko_bind")
public func sko_bind(_ fd: Int32, _ addr: UnsafePointer<sockaddr>?, _ len: socklen_t) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        let a = try address(addr, len, for: s)
        _ = try s.request(.bind(handle: s.info.handle, address: a))
        (s as? DatagramSocket)?.didBind()
        return 0
    }
}

/// The corresponding C function is `connect`. For a datagram socket, an `AF_UNSPEC` address
/// dissolves the association.
@_cdecl("sko_connect")
public func sko_connect(_ fd: Int32, _ addr: UnsafePointer<sockaddr>?, _ len: socklen_t) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        let a = try address(addr, len, for: s, allowUnspecified: true)
        try s.connect(to: a)
        return 0
    }
}

/// The corresponding C function is `sendto`.
@_cdecl("sko_sendto")
public func sko_sendto(_ fd: Int32, _ buf: UnsafeRawPointer?, _ len: Int, _ flags: Int32,
                       _ addr: UnsafePointer<sockaddr>?, _ alen: socklen_t) -> Int {
    onSocket(fd) { s throws(Errno) -> Int in
        guard buf != nil || len == 0 else { throw Errno(EFAULT) }
        try (s as? DatagramSocket)?.autobind() // before the address is looked at, as Linux
        // A stream socket ignores the address (Linux's tcp_sendmsg: it sends to its peer).
        let to: SocketAddress? = addr == nil || s is StreamSocket ? nil : try address(addr, alen, for: s, sending: true)
        return try s.send([UnsafeRawBufferPointer(start: buf, count: len)], to: to, flags: flags)
    }
}

/// The corresponding C function is `send`.
@_cdecl("sko_send")
public func sko_send(_ fd: Int32, _ buf: UnsafeRawPointer?, _ len: Int, _ flags: Int32) -> Int {
    sko_sendto(fd, buf, len, flags, nil, 0)
}

/// The corresponding C function is `sendmsg` (no ancillary data).
@_cdecl("sko_sendmsg")
public func sko_sendmsg(_ fd: Int32, _ msg: UnsafePointer<msghdr>?, _ flags: Int32) -> Int {
    onSocket(fd) { s throws(Errno) -> Int in
        guard let msg = msg?.pointee else { throw Errno(EFAULT) }
        try (s as? DatagramSocket)?.autobind() // before the address is looked at, as Linux
        let to: SocketAddress? = msg.msg_name == nil || s is StreamSocket ? nil : try address(msg.msg_name.assumingMemoryBound(to: sockaddr.self), msg.msg_namelen, for: s, sending: true)
        let iov = UnsafeBufferPointer(start: msg.msg_iov, count: Int(msg.msg_iovlen))
        return try s.send(iov.map { UnsafeRawBufferPointer(start: $0.iov_base, count: $0.iov_len) }, to: to, flags: flags)
    }
}

/// The corresponding C function is `recvfrom`. `MSG_PEEK`, `MSG_DONTWAIT`, `MSG_TRUNC` (return
/// the datagram's full length) and, for streams, `MSG_WAITALL` are honoured.
@_cdecl("sko_recvfrom")
public func sko_recvfrom(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ len: Int, _ flags: Int32,
                         _ addr: UnsafeMutablePointer<sockaddr>?, _ alen: UnsafeMutablePointer<socklen_t>?) -> Int {
    onSocket(fd) { s throws(Errno) -> Int in
        guard buf != nil || len == 0 else { throw Errno(EFAULT) }
        let r = try s.receive([UnsafeMutableRawBufferPointer(start: buf, count: len)], flags: flags)
        store(r.from, addr, alen)
        // No source (a TCP socket's data): Linux reports an address length of 0.
        if r.from == nil, addr != nil, let alen { alen.pointee = 0 }
        return flags & Int32(MSG_TRUNC) != 0 ? r.full : r.count
    }
}

/// The corresponding C function is `recv`.
@_cdecl("sko_recv")
public func sko_recv(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ len: Int, _ flags: Int32) -> Int {
    sko_recvfrom(fd, buf, len, flags, nil, nil)
}

/// The corresponding C function is `recvmsg`: sets `MSG_TRUNC` in `msg_flags` when the datagram
/// did not fit; no ancillary data (`msg_controllen` is set to 0).
@_cdecl("sko_recvmsg")
public func sko_recvmsg(_ fd: Int32, _ msg: UnsafeMutablePointer<msghdr>?, _ flags: Int32) -> Int {
    onSocket(fd) { s throws(Errno) -> Int in
        guard let msg else { throw Errno(EFAULT) }
        let iov = UnsafeBufferPointer(start: msg.pointee.msg_iov, count: Int(msg.pointee.msg_iovlen))
        let r = try s.receive(iov.map { UnsafeMutableRawBufferPointer(start: $0.iov_base, count: $0.iov_len) }, flags: flags)
        if msg.pointee.msg_name != nil {
            var len = msg.pointee.msg_namelen
            store(r.from, msg.pointee.msg_name.assumingMemoryBound(to: sockaddr.self), &len)
            msg.pointee.msg_namelen = r.from == nil ? 0 : len
        }
        msg.pointee.msg_controllen = 0
        msg.pointee.msg_flags = r.truncated ? Int32(MSG_TRUNC) : 0
        return flags & Int32(MSG_TRUNC) != 0 ? r.full : r.count
    }
}

/// The corresponding C function is `getsockname`.
@_cdecl("sko_getsockname")
public func sko_getsockname(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard addr != nil, len != nil else { throw Errno(EFAULT) }
        guard case .address(let a) = try s.request(.getsockname(handle: s.info.handle)) else { throw Errno(EPROTO) }
        store(a, addr, len)
        return 0
    }
}

/// The corresponding C function is `getpeername` (ENOTCONN when not connected).
@_cdecl("sko_getpeername")
public func sko_getpeername(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard addr != nil, len != nil else { throw Errno(EFAULT) }
        guard case .address(let a) = try s.request(.getpeername(handle: s.info.handle)) else { throw Errno(EPROTO) }
        store(a, addr, len)
        return 0
    }
}

/// The corresponding C function is `setsockopt`. SO_RCVTIMEO and SO_SNDTIMEO are kept by the
/// client; every other option goes to the server (see the README for the list).
@_cdecl("sko_setsockopt")
public func sko_setsockopt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: UnsafeRawPointer?, _ len: socklen_t) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard let value else { throw Errno(EFAULT) }
        if level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO) {
            guard Int(len) >= MemoryLayout<timeval>.size else { throw Errno(EINVAL) }
            let tv = value.loadUnaligned(as: timeval.self)
            guard tv.tv_sec >= 0, tv.tv_usec >= 0, tv.tv_usec < 1_000_000 else { throw Errno(EDOM) }
            let ms = tv.tv_sec == 0 && tv.tv_usec == 0 ? -1 : Int32(clamping: tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000)
            if name == SO_RCVTIMEO { s.receiveTimeout.store(ms, ordering: .relaxed) } else { s.sendTimeout.store(ms, ordering: .relaxed) }
            return 0
        }
        guard Int(len) <= ControlMessage.maximumOptionLength else { throw Errno(EINVAL) }
        let bytes = Array(UnsafeRawBufferPointer(start: value, count: Int(len)))
        _ = try s.request(.setsockopt(handle: s.info.handle, level: level, name: name, value: bytes))
        // Kept here too: an IPv6-only socket refuses v4-mapped destinations before they are queued.
        if level == Int32(IPPROTO_IPV6) && name == IPV6_V6ONLY && len >= 4 {
            s.v6Only.store(value.loadUnaligned(as: Int32.self) != 0, ordering: .relaxed)
        }
        return 0
    }
}

/// The corresponding C function is `getsockopt`.
@_cdecl("sko_getsockopt")
public func sko_getsockopt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer?, _ len: UnsafeMutablePointer<socklen_t>?) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard let value, let len else { throw Errno(EFAULT) }
        guard Int32(bitPattern: len.pointee) >= 0 else { throw Errno(EINVAL) }
        var result: [UInt8]
        if level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO) {
            let ms = Int(name == SO_RCVTIMEO ? s.receiveTimeout.load(ordering: .relaxed) : s.sendTimeout.load(ordering: .relaxed))
            var tv = timeval(tv_sec: ms < 0 ? 0 : ms / 1000, tv_usec: ms < 0 ? 0 : (ms % 1000) * 1000)
            result = withUnsafeBytes(of: &tv) { Array($0) }
        } else if level == SOL_SOCKET && name == SO_ERROR, let err = s.takeSocketError() {
            result = int32Bytes(err)
        } else {
            let max = UInt32(min(Int(len.pointee), ControlMessage.maximumOptionLength))
            guard case .option(let bytes) = try s.request(.getsockopt(handle: s.info.handle, level: level, name: name, maxLength: max)) else {
                throw Errno(EPROTO)
            }
            result = bytes
        }
        let n = min(result.count, Int(len.pointee))
        result.withUnsafeBytes { value.copyMemory(from: $0.baseAddress!, byteCount: n) }
        len.pointee = socklen_t(n)
        return 0
    }
}

/// The corresponding C function is `ioctl`, for FIONREAD (bytes readable: for a datagram socket
/// the size of the next datagram), SIOCOUTQ (bytes written and not yet taken by the stack) and
/// FIONBIO.
@_cdecl("sko_ioctl")
public func sko_ioctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutablePointer<Int32>?) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard let arg else { throw Errno(EFAULT) }
        switch request {
        case UInt(FIONREAD): arg.pointee = Int32(clamping: try s.bytesReadable())
        case 0x5411 /* SIOCOUTQ (TIOCOUTQ) */: arg.pointee = Int32(clamping: try s.bytesUnsent())
        case UInt(FIONBIO): s.nonBlocking.store(arg.pointee != 0, ordering: .relaxed)
        default: throw Errno(ENOTTY)
        }
        return 0
    }
}

/// The corresponding C function is `fcntl`, for F_GETFL / F_SETFL (O_NONBLOCK) and F_GETFD / F_SETFD.
@_cdecl("sko_fcntl")
public func sko_fcntl(_ fd: Int32, _ cmd: Int32, _ arg: Int32) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        switch cmd {
        case F_GETFL: return O_RDWR | (s.nonBlocking.load(ordering: .relaxed) ? O_NONBLOCK : 0)
        case F_SETFL:
            s.nonBlocking.store(arg & O_NONBLOCK != 0, ordering: .relaxed)
            return 0
        case F_GETFD, F_SETFD:
            // The flag of the socket's descriptor itself (the eventfd the app holds).
            let r = fcntl(s.fd, cmd, arg)
            if r < 0 { throw Errno.current }
            return r
        default: throw Errno(EINVAL)
        }
    }
}

/// The corresponding C function is `shutdown`.
@_cdecl("sko_shutdown")
public func sko_shutdown(_ fd: Int32, _ how: Int32) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard how == SHUT_RD || how == SHUT_WR || how == SHUT_RDWR else { throw Errno(EINVAL) }
        try s.shutdown(how)
        return 0
    }
}

/// Closes a socket: the server releases it and both of its descriptors are closed. The
/// corresponding C function is `close`.
@_cdecl("sko_close")
public func sko_close(_ fd: Int32) -> Int32 {
    bsd { () throws(Errno) -> Int32 in
        guard let s = ClientState.shared.unregister(fd) else { throw Errno(EBADF) }
        defer { s.closeDescriptors() }
        try s.close()
        return 0
    }
}

/// The corresponding C function is `listen`.
@_cdecl("sko_listen")
public func sko_listen(_ fd: Int32, _ backlog: Int32) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard let s = s as? StreamSocket else { throw Errno(EOPNOTSUPP) }
        try s.listen(backlog: backlog)
        return 0
    }
}

/// The corresponding C function is `accept4`: `flags` may hold SOCK_NONBLOCK and SOCK_CLOEXEC.
@_cdecl("sko_accept4")
public func sko_accept4(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?, _ flags: Int32) -> Int32 {
    onSocket(fd) { s throws(Errno) -> Int32 in
        guard let s = s as? StreamSocket else { throw Errno(EOPNOTSUPP) }
        guard flags & ~(Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)) == 0 else { throw Errno(EINVAL) }
        let (connection, peer) = try s.accept(flags: flags)
        if flags & Int32(SOCK_CLOEXEC.rawValue) == 0 { _ = fcntl(connection.fd, F_SETFD, 0) }
        ClientState.shared.register(connection)
        store(peer, addr, len)
        return connection.fd
    }
}

/// The corresponding C function is `accept`.
@_cdecl("sko_accept")
public func sko_accept(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?) -> Int32 {
    sko_accept4(fd, addr, len, 0)
}

/// The corresponding C function is `read` (a `recv` without flags).
@_cdecl("sko_read")
public func sko_read(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ len: Int) -> Int {
    sko_recvfrom(fd, buf, len, 0, nil, nil)
}

/// The corresponding C function is `write` (a `send` without flags; never raises SIGPIPE).
@_cdecl("sko_write")
public func sko_write(_ fd: Int32, _ buf: UnsafeRawPointer?, _ len: Int) -> Int {
    sko_sendto(fd, buf, len, 0, nil, 0)
}

/// `poll` with kernel-accurate readiness for the library's sockets: POLLIN only while data, end of
/// stream, an error or a connection is waiting; POLLOUT while the send ring has room; POLLHUP,
/// POLLERR and POLLRDHUP as Linux reports them after a reset, a full close or the peer's FIN. Other
/// descriptors in `fds` are polled as usual. Plain `poll(2)` on the descriptors also works, with the
/// approximations the README describes (no POLLHUP/POLLERR, a spurious POLLIN while the send ring is
/// full). The corresponding C function is `poll`.
@_cdecl("sko_poll")
public func sko_poll(_ fds: UnsafeMutablePointer<pollfd>?, _ nfds: UInt, _ timeout: Int32) -> Int32 {
    sko_ppoll(fds, nfds, timeout, nil)
}

/// `sko_poll` whose sleep applies the signal mask `mask` atomically, as `ppoll(2)` does (nil: the
/// thread's own). The corresponding C function is `ppoll` (with a millisecond timeout).
@_cdecl("sko_ppoll")
public func sko_ppoll(_ fds: UnsafeMutablePointer<pollfd>?, _ nfds: UInt, _ timeout: Int32, _ mask: UnsafePointer<sigset_t>?) -> Int32 {
    bsd { () throws(Errno) -> Int32 in
        guard nfds == 0 || fds != nil else { throw Errno(EFAULT) }
        let entries = UnsafeMutableBufferPointer(start: fds, count: Int(nfds))
        let sockets = entries.map { try? ClientState.shared.lookup($0.fd) }
        let deadline = timeout < 0 ? nil : monotonicNanoseconds() + UInt64(timeout) * 1_000_000
        var scratch = entries.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
        while true {
            // What is ready now: ours from the channels, the others from the kernel without waiting.
            for i in scratch.indices { scratch[i].events = sockets[i] == nil ? entries[i].events : 0 }
            if scratch.contains(where: { $0.events != 0 }) {
                if poll(&scratch, nfds_t(scratch.count), 0) < 0 { throw Errno.current }
            }
            var ready: Int32 = 0
            for i in entries.indices {
                var revents = scratch[i].revents
                if let s = sockets[i] {
                    revents = s.readiness() & (entries[i].events | Int16(POLLHUP | POLLERR))
                }
                entries[i].revents = revents
                if revents != 0 { ready += 1 }
            }
            if ready > 0 { return ready }
            // Nothing yet: what to sleep on, per descriptor.
            var canSleepOnEventfds = true
            for i in scratch.indices {
                scratch[i].revents = 0
                guard let s = sockets[i] else {
                    scratch[i].events = entries[i].events
                    continue
                }
                if let events = s.prepareToSleep(readiness: s.readiness(), wants: entries[i].events) {
                    // POLLIN: a signal from the stack; POLLOUT (only while the block is set):
                    // its release, i.e. room to write.
                    scratch[i].events = events
                } else {
                    // The block saturates the eventfd: its POLLOUT is the release; new data cannot
                    // signal, so look again soon.
                    scratch[i].events = Int16(POLLOUT)
                    canSleepOnEventfds = false
                }
            }
            // prepareToSleep took in the wake-ups that were pending: what arrived between our look
            // at the channels and that acknowledgement signalled nothing new, so look once more
            // before sleeping (anything after this look signals the eventfd again).
            if entries.indices.contains(where: { i in
                sockets[i].map { $0.readiness() & (entries[i].events | Int16(POLLHUP | POLLERR)) != 0 } ?? false
            }) { continue }
            var wait: Int32 = -1
            if let deadline {
                let now = monotonicNanoseconds()
                if now >= deadline { return 0 }
                wait = Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
            }
            if !canSleepOnEventfds { wait = wait < 0 ? 1 : min(wait, 1) }
            if cshims_ppoll(&scratch, UInt(scratch.count), wait, mask) < 0 {
                if errno == EINTR { throw Errno(EINTR) }
                throw Errno.current
            }
        }
    }
}
