import SocketClient
#if canImport(Glibc)
import Glibc
#endif

/// One set of BSD socket calls: the kernel's (libc) or the stack's (SocketClient's sko_*). Every
/// workload is written once against this table, so both sides run the same code.
struct SocketCalls: Sendable {
    let name: String
    let socket: @Sendable (Int32, Int32, Int32) -> Int32
    let bind: @Sendable (Int32, UnsafePointer<sockaddr>?, socklen_t) -> Int32
    let connect: @Sendable (Int32, UnsafePointer<sockaddr>?, socklen_t) -> Int32
    let listen: @Sendable (Int32, Int32) -> Int32
    let accept: @Sendable (Int32) -> Int32
    let send: @Sendable (Int32, UnsafeRawPointer?, Int, Int32) -> Int
    let recv: @Sendable (Int32, UnsafeMutableRawPointer?, Int, Int32) -> Int
    let sendto: @Sendable (Int32, UnsafeRawPointer?, Int, UnsafePointer<sockaddr>?, socklen_t) -> Int
    let recvfrom: @Sendable (Int32, UnsafeMutableRawPointer?, Int, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?) -> Int
    let setsockopt: @Sendable (Int32, Int32, Int32, UnsafeRawPointer?, socklen_t) -> Int32
    let getsockname: @Sendable (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?) -> Int32
    let setNonBlocking: @Sendable (Int32) -> Int32
    let close: @Sendable (Int32) -> Int32

    static let kernel = SocketCalls(
        name: "kernel",
        socket: { Glibc.socket($0, $1, $2) },
        bind: { Glibc.bind($0, $1, $2) },
        connect: { Glibc.connect($0, $1, $2) },
        listen: { Glibc.listen($0, $1) },
        accept: { Glibc.accept($0, nil, nil) },
        send: { Glibc.send($0, $1, $2, $3 | Int32(MSG_NOSIGNAL)) },
        recv: { Glibc.recv($0, $1, $2, $3) },
        sendto: { Glibc.sendto($0, $1, $2, 0, $3, $4) },
        recvfrom: { Glibc.recvfrom($0, $1, $2, 0, $3, $4) },
        setsockopt: { Glibc.setsockopt($0, $1, $2, $3, $4) },
        getsockname: { Glibc.getsockname($0, $1, $2) },
        setNonBlocking: { Glibc.fcntl($0, F_SETFL, Glibc.fcntl($0, F_GETFL) | O_NONBLOCK) },
        close: { Glibc.close($0) }
    )

    static let stack = SocketCalls(
        name: "stack",
        socket: { sko_socket($0, $1, $2) },
        bind: { sko_bind($0, $1, $2) },
        connect: { sko_connect($0, $1, $2) },
        listen: { sko_listen($0, $1) },
        accept: { sko_accept($0, nil, nil) },
        send: { sko_send($0, $1, $2, $3) },
        recv: { sko_recv($0, $1, $2, $3) },
        sendto: { sko_sendto($0, $1, $2, 0, $3, $4) },
        recvfrom: { sko_recvfrom($0, $1, $2, 0, $3, $4) },
        setsockopt: { sko_setsockopt($0, $1, $2, $3, $4) },
        getsockname: { sko_getsockname($0, $1, $2) },
        setNonBlocking: { sko_fcntl($0, F_SETFL, O_NONBLOCK) },
        close: { sko_close($0) }
    )

    // MARK: helpers shared by the workloads

    func check(_ what: String, _ rc: Int32) -> Int32 {
        if rc < 0 { fatal("\(name) \(what): \(String(cString: strerror(errno)))") }
        return rc
    }

    /// A socket bound to 127.0.0.1 on a free port; returns it and the port.
    func boundSocket(_ type: Int32) -> (Int32, UInt16) {
        let fd = check("socket", socket(AF_INET, type, 0))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        _ = check("bind", withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } })
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = check("getsockname", withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } })
        return (fd, UInt16(bigEndian: sin.sin_port))
    }

    func connect(_ fd: Int32, port: UInt16) -> Int32 {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        sin.sin_port = port.bigEndian
        return withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    func setInt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) {
        var v = value
        _ = setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    func setTimeout(_ fd: Int32, receiveMilliseconds ms: Int) {
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends all of `buffer` (blocking socket).
    func sendAll(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = send(fd, buffer + done, count - done, 0)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return false
            }
            done += n
        }
        return true
    }

    /// Receives exactly `count` bytes (blocking socket); false at EOF or error.
    func recvAll(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = recv(fd, buffer + done, count - done, 0)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return false
            }
            done += n
        }
        return true
    }
}

func fatal(_ message: String) -> Never {
    var line = "error: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(2)
}

/// A joinable pthread.
final class Worker: @unchecked Sendable {
    // @unchecked Sendable: `body` is immutable; the thread is joined once.
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
        pthread_create(&thread, nil, { arg in
            Unmanaged<Worker>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
    }

    func join() { pthread_join(thread, nil) }
}
