import Foundation
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

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
        let share = try #require(Self.cpuShare(server.pid, over: 2), "cannot read /proc/\(server.pid)/stat")
        #expect(share < 0.01, "the server used \(Int(share * 100))% of a CPU over 2 s while idle at its descriptor limit\n\(server.log)")

        // Once the clients leave, the server's descriptors come back and it serves a new client.
        greedy = nil
        served.removeAll() // closes them
        silent.removeAll()
        var now = -1
        #expect(waitUntil(timeout: 5) { now = ProcStats.descriptorTargets(server.pid)?.count ?? -1; return now <= baseline },
                "descriptors: \(baseline) at start, \(now) after every client left: \(Self.descriptorSummary(server.pid))\n\(server.log)")
        let r = try FailureTests.roundTrip(server.socketPath, port: 7451)
        #expect(r.status == .exited(0) && r.line.hasPrefix("round-trip=ok"), "\(r.diagnostics)\n\(server.log)")
    }

    @Test("descriptor limit lowered under a running server: accept failures are refused or backed off, never spun on")
    func acceptFailureDoesNotSpin() throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let baseline = FailureTests.settledCounts(server).descriptors
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
        let share = try #require(Self.cpuShare(server.pid, over: 2), "cannot read /proc/\(server.pid)/stat")
        #expect(share < 0.01, "the server used \(Int(share * 100))% of a CPU over 2 s while idle at its descriptor limit\n\(server.log)")
        // One warning now and then, not one per failed accept.
        let log = server.logPath.flatMap { TestFiles.read($0) } ?? ""
        let warnings = log.split(separator: "\n").filter { $0.contains("accept") }.count
        #expect(warnings < 20, "\(warnings) log lines about accept\n\(server.log.suffix(3000))")

        served.removeAll() // closes them
        silent.removeAll()
        #expect(waitUntil(timeout: 5) { server.openDescriptorCount <= baseline },
                "descriptors did not come back to \(baseline): \(Self.descriptorSummary(server.pid))\n\(server.log)")
        let r = try FailureTests.roundTrip(server.socketPath, port: 7452)
        #expect(r.status == .exited(0) && r.line.hasPrefix("round-trip=ok"), "\(r.diagnostics)\n\(server.log)")
    }
}
