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

    /// The counts once they have stopped changing (a readiness probe's session may still be closing):
    /// the same on two readings 50 ms apart, within 2.5 s, or the test fails here.
    static func settledCounts(_ server: ServerProcess, sourceLocation: SourceLocation = #_sourceLocation) throws -> Counts {
        var last = Counts(server)
        for _ in 0..<50 {
            usleep(50_000)
            let now = Counts(server)
            if now == last { return now }
            last = now
        }
        try #require(Bool(false), "the server's counts did not settle within 2.5 s: \(last)", sourceLocation: sourceLocation)
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
        let before = try Self.settledCounts(server)
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

    /// Starts client-peer in `mode` on `port` and waits until its main thread is blocked in a syscall
    /// that waits (proven from /proc, not assumed after a sleep).
    static func blockedPeer(_ server: ServerProcess, _ mode: String, port: UInt16) throws -> ChildProcess {
        let peer = try ChildProcess(TestBinaries.path("client-peer"), [mode, String(port), "--socket-path", server.socketPath], stdin: .pipe)
        let ready = peer.waitForLine(timeout: 20) { $0 == "ready" || $0.hasPrefix("error") }
        try #require(ready == "ready", "client-peer: \(peer.diagnostics)")
        let notBlocked = ProcStats.waitUntilBlocked(pid: peer.pid, timeout: 10)
        try #require(notBlocked == nil, "\(notBlocked ?? "")\n\(peer.diagnostics)")
        return peer
    }

    /// The next line of `peer` that starts with `prefix`, as fields (a failure if none within 5 s).
    static func line(_ peer: ChildProcess, _ prefix: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: String] {
        let line = peer.waitForLine(timeout: 5) { $0.hasPrefix(prefix) }
        let found = try #require(line, "no \(prefix) line within 5 s: \(peer.diagnostics)", sourceLocation: sourceLocation)
        return ChildProcess.fields(found)
    }

    @Test("SIGKILL of the server: a blocked recvfrom returns ENETDOWN, so does every later call on it; the next socket reaches a new server")
    func serverKilledUnderBlockedReceive() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let peer = try Self.blockedPeer(server, "blocked-recv", port: 7411)

        server.crash()
        // ENETDOWN is what ClientSocket.waitFor throws when the control socket hangs up.
        let r = try Self.line(peer, "recv=")
        #expect(r["recv"] == "-1" && r["errno"] == String(ENETDOWN), "recvfrom: \(r)")
        // Every later call on the old descriptor: ENETDOWN.
        for call in ["again", "send"] {
            let later = try Self.line(peer, "\(call)=")
            #expect(later[call] == "-1" && later["errno"] == String(ENETDOWN), "\(call) on the old descriptor: \(later)")
        }
        // The library reconnects on the next call: the path has a stale socket file and nobody
        // listening, so that is ECONNREFUSED -- or, when the connect got into the dying server's
        // listen backlog just before the kernel closed it, ECONNRESET (or EPIPE on HELLO's send).
        let s = try Self.line(peer, "socket=")
        #expect(s["socket"] == "-1")
        #expect([ECONNREFUSED, ECONNRESET, EPIPE].map { String($0) }.contains(s["errno"] ?? ""), "sko_socket after the server died: \(s)")
        // A new server on the same path: the next call connects to it and works.
        let second = try ServerProcess(socketPath: server.socketPath, logPath: server.socketPath + ".second.log")
        defer { second.stop() }
        peer.writeLine("reconnect")
        let again = try Self.line(peer, "round-trip=")
        #expect(again["round-trip"] == "ok", "round trip through the new server: \(again)\n\(second.log)")
        // And the peer was not killed by a signal (SIGPIPE) on the way.
        let (status, _) = peer.finish(timeout: 5)
        #expect(status == .exited(0), "client-peer: \(peer.diagnostics)")
    }

    @Test("after the server died, ioctl(FIONREAD) on an old descriptor fails with ENETDOWN too")
    func ioctlAfterServerDeath() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let peer = try Self.blockedPeer(server, "blocked-recv", port: 7414)
        server.crash()
        let r = try Self.line(peer, "fionread=")
        #expect(r["fionread"] == "-1" && r["errno"] == String(ENETDOWN), "FIONREAD on the old descriptor: \(r)")
        peer.writeLine("done")
        _ = peer.finish(timeout: 5)
    }

    /// An application waiting in its own poll(2): for POLLIN on a UDP socket (`polled-recv`, then a
    /// recv) or for POLLOUT on a TCP socket whose send side is full (`blocked-send`, then a send).
    @Test("SIGKILL of the server wakes an application blocked in its own poll(2), for POLLIN or POLLOUT; the call after says ENETDOWN",
          arguments: [("polled-recv", Int16(POLLIN), "recv", UInt16(7412)), ("blocked-send", Int16(POLLOUT), "send", UInt16(7413))])
    func serverKilledUnderApplicationPoll(mode: String, event: Int16, call: String, port: UInt16) throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let peer = try Self.blockedPeer(server, mode, port: port)
        server.crash()
        // The library's watchdog sees the control socket hang up and makes the descriptor readable
        // and writable.
        let woke = try Self.line(peer, "poll=")
        #expect(Int16(woke["poll"] ?? "0").map { $0 & event != 0 } == true, "\(mode): poll: \(woke)")
        let r = try Self.line(peer, "\(call)=")
        #expect(r[call] == "-1" && r["errno"] == String(ENETDOWN), "\(mode): \(call): \(r)")
        let (status, _) = peer.finish(timeout: 5)
        #expect(status == .exited(0), "client-peer: \(peer.diagnostics)")
    }

    // MARK: a clean stop

    @Test("SIGTERM, SIGINT and SIGHUP each stop the server with a client connected: exit status 0, socket file removed",
          arguments: [SIGTERM, SIGINT, SIGHUP])
    func cleanStopOnSignal(_ signal: Int32) throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let peer = try ChildProcess(TestBinaries.path("client-peer"), ["hold-sockets", "5", "--socket-path", server.socketPath])
        let ready = peer.waitForLine(timeout: 20) { $0.hasPrefix("ready") || $0.hasPrefix("error") }
        try #require(ready == "ready sockets=5", "client-peer: \(peer.diagnostics)")
        try #require(access(server.socketPath, F_OK) == 0)
        server.process.kill(signal)
        let status = server.process.waitForExit(timeout: 10)
        #expect(status == .exited(0), "signal \(signal): \(status.map { "\($0)" } ?? "still running after 10 s")\n\(server.log)")
        #expect(access(server.socketPath, F_OK) != 0, "signal \(signal): the socket file is still there")
        #expect(server.log.contains("signal \(signal): shutting down"), "\(server.log)")
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

    static let badMessage = Outcome.reply(requestID: 0, .error(EBADMSG))

    /// A session that has said HELLO.
    static func session(_ server: ServerProcess) throws -> RawConnection {
        let c = try RawConnection(server.socketPath)
        try c.send(Self.hello())
        let o = c.next()
        guard case .reply(1, .hello) = o else { throw TestSupportError("HELLO was answered with \(o)") }
        return c
    }

    /// A valid request is answered: the session is open. (getsockname of a handle that does not
    /// exist: EBADF, a reply that changes nothing.)
    static func stillServes(_ c: RawConnection, id: UInt32) -> Outcome? {
        do { try c.send(ControlMessage(requestID: id, .getsockname(handle: 999)).encoded()) } catch { return .closed }
        let o = c.next()
        return o == .reply(requestID: id, .error(EBADF)) ? nil : o
    }

    @Test("each kind of malformed control message gets one EBADMSG reply and the session goes on")
    func malformedControlMessages() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let before = try Self.settledCounts(server)
        var rng = SystemRandomNumberGenerator()
        let request = ControlMessage(requestID: 2, .bind(handle: 1, address: SocketAddress(host: "127.0.0.1", port: 7421)!)).encoded()
        var big = Self.hello()
        big += [UInt8](repeating: 0xAB, count: 4096 - big.count)
        let cases: [(String, [UInt8])] = [
            ("random bytes", (0..<64).map { _ in UInt8.random(in: 0...255, using: &rng) }),
            ("a body cut short (the header declares the full length)", Array(request.prefix(request.count - 6))),
            ("a header cut short", Array(request.prefix(ControlMessage.headerSize - 3))),
            ("4 KiB (the limit is 512 bytes)", big),
        ]
        // Before HELLO and after it: the same reply, and the session still serves.
        for (name, bytes) in cases {
            let c = try RawConnection(server.socketPath)
            try c.send(bytes)
            let o = c.next()
            #expect(o == Self.badMessage, "\(name), before HELLO: \(o)")
            try c.send(Self.hello())
            let hello = c.next()
            if case .reply(1, .hello) = hello {} else { Issue.record("\(name): HELLO afterwards was answered with \(hello)") }
        }
        do {
            let c = try Self.session(server)
            for (i, (name, bytes)) in cases.enumerated() {
                try c.send(bytes)
                let o = c.next()
                #expect(o == Self.badMessage, "\(name), after HELLO: \(o)")
                let open = Self.stillServes(c, id: 100 + UInt32(i))
                #expect(open == nil, "after \(name) the session no longer serves: \(open.map { "\($0)" } ?? "")")
            }
            // A reply type sent as a request: EBADMSG to its request id.
            try c.send(ControlMessage(requestID: 10, .error(EPERM)).encoded())
            let replyAsRequest = c.next()
            #expect(replyAsRequest == .reply(requestID: 10, .error(EBADMSG)), "a reply sent to the server: \(replyAsRequest)")
            #expect(Self.stillServes(c, id: 11) == nil)
        }

        // A descriptor attached (clients never send any): the request is served and the server does
        // not keep the descriptor. We send a pipe's write end with a valid HELLO and close ours; the
        // read end sees EOF only once the server has closed its copy too.
        do {
            var pipeFDs: [Int32] = [0, 0]
            try #require(pipe2(&pipeFDs, O_CLOEXEC) == 0)
            defer { close(pipeFDs[0]) }
            let c = try RawConnection(server.socketPath)
            try c.send(Self.hello(), descriptors: [pipeFDs[1]])
            close(pipeFDs[1])
            let o = c.next()
            if case .reply(1, .hello) = o {} else { Issue.record("HELLO with a descriptor attached: \(o)") }
            var pfd = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
            #expect(poll(&pfd, 1, 5000) == 1 && pfd.revents & Int16(POLLHUP) != 0,
                    "the server still holds the descriptor we attached 5 s later")
        }
        // A request before HELLO: ENOTCONN, and HELLO still works afterwards.
        do {
            let c = try RawConnection(server.socketPath)
            try c.send(ControlMessage(requestID: 9, .socket(domain: AF_INET, type: Int32(SOCK_DGRAM.rawValue), protocol: 0)).encoded())
            let o = c.next()
            #expect(o == .reply(requestID: 9, .error(ENOTCONN)), "socket before HELLO: \(o)")
            try c.send(Self.hello())
            let hello = c.next()
            if case .reply(1, .hello) = hello {} else { Issue.record("HELLO after a request before HELLO: \(hello)") }
        }
        // A HELLO of another protocol version: EPROTONOSUPPORT, then the session ends.
        do {
            let c = try RawConnection(server.socketPath)
            try c.send(ControlMessage(requestID: 11, .hello(version: ControlMessage.version &+ 1, transport: .auto)).encoded())
            let o = c.next()
            #expect(o == .reply(requestID: 11, .error(EPROTONOSUPPORT)), "HELLO of another version: \(o)")
            #expect(c.waitForClose(), "the session of a client of another protocol version stays open")
        }

        // The server survived all of it, serves a real client, and kept nothing of those sessions.
        #expect(server.process.isRunning, "socket-server died: \(server.log)")
        let r = try Self.roundTrip(server.socketPath, port: 7422)
        #expect(r.status == .exited(0) && r.line.hasPrefix("round-trip=ok"), "\(r.diagnostics)\n\(server.log)")
        var after = Counts(server)
        #expect(waitUntil(timeout: 5, interval: 0.01) { after = Counts(server); return after == before }, "before: \(before), after: \(after)")
    }

    @Test("an empty control message gets an EBADMSG reply and the session goes on")
    func emptyControlMessage() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let c = try Self.session(server)
        try c.send([])
        let o = c.next()
        #expect(o == Self.badMessage, "empty message: \(o)")
        #expect(Self.stillServes(c, id: 5) == nil)
    }

    @Test("15 malformed messages are answered and the session goes on; the 16th is answered and ends it")
    func sixteenMalformedMessagesEndTheSession() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let c = try Self.session(server)
        let garbage = [UInt8](repeating: 0xEE, count: 40)
        for n in 1...15 {
            try c.send(garbage)
            let o = c.next()
            try #require(o == Self.badMessage, "malformed message \(n): \(o)")
        }
        let open = Self.stillServes(c, id: 50)
        #expect(open == nil, "after 15 malformed messages: \(open.map { "\($0)" } ?? "")")
        try c.send(garbage)
        let last = c.next()
        #expect(last == Self.badMessage, "malformed message 16: \(last)")
        #expect(c.next(timeout: 5000) == .closed, "the session is still open after 16 malformed messages")
    }

    @Test("a client that sends requests and never reads the replies loses its session; the server goes on serving others")
    func clientThatDoesNotReadLosesItsSession() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let before = try Self.settledCounts(server)
        let c = try Self.session(server)
        // Valid requests (not malformed ones: those end a session after 16 by another rule), sent as
        // fast as the socket takes them, never reading a reply.
        let request = ControlMessage(requestID: 7, .getsockname(handle: 999)).encoded()
        var sent = 0, refusedInARow = 0
        let deadline = Deadline(seconds: 10)
        while sent < 100_000 && refusedInARow < 50 && !deadline.expired {
            let rc = request.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if rc == request.count {
                sent += 1
                refusedInARow = 0
            } else if rc < 0 && errno == EAGAIN {
                refusedInARow += 1
                usleep(2_000)
            } else {
                break // EPIPE / ECONNRESET: the server hung up already
            }
        }
        // Meanwhile (and after) another client is served.
        let r = try Self.roundTrip(server.socketPath, port: 7423)
        #expect(r.line.hasPrefix("round-trip=ok"), "another client while one does not read: \(r.diagnostics)")
        // Now read what was queued: some replies, then the end of the session (never all of them).
        var replies = 0
        var outcome = Outcome.timedOut
        for _ in 0...(sent + 1) {
            outcome = c.next(timeout: 5000)
            guard outcome == .reply(requestID: 7, .error(EBADF)) else { break }
            replies += 1
        }
        #expect(outcome == .closed, "after \(sent) requests and \(replies) replies read: \(outcome)")
        #expect(replies < sent, "every one of \(sent) replies was delivered: the client never fell behind")
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
