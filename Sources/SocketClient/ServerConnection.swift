import CShims
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A client's connection to a socket server: the SEQPACKET control socket and the shared segment the
/// server handed out at HELLO.
///
/// Requests are synchronous and serialized (one in flight at a time); blocking socket calls never
/// hold the control channel while they wait, so one thread blocked in `recv` does not stall another
/// thread's `socket` or `close`.
///
/// Ownership: the connection owns the control socket and the segment for its whole life.
public final class ServerConnection: Sendable {
    public let controlFD: Int32
    public let segment: SharedSegment
    public let info: HelloInfo
    public let path: String
    private let nextRequestID = Mutex<UInt32>(1)
    private let dead = Atomic<Bool>(false)
    /// In a forked child: this is the parent's connection (its segment mapping stays, for the
    /// inherited sockets); requests go to `successor`, the child's own connection, which attached
    /// them (see ClientState.connection()).
    private let abandoned = Atomic<Bool>(false)
    private let successor = AtomicLazyReference<ServerConnection>()

    /// The server path used when none is given: `$SOCKET_SERVER_PATH`, else
    /// `$XDG_RUNTIME_DIR/socket-server.sock`, else `/tmp/socket-server-UID/socket`.
    public static var defaultPath: String { defaultLocation.path }

    /// The default path, and the directory the client must check before trusting it: the
    /// `/tmp/socket-server-UID` fallback (nil for the two paths the user chose through the environment).
    static var defaultLocation: (path: String, privateDirectory: String?) {
        if let p = getenv("SOCKET_SERVER_PATH"), p.pointee != 0 { return (String(cString: p), nil) }
        if let d = getenv("XDG_RUNTIME_DIR"), d.pointee != 0 { return (String(cString: d) + "/socket-server.sock", nil) }
        let directory = "/tmp/socket-server-\(getuid())"
        return (directory + "/socket", directory)
    }

    /// How long connect + HELLO may take: `$SOCKET_SERVER_TIMEOUT_MS` when it is a positive number
    /// of milliseconds (at most 2^31 - 1), else 5 seconds.
    static var defaultTimeoutMilliseconds: Int {
        if let t = getenv("SOCKET_SERVER_TIMEOUT_MS"), let ms = Int(String(cString: t)), ms > 0 { return ms }
        return 5000
    }

    /// Connects and says HELLO; with `.auto`, checks that process-vm really works before using it.
    ///
    /// Before sending anything it authenticates the server: the process listening at the path must
    /// run as our uid or as root (`SO_PEERCRED`), and the default `/tmp/socket-server-UID` directory
    /// must be a real directory owned by us or root that neither group nor others can write.
    /// - Parameters:
    ///   - path: the server's socket path (default: `defaultPath`).
    ///   - transport: preferred datagram transport (`.auto` lets the server choose).
    ///   - timeoutMilliseconds: the bound on connect + HELLO (default: `$SOCKET_SERVER_TIMEOUT_MS`,
    ///     else 5000).
    /// - Throws: `Errno` — ENOENT/ECONNREFUSED when no server listens at `path` (or it hung up
    ///   without answering), EPERM when the server or its directory is not to be trusted,
    ///   ETIMEDOUT when HELLO is not answered in time, the server's errno when it refuses us
    ///   (EACCES, EUSERS; EPROTONOSUPPORT for another protocol version), EPROTO when the answer is
    ///   not the protocol at all.
    public static func connect(path: String? = nil, transport: DatagramTransport = .auto,
                               timeoutMilliseconds: Int? = nil) throws(Errno) -> ServerConnection {
        let location = path.map { (path: $0, privateDirectory: String?.none) } ?? defaultLocation
        let timeout = min(max(timeoutMilliseconds ?? defaultTimeoutMilliseconds, 1), Int(Int32.max)) // about 24 days at most
        if let directory = location.privateDirectory { try checkPrivateDirectory(directory) }
        let connection = try ServerConnection(connectingTo: location.path, transport: transport, timeoutMilliseconds: timeout)
        // process-vm needs the kernel to let us read and write the server's memory: prove it on the
        // server's mapping of our segment, and fall back to shared memory (a new session) if not.
        if connection.info.transport == .processVM && transport != .processVM && !connection.canAccessServerMemory() {
            return try ServerConnection(connectingTo: location.path, transport: .sharedMemory, timeoutMilliseconds: timeout)
        }
        return connection
    }

    /// Checks the directory of the default path: it must exist (else ENOENT: no server), be a real
    /// directory (not a symlink), be owned by our uid or root, and be writable by nobody else.
    /// - Throws: ENOENT (or lstat's errno), EPERM when it is not to be trusted.
    static func checkPrivateDirectory(_ directory: String) throws(Errno) {
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw Errno.current }
        guard info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid() || info.st_uid == 0,
              info.st_mode & (S_IWGRP | S_IWOTH) == 0 else { throw Errno(EPERM) }
    }

    private func canAccessServerMemory() -> Bool {
        var magic: UInt32 = 0
        let n = try? withUnsafeMutableBytes(of: &magic) {
            try ProcessMemory(pid: info.serverPID).read([.init(address: info.probeAddress, length: 4)], into: [$0])
        }
        return n == 4 && magic == CSHIMS_SEGMENT_MAGIC
    }

    private init(connectingTo path: String, transport: DatagramTransport, timeoutMilliseconds: Int) throws(Errno) {
        self.path = path
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Errno.current }
        do {
            try Self.connect(fd, to: path, deadline: deadline)
            try Self.authenticateServer(fd)
            let (info, segment) = try Self.hello(over: fd, transport: transport, deadline: deadline)
            self.info = info
            self.segment = segment
            controlFD = fd
        } catch {
            close(fd)
            throw error
        }
    }

    /// After exec: the segment (mapped from the memfd the old image left open) of sockets this
    /// program adopted. It has no control socket of its own: its requests go to `successor`, the
    /// program's own connection.
    init(adoptedSegment segment: SharedSegment, successor: ServerConnection) {
        self.path = successor.path
        self.info = successor.info
        self.segment = segment
        controlFD = -1
        abandoned.store(true, ordering: .relaxed)
        _ = self.successor.storeIfNil(successor)
    }

    /// `connect(2)` bounded by `deadline` (a full listen backlog makes it wait; SO_SNDTIMEO bounds that).
    /// - Throws: connect's errno (ENOENT, ECONNREFUSED, ...), ETIMEDOUT at the deadline.
    private static func connect(_ fd: Int32, to path: String, deadline: UInt64) throws(Errno) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw Errno(ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        while true {
            try setSendTimeout(fd, until: deadline)
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return }
            switch errno {
            case EINTR: continue
            case EAGAIN: throw Errno(ETIMEDOUT) // SO_SNDTIMEO elapsed with the backlog still full
            default: throw Errno.current
            }
        }
    }

    /// Sets SO_SNDTIMEO to the time left until `deadline` (nil: no timeout).
    /// - Throws: ETIMEDOUT when the deadline has passed.
    private static func setSendTimeout(_ fd: Int32, until deadline: UInt64?) throws(Errno) {
        var tv = timeval()
        if let deadline {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw Errno(ETIMEDOUT) }
            let us = max((deadline - now) / 1000, 1)
            tv = timeval(tv_sec: Int(us / 1_000_000), tv_usec: Int(us % 1_000_000))
        }
        guard setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else { throw Errno.current }
    }

    /// The server must run as our uid or as root (the kernel's `SO_PEERCRED`, recorded when the
    /// server called listen): anyone else could have created the socket file first.
    /// - Throws: EPERM for a server of another uid.
    private static func authenticateServer(_ fd: Int32) throws(Errno) {
        let server: PeerCredentials
        do { server = try PeerCredentials(socket: fd) } catch { throw error.errno ?? Errno(EPROTO) }
        guard server.uid == getuid() || server.uid == 0 else { throw Errno(EPERM) }
    }

    /// Says HELLO on a connected control socket and takes the reply, within `deadline`.
    /// - Returns: the server's HELLO information and our segment (owned by the caller).
    /// - Throws: the errno of the server's error reply (also when it refused us and hung up before
    ///   our HELLO went out), ECONNREFUSED when it hung up without a reply, ETIMEDOUT at the
    ///   deadline, EPROTO for anything else than a HELLO reply.
    static func hello(over fd: Int32, transport: DatagramTransport, deadline: UInt64) throws(Errno) -> (HelloInfo, SharedSegment) {
        let hello = ControlMessage(requestID: 0, .hello(version: ControlMessage.version, transport: transport))
        do {
            try setSendTimeout(fd, until: deadline)
            try DescriptorPassing.send(fd, hello.encoded())
            try setSendTimeout(fd, until: nil) // later requests are not bounded by HELLO's deadline
        } catch let error as Errno {
            throw queuedRefusal(fd) ?? error
        } catch {
            // EPIPE/ECONNRESET: the server refused us and closed; its reply may be queued.
            if let refusal = queuedRefusal(fd) { throw refusal }
            switch (error as? SharedError)?.errno?.rawValue ?? EPROTO {
            case EAGAIN: throw Errno(ETIMEDOUT) // SO_SNDTIMEO elapsed: the server does not read
            case EPIPE, ECONNRESET, ENOTCONN: throw Errno(ECONNREFUSED)
            case let err: throw Errno(err)
            }
        }
        let packet: ReceivedPacket
        do {
            packet = try receiveReply(fd, deadline: deadline)
        } catch let error as Errno {
            throw error
        } catch {
            throw queuedRefusal(fd) ?? Errno(ECONNREFUSED)
        }
        let reply = packet.truncated ? nil : try? ControlMessage.decode(packet.bytes)
        switch reply?.payload {
        case .reply(.hello(let info))? where packet.descriptors.count == 1:
            do {
                let segment = try SharedSegment(adopting: packet.descriptors[0])
                try segment.validateHeader()
                return (info, segment)
            } catch {
                throw Errno(error.errno?.rawValue ?? EPROTO)
            }
        case .reply(.error(let err))?:
            packet.closeDescriptors()
            throw Errno(err)
        default:
            packet.closeDescriptors()
            throw Errno(EPROTO)
        }
    }

    /// The next packet on `fd`, waiting until `deadline`.
    /// - Throws: ETIMEDOUT at the deadline; the receive's `SharedError` when the server hung up.
    private static func receiveReply(_ fd: Int32, deadline: UInt64) throws -> ReceivedPacket {
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw Errno(ETIMEDOUT) }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&pfd, 1, Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max))))
            if n < 0 && errno != EINTR { throw Errno.current }
            if n > 0, let packet = try DescriptorPassing.receive(fd, maxBytes: ControlMessage.maximumSize + 1, nonBlocking: true) {
                return packet
            }
        }
    }

    /// The errno of an error reply the server queued before it hung up (it refuses a client that
    /// way: EACCES, EUSERS), nil when there is none. A pending ECONNRESET (the server closed with
    /// our HELLO unread) is reported by the kernel before the queued packets: read past it.
    private static func queuedRefusal(_ fd: Int32) -> Errno? {
        for _ in 0..<4 {
            do {
                guard let packet = try DescriptorPassing.receive(fd, maxBytes: ControlMessage.maximumSize + 1, nonBlocking: true) else { return nil }
                packet.closeDescriptors()
                if case .reply(.error(let err))? = (try? ControlMessage.decode(packet.bytes))?.payload { return Errno(err) }
            } catch where error.errno?.rawValue == ECONNRESET {
                continue
            } catch {
                return nil
            }
        }
        return nil
    }

    deinit { if controlFD >= 0 { close(controlFD) } }

    /// Watches the control socket from a thread of its own and, when the server goes away, wakes
    /// every socket of this connection: their descriptors turn readable and writable, so an
    /// application blocked in its own poll/epoll returns and its next call fails with ENETDOWN.
    /// (The library's own blocking calls poll the control socket themselves.)
    func startWatchdog(_ wakeSockets: @escaping @Sendable (ServerConnection) -> Void) {
        let watchdog = Watchdog { [self] in
            var pfd = pollfd(fd: controlFD, events: POLLRDHUP_, revents: 0)
            while true {
                let n = poll(&pfd, 1, -1)
                if n < 0 && errno == EINTR { continue }
                if n < 0 || pfd.revents & (Int16(POLLHUP | POLLERR | POLLNVAL) | POLLRDHUP_) != 0 { break }
            }
            markDead()
            wakeSockets(self)
        }
        watchdog.start()
    }

    /// True once the server has gone away (every later call fails with ENETDOWN). A connection
    /// abandoned at fork answers for its successor, and is alive while it has none yet (the
    /// inherited sockets' data path works without a session; the first request makes one).
    public var isDead: Bool {
        guard abandoned.load(ordering: .relaxed) else { return dead.load(ordering: .acquiring) }
        return successor.load()?.isDead ?? false
    }

    func markDead() {
        if abandoned.load(ordering: .relaxed) { successor.load()?.markDead() } else { dead.store(true, ordering: .releasing) }
    }

    /// The connection requests go to: this one, or for a connection abandoned at fork, its
    /// successor (nil while there is none).
    var current: ServerConnection? {
        var c = self
        while c.abandoned.load(ordering: .relaxed) {
            guard let next = c.successor.load() else { return nil }
            c = next
        }
        return c
    }

    /// The control socket to watch for the server's death (-1 while an abandoned connection has
    /// no successor: poll ignores it).
    var liveControlFD: Int32 { current?.controlFD ?? -1 }

    /// Whether this connection was abandoned at a fork and still waits for a successor.
    var awaitsSuccessor: Bool { abandoned.load(ordering: .relaxed) && current == nil }

    /// In a child after fork: this copy of the connection is the parent's session. Our copy of
    /// the control socket is replaced by /dev/null (the number stays valid for `deinit`), so the
    /// child says nothing on the parent's session and does not keep it open; its segment mapping
    /// stays for the sockets the child inherited, whose requests go to the successor.
    func abandonAfterFork() {
        abandoned.store(true, ordering: .relaxed)
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        if null >= 0 {
            _ = dup2(null, controlFD)
            close(null)
        }
    }

    /// The child's own connection takes this abandoned one's requests.
    func setSuccessor(_ connection: ServerConnection) {
        _ = successor.storeIfNil(connection)
    }

    /// Sends a request and waits for its reply.
    /// - Returns: the reply and the descriptors that came with it (the caller owns them).
    /// - Throws: ENETDOWN when the server is gone, EPROTO on a malformed reply.
    public func request(_ request: Request) throws(Errno) -> (Reply, [Int32]) {
        if abandoned.load(ordering: .relaxed) {
            // A forked child's first request on an inherited socket makes its own session.
            if current == nil { _ = try ClientState.shared.connection() }
            guard let live = current else { throw Errno(ENETDOWN) }
            return try live.request(request)
        }
        if isDead { throw Errno(ENETDOWN) }
        return try nextRequestID.withLock { id throws(Errno) -> (Reply, [Int32]) in
            id &+= 1
            let message = ControlMessage(requestID: id, request)
            do {
                try DescriptorPassing.send(controlFD, message.encoded())
                while true {
                    guard let packet = try DescriptorPassing.receive(controlFD, maxBytes: ControlMessage.maximumSize + 1) else { continue }
                    guard !packet.truncated, let reply = try? ControlMessage.decode(packet.bytes),
                          case .reply(let body) = reply.payload, body.descriptorCount == packet.descriptors.count
                    else {
                        packet.closeDescriptors()
                        throw Errno(EPROTO)
                    }
                    if reply.requestID != id {
                        packet.closeDescriptors() // a reply to a request we abandoned
                        continue
                    }
                    return (body, packet.descriptors)
                }
            } catch let error as Errno {
                throw error
            } catch {
                markDead()
                throw Errno(ENETDOWN)
            }
        }
    }

    /// Polls the control socket for the server's death without consuming anything.
    /// - Returns: true when the server is gone.
    func checkAlive() -> Bool {
        if abandoned.load(ordering: .relaxed) { return current?.checkAlive() ?? true }
        if isDead { return false }
        var pfd = pollfd(fd: controlFD, events: POLLRDHUP_, revents: 0)
        if poll(&pfd, 1, 0) > 0, pfd.revents & (Int16(POLLHUP | POLLERR) | POLLRDHUP_) != 0 {
            markDead()
            return false
        }
        return true
    }
}

/// A detached pthread running one closure.
final class Watchdog: @unchecked Sendable {
    // @unchecked Sendable: `body` is immutable and run once, on the new thread.
    private let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) { self.body = body }

    func start() {
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        // The watchdog must not take a signal meant for the application's threads.
        var all = sigset_t(), old = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &old)
        pthread_create(&thread, &attributes, { arg in
            Unmanaged<Watchdog>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
        pthread_sigmask(SIG_SETMASK, &old, nil)
        pthread_attr_destroy(&attributes)
    }
}
