import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A failed socket call: which call, and the errno it failed with.
public struct SocketError: Error, Equatable, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Errno
    public init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(errno)" }
}

/// The Swift layer over the BSD-style calls: typed addresses, `throws`, and ownership of the
/// descriptor (closed exactly once, by `close()` or at deinit).
///
/// The descriptor (`fileDescriptor`) can be polled with `poll`/`epoll` like a kernel socket.
public final class Socket: @unchecked Sendable {
    // @unchecked Sendable: the descriptor is immutable; `open` is atomic. Calls on one socket from
    // several threads are serialized per direction by the library, as with kernel sockets.
    public let fileDescriptor: Int32
    public let family: SocketAddress.Family
    private let open = Atomic<Bool>(true)

    public enum Kind: Sendable {
        case datagram
        case stream

        var rawValue: Int32 { self == .datagram ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue) }
    }

    /// Chooses the server (and the datagram transport) before the first socket of this process.
    /// - Throws: EISCONN once the process is connected.
    public static func configure(serverPath: String?, transport: DatagramTransport = .auto) throws(SocketError) {
        let rc = serverPath.map { path in path.withCString { sko_configure($0, Int32(transport.rawValue)) } }
            ?? sko_configure(nil, Int32(transport.rawValue))
        if rc != 0 { throw SocketError("configure", .current) }
    }

    /// The datagram transport in force for this process (connects to the server if needed).
    public static func datagramTransport() throws(SocketError) -> DatagramTransport {
        do { return try ClientState.shared.connection().info.transport } catch { throw SocketError("connect to server", error) }
    }

    /// Creates a socket. The corresponding C function is `socket`.
    public init(_ family: SocketAddress.Family, _ kind: Kind, nonBlocking: Bool = false) throws(SocketError) {
        let domain = family == .inet6 ? AF_INET6 : AF_INET
        let fd = sko_socket(domain, kind.rawValue | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0), 0)
        if fd < 0 { throw SocketError("socket", .current) }
        fileDescriptor = fd
        self.family = family
    }

    init(adopting fd: Int32, family: SocketAddress.Family) {
        fileDescriptor = fd
        self.family = family
    }

    deinit { close() }

    /// Closes the socket (idempotent).
    public func close() {
        if open.exchange(false, ordering: .acquiringAndReleasing) { _ = sko_close(fileDescriptor) }
    }

    @inline(__always)
    private func check<R: FixedWidthInteger>(_ call: String, _ rc: R) throws(SocketError) -> R {
        if rc < 0 { throw SocketError(call, .current) }
        return rc
    }

    public func bind(to address: SocketAddress) throws(SocketError) {
        _ = try check("bind", address.withSockAddr { sko_bind(fileDescriptor, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) })
    }

    /// Connects (for a datagram socket: sets the default peer; `.unspecified` dissolves it).
    public func connect(to address: SocketAddress) throws(SocketError) {
        _ = try check("connect", address.withSockAddr { sko_connect(fileDescriptor, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) })
    }

    /// Sends `bytes` (to `address`, or to the connected peer).
    /// - Returns: bytes sent.
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress? = nil, flags: Int32 = 0) throws(SocketError) -> Int {
        let rc: Int
        if let address {
            rc = address.withSockAddr { sko_sendto(fileDescriptor, bytes.baseAddress, bytes.count, flags, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
        } else {
            rc = sko_send(fileDescriptor, bytes.baseAddress, bytes.count, flags)
        }
        return try check(address == nil ? "send" : "sendto", rc)
    }

    @discardableResult
    public func send(_ bytes: [UInt8], to address: SocketAddress? = nil, flags: Int32 = 0) throws(SocketError) -> Int {
        do {
            return try bytes.withUnsafeBytes { try send($0, to: address, flags: flags) }
        } catch {
            throw error as! SocketError // the closure throws nothing else
        }
    }

    /// Receives into `buffer`.
    /// - Returns: bytes stored (or, with MSG_TRUNC, the datagram's full length) and the sender.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0) throws(SocketError) -> (count: Int, from: SocketAddress?) {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_recvfrom(fileDescriptor, buffer.baseAddress, buffer.count, flags, $0, &len) }
        }
        _ = try check("recvfrom", n)
        let from = withUnsafeBytes(of: &storage) { SocketAddress(sockaddr: $0.baseAddress!, length: Int(len)) }
        return (n, from?.family == .unspecified ? nil : from)
    }

    public func receive(maxBytes: Int, flags: Int32 = 0) throws(SocketError) -> (bytes: [UInt8], from: SocketAddress?) {
        var bytes = [UInt8](repeating: 0, count: maxBytes)
        let n: Int, from: SocketAddress?
        do {
            (n, from) = try bytes.withUnsafeMutableBytes { try receive(into: $0, flags: flags) }
        } catch {
            throw error as! SocketError // the closure throws nothing else
        }
        bytes.removeSubrange(min(n, maxBytes)...)
        return (bytes, from)
    }

    public var localAddress: SocketAddress {
        get throws(SocketError) { try address("getsockname", sko_getsockname) }
    }

    public var peerAddress: SocketAddress {
        get throws(SocketError) { try address("getpeername", sko_getpeername) }
    }

    private func address(_ call: String, _ f: (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?) -> Int32) throws(SocketError) -> SocketAddress {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { f(fileDescriptor, $0, &len) } }
        _ = try check(call, rc)
        guard let a = withUnsafeBytes(of: &storage, { SocketAddress(sockaddr: $0.baseAddress!, length: Int(len)) }) else {
            throw SocketError(call, Errno(EAFNOSUPPORT))
        }
        return a
    }

    public func setOption(level: Int32, name: Int32, _ value: Int32) throws(SocketError) {
        var v = value
        _ = try check("setsockopt", sko_setsockopt(fileDescriptor, level, name, &v, socklen_t(MemoryLayout<Int32>.size)))
    }

    public func option(level: Int32, name: Int32) throws(SocketError) -> Int32 {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        _ = try check("getsockopt", sko_getsockopt(fileDescriptor, level, name, &v, &len))
        return v
    }

    /// SO_RCVTIMEO / SO_SNDTIMEO in milliseconds (nil = wait forever).
    public func setTimeouts(receive: Int?, send: Int?) throws(SocketError) {
        for (name, ms) in [(SO_RCVTIMEO, receive), (SO_SNDTIMEO, send)] {
            var tv = timeval(tv_sec: (ms ?? 0) / 1000, tv_usec: ((ms ?? 0) % 1000) * 1000)
            _ = try check("setsockopt", sko_setsockopt(fileDescriptor, SOL_SOCKET, name, &tv, socklen_t(MemoryLayout<timeval>.size)))
        }
    }

    public var isNonBlocking: Bool {
        get {
            let flags = sko_fcntl(fileDescriptor, F_GETFL, 0) // -1 (ENETDOWN) once the server is gone
            return flags >= 0 && flags & O_NONBLOCK != 0
        }
        set { _ = sko_fcntl(fileDescriptor, F_SETFL, newValue ? O_NONBLOCK : 0) }
    }

    /// Bytes ready to read (FIONREAD): for a datagram socket, the size of the next datagram.
    public func bytesReadable() throws(SocketError) -> Int {
        var n: Int32 = 0
        _ = try check("ioctl(FIONREAD)", sko_ioctl(fileDescriptor, UInt(FIONREAD), &n))
        return Int(n)
    }

    /// Marks a stream socket as accepting connections. The corresponding C function is `listen`.
    public func listen(backlog: Int32 = 128) throws(SocketError) {
        _ = try check("listen", sko_listen(fileDescriptor, backlog))
    }

    /// Takes the next connection. The corresponding C function is `accept4`.
    public func accept(nonBlocking: Bool = false) throws(SocketError) -> (socket: Socket, peer: SocketAddress?) {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sko_accept4(fileDescriptor, $0, &len, nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
            }
        }
        _ = try check("accept", fd)
        let peer = withUnsafeBytes(of: &storage) { SocketAddress(sockaddr: $0.baseAddress!, length: Int(len)) }
        return (Socket(adopting: fd, family: family), peer)
    }

    /// Sends every byte (blocking socket) or as many as fit (non-blocking).
    /// - Returns: bytes sent.
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        try check("send", sko_send(fileDescriptor, bytes.baseAddress, bytes.count, 0))
    }

    /// Reads up to `buffer.count` bytes; 0 means end of stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0) throws(SocketError) -> Int {
        try check("recv", sko_recv(fileDescriptor, buffer.baseAddress, buffer.count, flags))
    }

    public func shutdown(_ how: Int32) throws(SocketError) {
        _ = try check("shutdown", sko_shutdown(fileDescriptor, how))
    }
}
