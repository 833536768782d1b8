import Foundation
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// getxattr(2) (not in Glibc's Swift module).
@_silgen_name("getxattr")
private func getxattr(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeMutableRawPointer?, _ size: Int) -> Int

/// Who gets in, and what it may hold: descriptor exhaustion, connections that never say HELLO,
/// users the server refuses, and the socket file's permissions. Hostile clients are raw SEQPACKET
/// connections (`FailureTests.RawConnection`) so that they do exactly what the test says.
@Suite("Server admission")
struct ServerAdmissionTests {
    typealias Raw = FailureTests.RawConnection
    typealias Outcome = FailureTests.Outcome

    // MARK: helpers

    /// utime + stime of a process, in clock ticks (nil when it is gone).
    static func cpuTicks(_ pid: pid_t) -> Int? {
        guard let stat = ProcStats.readFile("/proc/\(pid)/stat"), let paren = stat.lastIndex(of: ")") else { return nil }
        // After "pid (comm)": field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
        let fields = stat[stat.index(after: paren)...].split(separator: " ")
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return nil }
        return user + system
    }

    /// The share of one CPU `pid` used during the next `seconds` (a spin shows as about 1.0).
    static func cpuShare(_ pid: pid_t, over seconds: Double) -> Double? {
        let ticks0 = cpuTicks(pid), wall0 = Deadline.now()
        usleep(useconds_t(seconds * 1e6))
        let ticks1 = cpuTicks(pid), wall1 = Deadline.now()
        guard let ticks0, let ticks1 else { return nil }
        return Double(ticks1 - ticks0) / Double(sysconf(Int32(_SC_CLK_TCK))) / (Double(wall1 - wall0) / 1e9)
    }

    /// A `socket-server` started under `prlimit --nofile=N:N`, in a directory of its own.
    final class LimitedServer {
        let directory: TestDirectory
        let socketPath: String
        let process: ChildProcess

        init(nofile: Int, arguments: [String] = []) throws {
            directory = try TestDirectory("sko-admission")
            socketPath = directory.file("server.sock")
            process = try ChildProcess("prlimit", ["--nofile=\(nofile):\(nofile)", "--", TestBinaries.path("socket-server"),
                                                   "--socket-path", socketPath, "--log-level", "info"] + arguments,
                                       name: "socket-server-limited", stderr: .file(directory.file("server.log"), append: true),
                                       orphanFiles: [socketPath])
            let path = socketPath, process = process
            let ready = waitUntil(timeout: 10, interval: 0.01) { !process.isRunning || ServerProcess.accepts(path) }
            guard ready, process.isRunning else {
                let log = process.logTail(maxBytes: 8000)
                process.terminate()
                throw TestSupportError("socket-server under prlimit did not get ready:\n\(log)")
            }
        }

        var pid: pid_t { process.pid }
        var log: String { process.logTail(maxBytes: 8000) }

        func stop() {
            process.stop(SIGTERM, grace: 5)
            process.terminate()
            unlink(socketPath)
        }

        deinit { stop() }
    }

    static func socketRequest(_ id: UInt32) -> [UInt8] {
        ControlMessage(requestID: id, .socket(domain: AF_INET, type: Int32(SOCK_DGRAM.rawValue), protocol: 0)).encoded()
    }

    /// A raw client that completed HELLO (shared-memory transport; it never maps the segment).
    static func helloClient(_ path: String) throws -> Raw {
        let c = try Raw(path)
        try c.send(FailureTests.hello())
        let o = c.next()
        guard case .reply(_, .hello) = o else { throw TestSupportError("HELLO: \(o)") }
        return c
    }

    /// Opens UDP sockets on `client` until the server refuses one (at most `limit`).
    /// - Returns: how many it opened and the refusal.
    static func openSocketsUntilRefused(_ client: Raw, limit: Int) throws -> (opened: Int, refusal: Outcome?) {
        for i in 0..<limit {
            try client.send(socketRequest(UInt32(100 + i)))
            let o = client.next()
            if case .reply(_, .socket) = o { continue } // its two descriptors are closed by next()
            return (i, o)
        }
        return (limit, nil)
    }

    /// Connects raw clients one at a time, each sending HELLO, and sorts out what happened. A client
    /// the server refuses right after accept may find the socket closed before its HELLO is sent
    /// (EPIPE): the refusal is still queued for it to read.
    static func connectClients(_ path: String, count: Int) -> (served: [Raw], refused: [Int32], other: [String]) {
        var served: [Raw] = [], refused: [Int32] = [], other: [String] = []
        for i in 0..<count {
            let c: Raw
            do { c = try Raw(path) } catch {
                other.append("client \(i): connect: \(error)")
                break
            }
            try? c.send(FailureTests.hello())
            let o = c.next()
            switch o {
            case .reply(_, .hello): served.append(c)
            case .reply(_, .error(let e)): refused.append(e)
            default:
                other.append("client \(i): \(o)")
                if o == .timedOut { return (served, refused, other) } // a hang: do not wait 5 s per client
            }
        }
        return (served, refused, other)
    }

    /// "socket:[…] x3, anon_inode:[eventfd] x2": what a process's descriptors are, for failure messages.
    static func descriptorSummary(_ pid: pid_t) -> String {
        let kinds = (ProcStats.descriptorTargets(pid) ?? []).map { $0.hasPrefix("socket:") ? "socket" : $0 }
        return Dictionary(grouping: kinds, by: { $0 }).map { "\($0.key) x\($0.value.count)" }.sorted().joined(separator: ", ")
    }

    static func errnoName(_ e: Int32) -> String { "\(Errno(e))" }

    // MARK: descriptor exhaustion

    @Test("prlimit 256: a greedy client gets a clear errno, more clients get EUSERS or are served, the server idles and recovers")
    func descriptorExhaustion() throws {
        let server = try LimitedServer(nofile: 256)
        defer { server.stop() }
        var baseline = 0
        _ = waitUntil(timeout: 2) { // the readiness probe's session closing
            let n = ProcStats.descriptorTargets(server.pid)?.count ?? -1
            defer { baseline = n }
            return n == baseline
        }

        var greedy: Raw? = try Self.helloClient(server.socketPath)
        let (opened, refusal) = try Self.openSocketsUntilRefused(greedy!, limit: 5000)
        let refusedWith: Int32? = if case .reply(_, .error(let e)) = refusal { e } else { nil }
        #expect(refusedWith.map { [ENFILE, EMFILE, ENOBUFS].contains($0) } == true,
                "after \(opened) sockets the server answered \(refusal.map { "\($0)" } ?? "nothing") instead of ENFILE/EMFILE/ENOBUFS\n\(server.log)")

        // Connections that never say HELLO, more than fit: some wait in the listen backlog.
        var silent = try (0..<40).map { _ in try Raw(server.socketPath) }
        let refused: [Int32], other: [String]
        var served: [Raw]
        (served, refused, other) = Self.connectClients(server.socketPath, count: 80)
        #expect(other.isEmpty, "clients after exhaustion: \(other)\n\(server.log)")
        #expect(refused.allSatisfy { $0 == EUSERS }, "refusals: \(refused.map(Self.errnoName))")
        #expect(!refused.isEmpty, "80 more clients fit in 256 descriptors next to \(opened) sockets?\n\(server.log)")

        // Everything is held: the server must sleep, not spin on a listener it cannot accept from.
        try Self.expectIdle(server)

        // Once the clients leave, the server's descriptors come back and it serves a new client.
        greedy = nil
        served.removeAll() // closes them
        silent.removeAll()
        try Self.expectRecovered(server, baseline: baseline, port: 7451)
    }

    /// The server uses under 1% of a CPU over 2 s (it sleeps while it cannot accept).
    static func expectIdle(_ server: some RunningServer, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let share = try #require(cpuShare(server.pid, over: 2), "cannot read /proc/\(server.pid)/stat", sourceLocation: sourceLocation)
        #expect(share < 0.01, "the server used \(Int(share * 100))% of a CPU over 2 s while idle at its descriptor limit\n\(server.log)",
                sourceLocation: sourceLocation)
    }

    /// After every client left: the server's descriptors are back to `baseline` and a new client round-trips.
    static func expectRecovered(_ server: some RunningServer, baseline: Int, port: UInt16, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var now = -1
        #expect(waitUntil(timeout: 5) { now = ProcStats.descriptorTargets(server.pid)?.count ?? -1; return now <= baseline },
                "descriptors: \(baseline) at start, \(now) after every client left: \(descriptorSummary(server.pid))\n\(server.log)",
                sourceLocation: sourceLocation)
        let r = try FailureTests.roundTrip(server.socketPath, port: port)
        #expect(r.status == .exited(0) && r.line.hasPrefix("round-trip=ok"), "\(r.diagnostics)\n\(server.log)", sourceLocation: sourceLocation)
    }

    @Test("descriptor limit lowered under a running server: accept failures are refused or backed off, never spun on")
    func acceptFailureDoesNotSpin() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let baseline = try FailureTests.settledCounts(server).descriptors
        // The server sized its budget for the limit it started with; now the kernel has far fewer.
        let limit = baseline + 24
        let set = try ChildProcess.run("prlimit", ["--pid", "\(server.pid)", "--nofile=\(limit):\(limit)"], timeout: 10)
        try #require(set.succeeded, "\(set)")

        var silent = try (0..<40).map { _ in try Raw(server.socketPath) }
        let refused: [Int32], other: [String]
        var served: [Raw]
        (served, refused, other) = Self.connectClients(server.socketPath, count: 60)
        #expect(other.isEmpty, "clients at the lowered limit: \(other)\n\(server.log)")
        #expect(!refused.isEmpty, "60 clients fit in \(limit - baseline) spare descriptors?\n\(server.log)")
        try Self.expectIdle(server)
        // One warning now and then, not one per failed accept.
        let log = server.logPath.flatMap { TestFiles.read($0) } ?? ""
        let warnings = log.split(separator: "\n").filter { $0.contains("accept") }.count
        #expect(warnings < 20, "\(warnings) log lines about accept\n\(server.log.suffix(3000))")

        served.removeAll() // closes them
        silent.removeAll()
        try Self.expectRecovered(server, baseline: baseline, port: 7452)
    }

    // MARK: connections that never say HELLO

    @Test("a connection that never says HELLO is closed in time; a full set of them does not keep a client out")
    func silentConnectionsAreDropped() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let deadline = Deadline(seconds: 8)
        // More than --max-pending-clients (32): the rest wait in the listen backlog.
        let silent = try (0..<40).map { _ in try Raw(server.socketPath) }
        let r = try FailureTests.roundTrip(server.socketPath, port: 7461)
        #expect(r.status == .exited(0) && r.line.hasPrefix("round-trip=ok"), "a client next to 40 silent connections: \(r.diagnostics)\n\(server.log)")
        for (i, c) in silent.enumerated() {
            // The server closed it: recv says end of file (no reply is owed to a connection that asked nothing).
            #expect(c.waitForClose(timeout: deadline.remainingMilliseconds), "silent connection \(i) is still open 8 s after it connected\n\(server.log)")
        }
        #expect(server.log.contains("no HELLO within 2 s"), "\(server.log)")
        #expect(server.process.isRunning)
    }

    @Test("connections waiting for HELLO hold no --max-clients slot")
    func pendingConnectionsHoldNoSlot() throws {
        let server = try ServerProcess(["--max-clients", "2"])
        defer { server.stop() }
        let baseline = try FailureTests.settledCounts(server).descriptors
        let silent = try (0..<5).map { _ in try Raw(server.socketPath) }
        try #require(waitUntil(timeout: 5) { server.openDescriptorCount >= baseline + 5 }, "the server did not accept 5 connections")
        // With five connections open and pending, both slots are still free ...
        let a = try Self.helloClient(server.socketPath)
        let b = try Self.helloClient(server.socketPath)
        var stillOpen = silent.filter { c in
            var pfd = pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)
            return poll(&pfd, 1, 0) == 0
        }.count
        try #require(stillOpen == 5, "the silent connections were closed before the test could use them (2 s)")
        // ... and a third client is refused: the two sessions hold them.
        let c = try Raw(server.socketPath)
        try? c.send(FailureTests.hello())
        let o = c.next()
        var refused = false
        if case .reply(_, .error(EUSERS)) = o { refused = true }
        #expect(refused, "a third client with --max-clients 2: \(o)")
        #expect(c.waitForClose(), "the refused client was not disconnected")
        // The pending ones go (2 s), the sessions stay.
        stillOpen = silent.filter { !$0.waitForClose() }.count
        #expect(stillOpen == 0)
        for client in [a, b] {
            try client.send(Self.socketRequest(7))
            let reply = client.next()
            if case .reply(7, .socket) = reply {} else { Issue.record("a client session after the pending ones left: \(reply)") }
        }
    }

    // MARK: logs

    @Test("malformed control messages are logged once, not one line each, and the session survives 15")
    func malformedMessagesAreLoggedSparingly() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let c = try Self.helloClient(server.socketPath)
        for i in 0..<15 {
            try c.send([UInt8](repeating: UInt8(i), count: 24))
            let o = c.next()
            #expect(o == .reply(requestID: 0, .error(EBADMSG)), "garbage message \(i): \(o)")
        }
        try c.send(Self.socketRequest(40))
        let o = c.next()
        if case .reply(40, .socket) = o {} else { Issue.record("the session after 15 malformed messages: \(o)") }
        let lines = server.log.split(separator: "\n").filter { $0.contains("malformed control message") }
        // The first at once, then at most one a second: 15 replies read one by one take far less than 14 s.
        #expect(!lines.isEmpty && lines.count < 15, "\(lines.count) log lines for 15 malformed messages:\n\(lines.joined(separator: "\n"))")
    }

    // MARK: other users

    /// Whether the test runs as root; says SKIPPED (and why) when it does not.
    static func isRoot(skipping test: String, because reason: String) -> Bool {
        if getuid() == 0 { return true }
        print("SKIPPED: ServerAdmissionTests.\(test) needs root: \(reason)")
        return false
    }

    /// `python3` for a child that drops to another uid (the system one: a pyenv shim lives under /root).
    static var python: String { access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3" }

    /// A Python client that becomes `uid`, opens `count` raw connections to `path` (sending nothing),
    /// prints for each "connect=ERRNO" or "reply=HEX end=eof|open|data", then "done", and keeps its
    /// sockets until its stdin is closed.
    static func rawClient(as uid: UInt32, path: String, count: Int) throws -> ChildProcess {
        let script = """
        import os, socket, sys
        os.setgroups([]); os.setgid(\(uid)); os.setuid(\(uid))
        held = []
        for i in range(\(count)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect(sys.argv[1])
            except OSError as e:
                print(f"connect={e.errno}", flush=True)
                continue
            s.settimeout(5)
            reply = ""
            try:
                reply = s.recv(4096).hex()
                end = "eof" if s.recv(4096) == b"" else "data"
            except socket.timeout:
                end = "open"
            except OSError as e:
                end = f"errno{e.errno}"
            print(f"reply={reply} end={end}", flush=True)
            held.append(s)
        print("done", flush=True)
        sys.stdin.readline()
        """
        return try ChildProcess(python, ["-c", script, path], stdin: .pipe)
    }

    static func hexBytes(_ hex: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex, let j = hex.index(i, offsetBy: 2, limitedBy: hex.endIndex), let b = UInt8(hex[i..<j], radix: 16) {
            bytes.append(b)
            i = j
        }
        return bytes
    }

    @Test("a refused uid gets EACCES (request id 0) right after connecting, is closed at once and holds no slot")
    func refusedUserHoldsNoSlot() throws {
        guard Self.isRoot(skipping: "refusedUserHoldsNoSlot", because: "it runs a client as uid 65534") else { return }
        let server = try ServerProcess(["--max-clients", "1"])
        defer { server.stop() }
        // Let the kernel admit the other user, so that the refusal is the server's.
        try #require(chmod(server.socketPath, 0o666) == 0)
        let nobody = try Self.rawClient(as: 65534, path: server.socketPath, count: 3)
        defer { nobody.terminate() }
        var lines: [String] = []
        #expect(nobody.waitForLine(timeout: 20, skipped: &lines) { $0 == "done" } != nil, "\(nobody.diagnostics)")
        #expect(lines.count == 3, "\(lines)")
        for line in lines {
            let f = ChildProcess.fields(line)
            let reply = try? ControlMessage.decode(Self.hexBytes(f["reply"] ?? ""))
            #expect(reply == ControlMessage(requestID: 0, .error(EACCES)), "uid 65534 (it sent nothing): \(line)")
            #expect(f["end"] == "eof", "the server did not close the refused connection: \(line)")
        }
        // Its connections are still open on its side; the one slot is free for a client of ours.
        let ours = try Self.helloClient(server.socketPath)
        try ours.send(Self.socketRequest(2))
        let o = ours.next()
        if case .reply(2, .socket) = o {} else { Issue.record("our client next to the refused ones: \(o)") }
        #expect(server.log.contains("refused client of uid 65534"), "\(server.log)")
        nobody.closeInput()
    }

    @Test("--allow-uid grants access with an ACL, not mode 0777; others cannot even connect")
    func allowUIDUsesAnACL() throws {
        guard Self.isRoot(skipping: "allowUIDUsesAnACL", because: "it runs a client as uid 65534") else { return }
        do {
            let server = try ServerProcess(["--allow-uid", "65534"])
            defer { server.stop() }
            var info = stat()
            try #require(stat(server.socketPath, &info) == 0)
            #expect(info.st_mode & 0o007 == 0, "others may use the socket: mode \(String(info.st_mode & 0o777, radix: 8))")
            #expect(info.st_mode & 0o700 == 0o600, "mode \(String(info.st_mode & 0o777, radix: 8))")
            // owner, uid 65534, group, mask, other: 4 + 5 x 8 bytes.
            #expect(getxattr(server.socketPath, "system.posix_acl_access", nil, 0) == 44, "no ACL with one named user on \(server.socketPath)")
            let r = try FailureTests.roundTrip(server.socketPath, port: 7471, extra: ["--uid", "65534"])
            #expect(r.line == "round-trip=ok transport=shared-memory", "uid 65534 with --allow-uid 65534: \(r.diagnostics)\n\(server.log)")
        }
        do {
            let server = try ServerProcess(["--allow-uid", "12345"])
            defer { server.stop() }
            let r = try FailureTests.roundTrip(server.socketPath, port: 7472, extra: ["--uid", "65534"])
            // The kernel refuses the connect (no ACL entry): the server never hears of it.
            #expect(r.line == "socket-errno=\(EACCES)", "uid 65534 with --allow-uid 12345: \(r.diagnostics)\n\(server.log)")
            #expect(!server.log.contains("refused client of uid 65534"), "\(server.log)")
        }
        do {
            let server = try ServerProcess(["--allow-uid", "any"])
            defer { server.stop() }
            var info = stat()
            try #require(stat(server.socketPath, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o666, "--allow-uid any: mode \(String(info.st_mode & 0o777, radix: 8))")
        }
    }

    @Test("the default directory: made 0700 by the server; another owner's, a link, or a writable one is refused")
    func defaultDirectory() throws {
        guard Self.isRoot(skipping: "defaultDirectory", because: "it runs the server as uid 65534") else { return }
        // The server runs as uid 65534 so that its default directory is one no other test uses.
        let directory = "/tmp/socket-server-65534"
        let socketPath = directory + "/socket"
        TestFiles.removeTree(directory)
        defer { TestFiles.removeTree(directory) }
        // uid 65534 must be able to run the server wherever the checkout is (a fresh clone may sit in a
        // 0700 directory): run a copy from a directory anyone can read.
        let binDirectory = "/tmp/sko-nobody-bin-\(getpid())"
        let binary = binDirectory + "/socket-server"
        TestFiles.removeTree(binDirectory)
        try #require(mkdir(binDirectory, 0o755) == 0 && chmod(binDirectory, 0o755) == 0, "mkdir \(binDirectory): \(Errno.current)")
        defer { TestFiles.removeTree(binDirectory) }
        let copy = try ChildProcess("cp", [TestBinaries.path("socket-server"), binary], name: "cp")
        try #require(copy.finish(timeout: 30).0 == .exited(0) && chmod(binary, 0o755) == 0, "copy the server: \(copy.diagnostics)")
        func start() throws -> ChildProcess {
            try ChildProcess("setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", "env", "-u", "SOCKET_SERVER_PATH",
                                         "-u", "XDG_RUNTIME_DIR", binary, "--log-level", "info"],
                             name: "socket-server-nobody", orphanFiles: [socketPath])
        }
        func refusal(_ why: String) throws {
            let server = try start()
            defer { server.terminate() }
            #expect(server.waitForExit(timeout: 10) == .exited(1), "\(why): \(server.diagnostics)")
            #expect(server.logTail().contains(directory), "\(why): \(server.diagnostics)")
        }
        // Someone else's directory.
        try #require(mkdir(directory, 0o700) == 0)
        try refusal("a directory of root's")
        // Ours, but writable by others.
        try #require(chown(directory, 65534, 65534) == 0 && chmod(directory, 0o777) == 0)
        try refusal("a directory of mode 0777")
        // A link to a directory of ours.
        let elsewhere = try TestDirectory("sko-elsewhere")
        try #require(chown(elsewhere.path, 65534, 65534) == 0 && chmod(elsewhere.path, 0o700) == 0)
        try #require(rmdir(directory) == 0 && symlink(elsewhere.path, directory) == 0)
        try refusal("a symbolic link")
        try #require(unlink(directory) == 0)

        // None: the server makes it.
        let server = try start()
        defer { server.stop(SIGTERM, grace: 5); server.terminate() }
        #expect(waitUntil(timeout: 10) { !server.isRunning || ServerProcess.accepts(socketPath) }, "\(server.diagnostics)")
        var info = stat()
        try #require(lstat(directory, &info) == 0, "\(server.diagnostics)")
        #expect(info.st_mode & S_IFMT == S_IFDIR && info.st_uid == 65534 && info.st_mode & 0o777 == 0o700,
                "uid \(info.st_uid), mode \(String(info.st_mode, radix: 8))")
        // Only its user gets through: another user cannot even reach the socket in it.
        let stranger = try Self.rawClient(as: 65533, path: socketPath, count: 1)
        defer { stranger.terminate() }
        let line = stranger.waitForLine(timeout: 10) { $0.hasPrefix("connect=") || $0.hasPrefix("reply=") }
        #expect(line == "connect=\(EACCES)", "uid 65533 at \(socketPath): \(line ?? "nothing") \(stranger.diagnostics)")
        let r = try FailureTests.roundTrip(socketPath, port: 7481, extra: ["--uid", "65534"])
        #expect(r.line.hasPrefix("round-trip=ok"), "its own user: \(r.diagnostics)\n\(server.diagnostics)")
    }
}

/// What the admission checks need of a server, whether ServerProcess or a LimitedServer.
protocol RunningServer {
    var pid: pid_t { get }
    var socketPath: String { get }
    var log: String { get }
}

extension ServerProcess: RunningServer {}
extension ServerAdmissionTests.LimitedServer: RunningServer {}
