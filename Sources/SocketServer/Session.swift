import CShims
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
    private(set) var sockets: [UInt32: ServerSocket] = [:]
    private var nextHandle: UInt32 = 1
    private var malformed = 0
    private(set) var isClosed = false
    var logger: Logger

    init(id: UInt64, fd: Int32, credentials: PeerCredentials, server: SocketServer) {
        self.id = id
        self.fd = fd
        self.credentials = credentials
        self.server = server
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
                return false
            }
            // Clients never send descriptors: close any so they cannot pile up here.
            packet.closeDescriptors()
            let message: ControlMessage
            do {
                guard !packet.truncated else { throw ProtocolError.tooLarge(packet.bytes.count) }
                message = try ControlMessage.decode(packet.bytes)
            } catch {
                malformed += 1
                logger.warning("malformed control message (\(malformed)): \(error)")
                guard send(ControlMessage(requestID: 0, .error(EBADMSG))), malformed < 16 else { return false }
                continue
            }
            guard case .request(let request) = message.payload else {
                malformed += 1
                guard send(ControlMessage(requestID: message.requestID, .error(EBADMSG))), malformed < 16 else { return false }
                continue
            }
            let (reply, descriptors, keepOpen) = serve(request)
            let sent = send(ControlMessage(requestID: message.requestID, reply), descriptors: descriptors)
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
        default:
            guard let handle = request.handle, let socket = sockets[handle] else { return (.error(EBADF), [], true) }
            return (socket.handle(request), [], true)
        }
    }

    private func hello(version: UInt16, preference: DatagramTransport) -> (Reply, [Int32], keepOpen: Bool) {
        guard segment == nil else { return (.error(EISCONN), [], true) }
        guard version == ControlMessage.version else { return (.error(EPROTONOSUPPORT), [], false) }
        guard server.isAllowed(uid: credentials.uid) else {
            logger.warning("refused client of uid \(credentials.uid) (see --allow-uid)")
            return (.error(EACCES), [], false)
        }
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
        let kind: ChannelKind
        switch type {
        case Int32(SOCK_DGRAM.rawValue):
            guard proto == 0 || proto == Int32(IPPROTO_UDP) else { return (.error(EPROTONOSUPPORT), [], true) }
            kind = .datagram
        default:
            return (.error(EPROTONOSUPPORT), [], true)
        }
        guard sockets.count < config.maxSocketsPerClient else { return (.error(EMFILE), [], true) }
        let info = ChannelInfo(handle: nextHandle, kind: kind, transport: transport, offset: 0,
                               receiveSize: UInt32(config.datagramRingItems), sendSize: UInt32(config.datagramRingItems),
                               slotSize: UInt32(config.datagramSlotSize))
        return makeSocket(info, domain: domain)
    }

    /// Allocates the channel and eventfds for `info`, builds the socket and registers it.
    private func makeSocket(_ template: ChannelInfo, domain: Int32, build: ((ChannelInfo, ChannelView, EventFD, EventFD) throws(ServerError) -> ServerSocket)? = nil) -> (Reply, [Int32], keepOpen: Bool) {
        guard let segment else { return (.error(ENOTCONN), [], true) }
        var info = template
        let layout = ChannelLayout(info)
        guard let offset = allocator.allocate(layout.size) else { return (.error(ENOBUFS), [], true) }
        info.offset = UInt64(offset)
        memset(segment.base + offset, 0, layout.size)
        do {
            let view = try ChannelView(segment: segment, offset: offset, layout: layout)
            let appEvent = try EventFD()
            let stackEvent = try EventFD()
            let socket: ServerSocket
            if let build {
                socket = try build(info, view, appEvent, stackEvent)
            } else {
                socket = try UDPSocket(session: self, handle: info.handle, domain: domain, info: info, view: view,
                                       appEvent: appEvent, stackEvent: stackEvent)
            }
            try server.loop.add(stackEvent.fd, token: token(info.handle))
            sockets[info.handle] = socket
            nextHandle = nextHandle == UInt32.max ? 1 : nextHandle + 1
            while sockets[nextHandle] != nil { nextHandle += 1 }
            return (.socket(info), [appEvent.fd, stackEvent.fd], true)
        } catch {
            allocator.release(offset, layout.size)
            logger.warning("cannot create socket: \(error)")
            return (.error((error as? SharedError)?.errno?.rawValue ?? ENOMEM), [], true)
        }
    }

    private func acceptConnection(on listener: ServerSocket, flags: Int32) -> (Reply, [Int32], keepOpen: Bool) {
        (.error(EOPNOTSUPP), [], true)
    }

    func closeSocket(_ handle: UInt32) {
        guard let socket = sockets.removeValue(forKey: handle) else { return }
        server.loop.remove(socket.stackEvent.fd)
        socket.release()
        allocator.release(Int(socket.info.offset), socket.view.layout.size)
    }

    /// The app signalled a socket's stack eventfd.
    func serviceSocket(_ handle: UInt32) {
        guard let socket = sockets[handle] else { return }
        do {
            try socket.serviceStackEvent()
        } catch {
            misbehaved(error)
        }
    }

    /// The client broke an invariant of its shared segment: it loses its session (only it is hurt).
    func misbehaved(_ error: SharedError) {
        logger.warning("client corrupted its shared segment (\(error)); closing its session")
        server.scheduleClose(self)
    }

    /// Releases every socket, the segment and the control socket.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        for handle in Array(sockets.keys) { closeSocket(handle) }
        server.loop.remove(fd)
        Glibc.close(fd)
        if segment != nil { logger.info("client disconnected") }
        segment = nil
    }

    var socketCount: Int { sockets.count }
}
