import CShims
import CStack
import Logging
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// The socket server: lwIP with its interfaces, the SEQPACKET listener, and one session per client,
/// all driven by one event loop on the calling thread (the "stack thread").
///
/// The loop waits in epoll for: new clients, control messages, app->stack eventfds, and the
/// termination signals (through a signalfd). Each batch of events is served under lwIP's core lock,
/// so lwIP callbacks (on lwIP's own tcpip thread, for timers) never run concurrently with it.
public final class SocketServer {
    public let configuration: ServerConfiguration
    let logger: Logger
    let loop: EventLoop
    private var listenFD: Int32 = -1
    private var signalFD: Int32 = -1
    private var sessions: [UInt64: Session] = [:]
    private var nextSessionID: UInt64 = 1
    private var pendingCloses: [Session] = []
    private var numaNode: Int32 = -1
    private var processVMPermitted = true
    private var running = false
    private var taps: [TAPInterface] = []

    private static let listenerToken: UInt64 = 1
    private static let signalToken: UInt64 = 2
    private static let loopbackToken: UInt64 = 3
    /// TAP devices: tapToken + index.
    private static let tapToken: UInt64 = 16

    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread, so that threads started afterwards
    /// (lwIP's) inherit the mask and the signals arrive only through the server's signalfd; ignores
    /// SIGPIPE. Call first thing in `main`.
    public static func prepareProcessSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Starts lwIP, adds the loopback network and binds the listener.
    /// - Throws: `ServerError` with the reason (a live server at the path, a bad address, ...).
    public init(configuration: ServerConfiguration, logger: Logger) throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        loop = try EventLoop()
        if let cpu = configuration.cpu {
            let err = cstack_pin_to_cpu(Int32(cpu))
            guard err == 0 else { throw ServerError("cannot pin the stack thread to CPU \(cpu): \(Errno(err))") }
        }
        numaNode = configuration.numaNode.map { Int32($0) } ?? cstack_numa_node_of_current_cpu()
        do {
            try ProcessMemory.allowAllPtracers()
        } catch {
            logger.warning("prctl(PR_SET_PTRACER) failed (\(error)); process-vm transport disabled")
            processVMPermitted = false
        }
        if let scope = ProcessMemory.yamaPtraceScope, scope >= 2 { processVMPermitted = false }
        if let path = configuration.capturePath { try PacketCapture.open(path) }
        Stack.start()
        try Stack.addLoopback(configuration.addresses, mtu: configuration.loopbackMTU)
        for (i, tapConfiguration) in configuration.taps.enumerated() {
            let captureID = configuration.capturePath == nil ? -1 : PacketCapture.ethernetInterface()
            let tap = try TAPInterface(tapConfiguration, captureID: captureID)
            try loop.add(tap.fd, token: Self.tapToken + UInt64(i))
            taps.append(tap)
            logger.info("TAP \(tap.deviceName): \(tapConfiguration.addresses.map(\.description).joined(separator: ", ")) mac \(tapConfiguration.effectiveMAC.map { String($0, radix: 16) }.joined(separator: ":"))")
        }
        try bindListener()
        signalFD = cstack_termination_signalfd()
        if signalFD >= 0 { try loop.add(signalFD, token: Self.signalToken) }
        try loop.add(listenFD, token: Self.listenerToken)
        let looped = cstack_loopback_eventfd()
        guard looped >= 0 else { throw ServerError("eventfd: \(Errno.current)") }
        try loop.add(looped, token: Self.loopbackToken)
        logger.info("listening on \(configuration.socketPath); loopback addresses \(configuration.addresses.map(\.description).joined(separator: ", ")); datagram transport \(configuration.datagramTransport); NUMA node \(numaNode)")
    }

    deinit {
        if listenFD >= 0 { close(listenFD) }
        if signalFD >= 0 { close(signalFD) }
    }

    /// Binds the SEQPACKET socket. A socket file nobody answers on (a crashed server's) is replaced;
    /// a live server's is never taken over.
    private func bindListener() throws {
        let path = configuration.socketPath
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw ServerError("socket(AF_UNIX): \(Errno.current)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let len = socklen_t(MemoryLayout<sockaddr_un>.size)
        func bindIt() -> Int32 {
            withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        }
        if bindIt() != 0 {
            guard errno == EADDRINUSE else {
                let err = Errno.current
                close(fd)
                throw ServerError("cannot bind \(path): \(err)")
            }
            // Is anyone there?
            let probe = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let live = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, len) } } == 0
            close(probe)
            if live {
                close(fd)
                throw ServerError("another socket server is running at \(path)")
            }
            logger.info("replacing stale socket file \(path)")
            unlink(path)
            guard bindIt() == 0 else {
                let err = Errno.current
                close(fd)
                throw ServerError("cannot bind \(path): \(err)")
            }
        }
        if configuration.allowAnyUID || !configuration.allowedUIDs.isEmpty { chmod(path, 0o777) }
        guard listen(fd, 128) == 0 else {
            let err = Errno.current
            close(fd)
            throw ServerError("listen: \(err)")
        }
        listenFD = fd
    }

    /// Serves until SIGINT/SIGTERM/SIGHUP, then closes every session and removes the socket file.
    public func run() {
        running = true
        let spin = UInt64(configuration.busyPollMicroseconds) * 1000
        var lastWork: UInt64 = 0
        while running {
            // Busy polling: for a while after the last work, look for more without sleeping, so that
            // a reply arriving soon does not pay for waking this thread.
            let polling = spin > 0 && monotonicNanoseconds() - lastWork < spin
            let events = loop.wait(timeoutMilliseconds: polling ? 0 : -1)
            if events.isEmpty { continue }
            if spin > 0 { lastWork = monotonicNanoseconds() }
            Stack.withLock {
                for (token, flags) in events { dispatch(token, flags) }
                for session in pendingCloses { end(session) }
                pendingCloses.removeAll()
            }
        }
        shutdown()
    }

    private func dispatch(_ token: UInt64, _ flags: UInt32) {
        switch token {
        case Self.listenerToken:
            acceptClients()
        case Self.signalToken:
            while case let signal = cstack_read_signal(signalFD), signal > 0 {
                logger.info("signal \(signal): shutting down")
                running = false
            }
        case Self.loopbackToken:
            // Packets looped by lwIP's thread: the batch's end delivers them.
            var value: UInt64 = 0
            _ = read(cstack_loopback_eventfd(), &value, 8)
        case Self.tapToken..<(Self.tapToken + UInt64(taps.count)):
            taps[Int(token - Self.tapToken)].receive()
        default:
            guard let session = sessions[token >> 32], !session.isClosed else { return }
            let handle = UInt32(truncatingIfNeeded: token)
            if handle == 0 {
                if !session.serviceControl() { scheduleClose(session) }
            } else {
                session.serviceSocket(handle)
            }
        }
    }

    private func acceptClients() {
        while true {
            let fd = cstack_accept(listenFD)
            if fd < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN { logger.warning("accept: \(Errno.current)") }
                return
            }
            guard let credentials = try? PeerCredentials(socket: fd) else {
                close(fd)
                continue
            }
            guard sessions.count < configuration.maxClients else {
                logger.warning("refusing client pid \(credentials.pid): --max-clients \(configuration.maxClients) reached")
                _ = try? DescriptorPassing.send(fd, ControlMessage(requestID: 0, .error(EUSERS)).encoded())
                close(fd)
                continue
            }
            let session = Session(id: nextSessionID, fd: fd, credentials: credentials, server: self)
            nextSessionID += 1
            do {
                try loop.add(fd, token: session.controlToken)
                sessions[session.id] = session
            } catch {
                close(fd)
            }
        }
    }

    func scheduleClose(_ session: Session) {
        if !pendingCloses.contains(where: { $0 === session }) { pendingCloses.append(session) }
    }

    private func end(_ session: Session) {
        session.close()
        sessions.removeValue(forKey: session.id)
    }

    private func shutdown() {
        Stack.withLock {
            for session in sessions.values { session.close() }
            sessions.removeAll()
        }
        loop.remove(listenFD)
        close(listenFD)
        listenFD = -1
        unlink(configuration.socketPath)
        PacketCapture.close()
        logger.info("stopped")
    }

    // MARK: policy

    func isAllowed(uid: UInt32) -> Bool {
        configuration.allowAnyUID || uid == getuid() || configuration.allowedUIDs.contains(uid)
    }

    /// The datagram transport for a client: process-vm needs the client to be allowed to ptrace us
    /// (same user, or root), and neither side asking for shared memory.
    func transport(for credentials: PeerCredentials, preference: DatagramTransport) -> DatagramTransport {
        if preference == .sharedMemory || configuration.datagramTransport == .sharedMemory { return .sharedMemory }
        let permitted = processVMPermitted && (credentials.uid == getuid() || credentials.uid == 0)
        if !permitted {
            if configuration.datagramTransport == .processVM || preference == .processVM {
                logger.info("process-vm not permitted for uid \(credentials.uid); using shared-memory")
            }
            return .sharedMemory
        }
        return .processVM
    }

    /// Binds a new segment's pages to the stack thread's NUMA node (no-op without NUMA).
    func placeOnNUMANode(_ segment: SharedSegment) {
        guard numaNode >= 0 else { return }
        _ = cstack_numa_bind(segment.base, segment.size, numaNode)
    }
}
