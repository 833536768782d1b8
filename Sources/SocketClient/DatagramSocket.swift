import CShims
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Client side of a UDP socket: two bipartite rings the server produces.
///
/// - Receive ring: the server publishes datagrams (one or more items each); we copy the payload out
///   and hand the items back; the server reclaims them when it needs room.
/// - Send ring: the server publishes empty payload buffers; we fill as many as a datagram needs,
///   write its length and destination into them and hand them back; the server sends them and
///   publishes fresh buffers.
///
/// Payloads move with `memcpy` (shared-memory transport: buffers are slots in our segment) or with
/// `process_vm_readv/writev` straight between the application's buffers and lwIP's pbufs in the
/// server (process-vm transport).
final class DatagramSocket: ClientSocket, @unchecked Sendable {
    // @unchecked Sendable: `receiveRing` is used under receiveLock, `sendRing` under sendLock.
    private let receiveRing: BipartiteRingConsumer
    private let sendRing: BipartiteRingConsumer
    private let memory: ProcessMemory
    /// The peer set by connect, used when send has no address.
    private let peer = Mutex<SocketAddress?>(nil)
    /// The directions the app shut (1: SHUT_RD, 2: SHUT_WR), as Linux's sk_shutdown: recorded even
    /// when shutdown fails with ENOTCONN, and never cleared (a disconnect keeps them).
    private let localShutdown = Atomic<UInt8>(0)
    /// The socket has a local port (autobound, or found bound already): sends need not ask.
    private let hasPort = Atomic<Bool>(false)

    private static let shutRead: UInt8 = 1
    private static let shutWrite: UInt8 = 2

    static let maximumPayload = 65_507
    /// How long a send waits for the server to publish the buffers it asked for (nanoseconds).
    static let grantWait: UInt64 = 1_000_000_000
    /// lwIP's packet lengths are 16-bit, so an IPv6 packet (40-byte header, 8-byte UDP header and
    /// the payload) must fit in 65,535 bytes: the stack cannot carry more than 65,487 bytes of UDP
    /// payload over IPv6 (Linux carries 65,527). Larger sends fail here with EMSGSIZE instead of
    /// being accepted and then dropped by the server's udp_sendto (ERR_BUF).
    static let maximumIPv6Payload = 65_535 - 40 - 8

    override init(connection: ServerConnection, info: ChannelInfo, domain: Int32, type: Int32, fd: Int32, stackFD: Int32) throws(Errno) {
        guard info.kind == .datagram, info.receiveSize > 0, info.sendSize > 0, info.slotSize > 0 else { throw Errno(EPROTO) }
        memory = ProcessMemory(pid: connection.info.serverPID)
        let placeholder = try ChannelView(connection: connection, info: info)
        receiveRing = placeholder.datagramConsumer(receive: true, count: Int(info.receiveSize))
        sendRing = placeholder.datagramConsumer(receive: false, count: Int(info.sendSize))
        try super.init(connection: connection, info: info, domain: domain, type: type, fd: fd, stackFD: stackFD)
    }

    override func didConnect(_ address: SocketAddress) {
        peer.withLock { $0 = address.family == .unspecified ? nil : address }
        // connect binds (lwIP's udp_connect); a disconnect may unbind an ephemeral port.
        hasPort.store(address.family != .unspecified, ordering: .releasing)
    }

    var connectedPeer: SocketAddress? { peer.withLock { $0 } }

    /// A bind succeeded: the socket has its port, and its first send need not ask for one.
    func didBind() { hasPort.store(true, ordering: .releasing) }

    /// Binds a socket that has no port to an ephemeral one before a send, as Linux's
    /// inet_send_prepare does (even for a send that then fails): getsockname shows the port as soon
    /// as sendto returns, where the server would bind only when it sends the datagram, later. One
    /// control request per socket: a socket bound already answers EINVAL, and is not asked again.
    func autobind() throws(Errno) {
        guard !hasPort.load(ordering: .acquiring) else { return }
        do {
            _ = try request(.bind(handle: info.handle, address: domain == AF_INET6 ? .ipv6Any() : .ipv4Any()))
        } catch where error.rawValue == EINVAL {
            // Bound already (by bind or connect).
        } catch where error.rawValue == EADDRINUSE {
            throw Errno(EAGAIN) // no ephemeral port left: Linux's send fails so
        }
        hasPort.store(true, ordering: .releasing)
    }

    /// Linux's inet_shutdown on a datagram socket: the directions are recorded (a socket that is not
    /// connected answers ENOTCONN, and they are recorded all the same, to wake pollers); readers
    /// blocked on the socket return 0.
    override func shutdown(_ how: Int32) throws(Errno) {
        let bits: UInt8 = how == SHUT_RD ? Self.shutRead : how == SHUT_WR ? Self.shutWrite : Self.shutRead | Self.shutWrite
        localShutdown.bitwiseOr(bits, ordering: .relaxed)
        if bits & Self.shutRead != 0 { signalLocally() }
        if connectedPeer == nil { throw Errno(ENOTCONN) }
    }

    /// The pending error (ECONNREFUSED, set by the server when an ICMP port unreachable answers a
    /// datagram to the connected peer), taken by the one call that reports it (Linux's sock_error):
    /// recv, send or SO_ERROR. The server sets it anew for each refusal; a reconnect keeps it.
    private func takeError() -> Errno? {
        guard view.events & CSHIMS_EV_ERROR != 0 else { return nil }
        let before = cshims_fetch_and_u32(view.header + Int(CSHIMS_CHANNEL_EVENTS), ~CSHIMS_EV_ERROR)
        guard before & CSHIMS_EV_ERROR != 0 else { return nil }
        let code = view.pendingError
        return Errno(code != 0 ? code : ECONNREFUSED)
    }

    /// SO_ERROR: the refusal if one is pending, else what the server has (a send it could not make).
    override func takeSocketError() -> Int32? { takeError()?.rawValue }

    // MARK: receive

    /// The datagram at the head of the receive ring: its item count and total length.
    private func head() throws(Errno) -> (items: Int, total: Int)? {
        let ready: Int
        do { ready = try receiveRing.ready() } catch { throw Errno(EPROTO) }
        guard ready > 0 else { return nil }
        let first = receiveRing.item(0).pointee
        let items = Int(first.count)
        guard first.flags & UInt16(CSHIMS_ITEM_FIRST) != 0, items >= 1, items <= ready,
              Int(first.total) <= Self.maximumPayload
        else { throw Errno(EPROTO) }
        return (items, Int(first.total))
    }

    override var waitsForRoomWithGate: Bool { true }

    /// Readiness as Linux's datagram_poll computes it: POLLERR while an error waits to be taken,
    /// POLLIN|POLLRDHUP once the read side is shut, POLLHUP once both are, POLLIN while a datagram
    /// waits, POLLOUT while the send ring has a buffer; RDNORM with IN, WRNORM|WRBAND with OUT.
    override func readiness() -> Int16 {
        if connection.isDead { return super.readiness() }
        let shut = localShutdown.load(ordering: .relaxed)
        var r: Int16 = 0
        if view.events & CSHIMS_EV_ERROR != 0 { r |= Int16(POLLERR) }
        if shut & Self.shutRead != 0 { r |= Int16(POLLIN) | POLLRDHUP_ }
        if shut == Self.shutRead | Self.shutWrite { r |= Int16(POLLHUP) }
        if receiveRing.sharedReady() > 0 { r |= Int16(POLLIN) }
        if sendRing.sharedReady() > 0 { r |= Int16(POLLOUT) }
        if r & Int16(POLLIN) != 0 { r |= Int16(POLLRDNORM) }
        if r & Int16(POLLOUT) != 0 { r |= Int16(POLLWRNORM | POLLWRBAND) }
        return r
    }

    /// Whether a recv would not block on the ring: a datagram, or an error to report.
    private func receivable() throws(Errno) -> Bool {
        try head() != nil || view.events & CSHIMS_EV_ERROR != 0
    }

    override func bytesReadable() throws(Errno) -> Int {
        try receiveLock.withLock { () throws(Errno) -> Int in try head()?.total ?? 0 }
    }

    override func receive(_ buffers: [UnsafeMutableRawBufferPointer], flags: Int32) throws(Errno) -> (count: Int, full: Int, from: SocketAddress?, truncated: Bool) {
        let peek = flags & Int32(MSG_PEEK) != 0
        let dontWait = flags & Int32(MSG_DONTWAIT) != 0 || nonBlocking.load(ordering: .relaxed)
        let deadline = self.deadline(receiveTimeout.load(ordering: .relaxed))
        return try receiveLock.withLock { () throws(Errno) -> (Int, Int, SocketAddress?, Bool) in
            while true {
                if let err = takeError() { throw err }
                if let (items, total) = try head() {
                    let count = try copyOut(items: items, total: total, into: buffers)
                    let from = SocketAddress(receiveRing.item(0).pointee.address)
                    if !peek {
                        receiveRing.handBack(items)
                        // Took the last one: clear the descriptor's readability now, so that poll
                        // reports POLLIN exactly while a datagram is waiting (as the kernel does).
                        if try head() == nil { _ = try acknowledgeAndRecheck(receivable) }
                    }
                    return (count, total, from, count < total)
                }
                try checkServer()
                if try acknowledgeAndRecheck(receivable) { continue }
                if dontWait {
                    try checkServerBeforeEAGAIN()
                    throw Errno(EAGAIN)
                }
                // Linux's __skb_wait_for_more_packets: a reader that would sleep on a socket whose
                // read side is shut returns 0 (a non-blocking one fails with EAGAIN, above).
                if localShutdown.load(ordering: .relaxed) & Self.shutRead != 0 { return (0, 0, nil, false) }
                try waitFor(Int16(POLLIN), until: deadline)
            }
        }
    }

    /// Copies up to the buffers' size of the datagram in the first `items` ready items.
    private func copyOut(items: Int, total: Int, into buffers: [UnsafeMutableRawBufferPointer]) throws(Errno) -> Int {
        let room = buffers.reduce(0) { $0 + $1.count }
        let wanted = min(room, total)
        guard wanted > 0 else { return 0 }
        var remote: [ProcessMemory.Range] = []
        var left = wanted
        for k in 0..<items where left > 0 {
            let item = receiveRing.item(k).pointee
            let n = min(Int(item.length), left)
            guard Int(item.length) <= Int(item.capacity) else { throw Errno(EPROTO) }
            remote.append(.init(address: item.payload, length: n))
            left -= n
        }
        if info.transport == .processVM {
            do { return try memory.read(remote, into: buffers) } catch { throw Errno(error.errno?.rawValue ?? EFAULT) }
        }
        // Shared memory: the payload offsets are in our segment; gather into the scattered buffers.
        var copied = 0
        var b = 0, bOffset = 0
        for range in remote {
            guard let src = try? connection.segment.pointer(at: Int(exactly: range.address) ?? -1, length: range.length) else { throw Errno(EPROTO) }
            var done = 0
            while done < range.length && b < buffers.count {
                let n = min(range.length - done, buffers[b].count - bOffset)
                if n > 0 { (buffers[b].baseAddress! + bOffset).copyMemory(from: src + done, byteCount: n) }
                done += n
                bOffset += n
                if bOffset == buffers[b].count { b += 1; bOffset = 0 }
            }
            copied += done
        }
        return copied
    }

    // MARK: send

    override func send(_ buffers: [UnsafeRawBufferPointer], to address: SocketAddress?, flags: Int32) throws(Errno) -> Int {
        let length = buffers.reduce(0) { $0 + $1.count }
        guard length <= (domain == AF_INET6 ? Self.maximumIPv6Payload : Self.maximumPayload) else { throw Errno(EMSGSIZE) }
        let destination: SocketAddress
        if let address, address.family != .unspecified {
            guard address.isValid else { throw Errno(EINVAL) }
            guard address.family == (domain == AF_INET6 ? .inet6 : .inet) else { throw Errno(EAFNOSUPPORT) }
            guard address.port != 0 else { throw Errno(EINVAL) }
            if address.bytes == Self.limitedBroadcast { try checkBroadcastAllowed() }
            destination = address
        } else {
            guard connectedPeer != nil else { throw Errno(EDESTADDRREQ) }
            destination = .unspecified // the server sends to the connected peer
        }
        let slot = Int(info.slotSize)
        let needed = max(1, (length + slot - 1) / slot)
        guard needed <= Int(info.sendSize) else { throw Errno(EMSGSIZE) }
        // Linux's sock_alloc_send_pskb: a pending error first, then a shut write side.
        if let err = takeError() { throw err }
        guard localShutdown.load(ordering: .relaxed) & Self.shutWrite == 0 else { throw Errno(EPIPE) }
        let dontWait = flags & Int32(MSG_DONTWAIT) != 0 || nonBlocking.load(ordering: .relaxed)
        let deadline = self.deadline(sendTimeout.load(ordering: .relaxed))
        return try sendLock.withLock { () throws(Errno) -> Int in
            func hasRoom() throws(Errno) -> Bool {
                do { return try sendRing.ready() >= needed } catch { throw Errno(EPROTO) }
            }
            // process-vm: the server publishes send buffers on demand (they are its memory); ask for
            // as many as this datagram needs, once, and give up with ENOBUFS if it cannot grant them.
            var asked = false
            while true {
                try checkServer()
                if try hasRoom() {
                    try fill(items: needed, length: length, destination: destination, from: buffers)
                    sendRing.handBack(needed)
                    if asked { view.setSendWanted(0) }
                    toStack.notify()
                    return length
                }
                if info.transport == .processVM {
                    if !asked {
                        asked = true
                        view.clearEvents(CSHIMS_EV_NOBUFS)
                        view.setSendWanted(UInt32(needed))
                        toStack.notify()
                        // Not back-pressure but allocation on demand: wait for the server's answer
                        // (one round trip) even when non-blocking, as a kernel sendto would not
                        // fail with EAGAIN on an idle socket.
                        if try blockUntilRoom(hasRoom) { continue }
                        do throws(Errno) { try waitFor(Int16(POLLOUT), until: monotonicNanoseconds() + Self.grantWait) } catch {
                            if error.rawValue != EAGAIN { throw error }
                        }
                        continue
                    } else if view.events & CSHIMS_EV_NOBUFS != 0 {
                        view.clearEvents(CSHIMS_EV_NOBUFS)
                        view.setSendWanted(0)
                        throw Errno(ENOBUFS)
                    }
                }
                if try blockUntilRoom(hasRoom) { continue }
                if dontWait {
                    try checkServerBeforeEAGAIN()
                    throw Errno(EAGAIN)
                }
                try waitFor(Int16(POLLOUT), until: deadline)
            }
        }
    }

    private static let limitedBroadcast: [UInt8] = [255, 255, 255, 255]

    /// Linux refuses a broadcast destination without SO_BROADCAST (EACCES). The server keeps the
    /// option: sending to 255.255.255.255 is rare enough to ask it each time (the server refuses a
    /// connect to any broadcast address, and drops datagrams to an interface's directed broadcast).
    private func checkBroadcastAllowed() throws(Errno) {
        let reply = try request(.getsockopt(handle: info.handle, level: SOL_SOCKET, name: SO_BROADCAST, maxLength: 4))
        guard case .option(let bytes) = reply, bytes.count == 4 else { throw Errno(EPROTO) }
        guard bytes.contains(where: { $0 != 0 }) else { throw Errno(EACCES) }
    }

    private func fill(items: Int, length: Int, destination: SocketAddress, from buffers: [UnsafeRawBufferPointer]) throws(Errno) {
        var remote: [ProcessMemory.Range] = []
        var left = length
        for k in 0..<items {
            let item = sendRing.item(k)
            let n = min(left, Int(item.pointee.capacity))
            guard item.pointee.capacity > 0 else { throw Errno(EPROTO) }
            remote.append(.init(address: item.pointee.payload, length: n))
            item.pointee.length = UInt32(n)
            item.pointee.total = UInt32(length)
            item.pointee.count = UInt16(items)
            item.pointee.flags = UInt16(k == 0 ? CSHIMS_ITEM_FIRST : 0) | UInt16(k < items - 1 ? CSHIMS_ITEM_MORE : 0)
            item.pointee.address = destination.raw
            left -= n
        }
        guard left == 0 else { throw Errno(EMSGSIZE) }
        guard length > 0 else { return }
        let sources = buffers.filter { $0.count > 0 }
        if info.transport == .processVM {
            do { _ = try memory.write(sources, to: remote) } catch { throw Errno(error.errno?.rawValue ?? EFAULT) }
            return
        }
        var s = 0, sOffset = 0
        for range in remote {
            guard let dst = try? connection.segment.pointer(at: Int(exactly: range.address) ?? -1, length: range.length) else { throw Errno(EPROTO) }
            var done = 0
            while done < range.length {
                let n = min(range.length - done, sources[s].count - sOffset)
                (dst + done).copyMemory(from: sources[s].baseAddress! + sOffset, byteCount: n)
                done += n
                sOffset += n
                if sOffset == sources[s].count { s += 1; sOffset = 0 }
            }
        }
    }
}

extension ChannelView {
    init(connection: ServerConnection, info: ChannelInfo) throws(Errno) {
        do {
            try self.init(segment: connection.segment, offset: Int(info.offset), layout: ChannelLayout(info))
        } catch {
            throw Errno(EPROTO)
        }
    }
}
