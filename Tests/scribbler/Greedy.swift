import CShims
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

// The greedy modes (udp-many, flood) and the BSD-call helpers every mode uses.

func loopback(_ port: UInt16) -> SocketAddress { SocketAddress(host: "127.0.0.1", port: port)! }

func bind(_ fd: Int32, _ address: SocketAddress) -> Int32 {
    address.withSockAddr { sko_bind(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
}

func connect(_ fd: Int32, _ address: SocketAddress) -> Int32 {
    address.withSockAddr { sko_connect(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
}

func sendTo(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, _ address: SocketAddress, flags: Int32) -> Int {
    address.withSockAddr { sko_sendto(fd, bytes.baseAddress, bytes.count, flags, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
}

/// The address a socket is bound to.
func localAddress(_ fd: Int32) -> SocketAddress? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_getsockname(fd, $0, &length) }
    }
    guard rc == 0 else { return nil }
    return withUnsafePointer(to: &storage) { SocketAddress(sockaddr: UnsafeRawPointer($0), length: Int(length)) }
}

/// Waits up to `milliseconds` for `events` on one of the library's sockets; the revents (0: timeout).
func pollSocket(_ fd: Int32, _ events: Int16, milliseconds: Int32) -> Int16 {
    var pfd = pollfd(fd: fd, events: events, revents: 0)
    return sko_poll(&pfd, 1, milliseconds) > 0 ? pfd.revents : 0
}

/// Holds whatever the process has until the test closes our standard input.
func holdUntilInputCloses() {
    var byte: UInt8 = 0
    while true {
        let n = read(0, &byte, 1)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
    }
}

// MARK: udp-many

/// Opens up to `count` UDP sockets, proves a few of them carry datagrams, and holds them.
func openManyDatagramSockets(count: Int) {
    var fds: [Int32] = []
    var firstError: Int32 = 0
    for _ in 0..<count {
        let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        if fd < 0 {
            firstError = errno
            break
        }
        fds.append(fd)
    }
    say("opened=\(fds.count) errno=\(firstError)")
    // A datagram from each probe socket to the next one, checked byte for byte.
    let probes = Array(Set([0, 1, fds.count / 2, fds.count - 2, fds.count - 1].filter { $0 >= 0 && $0 < fds.count })).sorted()
    var verified = 0
    var addresses: [SocketAddress] = []
    for i in probes {
        guard bind(fds[i], loopback(0)) == 0, let a = localAddress(fds[i]) else { say("probe-error=bind socket=\(i) errno=\(errno)"); continue }
        addresses.append(a)
    }
    if addresses.count == probes.count && probes.count >= 2 {
        for (k, i) in probes.enumerated() {
            let target = (k + 1) % probes.count
            var message = [UInt8](repeating: 0, count: 100 + k)
            cshims_fill_pattern(&message, message.count, UInt64(k), 0)
            let sent = message.withUnsafeBytes { sendTo(fds[i], $0, addresses[target], flags: 0) }
            guard sent == message.count else { say("probe-error=send socket=\(i) errno=\(errno)"); continue }
            var buffer = [UInt8](repeating: 0, count: 2048)
            guard pollSocket(fds[probes[target]], Int16(POLLIN), milliseconds: 5000) & Int16(POLLIN) != 0 else {
                say("probe-error=timeout socket=\(probes[target])")
                continue
            }
            let n = sko_recvfrom(fds[probes[target]], &buffer, buffer.count, Int32(MSG_DONTWAIT), nil, nil)
            if n == message.count && Array(buffer[..<n]) == message { verified += 1 } else { say("probe-error=recv n=\(n) errno=\(errno)") }
        }
    }
    say("verified=\(verified) of=\(probes.count)")
    say("ready")
    holdUntilInputCloses()
}

// MARK: flood

/// Opens and holds idle TCP connections to `host`:`port` until a bound is reached.
func flood(host: String, port: UInt16, attempts: Int, seconds: Int) {
    guard let target = SocketAddress(host: host, port: port) else { fail("bad --host \(host)") }
    let deadline = monotonicNanoseconds() + UInt64(seconds) * 1_000_000_000
    var held: [Int32] = []
    var refused = 0, reset = 0, timeouts = 0, other = 0, failuresInARow = 0, socketErrno: Int32 = 0
    var attempt = 0
    while attempt < attempts && failuresInARow < 50 && monotonicNanoseconds() < deadline {
        attempt += 1
        let fd = sko_socket(target.family == .inet6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        if fd < 0 {
            socketErrno = errno // our own limit (ENOBUFS, EMFILE): we hold all we can
            break
        }
        var err: Int32 = 0
        if connect(fd, target) != 0 {
            err = errno
            if err == EINPROGRESS {
                if pollSocket(fd, Int16(POLLOUT), milliseconds: 3000) == 0 {
                    err = ETIMEDOUT
                } else {
                    var length = socklen_t(4)
                    err = sko_getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &length) == 0 ? err : errno
                }
            }
        }
        if err == 0 {
            held.append(fd)
            failuresInARow = 0
            continue
        }
        switch err {
        case ECONNREFUSED: refused += 1
        case ECONNRESET: reset += 1
        case ETIMEDOUT: timeouts += 1
        default: other += 1
        }
        failuresInARow += 1
        _ = sko_close(fd)
    }
    say("held=\(held.count) attempts=\(attempt) refused=\(refused) reset=\(reset) timeouts=\(timeouts) other=\(other) socket-errno=\(socketErrno)")
    say("ready")
    holdUntilInputCloses()
}
