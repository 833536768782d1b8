import SocketClient
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Every test that uses this process's shared socket server, one at a time: they share the server's
/// descriptor and segment counts (the client-death test compares them) and each blocks its thread.
@Suite(.serialized)
struct SharedServerTCPTests {}

extension SharedServerTCPTests {

/// One test per TCP behaviour, through the BSD layer (`sko_*`) so that return values and errno are
/// checked exactly as a C program would see them.
@Suite
struct Behaviour {

    // MARK: half-close

    @Test func clientHalfCloseServerStillSends() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(send(client, "request") == 7)
        #expect(sko_shutdown(client, Int32(SHUT_WR)) == 0)
        #expect(String(decoding: recvAll(server, count: 7), as: UTF8.self) == "request")
        let eof = recv(server)
        #expect(eof.rc == 0, "server must read EOF after the client's SHUT_WR, got rc \(eof.rc) errno \(eof.errno)")
        // The other direction is still open.
        #expect(send(server, "response") == 8)
        #expect(String(decoding: recvAll(client, count: 8), as: UTF8.self) == "response")
        #expect(sko_shutdown(server, Int32(SHUT_WR)) == 0)
        #expect(recv(client).rc == 0)
    }

    @Test func serverHalfCloseClientStillSends() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(send(server, "banner") == 6)
        #expect(sko_shutdown(server, Int32(SHUT_WR)) == 0)
        #expect(String(decoding: recvAll(client, count: 6), as: UTF8.self) == "banner")
        let eof = recv(client)
        #expect(eof.rc == 0, "client must read EOF after the server's SHUT_WR, got rc \(eof.rc) errno \(eof.errno)")
        #expect(send(client, "upload") == 6)
        #expect(String(decoding: recvAll(server, count: 6), as: UTF8.self) == "upload")
        #expect(sko_shutdown(client, Int32(SHUT_WR)) == 0)
        #expect(recv(server).rc == 0)
    }

    @Test func sendAfterOwnShutdownIsEPIPE() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(sko_shutdown(client, Int32(SHUT_WR)) == 0)
        let rc = send(client, "late")
        let err = errno
        #expect(rc == -1)
        #expect(err == EPIPE, "got \(errnoName(err))")
        #expect(recv(server).rc == 0)
        // Receiving still works after our own SHUT_WR.
        #expect(send(server, "still here") == 10)
        #expect(String(decoding: recvAll(client, count: 10), as: UTF8.self) == "still here")
    }

    // MARK: close

    /// Closing after reading everything is a clean close: the peer reads EOF, not a reset.
    @Test func closeAfterReadingEverythingIsClean() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        let payload = [UInt8](repeating: 0x33, count: 1000)
        #expect(sendAll(server, payload) == 1000)
        #expect(recvAll(client, count: 1000) == payload)
        #expect(s.close(client) == 0)
        let r = recv(server)
        #expect(r.rc == 0, "peer of a clean close: rc \(r.rc) \(errnoName(r.errno)) (want EOF)")
        // The FIN is not followed by a reset: no POLLHUP/POLLERR within 300 ms, the connection sits
        // in CLOSE_WAIT, and reading again still says end of stream.
        var pfd = pollfd(fd: server, events: Int16(POLLIN), revents: 0)
        _ = sko_poll(&pfd, 1, 300)
        #expect(pfd.revents & Int16(POLLHUP | POLLERR) == 0, "after the FIN: revents \(pfd.revents)")
        var info = tcp_info()
        var len = socklen_t(MemoryLayout<tcp_info>.size)
        #expect(sko_getsockopt(server, Int32(IPPROTO_TCP), TCP_INFO, &info, &len) == 0)
        #expect(Int(info.tcpi_state) == Int(TCP_CLOSE_WAIT), "tcpi_state \(info.tcpi_state) after the peer's FIN")
        let again = recv(server, flags: Int32(MSG_DONTWAIT))
        #expect(again.rc == 0, "second read after a clean close: rc \(again.rc) \(errnoName(again.errno))")
    }

    // MARK: resets

    /// SO_LINGER {1, 0} then close: RST. The peer's recv reports ECONNRESET, and a later send EPIPE,
    /// without SIGPIPE (this process installs no handler: a SIGPIPE would kill it).
    @Test func lingerZeroCloseResets() throws {
        // Meaningful only while SIGPIPE would kill us: not ignored by the test runner.
        let ignored = ProcStats.readFile("/proc/self/status")?.split(separator: "\n")
            .first { $0.hasPrefix("SigIgn:") }
            .flatMap { UInt64($0.split(separator: "\t").last ?? "", radix: 16) }
        #expect(ignored.map { $0 & (1 << (UInt64(SIGPIPE) - 1)) == 0 } == true, "SIGPIPE is ignored in this process (SigIgn \(String(ignored ?? 0, radix: 16)))")
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        var l = linger(l_onoff: 1, l_linger: 0)
        #expect(sko_setsockopt(client, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size)) == 0)
        var got = linger()
        var len = socklen_t(MemoryLayout<linger>.size)
        #expect(sko_getsockopt(client, SOL_SOCKET, SO_LINGER, &got, &len) == 0)
        #expect(got.l_onoff == 1 && got.l_linger == 0)
        #expect(s.close(client) == 0)
        let r = recv(server)
        #expect(r.rc == -1 && r.errno == ECONNRESET, "recv after RST: rc \(r.rc) \(errnoName(r.errno))")
        // The reset was reported once (by recv); a send now fails with EPIPE, as on Linux, and
        // raises no SIGPIPE (none is ignored or handled here: one would end the test process).
        let rc = send(server, "into the void")
        let err = errno
        #expect(rc == -1 && err == EPIPE, "send after RST: rc \(rc) \(errnoName(err))")
    }

    /// Closing with received data unread resets the connection (as Linux does).
    @Test func closeWithUnreadDataResets() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(send(server, "never read") == 10)
        var n: Int32 = 0
        let arrived = waitUntil(timeout: 10) { sko_ioctl(client, UInt(FIONREAD), &n) == 0 && n == 10 }
        try #require(arrived, "data never reached the client (FIONREAD \(n))")
        #expect(s.close(client) == 0)
        let r = recv(server)
        #expect(r.rc == -1 && r.errno == ECONNRESET, "recv after close with unread data: rc \(r.rc) \(errnoName(r.errno))")
    }

    // MARK: connect

    @Test func blockingConnectRefused() throws {
        let s = Sockets()
        let fd = try s.tcp()
        errno = 0
        let rc = connect(fd, loopback(AF_INET, TestPorts.next()))
        let err = errno
        #expect(rc == -1, "connect must return -1, not the errno")
        #expect(err == ECONNREFUSED, "got \(errnoName(err))")
    }

    /// No TAP interface: an address outside the loopback networks has no route, and connect says so
    /// at once (-1, ENETUNREACH), as a host without a default route does.
    @Test func connectWithoutRouteIsUnreachable() throws {
        let s = Sockets()
        let fd = try s.tcp()
        errno = 0
        let rc = connect(fd, SocketAddress(host: "10.123.45.67", port: 80)!)
        let err = errno
        #expect(rc == -1 && err == ENETUNREACH, "connect: rc \(rc) \(errnoName(err))")
    }

    @Test func nonBlockingConnectCompletes() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let l = try s.listener(port: port)
        let fd = try s.tcp(nonBlocking: true)
        let rc = connect(fd, loopback(AF_INET, port))
        let err = errno
        #expect(rc == -1 && err == EINPROGRESS, "rc \(rc) \(errnoName(err))")
        #expect(pollEvents(fd, Int16(POLLOUT), timeoutMilliseconds: 10_000) & Int16(POLLOUT) != 0, "no POLLOUT within 10 s")
        let soError = intOption(fd, SOL_SOCKET, SO_ERROR)
        #expect(soError.rc == 0 && soError.value == 0, "SO_ERROR \(soError)")
        let server = try s.accept(l)
        #expect(send(fd, "hello") == 5)
        #expect(String(decoding: recvAll(server, count: 5), as: UTF8.self) == "hello")
        #expect(send(server, "back") == 4)
        #expect(pollEvents(fd, Int16(POLLIN), timeoutMilliseconds: 10_000) & Int16(POLLIN) != 0)
        #expect(recvText(fd) == "back")
    }

    @Test func nonBlockingConnectRefused() throws {
        let s = Sockets()
        let fd = try s.tcp(nonBlocking: true)
        let rc = connect(fd, loopback(AF_INET, TestPorts.next()))
        let err = errno
        #expect(rc == -1 && err == EINPROGRESS, "rc \(rc) \(errnoName(err))")
        #expect(pollEvents(fd, Int16(POLLOUT), timeoutMilliseconds: 10_000) & Int16(POLLOUT) != 0, "no POLLOUT within 10 s")
        let soError = intOption(fd, SOL_SOCKET, SO_ERROR)
        #expect(soError.rc == 0 && soError.value == ECONNREFUSED, "SO_ERROR \(soError)")
        // SO_ERROR is cleared by reading it.
        #expect(intOption(fd, SOL_SOCKET, SO_ERROR).value == 0)
    }

    @Test func ipv6ConnectAccept() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let l = try s.listener(port: port, family: AF_INET6)
        let c = try s.connected(port: port, family: AF_INET6)
        var peer = sockaddr_in6()
        var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let server = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_accept4(l, $0, &len, 0) }
        }
        try #require(server >= 0, "accept: \(errnoName(errno))")
        _ = s.adopt(server)
        #expect(Int32(peer.sin6_family) == AF_INET6)
        let peerAddress = withUnsafeBytes(of: &peer) { SocketAddress(sockaddr: $0.baseAddress!, length: Int(len)) }
        #expect(peerAddress?.host == "::1")
        #expect(send(c, "over v6") == 7)
        #expect(String(decoding: recvAll(server, count: 7), as: UTF8.self) == "over v6")
        #expect(send(server, "and back") == 8)
        #expect(String(decoding: recvAll(c, count: 8), as: UTF8.self) == "and back")
    }

    @Test func bindToUsedPortIsEADDRINUSE() throws {
        let s = Sockets()
        let port = TestPorts.next()
        _ = try s.listener(port: port)
        let fd = try s.tcp()
        let rc = loopback(AF_INET, port).withSockAddr { sko_bind(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
        let err = errno
        #expect(rc == -1 && err == EADDRINUSE, "rc \(rc) \(errnoName(err))")
    }

    // MARK: receive flags

    /// The peer sends 3 small pieces with pauses; one recv(MSG_WAITALL) returns all of them.
    @Test func waitAllCollectsEverything() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        let writer = TestThread {
            for piece in ["abc", "defg", "hij"] {
                usleep(100_000)
                _ = send(server, piece)
            }
        }
        defer { writer.join() }
        let r = recv(client, max: 10, flags: Int32(MSG_WAITALL))
        #expect(r.rc == 10, "recv(MSG_WAITALL) returned \(r.rc) \(errnoName(r.errno))")
        #expect(String(decoding: r.bytes, as: UTF8.self) == "abcdefghij")
    }

    @Test func peekReturnsSameBytesUntilConsumed() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(send(server, "hello world") == 11)
        var n: Int32 = 0
        try #require(waitUntil(timeout: 10) { sko_ioctl(client, UInt(FIONREAD), &n) == 0 && n == 11 })
        #expect(recvText(client, flags: Int32(MSG_PEEK)) == "hello world")
        #expect(recvText(client, max: 5, flags: Int32(MSG_PEEK)) == "hello")
        #expect(recvText(client, flags: Int32(MSG_PEEK)) == "hello world")
        #expect(recvText(client, max: 6) == "hello ")
        #expect(recvText(client, flags: Int32(MSG_PEEK)) == "world")
        #expect(recvText(client) == "world")
        let r = recv(client, flags: Int32(MSG_DONTWAIT))
        #expect(r.rc == -1 && r.errno == EAGAIN, "consumed: rc \(r.rc) \(errnoName(r.errno))")
    }

    @Test func dontWaitAndNonBlockingGiveEAGAIN() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let (l, client, server) = try s.pair(port: port)
        let r1 = recv(client, flags: Int32(MSG_DONTWAIT))
        #expect(r1.rc == -1 && r1.errno == EAGAIN, "MSG_DONTWAIT: rc \(r1.rc) \(errnoName(r1.errno))")
        #expect(sko_fcntl(client, F_GETFL, 0) & O_NONBLOCK == 0)
        #expect(sko_fcntl(client, F_SETFL, O_NONBLOCK) == 0)
        #expect(sko_fcntl(client, F_GETFL, 0) & O_NONBLOCK != 0)
        let r2 = recv(client)
        #expect(r2.rc == -1 && r2.errno == EAGAIN, "O_NONBLOCK: rc \(r2.rc) \(errnoName(r2.errno))")
        // A non-blocking listener with nothing pending.
        #expect(sko_fcntl(l, F_SETFL, O_NONBLOCK) == 0)
        let a = sko_accept4(l, nil, nil, 0)
        let aErr = errno
        #expect(a == -1 && aErr == EAGAIN, "accept: rc \(a) \(errnoName(aErr))")
        if a >= 0 { _ = s.adopt(a) }
        // Data still arrives on the non-blocking socket.
        #expect(send(server, "x") == 1)
        #expect(pollEvents(client, Int16(POLLIN), timeoutMilliseconds: 10_000) & Int16(POLLIN) != 0)
        #expect(recvText(client) == "x")
    }

    @Test func fionreadCountsUnreadBytes() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        var n: Int32 = -1
        #expect(sko_ioctl(client, UInt(FIONREAD), &n) == 0)
        #expect(n == 0)
        let payload = [UInt8](repeating: 7, count: 3000)
        #expect(sendAll(server, payload) == 3000)
        #expect(waitUntil(timeout: 10) { sko_ioctl(client, UInt(FIONREAD), &n) == 0 && n == 3000 }, "FIONREAD \(n), want 3000")
        #expect(recv(client, max: 1000).rc == 1000)
        #expect(sko_ioctl(client, UInt(FIONREAD), &n) == 0)
        #expect(n == 2000)
        #expect(recvAll(client, count: 2000).count == 2000)
        #expect(sko_ioctl(client, UInt(FIONREAD), &n) == 0)
        #expect(n == 0)
    }

    // MARK: poll

    @Test func listenerPollsReadableWhenConnectionPending() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let l = try s.listener(port: port)
        #expect(pollEvents(l, Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) == 0, "POLLIN with nothing pending")
        _ = try s.connected(port: port)
        #expect(pollEvents(l, Int16(POLLIN), timeoutMilliseconds: 10_000) & Int16(POLLIN) != 0, "no POLLIN with a connection pending")
        _ = try s.accept(l)
    }

    @Test func connectedSocketReadinessTransitions() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        let both = Int16(POLLIN | POLLOUT)
        // Empty: writable, not readable (either side).
        for (name, fd) in [("client", client), ("server", server)] {
            let ev = pollEvents(fd, both, timeoutMilliseconds: 0)
            #expect(ev & Int16(POLLOUT) != 0, "\(name): no POLLOUT on an idle connection")
            #expect(ev & Int16(POLLIN) == 0, "\(name): POLLIN with nothing to read")
        }
        // Data arrives: readable.
        #expect(send(server, "ping") == 4)
        #expect(pollEvents(client, Int16(POLLIN), timeoutMilliseconds: 10_000) & Int16(POLLIN) != 0, "no POLLIN after data")
        #expect(recvText(client) == "ping")
        // Drained: the read that took the last byte cleared readability, and a read finds nothing.
        #expect(pollEvents(client, Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) == 0, "POLLIN right after the last byte was read")
        let empty = recv(client, flags: Int32(MSG_DONTWAIT))
        #expect(empty.rc == -1 && empty.errno == EAGAIN, "drained: rc \(empty.rc) \(errnoName(empty.errno))")
        #expect(pollEvents(client, Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) == 0, "POLLIN after draining")
        // Peer's FIN: readable, and recv returns 0.
        #expect(sko_shutdown(server, Int32(SHUT_WR)) == 0)
        #expect(pollEvents(client, Int16(POLLIN), timeoutMilliseconds: 10_000) & Int16(POLLIN) != 0, "no POLLIN after FIN")
        #expect(recv(client, flags: Int32(MSG_DONTWAIT)).rc == 0)
        #expect(pollEvents(client, Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) != 0, "EOF must stay readable")
    }

    /// Flow control: a non-blocking sender whose peer does not read gets EAGAIN after a bounded
    /// amount, then polls unwritable until the peer reads, then writable again.
    @Test func fullSendBufferBlocksUntilPeerReads() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(sko_fcntl(client, F_SETFL, O_NONBLOCK) == 0)
        #expect(sko_fcntl(server, F_SETFL, O_NONBLOCK) == 0)
        let chunk = [UInt8](repeating: 0x5a, count: 64 << 10)
        var accepted = 0
        var lastErrno: Int32 = 0
        // The send ring, lwIP's send buffer, the window and the peer's receive ring fill up; lwIP may
        // still be moving bytes along for a moment, so "full" means EAGAIN that lasts.
        let filled = waitUntil(timeout: 10, interval: 0.05) {
            while accepted < 64 << 20 {
                let n = chunk.withUnsafeBytes { sko_send(client, $0.baseAddress, $0.count, 0) }
                if n < 0 { lastErrno = errno; break }
                accepted += n
            }
            return lastErrno == EAGAIN && pollEvents(client, Int16(POLLOUT), timeoutMilliseconds: 200) & Int16(POLLOUT) == 0
        }
        print("flow control: \(accepted) bytes accepted before EAGAIN")
        #expect(filled, "sender never stayed full (accepted \(accepted) bytes, last \(errnoName(lastErrno)))")
        #expect(lastErrno == EAGAIN)
        #expect(accepted > 0 && accepted < 4 << 20, "accepted \(accepted) bytes before EAGAIN: must be bounded (< 4 MiB)")
        #expect(pollEvents(client, Int16(POLLOUT), timeoutMilliseconds: 0) & Int16(POLLOUT) == 0, "POLLOUT while full")
        // The peer reads: room appears and POLLOUT returns.
        var drained = 0
        let writable = waitUntil(timeout: 10, interval: 0.01) {
            while true {
                let r = recv(server, max: 64 << 10)
                if r.rc <= 0 { break }
                drained += r.rc
            }
            return pollEvents(client, Int16(POLLOUT), timeoutMilliseconds: 10) & Int16(POLLOUT) != 0
        }
        #expect(writable, "no POLLOUT after the peer read \(drained) bytes")
        #expect(drained > 0)
        let n = chunk.withUnsafeBytes { sko_send(client, $0.baseAddress, $0.count, 0) }
        #expect(n > 0, "send after POLLOUT: \(n) \(errnoName(errno))")
        // Everything sent arrives, in full.
        let total = accepted + max(n, 0)
        let complete = waitUntil(timeout: 10, interval: 0.01) {
            while true {
                let r = recv(server, max: 64 << 10)
                if r.rc <= 0 { break }
                #expect(r.bytes.allSatisfy { $0 == 0x5a })
                drained += r.rc
            }
            return drained >= total
        }
        #expect(complete && drained == total, "received \(drained) of \(total)")
    }

    // MARK: listener close

    /// Connections that completed but were never accepted: closing the listener ends them, and their
    /// peers see a reset or EOF rather than hanging.
    @Test func listenerCloseEndsPendingConnections() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let l = try s.listener(port: port)
        let clients = try (0..<3).map { _ in try s.connected(port: port) }
        #expect(pollEvents(l, Int16(POLLIN), timeoutMilliseconds: 10_000) & Int16(POLLIN) != 0)
        #expect(s.close(l) == 0)
        for c in clients {
            let r = recv(c) // bounded by SO_RCVTIMEO: EAGAIN would mean a hang
            #expect(r.rc == 0 || (r.rc == -1 && r.errno == ECONNRESET), "peer of a pending connection: rc \(r.rc) \(errnoName(r.errno))")
        }
    }

    // MARK: addresses and options

    @Test func socketAndPeerNames() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let l = try s.listener(port: port)
        let c = try s.tcp()
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        func name(_ f: (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?) -> Int32, _ fd: Int32) -> (Int32, Int32, SocketAddress?) {
            storage = sockaddr_storage()
            len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let rc = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { f(fd, $0, &len) } }
            let err = errno
            let a = rc == 0 ? withUnsafeBytes(of: &storage) { SocketAddress(sockaddr: $0.baseAddress!, length: Int(len)) } : nil
            return (rc, rc == 0 ? 0 : err, a)
        }
        let unconnected = name(sko_getpeername, c)
        #expect(unconnected.0 == -1 && unconnected.1 == ENOTCONN, "getpeername before connect: \(unconnected)")
        let listening = name(sko_getsockname, l)
        #expect(listening.2?.host == "127.0.0.1" && listening.2?.port == port)
        #expect(connect(c, loopback(AF_INET, port)) == 0)
        var acceptedPeer = sockaddr_in()
        var acceptedLen = socklen_t(MemoryLayout<sockaddr_in>.size)
        let server = withUnsafeMutablePointer(to: &acceptedPeer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_accept4(l, $0, &acceptedLen, 0) } }
        try #require(server >= 0)
        _ = s.adopt(server)
        let clientLocal = try #require(name(sko_getsockname, c).2)
        let clientPeer = try #require(name(sko_getpeername, c).2)
        let serverLocal = try #require(name(sko_getsockname, server).2)
        let serverPeer = try #require(name(sko_getpeername, server).2)
        let fromAccept = withUnsafeBytes(of: &acceptedPeer) { SocketAddress(sockaddr: $0.baseAddress!, length: Int(acceptedLen)) }
        #expect(clientLocal.family == .inet && clientLocal.host == "127.0.0.1" && clientLocal.port != 0)
        #expect(clientPeer == loopback(AF_INET, port))
        #expect(serverLocal == loopback(AF_INET, port))
        #expect(serverPeer == clientLocal)
        #expect(fromAccept == clientLocal)
    }

    @Test func acceptConnOption() throws {
        let s = Sockets()
        let (l, c, server) = try s.pair(port: TestPorts.next())
        #expect(intOption(l, SOL_SOCKET, SO_ACCEPTCONN).value == 1)
        #expect(intOption(c, SOL_SOCKET, SO_ACCEPTCONN).value == 0)
        #expect(intOption(server, SOL_SOCKET, SO_ACCEPTCONN).value == 0)
        #expect(intOption(try s.tcp(), SOL_SOCKET, SO_ACCEPTCONN).value == 0)
    }

    @Test func noDelayRoundTrip() throws {
        let s = Sockets()
        let (_, c, _) = try s.pair(port: TestPorts.next())
        let tcp = Int32(IPPROTO_TCP)
        #expect(setIntOption(c, tcp, TCP_NODELAY, 1) == 0)
        #expect(intOption(c, tcp, TCP_NODELAY).value != 0)
        #expect(setIntOption(c, tcp, TCP_NODELAY, 0) == 0)
        #expect(intOption(c, tcp, TCP_NODELAY).value == 0)
    }

    @Test func keepAliveOptionsRoundTrip() throws {
        let s = Sockets()
        let (_, c, _) = try s.pair(port: TestPorts.next())
        let tcp = Int32(IPPROTO_TCP)
        #expect(setIntOption(c, SOL_SOCKET, SO_KEEPALIVE, 1) == 0)
        #expect(intOption(c, SOL_SOCKET, SO_KEEPALIVE).value != 0)
        #expect(setIntOption(c, tcp, TCP_KEEPIDLE, 37) == 0)
        #expect(setIntOption(c, tcp, TCP_KEEPINTVL, 7) == 0)
        #expect(setIntOption(c, tcp, TCP_KEEPCNT, 4) == 0)
        #expect(intOption(c, tcp, TCP_KEEPIDLE).value == 37)
        #expect(intOption(c, tcp, TCP_KEEPINTVL).value == 7)
        #expect(intOption(c, tcp, TCP_KEEPCNT).value == 4)
        #expect(setIntOption(c, SOL_SOCKET, SO_KEEPALIVE, 0) == 0)
        #expect(intOption(c, SOL_SOCKET, SO_KEEPALIVE).value == 0)
    }

    /// TCP_INFO's fields as the README lists them (state, MSS, RTO/RTT, cwnd, ssthresh, unacked),
    /// each against what it must be, and TCP_MAXSEG agreeing with tcpi_snd_mss.
    @Test func tcpInfoReportsStateAndCongestionFields() throws {
        let s = Sockets()
        let (_, c, server) = try s.pair(port: TestPorts.next())
        func info(_ fd: Int32) -> tcp_info {
            var info = tcp_info()
            var len = socklen_t(MemoryLayout<tcp_info>.size)
            let rc = sko_getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &len)
            #expect(rc == 0 && len > 0, "TCP_INFO: \(errnoName(errno))")
            return info
        }
        // Some data each way, all of it read, so it has been acknowledged.
        let payload = [UInt8](repeating: 0x44, count: 100_000)
        #expect(sendAll(c, payload) == payload.count)
        #expect(recvAll(server, count: payload.count) == payload)
        #expect(sendAll(server, payload) == payload.count)
        #expect(recvAll(c, count: payload.count) == payload)
        for fd in [c, server] {
            var i = info(fd)
            #expect(waitUntil(timeout: 10) { i = info(fd); return i.tcpi_unacked == 0 }, "tcpi_unacked \(i.tcpi_unacked) with everything read")
            #expect(Int(i.tcpi_state) == Int(TCP_ESTABLISHED), "tcpi_state \(i.tcpi_state)")
            // Between the stack's own addresses segments are 4096 bytes (README, limits).
            #expect(i.tcpi_snd_mss == 4096, "tcpi_snd_mss \(i.tcpi_snd_mss)")
            #expect(intOption(fd, Int32(IPPROTO_TCP), TCP_MAXSEG).value == Int32(i.tcpi_snd_mss), "TCP_MAXSEG \(intOption(fd, Int32(IPPROTO_TCP), TCP_MAXSEG))")
            #expect(i.tcpi_rto > 0, "tcpi_rto \(i.tcpi_rto)")
            #expect(i.tcpi_snd_cwnd > 0 && i.tcpi_snd_ssthresh > 0, "cwnd \(i.tcpi_snd_cwnd) ssthresh \(i.tcpi_snd_ssthresh)")
        }
        // The peer's FIN: CLOSE_WAIT on this side.
        #expect(sko_shutdown(c, Int32(SHUT_WR)) == 0)
        #expect(recv(server).rc == 0)
        #expect(Int(info(server).tcpi_state) == Int(TCP_CLOSE_WAIT), "after the peer's FIN: tcpi_state \(info(server).tcpi_state)")
    }

    @Test func accept4NonBlocking() throws {
        let s = Sockets()
        let port = TestPorts.next()
        let l = try s.listener(port: port)
        _ = try s.connected(port: port)
        _ = try s.connected(port: port)
        let nonBlocking = try s.accept(l, flags: Int32(SOCK_NONBLOCK.rawValue))
        let blocking = try s.accept(l)
        #expect(sko_fcntl(nonBlocking, F_GETFL, 0) & O_NONBLOCK != 0)
        #expect(sko_fcntl(blocking, F_GETFL, 0) & O_NONBLOCK == 0)
        let r = recv(nonBlocking)
        #expect(r.rc == -1 && r.errno == EAGAIN, "recv on the SOCK_NONBLOCK socket: rc \(r.rc) \(errnoName(r.errno))")
        let bad = sko_accept4(l, nil, nil, 0x40000000)
        #expect(bad == -1 && errno == EINVAL)
    }
}

}
