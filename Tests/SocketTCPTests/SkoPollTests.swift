import SocketClient
import SocketShared
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// sko_poll: kernel-accurate readiness for the library's sockets, mixed with ordinary descriptors.
extension SharedServerTCPTests.Behaviour {
    static func skoPoll(_ fd: Int32, _ events: Int16, timeoutMilliseconds: Int32 = 0) -> Int16 {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let n = sko_poll(&pfd, 1, timeoutMilliseconds)
        return n > 0 ? pfd.revents : 0
    }

    @Test func skoPollReportsDataEOFAndReset() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        let all = Int16(POLLIN | POLLOUT) | POLLRDHUP_
        // Connected, nothing to read: writable only.
        #expect(Self.skoPoll(client, all) == Int16(POLLOUT))
        // Times out (returns 0) when nothing asked for is ready.
        var pfd = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
        #expect(sko_poll(&pfd, 1, 50) == 0)
        // Data: readable; after reading it all, not readable, with no empty read needed.
        #expect(send(server, "ping") == 4)
        #expect(Self.skoPoll(client, Int16(POLLIN), timeoutMilliseconds: 10_000) == Int16(POLLIN))
        #expect(recvText(client) == "ping")
        #expect(Self.skoPoll(client, Int16(POLLIN)) == 0)
        // The peer's FIN: readable and POLLRDHUP (not POLLHUP: we can still send).
        #expect(sko_shutdown(server, Int32(SHUT_WR)) == 0)
        #expect(Self.skoPoll(client, Int16(POLLIN), timeoutMilliseconds: 10_000) == Int16(POLLIN))
        let eof = Self.skoPoll(client, all)
        #expect(eof & Int16(POLLIN) != 0 && eof & POLLRDHUP_ != 0 && eof & Int16(POLLHUP) == 0, "after FIN: \(eof)")
        // A reset (the peer closes with SO_LINGER 0): POLLIN, POLLHUP and POLLERR until the error is read.
        var l = linger(l_onoff: 1, l_linger: 0)
        #expect(sko_setsockopt(server, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size)) == 0)
        #expect(s.close(server) == 0)
        // (Already readable at EOF, so wait for the reset to show.)
        var reset: Int16 = 0
        _ = waitUntil(timeout: 10) {
            reset = Self.skoPoll(client, Int16(POLLIN))
            return reset & Int16(POLLHUP) != 0
        }
        #expect(reset & Int16(POLLIN) != 0 && reset & Int16(POLLHUP) != 0 && reset & Int16(POLLERR) != 0, "after RST: \(reset)")
        // The reset came after the peer's FIN (this side in CLOSE_WAIT): Linux reports EPIPE then.
        let r = recv(client)
        #expect(r.rc == -1 && r.errno == EPIPE)
        #expect(Self.skoPoll(client, Int16(POLLIN)) & Int16(POLLERR) == 0, "POLLERR after the error was reported")
    }

    @Test func skoPollWaitsForRoomWithoutSpuriousInput() throws {
        let s = Sockets()
        let (_, client, server) = try s.pair(port: TestPorts.next())
        #expect(sko_fcntl(client, F_SETFL, O_NONBLOCK) == 0)
        let chunk = [UInt8](repeating: 0x33, count: 64 << 10)
        var sent = 0
        // Fill everything between the sender and the unread receiver.
        let full = waitUntil(timeout: 10, interval: 0.05) {
            while true {
                let n = chunk.withUnsafeBytes { sko_send(client, $0.baseAddress, $0.count, 0) }
                if n < 0 { return errno == EAGAIN && Self.skoPoll(client, Int16(POLLOUT), timeoutMilliseconds: 100) == 0 }
                sent += n
            }
        }
        try #require(full, "the sender never stayed full")
        // Plain poll reports a spurious POLLIN here (the writability block); sko_poll does not.
        #expect(Self.skoPoll(client, Int16(POLLIN | POLLOUT)) == 0, "sko_poll: nothing to read, no room")
        // A reader on another thread drains; sko_poll, waiting for POLLOUT, wakes.
        let expected = sent
        let reader = TestThread {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var total = 0
            let deadline = Deadline(seconds: 10)
            while total < expected && !deadline.expired {
                let n = buffer.withUnsafeMutableBytes { sko_recv(server, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                total += n
            }
        }
        #expect(Self.skoPoll(client, Int16(POLLOUT), timeoutMilliseconds: 10_000) == Int16(POLLOUT))
        reader.join()
        // Mixed with an ordinary descriptor: a pipe's readiness comes from the kernel.
        var p: [Int32] = [0, 0]
        try #require(pipe(&p) == 0)
        defer { Glibc.close(p[0]); Glibc.close(p[1]) }
        _ = write(p[1], "x", 1)
        var pfds = [pollfd(fd: p[0], events: Int16(POLLIN), revents: 0), pollfd(fd: client, events: Int16(POLLIN), revents: 0)]
        #expect(sko_poll(&pfds, 2, 1000) == 1)
        #expect(pfds[0].revents == Int16(POLLIN) && pfds[1].revents == 0)
    }
}
