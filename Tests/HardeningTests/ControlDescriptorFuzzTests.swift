import CShims
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 9: the control fuzz again, with garbage descriptors (pipes, an eventfd, /dev/null, a memfd,
/// sockets) attached through SCM_RIGHTS to random, mutated and valid messages.
@Suite("Control fuzz with descriptors", .serialized)
struct ControlDescriptorFuzzTests {
    static let messages = 20_000

    /// Descriptors of every kind a client could attach, owned here.
    final class Garbage {
        var pipe: [Int32] = [-1, -1]
        var pair: [Int32] = [-1, -1]
        var others: [Int32] = []

        init() throws {
            try #require(pipe2(&pipe, O_CLOEXEC) == 0)
            try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
            others = [cshims_eventfd(0), open("/dev/null", O_RDWR | O_CLOEXEC), cshims_memfd_segment("sko-garbage", 4096),
                      socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)]
            try #require(others.allSatisfy { $0 >= 0 })
        }

        /// What may be attached: both pipe ends, our end of the socket pair, and the rest.
        var attachable: [Int32] { pipe + [pair[0]] + others }

        deinit { (pipe + pair + others).filter { $0 >= 0 }.forEach { close($0) } }
    }

    /// The next thing the server sends on `fd` within 5 s: a decoded reply, "closed", or nil (silence).
    enum Answer { case reply(Reply), undecodable, closed }

    static func answer(_ fd: Int32) -> Answer? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 5000) == 1 else { return nil }
        do {
            guard let packet = try DescriptorPassing.receive(fd, maxBytes: 4096, nonBlocking: true) else { return nil }
            packet.closeDescriptors()
            guard let m = try? ControlMessage.decode(packet.bytes), case .reply(let r) = m.payload else { return .undecodable }
            return .reply(r)
        } catch {
            return .closed
        }
    }

    /// sendmsg with any number of descriptors (the library's own helper stops at 8, as the server's
    /// receive buffer does: more must reach the server to test what it does with them).
    static func send(_ fd: Int32, _ bytes: [UInt8], _ descriptors: [Int32]) -> Int {
        let header = MemoryLayout<cmsghdr>.size
        let dataLength = descriptors.count * MemoryLayout<Int32>.size
        var control = [UInt64](repeating: 0, count: (header + dataLength + 7) / 8) // CMSG_SPACE, 8-aligned
        return bytes.withUnsafeBytes { data in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: data.baseAddress), iov_len: data.count)
                var msg = msghdr()
                msg.msg_iovlen = 1
                if !descriptors.isEmpty {
                    let cmsg = c.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                    cmsg.pointee.cmsg_len = header + dataLength // CMSG_LEN
                    cmsg.pointee.cmsg_level = SOL_SOCKET
                    cmsg.pointee.cmsg_type = Int32(SCM_RIGHTS)
                    for (i, d) in descriptors.enumerated() { c.storeBytes(of: d, toByteOffset: header + i * 4, as: Int32.self) }
                    msg.msg_control = c.baseAddress
                    msg.msg_controllen = c.count
                }
                return withUnsafeMutablePointer(to: &iov) { iovPointer in
                    msg.msg_iov = iovPointer
                    return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                }
            }
        }
    }

    static func randomRequest(_ rng: inout SeededRandom, handles: [UInt32]) -> Request {
        let handle = handles.isEmpty || rng.oneIn(4) ? UInt32(truncatingIfNeeded: rng.next()) : rng.pick(handles)
        let address = rng.oneIn(2) ? SocketAddress(host: "127.0.0.1", port: UInt16(rng.below(65_536)))!
                                   : SocketAddress(host: "::1", port: UInt16(rng.below(65_536)))!
        let types = [Int32(SOCK_STREAM.rawValue), Int32(SOCK_DGRAM.rawValue), Int32(rng.below(16))]
        switch rng.below(12) {
        case 0, 1: return .socket(domain: rng.pick([AF_INET, AF_INET6, Int32(rng.below(64))]), type: rng.pick(types), protocol: 0)
        case 2: return .bind(handle: handle, address: address)
        case 3: return .listen(handle: handle, backlog: Int32(truncatingIfNeeded: rng.next()))
        case 4: return .accept(handle: handle, flags: 0)
        case 5: return .connect(handle: handle, address: address)
        case 6: return .shutdown(handle: handle, how: Int32(rng.below(4)))
        case 7: return .close(handle: handle)
        case 8: return .getsockname(handle: handle)
        case 9: return .getsockopt(handle: handle, level: SOL_SOCKET, name: Int32(rng.below(64)), maxLength: UInt32(rng.below(300)))
        case 10: return .setsockopt(handle: handle, level: SOL_SOCKET, name: Int32(rng.below(64)),
                                    value: (0..<rng.below(12)).map { _ in UInt8(rng.below(256)) })
        default: return .ioctl(handle: handle, request: UInt32(truncatingIfNeeded: rng.next()), argument: rng.next())
        }
    }

    @Test("20,000 control messages with garbage descriptors: the server keeps none, lives, and serves a normal client")
    func garbageDescriptors() throws {
        let server = try Hardening.server()
        defer { server.stop() }
        let echoPort: UInt16 = 7621
        let echo = try Hardening.echoServer("udp-echo-server", server, port: echoPort)
        defer { echo.terminate() }
        let baseline = Hardening.settledDescriptors(server)
        let garbage = try Garbage()
        let seed = UInt64(getpid()) &* 7919
        print("control fuzz with descriptors: seed \(seed)")
        var rng = SeededRandom(seed: seed)

        var fd: Int32 = -1
        var handles: [UInt32] = []
        var sessions = 0, closed = 0, replies = 0, errors = 0, silent = 0
        func hangUp() {
            if fd >= 0 { close(fd) }
            fd = -1
            handles = []
        }
        defer { hangUp() }
        for n in 0..<Self.messages {
            if fd < 0 {
                fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                try #require(fd >= 0 && connectUnix(fd, server.socketPath) == 0,
                             "connect \(sessions + 1) after \(n) messages: errno \(errno)\n\(Hardening.death(server))")
                sessions += 1
            }
            var bytes: [UInt8]
            switch n % 6 {
            case 0, 1: bytes = ControlMessage(requestID: UInt32(n), Self.randomRequest(&rng, handles: handles)).encoded()
            // Shared memory only: the server keeps the process-vm send buffers of a session it ends
            // (and a pidfd) until the client process exits, and this client is the test process
            // itself, whose descriptor count is checked below. The scribbler test covers process-vm.
            case 2: bytes = ControlMessage(requestID: UInt32(n), .hello(version: ControlMessage.version, transport: .sharedMemory)).encoded()
            case 3: bytes = (0..<rng.below(600)).map { _ in UInt8(rng.below(256)) }
            case 4:
                bytes = ControlMessage(requestID: UInt32(n), Self.randomRequest(&rng, handles: handles)).encoded()
                for _ in 0..<(1 + rng.below(4)) { bytes[rng.below(bytes.count)] = UInt8(rng.below(256)) }
            default:
                bytes = ControlMessage(requestID: UInt32(n), Self.randomRequest(&rng, handles: handles)).encoded()
                bytes = Array(bytes[..<rng.below(bytes.count + 1)])
            }
            // Mostly a few descriptors, sometimes more than a server buffer takes, rarely none.
            let attached = rng.oneIn(8) ? [] : (0..<(rng.oneIn(6) ? 9 + rng.below(8) : 1 + rng.below(4))).map { _ in rng.pick(garbage.attachable) }
            // An empty packet without descriptors is end of stream for SEQPACKET: skip it.
            if bytes.isEmpty && attached.isEmpty { bytes = [0] }
            if Self.send(fd, bytes, attached) < 0 {
                // The server ended the session (e.g. after 16 malformed messages).
                #expect(errno == EPIPE || errno == ECONNRESET, "sendmsg of message \(n): errno \(errno)")
                closed += 1
                hangUp()
                continue
            }
            switch Self.answer(fd) {
            case .reply(let r)?:
                replies += 1
                if case .error = r { errors += 1 }
                if case .socket(let info) = r { handles.append(info.handle) }
            case .undecodable?:
                Issue.record("undecodable reply to message \(n)")
            case .closed?:
                closed += 1
                hangUp()
            case nil:
                silent += 1
                hangUp()
            }
            if !server.process.isRunning { break }
        }
        hangUp()
        print("control fuzz with descriptors: \(Self.messages) messages, \(sessions) sessions, \(replies) replies (\(errors) errors), \(closed) sessions closed by the server, \(silent) unanswered")
        #expect(server.process.isRunning, "during the fuzz: \(Hardening.death(server))")
        #expect(silent == 0, "\(silent) messages got neither a reply nor a hang-up within 5 s")

        // The server holds none of them: once we close our copies, the other ends see the last
        // copy of the write end (the pipe) and of our socket end (the pair) go away.
        close(garbage.pipe[1]); garbage.pipe[1] = -1
        close(garbage.pair[0]); garbage.pair[0] = -1
        var pfd = [pollfd(fd: garbage.pipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: garbage.pair[1], events: Int16(POLLIN), revents: 0)]
        let released = waitUntil(timeout: 5) {
            _ = poll(&pfd, 2, 0)
            return pfd.allSatisfy { $0.revents & Int16(POLLHUP) != 0 }
        }
        #expect(released, "the server still holds a descriptor we attached (pipe: \(pfd[0].revents), socket: \(pfd[1].revents))")
        let after = Hardening.descriptorsReturn(server, to: baseline)
        #expect(after == baseline, "server descriptors after the fuzz: \(after), baseline \(baseline)\n\(server.log.suffix(2000))")

        let normal = try Hardening.udpEcho(server, port: echoPort, count: 200)
        #expect(normal.ok, "a normal client after the fuzz: \(normal)")
        Hardening.expectAliveAndCleanStop(server, "after the control fuzz with descriptors")
    }
}
