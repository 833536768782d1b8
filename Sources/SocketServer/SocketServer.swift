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
/// The loop waits in epoll for: new clients, control messages, app->stack eventfds, the admission
/// timer, and the termination signals (through a signalfd). Each batch of events is served under
/// lwIP's core lock, so lwIP callbacks (on lwIP's own tcpip thread, for timers) never run
/// concurrently with it.
///
/// Admission: a connection's uid is checked right after accept (refused: `EACCES`, closed at once).
/// Until it completes HELLO it is *pending*: it holds no client slot, has 2 s to say HELLO, and at
/// most `maxPendingClients` are pending at once. Every socket costs two descriptors; the server keeps
/// a descriptor budget (`ENFILE` for sockets, `EUSERS` for clients beyond it) so that it never runs
/// out on its own control socket, and backs off (a timer, never a spin) when accept fails anyway.
public final class SocketServer {
    public let configuration: ServerConfiguration
    let logger: Logger
    let loop: EventLoop
    private var listenFD: Int32 = -1
    private var signalFD: Int32 = -1
    /// Every session, lingering ones too (see `Session+Inheritance.swift`).
    private(set) var sessions: [UInt64: Session] = [:]
    /// Forked children holding sockets, by pid (see `Session+Inheritance.swift`).
    var inheritance: [Int32: Inheritance] = [:]
    /// Socket handles in use: unique across the server, so a socket keeps its handle in every
    /// session that holds it.
    private var liveHandles = Set<UInt32>()
    private var nextHandle: UInt32 = 1
    private var nextSessionID: UInt64 = 1
    private var pendingCloses: [Session] = []
    private var numaNode: Int32 = -1
    private var yamaPtraceScope: Int?
    private var running = false
    private(set) var taps: [TAPInterface] = []
    /// Counters of sockets already closed (socket-stat counters): UDP receive drops, send errors.
    var retiredUDP: (drops: UInt64, sendErrors: UInt64) = (0, 0)
    /// Connections refused because a listener's queue was full (socket-stat counters).
    var tcpRefusals: UInt64 = 0

    // Admission (see the type's doc).
    /// Sessions that have not completed HELLO: id -> when accepted (monotonic ns).
    private var pending: [UInt64: UInt64] = [:]
    /// One timer for HELLO deadlines and for resuming a paused listener.
    private var timerFD: Int32 = -1
    /// Out of the listener's epoll set until `listenerResumesAt` (accept failed, or too many pending).
    private var listenerPaused = false
    private var listenerResumesAt: UInt64 = 0
    /// Held open so that, when accept fails with EMFILE, closing it lets the server accept one
    /// connection to tell it EUSERS instead of leaving it queued.
    private var reserveFD: Int32 = -1
    /// RLIMIT_NOFILE (after raising it) and the descriptors open before any client.
    private(set) var descriptorLimit = 0
    private var baseDescriptors = 0
    /// Sockets across all clients (`--max-total-sockets`, or derived from the descriptor limit).
    private(set) var maxTotalSockets = 0
    private var acceptLog = LogThrottle()
    private var refusalLog = LogThrottle()
    private var pendingLog = LogThrottle()
    private var socketBudgetLog = LogThrottle()

    /// Descriptors new sockets leave free (for clients' control sockets and refusals).
    static let socketReserve = 32
    /// Descriptors new clients leave free (for refusing others and for HELLO's segment).
    static let clientReserve = 8
    static let helloTimeout: UInt64 = 2_000_000_000
    /// With every pending slot taken, the oldest pending connection is dropped once it is this old.
    static let pendingGrace: UInt64 = 250_000_000
    /// How long the listener rests after accept failed for want of descriptors or memory.
    static let acceptBackoff: UInt64 = 100_000_000

    private static let listenerToken: UInt64 = 1
    private static let signalToken: UInt64 = 2
    private static let loopbackToken: UInt64 = 3
    private static let timerToken: UInt64 = 4
    /// --metrics-listen: its listener, and its connections (metricsConnectionToken + slot).
    private static let metricsToken: UInt64 = 5
    private static let metricsConnectionToken: UInt64 = 1 << 20
    private var metrics: MetricsResponder?
    /// Quarantined buffers of ended process-vm sessions: quarantineToken + n (see
    /// `SocketServer+Quarantine.swift`).
    static let quarantineToken: UInt64 = 1 << 24
    /// Watched forked children: childToken + pid (their pidfds).
    static let childToken: UInt64 = 1 << 31
    var quarantines: [UInt64: Quarantine] = [:]
    var nextQuarantine: UInt64 = 0
    /// Client processes that broke a process-vm session: shared memory for them until they exit.
    var demotedPIDs: Set<Int32> = []
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
        var softBefore = 0, softAfter = 0
        let raised = cstack_raise_descriptor_limit(&softBefore, &softAfter)
        if raised != 0 { logger.warning("cannot raise the descriptor limit (\(Errno(raised))); staying at \(softAfter)") }
        descriptorLimit = softAfter
        loop = try EventLoop()
        if let cpu = configuration.cpu {
            let err = cstack_pin_to_cpu(Int32(cpu))
            guard err == 0 else { throw ServerError("cannot pin the stack thread to CPU \(cpu): \(Errno(err))") }
        }
        numaNode = configuration.numaNode.map { Int32($0) } ?? cstack_numa_node_of_current_cpu()
        yamaPtraceScope = ProcessMemory.yamaPtraceScope
        if let path = configuration.capturePath { try PacketCapture.open(path) }
        if let address = configuration.metricsListen {
            let responder = try MetricsResponder(address: address)
            try loop.add(responder.listenFD, token: Self.metricsToken)
            metrics = responder
            logger.info("metrics: GET /metrics on http://\(address)")
        }
        if configuration.flightRecorderBytes > 0 {
            guard cstack_recorder_start(configuration.flightRecorderBytes) == 0 else {
                throw ServerError("cannot allocate a flight recorder of \(configuration.flightRecorderBytes) bytes")
            }
            logger.info("flight recorder: the most recent \(configuration.flightRecorderBytes) bytes of packets are kept")
        }
        Stack.start()
        try Stack.addLoopback(configuration.addresses, mtu: configuration.loopbackMTU)
        for (i, tapConfiguration) in configuration.taps.enumerated() {
            let captureID = configuration.capturePath == nil ? -1 : PacketCapture.ethernetInterface()
            let tap = try TAPInterface(tapConfiguration, captureID: captureID)
            try loop.add(tap.fd, token: Self.tapToken + UInt64(i))
            taps.append(tap)
            logger.info("TAP \(tap.deviceName): \(tapConfiguration.addresses.map(\.description).joined(separator: ", ")) mac \(tapConfiguration.effectiveMAC.map { String($0, radix: 16) }.joined(separator: ":"))")
        }
        try prepareDefaultDirectory()
        try bindListener()
        signalFD = cstack_termination_signalfd()
        if signalFD >= 0 { try loop.add(signalFD, token: Self.signalToken) }
        try loop.add(listenFD, token: Self.listenerToken)
        let looped = cstack_loopback_eventfd()
        guard looped >= 0 else { throw ServerError("eventfd: \(Errno.current)") }
        try loop.add(looped, token: Self.loopbackToken)
        timerFD = cstack_timerfd()
        guard timerFD >= 0 else { throw ServerError("timerfd: \(Errno.current)") }
        try loop.add(timerFD, token: Self.timerToken)
        reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
        planDescriptors(raisedFrom: softBefore)
        logger.info("listening on \(configuration.socketPath); loopback addresses \(configuration.addresses.map(\.description).joined(separator: ", ")); datagram transport \(configuration.datagramTransport); NUMA node \(numaNode)")
    }

    deinit {
        if listenFD >= 0 { close(listenFD) }
        if signalFD >= 0 { close(signalFD) }
        if timerFD >= 0 { close(timerFD) }
        if reserveFD >= 0 { close(reserveFD) }
    }

    /// Sizes the socket budget from the descriptor limit and says so.
    private func planDescriptors(raisedFrom before: Int) {
        baseDescriptors = max(0, Int(cstack_count_open_descriptors()))
        let spare = max(0, descriptorLimit - baseDescriptors)
        // Room for every client's control socket (and the pending ones), at most a quarter of it all.
        let clientShare = min(configuration.maxClients + configuration.maxPendingClients + Self.socketReserve, spare / 4)
        let fitting = max(0, (spare - clientShare) / 2)
        maxTotalSockets = configuration.maxTotalSockets ?? fitting
        let raised = before < descriptorLimit ? " (raised from \(before))" : ""
        logger.info("descriptor limit \(descriptorLimit)\(raised): at most \(maxTotalSockets) sockets across all clients (--max-total-sockets, 2 descriptors each), \(configuration.maxClients) clients (--max-clients), \(configuration.maxPendingClients) connections waiting for HELLO (--max-pending-clients)")
        if maxTotalSockets > fitting {
            logger.warning("--max-total-sockets \(maxTotalSockets) is more than the descriptor limit allows (\(fitting)); sockets get ENFILE when descriptors run short")
        }
    }

    /// The default directory (`ServerConfiguration.defaultDirectory`), when the socket is in it:
    /// created with mode 0700, or checked to be a real directory of ours that nobody else can write.
    /// Users `--allow-uid` admits get search permission (an ACL entry; `any`: mode 0711).
    private func prepareDefaultDirectory() throws {
        let directory = ServerConfiguration.defaultDirectory
        guard configuration.socketPath == directory + "/socket" else { return }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw ServerError("cannot create \(directory): \(Errno.current)") }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw ServerError("cannot examine \(directory): \(Errno.current)") }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw ServerError("\(directory) is not a directory (a link or a file someone left there): remove it, or use --socket-path")
        }
        guard info.st_uid == getuid() else {
            throw ServerError("\(directory) belongs to uid \(info.st_uid), not to this server's uid \(getuid()) (another user may be posing as the server): remove it, or use --socket-path")
        }
        guard info.st_mode & 0o022 == 0 else {
            throw ServerError("\(directory) is writable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))): remove it, or use --socket-path")
        }
        try grantAccess(directory, mode: configuration.allowAnyUID ? 0o711 : 0o700, ownerPermissions: 7, userPermissions: 1)
    }

    /// Sets `path`'s mode, then an ACL giving each `--allow-uid` user `userPermissions` (none left
    /// when there are no such users). With `--allow-uid any` the mode alone decides.
    private func grantAccess(_ path: String, mode: mode_t, ownerPermissions: UInt32, userPermissions: UInt32) throws {
        guard chmod(path, mode) == 0 else { throw ServerError("cannot chmod \(path): \(Errno.current)") }
        let uids = configuration.allowAnyUID ? [] : configuration.allowedUIDs.sorted()
        let rc = uids.withUnsafeBufferPointer { cstack_set_user_acl(path, ownerPermissions, $0.baseAddress, Int32($0.count), userPermissions) }
        guard rc == 0 else {
            let err = Errno.current
            let hint = err.rawValue == EOPNOTSUPP ? " (the filesystem has no POSIX ACLs: put the socket on one that has, or use --allow-uid any)" : ""
            throw ServerError("cannot give uid \(uids.map(String.init).joined(separator: ", ")) access to \(path): \(err)\(hint)")
        }
    }

    /// Binds the SEQPACKET socket. A socket file nobody answers on (a crashed server's) is replaced;
    /// a live server's is never taken over.
    private func bindListener() throws {
        let path = configuration.socketPath
        // The file is born 0600: nobody else can connect before its access is set below.
        let savedMask = umask(0o177)
        defer { umask(savedMask) }
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
        do {
            // Connecting needs write permission on the socket file.
            try grantAccess(path, mode: configuration.allowAnyUID ? 0o666 : 0o600, ownerPermissions: 6, userPermissions: 6)
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
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
                // (Ending one may schedule another: a lingering session its last holder let go.)
                while !pendingCloses.isEmpty { end(pendingCloses.removeFirst()) }
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
        case Self.timerToken:
            cstack_timerfd_clear(timerFD)
            timerFired()
        case Self.metricsToken:
            guard let metrics else { return }
            let (added, removed) = metrics.accept()
            for fd in removed { loop.remove(fd) }
            for (fd, slot) in added {
                do { try loop.add(fd, token: Self.metricsConnectionToken + UInt64(slot)) } catch { _ = metrics.service(slot) { [] } }
            }
        case Self.metricsConnectionToken..<(Self.metricsConnectionToken + UInt64(MetricsResponder.maximumConnections)):
            guard let metrics else { return }
            let token = token
            let (done, wantsWrite) = metrics.service(Int(token - Self.metricsConnectionToken)) { metricsText() }
            if let done {
                loop.remove(done)
                close(done)
            } else if wantsWrite, let fd = metrics.descriptor(Int(token - Self.metricsConnectionToken)) {
                loop.modify(fd, token: token, writable: true)
            }
        case Self.tapToken..<(Self.tapToken + UInt64(taps.count)):
            taps[Int(token - Self.tapToken)].receive()
        case Self.quarantineToken..<Self.childToken:
            releaseQuarantine(token)
        case Self.childToken..<(1 << 32):
            childExited(Int32(bitPattern: UInt32(token - Self.childToken)))
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

    // MARK: admission

    /// Accepts what the listener has queued (a bounded batch; level-triggered epoll brings the rest).
    private func acceptClients() {
        for _ in 0..<64 {
            if pending.count >= configuration.maxPendingClients {
                // Every pending slot is taken: drop the oldest if it had its chance, else wait for it.
                guard let (id, acceptedAt) = pending.min(by: { $0.value < $1.value }) else { return }
                let now = monotonicNanoseconds()
                guard now &- acceptedAt >= Self.pendingGrace else {
                    pauseListener(until: acceptedAt + Self.pendingGrace)
                    return
                }
                dropPending(id, reason: "\(pending.count) connections waiting for HELLO (--max-pending-clients)")
            }
            let fd = cstack_accept(listenFD)
            if fd < 0 {
                let err = errno
                switch err {
                case EINTR, ECONNABORTED, EPROTO:
                    continue
                case EAGAIN:
                    return
                case EMFILE, ENFILE:
                    if let held = acceptLog.admit() {
                        logger.warning("accept: \(Errno(err)); refusing new clients with EUSERS\(Self.more(held))")
                    }
                    guard refuseWithReserveDescriptor() else {
                        pauseListener(until: monotonicNanoseconds() + Self.acceptBackoff)
                        return
                    }
                default:
                    if let held = acceptLog.admit() { logger.warning("accept: \(Errno(err)); retrying in 100 ms\(Self.more(held))") }
                    pauseListener(until: monotonicNanoseconds() + Self.acceptBackoff)
                    return
                }
                continue
            }
            admit(fd)
        }
    }

    /// A new connection: refused at once (wrong user, no room) or pending until its HELLO.
    private func admit(_ fd: Int32) {
        guard let credentials = try? PeerCredentials(socket: fd) else {
            close(fd)
            return
        }
        guard isAllowed(uid: credentials.uid) else {
            if let held = refusalLog.admit() {
                logger.warning("refused client of uid \(credentials.uid), pid \(credentials.pid) (see --allow-uid)\(Self.more(held))")
            }
            refuse(fd, EACCES)
            return
        }
        guard hasClientSlot(for: credentials.pid) else {
            refuse(fd, EUSERS)
            return
        }
        let free = descriptorLimit - descriptorsInUse - 1
        guard free >= Self.clientReserve else {
            if let held = refusalLog.admit() {
                logger.warning("refusing client pid \(credentials.pid): \(free) descriptors left of \(descriptorLimit)\(Self.more(held))")
            }
            refuse(fd, EUSERS)
            return
        }
        let session = Session(id: nextSessionID, fd: fd, credentials: credentials, server: self)
        nextSessionID += 1
        do {
            try loop.add(fd, token: session.controlToken)
        } catch {
            close(fd)
            return
        }
        sessions[session.id] = session
        pending[session.id] = monotonicNanoseconds()
        if pending.count == 1 { armTimer() } // else it is armed for an earlier deadline
        // A client sends HELLO right after connecting: it is usually here already.
        if !session.serviceControl() { scheduleClose(session) }
    }

    /// Tells a connection why it is refused (request id 0) and closes it. What it sent is read
    /// first: closing with unread data would make its next read fail with ECONNRESET instead of
    /// showing it our reply.
    private func refuse(_ fd: Int32, _ error: Int32) {
        _ = try? DescriptorPassing.send(fd, ControlMessage(requestID: 0, .error(error)).encoded())
        var scratch = [UInt8](repeating: 0, count: ControlMessage.maximumSize)
        for _ in 0..<16 {
            guard recv(fd, &scratch, scratch.count, Int32(MSG_DONTWAIT)) >= 0 else { break }
        }
        close(fd)
    }

    /// Out of descriptors: frees the reserve one to accept a connection and refuse it with EUSERS.
    /// - Returns: false when that did not work either (then the listener backs off).
    private func refuseWithReserveDescriptor() -> Bool {
        guard reserveFD >= 0 else { return false }
        close(reserveFD)
        let fd = cstack_accept(listenFD)
        if fd >= 0 { refuse(fd, EUSERS) }
        reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
        return fd >= 0 && reserveFD >= 0
    }

    /// Whether a client slot is free (`--max-clients` counts sessions past HELLO); logs a refusal.
    private func hasClientSlot(for pid: Int32) -> Bool {
        let lingering = sessions.values.reduce(0) { $0 + ($1.isLingering ? 1 : 0) }
        guard sessions.count - pending.count - lingering >= configuration.maxClients else { return true }
        if let held = refusalLog.admit() {
            logger.warning("refusing client pid \(pid): --max-clients \(configuration.maxClients) reached\(Self.more(held))")
        }
        return false
    }

    /// A pending session asks to become a client (its HELLO, after the uid check).
    /// - Returns: nil when admitted, else the errno to refuse it with (the session then ends).
    func admitHello(_ session: Session) -> Int32? {
        guard hasClientSlot(for: session.credentials.pid) else { return EUSERS }
        pending.removeValue(forKey: session.id)
        if listenerPaused && pending.count < configuration.maxPendingClients { resumeListener() }
        return nil
    }

    /// Closes a pending connection (its HELLO deadline passed, or its slot is needed).
    private func dropPending(_ id: UInt64, reason: String) {
        guard let session = sessions[id] else {
            pending.removeValue(forKey: id)
            return
        }
        if let held = pendingLog.admit() {
            logger.info("closing the connection of pid \(session.credentials.pid) before its HELLO: \(reason)\(Self.more(held))")
        }
        end(session)
    }

    private func timerFired() {
        let now = monotonicNanoseconds()
        for (id, acceptedAt) in pending where now &- acceptedAt >= Self.helloTimeout {
            dropPending(id, reason: "no HELLO within 2 s")
        }
        if listenerPaused && now >= listenerResumesAt { resumeListener() }
        armTimer()
    }

    private func pauseListener(until deadline: UInt64) {
        if !listenerPaused {
            loop.remove(listenFD)
            listenerPaused = true
        }
        listenerResumesAt = deadline
        armTimer()
    }

    private func resumeListener() {
        guard listenerPaused else { return }
        if reserveFD < 0 { reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        do {
            try loop.add(listenFD, token: Self.listenerToken)
            listenerPaused = false
        } catch {
            listenerResumesAt = monotonicNanoseconds() + Self.acceptBackoff
        }
    }

    /// Arms the timer for the next HELLO deadline or listener resumption (disarms when none).
    private func armTimer() {
        var next = pending.values.min().map { $0 + Self.helloTimeout } ?? 0
        if listenerPaused { next = next == 0 ? listenerResumesAt : min(next, listenerResumesAt) }
        _ = cstack_timerfd_arm(timerFD, next)
    }

    /// " (N more since the last report)" for a throttled log line.
    static func more(_ held: Int) -> String { held > 0 ? " (\(held) more since the last report)" : "" }

    // MARK: descriptor budget

    /// Sockets open across all sessions (each holds two eventfds).
    private var totalSockets: Int { sessions.values.reduce(0) { $0 + $1.socketCount } }

    /// What the server's descriptors are used for: its own, one per connection, two per socket.
    private var descriptorsInUse: Int { baseDescriptors + sessions.count + 2 * totalSockets }

    /// Whether one more socket fits the global budget.
    /// - Returns: nil if it does, else the errno to refuse it with (`ENFILE`).
    func socketBudgetError() -> Int32? {
        let total = totalSockets
        let free = descriptorLimit - (baseDescriptors + sessions.count + 2 * total)
        guard total >= maxTotalSockets || free - 2 < Self.socketReserve else { return nil }
        if let held = socketBudgetLog.admit() {
            logger.warning("refusing a socket with ENFILE: \(total) open across all clients (--max-total-sockets \(maxTotalSockets)), \(free) descriptors left\(Self.more(held))")
        }
        return ENFILE
    }

    /// A handle no socket uses.
    func allocateHandle() -> UInt32 {
        while liveHandles.contains(nextHandle) || nextHandle == 0 { nextHandle &+= 1 }
        let handle = nextHandle
        liveHandles.insert(handle)
        nextHandle &+= 1
        return handle
    }

    func releaseHandle(_ handle: UInt32) { liveHandles.remove(handle) }

    /// A session running a live capture waits for no HELLO (it never says one).
    func exemptFromHelloDeadline(_ session: Session) {
        if pending.removeValue(forKey: session.id) != nil, listenerPaused, pending.count < configuration.maxPendingClients {
            resumeListener()
        }
    }

    func scheduleClose(_ session: Session) {
        if !pendingCloses.contains(where: { $0 === session }) { pendingCloses.append(session) }
    }

    private func end(_ session: Session) {
        session.close()
        guard session.isClosed else { return } // lingering: forked children hold its sockets
        sessions.removeValue(forKey: session.id)
        if pending.removeValue(forKey: session.id) != nil, listenerPaused, pending.count < configuration.maxPendingClients {
            resumeListener()
        }
    }

    private func shutdown() {
        Stack.withLock {
            for session in sessions.values { session.close(force: true) }
            sessions.removeAll()
            for (_, record) in inheritance { close(record.pidfd) }
            inheritance.removeAll()
        }
        loop.remove(listenFD)
        close(listenFD)
        listenFD = -1
        metrics?.close()
        unlink(configuration.socketPath)
        PacketCapture.close()
        logger.info("stopped")
    }

    // MARK: policy

    func isAllowed(uid: UInt32) -> Bool {
        configuration.allowAnyUID || uid == getuid() || configuration.allowedUIDs.contains(uid)
    }

    /// The datagram transport for a client: process-vm needs the client to be allowed to ptrace us,
    /// and neither side asking for shared memory. Without Yama that is the same user, or root; under
    /// Yama `ptrace_scope` 1 or 2 only root (CAP_SYS_PTRACE): `PR_SET_PTRACER` could name just one
    /// process, and naming every process (`PR_SET_PTRACER_ANY`) would open the server to all; 3: none.
    func transport(for credentials: PeerCredentials, preference: DatagramTransport) -> DatagramTransport {
        if preference == .sharedMemory || configuration.datagramTransport == .sharedMemory { return .sharedMemory }
        if demotedPIDs.contains(credentials.pid) { return .sharedMemory }
        let permitted: Bool
        switch yamaPtraceScope {
        case nil, 0?: permitted = credentials.uid == getuid() || credentials.uid == 0
        case 1?, 2?: permitted = credentials.uid == 0
        default: permitted = false
        }
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

/// At most one log line per interval for a recurring event, counting the ones it holds back.
struct LogThrottle {
    private let interval: UInt64
    private var last: UInt64 = 0
    private var started = false
    private var held = 0

    init(seconds: Double = 1) { interval = UInt64(seconds * 1e9) }

    /// Whether to log this occurrence.
    /// - Returns: nil to stay quiet, else how many occurrences were held back since the last line.
    mutating func admit(now: UInt64 = monotonicNanoseconds()) -> Int? {
        if started && now &- last < interval {
            held += 1
            return nil
        }
        defer {
            started = true
            last = now
            held = 0
        }
        return held
    }
}
