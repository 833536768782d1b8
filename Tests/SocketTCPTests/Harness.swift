import SocketClient
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

// In-process tests: this process is a SocketClient client, and a client's server is chosen once per
// process (`Socket.configure`), so every in-process test shares one socket server, started on first
// use. Both ends of each connection are sockets of this process going through that server's stack
// (its 127.0.0.1 / ::1, not the kernel's loopback).

/// The server every in-process test of this process uses.
enum SharedServer {
    /// Started (and this process configured for it) on first use; stopped at process exit.
    static let server: ServerProcess = {
        do {
            let server = try ServerProcess(tag: "tcp-shared")
            try Socket.configure(serverPath: server.socketPath)
            serverToStopAtExit = server
            atexit { serverToStopAtExit?.discard() }
            return server
        } catch {
            fatalError("cannot start the shared socket server: \(error)")
        }
    }()

    static func start() { _ = server }
}

nonisolated(unsafe) private var serverToStopAtExit: ServerProcess?

/// Hang bound for every blocking call in the in-process tests (SO_RCVTIMEO / SO_SNDTIMEO).
let hangBoundMilliseconds = 10_000

/// The BSD layer with the test's bookkeeping: every descriptor made here is closed by `closeAll()`.
final class Sockets {
    private var open: [Int32] = []

    init() { SharedServer.start() }

    deinit { closeAll() }

    func closeAll() {
        for fd in open.reversed() { _ = sko_close(fd) }
        open.removeAll()
    }

    /// Closes `fd` now (and forgets it). Returns sko_close's result.
    @discardableResult
    func close(_ fd: Int32) -> Int32 {
        open.removeAll { $0 == fd }
        return sko_close(fd)
    }

    func adopt(_ fd: Int32) -> Int32 {
        open.append(fd)
        return fd
    }

    /// A TCP socket with the hang bound as its receive and send timeouts.
    func tcp(_ family: Int32 = AF_INET, nonBlocking: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int32 {
        let fd = sko_socket(family, Int32(SOCK_STREAM.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0), 0)
        try #require(fd >= 0, "socket: errno \(errno)", sourceLocation: sourceLocation)
        _ = adopt(fd)
        try setTimeouts(fd, sourceLocation: sourceLocation)
        return fd
    }

    func setTimeouts(_ fd: Int32, milliseconds: Int = hangBoundMilliseconds, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        for name in [SO_RCVTIMEO, SO_SNDTIMEO] {
            try #require(sko_setsockopt(fd, SOL_SOCKET, name, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0,
                         "setsockopt timeout: errno \(errno)", sourceLocation: sourceLocation)
        }
    }

    /// A listener on 127.0.0.1 (or ::1) : `port`.
    func listener(port: UInt16, family: Int32 = AF_INET, backlog: Int32 = 16, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int32 {
        let fd = try tcp(family, sourceLocation: sourceLocation)
        let rc = loopback(family, port).withSockAddr { sko_bind(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
        try #require(rc == 0, "bind port \(port): errno \(errno)", sourceLocation: sourceLocation)
        try #require(sko_listen(fd, backlog) == 0, "listen: errno \(errno)", sourceLocation: sourceLocation)
        return fd
    }

    /// A blocking connect to the stack's loopback : `port`.
    func connected(port: UInt16, family: Int32 = AF_INET, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int32 {
        let fd = try tcp(family, sourceLocation: sourceLocation)
        let rc = connect(fd, loopback(family, port))
        try #require(rc == 0, "connect port \(port): rc \(rc) errno \(errno)", sourceLocation: sourceLocation)
        return fd
    }

    /// Accepts one connection (bounded by the listener's receive timeout).
    func accept(_ listener: Int32, flags: Int32 = 0, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int32 {
        let fd = sko_accept4(listener, nil, nil, flags)
        try #require(fd >= 0, "accept: errno \(errno)", sourceLocation: sourceLocation)
        _ = adopt(fd)
        try setTimeouts(fd, sourceLocation: sourceLocation)
        return fd
    }

    /// A listener and one connection to it: (listener, client side, accepted side).
    func pair(port: UInt16, family: Int32 = AF_INET, sourceLocation: SourceLocation = #_sourceLocation) throws -> (listener: Int32, client: Int32, server: Int32) {
        let l = try listener(port: port, family: family, sourceLocation: sourceLocation)
        let c = try connected(port: port, family: family, sourceLocation: sourceLocation)
        let s = try accept(l, sourceLocation: sourceLocation)
        return (l, c, s)
    }
}

func loopback(_ family: Int32, _ port: UInt16) -> SocketAddress {
    SocketAddress(host: family == AF_INET6 ? "::1" : "127.0.0.1", port: port)!
}

func connect(_ fd: Int32, _ address: SocketAddress) -> Int32 {
    address.withSockAddr { sko_connect(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
}

/// Sends every byte (blocking socket). Returns what sko_send last returned when it failed.
@discardableResult
func sendAll(_ fd: Int32, _ bytes: [UInt8], flags: Int32 = 0) -> Int {
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { sko_send(fd, $0.baseAddress! + done, bytes.count - done, flags) }
        if n <= 0 { return n }
        done += n
    }
    return done
}

func send(_ fd: Int32, _ text: String, flags: Int32 = 0) -> Int {
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { sko_send(fd, $0.baseAddress, $0.count, flags) }
}

/// One recv of at most `max` bytes: the bytes, or (-1, errno).
func recv(_ fd: Int32, max: Int = 65536, flags: Int32 = 0) -> (rc: Int, errno: Int32, bytes: [UInt8]) {
    var buffer = [UInt8](repeating: 0, count: max)
    let n = buffer.withUnsafeMutableBytes { sko_recv(fd, $0.baseAddress, $0.count, flags) }
    let err = errno
    return (n, n < 0 ? err : 0, n > 0 ? Array(buffer[..<n]) : [])
}

func recvText(_ fd: Int32, max: Int = 65536, flags: Int32 = 0) -> String? {
    let r = recv(fd, max: max, flags: flags)
    return r.rc >= 0 ? String(decoding: r.bytes, as: UTF8.self) : nil
}

/// Reads exactly `count` bytes (or until EOF / error).
func recvAll(_ fd: Int32, count: Int) -> [UInt8] {
    var out: [UInt8] = []
    while out.count < count {
        let r = recv(fd, max: count - out.count)
        if r.rc <= 0 { break }
        out += r.bytes
    }
    return out
}

/// poll(2) on one descriptor: the revents (0 on timeout).
func pollEvents(_ fd: Int32, _ events: Int16, timeoutMilliseconds: Int32) -> Int16 {
    var pfd = pollfd(fd: fd, events: events, revents: 0)
    let n = poll(&pfd, 1, timeoutMilliseconds)
    return n > 0 ? pfd.revents : 0
}

func intOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> (rc: Int32, errno: Int32, value: Int32) {
    var v: Int32 = -12345
    var len = socklen_t(MemoryLayout<Int32>.size)
    let rc = sko_getsockopt(fd, level, name, &v, &len)
    return (rc, rc < 0 ? errno : 0, v)
}

func setIntOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) -> Int32 {
    var v = value
    return sko_setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
}

func errnoName(_ e: Int32) -> String {
    String(cString: strerror(e)) + " (\(e))"
}
