import CShims
import CLwIP
import CStack
import Logging
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// One connected client: its control socket, its credentials (from the kernel), its shared segment
/// and its sockets. Everything here runs on the server's stack thread under the core lock.
///
/// Ownership: the session owns the control socket, the segment and every socket; `close()` releases
/// all of them exactly once.
final class Session {
    let id: UInt64
    let fd: Int32
    let credentials: PeerCredentials
    unowned let server: SocketServer
    private(set) var segment: SharedSegment?
    private var allocator = SegmentAllocator(start: 0, size: 0)
    private(set) var transport: DatagramTransport = .sharedMemory
    /// The sockets this client's app holds, by handle (handles are unique across the server): its
    /// own, and after a fork those it attached from its parent's session (see
    /// `Session+Inheritance.swift`).
    var sockets: [UInt32: ServerSocket] = [:]
    /// Sockets of this session (channels in its segment) its app no longer holds but a forked
    /// child still does: kept for the child, with their handles.
    var heldElsewhere: [UInt32: ServerSocket] = [:]
    /// Connections the app closed that are still delivering queued data.
    private var closing: [TCPSocket] = []
    private var malformed = 0
    /// Set once the client broke its segment: its session is closing (logged once).
    private var misbehaving = false
    /// Server heap held for this client's datagram payloads (see `chargeBufferMemory`).
    private(set) var bufferMemory = 0
    /// Connections living in this client's segment that its listeners accepted from other local
    /// clients, by connecting session (see `Session+AcceptFairness.swift`).
    var acceptedFrom: [UInt64: Int] = [:]
    /// process-vm send buffers of this session's released sockets, which the client may still be
    /// writing into (see `SocketServer+Quarantine.swift`).
    var quarantined: [UnsafeMutablePointer<pbuf>] = []
    /// The client closed its control socket (exited, or let its connection go): its library no
    /// longer writes into our buffers, so nothing needs quarantine.
    private(set) var clientHungUp = false
    /// Log lines about refused connections: at most one a second.
    var acceptRefusalLog = LogThrottle()
    private var malformedLog = LogThrottle()
    private(set) var isClosed = false
    /// The client has gone but forked children still hold sockets in its segment: the session
    /// keeps the segment (not the control socket) until they let go.
    private(set) var isLingering = false
    /// The client announced an exec: when its control socket closes, its sockets close as the
    /// kernel's close-on-exec closes them (FIN after queued data), not reset as for a crash.
    var closesGracefully = false
    var logger: Logger

    /// The client's command name and command line (from /proc, when it connected) and when.
    let command: String
    let commandLine: String
    let connectedAt = time(nil)
    /// A socket-stat query (not listed among the clients while it has no segment).
    private(set) var askedForReport = false
    /// Live captures this session (socket-stat capture) runs: they end with it.
    var captures: [Int32] = []
    /// Descriptors of the last reply to close once it is sent (a report's memfd).
    private var closeAfterReply: [Int32] = []

    init(id: UInt64, fd: Int32, credentials: PeerCredentials, server: SocketServer) {
        self.id = id
        self.fd = fd
        self.credentials = credentials
        self.server = server
        command = String(Self.procText(credentials.pid, "comm").prefix { $0 != "\n" })
        commandLine = Self.procText(credentials.pid, "cmdline").split(separator: "\0").joined(separator: " ")
        var logger = server.logger
        logger[metadataKey: "client"] = "\(credentials.pid)"
        self.logger = logger
    }

    /// The segment's base address (valid after HELLO, for the sockets' payload copies).
    var segmentBase: UnsafeMutableRawPointer { segment!.base }

    /// Session token of the control socket in the event loop; sockets use `token(handle)`.
    var controlToken: UInt64 { id << 32 }
    func token(_ handle: UInt32) -> UInt64 { id << 32 | UInt64(handle) }

    // MARK: control messages

    /// Reads and serves every queued control message.
    /// - Returns: false when the session must end (client gone or beyond repair).
    func serviceControl() -> Bool {
        while true {
            let packet: ReceivedPacket
            do {
                guard let p = try DescriptorPassing.receive(fd, maxBytes: ControlMessage.maximumSize + 1, nonBlocking: true) else { return true }
                packet = p
            } catch {
                if error.code != .peerClosed { logger.debug("control socket: \(error)") }
                clientHungUp = true
                return false
            }
            // Clients never send descriptors: close any so they cannot pile up here.
            packet.closeDescriptors()
            // Answered with EBADMSG; logged once, then at most once a second; the 16th ends the session.
            func rejectMalformed(_ requestID: UInt32, _ what: String) -> Bool {
                malformed += 1
                if let held = malformedLog.admit() {
                    logger.warning("malformed control message: \(what)\(SocketServer.more(held))")
                }
                let sent = send(ControlMessage(requestID: requestID, .error(EBADMSG)))
                if malformed >= 16 { logger.warning("ending the session after \(malformed) malformed control messages") }
                return sent && malformed < 16
            }
            let message: ControlMessage
            do {
                guard !packet.truncated else { throw ProtocolError.tooLarge(packet.bytes.count) }
                message = try ControlMessage.decode(packet.bytes)
            } catch {
                guard rejectMalformed(0, "\(error)") else { return false }
                continue
            }
            guard case .request(let request) = message.payload else {
                guard rejectMalformed(message.requestID, "a reply sent as a request") else { return false }
                continue
            }
            let (reply, descriptors, keepOpen) = serve(request)
            let sent = send(ControlMessage(requestID: message.requestID, reply), descriptors: descriptors)
            for d in closeAfterReply { Glibc.close(d) }
            closeAfterReply = []
            segment?.closeDescriptor() // after HELLO's reply, we keep only the mapping
            guard sent, keepOpen else { return false }
        }
    }

    /// Sends without blocking; a client that does not read its replies loses its session.
    private func send(_ message: ControlMessage, descriptors: [Int32] = []) -> Bool {
        let bytes = message.encoded()
        let sent = bytes.withUnsafeBytes { b in
            descriptors.withUnsafeBufferPointer { fds in
                cshims_send_with_fds(fd, b.baseAddress, b.count, fds.baseAddress, Int32(fds.count))
            }
        }
        return sent == bytes.count
    }

    private func serve(_ request: Request) -> (Reply, [Int32], keepOpen: Bool) {
        if case .hello(let version, let preference) = request { return hello(version: version, preference: preference) }
        if case .capture(let interface, let filter, let count, let recorded) = request {
            askedForReport = true
            let (reply, descriptors) = server.capture(interface: interface, filter: filter, count: count, recorded: recorded, for: self)
            closeAfterReply = descriptors
            return (reply, descriptors, true)
        }
        if case .admin(let report) = request {
            askedForReport = true
            let (reply, descriptors) = server.adminReport(report, for: self)
            closeAfterReply = descriptors
            return (reply, descriptors, true)
        }
        guard segment != nil else { return (.error(ENOTCONN), [], true) } // HELLO first
        switch request {
        case .hello:
            return (.error(EISCONN), [], true)
        case .socket(let domain, let type, let proto):
            return openSocket(domain: domain, type: type, protocol: proto)
        case .close(let handle):
            guard sockets[handle] != nil else { return (.error(EBADF), [], true) }
            closeSocket(handle)
            return (.ok(value: 0), [], true)
        case .accept(let handle, let flags):
            guard let listener = sockets[handle] else { return (.error(EBADF), [], true) }
            return acceptConnection(on: listener, flags: flags)
        case .forked(let child):
            return (forked(child: child), [], true)
        case .attachInherited:
            return (attachInherited(), [], true)
        case .execing(let keep):
            return (execing(keep: keep), [], true)
        case .adopt(let handle):
            return adopt(handle)
        default:
            guard let handle = request.handle, let socket = sockets[handle] else { return (.error(EBADF), [], true) }
            return (socket.handle(request), [], true)
        }
    }

    private func hello(version: UInt16, preference: DatagramTransport) -> (Reply, [Int32], keepOpen: Bool) {
        guard segment == nil else { return (.error(EISCONN), [], true) }
        guard version == ControlMessage.version else { return (.error(EPROTONOSUPPORT), [], false) }
        // (The uid was checked at accept: a refused one never gets here.)
        if let refusal = server.admitHello(self) { return (.error(refusal), [], false) }
        transport = server.transport(for: credentials, preference: preference)
        let seg: SharedSegment
        do {
            seg = try SharedSegment.create(name: "socket-server-client-\(credentials.pid)", size: server.configuration.segmentSize)
        } catch {
            logger.error("cannot create a segment: \(error)")
            return (.error(error.errno?.rawValue ?? ENOMEM), [], false)
        }
        server.placeOnNUMANode(seg)
        seg.writeHeader(serverPID: getpid())
        let start = ChannelLayout.align(Int(CSHIMS_SEGMENT_HEADER_SIZE))
        allocator = SegmentAllocator(start: start, size: seg.size - start)
        segment = seg
        let info = HelloInfo(version: ControlMessage.version, serverPID: getpid(), transport: transport,
                             segmentSize: UInt64(seg.size), maxSockets: UInt32(server.configuration.maxSocketsPerClient),
                             probeAddress: UInt64(UInt(bitPattern: seg.base)))
        logger.info("client uid \(credentials.uid) connected, datagram transport \(transport)")
        // The segment's descriptor goes with the reply (serviceControl closes ours once it is sent).
        return (.hello(info), [seg.fd], true)
    }

    // MARK: sockets

    private func openSocket(domain: Int32, type: Int32, protocol proto: Int32) -> (Reply, [Int32], keepOpen: Bool) {
        guard domain == AF_INET || domain == AF_INET6 else { return (.error(EAFNOSUPPORT), [], true) }
        let config = server.configuration
        let result: Result<ServerSocket, Errno>
        switch type {
        case Int32(SOCK_DGRAM.rawValue):
            guard proto == 0 || proto == Int32(IPPROTO_UDP) else { return (.error(EPROTONOSUPPORT), [], true) }
            let template = ChannelInfo(handle: 0, kind: .datagram, transport: transport, offset: 0,
                                       receiveSize: UInt32(config.datagramRingItems), sendSize: UInt32(config.datagramRingItems),
                                       slotSize: UInt32(config.datagramSlotSize))
            result = createSocket(template) { (info, view, app, stack) throws(ServerError) in
                try UDPSocket(session: self, handle: info.handle, domain: domain, info: info, view: view, appEvent: app, stackEvent: stack)
            }
        case Int32(SOCK_STREAM.rawValue):
            guard proto == 0 || proto == Int32(IPPROTO_TCP) else { return (.error(EPROTONOSUPPORT), [], true) }
            result = createSocket(streamTemplate) { (info, view, app, stack) throws(ServerError) in
                try TCPSocket(session: self, handle: info.handle, domain: domain, info: info, view: view, appEvent: app, stackEvent: stack)
            }
        default:
            return (.error(ESOCKTNOSUPPORT), [], true)
        }
        switch result {
        case .success(let socket): return (.socket(socket.info), [socket.appEvent.fd, socket.stackEvent.fd], true)
        case .failure(let err): return (.error(err.rawValue), [], true)
        }
    }

    private var streamTemplate: ChannelInfo {
        let size = UInt32(server.configuration.streamRingSize)
        return ChannelInfo(handle: 0, kind: .stream, transport: transport, offset: 0, receiveSize: size, sendSize: size, slotSize: 0)
    }

    /// A connection a listener accepted (inside lwIP's accept callback): it gets its channel now, so
    /// data flows into its ring before the app calls accept.
    func createAcceptedSocket(_ pcb: UnsafeMutablePointer<tcp_pcb>, domain: Int32) -> Result<TCPSocket, Errno> {
        let result = createSocket(streamTemplate) { (info, view, app, stack) throws(ServerError) in
            try TCPSocket(accepted: pcb, session: self, handle: info.handle, domain: domain, info: info, view: view,
                          appEvent: app, stackEvent: stack)
        }
        return result.map {
            $0.awaitingAccept = true
            return $0 as! TCPSocket
        }
    }

    /// Bytes of this client's segment one accepted connection takes.
    var acceptedConnectionSize: Int { ChannelLayout(streamTemplate).size }

    /// Bytes of this client's segment given to channels.
    var segmentUsed: Int { allocator.allocated }

    /// The sockets whose channels are in this session's segment (held by its app or by others, or
    /// closing), each once.
    var ownedSockets: [ServerSocket] {
        sockets.values.filter { $0.session === self } + Array(heldElsewhere.values) + closing
    }

    func isClosing(_ socket: ServerSocket) -> Bool { closing.contains { $0 === socket } }

    /// /proc/PID/NAME as text ("" when unreadable).
    static func procText(_ pid: Int32, _ name: String) -> String {
        let fd = open("/proc/\(pid)/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 65536 {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            bytes += buffer[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Bytes of this client's segment not yet given to a channel.
    var segmentFree: Int { allocator.capacity - allocator.allocated }

    /// Sockets holding descriptors (the server's global budget counts them).
    var socketCount: Int { sockets.count + closing.count + heldElsewhere.count }

    /// Allocates a channel (shaped by `template`) and two eventfds, builds the socket with `build`,
    /// and registers it under a new handle.
    private func createSocket(_ template: ChannelInfo,
                              build: (ChannelInfo, ChannelView, EventFD, EventFD) throws(ServerError) -> ServerSocket) -> Result<ServerSocket, Errno> {
        guard let segment else { return .failure(Errno(ENOTCONN)) }
        guard socketCount < server.configuration.maxSocketsPerClient else { return .failure(Errno(EMFILE)) }
        if let refusal = server.socketBudgetError() { return .failure(Errno(refusal)) }
        var info = template
        let layout = ChannelLayout(info)
        guard let offset = allocator.allocate(layout.size) else { return .failure(Errno(ENOBUFS)) }
        info.handle = server.allocateHandle()
        info.offset = UInt64(offset)
        // Zero the headers and descriptor items; ring and slot bytes need not be (the client wrote
        // whatever is there, and each side only ever reads bytes its peer published).
        memset(segment.base + offset, 0, layout.receiveData + (info.kind == .datagram ? layout.receiveSlots - layout.receiveData : 0))
        do {
            let view = try ChannelView(segment: segment, offset: offset, layout: layout)
            let appEvent = try EventFD()
            let stackEvent = try EventFD()
            let socket = try build(info, view, appEvent, stackEvent)
            try server.loop.add(stackEvent.fd, token: token(info.handle))
            sockets[info.handle] = socket
            return .success(socket)
        } catch {
            server.releaseHandle(info.handle)
            allocator.release(offset, layout.size)
            logger.warning("cannot create socket: \(error)")
            return .failure(Errno((error as? SharedError)?.errno?.rawValue ?? ENOMEM))
        }
    }

    private func acceptConnection(on socket: ServerSocket, flags: Int32) -> (Reply, [Int32], keepOpen: Bool) {
        guard let listener = socket as? TCPSocket, listener.role == .listener else { return (.error(EINVAL), [], true) }
        // The queued connections live in the listener's session (another one when this client
        // attached the listener after a fork): the one accepted moves to this session's table.
        let owner = listener.session
        while let handle = listener.takePendingConnection() {
            guard let connection = owner.sockets[handle] as? TCPSocket else { continue }
            connection.awaitingAccept = false
            if owner !== self { owner.handOver(connection, to: self) }
            let peer = connection.peerAddress ?? .unspecified
            return (.accepted(connection.info, peer: peer), [connection.appEvent.fd, connection.stackEvent.fd], true)
        }
        return (.error(EAGAIN), [], true)
    }

    /// The app closed `handle`. The socket closes when nobody else holds it (a forked child):
    /// see `finalClose`.
    func closeSocket(_ handle: UInt32) {
        guard let socket = sockets.removeValue(forKey: handle) else { return }
        letGo(socket)
        if socket.isHeld {
            if socket.session === self { heldElsewhere[handle] = socket }
            return
        }
        socket.session.finalClose(socket)
    }

    /// This session's app no longer holds `socket` (it stays in no table of ours).
    private func letGo(_ socket: ServerSocket) {
        if socket.session === self {
            socket.heldByOwner = false
        } else {
            socket.sharedWith.removeAll { $0 == id }
        }
    }

    /// Closes one of this session's sockets that nobody holds any more. A TCP connection with
    /// queued data keeps draining (in `closing`) until its FIN is sent; everything else is released
    /// at once.
    func finalClose(_ socket: ServerSocket) {
        heldElsewhere.removeValue(forKey: socket.handle)
        server.loop.remove(socket.stackEvent.fd)
        if let tcp = socket as? TCPSocket {
            // Connections nobody accepted are reset, as the kernel does.
            if tcp.role == .listener { tcp.resetUnacceptedConnections() }
            if !tcp.closeByApp() {
                closing.append(tcp)
                return
            }
        }
        releaseChannel(of: socket)
        endLingeringIfDone()
    }

    /// Resets and releases a connection a listener queued that the app never accepted.
    func resetUnaccepted(_ handle: UInt32) {
        (sockets[handle] as? TCPSocket)?.resetUnaccepted()
        closeSocket(handle)
    }

    /// A closed connection finished draining (or failed while draining).
    func finishedClosing(_ socket: TCPSocket) {
        guard let i = closing.firstIndex(where: { $0 === socket }) else { return }
        closing.remove(at: i)
        releaseChannel(of: socket)
        endLingeringIfDone()
    }

    private func releaseChannel(of socket: ServerSocket) {
        if let tcp = socket as? TCPSocket, let connector = tcp.acceptedFrom { uncharge(connector) }
        if !misbehaving { socket.flushBeforeRelease() }
        socket.release()
        server.releaseHandle(socket.handle)
        allocator.release(Int(socket.info.offset), socket.view.layout.size)
    }

    /// The app signalled a socket's stack eventfd.
    func serviceSocket(_ handle: UInt32) {
        guard let socket = sockets[handle] ?? heldElsewhere[handle], socket.session === self else { return }
        do {
            try socket.serviceStackEvent()
        } catch {
            misbehaved(error)
        }
    }

    // MARK: memory budget

    /// Charges `bytes` of server heap held on this client's behalf (lwIP buffers for its datagrams)
    /// against `--client-buffer-memory`.
    /// - Returns: false, charging nothing, when the budget does not allow it.
    func chargeBufferMemory(_ bytes: Int) -> Bool {
        guard bufferMemory + bytes <= server.configuration.clientBufferMemory else { return false }
        bufferMemory += bytes
        return true
    }

    func releaseBufferMemory(_ bytes: Int) {
        bufferMemory -= bytes
        assert(bufferMemory >= 0, "buffer memory released twice")
    }

    /// The client broke an invariant of its shared segment: it loses its session (only it is hurt).
    func misbehaved(_ error: SharedError) {
        guard !misbehaving else { return }
        misbehaving = true
        logger.warning("client pid \(credentials.pid) corrupted its shared segment (\(error)); closing its session")
        server.scheduleClose(self)
    }

    /// Releases every socket, the segment and the control socket. When forked children still hold
    /// sockets of this session, it lingers instead (segment kept, control socket closed) and is
    /// closed again, for good, when the last of them is released.
    /// - Parameter force: release everything even if forked children hold sockets (the server stops).
    func close(force: Bool = false) {
        guard !isClosed else { return }
        if !isLingering {
            // The client is gone: what nobody else holds is released at once (connections reset:
            // peers see it); sockets it attached from another session are left to their holders.
            let graceful = closesGracefully && !force && !misbehaving
            for (_, socket) in sockets {
                letGo(socket)
                if socket.isHeld {
                    if socket.session === self { heldElsewhere[socket.handle] = socket }
                } else if socket.session === self && !graceful {
                    server.loop.remove(socket.stackEvent.fd)
                    releaseChannel(of: socket)
                } else {
                    socket.session.finalClose(socket)
                }
            }
            sockets.removeAll()
            for id in captures { cstack_capture_stop(id) }
            captures.removeAll()
            server.loop.remove(fd)
            Glibc.close(fd)
            if (!heldElsewhere.isEmpty || (graceful && !closing.isEmpty)) && !force {
                isLingering = true
                logger.info("client disconnected; \(heldElsewhere.count) of its sockets stay open for the processes it forked or the program it became, \(closing.count) closing")
                return
            }
        }
        isClosed = true
        for socket in closing { releaseChannel(of: socket) }
        closing.removeAll()
        for (_, socket) in heldElsewhere {
            server.loop.remove(socket.stackEvent.fd)
            releaseChannel(of: socket)
        }
        heldElsewhere.removeAll()
        server.quarantine(quarantined, of: credentials.pid)
        quarantined.removeAll()
        if segment != nil { logger.info(isLingering ? "the last socket its forked processes or its next program held is closed" : "client disconnected") }
        segment = nil
    }

    /// A lingering session whose last socket held elsewhere has closed ends now.
    private func endLingeringIfDone() {
        if isLingering && heldElsewhere.isEmpty && closing.isEmpty { server.scheduleClose(self) }
    }
}
