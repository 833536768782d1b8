import Foundation
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Failures around the server: clients that die, a server that dies, hostile control messages,
/// a second server, and clients of other users. Each test has its own server(s) and ports.
@Suite("Failures")
struct FailureTests {
    /// The server's resource counts a client leak would show in.
    struct Counts: Equatable, CustomStringConvertible {
        var descriptors: Int
        var segmentDescriptors: Int
        var segmentMappings: Int
        init(_ server: ServerProcess) {
            descriptors = server.openDescriptorCount
            segmentDescriptors = server.clientSegmentDescriptorCount
            segmentMappings = server.clientSegmentMappingCount
        }
        var description: String { "fds=\(descriptors) segment-fds=\(segmentDescriptors) segment-maps=\(segmentMappings)" }
    }

    /// The counts once they have stopped changing (a readiness probe's session may still be closing).
    static func settledCounts(_ server: ServerProcess) -> Counts {
        var last = Counts(server)
        for _ in 0..<50 {
            usleep(50_000)
            let now = Counts(server)
            if now == last { return now }
            last = now
        }
        return last
    }

    /// Runs `client-peer round-trip PORT` against `server` and returns its result line.
    static func roundTrip(_ socketPath: String, port: UInt16, extra: [String] = []) throws -> (status: ChildProcess.ExitStatus?, line: String, diagnostics: String) {
        let peer = try ChildProcess(TestBinaries.path("client-peer"), ["round-trip", String(port), "--socket-path", socketPath] + extra)
        let (status, output) = peer.finish(timeout: 20)
        return (status, output.last ?? "", peer.diagnostics)
    }

    // MARK: a client killed with SIGKILL

    @Test("SIGKILL of a client holding 100 sockets: the server releases everything and serves others")
    func killedClientIsCleanedUp() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        // Another client, up for the whole test.
        let echo = try EchoServer(server, port: 7401)
        defer { echo.stop() }
        let before = Self.settledCounts(server)
        try #require(before.descriptors > 0 && before.segmentMappings >= 1, "cannot read /proc/\(server.pid): \(before)")

        let peer = try ChildProcess(TestBinaries.path("client-peer"), ["hold-sockets", "100", "--socket-path", server.socketPath])
        let ready = peer.waitForLine(timeout: 20) { $0.hasPrefix("ready") || $0.hasPrefix("error") }
        try #require(ready == "ready sockets=100", "client-peer: \(peer.diagnostics)")
        let during = Counts(server)
        // Each socket holds two eventfds in the server; the session its control socket and a segment.
        #expect(during.descriptors >= before.descriptors + 200, "before: \(before), with 100 sockets: \(during)")
        #expect(during.segmentMappings > before.segmentMappings, "before: \(before), with 100 sockets: \(during)")

        peer.kill(SIGKILL)
        #expect(peer.waitForExit(timeout: 5) == .signaled(SIGKILL))
        var after = Counts(server)
        let released = waitUntil(timeout: 5, interval: 0.01) {
            after = Counts(server)
            return after == before
        }
        #expect(released, "5 s after SIGKILL of the client: \(after); before it started: \(before)\n\(server.log)")
        #expect(server.process.isRunning)

        // The client that was there all along still works.
        let client = try ChildProcess(TestBinaries.path("udp-echo-client"), ["127.0.0.1", "7401", "--count", "200", "--timeout", "10000", "--socket-path", server.socketPath])
        let (status, output) = client.finish(timeout: 30)
        #expect(status == .exited(0), "udp-echo-client after the kill: \(client.diagnostics)")
        #expect(output.last.map { ChildProcess.fields($0)["received"] } == "200")
    }

    // MARK: the server killed under a blocked client

    @Test("SIGKILL of the server: a blocked recvfrom returns ENETDOWN, later calls fail, no SIGPIPE")
    func serverKilledUnderBlockedReceive() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let peer = try ChildProcess(TestBinaries.path("client-peer"), ["blocked-recv", "7411", "--socket-path", server.socketPath])
        let ready = peer.waitForLine(timeout: 20) { $0 == "ready" || $0.hasPrefix("error") }
        try #require(ready == "ready", "client-peer: \(peer.diagnostics)")
        usleep(100_000) // let it get into recvfrom (if not, recvfrom must find the server dead anyway)
        #expect(peer.isRunning, "client-peer: \(peer.diagnostics)")

        server.crash()
        // ENETDOWN is what ClientSocket.waitFor throws when the control socket hangs up.
        let received = peer.waitForLine(timeout: 5) { $0.hasPrefix("recv=") }
        try #require(received != nil, "recvfrom did not return within 5 s of the server's death: \(peer.diagnostics)")
        let r = ChildProcess.fields(received!)
        #expect(r["recv"] == "-1")
        #expect(r["errno"] == String(ENETDOWN), "recvfrom: \(received!)")

        // The library reconnects on the next call: the path has a stale socket file and nobody
        // listening, so that is ECONNREFUSED -- or, when the connect got into the dying server's
        // listen backlog just before the kernel closed it, ECONNRESET (or EPIPE on HELLO's send).
        // Seen in practice: both ECONNREFUSED and ECONNRESET, from run to run.
        let again = peer.waitForLine(timeout: 5) { $0.hasPrefix("socket=") }
        try #require(again != nil, "sko_socket did not return within 5 s: \(peer.diagnostics)")
        let s = ChildProcess.fields(again!)
        #expect(s["socket"] == "-1")
        #expect([ECONNREFUSED, ECONNRESET, EPIPE].map { String($0) }.contains(s["errno"] ?? ""),
                "sko_socket after the server died: \(again!)")
        // And the peer was not killed by a signal (SIGPIPE) on the way.
        let (status, _) = peer.finish(timeout: 5)
        #expect(status == .exited(0), "client-peer: \(peer.diagnostics)")
    }

    @Test("SIGKILL of the server wakes an application blocked in its own poll(2); recv then says ENETDOWN")
    func serverKilledUnderApplicationPoll() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let peer = try ChildProcess(TestBinaries.path("client-peer"), ["polled-recv", "7412", "--socket-path", server.socketPath])
        let ready = peer.waitForLine(timeout: 20) { $0 == "ready" || $0.hasPrefix("error") }
        try #require(ready == "ready", "client-peer: \(peer.diagnostics)")
        usleep(100_000)
        #expect(peer.isRunning, "client-peer: \(peer.diagnostics)")
        server.crash()
        // The library's watchdog sees the control socket hang up and makes the descriptor readable.
        let woke = peer.waitForLine(timeout: 5) { $0.hasPrefix("poll=") }
        try #require(woke != nil, "poll(2) on the socket did not return within 5 s of the server's death: \(peer.diagnostics)")
        #expect(Int16(ChildProcess.fields(woke!)["poll"] ?? "0")! & Int16(POLLIN) != 0, "poll: \(woke!)")
        let received = peer.waitForLine(timeout: 5) { $0.hasPrefix("recv=") }
        try #require(received != nil, "recv did not return: \(peer.diagnostics)")
        #expect(ChildProcess.fields(received!)["recv"] == "-1")
        #expect(ChildProcess.fields(received!)["errno"] == String(ENETDOWN), "recv: \(received!)")
        let (status, _) = peer.finish(timeout: 5)
        #expect(status == .exited(0), "client-peer: \(peer.diagnostics)")
    }

    // MARK: hostile control messages

    enum Outcome: Equatable, CustomStringConvertible {
        case reply(requestID: UInt32, Reply)
        case undecodable([UInt8])
        case closed
        case timedOut

        var description: String {
            switch self {
            case .reply(let id, let r): return "reply \(r) to request \(id)"
            case .undecodable(let b): return "undecodable reply of \(b.count) bytes"
            case .closed: return "session closed"
            case .timedOut: return "no reply within 5 s"
            }
        }

        /// What a server may do with a malformed message: say so, or hang up.
        var isErrorOrClose: Bool {
            if case .reply(_, .error) = self { return true }
            return self == .closed
        }
    }

    /// A raw SEQPACKET connection to the server's control socket.
    final class RawConnection {
        let fd: Int32
        init(_ path: String) throws {
            fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Errno.current }
            guard connectUnix(fd, path) == 0 else {
                let e = Errno.current
                close(fd)
                throw e
            }
        }
        deinit { close(fd) }

        func send(_ bytes: [UInt8], descriptors: [Int32] = []) throws {
            try DescriptorPassing.send(fd, bytes, descriptors: descriptors)
        }

        /// The next thing the server does, within 5 s.
        func next(timeout: Int32 = 5000) -> Outcome {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, timeout) == 1 else { return .timedOut }
            do {
                guard let packet = try DescriptorPassing.receive(fd, maxBytes: 4096, nonBlocking: true) else { return .timedOut }
                packet.closeDescriptors()
                guard let m = try? ControlMessage.decode(packet.bytes), case .reply(let r) = m.payload else { return .undecodable(packet.bytes) }
                return .reply(requestID: m.requestID, r)
            } catch {
                return .closed
            }
        }

        /// Reads until the server closes the session (true) or `timeout` ms pass (false).
        func waitForClose(timeout: Int32 = 5000) -> Bool {
            let deadline = monotonicNanoseconds() + UInt64(timeout) * 1_000_000
            while monotonicNanoseconds() < deadline {
                let remaining = Int32((deadline - monotonicNanoseconds()) / 1_000_000) + 1
                switch next(timeout: remaining) {
                case .closed: return true
                case .timedOut: return false
                default: continue
                }
            }
            return false
        }
    }

    static func hello() -> [UInt8] {
        ControlMessage(requestID: 1, .hello(version: ControlMessage.version, transport: .sharedMemory)).encoded()
    }

    @Test("garbage, truncated, oversized, fd-carrying and out-of-order control messages")
    func malformedControlMessages() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let before = Self.settledCounts(server)
        var rng = SystemRandomNumberGenerator()

        // Random bytes.
        do {
            let c = try RawConnection(server.socketPath)
            try c.send((0..<64).map { _ in UInt8.random(in: 0...255, using: &rng) })
            let o = c.next()
            #expect(o.isErrorOrClose, "random bytes: \(o)")
            #expect(o == .reply(requestID: 0, .error(EBADMSG)) || o == .closed, "random bytes: \(o)")
        }
        // A valid header whose body is cut short (the header still declares the full length).
        do {
            let c = try RawConnection(server.socketPath)
            try c.send(Self.hello())
            guard case .reply(_, .hello) = c.next() else { Issue.record("HELLO was not answered"); return }
            let request = ControlMessage(requestID: 2, .bind(handle: 1, address: SocketAddress(host: "127.0.0.1", port: 7421)!)).encoded()
            try c.send(Array(request.prefix(request.count - 6)))
            let o = c.next()
            #expect(o == .reply(requestID: 0, .error(EBADMSG)) || o == .closed, "short body: \(o)")
            // A bare header with nothing after it.
            try c.send(Array(request.prefix(ControlMessage.headerSize - 3)))
            let o2 = c.next()
            #expect(o2 == .reply(requestID: 0, .error(EBADMSG)) || o2 == .closed, "short header: \(o2)")
            // The session still serves valid requests afterwards (or was closed, which is also fine).
            if o2 != .closed {
                try c.send(ControlMessage(requestID: 3, .socket(domain: AF_INET, type: Int32(SOCK_DGRAM.rawValue), protocol: 0)).encoded())
                let o3 = c.next()
                if case .reply(3, .socket) = o3 {} else { Issue.record("valid request after malformed ones: \(o3)") }
            }
        }
        // 4 KiB (the limit is 512 bytes).
        do {
            let c = try RawConnection(server.socketPath)
            var big = Self.hello()
            big += [UInt8](repeating: 0xAB, count: 4096 - big.count)
            try c.send(big)
            let o = c.next()
            #expect(o == .reply(requestID: 0, .error(EBADMSG)) || o == .closed, "4 KiB message: \(o)")
        }
        // A descriptor attached (clients never send any): the server must not keep it. We send
        // a pipe's write end with a valid HELLO and close ours; the read end sees EOF only once
        // the server has closed its copy too.
        do {
            var pipeFDs: [Int32] = [0, 0]
            try #require(pipe2(&pipeFDs, O_CLOEXEC) == 0)
            defer { close(pipeFDs[0]) }
            let c = try RawConnection(server.socketPath)
            try c.send(Self.hello(), descriptors: [pipeFDs[1]])
            close(pipeFDs[1])
            let o = c.next()
            var served = false
            if case .reply(_, .hello) = o { served = true }
            #expect(served || o.isErrorOrClose, "HELLO with a descriptor attached: \(o)")
            var pfd = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
            #expect(poll(&pfd, 1, 5000) == 1 && pfd.revents & Int16(POLLHUP) != 0,
                    "the server still holds the descriptor we attached 5 s later")
        }
        // A request before HELLO.
        do {
            let c = try RawConnection(server.socketPath)
            try c.send(ControlMessage(requestID: 9, .socket(domain: AF_INET, type: Int32(SOCK_DGRAM.rawValue), protocol: 0)).encoded())
            let o = c.next()
            #expect(o == .reply(requestID: 9, .error(ENOTCONN)) || o == .closed, "socket before HELLO: \(o)")
        }
        // A reply type sent as a request, and a HELLO of another protocol version.
        do {
            let c = try RawConnection(server.socketPath)
            try c.send(ControlMessage(requestID: 10, .error(EPERM)).encoded())
            let o = c.next()
            #expect(o.isErrorOrClose, "a reply sent to the server: \(o)")
            let c2 = try RawConnection(server.socketPath)
            try c2.send(ControlMessage(requestID: 11, .hello(version: ControlMessage.version &+ 1, transport: .auto)).encoded())
            let o2 = c2.next()
            #expect(o2 == .reply(requestID: 11, .error(EPROTONOSUPPORT)) || o2 == .closed, "HELLO of another version: \(o2)")
        }
        // An empty message, and a flood of garbage sent without reading the replies: the server
        // must end the session rather than block on a client that does not read.
        do {
            let c = try RawConnection(server.socketPath)
            try c.send([])
            let o = c.next()
            #expect(o.isErrorOrClose, "empty message: \(o)")
            let flood = try RawConnection(server.socketPath)
            var sent = 0
            for _ in 0..<2000 {
                let rc = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }.withUnsafeBytes {
                    Glibc.send(flood.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                }
                if rc < 0 { break }
                sent += 1
            }
            #expect(flood.waitForClose(), "after \(sent) garbage messages the session was neither closed nor answered to the end")
        }

        // The server survived all of it, serves a real client, and kept nothing of those sessions.
        #expect(server.process.isRunning, "socket-server died: \(server.log)")
        let r = try Self.roundTrip(server.socketPath, port: 7422)
        #expect(r.status == .exited(0) && r.line.hasPrefix("round-trip=ok"), "\(r.diagnostics)\n\(server.log)")
        var after = Counts(server)
        #expect(waitUntil(timeout: 5, interval: 0.01) { after = Counts(server); return after == before }, "before: \(before), after: \(after)")
    }

    // MARK: a second server on the same path

    @Test("a second server on a live server's path exits 1; after a crash, the stale path is taken over")
    func secondServerOnTheSamePath() throws {
        let dir = try TestDirectory("sko-second")
        let path = dir.file("server.sock")
        let first = try ServerProcess(socketPath: path, logPath: dir.file("first.log"))
        defer { first.stop() }

        let second = try ChildProcess(TestBinaries.path("socket-server"), ["--socket-path", path], stderr: .file(dir.file("second.log"), append: true))
        let status = second.waitForExit(timeout: 10)
        #expect(status == .exited(1), "second server on a live path: \(status.map { "\($0)" } ?? "still running after 10 s")\n\(second.logTail(maxBytes: 4000))")
        #expect(second.logTail(maxBytes: 4000).contains("another socket server is running"), "\(second.logTail(maxBytes: 4000))")
        second.stop()
        // The first server is untouched: its socket file is still there and serves clients.
        #expect(first.process.isRunning)
        let r1 = try Self.roundTrip(path, port: 7431)
        #expect(r1.line.hasPrefix("round-trip=ok"), "first server after the second one's attempt: \(r1.diagnostics)")

        first.crash()
        #expect(access(path, F_OK) == 0, "SIGKILL leaves the socket file behind")
        let third = try ServerProcess(socketPath: path, logPath: dir.file("third.log"))
        defer { third.stop() }
        #expect(third.log.contains("replacing stale socket file"), "\(third.log)")
        let r3 = try Self.roundTrip(path, port: 7432)
        #expect(r3.line.hasPrefix("round-trip=ok"), "server on the stale path: \(r3.diagnostics)\n\(third.log)")
    }

    // MARK: clients of another uid

    @Test("a client of another uid is refused with EACCES, and served with --allow-uid",
          .enabled(if: getuid() == 0, "needs root: runs a client as uid 65534"))
    func otherUser() throws {
        // Refused: the socket file is made writable for everyone, so that the kernel lets the
        // client connect and the refusal is the server's policy (HELLO answered with EACCES).
        do {
            let server = try ServerProcess()
            defer { server.stop() }
            try #require(chmod(server.socketPath, 0o777) == 0)
            let r = try Self.roundTrip(server.socketPath, port: 7441, extra: ["--uid", "65534"])
            #expect(r.status == .exited(0), "\(r.diagnostics)")
            #expect(r.line == "socket-errno=\(EACCES)", "client of uid 65534 without --allow-uid: \(r.diagnostics)")
            #expect(waitUntil(timeout: 2, interval: 0.01) { server.log.contains("refused client of uid 65534") }, "\(server.log)")
        }
        // Allowed: the server makes its socket file accessible itself; the datagram transport is
        // shared memory (process-vm would need the client to be allowed to ptrace the server).
        do {
            let server = try ServerProcess(["--allow-uid", "65534"])
            defer { server.stop() }
            let r = try Self.roundTrip(server.socketPath, port: 7442, extra: ["--uid", "65534"])
            #expect(r.status == .exited(0), "\(r.diagnostics)")
            #expect(r.line == "round-trip=ok transport=shared-memory", "client of uid 65534 with --allow-uid: \(r.diagnostics)\n\(server.log)")
        }
    }
}
