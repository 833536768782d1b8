import Foundation
@testable import SocketClient
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The client's side of the control plane's trust: it authenticates the server before it sends
/// anything (SO_PEERCRED; the default directory's owner and mode), bounds connect + HELLO, and
/// reports a refusing server's errno. The "servers" here are mostly `fake-server` (silent,
/// recording, refusing, or run as another user); clients are `client-peer` processes, this process
/// (`ServerConnection` only: no process-wide state), or exit-test children.
@Suite("Server authentication")
struct ServerAuthenticationTests {
    /// `fake-server PATH ARGUMENTS...`, once it listens.
    static func fakeServer(_ path: String, _ arguments: [String]) throws -> ChildProcess {
        let fake = try ChildProcess(TestBinaries.path("fake-server"), [path] + arguments + ["--lifetime", "60"])
        let line = fake.waitForLine(timeout: 10) { $0 == "listening" || $0.hasPrefix("error") }
        guard line == "listening" else { throw TestSupportError("fake-server did not start: \(fake.diagnostics)") }
        return fake
    }

    /// A fake server in a fresh directory of its own (removed with the returned server).
    final class FakeServer {
        let process: ChildProcess
        let directory: TestDirectory
        init(_ process: ChildProcess, _ directory: TestDirectory) {
            self.process = process
            self.directory = directory
        }
        func stop() { process.stop() }

        static func inDirectory(_ arguments: [String]) throws -> (FakeServer, path: String) {
            let dir = try TestDirectory("sko-fake")
            let path = dir.file("fake.sock")
            return (FakeServer(try ServerAuthenticationTests.fakeServer(path, arguments), dir), path)
        }
    }

    /// `client-peer round-trip PORT --socket-path PATH` with `environment` (VAR=VALUE, or -u VAR) set
    /// through env(1). Returns its last line ("socket-errno=N" when it could not get a socket).
    static func roundTrip(_ path: String, port: UInt16, environment: [String] = []) throws -> (status: ChildProcess.ExitStatus?, line: String, diagnostics: String) {
        let peer = try ChildProcess("/usr/bin/env", environment + [TestBinaries.path("client-peer"), "round-trip", String(port), "--socket-path", path],
                                    name: "client-peer")
        let (status, output) = peer.finish(timeout: 30)
        return (status, output.last ?? "", peer.diagnostics)
    }

    /// The bytes a recording fake server wrote (nil: no file).
    static func recorded(_ file: String) -> [UInt8]? {
        FileManager.default.contents(atPath: file).map { [UInt8]($0) }
    }

    /// Whether `bytes` (packets back to back) start with a HELLO request, what a client sends first.
    static func startsWithHello(_ bytes: [UInt8]) -> Bool {
        // The body length is the little-endian UInt32 at offset 8 of the 16-byte header.
        guard bytes.count >= ControlMessage.headerSize else { return false }
        let length = bytes[8..<12].reversed().reduce(0) { $0 << 8 | Int($1) }
        guard length <= bytes.count - ControlMessage.headerSize,
              let m = try? ControlMessage.decode(Array(bytes.prefix(ControlMessage.headerSize + length))) else { return false }
        if case .request(.hello) = m.payload { return true }
        return false
    }

    // MARK: a server of another uid

    @Test("a server run by another uid is refused with EPERM before anything is sent; one run by root is trusted")
    func serverOfAnotherUser() throws {
        guard getuid() == 0 else {
            print("SKIPPED: needs root (ServerAuthenticationTests.serverOfAnotherUser runs a fake server as uid 65534)")
            return
        }
        let dir = try TestDirectory("sko-fake")
        // The fake server binds as uid 65534: let it create its socket file here.
        try #require(chown(dir.path, 65534, 65534) == 0)
        let record = dir.file("received")
        let fake = try Self.fakeServer(dir.file("other.sock"), ["--record", record, "--uid", "65534"])
        defer { fake.stop() }
        let r = try Self.roundTrip(dir.file("other.sock"), port: 7501)
        #expect(r.status == .exited(0), "\(r.diagnostics)")
        #expect(r.line == "socket-errno=\(EPERM)", "client of uid 0 at a server of uid 65534: \(r.diagnostics)")
        // It did connect (so the refusal is the client's), and hung up without sending a byte.
        #expect(fake.waitForLine(timeout: 10) { $0.hasPrefix("closed") } == "closed bytes=0", "\(fake.diagnostics)")
        #expect(fake.transcript.contains("accepted"), "\(fake.diagnostics)")
        #expect(Self.recorded(record) == [], "bytes the fake server of another uid received: \(Self.recorded(record).map { "\($0.count)" } ?? "no file")")

        // The control: the same recording server run by root is trusted, so the client says HELLO
        // to it (the recording works) and, with no answer, gives up after its timeout.
        let trustedRecord = dir.file("received-by-root")
        let trusted = try Self.fakeServer(dir.file("root.sock"), ["--record", trustedRecord])
        defer { trusted.stop() }
        let t = try Self.roundTrip(dir.file("root.sock"), port: 7502, environment: ["SOCKET_SERVER_TIMEOUT_MS=500"])
        #expect(t.line == "socket-errno=\(ETIMEDOUT)", "client at a silent server of root: \(t.diagnostics)")
        let closed = trusted.waitForLine(timeout: 10) { $0.hasPrefix("closed") }
        #expect(closed != nil && closed != "closed bytes=0", "\(trusted.diagnostics)")
        let hello = Self.recorded(trustedRecord) ?? []
        #expect(Self.startsWithHello(hello), "what the client sent to a server of root: \(hello.prefix(32))")
    }

    // MARK: a server that never answers

    @Test("a server that accepts and never answers: ETIMEDOUT (SOCKET_SERVER_TIMEOUT_MS, then the 5 s default), descriptor closed")
    func silentServer() throws {
        let (fake, path) = try FakeServer.inDirectory(["--silent"])
        defer { fake.stop() }

        let short = try Self.roundTrip(path, port: 7511, environment: ["SOCKET_SERVER_TIMEOUT_MS=500"])
        #expect(short.status == .exited(0), "\(short.diagnostics)")
        #expect(short.line == "socket-errno=\(ETIMEDOUT)", "SOCKET_SERVER_TIMEOUT_MS=500: \(short.diagnostics)")
        // Without the variable: the 5 s default (the bound here is finish's 30 s).
        let long = try Self.roundTrip(path, port: 7512, environment: ["-u", "SOCKET_SERVER_TIMEOUT_MS"])
        #expect(long.line == "socket-errno=\(ETIMEDOUT)", "default timeout: \(long.diagnostics)")

        // In this process: the library closes the control socket when it gives up (the fake server
        // sees the hang-up while we are still running).
        var skipped: [String] = []
        _ = fake.process.waitForLine(timeout: 10, skipped: &skipped) { $0.hasPrefix("closed") }
        _ = fake.process.waitForLine(timeout: 10, skipped: &skipped) { $0.hasPrefix("closed") }
        #expect(throws: Errno(ETIMEDOUT)) { try ServerConnection.connect(path: path, timeoutMilliseconds: 300) }
        #expect(fake.process.waitForLine(timeout: 10) { $0.hasPrefix("closed") } != nil, "the control socket was not closed: \(fake.process.diagnostics)")
    }

    @Test("a server that never accepts: the connect that waits for its full backlog gives up too (ETIMEDOUT)")
    func stuckServer() throws {
        let (fake, path) = try FakeServer.inDirectory(["--never-accept"])
        defer { fake.stop() }
        // The first client fills the backlog (its HELLO is never read); the second one's connect(2)
        // blocks until SO_SNDTIMEO ends it.
        for (i, port) in [UInt16(7513), 7514].enumerated() {
            let r = try Self.roundTrip(path, port: port, environment: ["SOCKET_SERVER_TIMEOUT_MS=500"])
            #expect(r.line == "socket-errno=\(ETIMEDOUT)", "client \(i + 1) at a server that never accepts: \(r.diagnostics)")
        }
    }

    // MARK: a server that refuses

    @Test("a server that refuses and hangs up: the client reports its errno, not EPIPE or ECONNRESET")
    func refusalIsReported() throws {
        let (fake, path) = try FakeServer.inDirectory(["--refuse", String(EUSERS)])
        defer { fake.stop() }
        // The refusal races with our HELLO (sent before, or after the server has closed): both ways.
        for _ in 0..<20 {
            #expect(throws: Errno(EUSERS)) { try ServerConnection.connect(path: path, timeoutMilliseconds: 5000) }
        }
        let r = try Self.roundTrip(path, port: 7521)
        #expect(r.line == "socket-errno=\(EUSERS)", "\(r.diagnostics)")
    }

    /// A control socket whose server queued `errno` as an error reply and closed; with `unreadHello`
    /// the server closed with a message of ours unread (the kernel then gives us ECONNRESET first).
    static func refusedSocket(_ errno: Int32, unreadHello: Bool) throws -> Int32 {
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        if unreadHello { try DescriptorPassing.send(fds[0], ControlMessage(requestID: 0, .hello(version: ControlMessage.version, transport: .auto)).encoded()) }
        try DescriptorPassing.send(fds[1], ControlMessage(requestID: 0, .error(errno)).encoded())
        close(fds[1])
        return fds[0]
    }

    @Test("HELLO's send fails (EPIPE) or the first read says ECONNRESET: the queued refusal is read and reported")
    func refusalQueuedBeforeHello() throws {
        for (err, unread) in [(EUSERS, false), (EACCES, false), (EUSERS, true), (EACCES, true)] {
            let fd = try Self.refusedSocket(err, unreadHello: unread)
            defer { close(fd) }
            let deadline = monotonicNanoseconds() + 5_000_000_000
            #expect(throws: Errno(err), "refusal \(err), our message unread: \(unread)") {
                _ = try ServerConnection.hello(over: fd, transport: .auto, deadline: deadline)
            }
        }
        // A server that hangs up without a word: ECONNREFUSED (no server took us), never EPIPE.
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        close(fds[1])
        defer { close(fds[0]) }
        #expect(throws: Errno(ECONNREFUSED)) {
            _ = try ServerConnection.hello(over: fds[0], transport: .auto, deadline: monotonicNanoseconds() + 5_000_000_000)
        }
    }

    @Test("the real server at --max-clients: the next client gets EUSERS")
    func maxClients() throws {
        let server = try ServerProcess(["--max-clients", "1"])
        defer { server.stop() }
        // Holds the one slot. (The readiness probe's session may not be gone yet: retry briefly.)
        var holder: ChildProcess? = nil
        for _ in 0..<20 {
            let peer = try ChildProcess(TestBinaries.path("client-peer"), ["hold-sockets", "1", "--socket-path", server.socketPath])
            if peer.waitForLine(timeout: 20, { $0.hasPrefix("ready") || $0.hasPrefix("error") }) == "ready sockets=1" {
                holder = peer
                break
            }
            peer.stop()
            usleep(100_000)
        }
        try #require(holder != nil, "no client could take the one slot: \(server.log)")
        defer { holder?.stop() }
        let r = try Self.roundTrip(server.socketPath, port: 7531)
        #expect(r.line == "socket-errno=\(EUSERS)", "second client at --max-clients 1: \(r.diagnostics)\n\(server.log)")
    }

    // MARK: the default directory

    /// A uid no other test uses, so that its /tmp/socket-server-UID is this test's alone.
    static let defaultPathUID: UInt32 = 61_917

    /// In an exit-test child as `uid`, with neither SOCKET_SERVER_PATH nor XDG_RUNTIME_DIR set:
    /// `sko_socket`. The child exits with the errno it got (0 when it got a socket).
    /// With `fakeServer`, the child first starts `fake-server` with those arguments (its own child:
    /// see `UDPEchoFloodTests` for why helpers do not belong to the test process during exit tests).
    static func socketErrnoAtDefaultPath(uid: UInt32, expected: Int32, fakeServer: [String] = [], _ comment: Comment,
                                         sourceLocation: SourceLocation = #_sourceLocation) async {
        await #expect(processExitsWith: .exitCode(expected), comment, sourceLocation: sourceLocation) {
            [uid = uid as UInt32, fakeServer = fakeServer as [String]] in
            alarm(30)
            let fake = fakeServer.isEmpty ? nil : try ServerAuthenticationTests.fakeServer(fakeServer[0], Array(fakeServer.dropFirst()))
            defer { withExtendedLifetime(fake) {} }
            unsetenv("SOCKET_SERVER_PATH")
            unsetenv("XDG_RUNTIME_DIR")
            setenv("SOCKET_SERVER_TIMEOUT_MS", "500", 1)
            guard setgroups(0, nil) == 0, setgid(uid) == 0, setuid(uid) == 0 else { exit(200) }
            let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            exit(fd >= 0 ? 0 : errno)
        }
    }

    @Test("/tmp/socket-server-UID: refused (EPERM) unless a real directory of ours or root's, writable by no one else")
    func defaultDirectory() async throws {
        guard getuid() == 0 else {
            print("SKIPPED: needs root (ServerAuthenticationTests.defaultDirectory runs clients as uid \(Self.defaultPathUID))")
            return
        }
        let uid = Self.defaultPathUID
        let directory = "/tmp/socket-server-\(uid)"
        let elsewhere = directory + "-real"
        func reset() {
            TestFiles.removeTree(directory)
            TestFiles.removeTree(elsewhere)
        }
        func makeDirectory(_ path: String, owner: UInt32, mode: mode_t) throws {
            try #require(mkdir(path, 0o700) == 0 && chown(path, owner, owner) == 0 && chmod(path, mode) == 0, "\(path): errno \(errno)")
        }
        reset()
        defer { reset() }

        await Self.socketErrnoAtDefaultPath(uid: uid, expected: ENOENT, "no directory: no server")
        try makeDirectory(directory, owner: uid, mode: 0o700)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: ENOENT, "our directory, 0700, empty")
        try #require(chown(directory, 0, 0) == 0 && chmod(directory, 0o755) == 0)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: ENOENT, "root's directory, 0755, empty")
        try #require(chown(directory, 65534, 65534) == 0 && chmod(directory, 0o700) == 0)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: EPERM, "another user's directory")
        try #require(chown(directory, uid, uid) == 0 && chmod(directory, 0o777) == 0)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: EPERM, "our directory, mode 0777")
        try #require(chmod(directory, 0o1777) == 0)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: EPERM, "our directory, mode 1777")
        try #require(chmod(directory, 0o720) == 0)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: EPERM, "our directory, group-writable")
        reset()
        try makeDirectory(elsewhere, owner: uid, mode: 0o700)
        try #require(symlink(elsewhere, directory) == 0)
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: EPERM, "a symlink to our directory")
        reset()
        try TestFiles.write(directory, "")
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: EPERM, "a file")
        reset()

        // The control: our directory with a (silent, recording) server of ours at
        // /tmp/socket-server-UID/socket: the client says HELLO there and times out.
        try makeDirectory(directory, owner: uid, mode: 0o700)
        let recordDirectory = try TestDirectory("sko-default")
        let record = recordDirectory.file("received")
        await Self.socketErrnoAtDefaultPath(uid: uid, expected: ETIMEDOUT, fakeServer: [directory + "/socket", "--record", record, "--uid", String(uid)],
                                            "our directory with a server of ours that does not answer")
        let hello = Self.recorded(record) ?? []
        #expect(Self.startsWithHello(hello), "what the client sent at \(directory)/socket: \(hello.prefix(32))")
    }
}

/// What every call on an old socket returns once its server is gone (ENETDOWN, whatever the socket's
/// own state would have said), and what a new `socket()` returns: a connection to a new server if
/// one is running, else the connect's errno (ECONNREFUSED for a stale socket file, ENOENT for none).
/// Runs in an exit-test child: the library's connection is process-wide.
@Suite("Calls after the server's death")
struct ServerDeathTests {
    @Test("old sockets of every kind: ENETDOWN from every call but close and poll; new sockets: ECONNREFUSED, a new server, ENOENT")
    func errnosAfterDeath() async throws { try await ChildChecks.run("serverDeath") }
}

/// Checks that run in an exit-test child, with a socket path in a fresh directory: each starts its
/// own servers and helpers there (see `UDPEchoFloodTests` for why).
enum ChildChecks {
    static let all: [String: @Sendable (String) throws -> Void] = [
        "serverDeath": ServerDeathChecks.run, "echoFlood": UDPEchoFloodTests.run,
    ]

    static func run(_ check: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let dir = try TestDirectory("sko-\(check)")
        await #expect(processExitsWith: .success, "check \(check)", sourceLocation: sourceLocation) {
            [check = check as String, path = dir.file("server.sock") as String] in
            alarm(90) // hang bound: SIGALRM ends the child, and the exit test fails
            let body = try #require(ChildChecks.all[check], "no check named \(check)")
            try body(path)
            exit(0)
        }
    }
}

enum ServerDeathChecks {
    static func v4(_ port: UInt16) -> SocketAddress { SocketAddress(host: "127.0.0.1", port: port)! }

    static func call(_ address: SocketAddress, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int {
        Int(address.withSockAddr { body($0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) })
    }

    /// Makes every call that takes a socket on `fd`.
    /// - Returns: each call's name, result and errno.
    static func callEverything(_ fd: Int32) -> [(call: String, result: Int, errno: Int32)] {
        var results: [(String, Int, Int32)] = []
        func record(_ name: String, _ result: some BinaryInteger) { results.append((name, Int(result), errno)) }
        var buffer = [UInt8](repeating: 0, count: 64)
        var value: Int32 = 1
        var length = socklen_t(4)
        var storage = sockaddr_storage()
        var storageLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        record("bind", call(v4(7549)) { sko_bind(fd, $0, $1) })
        record("connect", call(v4(7541)) { sko_connect(fd, $0, $1) })
        record("sendto", call(v4(7541)) { Int32(sko_sendto(fd, &buffer, 4, 0, $0, $1)) })
        record("send", sko_send(fd, &buffer, 4, 0))
        record("write", sko_write(fd, &buffer, 4))
        record("recv", sko_recv(fd, &buffer, buffer.count, 0))
        record("recv MSG_DONTWAIT", sko_recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT)))
        record("read", sko_read(fd, &buffer, buffer.count))
        buffer.withUnsafeMutableBytes { bytes in
            var iov = iovec(iov_base: bytes.baseAddress, iov_len: 4)
            withUnsafeMutablePointer(to: &iov) { iovPointer in
                var msg = msghdr()
                msg.msg_iov = iovPointer
                msg.msg_iovlen = 1
                record("sendmsg", sko_sendmsg(fd, &msg, 0))
                record("recvmsg", sko_recvmsg(fd, &msg, 0))
            }
        }
        withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                record("recvfrom", sko_recvfrom(fd, &buffer, buffer.count, 0, address, &storageLength))
                record("getsockname", sko_getsockname(fd, address, &storageLength))
                record("getpeername", sko_getpeername(fd, address, &storageLength))
            }
        }
        record("setsockopt SO_REUSEADDR", sko_setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &value, 4))
        record("setsockopt SO_RCVTIMEO", sko_setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)))
        record("getsockopt SO_ERROR", sko_getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length))
        record("ioctl FIONREAD", sko_ioctl(fd, UInt(FIONREAD), &value))
        record("ioctl FIONBIO", sko_ioctl(fd, UInt(FIONBIO), &value))
        record("fcntl F_GETFL", sko_fcntl(fd, F_GETFL, 0))
        record("fcntl F_SETFL", sko_fcntl(fd, F_SETFL, O_NONBLOCK))
        record("shutdown", sko_shutdown(fd, Int32(SHUT_RDWR)))
        record("listen", sko_listen(fd, 8))
        record("accept", sko_accept(fd, nil, nil))
        record("accept4", sko_accept4(fd, nil, nil, Int32(SOCK_NONBLOCK.rawValue)))
        return results
    }

    /// Waits (5 s at most) until the library's watchdog has made `fd` readable: the death is known.
    static func waitForWatchdog(_ fd: Int32) throws {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        try #require(poll(&pfd, 1, 5000) == 1, "the descriptor did not turn readable within 5 s of the server's death")
    }

    static func expectNetworkDown(_ sockets: [(String, Int32)], sourceLocation: SourceLocation = #_sourceLocation) {
        for (name, fd) in sockets {
            for (callName, rc, err) in callEverything(fd) {
                #expect(rc == -1 && err == ENETDOWN, "\(callName) on \(name) socket: \(rc), errno \(err)", sourceLocation: sourceLocation)
            }
            // close(2)'s counterpart releases the descriptor; poll reports the hang-up.
            var pfd = pollfd(fd: fd, events: Int16(POLLIN | POLLOUT), revents: 0)
            #expect(sko_poll(&pfd, 1, 0) == 1 && pfd.revents & Int16(POLLHUP | POLLERR) == Int16(POLLHUP | POLLERR),
                    "sko_poll on \(name) socket: revents \(pfd.revents)", sourceLocation: sourceLocation)
            #expect(sko_close(fd) == 0, "sko_close on \(name) socket: errno \(errno)", sourceLocation: sourceLocation)
        }
    }

    static func run(_ path: String) throws {
        let server = try ServerProcess(socketPath: path)
        try Socket.configure(serverPath: path)
        let udp = Int32(SOCK_DGRAM.rawValue), tcp = Int32(SOCK_STREAM.rawValue)
        let fresh = sko_socket(AF_INET, udp, 0)
        let bound = sko_socket(AF_INET, udp, 0)
        let connected = sko_socket(AF_INET, udp, 0)
        let stream = sko_socket(AF_INET, tcp, 0)
        let listener = sko_socket(AF_INET, tcp, 0)
        let client = sko_socket(AF_INET, tcp, 0)
        try #require([fresh, bound, connected, stream, listener, client].allSatisfy { $0 >= 0 }, "socket: errno \(errno)")
        try #require(call(v4(7541)) { sko_bind(bound, $0, $1) } == 0)
        try #require(call(v4(7541)) { sko_connect(connected, $0, $1) } == 0)
        try #require(call(v4(7542)) { sko_bind(listener, $0, $1) } == 0 && sko_listen(listener, 8) == 0)
        try #require(call(v4(7542)) { sko_connect(client, $0, $1) } == 0, "TCP connect: errno \(errno)")
        let accepted = sko_accept(listener, nil, nil)
        try #require(accepted >= 0, "accept: errno \(errno)")

        server.crash()
        try waitForWatchdog(bound)
        expectNetworkDown([("UDP fresh", fresh), ("UDP bound", bound), ("UDP connected", connected), ("TCP fresh", stream),
                           ("TCP listening", listener), ("TCP connected", client), ("TCP accepted", accepted)])
        // No server: SIGKILL left the socket file, nobody listens.
        let refused = sko_socket(AF_INET, udp, 0)
        #expect(refused == -1 && errno == ECONNREFUSED, "socket with a stale socket file: \(refused), errno \(errno)")

        // A new server at the path: the next socket() connects to it.
        let second = try ServerProcess(socketPath: path)
        let renewed = sko_socket(AF_INET, udp, 0)
        try #require(renewed >= 0, "socket with a new server running: errno \(errno)")
        #expect(call(v4(7543)) { sko_bind(renewed, $0, $1) } == 0, "bind on the new server: errno \(errno)")

        // A clean stop removes the socket file: then ENOENT.
        second.stop()
        try waitForWatchdog(renewed)
        expectNetworkDown([("UDP of the second server", renewed)])
        let missing = sko_socket(AF_INET, udp, 0)
        #expect(missing == -1 && errno == ENOENT, "socket with no socket file: \(missing), errno \(errno)")
    }
}

/// udp-echo-server under a flood: with the smallest rings (33 buffers of 2 KiB, so 4 datagrams of
/// 16,000 bytes) its send ring fills at once, `sendto` says EAGAIN, and the server must wait for
/// room (or drop the echo), never exit.
///
/// Everything runs in an exit-test child, servers included: Swift Testing's exit-test monitor waits
/// for any child of the test process (`waitid(P_ALL, WNOWAIT)`), so a helper of this process that
/// exits during an exit test (an echo server that dies) would leave it spinning on that zombie.
@Suite("udp-echo-server under a flood")
struct UDPEchoFloodTests {
    @Test("4 sockets blast it without waiting; it is alive and echoes everything afterwards")
    func flood() async throws { try await ChildChecks.run("echoFlood") }

    static func run(_ path: String) throws {
        let server = try ServerProcess(["--datagram-ring-items", "33"], socketPath: path)
        let echo = try EchoServer(server, port: 7551)
        try Socket.configure(serverPath: path)
        let threads = (0..<4).map { _ in
            TestThread {
                guard let s = try? Socket(.inet, .datagram, nonBlocking: true) else { return }
                let payload = [UInt8](repeating: 0x5A, count: 16_000)
                let to = SocketAddress(host: "127.0.0.1", port: 7551)!
                let deadline = Deadline(seconds: 3)
                // Bounded: 3 s or 200,000 attempts, whichever comes first; EAGAIN is expected.
                for _ in 0..<200_000 where !deadline.expired { _ = try? s.send(payload, to: to) }
            }
        }
        threads.forEach { $0.join() }

        try #require(echo.process.isRunning, "udp-echo-server died under the flood: \(echo.process.diagnostics)")
        let client = try ChildProcess(TestBinaries.path("udp-echo-client"),
                                      ["127.0.0.1", "7551", "--count", "200", "--timeout", "10000", "--socket-path", path])
        let (status, output) = client.finish(timeout: 60)
        let f = ChildProcess.fields(output.last(where: { $0.hasPrefix("sent=") }) ?? "")
        #expect(status == .exited(0) && f["received"] == "200" && f["corrupted"] == "0",
                "udp-echo-client after the flood: \(client.diagnostics)\necho server: \(echo.process.diagnostics)")
        echo.stop()
        server.stop()
    }
}
