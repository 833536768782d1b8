import Foundation
import SocketClient
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// README promises about the server's limits and the library's calls, each against a server started
/// with the option under test. The in-process checks run in exit tests, as `UDPSemanticsTests` does
/// (see there); the rest run client-peer processes.
@Suite("README promises: limits, options, calls")
struct PromiseLimitsTests {
    func run(_ check: String, _ transport: Transport = .processVM, serverArguments: [String],
             sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await UDPSemanticsTests().run(check, transport, serverArguments: serverArguments, sourceLocation: sourceLocation)
    }

    @Test("--max-sockets 8: the 9th socket of a client fails with EMFILE; closing one frees a place")
    func maxSockets() async throws { try await run("maxSockets", serverArguments: ["--max-sockets", "8"]) }

    @Test("a socket that does not fit in the client's segment fails with ENOBUFS (--segment-size 1M)")
    func segmentFull() async throws { try await run("segmentFull", serverArguments: ["--segment-size", "1M"]) }

    @Test("--stream-ring-size 64K: SO_RCVBUF and SO_SNDBUF of a TCP socket report 65536")
    func streamRingSize() async throws { try await run("streamRingSize", serverArguments: ["--stream-ring-size", "64K"]) }

    @Test("a full listen backlog: backlog + 1 connections complete, as many wait in connect, the next is refused")
    func listenBacklogFull() async throws { try await run("listenBacklogFull", serverArguments: []) }

    @Test("SO_BROADCAST, IP_TTL, IP_TOS, IPV6_UNICAST_HOPS on UDP sockets: set values are read back")
    func ipOptions() async throws { try await run("ipOptions", serverArguments: []) }

    @Test("sko_sendmsg gathers its iovecs, over UDP (to msg_name) and TCP")
    func sendmsg() async throws { try await run("sendmsg", serverArguments: []) }

    @Test("select and epoll on the descriptors: readable with a datagram, a pending connection")
    func selectAndEpoll() async throws { try await run("selectAndEpoll", serverArguments: []) }

    @Test("a full UDP receive ring drops datagrams and counts them (the server logs the count at close)",
          arguments: Transport.allCases)
    func receiveRingDrops(_ t: Transport) async throws {
        let server = try ServerProcess(["--datagram-transport", t.rawValue, "--datagram-ring-items", "33"])
        defer { server.stop() }
        let stderrPath = server.socketPath + ".child-stderr"
        let resultPath = server.socketPath + ".result"
        defer { unlink(stderrPath); unlink(resultPath) }
        let ok = await #expect(processExitsWith: .success, "receiveRingDrops over \(t.rawValue)") {
            [path = server.socketPath as String, transport = t.rawValue as String, stderrPath = stderrPath as String] in
            setenv("PROMISE_RESULT", path + ".result", 1)
            try UDPChecks.run("receiveRingDrops", serverPath: path, transport: transport, stderrPath: stderrPath)
        }
        if ok == nil { Issue.record("child stderr: \((try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "")") }
        let received = try #require(TestFiles.read(resultPath).flatMap { Int($0) }, "the check wrote no result")
        let dropped = PromiseChecks.datagramsSent - received
        #expect(dropped > 0, "nothing was dropped: \(received) of \(PromiseChecks.datagramsSent) received")
        #expect(waitUntil(timeout: 5) { server.log.contains("\(dropped) datagrams dropped on receive") },
                "the server's log does not count \(dropped) drops:\n\(server.log)")
    }

    // MARK: clients

    /// A server with --max-clients 1 and its one client (client-peer holding a socket).
    static func fullServer() throws -> (ServerProcess, ChildProcess) {
        let server = try ServerProcess(["--max-clients", "1"])
        let holder = try ChildProcess(TestBinaries.path("client-peer"), ["hold-sockets", "1", "--socket-path", server.socketPath])
        let ready = holder.waitForLine(timeout: 20) { $0.hasPrefix("ready") || $0.hasPrefix("error") }
        guard ready == "ready sockets=1" else {
            server.discard()
            throw TestSupportError("client-peer: \(holder.diagnostics)")
        }
        return (server, holder)
    }

    @Test("--max-clients 1: a second client is refused with EUSERS")
    func maxClientsRefusesWithEUSERS() throws {
        let (server, holder) = try Self.fullServer()
        defer { holder.terminate(); server.stop() }
        let refused = try FailureTests.roundTrip(server.socketPath, port: 7451)
        #expect(refused.line == "socket-errno=\(EUSERS)", "second client with --max-clients 1: \(refused.diagnostics)")
    }

    @Test("--max-clients 1: a second client is refused; once the first is gone, a client is served again")
    func maxClientsFreesTheSlot() throws {
        let (server, holder) = try Self.fullServer()
        defer { server.stop() }
        let refused = try FailureTests.roundTrip(server.socketPath, port: 7451)
        #expect(refused.line.hasPrefix("socket-errno="), "second client with --max-clients 1: \(refused.diagnostics)")
        #expect(waitUntil(timeout: 2) { server.log.contains("--max-clients 1 reached") }, "\(server.log)")
        holder.kill(SIGKILL)
        holder.waitForExit(timeout: 5)
        var line = ""
        #expect(waitUntil(timeout: 10, interval: 0.1) {
            line = (try? FailureTests.roundTrip(server.socketPath, port: 7452).line) ?? ""
            return line.hasPrefix("round-trip=ok")
        }, "after the first client died: \(line)")
    }

    @Test("--allow-uid any serves a client of another uid", .enabled(if: getuid() == 0, "needs root: runs a client as uid 65534"))
    func allowAnyUID() throws {
        let server = try ServerProcess(["--allow-uid", "any"])
        defer { server.stop() }
        let r = try FailureTests.roundTrip(server.socketPath, port: 7453, extra: ["--uid", "65534"])
        #expect(r.line == "round-trip=ok transport=shared-memory", "\(r.diagnostics)\n\(server.log)")
    }

    @Test("--cpu pins the stack thread; --numa-node binds each client segment to that node; a CPU that does not exist: exit 1",
          .enabled(if: sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2, "needs 2 CPUs"),
          .enabled(if: access("/sys/devices/system/node/node0", F_OK) == 0, "needs NUMA node 0 (libnuma)"))
    func placement() throws {
        let server = try ServerProcess(["--cpu", "1", "--numa-node", "0"])
        defer { server.stop() }
        // The event loop runs on the main thread, which the server pinned.
        let status = ProcStats.readFile("/proc/\(server.pid)/task/\(server.pid)/status") ?? ""
        let allowed = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
        #expect(allowed.map { $0.split(separator: "\t").last == "1" } == true, "stack thread: \(allowed ?? "no Cpus_allowed_list")")
        let holder = try ChildProcess(TestBinaries.path("client-peer"), ["hold-sockets", "1", "--socket-path", server.socketPath])
        let ready = holder.waitForLine(timeout: 20) { $0.hasPrefix("ready") || $0.hasPrefix("error") }
        try #require(ready == "ready sockets=1", "client-peer: \(holder.diagnostics)")
        let segment = (ProcStats.readFile("/proc/\(server.pid)/numa_maps") ?? "").split(separator: "\n").filter { $0.contains("socket-server-client") }
        #expect(!segment.isEmpty && segment.allSatisfy { $0.contains(" bind:0 ") }, "the client segment's NUMA policy: \(segment)")
        let bad = try ChildProcess.run(TestBinaries.path("socket-server"), ["--socket-path", server.socketPath + ".bad", "--cpu", "4095"], timeout: 20)
        #expect(bad.status == .exited(1) && bad.errorOutput.contains("cannot pin"), "\(bad)")
        #expect(access(server.socketPath + ".bad", F_OK) != 0)
    }

    /// `auto`: the server offers process-vm to a client of its own uid, and the client proves the
    /// kernel lets it read the server's memory before it uses it. The client runs under strace, which
    /// makes every process_vm_readv fail with EPERM (as the kernel does for a non-dumpable or
    /// foreign server): the client falls back to shared memory. Without the injection: process-vm.
    @Test("auto: process-vm where the kernel permits it; shared memory where process_vm_readv fails (the client's probe)",
          arguments: [false, true])
    func autoProbeAndFallback(refused: Bool) throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let inject = refused ? ["-e", "inject=process_vm_readv:error=EPERM"] : []
        // (A shell runs strace: strace would wait for the tether's watcher, a child of its own.)
        let peer = try ChildProcess("/bin/sh", ["-c", "strace \"$@\"; status=$?; exit $status", "sh", "-f", "-qq", "-o", "/dev/null",
                                                "-e", "trace=process_vm_readv"] + inject
                                                + [TestBinaries.path("client-peer"), "round-trip", "7454", "--socket-path", server.socketPath,
                                                   "--transport", "auto"], name: "strace-client-peer")
        let (status, output) = peer.finish(timeout: 30)
        let expected = refused ? "shared-memory" : "process-vm"
        #expect(status == .exited(0) && output.last == "round-trip=ok transport=\(expected)", "\(peer.diagnostics)\n\(server.log)")
        // The server offered process-vm: the fallback was the client's own doing.
        #expect(server.log.contains("datagram transport process-vm"), "\(server.log)")
    }
}

// MARK: - the checks (run in the child process)

enum PromiseChecks {
    static let all: [String: @Sendable () throws -> Void] = [
        "maxSockets": maxSockets, "segmentFull": segmentFull, "streamRingSize": streamRingSize,
        "listenBacklogFull": listenBacklogFull, "ipOptions": ipOptions, "sendmsg": sendmsg,
        "selectAndEpoll": selectAndEpoll, "receiveRingDrops": receiveRingDrops,
    ]

    static func socketErrno(_ type: Int32) -> (fd: Int32, errno: Int32) {
        let fd = sko_socket(AF_INET, type, 0)
        return (fd, fd < 0 ? errno : 0)
    }

    static func maxSockets() throws {
        var fds: [Int32] = []
        for i in 0..<8 {
            let r = socketErrno(i == 0 ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue))
            try #require(r.fd >= 0, "socket \(i + 1) of 8: errno \(r.errno)")
            fds.append(r.fd)
        }
        for type in [Int32(SOCK_DGRAM.rawValue), Int32(SOCK_STREAM.rawValue)] {
            let ninth = socketErrno(type)
            #expect(ninth.fd == -1 && ninth.errno == EMFILE, "9th socket (type \(type)): \(ninth)")
        }
        #expect(sko_close(fds.removeLast()) == 0)
        let again = socketErrno(Int32(SOCK_DGRAM.rawValue))
        #expect(again.fd >= 0, "after a close: \(again)")
        for fd in fds + [again.fd] where fd >= 0 { _ = sko_close(fd) }
    }

    static func segmentFull() throws {
        var fds: [Int32] = []
        var last = (fd: Int32(0), errno: Int32(0))
        for _ in 0..<1000 {
            last = socketErrno(Int32(SOCK_DGRAM.rawValue))
            guard last.fd >= 0 else { break }
            fds.append(last.fd)
        }
        #expect(last.fd == -1 && last.errno == ENOBUFS, "after \(fds.count) sockets in a 1 MiB segment: \(last)")
        #expect(!fds.isEmpty, "not even one socket fits in a 1 MiB segment")
        if let fd = fds.popLast() { #expect(sko_close(fd) == 0) }
        let again = socketErrno(Int32(SOCK_DGRAM.rawValue))
        #expect(again.fd >= 0, "after a close, the space is reused: \(again)")
        for fd in fds + [again.fd] where fd >= 0 { _ = sko_close(fd) }
    }

    static func streamRingSize() throws {
        for family in [SocketAddress.Family.inet, .inet6] {
            let s = try Socket(family, .stream)
            #expect(try s.option(level: SOL_SOCKET, name: SO_RCVBUF) == 65536)
            #expect(try s.option(level: SOL_SOCKET, name: SO_SNDBUF) == 65536)
        }
    }

    static func connectErrno(_ fd: Int32, _ address: SocketAddress) -> Int32 {
        address.withSockAddr { sko_connect(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) } == 0 ? 0 : errno
    }

    static func listenBacklogFull() throws {
        // Linux's accept queue holds backlog + 1 connections; beyond that it drops SYNs, so a
        // connect stays in progress until there is room. The stack holds as many again waiting
        // unseen (their connect in progress) and refuses past that.
        let address = SocketAddress(host: "127.0.0.1", port: 7461)!
        let listener = try Socket(.inet, .stream)
        try listener.bind(to: address)
        try listener.listen(backlog: 1)
        var outcomes: [Int32] = []
        var clients: [Socket] = []
        // backlog + 1 = 2 complete, 128 wait, the 131st is refused.
        for i in 0..<131 {
            let c = try Socket(.inet, .stream, nonBlocking: true)
            #expect(connectErrno(c.fileDescriptor, address) == EINPROGRESS)
            var p = pollfd(fd: c.fileDescriptor, events: Int16(POLLOUT), revents: 0)
            // (Only the first three and the last are worth a wait: the others are like the third.)
            _ = sko_poll(&p, 1, i < 3 || i == 130 ? 1000 : 0)
            var err: Int32 = -1
            var len = socklen_t(4)
            if p.revents & Int16(POLLOUT) != 0 { _ = sko_getsockopt(c.fileDescriptor, SOL_SOCKET, SO_ERROR, &err, &len) }
            outcomes.append(p.revents & Int16(POLLOUT) == 0 ? EINPROGRESS : err)
            clients.append(c)
        }
        #expect(Array(outcomes.prefix(3)) == [0, 0, EINPROGRESS] && outcomes.last == ECONNREFUSED,
                "backlog 1, never accepted: \(outcomes.prefix(3)) ... \(outcomes.last ?? -1)")
        #expect(outcomes.dropFirst(2).dropLast().allSatisfy { $0 == EINPROGRESS }, "a waiting connect completed or failed: \(outcomes)")
        // Taking a connection makes room: the first waiting connect completes.
        let (first, _) = try listener.accept()
        first.close()
        var p = pollfd(fd: clients[2].fileDescriptor, events: Int16(POLLOUT), revents: 0)
        #expect(sko_poll(&p, 1, 5000) == 1 && p.revents & Int16(POLLOUT) != 0, "the waiting connect did not complete")
        // The connection in the backlog is still there to accept.
        let (accepted, _) = try listener.accept()
        accepted.close()
    }

    static func ipOptions() throws {
        let v4 = try Socket(.inet, .datagram), v6 = try Socket(.inet6, .datagram)
        #expect(try v4.option(level: SOL_SOCKET, name: SO_BROADCAST) == 0)
        try v4.setOption(level: SOL_SOCKET, name: SO_BROADCAST, 1)
        #expect(try v4.option(level: SOL_SOCKET, name: SO_BROADCAST) != 0)
        try v4.setOption(level: SOL_SOCKET, name: SO_BROADCAST, 0)
        #expect(try v4.option(level: SOL_SOCKET, name: SO_BROADCAST) == 0)
        try v4.setOption(level: Int32(IPPROTO_IP), name: IP_TTL, 7)
        #expect(try v4.option(level: Int32(IPPROTO_IP), name: IP_TTL) == 7)
        try v4.setOption(level: Int32(IPPROTO_IP), name: IP_TOS, 0x10)
        #expect(try v4.option(level: Int32(IPPROTO_IP), name: IP_TOS) == 0x10)
        try v6.setOption(level: Int32(IPPROTO_IPV6), name: IPV6_UNICAST_HOPS, 9)
        #expect(try v6.option(level: Int32(IPPROTO_IPV6), name: IPV6_UNICAST_HOPS) == 9)
        // Dual-stack by default, as on Linux; IPv6-only when asked (before bind).
        #expect(try v6.option(level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY) == 0)
        try v6.setOption(level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, 1)
        #expect(try v6.option(level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY) == 1)
    }

    /// sko_sendmsg with the pieces in `parts`, to `address` when given.
    static func sendmsg(_ fd: Int32, _ parts: [[UInt8]], to address: SocketAddress?) -> Int {
        let buffers = parts.map { p -> UnsafeMutableRawBufferPointer in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, p.count), alignment: 1)
            b.copyBytes(from: p)
            return b
        }
        defer { buffers.forEach { $0.deallocate() } }
        var iovecs = zip(buffers, parts).map { iovec(iov_base: $0.0.baseAddress, iov_len: $0.1.count) }
        return iovecs.withUnsafeMutableBufferPointer { iov in
            func send(_ name: UnsafeMutableRawPointer?, _ length: Int) -> Int {
                var msg = msghdr(msg_name: name, msg_namelen: socklen_t(length), msg_iov: iov.baseAddress, msg_iovlen: iov.count,
                                 msg_control: nil, msg_controllen: 0, msg_flags: 0)
                return sko_sendmsg(fd, &msg, 0)
            }
            guard let address else { return send(nil, 0) }
            return address.withSockAddr { send(UnsafeMutableRawPointer(mutating: $0), $1) }
        }
    }

    static func sendmsg() throws {
        let parts: [[UInt8]] = [Array("gathered ".utf8), [], Array("from ".utf8), UDPChecks.pattern(3000)]
        let joined = parts.flatMap { $0 }
        let a = try UDPChecks.bound(UDPChecks.v4(7471)), b = try UDPChecks.bound(UDPChecks.v4(7472))
        #expect(sendmsg(b.fileDescriptor, parts, to: UDPChecks.v4(7471)) == joined.count)
        let got = try UDPChecks.receive(a)
        #expect(got.bytes == joined && got.from == UDPChecks.v4(7472), "one datagram of the gathered pieces")
        // TCP: the pieces arrive as one stream.
        let address = SocketAddress(host: "127.0.0.1", port: 7473)!
        let listener = try Socket(.inet, .stream)
        try listener.bind(to: address)
        try listener.listen()
        let client = try Socket(.inet, .stream)
        try client.connect(to: address)
        let (server, _) = try listener.accept()
        try server.setTimeouts(receive: 5000, send: 5000)
        #expect(sendmsg(client.fileDescriptor, parts, to: nil) == joined.count)
        var received: [UInt8] = []
        while received.count < joined.count {
            let (bytes, _) = try server.receive(maxBytes: 65536)
            if bytes.isEmpty { break }
            received += bytes
        }
        #expect(received == joined)
    }

    static func selectAndEpoll() throws {
        let a = try UDPChecks.bound(UDPChecks.v4(7481)), b = try UDPChecks.bound(UDPChecks.v4(7482))
        let fd = a.fileDescriptor
        func selectReadable(_ fd: Int32, _ milliseconds: Int) -> Bool {
            var set = fd_set()
            withUnsafeMutableBytes(of: &set) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
            withUnsafeMutableBytes(of: &set) { bits in
                bits.baseAddress!.assumingMemoryBound(to: Int.self)[Int(fd) / Int.bitWidth] |= 1 << (Int(fd) % Int.bitWidth)
            }
            var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
            return select(fd + 1, &set, nil, nil, &tv) == 1
        }
        #expect(!selectReadable(fd, 0), "select: a fresh socket is not readable")
        let ep = Epoll()
        try #require(ep.fd >= 0)
        try #require(ep.add(fd) == 0)
        #expect(ep.wait(0).isEmpty, "epoll: a fresh socket is not readable")
        try b.send(Array("wake".utf8), to: UDPChecks.v4(7481))
        #expect(selectReadable(fd, 5000), "select: no readability within 5 s of a datagram")
        let woke = ep.wait(5000)
        #expect(woke.count == 1 && woke.first?.fd == fd && woke.first.map { $0.events & Epoll.input != 0 } == true, "epoll: \(woke)")
        #expect(try a.receive(maxBytes: 64, flags: Int32(MSG_DONTWAIT)).bytes == Array("wake".utf8))
        // A listener with a connection to accept.
        let address = SocketAddress(host: "127.0.0.1", port: 7483)!
        let listener = try Socket(.inet, .stream)
        try listener.bind(to: address)
        try listener.listen()
        try #require(ep.add(listener.fileDescriptor) == 0)
        let client = try Socket(.inet, .stream)
        try client.connect(to: address)
        var ready = false
        let deadline = Deadline(seconds: 5)
        while !ready && !deadline.expired {
            let events = ep.wait(deadline.remainingMilliseconds)
            if events.isEmpty { break }
            ready = events.contains { $0.fd == listener.fileDescriptor }
        }
        #expect(ready, "epoll: the listener never became readable with a connection pending")
        #expect(selectReadable(listener.fileDescriptor, 0), "select: the listener with a connection pending")
        _ = try listener.accept()
    }

    static let datagramsSent = 200

    static func receiveRingDrops() throws {
        let a = try UDPChecks.bound(UDPChecks.v4(7491)), b = try UDPChecks.bound(UDPChecks.v4(7492))
        let marker = try UDPChecks.bound(UDPChecks.v4(7493))
        for i in 0..<datagramsSent {
            var n = UInt32(i)
            try withUnsafeBytes(of: &n) { _ = try b.send($0, to: UDPChecks.v4(7491)) }
        }
        // The stack delivers in order: once the marker arrived, it has dealt with all 200.
        try b.send([1], to: UDPChecks.v4(7493))
        _ = try UDPChecks.receive(marker)
        var received: [UInt32] = []
        while let (bytes, _) = try? a.receive(maxBytes: 64, flags: Int32(MSG_DONTWAIT)) {
            received.append(bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        }
        #expect(!received.isEmpty && received.count < datagramsSent, "received \(received.count) of \(datagramsSent) on a 33-item ring nobody read")
        #expect(received == received.sorted() && Set(received).count == received.count, "in order, no duplicates: \(received)")
        a.close() // the server logs the count now
        let path = try #require(ProcessInfo.processInfo.environment["PROMISE_RESULT"])
        try TestFiles.write(path, "\(received.count)")
    }
}

/// epoll(7), declared here: Glibc's Swift module does not export it. `struct epoll_event` is packed
/// on x86_64 (12 bytes: events, then the 64-bit data), naturally aligned elsewhere (16 bytes).
final class Epoll {
    static let input: UInt32 = 0x001 // EPOLLIN
    #if arch(x86_64)
    static let eventSize = 12, dataOffset = 4
    #else
    static let eventSize = 16, dataOffset = 8
    #endif
    let fd = sysEpollCreate1(O_CLOEXEC)

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// EPOLL_CTL_ADD for input, with the descriptor as the event's data.
    func add(_ target: Int32) -> Int32 {
        var event = [UInt8](repeating: 0, count: Self.eventSize)
        event.withUnsafeMutableBytes {
            $0.storeBytes(of: Self.input, toByteOffset: 0, as: UInt32.self)
            $0.storeBytes(of: UInt64(target), toByteOffset: Self.dataOffset, as: UInt64.self)
        }
        return event.withUnsafeMutableBytes { sysEpollCtl(fd, 1, target, $0.baseAddress) }
    }

    /// epoll_wait for up to 8 events: (descriptor, events) of each.
    func wait(_ timeoutMilliseconds: Int32) -> [(fd: Int32, events: UInt32)] {
        var buffer = [UInt8](repeating: 0, count: 8 * Self.eventSize)
        let n = buffer.withUnsafeMutableBytes { sysEpollWait(fd, $0.baseAddress, 8, timeoutMilliseconds) }
        return (0..<max(0, Int(n))).map { i in
            buffer.withUnsafeBytes {
                (Int32(truncatingIfNeeded: $0.loadUnaligned(fromByteOffset: i * Self.eventSize + Self.dataOffset, as: UInt64.self)),
                 $0.loadUnaligned(fromByteOffset: i * Self.eventSize, as: UInt32.self))
            }
        }
    }
}

@_silgen_name("epoll_create1") private func sysEpollCreate1(_ flags: Int32) -> Int32
@_silgen_name("epoll_ctl") private func sysEpollCtl(_ epfd: Int32, _ op: Int32, _ fd: Int32, _ event: UnsafeMutableRawPointer?) -> Int32
@_silgen_name("epoll_wait") private func sysEpollWait(_ epfd: Int32, _ events: UnsafeMutableRawPointer?, _ maxEvents: Int32, _ timeout: Int32) -> Int32
