import Foundation
import SocketClient
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

// UDP socket semantics of SocketClient, checked in the calling process itself (the BSD layer
// `sko_*` where errno is the point, `Socket` for the rest).
//
// How the transports are covered: `Socket.configure(serverPath:transport:)` is process-wide and
// fixed once the process has connected, and Swift Testing runs tests in parallel in one process.
// So every check runs in an *exit test* (`#expect(processExitsWith:)`): Swift Testing re-runs this
// test bundle as a child process that executes only that check's body. Each child configures the
// transport under test once, against its own socket-server started (by the parent) with
// `--datagram-transport` set to the same transport, and first verifies that the connection really
// uses it. Every check runs with both transports: their receive and send paths differ (pbufs read
// with process_vm_readv vs payload slots in the segment). Issues recorded in the child are reported
// to the parent; the child arms alarm(30) so a check that hangs fails (SIGALRM) instead of hanging
// the run. Each check uses its own ports (and its own server anyway).

enum Transport: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case processVM = "process-vm"
    case sharedMemory = "shared-memory"
    var testDescription: String { rawValue }
}

@Suite("UDP semantics, in process")
struct UDPSemanticsTests {
    /// Starts a server for `transport`, then runs `check` in a child process connected to it.
    func run(_ check: String, _ transport: Transport, serverArguments: [String] = [],
             sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let server = try ServerProcess(["--datagram-transport", transport.rawValue] + serverArguments)
        defer { server.stop() }
        let stderrPath = server.socketPath + ".child-stderr"
        defer { unlink(stderrPath) }
        let result = await #expect(processExitsWith: .success, "check \(check) over \(transport.rawValue)", sourceLocation: sourceLocation) {
            [check = check as String, path = server.socketPath as String, transport = transport.rawValue as String, stderrPath = stderrPath as String] in
            try UDPChecks.run(check, serverPath: path, transport: transport, stderrPath: stderrPath)
        }
        // A crash (a trap, SIGALRM) is explained only by the child's stderr: attach it.
        if result == nil {
            let stderr = (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
            Issue.record("check \(check) over \(transport.rawValue) failed; the child's stderr:\n\(stderr.suffix(4000))\nserver log:\n\(server.log.suffix(2000))",
                         sourceLocation: sourceLocation)
        }
    }

    @Test("MSG_PEEK returns the datagram and leaves it queued", arguments: Transport.allCases)
    func msgPeek(_ t: Transport) async throws { try await run("msgPeek", t) }

    @Test("MSG_TRUNC and truncation: full length, msg_flags, rest discarded", arguments: Transport.allCases)
    func msgTrunc(_ t: Transport) async throws { try await run("msgTrunc", t) }

    @Test("MSG_DONTWAIT, O_NONBLOCK, FIONBIO and SOCK_NONBLOCK: EAGAIN when empty", arguments: Transport.allCases)
    func nonBlocking(_ t: Transport) async throws { try await run("nonBlocking", t) }

    @Test("SO_RCVTIMEO: a blocking recv gives EAGAIN after the timeout", arguments: Transport.allCases)
    func receiveTimeout(_ t: Transport) async throws { try await run("receiveTimeout", t) }

    @Test("connect, send without address, filtering by peer, AF_UNSPEC disconnect", arguments: Transport.allCases)
    func connectAndDisconnect(_ t: Transport) async throws { try await run("connectAndDisconnect", t) }

    @Test("FIONREAD is the size of the next datagram", arguments: Transport.allCases)
    func fionread(_ t: Transport) async throws { try await run("fionread", t) }

    @Test("EMSGSIZE above 65,507 bytes; 65,507 bytes arrive intact", arguments: Transport.allCases)
    func messageSize(_ t: Transport) async throws { try await run("messageSize", t) }

    @Test("IPv6: 65,487 bytes arrive; a larger datagram fails at send with EMSGSIZE", arguments: Transport.allCases)
    func ipv6MessageSize(_ t: Transport) async throws { try await run("ipv6MessageSize", t) }

    @Test("getsockname after bind to port 0; that port receives", arguments: Transport.allCases)
    func ephemeralPort(_ t: Transport) async throws { try await run("ephemeralPort", t) }

    @Test("getpeername before connect: ENOTCONN", arguments: Transport.allCases)
    func peerNameNotConnected(_ t: Transport) async throws { try await run("peerNameNotConnected", t) }

    @Test("bind to a non-local address: EADDRNOTAVAIL", arguments: Transport.allCases)
    func bindNonLocal(_ t: Transport) async throws { try await run("bindNonLocal", t) }

    @Test("bind to a port in use: EADDRINUSE; rebinding a bound socket: EINVAL", arguments: Transport.allCases)
    func bindInUse(_ t: Transport) async throws { try await run("bindInUse", t) }

    @Test("poll readiness of the descriptor", arguments: Transport.allCases)
    func pollReadiness(_ t: Transport) async throws { try await run("pollReadiness", t) }

    @Test("zero-length datagram round trip", arguments: Transport.allCases)
    func zeroLength(_ t: Transport) async throws { try await run("zeroLength", t) }

    @Test("IPv6 send and receive, addresses and connect", arguments: Transport.allCases)
    func ipv6(_ t: Transport) async throws { try await run("ipv6", t) }

    @Test("SO_RCVBUF and SO_SNDBUF report the channel's real size", arguments: Transport.allCases)
    func bufferSizes(_ t: Transport) async throws {
        // A non-default geometry, so the check sees sizes that come from this server.
        try await run("bufferSizes", t, serverArguments: ["--datagram-ring-items", "64", "--datagram-slot-size", "1024"])
    }

    @Test("SO_TYPE, SO_PROTOCOL, SO_DOMAIN, SO_ERROR", arguments: Transport.allCases)
    func socketOptions(_ t: Transport) async throws { try await run("socketOptions", t) }
}

// MARK: - the checks (run in the child process)

enum UDPChecks {
    static let all: [String: @Sendable () throws -> Void] = [
        "msgPeek": msgPeek, "msgTrunc": msgTrunc, "nonBlocking": nonBlocking, "receiveTimeout": receiveTimeout,
        "connectAndDisconnect": connectAndDisconnect, "fionread": fionread, "messageSize": messageSize,
        "ipv6MessageSize": ipv6MessageSize, "ephemeralPort": ephemeralPort, "peerNameNotConnected": peerNameNotConnected,
        "bindNonLocal": bindNonLocal, "bindInUse": bindInUse, "pollReadiness": pollReadiness, "zeroLength": zeroLength,
        "ipv6": ipv6, "bufferSizes": bufferSizes, "socketOptions": socketOptions,
    ]

    static func run(_ check: String, serverPath: String, transport: String, stderrPath: String) throws {
        alarm(30) // hang bound: SIGALRM ends this child, and the exit test fails
        // The parent reads this file when the child fails (a trap's message goes to stderr).
        let fd = open(stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if fd >= 0 { dup2(fd, 2); close(fd) }
        let wanted = try #require(DatagramTransport(name: transport))
        try Socket.configure(serverPath: serverPath, transport: wanted)
        let actual = try Socket.datagramTransport()
        try #require(actual == wanted, "connected with transport \(actual), asked for \(wanted)")
        let body = try #require(all[check] ?? PromiseChecks.all[check], "no check named \(check)")
        do {
            try body()
        } catch {
            // An error thrown out of an exit test's body is not reported to the parent: report it
            // (a failed #require has been recorded already).
            if !(error is ExpectationFailedError) { Issue.record(error, "check \(check) threw") }
            exit(EXIT_FAILURE)
        }
    }

    // MARK: helpers

    static func v4(_ port: UInt16, _ host: String = "127.0.0.1") -> SocketAddress { SocketAddress(host: host, port: port)! }
    static func v6(_ port: UInt16, _ host: String = "::1") -> SocketAddress { SocketAddress(host: host, port: port)! }

    static func bound(_ address: SocketAddress) throws -> Socket {
        let s = try Socket(address.family, .datagram)
        try s.bind(to: address)
        return s
    }

    /// Deterministic bytes.
    static func pattern(_ count: Int, seed: UInt8 = 1) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ ($0 >> 8)) }
    }

    /// Waits (bounded) until the descriptor polls readable.
    @discardableResult
    static func waitReadable(_ s: Socket, timeoutMilliseconds: Int32 = 5000) -> Bool {
        var pfd = pollfd(fd: s.fileDescriptor, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, timeoutMilliseconds) == 1 && pfd.revents & Int16(POLLIN) != 0
    }

    /// Waits (bounded) until a datagram is queued. The descriptor may still poll readable after the
    /// last datagram was read, until a receive returns EAGAIN (that is when the library drains its
    /// eventfd), so a correct waiter peeks without blocking and polls only after EAGAIN, as an
    /// application's event loop does.
    static func awaitDatagram(_ s: Socket, timeoutMilliseconds: Int = 5000) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            errno = 0
            if sko_recv(s.fileDescriptor, nil, 0, Int32(MSG_PEEK | MSG_DONTWAIT)) >= 0 { return true }
            guard errno == EAGAIN else { return false }
            let now = monotonicNanoseconds()
            guard now < deadline else { return false }
            var pfd = pollfd(fd: s.fileDescriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, Int32((deadline - now) / 1_000_000 + 1))
        }
    }

    /// Receives one datagram without ever blocking for more than 5 s.
    static func receive(_ s: Socket, maxBytes: Int = 65_536, flags: Int32 = 0,
                        sourceLocation: SourceLocation = #_sourceLocation) throws -> (bytes: [UInt8], from: SocketAddress?) {
        try #require(awaitDatagram(s), "nothing arrived within 5 s", sourceLocation: sourceLocation)
        return try s.receive(maxBytes: maxBytes, flags: flags | Int32(MSG_DONTWAIT))
    }

    /// Runs a BSD-layer call expected to fail; returns its errno (0 if it succeeded).
    static func errnoOf<R: FixedWidthInteger>(_ call: () -> R) -> Int32 {
        errno = 0
        return call() < 0 ? errno : 0
    }

    static func sendTo(_ s: Socket, _ bytes: [UInt8], _ to: SocketAddress, flags: Int32 = 0) -> Int {
        to.withSockAddr { addr, len in
            bytes.withUnsafeBytes { sko_sendto(s.fileDescriptor, $0.baseAddress, bytes.count, flags, addr.assumingMemoryBound(to: sockaddr.self), socklen_t(len)) }
        }
    }

    static func bindErrno(_ s: Socket, _ a: SocketAddress) -> Int32 {
        errnoOf { a.withSockAddr { sko_bind(s.fileDescriptor, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) } }
    }

    /// recv with MSG_DONTWAIT into a throwaway buffer, for "nothing is queued" checks.
    static func recvErrno(_ s: Socket, flags: Int32 = Int32(MSG_DONTWAIT)) -> Int32 {
        var buffer = [UInt8](repeating: 0, count: 16)
        return errnoOf { sko_recv(s.fileDescriptor, &buffer, buffer.count, flags) }
    }

    static func intOption(_ s: Socket, _ level: Int32, _ name: Int32) throws -> Int32 {
        try s.option(level: level, name: name)
    }

    // MARK: checks

    static func msgPeek() throws {
        let a = try bound(v4(7201)), b = try bound(v4(7202))
        let small = Array("peekaboo".utf8)
        try b.send(small, to: v4(7201))
        // A blocking peek waits for the datagram, like a blocking recv.
        var buffer = [UInt8](repeating: 0, count: 64)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_recvfrom(a.fileDescriptor, &buffer, buffer.count, Int32(MSG_PEEK), $0, &length) }
        }
        #expect(n == small.count)
        #expect(Array(buffer[..<max(0, n)]) == small)
        let from = withUnsafeBytes(of: &storage) { SocketAddress(sockaddr: $0.baseAddress!, length: Int(length)) }
        #expect(from == v4(7202), "peek reports the sender")
        // Still queued: a second peek and then a read return the same bytes, and only then it is gone.
        #expect(try a.bytesReadable() == small.count)
        #expect(try a.receive(maxBytes: 64, flags: Int32(MSG_PEEK)).bytes == small)
        let read = try a.receive(maxBytes: 64)
        #expect(read.bytes == small)
        #expect(read.from == v4(7202))
        #expect(recvErrno(a) == EAGAIN, "the datagram is consumed by the read, not by the peeks")

        // A datagram spanning several payload buffers: a short peek, a full peek, then the read.
        let big = pattern(5000)
        try b.send(big, to: v4(7201))
        #expect(try receive(a, maxBytes: 100, flags: Int32(MSG_PEEK)).bytes == Array(big[..<100]))
        #expect(try a.receive(maxBytes: 6000, flags: Int32(MSG_PEEK)).bytes == big)
        #expect(try a.receive(maxBytes: 6000).bytes == big)
        #expect(recvErrno(a) == EAGAIN)
    }

    static func msgTrunc() throws {
        let a = try bound(v4(7211)), b = try bound(v4(7212))
        let long = pattern(100), short = Array("second".utf8)

        // recv(MSG_TRUNC) with a small buffer returns the datagram's full length, stores what fits,
        // and consumes the datagram.
        try b.send(long, to: v4(7211))
        try b.send(short, to: v4(7211))
        #expect(awaitDatagram(a))
        var small = [UInt8](repeating: 0, count: 10)
        let n = sko_recv(a.fileDescriptor, &small, small.count, Int32(MSG_TRUNC))
        #expect(n == long.count, "MSG_TRUNC returns the real length")
        #expect(small == Array(long[..<10]))
        #expect(try receive(a).bytes == short, "the truncated datagram is gone; the next one follows")

        // Without MSG_TRUNC: the buffer size is returned and the rest of the datagram is discarded.
        try b.send(long, to: v4(7211))
        try b.send(short, to: v4(7211))
        #expect(awaitDatagram(a))
        small = [UInt8](repeating: 0, count: 10)
        #expect(sko_recv(a.fileDescriptor, &small, small.count, 0) == 10)
        #expect(small == Array(long[..<10]))
        #expect(try receive(a).bytes == short, "not the tail of the truncated datagram")

        // recvmsg reports truncation in msg_flags, with and without MSG_TRUNC in the call.
        func recvmsg(_ capacity: Int, _ flags: Int32) -> (result: Int, msgFlags: Int32, bytes: [UInt8], from: SocketAddress?) {
            var buffer = [UInt8](repeating: 0, count: capacity)
            var storage = sockaddr_storage()
            return buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &storage) { name in
                    var iov = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
                    return withUnsafeMutablePointer(to: &iov) { iovp in
                        var msg = msghdr()
                        msg.msg_name = UnsafeMutableRawPointer(name)
                        msg.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
                        msg.msg_iov = iovp
                        msg.msg_iovlen = 1
                        let r = sko_recvmsg(a.fileDescriptor, &msg, flags)
                        let from = SocketAddress(sockaddr: UnsafeRawPointer(name), length: Int(msg.msg_namelen))
                        return (r, msg.msg_flags, Array(raw.prefix(max(0, min(r, capacity)))), from)
                    }
                }
            }
        }
        for flags in [Int32(0), Int32(MSG_TRUNC)] {
            try b.send(long, to: v4(7211))
            #expect(awaitDatagram(a))
            let r = recvmsg(10, flags)
            #expect(r.result == (flags == 0 ? 10 : long.count), "recvmsg flags \(flags)")
            #expect(r.msgFlags & Int32(MSG_TRUNC) != 0, "msg_flags has MSG_TRUNC (recvmsg flags \(flags))")
            #expect(r.bytes == Array(long[..<10]))
            #expect(r.from == v4(7212))
        }
        try b.send(short, to: v4(7211))
        #expect(awaitDatagram(a))
        let whole = recvmsg(64, 0)
        #expect(whole.result == short.count)
        #expect(whole.msgFlags & Int32(MSG_TRUNC) == 0, "no MSG_TRUNC when the datagram fits")
        #expect(recvErrno(a) == EAGAIN)
    }

    static func nonBlocking() throws {
        let a = try bound(v4(7221)), b = try bound(v4(7222))
        // MSG_DONTWAIT on a blocking socket.
        #expect(sko_fcntl(a.fileDescriptor, F_GETFL, 0) & O_NONBLOCK == 0)
        #expect(recvErrno(a, flags: Int32(MSG_DONTWAIT)) == EAGAIN)
        // O_NONBLOCK through fcntl.
        #expect(sko_fcntl(a.fileDescriptor, F_SETFL, O_NONBLOCK) == 0)
        #expect(sko_fcntl(a.fileDescriptor, F_GETFL, 0) & O_NONBLOCK != 0)
        #expect(recvErrno(a, flags: 0) == EAGAIN)
        #expect(sko_fcntl(a.fileDescriptor, F_SETFL, 0) == 0)
        #expect(!a.isNonBlocking)
        // FIONBIO.
        var on: Int32 = 1, off: Int32 = 0
        #expect(sko_ioctl(a.fileDescriptor, UInt(FIONBIO), &on) == 0)
        #expect(recvErrno(a, flags: 0) == EAGAIN)
        #expect(sko_ioctl(a.fileDescriptor, UInt(FIONBIO), &off) == 0)
        // SOCK_NONBLOCK at creation.
        let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        #expect(fd >= 0)
        #expect(sko_fcntl(fd, F_GETFL, 0) & O_NONBLOCK != 0)
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(errnoOf { sko_recv(fd, &buffer, buffer.count, 0) } == EAGAIN)
        #expect(sko_close(fd) == 0)
        let c = try Socket(.inet, .datagram, nonBlocking: true)
        #expect(c.isNonBlocking)
        // When a datagram is there, a non-blocking receive returns it.
        #expect(sendTo(b, [1, 2, 3], v4(7221), flags: Int32(MSG_DONTWAIT)) == 3)
        #expect(awaitDatagram(a))
        #expect(try a.receive(maxBytes: 16, flags: Int32(MSG_DONTWAIT)).bytes == [1, 2, 3])
        #expect(recvErrno(a) == EAGAIN)
    }

    static func receiveTimeout() throws {
        let a = try bound(v4(7231)), b = try bound(v4(7232))
        var tv = timeval(tv_sec: 0, tv_usec: 300_000)
        #expect(sko_setsockopt(a.fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0)
        var got = timeval()
        var len = socklen_t(MemoryLayout<timeval>.size)
        #expect(sko_getsockopt(a.fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &got, &len) == 0)
        #expect(got.tv_sec == 0 && got.tv_usec == 300_000)
        let start = monotonicNanoseconds()
        let err = recvErrno(a, flags: 0) // blocking: bounded only by the timeout (and alarm)
        let elapsed = Double(monotonicNanoseconds() - start) / 1e6
        #expect(err == EAGAIN)
        #expect(elapsed >= 290, "returned after \(elapsed) ms, before the 300 ms timeout")
        // A correctness bound, not a speed one: a timeout that is ignored waits until alarm(30).
        #expect(elapsed <= 1500, "returned after \(elapsed) ms: the 300 ms timeout was not what ended the wait")
        // A datagram that is there is returned at once by a socket with a timeout.
        try b.send([7], to: v4(7231))
        #expect(awaitDatagram(a))
        #expect(try a.receive(maxBytes: 16).bytes == [7])
        // The Swift layer sets the same option.
        try a.setTimeouts(receive: 150, send: nil)
        let again = monotonicNanoseconds()
        #expect(throws: SocketError("recvfrom", Errno(EAGAIN))) { try a.receive(maxBytes: 16) }
        let swiftElapsed = Double(monotonicNanoseconds() - again) / 1e6
        #expect(swiftElapsed >= 140 && swiftElapsed <= 750, "returned after \(swiftElapsed) ms with a 150 ms timeout")
    }

    static func connectAndDisconnect() throws {
        let a = try bound(v4(7241)), b = try bound(v4(7242)), c = try bound(v4(7243))
        try b.connect(to: v4(7241))
        #expect(try b.peerAddress == v4(7241))
        // send without an address goes to the connected peer.
        let msg = Array("to-a".utf8)
        #expect(msg.withUnsafeBytes { sko_send(b.fileDescriptor, $0.baseAddress, $0.count, 0) } == msg.count)
        let first = try receive(a)
        #expect(first.bytes == msg)
        #expect(first.from == v4(7242))

        // A connected socket only takes datagrams from its peer. c writes to b, then to a: once a
        // has c's second datagram, the stack has dealt with the first.
        try c.send(Array("from-c".utf8), to: v4(7242))
        try c.send(Array("sync".utf8), to: v4(7241))
        #expect(try receive(a).bytes == Array("sync".utf8))
        #expect(recvErrno(b) == EAGAIN, "a connected socket accepted a datagram from another peer")
        try a.send(Array("from-a".utf8), to: v4(7242))
        let reply = try receive(b)
        #expect(reply.bytes == Array("from-a".utf8))
        #expect(reply.from == v4(7241))

        // connect(AF_UNSPEC) dissolves the association.
        var unspec = sockaddr()
        unspec.sa_family = sa_family_t(AF_UNSPEC)
        #expect(sko_connect(b.fileDescriptor, &unspec, socklen_t(MemoryLayout<sockaddr>.size)) == 0)
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        #expect(errnoOf { withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_getpeername(b.fileDescriptor, $0, &len) } } } == ENOTCONN)
        #expect(errnoOf { msg.withUnsafeBytes { sko_send(b.fileDescriptor, $0.baseAddress, $0.count, 0) } } == EDESTADDRREQ)
        // ...and datagrams from anyone reach it again.
        try c.send(Array("from-c-again".utf8), to: v4(7242))
        let open = try receive(b)
        #expect(open.bytes == Array("from-c-again".utf8))
        #expect(open.from == v4(7243))
        // An unconnected, fresh socket: send without address is EDESTADDRREQ too.
        let d = try Socket(.inet, .datagram)
        #expect(errnoOf { msg.withUnsafeBytes { sko_send(d.fileDescriptor, $0.baseAddress, $0.count, 0) } } == EDESTADDRREQ)
    }

    static func fionread() throws {
        let a = try bound(v4(7251)), b = try bound(v4(7252))
        #expect(try a.bytesReadable() == 0, "nothing queued")
        let one = pattern(1234), two = pattern(10, seed: 2)
        try b.send(one, to: v4(7251))
        try b.send(two, to: v4(7251))
        #expect(awaitDatagram(a))
        var n: Int32 = -1
        #expect(sko_ioctl(a.fileDescriptor, UInt(FIONREAD), &n) == 0)
        #expect(n == 1234, "FIONREAD is the next datagram's size, not the total queued")
        #expect(try a.bytesReadable() == 1234, "and asking does not consume it")
        #expect(try a.receive(maxBytes: 2000).bytes == one)
        #expect(awaitDatagram(a))
        #expect(try a.bytesReadable() == 10)
        #expect(try a.receive(maxBytes: 2000).bytes == two)
        #expect(try a.bytesReadable() == 0)
    }

    static func messageSize() throws {
        let a = try bound(v4(7261)), b = try bound(v4(7262))
        let tooBig = pattern(65_508)
        #expect(errnoOf { sendTo(b, tooBig, v4(7261)) } == EMSGSIZE)
        #expect(errnoOf { tooBig.withUnsafeBytes { sko_sendto(b.fileDescriptor, $0.baseAddress, 100_000, 0, nil, 0) } } == EMSGSIZE)
        let largest = pattern(65_507, seed: 3)
        #expect(sendTo(b, largest, v4(7261)) == 65_507)
        let got = try receive(a)
        #expect(got.bytes.count == 65_507)
        #expect(got.bytes == largest, "the first datagram to arrive is the 65,507-byte one, intact")
        #expect(recvErrno(a) == EAGAIN)
        #expect(try b.option(level: SOL_SOCKET, name: SO_ERROR) == 0)
    }

    static func ipv6MessageSize() throws {
        // Linux carries up to 65,527 bytes of UDP payload over IPv6. This stack's limit is 65,487
        // (lwIP's 16-bit packet length; see the README's limits): that much arrives, more fails
        // at send with EMSGSIZE, never vanishing after a successful send.
        let a = try bound(v6(7266)), b = try bound(v6(7267))
        let limit = 65_487
        let largest = pattern(limit, seed: 4)
        #expect(sendTo(b, largest, v6(7266)) == limit)
        let got = try receive(a)
        #expect(got.bytes == largest, "\(limit) bytes over IPv6 arrive intact")
        for size in [limit + 1, 65_507, 65_508] {
            let n = sendTo(b, pattern(size), v6(7266))
            let err = n < 0 ? errno : 0
            #expect(n == -1 && err == EMSGSIZE, "send of \(size) bytes over IPv6: \(n), \(Errno(err))")
        }
        #expect(recvErrno(a) == EAGAIN, "nothing over the limit arrived")
    }

    static func ephemeralPort() throws {
        let a = try bound(v4(0))
        let local = try a.localAddress
        #expect(local.family == .inet)
        #expect(local.host == "127.0.0.1")
        #expect(local.port != 0, "bind to port 0 picks a port")
        let b = try bound(v4(7271))
        try b.send(Array("to-ephemeral".utf8), to: local)
        let got = try receive(a)
        #expect(got.bytes == Array("to-ephemeral".utf8))
        #expect(got.from == v4(7271))
        // Two sockets on port 0 get different ports.
        let c = try bound(v4(0))
        #expect(try c.localAddress.port != local.port)
        // IPv6, and a socket never bound.
        let d = try bound(v6(0))
        #expect(try d.localAddress.port != 0)
        #expect(try d.localAddress.family == .inet6)
        let e = try Socket(.inet, .datagram)
        #expect(try e.localAddress.port == 0)
    }

    static func peerNameNotConnected() throws {
        for s in [try Socket(.inet, .datagram), try bound(v4(7276)), try bound(v6(7277))] {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let err = errnoOf { withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_getpeername(s.fileDescriptor, $0, &len) } } }
            #expect(err == ENOTCONN)
        }
    }

    static func bindNonLocal() throws {
        let a = try Socket(.inet, .datagram)
        #expect(bindErrno(a, v4(7281, "192.0.2.1")) == EADDRNOTAVAIL)
        // The failed bind left it unbound: a local address still works.
        #expect(bindErrno(a, v4(7281)) == 0)
        let b = try Socket(.inet6, .datagram)
        #expect(bindErrno(b, v6(7282, "2001:db8::1")) == EADDRNOTAVAIL)
        #expect(bindErrno(b, v6(7282)) == 0)
        // Family mismatch.
        let c = try Socket(.inet, .datagram)
        #expect(bindErrno(c, v6(7283)) == EAFNOSUPPORT)
    }

    static func bindInUse() throws {
        let a = try bound(v4(7291))
        let b = try Socket(.inet, .datagram)
        #expect(bindErrno(b, v4(7291)) == EADDRINUSE)
        #expect(bindErrno(b, .ipv4Any(port: 7291)) == EADDRINUSE, "the wildcard overlaps 127.0.0.1")
        #expect(bindErrno(a, v4(7292)) == EINVAL, "a bound socket cannot be bound again")
        // Once the first is closed, the port is free.
        a.close()
        #expect(bindErrno(b, v4(7291)) == 0)
        // With SO_REUSEADDR on both, sharing is allowed (Linux semantics).
        let c = try Socket(.inet, .datagram), d = try Socket(.inet, .datagram)
        try c.setOption(level: SOL_SOCKET, name: SO_REUSEADDR, 1)
        try d.setOption(level: SOL_SOCKET, name: SO_REUSEADDR, 1)
        #expect(try c.option(level: SOL_SOCKET, name: SO_REUSEADDR) != 0)
        #expect(bindErrno(c, v4(7293)) == 0)
        #expect(bindErrno(d, v4(7293)) == 0)
    }

    static func pollReadiness() throws {
        let a = try bound(v4(7301)), b = try bound(v4(7302))
        func revents(_ events: Int16, _ timeout: Int32 = 0) -> Int16 {
            var pfd = pollfd(fd: a.fileDescriptor, events: events, revents: 0)
            return poll(&pfd, 1, timeout) > 0 ? pfd.revents : 0
        }
        let fresh = revents(Int16(POLLIN | POLLOUT))
        #expect(fresh & Int16(POLLOUT) != 0, "a fresh socket is writable")
        #expect(fresh & Int16(POLLIN) == 0, "a fresh socket is not readable")
        try b.send(Array("wake".utf8), to: v4(7301))
        #expect(revents(Int16(POLLIN), 5000) & Int16(POLLIN) != 0, "readable once a datagram arrived")
        #expect(try a.receive(maxBytes: 64, flags: Int32(MSG_DONTWAIT)).bytes == Array("wake".utf8))
        // Reading the last datagram clears readability at once (no empty read needed first).
        #expect(revents(Int16(POLLIN)) & Int16(POLLIN) == 0, "still readable after the last datagram was read")
        #expect(recvErrno(a) == EAGAIN)
        #expect(revents(Int16(POLLIN)) & Int16(POLLIN) == 0, "still readable after everything was read and recv said EAGAIN")
        #expect(revents(Int16(POLLOUT)) & Int16(POLLOUT) != 0)
        // Two datagrams: readable while one is left.
        try b.send([1], to: v4(7301))
        try b.send([2], to: v4(7301))
        #expect(try receive(a).bytes == [1])
        #expect(revents(Int16(POLLIN), 5000) & Int16(POLLIN) != 0, "one datagram left")
        #expect(try receive(a).bytes == [2])
        #expect(revents(Int16(POLLIN)) & Int16(POLLIN) == 0, "readable with nothing left")
        #expect(recvErrno(a) == EAGAIN)
        #expect(revents(Int16(POLLIN)) & Int16(POLLIN) == 0)
    }

    static func zeroLength() throws {
        for (here, there) in [(v4(7311), v4(7312)), (v6(7313), v6(7314))] {
            let a = try bound(here), b = try bound(there)
            #expect(sendTo(b, [], here) == 0)
            #expect(waitReadable(a), "a zero-length datagram makes the socket readable (fresh socket: no stale POLLIN)")
            #expect(try a.bytesReadable() == 0)
            let got = try a.receive(maxBytes: 64, flags: Int32(MSG_DONTWAIT))
            #expect(got.bytes.isEmpty)
            #expect(got.from == there, "a zero-length datagram still has a sender")
            #expect(recvErrno(a) == EAGAIN, "and it was consumed")
            // Followed by a non-empty one.
            try b.send([9], to: here)
            #expect(try receive(a).bytes == [9])
        }
    }

    static func ipv6() throws {
        let a = try bound(v6(7321)), b = try bound(v6(7322))
        #expect(try a.localAddress == v6(7321))
        let payload = pattern(3000, seed: 5)
        try b.send(payload, to: v6(7321))
        let got = try receive(a)
        #expect(got.bytes == payload)
        #expect(got.from == v6(7322))
        try a.send(Array("back".utf8), to: v6(7322))
        #expect(try receive(b).bytes == Array("back".utf8))
        // Connected IPv6 socket.
        try b.connect(to: v6(7321))
        #expect(try b.peerAddress == v6(7321))
        try b.send(Array("connected".utf8))
        let c = try receive(a)
        #expect(c.bytes == Array("connected".utf8))
        #expect(c.from == v6(7322))
        // A socket bound to the IPv6 wildcard reports ::, and receives on ::1.
        let w = try bound(.ipv6Any(port: 7323))
        #expect(try w.localAddress == .ipv6Any(port: 7323))
        try a.send([42], to: v6(7323))
        #expect(try receive(w).bytes == [42])
        // An IPv4 destination (a sockaddr_in) on a dual-stack IPv6 socket goes out over IPv4, as on
        // Linux, and arrives from the v4-mapped address's IPv4 form.
        let four = try bound(v4(7324))
        #expect(errnoOf { sendTo(w, [1], v4(7324)) } == 0)
        #expect(try receive(four).bytes == [1])
    }

    static func bufferSizes() throws {
        // The server runs with --datagram-ring-items 64 --datagram-slot-size 1024.
        for s in [try Socket(.inet, .datagram), try Socket(.inet6, .datagram)] {
            let rcv = try s.option(level: SOL_SOCKET, name: SO_RCVBUF)
            let snd = try s.option(level: SOL_SOCKET, name: SO_SNDBUF)
            #expect(rcv == 64 * 1024)
            #expect(snd == 64 * 1024)
            // Setting a size is accepted; the size reported stays the one the channel really has.
            try s.setOption(level: SOL_SOCKET, name: SO_RCVBUF, 1 << 20)
            #expect(try s.option(level: SOL_SOCKET, name: SO_RCVBUF) == rcv)
            var value: Int32 = 0
            var len = socklen_t(4)
            #expect(sko_getsockopt(s.fileDescriptor, SOL_SOCKET, SO_SNDBUF, &value, &len) == 0)
            #expect(len == 4)
            #expect(value > 0)
        }
    }

    static func socketOptions() throws {
        for (family, domain) in [(SocketAddress.Family.inet, AF_INET), (.inet6, AF_INET6)] {
            let s = try Socket(family, .datagram)
            #expect(try s.option(level: SOL_SOCKET, name: SO_TYPE) == Int32(SOCK_DGRAM.rawValue))
            #expect(try s.option(level: SOL_SOCKET, name: SO_PROTOCOL) == Int32(IPPROTO_UDP))
            #expect(try s.option(level: SOL_SOCKET, name: SO_DOMAIN) == domain)
            #expect(try s.option(level: SOL_SOCKET, name: SO_ERROR) == 0)
            var value: Int32 = 0
            var len = socklen_t(4)
            #expect(errnoOf { sko_getsockopt(s.fileDescriptor, SOL_SOCKET, 12345, &value, &len) } == ENOPROTOOPT)
        }
    }
}
