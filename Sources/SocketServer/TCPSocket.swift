import CLwIP
import CShims
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket: an lwIP tcp_pcb (connection or listener) and a stream channel of two byte rings.
///
/// Receive: lwIP's recv callback copies each pbuf into the stack->app ring; what does not fit waits
/// in `pending` (in order). The TCP window is opened with `tcp_recved` only as the *application*
/// consumes bytes from the ring, so a slow reader closes the window and throttles the remote
/// sender; server memory per connection stays bounded by the ring plus one window. The app tells us
/// it consumed (a notify on the app->stack eventfd) only when we ask, through CSHIMS_WANTS_RX_PROGRESS,
/// which we set once a quarter window is outstanding.
///
/// Send: bytes the app wrote into the app->stack ring go to `tcp_write` (copied) as fast as lwIP's
/// send buffer takes them, on the app's notification and on every `sent` callback.
///
/// Close: queued data is delivered and then FIN (`tcp_close`); with SO_LINGER 0, or unread
/// received data (as Linux does), the connection is reset instead. A socket the app closed while
/// its data is still draining lives on in the session's closing list until done.
final class TCPSocket: ServerSocket {
    enum Role { case fresh, listener, connecting, connected }

    private(set) var pcb: UnsafeMutablePointer<tcp_pcb>?
    private(set) var role: Role
    private let rx: StreamRingProducer
    private let tx: StreamRingConsumer
    private var rxWritten: UInt64 = 0
    private var rxRecved: UInt64 = 0
    private var pending: [UnsafeMutablePointer<pbuf>] = []
    private var pendingOffset = 0
    private var pendingBytes = 0
    private var peerClosed = false
    /// READ_EOF is in the channel's events (kept here: the client can rewrite the shared copy).
    private var eofDelivered = false
    private var readShutdown = false
    private var writeShutdownRequested = false
    private var finSent = false
    private(set) var closeRequested = false
    private var closingPolls = 0
    private var lingerZero = false
    private var lingerOn = false
    private var lingerSeconds: Int32 = 0
    private var failed = false
    /// Connected to a local listener that has not taken the connection yet (see `connected`).
    private var awaitingLocalAccept = false
    /// An accepted connection from another local client: that client's session id (see
    /// `Session+AcceptFairness.swift`).
    var acceptedFrom: UInt64?
    // Listener state.
    private var backlog = 0
    private(set) var pendingConnections: [UInt32] = []

    /// Largest listen backlog (Linux's default net.core.somaxconn).
    static let maximumBacklog: Int32 = 4096

    /// A fresh socket (not yet bound, listening or connected).
    override init(session: Session, handle: UInt32, domain: Int32, info: ChannelInfo, view: ChannelView,
                  appEvent: EventFD, stackEvent: EventFD) throws(ServerError) {
        rx = view.streamProducer(receive: true, capacity: Int(info.receiveSize))
        tx = view.streamConsumer(receive: false, capacity: Int(info.sendSize))
        role = .fresh
        try super.init(session: session, handle: handle, domain: domain, info: info, view: view, appEvent: appEvent, stackEvent: stackEvent)
        guard let pcb = tcp_new_ip_type(UInt8(domain == AF_INET6 ? IPADDR_TYPE_V6.rawValue : IPADDR_TYPE_V4.rawValue)) else {
            throw ServerError("lwIP could not allocate a TCP pcb")
        }
        self.pcb = pcb
        tcp_arg(pcb, Unmanaged.passUnretained(self).toOpaque())
    }

    /// A connection accepted by a listener.
    init(accepted pcb: UnsafeMutablePointer<tcp_pcb>, session: Session, handle: UInt32, domain: Int32, info: ChannelInfo,
         view: ChannelView, appEvent: EventFD, stackEvent: EventFD) throws(ServerError) {
        rx = view.streamProducer(receive: true, capacity: Int(info.receiveSize))
        tx = view.streamConsumer(receive: false, capacity: Int(info.sendSize))
        role = .connected
        try super.init(session: session, handle: handle, domain: domain, info: info, view: view, appEvent: appEvent, stackEvent: stackEvent)
        self.pcb = pcb
        attachConnectionCallbacks(pcb)
        Self.tuneLocal(pcb)
        view.setEvents(CSHIMS_EV_CONNECTED)
    }

    /// Segment size for connections between two of the stack's own addresses (1460 otherwise, as
    /// compiled into Debian's lwIP). It must stay below lwIP's TCP_WND_UPDATE_THRESHOLD (5840 here):
    /// with larger segments the receiver's window updates can stay smaller than one segment and the
    /// sender stalls (seen: transfers hang at 6000 and 8192, run at 2920 and 4096). 4096 cuts the
    /// per-segment work of a loopback stream by 2.8x.
    static let localSegmentSize: UInt16 = 4096

    private static func tuneLocal(_ pcb: UnsafeMutablePointer<tcp_pcb>) {
        _ = cstack_tcp_raise_local_mss(pcb, localSegmentSize)
    }

    private func attachConnectionCallbacks(_ pcb: UnsafeMutablePointer<tcp_pcb>) {
        tcp_arg(pcb, Unmanaged.passUnretained(self).toOpaque())
        tcp_recv(pcb, tcpReceived)
        tcp_sent(pcb, tcpSent)
        tcp_err(pcb, tcpFailed)
        tcp_poll(pcb, tcpPolled, 2) // every second: retry stalled work, bound a stuck close
    }

    private func detachCallbacks(_ pcb: UnsafeMutablePointer<tcp_pcb>) {
        tcp_arg(pcb, nil)
        if role == .listener {
            tcp_accept(pcb, nil)
        } else {
            tcp_recv(pcb, nil)
            tcp_sent(pcb, nil)
            tcp_err(pcb, nil)
            tcp_poll(pcb, nil, 0)
        }
    }

    var peerAddress: SocketAddress? {
        guard let pcb, role == .connected || role == .connecting else { return nil }
        return socketAddress(cstack_tcp_remote_ip(pcb), port: cstack_tcp_remote_port(pcb), fallbackFamily: family)
    }

    // MARK: receive (lwIP callbacks, core lock held)

    func received(_ p: UnsafeMutablePointer<pbuf>?) {
        guard let p else {
            peerClosed = true
            moveReceived()
            return
        }
        if readShutdown {
            // SHUT_RD: acknowledge and drop, as Linux does.
            if let pcb { tcp_recved(pcb, cstack_pbuf_tot_len(p)) }
            pbuf_free(p)
            return
        }
        pending.append(p)
        pendingBytes += Int(cstack_pbuf_tot_len(p))
        moveReceived()
        // Quick ACK: lwIP would otherwise delay it up to 250 ms, which with Nagle on the sending
        // side stalls request/response traffic (seen in the lwIP spike).
        if let pcb { cstack_tcp_ack_now(pcb) }
    }

    /// Moves pending data into the ring, reports consumption to lwIP, and signals the app.
    private func moveReceived() {
        guard !failed else { return }
        var moved = 0
        do {
            while let p = pending.first {
                let (r1, r2) = try rx.writableRegions()
                let free = r1.count + r2.count
                if free == 0 { break }
                let total = Int(cstack_pbuf_tot_len(p))
                let n = min(free, total - pendingOffset)
                let first = min(n, r1.count)
                if first > 0 { pbuf_copy_partial(p, r1.baseAddress, UInt16(first), UInt16(pendingOffset)) }
                if n > first { pbuf_copy_partial(p, r2.baseAddress, UInt16(n - first), UInt16(pendingOffset + first)) }
                rx.commit(n)
                rxWritten += UInt64(n)
                moved += n
                pendingOffset += n
                pendingBytes -= n
                if pendingOffset == total {
                    pbuf_free(p)
                    pending.removeFirst()
                    pendingOffset = 0
                }
            }
        } catch {
            clientBrokeRing(error)
            return
        }
        var wake = moved > 0
        if peerClosed && pending.isEmpty && !eofDelivered {
            eofDelivered = true
            view.setEvents(CSHIMS_EV_READ_EOF | (finSent ? CSHIMS_EV_HUP : 0))
            wake = true
        }
        updateWindow()
        if wake { toApp.notify() }
    }

    /// Opens the window by what the app has consumed, and asks the app to report progress when a
    /// quarter window (or more) is outstanding.
    private func updateWindow() {
        guard pcb != nil, !failed else { return }
        reportConsumed()
        guard !failed else { return } // the client broke its ring
        let outstanding = Int(rxWritten &- rxRecved) + pendingBytes
        if outstanding >= Int(cstack_tcp_window()) / 4 || !pending.isEmpty {
            view.setStackWants(CSHIMS_WANTS_RX_PROGRESS)
            cshims_fence_seq_cst()
            reportConsumed() // the app may have consumed before it could see the flag
        }
    }

    /// Gives lwIP back (`tcp_recved`) the window for every byte the app has taken from the ring.
    ///
    /// The ring's consumer index comes from the client's memory: `freeSpace` has checked that it only
    /// moved forward and not past what we wrote, and the arithmetic below is checked again, so a
    /// scribbled index ends the client's session instead of trapping the server.
    private func reportConsumed() {
        guard let pcb else { return }
        let free: Int
        do { free = try rx.freeSpace() } catch {
            clientBrokeRing(error)
            return
        }
        let used = UInt64(Int(rx.geometry.capacity) - free)
        guard used <= rxWritten, rxWritten - used >= rxRecved else {
            clientBrokeRing(SharedError(.corruptSharedState, "stream ring: \(used) bytes unread of \(rxWritten) written, \(rxRecved) already consumed"))
            return
        }
        var delta = rxWritten - used - rxRecved
        guard delta > 0 else { return }
        while delta > 0 {
            let chunk = UInt16(min(delta, 0xFFFF))
            tcp_recved(pcb, chunk)
            rxRecved += UInt64(chunk)
            delta -= UInt64(chunk)
        }
        // Announce the new window now. tcp_recved sends an update only when the window grew by
        // TCP_WND_UPDATE_THRESHOLD (5840) at once, while it may record a smaller growth (one segment
        // or more) as announced: a sender waiting for window could then be left to lwIP's persist
        // timer. We report consumption only now and then, so each report is worth an ACK. (Inside
        // lwIP's input processing tcp_output defers to it, which sends the ACK.)
        cstack_tcp_ack_now(pcb)
        tcp_output(pcb)
    }

    /// The client broke this socket's ring: nothing more moves on it, and the client's session ends
    /// (at the end of the batch: we may be inside an lwIP callback, where the pcb must not be freed).
    private func clientBrokeRing(_ error: SharedError) {
        failed = true
        session.misbehaved(error)
    }

    // MARK: send

    /// Hands ring bytes to lwIP while its send buffer has room.
    private func pumpSend() {
        guard let pcb, role == .connected, !failed else { return }
        var wrote = 0
        do {
            while true {
                let available = try tx.available()
                if available == 0 { break }
                let room = Int(cstack_tcp_sndbuf(pcb))
                if room == 0 || cstack_tcp_sndqueuelen(pcb) >= cstack_tcp_sndqueuelen_max() { break }
                let (r1, _) = try tx.readableRegions()
                let n = min(r1.count, room, 0xFFFF)
                let more = n < available ? UInt8(TCP_WRITE_FLAG_MORE) : 0
                let err = tcp_write(pcb, r1.baseAddress, UInt16(n), UInt8(TCP_WRITE_FLAG_COPY) | more)
                if err == err_t(ERR_MEM.rawValue) { break }
                guard err == errOK else {
                    fail(errnoFor(err), reset: false)
                    return
                }
                tx.consume(n)
                wrote += n
            }
            if wrote > 0 {
                tcp_output(pcb)
                gate.release()
            }
            if try tx.available() == 0 {
                if writeShutdownRequested && !finSent {
                    tcp_shutdown(pcb, 0, 1)
                    finSent = true
                    if peerClosed && pending.isEmpty { view.setEvents(CSHIMS_EV_HUP) }
                }
                if closeRequested { finishClose() }
            }
        } catch {
            session.misbehaved(error)
        }
    }

    func sent() {
        closingPolls = 0
        pumpSend()
    }

    /// lwIP's poll callback (every second).
    /// - Returns: true when it aborted the pcb (the callback must then return ERR_ABRT).
    func polled() -> Bool {
        if closeRequested {
            closingPolls += 1
            // A peer that never reads would keep a closed socket draining forever: give up after 60 s.
            if closingPolls >= 60, let pcb {
                detachCallbacks(pcb)
                tcp_abort(pcb)
                self.pcb = nil
                session.finishedClosing(self)
                return true
            }
        }
        moveReceived()
        pumpSend()
        return false
    }

    override func serviceStackEvent() throws(SharedError) {
        toStack.acknowledge()
        guard role == .connected else { return }
        moveReceived()
        pumpSend()
    }

    // MARK: connection events

    func connected(_ err: err_t) {
        guard err == errOK else {
            fail(errnoFor(err), reset: false)
            return
        }
        guard let pcb else { return }
        attachConnectionCallbacks(pcb)
        Self.tuneLocal(pcb)
        // To one of the stack's own addresses, the listener is ours: the connection is complete for
        // the app only once that listener has taken it (its backlog or fairness may refuse it; then
        // the reset arrives while we are still connecting, and the app's connect fails with
        // ECONNREFUSED as the kernel's would, instead of succeeding and being reset).
        if cstack_is_local_address(cstack_tcp_remote_ip(pcb)) != 0 {
            awaitingLocalAccept = true
            return
        }
        completeConnect()
    }

    /// The local listener this connection reached has taken it (see `connected`).
    func acceptedByLocalListener() {
        guard awaitingLocalAccept else { return }
        awaitingLocalAccept = false
        completeConnect()
    }

    private func completeConnect() {
        role = .connected
        view.setEvents(CSHIMS_EV_CONNECTED)
        // The app learns of the connection from POLLOUT (the gate, blocked since its connect). A
        // fresh connection has nothing to read, so no wake-up and no spare count: either would
        // leave the descriptor readable, and a poll(POLLIN) then a blocking recv would block.
        // Keep a count only for a signal the app has not taken in yet.
        gate.release(keepReadable: toApp.isPending)
        pumpSend()
    }

    /// lwIP's err callback: the pcb is already freed.
    func errored(_ err: err_t) {
        pcb = nil
        let code: Int32
        switch (role, Int32(err)) {
        case (.connecting, -14): code = ECONNREFUSED // RST in answer to our SYN
        case (.connecting, -13): code = ETIMEDOUT    // SYN retransmissions exhausted
        default: code = errnoFor(err)
        }
        fail(code, reset: Int32(err) == -14)
        if closeRequested { session.finishedClosing(self) }
    }

    /// Records an error for the app (SO_ERROR, recv/send) and wakes it.
    private func fail(_ code: Int32, reset: Bool) {
        failed = true
        pendingError = code
        view.setPendingError(code)
        view.setEvents(CSHIMS_EV_ERROR | CSHIMS_EV_READ_EOF | CSHIMS_EV_WRITE_SHUT | CSHIMS_EV_HUP | (reset ? CSHIMS_EV_RESET : 0))
        for p in pending { pbuf_free(p) }
        pending.removeAll()
        pendingBytes = 0
        toApp.notify()
        gate.release()
    }

    // MARK: listener

    func accepted(_ newpcb: UnsafeMutablePointer<tcp_pcb>) -> err_t {
        let connector = cstack_tcp_local_peer_arg(newpcb).map { Unmanaged<TCPSocket>.fromOpaque($0).takeUnretainedValue() }
        guard pendingConnections.count < backlog,
              let socket = session.admitAcceptedConnection(newpcb, from: connector?.session, domain: domain,
                                                           port: pcb.map { cstack_tcp_local_port($0) } ?? 0)
        else {
            tcp_abort(newpcb) // a local connector is still connecting: it sees ECONNREFUSED
            return err_t(ERR_ABRT.rawValue)
        }
        connector?.acceptedByLocalListener()
        pendingConnections.append(socket.handle)
        view.setPendingAccepts(UInt32(pendingConnections.count))
        toApp.notify()
        return errOK
    }

    /// The next connection to hand to the app, if any.
    func takePendingConnection() -> UInt32? {
        guard !pendingConnections.isEmpty else { return nil }
        let handle = pendingConnections.removeFirst()
        view.setPendingAccepts(UInt32(pendingConnections.count))
        return handle
    }

    // MARK: control requests

    override func handle(_ request: Request) -> Reply {
        switch request {
        case .bind(_, let address):
            guard let pcb, role == .fresh else { return .error(EINVAL) }
            guard address.family == family else { return .error(EAFNOSUPPORT) }
            guard cstack_tcp_local_port(pcb) == 0 else { return .error(EINVAL) }
            var ip: ip_addr_t
            switch bindAddress(address) {
            case .success(let a): ip = a
            case .failure(let e): return .error(e.rawValue)
            }
            let err = tcp_bind(pcb, &ip, address.port)
            return err == errOK ? .ok(value: 0) : .error(errnoFor(err))
        case .listen(_, let requested):
            if role == .listener {
                backlog = Int(max(1, min(requested, Self.maximumBacklog)))
                return .ok(value: 0)
            }
            guard let pcb, role == .fresh else { return .error(EINVAL) }
            if cstack_tcp_local_port(pcb) == 0 {
                var ip = anyAddress(family)
                let err = tcp_bind(pcb, &ip, 0)
                guard err == errOK else { return .error(errnoFor(err)) }
            }
            var err = errOK
            guard let listener = cstack_tcp_listen(pcb, 255, &err) else { return .error(errnoFor(err)) }
            self.pcb = listener // lwIP freed the original pcb
            role = .listener
            backlog = Int(max(1, min(requested <= 0 ? 128 : requested, Self.maximumBacklog)))
            tcp_arg(listener, Unmanaged.passUnretained(self).toOpaque())
            tcp_accept(listener, tcpAccepted)
            return .ok(value: 0)
        case .connect(_, let address):
            switch role {
            case .connecting: return .error(EALREADY)
            case .connected: return .error(EISCONN)
            case .listener: return .error(EINVAL)
            case .fresh: break
            }
            guard let pcb else { return .error(failed ? pendingError : EBADF) }
            guard address.family == family, address.isValid else { return .error(EAFNOSUPPORT) }
            guard address.port != 0 else { return .error(ECONNREFUSED) }
            var ip = ipAddress(address)
            tcp_recv(pcb, tcpReceived)
            tcp_err(pcb, tcpFailed)
            let err = tcp_connect(pcb, &ip, address.port, tcpConnected)
            guard err == errOK else {
                return .error(Int32(err) == -4 ? ENETUNREACH : errnoFor(err))
            }
            role = .connecting
            return .error(EINPROGRESS)
        case .getsockname:
            guard let pcb else { return .address(family == .inet ? .ipv4Any() : .ipv6Any()) }
            return .address(socketAddress(cstack_tcp_local_ip(pcb), port: cstack_tcp_local_port(pcb), fallbackFamily: family))
        case .getpeername:
            guard role == .connected, let peer = peerAddress else { return .error(ENOTCONN) }
            return .address(peer)
        case .shutdown(_, let how):
            guard role == .connected else { return .error(ENOTCONN) }
            if how == SHUT_RD || how == SHUT_RDWR {
                readShutdown = true
                if let pcb {
                    for p in pending { tcp_recved(pcb, cstack_pbuf_tot_len(p)); pbuf_free(p) }
                }
                pending.removeAll()
                pendingBytes = 0
                pendingOffset = 0
                view.setEvents(CSHIMS_EV_READ_EOF)
                toApp.notify()
            }
            if how == SHUT_WR || how == SHUT_RDWR {
                writeShutdownRequested = true
                view.setEvents(CSHIMS_EV_WRITE_SHUT)
                pumpSend()
            }
            return .ok(value: 0)
        case .getsockopt(_, let level, let name, let maxLength):
            return getOption(level: level, name: name, maxLength: Int(maxLength))
        case .setsockopt(_, let level, let name, let value):
            return setOption(level: level, name: name, value: value)
        default:
            return .error(EINVAL)
        }
    }

    private func getOption(level: Int32, name: Int32, maxLength: Int) -> Reply {
        if let v = commonOption(level: level, name: name) {
            if level == SOL_SOCKET && name == SO_ERROR { view.setPendingError(0) }
            return .option(v)
        }
        switch (level, name) {
        case (SOL_SOCKET, SO_TYPE): return .option(int32Bytes(Int32(SOCK_STREAM.rawValue)))
        case (SOL_SOCKET, SO_PROTOCOL): return .option(int32Bytes(Int32(IPPROTO_TCP)))
        case (SOL_SOCKET, SO_ACCEPTCONN): return .option(int32Bytes(role == .listener ? 1 : 0))
        case (SOL_SOCKET, SO_RCVBUF): return .option(int32Bytes(Int32(info.receiveSize)))
        case (SOL_SOCKET, SO_SNDBUF): return .option(int32Bytes(Int32(info.sendSize)))
        case (SOL_SOCKET, SO_LINGER):
            var l = linger(l_onoff: lingerOn ? 1 : 0, l_linger: lingerSeconds)
            return .option(withUnsafeBytes(of: &l) { Array($0) })
        case (Int32(IPPROTO_IPV6), IPV6_V6ONLY) where domain == AF_INET6: return .option(int32Bytes(1))
        default: break
        }
        guard let pcb else { return .error(failed ? EINVAL : EBADF) }
        switch (level, name) {
        case (SOL_SOCKET, SO_REUSEADDR): return .option(int32Bytes(cstack_tcp_get_option(pcb, UInt8(SOF_REUSEADDR))))
        case (SOL_SOCKET, SO_KEEPALIVE): return .option(int32Bytes(cstack_tcp_get_option(pcb, UInt8(SOF_KEEPALIVE))))
        case (Int32(IPPROTO_TCP), TCP_NODELAY): return .option(int32Bytes(cstack_tcp_nodelay(pcb)))
        case (Int32(IPPROTO_TCP), TCP_KEEPIDLE): return .option(int32Bytes(Int32(cstack_tcp_keep_idle(pcb) / 1000)))
        case (Int32(IPPROTO_TCP), TCP_KEEPINTVL): return .option(int32Bytes(Int32(cstack_tcp_keep_intvl(pcb) / 1000)))
        case (Int32(IPPROTO_TCP), TCP_KEEPCNT): return .option(int32Bytes(Int32(cstack_tcp_keep_cnt(pcb))))
        case (Int32(IPPROTO_TCP), TCP_MAXSEG): return .option(int32Bytes(Int32(cstack_tcp_mss(pcb))))
        case (Int32(IPPROTO_TCP), TCP_INFO):
            guard role != .listener else { return .error(EOPNOTSUPP) }
            var bytes = [UInt8](repeating: 0, count: min(maxLength, ControlMessage.maximumOptionLength))
            let n = bytes.withUnsafeMutableBytes { cstack_tcp_info(pcb, $0.baseAddress, $0.count) }
            return .option(Array(bytes[..<n]))
        default: return .error(ENOPROTOOPT)
        }
    }

    private func setOption(level: Int32, name: Int32, value: [UInt8]) -> Reply {
        if level == SOL_SOCKET && name == SO_LINGER {
            guard value.count >= MemoryLayout<linger>.size else { return .error(EINVAL) }
            let l = value.withUnsafeBytes { $0.loadUnaligned(as: linger.self) }
            lingerOn = l.l_onoff != 0
            lingerSeconds = l.l_linger
            lingerZero = lingerOn && l.l_linger == 0
            return .ok(value: 0)
        }
        guard let v = int32Value(value) else { return .error(EINVAL) }
        switch (level, name) {
        case (SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF):
            // Rings are sized when the socket is made (--stream-ring-size); getsockopt reports it.
            return v >= 0 ? .ok(value: 0) : .error(EINVAL)
        case (Int32(IPPROTO_IPV6), IPV6_V6ONLY) where domain == AF_INET6:
            return v != 0 ? .ok(value: 0) : .error(EOPNOTSUPP)
        default: break
        }
        guard let pcb else { return .error(EINVAL) }
        switch (level, name) {
        case (SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT):
            cstack_tcp_set_option(pcb, UInt8(SOF_REUSEADDR), v != 0 ? 1 : 0)
        case (SOL_SOCKET, SO_KEEPALIVE):
            cstack_tcp_set_option(pcb, UInt8(SOF_KEEPALIVE), v != 0 ? 1 : 0)
        case (Int32(IPPROTO_TCP), TCP_NODELAY):
            cstack_tcp_set_nodelay(pcb, v != 0 ? 1 : 0)
        case (Int32(IPPROTO_TCP), TCP_KEEPIDLE):
            guard v >= 1, v <= 32767 else { return .error(EINVAL) }
            cstack_tcp_set_keep_idle(pcb, UInt32(v) * 1000)
        case (Int32(IPPROTO_TCP), TCP_KEEPINTVL):
            guard v >= 1, v <= 32767 else { return .error(EINVAL) }
            cstack_tcp_set_keep_intvl(pcb, UInt32(v) * 1000)
        case (Int32(IPPROTO_TCP), TCP_KEEPCNT):
            guard v >= 1, v <= 127 else { return .error(EINVAL) }
            cstack_tcp_set_keep_cnt(pcb, UInt32(v))
        default:
            return .error(ENOPROTOOPT)
        }
        return .ok(value: 0)
    }

    // MARK: close

    /// The app closed the socket.
    /// - Returns: true when the socket can be released now, false while it drains queued data.
    func closeByApp() -> Bool {
        guard let pcb else { return true }
        if role != .connected {
            detachCallbacks(pcb)
            if role == .fresh || role == .listener { tcp_close(pcb) } else { tcp_abort(pcb) }
            self.pcb = nil
            return true
        }
        let unread = (try? rx.freeSpace()).map { $0 < Int(rx.geometry.capacity) } ?? true
        if lingerZero || unread || !pending.isEmpty {
            // RST: SO_LINGER 0, or data the app never read (Linux resets in that case too).
            abort()
            return true
        }
        closeRequested = true
        pumpSend()
        return self.pcb == nil
    }

    /// Sends FIN after everything queued, and lets lwIP finish the close on its own.
    private func finishClose() {
        guard let pcb else { return }
        // lwIP's tcp_close resets instead of sending FIN when the window is not fully open (it takes
        // that as data the application never read). The app read everything (or closeByApp would
        // have reset), but consumption below a quarter window is reported lazily: report it now.
        // Bytes still in the ring (arrived after the close) stay unreported, so those still reset.
        if !failed { reportConsumed() }
        detachCallbacks(pcb)
        if tcp_close(pcb) != errOK { tcp_abort(pcb) }
        self.pcb = nil
        session.finishedClosing(self)
    }

    /// Resets the connection (the client is gone, or SO_LINGER 0).
    func abort() {
        guard let pcb else { return }
        detachCallbacks(pcb)
        if role == .listener { tcp_close(pcb) } else { tcp_abort(pcb) }
        self.pcb = nil
    }

    override func releaseStack() {
        abort()
        for p in pending { pbuf_free(p) }
        pending.removeAll()
    }
}

// MARK: lwIP callbacks (free functions: see udpReceived)

@inline(__always)
private func tcpSocket(_ arg: UnsafeMutableRawPointer?) -> TCPSocket? {
    arg.map { Unmanaged<TCPSocket>.fromOpaque($0).takeUnretainedValue() }
}

func tcpReceived(_ arg: UnsafeMutableRawPointer?, _ pcb: UnsafeMutablePointer<tcp_pcb>?, _ p: UnsafeMutablePointer<pbuf>?, _ err: err_t) -> err_t {
    guard let socket = tcpSocket(arg) else {
        if let p {
            if let pcb { tcp_recved(pcb, cstack_pbuf_tot_len(p)) }
            pbuf_free(p)
        }
        return errOK
    }
    socket.received(p)
    return errOK
}

func tcpSent(_ arg: UnsafeMutableRawPointer?, _ pcb: UnsafeMutablePointer<tcp_pcb>?, _ len: UInt16) -> err_t {
    tcpSocket(arg)?.sent()
    return errOK
}

func tcpFailed(_ arg: UnsafeMutableRawPointer?, _ err: err_t) {
    tcpSocket(arg)?.errored(err)
}

func tcpConnected(_ arg: UnsafeMutableRawPointer?, _ pcb: UnsafeMutablePointer<tcp_pcb>?, _ err: err_t) -> err_t {
    tcpSocket(arg)?.connected(err)
    return errOK
}

func tcpPolled(_ arg: UnsafeMutableRawPointer?, _ pcb: UnsafeMutablePointer<tcp_pcb>?) -> err_t {
    guard let socket = tcpSocket(arg) else { return errOK }
    return socket.polled() ? err_t(ERR_ABRT.rawValue) : errOK
}

func tcpAccepted(_ arg: UnsafeMutableRawPointer?, _ newpcb: UnsafeMutablePointer<tcp_pcb>?, _ err: err_t) -> err_t {
    guard let newpcb else { return err_t(ERR_VAL.rawValue) }
    guard err == errOK, let listener = tcpSocket(arg) else {
        tcp_abort(newpcb)
        return err_t(ERR_ABRT.rawValue)
    }
    return listener.accepted(newpcb)
}
