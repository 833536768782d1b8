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
    /// Where the app bound explicitly: a fresh pcb (after a failed connect, a disconnect or a
    /// listener's shutdown) is bound there again, as Linux keeps an explicit bind.
    private var explicitBind: (ip: ip_addr_t, port: UInt16)?
    /// Bytes in the receive ring from a connection that is gone: their consumption is not reported
    /// to the new connection's window.
    private var staleReceived: UInt64 = 0
    /// `becomeFresh` left the pcb to be made at the next request.
    private var freshPCBPending = false
    /// TCP-level options, kept here as well as in the pcb: a listener's pcb has no room for them
    /// (lwIP's tcp_pcb_listen lacks the fields; writing them there overwrote its accept callback
    /// and crashed the server at the next connection), and its connections inherit them.
    private var options = TCPOptions()
    // Listener state.
    /// Connections the app may accept: `listen`'s backlog plus one, as Linux counts.
    private var acceptQueueLimit = 0
    private(set) var pendingConnections: [UInt32] = []
    /// Established connections beyond the accept queue, not yet visible to `accept` (Linux drops
    /// their SYN until there is room; a local connector stays "connecting" meanwhile).
    private var overflowConnections: [(handle: UInt32, connector: WeakTCPSocket)] = []

    /// Largest listen backlog (Linux's default net.core.somaxconn).
    static let maximumBacklog: Int32 = 4096

    /// Established connections a listener holds beyond its accept queue, unseen by `accept`, before
    /// it refuses more (each holds a channel in the listener's segment, so the segment bounds it too).
    static let maximumWaiting = 128

    /// How many connections `listen(backlog)` lets wait for `accept`: Linux caps the backlog at
    /// somaxconn (a negative one, compared unsigned, too) and refuses only past backlog + 1.
    static func acceptQueueLimit(_ backlog: Int32) -> Int {
        Int(backlog < 0 ? maximumBacklog : min(backlog, maximumBacklog)) + 1
    }

    /// Resets every connection the app has not accepted (a listener closing or shutting down).
    func resetUnacceptedConnections() {
        for handle in takeAllUnaccepted() { session.resetUnaccepted(handle) }
    }

    /// A fresh socket (not yet bound, listening or connected).
    override init(session: Session, handle: UInt32, domain: Int32, info: ChannelInfo, view: ChannelView,
                  appEvent: EventFD, stackEvent: EventFD) throws(ServerError) {
        rx = view.streamProducer(receive: true, capacity: Int(info.receiveSize))
        tx = view.streamConsumer(receive: false, capacity: Int(info.sendSize))
        role = .fresh
        try super.init(session: session, handle: handle, domain: domain, info: info, view: view, appEvent: appEvent, stackEvent: stackEvent)
        guard let pcb = tcp_new_ip_type(pcbType) else {
            throw ServerError("lwIP could not allocate a TCP pcb")
        }
        ipOptions.apply(to: pcb, domain: domain)
        self.pcb = pcb
        tcp_arg(pcb, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Replaces the pcb with a fresh one, bound again where the app bound it: after a failed
    /// connect, a disconnect (`connect(AF_UNSPEC)`) or a listener's shutdown, the socket is a new,
    /// unconnected socket, as Linux's goes back to CLOSE. The old connection is reset (a listener
    /// is closed); bytes it left in the rings are dropped.
    /// - Parameter keepEvents: leave the channel's events and error for the app to see (a failed
    ///   connect); they are cleared when it connects again.
    /// - Parameter deferPCB: make the new pcb at the next request instead of now (inside lwIP's err
    ///   callback the old pcb is still in lwIP's lists, holding the port a new one would bind).
    private func becomeFresh(keepEvents: Bool, deferPCB: Bool = false) {
        if let pcb {
            detachCallbacks(pcb)
            if role == .listener { tcp_close(pcb) } else { tcp_abort(pcb) }
            self.pcb = nil
        }
        for p in pending { pbuf_free(p) }
        pending.removeAll()
        pendingBytes = 0
        pendingOffset = 0
        peerClosed = false
        eofDelivered = false
        writeShutdownRequested = false
        finSent = false
        failed = false
        awaitingLocalAccept = false
        closingPolls = 0
        if let available = try? tx.available(), available > 0 { tx.consume(available) }
        if let free = try? rx.freeSpace() {
            let used = UInt64(Int(rx.geometry.capacity) - free)
            // Every byte not yet reported: consumed since the last report, or still unread.
            if used <= rxWritten, rxWritten >= rxRecved { staleReceived = rxWritten - rxRecved }
        }
        role = .fresh
        if !keepEvents {
            view.clearEvents(~CSHIMS_EV_CLOSED)
            view.setPendingError(0)
            pendingError = 0
        }
        freshPCBPending = true
        if !deferPCB { makeFreshPCB() }
    }

    /// The fresh pcb `becomeFresh` promised, bound again where the app bound it.
    private func makeFreshPCB() {
        guard freshPCBPending else { return }
        freshPCBPending = false
        guard let fresh = tcp_new_ip_type(pcbType) else {
            failed = true
            return
        }
        pcb = fresh
        tcp_arg(fresh, Unmanaged.passUnretained(self).toOpaque())
        options.apply(to: fresh)
        ipOptions.apply(to: fresh, domain: domain)
        if var bound = explicitBind {
            // The port may be taken meanwhile (by another socket): then the socket is unbound.
            if tcp_bind(fresh, &bound.ip, bound.port) != errOK { explicitBind = nil }
        }
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

    /// What socket-stat shows of this socket (see SocketServer+Report.swift).
    var report: SocketReport {
        let state = pcb.map { cstack_tcp_state($0) } ?? Int32(CLOSED.rawValue)
        var r = SocketReport(proto: "tcp", state: SocketReport.tcpStateName(state))
        if let pcb {
            r.local = appAddress(cstack_tcp_local_ip(pcb), port: cstack_tcp_local_port(pcb))
            if role == .connected || role == .connecting { r.peer = peerAddress }
        }
        if role == .listener {
            // As ss shows a listener: Recv-Q the connections waiting for accept, Send-Q the backlog.
            r.receiveQueue = pendingConnections.count
            r.sendQueue = max(acceptQueueLimit - 1, 0)
            r.unit = "connections"
        } else {
            let unread = (try? rx.freeSpace()).map { Int(rx.geometry.capacity) - $0 } ?? 0
            r.receiveQueue = unread + pendingBytes
            r.sendQueue = ((try? tx.available()) ?? 0) + Int(cstack_tcp_bytes_held(pcb))
        }
        return r
    }

    var peerAddress: SocketAddress? {
        guard let pcb, role == .connected || role == .connecting else { return nil }
        return appAddress(cstack_tcp_remote_ip(pcb), port: cstack_tcp_remote_port(pcb))
    }

    // MARK: receive (lwIP callbacks, core lock held)

    func received(_ p: UnsafeMutablePointer<pbuf>?) {
        guard let p else {
            peerClosed = true
            if finSent, let pcb, cstack_tcp_state(pcb) == Int32(TIME_WAIT.rawValue) {
                // FIN both ways, ours first: the connection is over for the app (Linux's socket is
                // in CLOSE; TIME_WAIT lives on without it). lwIP frees the pcb after 2 MSL without
                // telling us, so let go of it now.
                detachCallbacks(pcb)
                self.pcb = nil
            }
            moveReceived()
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
        if staleReceived > 0 {
            let skip = min(delta, staleReceived)
            staleReceived -= skip
            rxRecved += skip
            delta -= skip
        }
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
                // Room for the app once a third of the ring is free (Linux's sk_stream_is_writeable:
                // a writer woken for a few bytes would write a few bytes at a time); the client's
                // readiness uses the same rule.
                if try 3 * (Int(tx.geometry.capacity) - tx.available()) >= Int(tx.geometry.capacity) { gate.release() }
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
        if Int32(err) == -15 {
            closedInOrder()
            return
        }
        let code: Int32
        switch (role, Int32(err)) {
        case (.connecting, -14): code = ECONNREFUSED // RST in answer to our SYN
        case (.connecting, -13): code = ETIMEDOUT    // SYN retransmissions exhausted
        case (_, -14) where peerClosed: code = EPIPE // reset after the peer's FIN (Linux: CLOSE_WAIT)
        default: code = errnoFor(err)
        }
        let wasConnecting = role == .connecting
        fail(code, reset: Int32(err) == -14)
        if closeRequested {
            session.finishedClosing(self)
        } else if wasConnecting {
            // The attempt is over: the socket is unconnected again and may connect anew; the app
            // still sees the error (SO_ERROR, POLLERR) until it takes it.
            becomeFresh(keepEvents: true, deferPCB: true)
        }
    }

    /// lwIP ended the connection after FIN both ways and the last ACK (ERR_CLSD): an orderly
    /// close, not an error. The app reads what is left, then EOF.
    private func closedInOrder() {
        peerClosed = true
        finSent = true
        view.setEvents(CSHIMS_EV_WRITE_SHUT)
        moveReceived()
        toApp.notify()
        gate.release()
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
        let queueFull = pendingConnections.count >= acceptQueueLimit
        // Beyond the accept queue, up to `maximumWaiting` more wait unseen (Linux's clients retry
        // their dropped SYNs); past that the connection is refused.
        guard !queueFull || overflowConnections.count < Self.maximumWaiting,
              let socket = session.admitAcceptedConnection(newpcb, from: connector?.session, domain: domain,
                                                           port: pcb.map { cstack_tcp_local_port($0) } ?? 0)
        else {
            session.server.tcpRefusals += 1
            tcp_abort(newpcb) // a local connector is still connecting: it sees ECONNREFUSED
            return err_t(ERR_ABRT.rawValue)
        }
        socket.inherit(options, ipOptions)
        if queueFull {
            overflowConnections.append((socket.handle, WeakTCPSocket(connector)))
            return errOK
        }
        connector?.acceptedByLocalListener()
        pendingConnections.append(socket.handle)
        view.setPendingAccepts(UInt32(pendingConnections.count))
        toApp.notify()
        return errOK
    }

    /// The next connection to hand to the app, if any. A connection waiting beyond the queue takes
    /// the place it leaves (its local connector's connect completes now).
    func takePendingConnection() -> UInt32? {
        guard !pendingConnections.isEmpty else { return nil }
        let handle = pendingConnections.removeFirst()
        if !overflowConnections.isEmpty {
            let next = overflowConnections.removeFirst()
            next.connector.socket?.acceptedByLocalListener()
            pendingConnections.append(next.handle)
        }
        view.setPendingAccepts(UInt32(pendingConnections.count))
        return handle
    }

    /// Every connection not yet accepted (to reset when the listener closes or shuts down).
    func takeAllUnaccepted() -> [UInt32] {
        let all = pendingConnections + overflowConnections.map(\.handle)
        pendingConnections.removeAll()
        overflowConnections.removeAll()
        view.setPendingAccepts(0)
        return all
    }

    /// An accepted connection takes its listener's options (Linux's accepted sockets inherit them).
    func inherit(_ options: TCPOptions, _ ipOptions: IPOptions) {
        self.options = options
        self.ipOptions = ipOptions
        if let pcb {
            options.apply(to: pcb)
            ipOptions.apply(to: pcb, domain: domain)
        }
    }

    /// An accepted connection nobody will take: reset it (Linux resets never-accepted connections
    /// of a closed listener).
    func resetUnaccepted() {
        lingerZero = true
    }

    // MARK: control requests

    override func handle(_ request: Request) -> Reply {
        makeFreshPCB()
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
            // lwIP lets SO_REUSEADDR bind over a listener; Linux never does.
            if address.port != 0 && cstack_tcp_port_listening(&ip, address.port) != 0 { return .error(EADDRINUSE) }
            if address.port != 0 && options.reuseAddress && cstack_tcp_port_in_time_wait(&ip, address.port) != 0 { return .error(EADDRINUSE) }
            let err = tcp_bind(pcb, &ip, address.port)
            guard err == errOK else { return .error(errnoFor(err)) }
            explicitBind = (ip, address.port)
            return .ok(value: 0)
        case .listen(_, let requested):
            if role == .listener {
                acceptQueueLimit = Self.acceptQueueLimit(requested)
                return .ok(value: 0)
            }
            guard let pcb, role == .fresh else { return .error(EINVAL) }
            if cstack_tcp_local_port(pcb) == 0 {
                var ip = wildcardAddress
                let err = tcp_bind(pcb, &ip, 0)
                guard err == errOK else { return .error(errnoFor(err)) }
            }
            var err = errOK
            guard let listener = cstack_tcp_listen(pcb, 255, &err) else { return .error(errnoFor(err)) }
            self.pcb = listener // lwIP freed the original pcb
            role = .listener
            acceptQueueLimit = Self.acceptQueueLimit(requested)
            tcp_arg(listener, Unmanaged.passUnretained(self).toOpaque())
            tcp_accept(listener, tcpAccepted)
            return .ok(value: 0)
        case .connect(_, let address) where address.family == .unspecified:
            // connect(AF_UNSPEC): disconnect. A connection is reset, an attempt abandoned, a
            // listener closed; the socket is unconnected again (Linux's tcp_disconnect).
            if role == .listener { resetUnacceptedConnections() }
            if role != .fresh || failed { becomeFresh(keepEvents: false) }
            return .ok(value: 0)
        case .connect(_, let address):
            switch role {
            case .connecting: return .error(EALREADY)
            case .connected: return .error(EISCONN)
            case .listener: return .error(EISCONN)
            case .fresh: break
            }
            // A new attempt: what the last one left (its error, events) is forgotten.
            view.clearEvents(~CSHIMS_EV_CLOSED)
            view.setPendingError(0)
            pendingError = 0
            guard let pcb else { return .error(failed ? ENOBUFS : EBADF) }
            guard address.family == family, address.isValid else { return .error(EAFNOSUPPORT) }
            guard address.port != 0 else { return .error(ECONNREFUSED) }
            // A v4-mapped address on an IPv6-only socket: Linux says ENETUNREACH.
            guard var ip = stackAddress(address) else { return .error(ENETUNREACH) }
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
            return .address(appAddress(cstack_tcp_local_ip(pcb), port: cstack_tcp_local_port(pcb)))
        case .getpeername:
            guard role == .connected, let peer = peerAddress else { return .error(ENOTCONN) }
            return .address(peer)
        case .shutdown(_, let how):
            switch role {
            case .listener:
                // Linux: SHUT_RD (or RDWR) stops listening (unaccepted connections are reset, a
                // blocked accept fails with EINVAL); SHUT_WR alone does nothing.
                guard how != SHUT_WR else { return .ok(value: 0) }
                resetUnacceptedConnections()
                becomeFresh(keepEvents: false)
                toApp.notify()
                return .ok(value: 0)
            case .connecting:
                // Linux abandons the attempt and returns 0.
                becomeFresh(keepEvents: false)
                toApp.notify()
                gate.release()
                return .ok(value: 0)
            case .fresh:
                return .error(ENOTCONN)
            case .connected:
                break
            }
            // SHUT_RD is the client's alone: Linux keeps receiving (data that arrives is still
            // read), and only a read on an empty socket returns 0 at once.
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
        if let v = commonOption(level: level, name: name) ?? ipOption(level: level, name: name) {
            if level == SOL_SOCKET && name == SO_ERROR { view.setPendingError(0) }
            return .option(v)
        }
        if level == SOL_SOCKET, let v = recordedOption(name: name, kept: [SO_RCVLOWAT]) { return .option(v) }
        switch (level, name) {
        case (SOL_SOCKET, SO_TYPE): return .option(int32Bytes(Int32(SOCK_STREAM.rawValue)))
        case (SOL_SOCKET, SO_PROTOCOL): return .option(int32Bytes(Int32(IPPROTO_TCP)))
        case (SOL_SOCKET, SO_ACCEPTCONN): return .option(int32Bytes(role == .listener ? 1 : 0))
        case (SOL_SOCKET, SO_RCVBUF): return .option(int32Bytes(Int32(info.receiveSize)))
        case (SOL_SOCKET, SO_SNDBUF): return .option(int32Bytes(Int32(info.sendSize)))
        case (SOL_SOCKET, SO_LINGER):
            var l = linger(l_onoff: lingerOn ? 1 : 0, l_linger: lingerSeconds)
            return .option(withUnsafeBytes(of: &l) { Array($0) })
        case (Int32(IPPROTO_TCP), TCP_NODELAY): return .option(int32Bytes(options.nodelay ? 1 : 0))
        case (Int32(IPPROTO_TCP), TCP_KEEPIDLE): return .option(int32Bytes(Int32(options.keepIdle / 1000)))
        case (Int32(IPPROTO_TCP), TCP_KEEPINTVL): return .option(int32Bytes(Int32(options.keepInterval / 1000)))
        case (Int32(IPPROTO_TCP), TCP_KEEPCNT): return .option(int32Bytes(Int32(options.keepCount)))
        case (SOL_SOCKET, SO_REUSEADDR): return .option(int32Bytes(options.reuseAddress ? 1 : 0))
        case (SOL_SOCKET, SO_REUSEPORT): return .option(int32Bytes(options.reusePort ? 1 : 0))
        case (SOL_SOCKET, SO_KEEPALIVE): return .option(int32Bytes(options.keepAlive ? 1 : 0))
        case (Int32(IPPROTO_TCP), TCP_INFO):
            // A connection that is gone reports CLOSE, a listener LISTEN (cstack_tcp_info).
            var bytes = [UInt8](repeating: 0, count: min(maxLength, ControlMessage.maximumOptionLength))
            let n = bytes.withUnsafeMutableBytes { cstack_tcp_info(pcb, $0.baseAddress, $0.count) }
            return .option(Array(bytes[..<n]))
        default: break
        }
        guard [SOL_SOCKET, Int32(IPPROTO_TCP), Int32(IPPROTO_IP), Int32(IPPROTO_IPV6)].contains(level) else {
            return .error(unknownLevelError) // a level no layer of the socket knows
        }
        guard let pcb, role != .listener else { return .error(role == .listener ? ENOPROTOOPT : failed ? EINVAL : EBADF) }
        switch (level, name) {
        case (Int32(IPPROTO_TCP), TCP_MAXSEG): return .option(int32Bytes(Int32(cstack_tcp_mss(pcb))))
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
        if level == SOL_SOCKET, let reply = setRecordedOption(name: name, value: value, kept: [SO_RCVLOWAT]) { return reply }
        if let reply = setIPOption(level: level, name: name, value: value, pcb: pcb.map { UnsafeMutableRawPointer($0) },
                                   bound: role != .fresh || pcb.map { cstack_tcp_local_port($0) != 0 } ?? true) {
            return reply
        }
        guard let v = int32Value(value) else { return .error(EINVAL) }
        switch (level, name) {
        case (SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF):
            // Rings are sized when the socket is made (--stream-ring-size); getsockopt reports it.
            return v >= 0 ? .ok(value: 0) : .error(EINVAL)
        default: break
        }
        switch (level, name) {
        case (SOL_SOCKET, SO_REUSEADDR): options.reuseAddress = v != 0
        case (SOL_SOCKET, SO_REUSEPORT): options.reusePort = v != 0
        case (SOL_SOCKET, SO_KEEPALIVE): options.keepAlive = v != 0
        case (Int32(IPPROTO_TCP), TCP_NODELAY): options.nodelay = v != 0
        case (Int32(IPPROTO_TCP), TCP_KEEPIDLE):
            guard v >= 1, v <= 32767 else { return .error(EINVAL) }
            options.keepIdle = UInt32(v) * 1000
        case (Int32(IPPROTO_TCP), TCP_KEEPINTVL):
            guard v >= 1, v <= 32767 else { return .error(EINVAL) }
            options.keepInterval = UInt32(v) * 1000
        case (Int32(IPPROTO_TCP), TCP_KEEPCNT):
            guard v >= 1, v <= 127 else { return .error(EINVAL) }
            options.keepCount = UInt32(v)
        default:
            return .error(ENOPROTOOPT)
        }
        if let pcb {
            if role == .listener { options.applySocketLevel(to: pcb) } else { options.apply(to: pcb) }
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

/// A TCP socket's options. SO_REUSEADDR and SO_KEEPALIVE live in the part of an lwIP pcb a listener
/// has too; the TCP-level ones only in a connection's pcb. The socket keeps them all, answers
/// getsockopt from here, and applies them to every pcb it gets (a connection, a fresh pcb after a
/// disconnect, each connection a listener accepts: Linux's accepted sockets inherit them).
struct TCPOptions {
    var reuseAddress = false
    /// Recorded and reported; lwIP has no port sharing between listeners (see the README).
    var reusePort = false
    var keepAlive = false
    var nodelay = false
    /// Milliseconds, as lwIP keeps them (Linux's defaults: 7200 s, 75 s, 9 probes).
    var keepIdle: UInt32 = 7_200_000
    var keepInterval: UInt32 = 75_000
    var keepCount: UInt32 = 9

    /// The options a listener's pcb can hold.
    func applySocketLevel(to pcb: UnsafeMutablePointer<tcp_pcb>) {
        cstack_tcp_set_option(pcb, UInt8(SOF_REUSEADDR), reuseAddress ? 1 : 0)
        cstack_tcp_set_option(pcb, UInt8(SOF_KEEPALIVE), keepAlive ? 1 : 0)
    }

    /// Every option, on a connection's (or a fresh socket's) pcb: never on a listener's.
    func apply(to pcb: UnsafeMutablePointer<tcp_pcb>) {
        applySocketLevel(to: pcb)
        cstack_tcp_set_nodelay(pcb, nodelay ? 1 : 0)
        cstack_tcp_set_keep_idle(pcb, keepIdle)
        cstack_tcp_set_keep_intvl(pcb, keepInterval)
        cstack_tcp_set_keep_cnt(pcb, keepCount)
    }
}

/// A listener's reference to the local socket that connected to it (which may close first).
struct WeakTCPSocket {
    weak var socket: TCPSocket?
    init(_ socket: TCPSocket?) { self.socket = socket }
}
