import CLwIP
import CShims
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// A UDP socket: an lwIP udp_pcb and a datagram channel of two bipartite rings, both produced here.
///
/// - Receive ring: each arriving datagram becomes one or more items. With process-vm, one item per
///   pbuf of the chain, naming the pbuf's payload in this process (the client copies it out with
///   process_vm_readv); we keep the pbuf until the item comes back. With shared memory, the payload
///   is copied into the channel's receive slots. A full ring drops the datagram and counts it, as
///   a full socket buffer does in the kernel.
/// - Send ring: we publish empty buffers (pbufs, or send slots); the client fills them and hands
///   them back; we send each datagram and publish fresh buffers. Where a buffer is and how big is
///   taken from our private records by ring position, never from the item the client rewrote.
///
/// Server memory (process-vm): the pbufs we hold for the client, received datagrams until it hands
/// their items back and empty send buffers until it fills them, are charged to the session's
/// `--client-buffer-memory` budget. Send buffers are published on demand: a few at first, twice as
/// many each time the client spends them all, and as many as a large datagram needs when the client
/// asks for them (`send_wanted`), up to the ring's size and the budget. An idle socket holds two.
final class UDPSocket: ServerSocket {
    private var pcb: UnsafeMutablePointer<udp_pcb>?
    private let receiveRing: BipartiteRingProducer
    private let sendRing: BipartiteRingProducer
    private let transport: DatagramTransport
    private let slotSize: Int
    private var receivePbufs: [UnsafeMutablePointer<pbuf>?]
    private var sendPbufs: [UnsafeMutablePointer<pbuf>?]
    private let receiveSlots: Int  // segment offset of receive slot 0
    private let sendSlots: Int
    /// The local address bind gave (the wildcard until then): connect replaces a wildcard with the
    /// source address, and a reconnect or a disconnect puts this one back.
    private var boundIP = ip_addr_t()
    /// Bound to a port of the app's choosing (bind with a port other than 0): a disconnect keeps
    /// it; an ephemeral port goes (Linux's SOCK_BINDPORT_LOCK).
    private var portChosen = false
    private(set) var receiveDrops: UInt64 = 0
    private(set) var sendErrors: UInt64 = 0
    /// Budget charged for each receive item's pbuf (process-vm), by ring position.
    private var receiveCharges: [Int]
    /// Send buffers to keep published (process-vm; the whole ring with shared memory).
    private var sendTarget: Int

    /// What socket-stat shows of this socket: queues in datagrams (see SocketServer+Report.swift).
    var report: SocketReport {
        var r = SocketReport(proto: "udp", state: "UNCONN")
        guard let pcb else { return r }
        r.local = appAddress(cstack_udp_local_ip(pcb), port: cstack_udp_local_port(pcb))
        if cstack_udp_is_connected(pcb) != 0, cstack_udp_remote_port(pcb) != 0 {
            r.state = "ESTAB"
            r.peer = appAddress(cstack_udp_remote_ip(pcb), port: cstack_udp_remote_port(pcb))
        }
        r.receiveQueue = Int(receiveRing.geometry.count) - receiveRing.freeItems
        r.sendQueue = 0
        r.unit = "datagrams"
        r.transport = transport.description
        r.drops = receiveDrops
        r.sendErrors = sendErrors
        return r
    }

    static let maximumPayload = 65_507
    /// Send buffers an idle process-vm socket keeps published.
    static let initialSendBuffers = 2
    /// What lwIP adds to each pbuf's payload (struct pbuf, header room), for the budget.
    static let pbufOverhead = 128
    private var sendBufferCost: Int { slotSize + Self.pbufOverhead }

    override init(session: Session, handle: UInt32, domain: Int32, info: ChannelInfo, view: ChannelView,
                  appEvent: EventFD, stackEvent: EventFD) throws(ServerError) {
        transport = info.transport
        slotSize = Int(info.slotSize)
        receiveRing = view.datagramProducer(receive: true, count: Int(info.receiveSize))
        sendRing = view.datagramProducer(receive: false, count: Int(info.sendSize))
        receivePbufs = Array(repeating: nil, count: Int(info.receiveSize))
        sendPbufs = Array(repeating: nil, count: Int(info.sendSize))
        receiveCharges = Array(repeating: 0, count: Int(info.receiveSize))
        sendTarget = info.transport == .processVM ? min(Self.initialSendBuffers, Int(info.sendSize)) : Int(info.sendSize)
        receiveSlots = Int(info.offset) + view.layout.receiveSlots
        sendSlots = Int(info.offset) + view.layout.sendSlots
        try super.init(session: session, handle: handle, domain: domain, info: info, view: view, appEvent: appEvent, stackEvent: stackEvent)
        guard let pcb = udp_new_ip_type(pcbType) else {
            throw ServerError("lwIP could not allocate a UDP pcb")
        }
        ipOptions.apply(to: pcb, domain: domain)
        self.pcb = pcb
        boundIP = cstack_udp_local_ip(pcb).pointee
        udp_recv(pcb, udpReceived, Unmanaged.passUnretained(self).toOpaque())
        _ = Self.refusalsReported
        refillSendRing()
    }

    /// ICMP port unreachable reaches the connected socket that sent the refused datagram.
    private static let refusalsReported: Bool = cstack_udp_report_refusals(udpReceived, udpRefused) == 0

    // MARK: receive path (lwIP callback, core lock held)

    func received(_ p: UnsafeMutablePointer<pbuf>, from ip: UnsafePointer<ip_addr_t>?, port: UInt16) {
        do { try reclaimReceived() } catch {
            pbuf_free(p)
            session.misbehaved(error)
            return
        }
        let total = Int(cstack_pbuf_tot_len(p))
        var address = SocketAddress.unspecified
        if let ip { address = appAddress(ip, port: port) }
        let items: Int
        switch transport {
        case .processVM:
            var n = 0
            var q: UnsafeMutablePointer<pbuf>? = p
            while let cur = q { n += 1; q = cstack_pbuf_next(cur) }
            items = n
        default:
            items = max(1, (total + slotSize - 1) / slotSize)
        }
        let charge = transport == .processVM ? total + items * Self.pbufOverhead : 0
        guard items <= receiveRing.freeItems, charge == 0 || session.chargeBufferMemory(charge) else {
            receiveRing.countDrop()
            receiveDrops += 1
            pbuf_free(p)
            return
        }
        let raw = address.raw
        var q: UnsafeMutablePointer<pbuf>? = p
        for k in 0..<items {
            let item = receiveRing.itemToFill(k)
            let length: Int
            switch transport {
            case .processVM:
                let cur = q!
                length = Int(cstack_pbuf_len(cur))
                item.pointee.payload = UInt64(UInt(bitPattern: cstack_pbuf_payload(cur)))
                item.pointee.capacity = UInt32(length)
                q = cstack_pbuf_next(cur)
            default:
                length = min(slotSize, total - k * slotSize)
                let offset = receiveSlots + receiveRing.slotToFill(k) * slotSize
                if length > 0 { pbuf_copy_partial(p, session.segmentBase + offset, UInt16(length), UInt16(k * slotSize)) }
                item.pointee.payload = UInt64(offset)
                item.pointee.capacity = UInt32(slotSize)
            }
            item.pointee.length = UInt32(length)
            item.pointee.total = UInt32(total)
            item.pointee.count = UInt16(items)
            item.pointee.flags = UInt16(k == 0 ? CSHIMS_ITEM_FIRST : 0) | UInt16(k < items - 1 ? CSHIMS_ITEM_MORE : 0)
            item.pointee.address = raw
        }
        if transport == .processVM {
            receivePbufs[receiveRing.slotToFill(0)] = p // held until the client hands the items back
            receiveCharges[receiveRing.slotToFill(0)] = charge
        } else {
            pbuf_free(p)
        }
        receiveRing.publish(items)
        toApp.notify()
    }

    /// An ICMP port unreachable answered a datagram this connected socket sent to its peer: its next
    /// recv or send fails with ECONNREFUSED, or SO_ERROR reports it (Linux's __udp4_lib_err for a
    /// connected socket). The error waits in the channel for the client to take it, once.
    func refused() {
        view.setPendingError(ECONNREFUSED)
        view.setEvents(CSHIMS_EV_ERROR)
        toApp.notify()
    }

    /// Takes back the receive items the client has finished with and frees their pbufs.
    private func reclaimReceived() throws(SharedError) {
        let n = try receiveRing.reclaimable()
        guard n > 0 else { return }
        if transport == .processVM {
            for k in 0..<n {
                let slot = receiveRing.slotToReclaim(k)
                if let p = receivePbufs[slot] {
                    pbuf_free(p)
                    receivePbufs[slot] = nil
                    session.releaseBufferMemory(receiveCharges[slot])
                    receiveCharges[slot] = 0
                }
            }
        }
        receiveRing.reclaim(n)
    }

    // MARK: send path (stack eventfd, core lock held)

    override func serviceStackEvent() throws(SharedError) {
        toStack.acknowledge()
        // Bounded: a client handing buffers back as fast as we publish them must not keep the stack
        // thread here. What it hands back later comes with a new notification (we acknowledged).
        for _ in 0..<2 {
            let n = try sendRing.reclaimable()
            if n == 0 { break }
            // The client spent every buffer we had published: it sends in bursts, give it more.
            if transport == .processVM && n == Int(sendRing.geometry.count) - sendRing.freeItems {
                sendTarget = min(sendTarget * 2, Int(sendRing.geometry.count))
            }
            var k = 0
            while k < n {
                k += sendDatagram(at: k, available: n - k)
            }
            if transport == .processVM {
                // Buffers of malformed datagrams were not consumed by a send: free them too.
                for j in 0..<n {
                    let slot = sendRing.slotToReclaim(j)
                    if let p = sendPbufs[slot] {
                        pbuf_free(p)
                        sendPbufs[slot] = nil
                        releaseBuffer()
                    }
                }
            }
            sendRing.reclaim(n)
            refillSendRing()
        }
        grantWantedBuffers()
        gate.release()
    }

    /// The client waits for `send_wanted` buffers (a datagram that needs more than we publish, or a
    /// burst): publish them if the budget allows, else tell it (ENOBUFS on its send).
    private func grantWantedBuffers() {
        guard transport == .processVM else { return }
        let wanted = min(Int(view.sendWanted), Int(sendRing.geometry.count)) // a hint from the client: clamped
        guard wanted > 0 else { return }
        if wanted > sendTarget {
            sendTarget = wanted
            refillSendRing()
        }
        if Int(sendRing.geometry.count) - sendRing.freeItems < wanted {
            view.setEvents(CSHIMS_EV_NOBUFS)
        }
    }

    private func releaseBuffer() {
        session.releaseBufferMemory(sendBufferCost)
    }

    /// Sends the datagram whose first item is the `k`-th spent item.
    ///
    /// The items are in the client's memory and may change while we read them: each is copied once
    /// into a local and only those copies are validated and used (a length checked and then read
    /// again could have grown in between). Where a buffer is comes from our private records.
    /// - Returns: the number of items it occupied (1 for a malformed item, which is dropped).
    private func sendDatagram(at k: Int, available: Int) -> Int {
        let first = sendRing.itemToReclaim(k).pointee
        let count = Int(first.count)
        let total = Int(first.total)
        guard first.flags & UInt16(CSHIMS_ITEM_FIRST) != 0, count >= 1, count <= available, total <= Self.maximumPayload else {
            sendErrors += 1
            return 1
        }
        var lengths = [Int](repeating: 0, count: count)
        var sum = 0
        for j in 0..<count {
            let item = sendRing.itemToReclaim(k + j).pointee
            let last = j == count - 1
            guard Int(item.length) <= slotSize, (item.flags & UInt16(CSHIMS_ITEM_MORE) != 0) == !last else {
                sendErrors += 1
                return count
            }
            lengths[j] = Int(item.length)
            sum += lengths[j]
        }
        guard sum == total else {
            sendErrors += 1
            return count
        }
        let head: UnsafeMutablePointer<pbuf>?
        switch transport {
        case .processVM:
            var chain: UnsafeMutablePointer<pbuf>?
            for j in 0..<count {
                let slot = sendRing.slotToReclaim(k + j)
                guard let p = sendPbufs[slot] else { continue }
                sendPbufs[slot] = nil
                releaseBuffer()
                cstack_pbuf_set_length(p, UInt16(lengths[j]))
                if let c = chain { pbuf_cat(c, p) } else { chain = p }
            }
            head = chain
        default:
            head = cstack_pbuf_alloc_transport(UInt16(total))
            if let head {
                var offset = 0
                let payload = cstack_pbuf_payload(head)!
                for j in 0..<count {
                    let source = session.segmentBase + sendSlots + sendRing.slotToReclaim(k + j) * slotSize
                    (payload + offset).copyMemory(from: source, byteCount: lengths[j])
                    offset += lengths[j]
                }
            }
        }
        guard let head, let pcb else {
            if let head { pbuf_free(head) }
            sendErrors += 1
            pendingError = ENOBUFS
            return count
        }
        let failure: Int32
        if let destination = SocketAddress(first.address), destination.family != .unspecified {
            if destination.family != family || !destination.isValid {
                failure = EINVAL
            } else {
                if var ip = stackAddress(destination) {
                    if cstack_ip_is_broadcast(&ip) != 0 && cstack_pcb_get_option(pcb, UInt8(SOF_BROADCAST)) == 0 {
                        // The client refuses 255.255.255.255 itself (EACCES, as Linux); an interface's
                        // directed broadcast it cannot tell, so that is refused here.
                        failure = EACCES
                    } else {
                        failure = errnoFor(udp_sendto(pcb, head, &ip, destination.port))
                    }
                } else {
                    failure = ENETUNREACH // v4-mapped on an IPv6-only socket
                }
            }
        } else if cstack_udp_is_connected(pcb) != 0 {
            failure = errnoFor(udp_send(pcb, head))
        } else {
            failure = ENOTCONN
        }
        pbuf_free(head)
        if failure != 0 {
            sendErrors += 1
            pendingError = failure
        }
        return count
    }

    /// Publishes empty send buffers up to the target (or until lwIP or the budget is out of memory).
    private func refillSendRing() {
        var n = 0
        let published = Int(sendRing.geometry.count) - sendRing.freeItems
        fill: while n < sendRing.freeItems && published + n < sendTarget {
            let item = sendRing.itemToFill(n)
            let slot = sendRing.slotToFill(n)
            switch transport {
            case .processVM:
                guard session.chargeBufferMemory(sendBufferCost) else { break fill }
                guard let p = cstack_pbuf_alloc_transport(UInt16(slotSize)) else {
                    session.releaseBufferMemory(sendBufferCost)
                    break fill
                }
                sendPbufs[slot] = p
                item.pointee.payload = UInt64(UInt(bitPattern: cstack_pbuf_payload(p)))
            default:
                item.pointee.payload = UInt64(sendSlots + slot * slotSize)
            }
            item.pointee.capacity = UInt32(slotSize)
            item.pointee.length = 0
            item.pointee.flags = 0
            item.pointee.count = 0
            n += 1
        }
        sendRing.publish(n)
    }

    // MARK: control requests

    override func handle(_ request: Request) -> Reply {
        guard let pcb else { return .error(EBADF) }
        switch request {
        case .bind(_, let address):
            guard address.family == family else { return .error(EAFNOSUPPORT) }
            guard cstack_udp_local_port(pcb) == 0 else { return .error(EINVAL) }
            var ip: ip_addr_t
            switch bindAddress(address) {
            case .success(let a): ip = a
            case .failure(let e): return .error(e.rawValue)
            }
            let err = udp_bind(pcb, &ip, address.port)
            guard err == errOK else { return .error(errnoFor(err)) }
            boundIP = ip
            portChosen = address.port != 0
            return .ok(value: 0)
        case .connect(_, let address):
            // Datagrams the app sent before it connected leave for the destination they had.
            try? serviceStackEvent()
            if address.family == .unspecified {
                disconnect(pcb)
                return .ok(value: 0)
            }
            guard address.family == family, address.isValid else { return .error(EAFNOSUPPORT) }
            guard var ip = stackAddress(address) else { return .error(ENETUNREACH) }
            let broadcastAllowed = cstack_pcb_get_option(pcb, UInt8(SOF_BROADCAST)) != 0
            guard broadcastAllowed || cstack_ip_is_broadcast(&ip) == 0 else { return .error(EACCES) }
            // The source address is chosen anew for each peer (Linux keeps the first connect's,
            // and then fails to connect to a peer that address cannot reach).
            cstack_udp_set_local_ip(pcb, &boundIP)
            let err = udp_connect(pcb, &ip, address.port)
            guard err == errOK else { return .error(errnoFor(err)) }
            cstack_udp_take_source_address(pcb)
            return .ok(value: 0)
        case .getsockname:
            return .address(appAddress(cstack_udp_local_ip(pcb), port: cstack_udp_local_port(pcb)))
        case .getpeername:
            // Linux: connected to port 0 is not connected to anything (inet_getname).
            guard cstack_udp_is_connected(pcb) != 0, cstack_udp_remote_port(pcb) != 0 else { return .error(ENOTCONN) }
            return .address(appAddress(cstack_udp_remote_ip(pcb), port: cstack_udp_remote_port(pcb)))
        case .getsockopt(_, let level, let name, _):
            return getOption(level: level, name: name)
        case .setsockopt(_, let level, let name, let value):
            return setOption(level: level, name: name, value: value)
        case .listen, .accept:
            return .error(EOPNOTSUPP)
        default:
            return .error(EINVAL)
        }
    }

    /// SOL_SOCKET options a UDP socket records and reports (see ServerSocket.recordedOption).
    private static let recordedOptions: Set<Int32> = [SO_RCVLOWAT, SO_KEEPALIVE, SO_REUSEPORT, SO_LINGER]

    /// connect(AF_UNSPEC), as Linux's __udp_disconnect: no peer; the source address connect gave
    /// goes (an address given to bind stays), and so does an ephemeral port (a chosen one stays).
    private func disconnect(_ pcb: UnsafeMutablePointer<udp_pcb>) {
        udp_disconnect(pcb)
        cstack_udp_set_local_ip(pcb, &boundIP)
        if !portChosen { cstack_udp_unbind(pcb) }
    }

    private func getOption(level: Int32, name: Int32) -> Reply {
        if let v = commonOption(level: level, name: name) ?? ipOption(level: level, name: name) { return .option(v) }
        if level == SOL_SOCKET, let v = recordedOption(name: name, kept: Self.recordedOptions) { return .option(v) }
        guard let pcb else { return .error(EBADF) }
        switch (level, name) {
        case (SOL_SOCKET, SO_TYPE): return .option(int32Bytes(Int32(SOCK_DGRAM.rawValue)))
        case (SOL_SOCKET, SO_PROTOCOL): return .option(int32Bytes(Int32(IPPROTO_UDP)))
        case (SOL_SOCKET, SO_ACCEPTCONN): return .option(int32Bytes(0))
        case (SOL_SOCKET, SO_REUSEADDR): return .option(int32Bytes(cstack_pcb_get_option(pcb, UInt8(SOF_REUSEADDR))))
        case (SOL_SOCKET, SO_BROADCAST): return .option(int32Bytes(cstack_pcb_get_option(pcb, UInt8(SOF_BROADCAST))))
        case (SOL_SOCKET, SO_RCVBUF): return .option(int32Bytes(Int32(Int(info.receiveSize) * slotSize)))
        case (SOL_SOCKET, SO_SNDBUF): return .option(int32Bytes(Int32(Int(info.sendSize) * slotSize)))
        case _ where ![SOL_SOCKET, Int32(IPPROTO_UDP), Int32(IPPROTO_IP), Int32(IPPROTO_IPV6)].contains(level):
            return .error(unknownLevelError) // a level no layer of the socket knows
        default: return .error(ENOPROTOOPT)
        }
    }

    private func setOption(level: Int32, name: Int32, value: [UInt8]) -> Reply {
        guard let pcb else { return .error(EBADF) }
        if let reply = setIPOption(level: level, name: name, value: value, pcb: UnsafeMutableRawPointer(pcb),
                                   bound: cstack_udp_local_port(pcb) != 0) {
            return reply
        }
        if level == SOL_SOCKET, let reply = setRecordedOption(name: name, value: value, kept: Self.recordedOptions) {
            // SO_REUSEPORT shares a port as SO_REUSEADDR does for UDP in lwIP.
            if name == SO_REUSEPORT, case .ok = reply, let v = int32Value(value) {
                cstack_pcb_set_option(pcb, UInt8(SOF_REUSEADDR), v != 0 ? 1 : 0)
            }
            return reply
        }
        guard let v = int32Value(value) else { return .error(EINVAL) }
        switch (level, name) {
        case (SOL_SOCKET, SO_REUSEADDR):
            cstack_pcb_set_option(pcb, UInt8(SOF_REUSEADDR), v != 0 ? 1 : 0)
        case (SOL_SOCKET, SO_BROADCAST):
            cstack_pcb_set_option(pcb, UInt8(SOF_BROADCAST), v != 0 ? 1 : 0)
        case (SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF):
            // Channel rings are sized when the socket is made (--datagram-ring-items); getsockopt
            // reports the real size, as Linux reports the size it actually granted.
            guard v >= 0 else { return .error(EINVAL) }
        default:
            return .error(ENOPROTOOPT)
        }
        return .ok(value: 0)
    }

    override func flushBeforeRelease() {
        try? serviceStackEvent()
    }

    override func releaseStack() {
        session.server.retiredUDP.drops += receiveDrops
        session.server.retiredUDP.sendErrors += sendErrors
        if receiveDrops > 0 || sendErrors > 0 {
            session.logger.info("UDP socket \(handle) closed: \(receiveDrops) datagrams dropped on receive (ring full), \(sendErrors) sends failed")
        }
        if let pcb {
            udp_recv(pcb, nil, nil)
            udp_remove(pcb)
            self.pcb = nil
        }
        for i in receivePbufs.indices {
            if let p = receivePbufs[i] {
                pbuf_free(p)
                receivePbufs[i] = nil
                session.releaseBufferMemory(receiveCharges[i])
                receiveCharges[i] = 0
            }
        }
        // The server is ending the session of a client still connected (not the app closing this
        // socket, not the client hanging up): with process-vm its library may still be writing into
        // these buffers.
        let quarantine = transport == .processVM && session.isClosed && !session.clientHungUp
        for i in sendPbufs.indices {
            if let p = sendPbufs[i] {
                if quarantine { session.quarantined.append(p) } else { pbuf_free(p) }
                sendPbufs[i] = nil
                releaseBuffer()
            }
        }
    }
}

/// lwIP's udp_recv callback. Free function: a closure in main.swift would be main-actor isolated and
/// trap when lwIP's tcpip thread calls it.
func udpReceived(_ arg: UnsafeMutableRawPointer?, _ pcb: UnsafeMutablePointer<udp_pcb>?, _ p: UnsafeMutablePointer<pbuf>?,
                 _ addr: UnsafePointer<ip_addr_t>?, _ port: UInt16) {
    guard let p else { return }
    guard let arg else {
        pbuf_free(p)
        return
    }
    Unmanaged<UDPSocket>.fromOpaque(arg).takeUnretainedValue().received(p, from: addr, port: port)
}

/// The handler of cstack_udp_report_refusals; `arg` is the refused pcb's udp_recv argument.
func udpRefused(_ arg: UnsafeMutableRawPointer?) {
    guard let arg else { return }
    Unmanaged<UDPSocket>.fromOpaque(arg).takeUnretainedValue().refused()
}

// MARK: address conversion

func ipAddress(_ a: SocketAddress) -> ip_addr_t {
    var ip = ip_addr_t()
    a.bytes.withUnsafeBufferPointer { cstack_ip_set(&ip, a.family == .inet ? 4 : 6, $0.baseAddress, a.scopeID) }
    return ip
}

func anyAddress(_ family: SocketAddress.Family) -> ip_addr_t {
    var ip = ip_addr_t()
    cstack_ip_set_any(&ip, family == .inet ? 4 : 6)
    return ip
}

func socketAddress(_ ip: UnsafePointer<ip_addr_t>, port: UInt16, fallbackFamily: SocketAddress.Family = .inet) -> SocketAddress {
    var bytes = [UInt8](repeating: 0, count: 16)
    let family = bytes.withUnsafeMutableBufferPointer { cstack_ip_get(ip, $0.baseAddress) }
    switch family {
    case 4: return SocketAddress(family: .inet, port: port, bytes: Array(bytes[..<4]))
    case 6: return SocketAddress(family: .inet6, port: port, bytes: bytes)
    default: return fallbackFamily == .inet ? .ipv4Any(port: port) : .ipv6Any(port: port)
    }
}
