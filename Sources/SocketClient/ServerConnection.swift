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

    /// The server path used when none is given: `$SOCKET_SERVER_PATH`, else
    /// `$XDG_RUNTIME_DIR/socket-server.sock`, else `/tmp/socket-server-UID.sock`.
    public static var defaultPath: String {
        if let p = getenv("SOCKET_SERVER_PATH"), p.pointee != 0 { return String(cString: p) }
        if let d = getenv("XDG_RUNTIME_DIR"), d.pointee != 0 { return String(cString: d) + "/socket-server.sock" }
        return "/tmp/socket-server-\(getuid()).sock"
    }

    /// Connects and says HELLO; with `.auto`, checks that process-vm really works before using it.
    /// - Parameters:
    ///   - path: the server's socket path (default: `defaultPath`).
    ///   - transport: preferred datagram transport (`.auto` lets the server choose).
    /// - Throws: `Errno` — ENOENT/ECONNREFUSED when no server listens at `path`, EACCES when the
    ///   server refuses us, EPROTO when it speaks another protocol version.
    public static func connect(path: String? = nil, transport: DatagramTransport = .auto) throws(Errno) -> ServerConnection {
        let path = path ?? defaultPath
        let connection = try ServerConnection(connectingTo: path, transport: transport)
        // process-vm needs the kernel to let us read and write the server's memory: prove it on the
        // server's mapping of our segment, and fall back to shared memory (a new session) if not.
        if connection.info.transport == .processVM && transport != .processVM && !connection.canAccessServerMemory() {
            return try ServerConnection(connectingTo: path, transport: .sharedMemory)
        }
        return connection
    }

    private func canAccessServerMemory() -> Bool {
        var magic: UInt32 = 0
        let n = try? withUnsafeMutableBytes(of: &magic) {
            try ProcessMemory(pid: info.serverPID).read([.init(address: info.probeAddress, length: 4)], into: [$0])
        }
        return n == 4 && magic == CSHIMS_SEGMENT_MAGIC
    }

    private init(connectingTo path: String, transport: DatagramTransport) throws(Errno) {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Errno.current }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw Errno(ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let err = Errno.current
            close(fd)
            throw err
        }
        do {
            let hello = ControlMessage(requestID: 0, .hello(version: ControlMessage.version, transport: transport))
            try DescriptorPassing.send(fd, hello.encoded())
            guard let packet = try DescriptorPassing.receive(fd, maxBytes: ControlMessage.maximumSize + 1) else { throw Errno(EPROTO) }
            let reply = try? ControlMessage.decode(packet.bytes)
            switch reply?.payload {
            case .reply(.hello(let info))? where packet.descriptors.count == 1:
                let segment = try SharedSegment(adopting: packet.descriptors[0])
                try segment.validateHeader()
                self.controlFD = fd
                self.segment = segment
                self.info = info
            case .reply(.error(let err))?:
                packet.closeDescriptors()
                throw Errno(err)
            default:
                packet.closeDescriptors()
                throw Errno(EPROTO)
            }
        } catch let error as Errno {
            close(fd)
            throw error
        } catch {
            close(fd)
            throw Errno((error as? SharedError)?.errno?.rawValue ?? EPROTO)
        }
    }

    deinit { close(controlFD) }

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

    /// True once the server has gone away (every later call fails with ENETDOWN).
    public var isDead: Bool { dead.load(ordering: .acquiring) }

    func markDead() { dead.store(true, ordering: .releasing) }

    /// Sends a request and waits for its reply.
    /// - Returns: the reply and the descriptors that came with it (the caller owns them).
    /// - Throws: ENETDOWN when the server is gone, EPROTO on a malformed reply.
    public func request(_ request: Request) throws(Errno) -> (Reply, [Int32]) {
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
