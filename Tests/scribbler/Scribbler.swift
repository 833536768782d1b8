import CShims
import SocketClient
import SocketShared
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The scribble mode: traffic on a set of sockets while every field of the segment is overwritten.
struct Scribbler {
    let socketPath: String
    let seed: UInt64
    let transport: DatagramTransport
    let rounds: Int
    let seconds: Int
    let tcpEchoPort: UInt16
    let udpEchoPort: UInt16
    let geometry: Geometry

    static let selfConnections = 2
    static let echoConnections = 2
    static let datagramSockets = 3

    /// The sockets of one session, and the fields of its segment.
    struct Session {
        var segment: OwnSegment
        var listener: Int32 = -1
        var clients: [Int32] = []
        var accepted: [Int32] = []
        var echo: [Int32] = []
        var datagram: [Int32] = []
        var datagramAddresses: [SocketAddress] = []
        var fields: [Field] = []
        /// Byte ranges the scribbler leaves alone (see `mutate`).
        var trustedRanges: [Range<Int>] = []
        /// The channel-header fields and ring indices among `fields`.
        var headerFields: [Field] = []
        var allocatedEnd = 0

        var all: [Int32] { [listener] + clients + accepted + echo + datagram }
    }

    /// Why a session could not go on.
    enum End: Error {
        /// The server ended our session (every call is ENETDOWN).
        case sessionEnded
        /// Nothing answers at the path any more.
        case serverGone(String)
    }

    func run() {
        var rng = SeededRandom(seed: seed)
        say("seed=\(seed) transport=\(transport) rounds=\(rounds) seconds=\(seconds)")
        let deadline = monotonicNanoseconds() + UInt64(seconds) * 1_000_000_000
        var round = 0, mutations = 0, sessions = 0, ended = 0
        var previous: UnsafeMutableRawPointer? = nil
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while round < rounds && monotonicNanoseconds() < deadline {
            let session: Session
            do {
                session = try open(excluding: previous)
            } catch End.serverGone(let why) {
                say("server-gone=\(why) round=\(round)")
                exit(3)
            } catch {
                // Ended while setting up (a stale connection): start again.
                ended += 1
                continue
            }
            sessions += 1
            previous = session.segment.base
            say("session=\(sessions) base=\(session.segment.base) fields=\(session.fields.count) round=\(round)")
            do {
                while round < rounds && monotonicNanoseconds() < deadline {
                    round += 1
                    try traffic(session, &rng, &buffer)
                    let targeted = round > rounds / 2
                    for _ in 0..<(1 + rng.below(3)) {
                        mutate(session, targeted: targeted, &rng, round: round)
                        mutations += 1
                    }
                    try traffic(session, &rng, &buffer)
                    usleep(UInt32(500 + rng.below(1500)))
                }
            } catch {
                ended += 1
                say("session-ended=\(sessions) round=\(round)")
            }
            for fd in session.all where fd >= 0 { _ = sko_close(fd) }
        }
        say("done rounds=\(round) mutations=\(mutations) sessions=\(sessions) ended=\(ended)")
    }

    // MARK: setup

    /// Opens the sockets of a new session and checks that the segment lies where we computed.
    private func open(excluding previous: UnsafeMutableRawPointer?) throws(End) -> Session {
        // Every channel is created before any connection is made, and each connection is accepted
        // before the next is made, so the server's first-fit allocator places them in this order.
        let stream = geometry.layout(.stream, transport: transport)
        var next = ChannelLayout.align(Int(CSHIMS_SEGMENT_HEADER_SIZE))
        var placed: [(String, Int, ChannelLayout)] = []
        func place(_ name: String, _ layout: ChannelLayout) -> Int {
            let offset = next
            next += ChannelLayout.align(layout.size)
            placed.append((name, offset, layout))
            return offset
        }
        func socket(_ type: Int32) throws(End) -> Int32 {
            let fd = sko_socket(AF_INET, type, 0)
            guard fd >= 0 else { throw failure("socket") }
            return fd
        }
        let tcp = Int32(SOCK_STREAM.rawValue), udp = Int32(SOCK_DGRAM.rawValue)
        let listener = try socket(tcp)
        // The session's real transport: a process the server ended a process-vm session of gets
        // shared memory until it exits (the server's quarantine of its buffers).
        guard let transport = try? Socket.datagramTransport() else { throw failure("datagram transport") }
        let datagram = geometry.layout(.datagram, transport: transport)
        guard let segment = OwnSegment.find(excluding: previous) else { fail("no segment of ours in /proc/self/maps") }
        var s = Session(segment: segment)
        s.listener = listener
        _ = place("listener", stream)
        for i in 0..<Self.selfConnections { s.clients.append(try socket(tcp)); _ = place("client\(i)", stream) }
        if tcpEchoPort != 0 {
            for i in 0..<Self.echoConnections { s.echo.append(try socket(tcp)); _ = place("echo\(i)", stream) }
        }
        var datagramOffsets: [Int] = []
        for i in 0..<Self.datagramSockets {
            s.datagram.append(try socket(udp))
            datagramOffsets.append(place("udp\(i)", datagram))
        }
        guard bind(listener, loopback(0)) == 0, sko_listen(listener, 16) == 0, let listening = localAddress(listener) else { throw failure("listen") }
        var acceptedOffsets: [Int] = []
        for (i, c) in s.clients.enumerated() {
            guard connect(c, listening) == 0 else { throw failure("connect") }
            guard pollSocket(listener, Int16(POLLIN), milliseconds: 5000) != 0 else { throw failure("accept (none within 5 s)") }
            let a = sko_accept(listener, nil, nil)
            guard a >= 0 else { throw failure("accept") }
            s.accepted.append(a)
            acceptedOffsets.append(place("accepted\(i)", stream))
        }
        for e in s.echo { guard connect(e, loopback(tcpEchoPort)) == 0 else { throw failure("connect to the echo server") } }
        for d in s.datagram {
            guard bind(d, loopback(0)) == 0, let a = localAddress(d) else { throw failure("bind") }
            s.datagramAddresses.append(a)
        }
        for fd in s.all { guard sko_fcntl(fd, F_SETFL, O_NONBLOCK) == 0 else { throw failure("fcntl") } }
        s.allocatedEnd = next
        guard next <= segment.size else { fail("our sockets need \(next) bytes, the segment has \(segment.size)") }

        // Check the computed layout against what the server wrote: a datagram channel's send ring
        // has empty buffers of the slot size (all of them with shared memory; with process-vm a few,
        // published on demand), and each connection is marked connected.
        for offset in datagramOffsets {
            let sendHead = cshims_load_acquire_u32(segment.base + offset + datagram.sendRing + Int(CSHIMS_BIPARTITE_HEAD))
            let firstItem = (segment.base + offset + datagram.sendData).load(as: cshims_datagram_item.self)
            let published = transport == .sharedMemory ? sendHead == UInt32(geometry.datagramItems) : (1...UInt32(geometry.datagramItems)).contains(sendHead)
            guard published, firstItem.capacity == UInt32(geometry.slotSize),
                  transport != .sharedMemory || firstItem.payload == UInt64(offset + datagram.sendSlots)
            else { fail("layout: no datagram channel at offset \(offset) (send head \(sendHead), item capacity \(firstItem.capacity)); do the geometry options match the server's?") }
        }
        for offset in acceptedOffsets {
            let events = cshims_load_acquire_u32(segment.base + offset + Int(CSHIMS_CHANNEL_EVENTS))
            guard events & CSHIMS_EV_CONNECTED != 0 else { fail("layout: no connected stream channel at offset \(offset) (events \(events))") }
        }
        s.fields = segmentHeaderFields()
        for (name, offset, layout) in placed {
            s.fields += channelFields(name, offset: offset, layout: layout, geometry: geometry, transport: transport)
            if transport == .processVM && layout.kind == .datagram {
                let item = Int(CSHIMS_DATAGRAM_ITEM_SIZE), guarded = MemoryLayout<cshims_datagram_item>.offset(of: \.length)!
                s.trustedRanges += (0..<geometry.datagramItems).map { offset + layout.sendData + $0 * item }.map { $0..<($0 + guarded) }
                for index in [CSHIMS_BIPARTITE_HEAD, CSHIMS_BIPARTITE_TAIL] {
                    let at = offset + layout.sendRing + Int(index)
                    s.trustedRanges.append(at..<(at + 4))
                }
            }
        }
        s.headerFields = s.fields.filter { $0.kind.isHeader }
        return s
    }

    private func failure(_ call: String) -> End {
        let err = errno
        if err == ENETDOWN { return .sessionEnded }
        // A server that dies while it answers shows up as a reset, a protocol error...: look.
        if !serverAnswers() { return .serverGone("\(call): \(Errno(err))") }
        fail("\(call): \(Errno(err))")
    }

    /// True when a connection to the server's socket path succeeds.
    private func serverAnswers() -> Bool {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return connectUnix(fd, socketPath) == 0
    }

    // MARK: traffic

    /// One burst of non-blocking sends and receives on every socket. Errors other than ENETDOWN are
    /// expected (we corrupt our own state) and ignored.
    private func traffic(_ s: Session, _ rng: inout SeededRandom, _ buffer: inout [UInt8]) throws(End) {
        var ended = false
        func check(_ result: Int) {
            if result < 0 && errno == ENETDOWN { ended = true }
        }
        let dontWait = Int32(MSG_DONTWAIT)
        buffer.withUnsafeMutableBytes { b in
            for i in 0..<(b.count / 8) where rng.oneIn(64) { b.storeBytes(of: rng.next(), toByteOffset: i * 8, as: UInt64.self) }
            for c in s.clients + s.echo {
                check(sko_send(c, b.baseAddress, 1 + rng.below(8192), dontWait))
            }
            for a in s.accepted {
                let n = sko_recv(a, b.baseAddress, b.count, dontWait)
                check(n)
                if n > 0 { check(sko_send(a, b.baseAddress, n, dontWait)) }
            }
            for c in s.clients + s.echo {
                check(sko_recv(c, b.baseAddress, b.count, dontWait))
            }
            for (i, d) in s.datagram.enumerated() {
                let to = udpEchoPort != 0 && rng.oneIn(4) ? loopback(udpEchoPort) : s.datagramAddresses[(i + 1) % s.datagramAddresses.count]
                let size = rng.oneIn(8) ? 1 + rng.below(20_000) : 1 + rng.below(1400)
                check(sendTo(d, UnsafeRawBufferPointer(rebasing: b[..<size]), to, flags: dontWait))
            }
            for d in s.datagram {
                for _ in 0..<2 { check(sko_recvfrom(d, b.baseAddress, b.count, dontWait, nil, nil)) }
            }
        }
        if rng.oneIn(8) {
            var fds = s.all.map { pollfd(fd: $0, events: Int16(POLLIN | POLLOUT), revents: 0) }
            check(Int(sko_poll(&fds, UInt(fds.count), 0)))
            for fd in s.all {
                var value: Int32 = 0
                var length = socklen_t(4)
                check(Int(sko_getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length)))
                check(Int(sko_ioctl(fd, UInt(FIONREAD), &value)))
            }
        }
        if ended { throw .sessionEnded }
    }

    // MARK: mutation

    /// Overwrites one field (or, in the random phase, sometimes a few random bytes anywhere in our
    /// channels), logging what it did.
    private func mutate(_ s: Session, targeted: Bool, _ rng: inout SeededRandom, round: Int) {
        if !targeted && rng.oneIn(8) {
            let offset = Int(CSHIMS_SEGMENT_HEADER_SIZE) + rng.below(s.allocatedEnd - Int(CSHIMS_SEGMENT_HEADER_SIZE) - 8)
            // With process-vm, the payload and capacity of send items (and the send ring's indices,
            // which say which items are live) say where in the server the library writes: that
            // transport trusts the client with the server's memory (README).
            if s.trustedRanges.contains(where: { offset < $0.upperBound && $0.lowerBound < offset + 8 }) { return }
            let value = rng.next()
            (s.segment.base + offset).storeBytes(of: value, as: UInt64.self)
            log("round=\(round) bytes offset=\(offset) value=0x\(String(value, radix: 16))")
            return
        }
        // Half of the picks go to the channel headers and ring indices, which the server reads on
        // every event; the rest to any field (mostly datagram items, by number).
        let field = rng.oneIn(2) && !s.headerFields.isEmpty ? rng.pick(s.headerFields) : rng.pick(s.fields)
        let old = s.segment.load(field)
        let value: UInt64
        if targeted {
            value = rng.pick(targetedValues(field, current: old, geometry: geometry, segmentSize: s.segment.size))
        } else {
            value = rng.oneIn(2) ? rng.next() : UInt64(rng.below(4 * max(geometry.streamRing, 65_536)))
        }
        s.segment.store(field, value)
        log("round=\(round) field=\(field.name) old=0x\(String(old, radix: 16)) new=0x\(String(s.segment.load(field), radix: 16))")
    }
}

extension FieldKind {
    /// A channel-header field or ring index (as opposed to a datagram item's).
    var isHeader: Bool {
        switch self {
        case .ringIndex, .counter, .events, .error, .blocked, .pendingAccepts, .stackWants: return true
        default: return false
        }
    }
}
