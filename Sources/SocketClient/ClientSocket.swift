import CShims
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The client side of one socket: its channel in the segment, its two eventfds, and the options the
/// client keeps locally (non-blocking mode, timeouts).
///
/// The application's descriptor for the socket is `fd`, the stack->app eventfd, so `poll`, `select`
/// and `epoll` work on it. Ownership: the socket owns `fd` and `stackFD` and closes each exactly once,
/// in `closeDescriptors()`.
///
/// Locking: receive-side state is used under `receiveLock`, send-side state under `sendLock`, so
/// one thread may send while another receives. `eventLock` orders the changes this process makes
/// to the eventfd counter (acknowledge drains and the writability block).
class ClientSocket: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by the locks named above; the rest is immutable.
    let connection: ServerConnection
    let info: ChannelInfo
    let domain: Int32
    let type: Int32
    let fd: Int32
    let stackFD: Int32
    let view: ChannelView
    let toApp: Notifier
    let toStack: Notifier
    let gate: WritabilityGate
    let receiveLock = Lock()
    let sendLock = Lock()
    let eventLock = Lock()

    let nonBlocking = Atomic<Bool>(false)
    /// SO_RCVTIMEO / SO_SNDTIMEO in milliseconds; -1 = none.
    let receiveTimeout = Atomic<Int32>(-1)
    let sendTimeout = Atomic<Int32>(-1)
    let closed = Atomic<Bool>(false)
    /// IPV6_V6ONLY as last set (the server has it too; the client needs it to refuse v4-mapped
    /// destinations synchronously).
    let v6Only = Atomic<Bool>(false)

    init(connection: ServerConnection, info: ChannelInfo, domain: Int32, type: Int32, fd: Int32, stackFD: Int32) throws(Errno) {
        self.connection = connection
        self.info = info
        self.domain = domain
        self.type = type
        self.fd = fd
        self.stackFD = stackFD
        do {
            view = try ChannelView(segment: connection.segment, offset: Int(info.offset), layout: ChannelLayout(info))
        } catch {
            throw Errno(EPROTO)
        }
        toApp = Notifier(state: view.toApp, fd: fd)
        toStack = Notifier(state: view.toStack, fd: stackFD)
        gate = WritabilityGate(channel: view.header, appFD: fd)
    }

    func closeDescriptors() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Glibc.close(fd)
        Glibc.close(stackFD)
    }

    // MARK: waiting

    /// The deadline for a blocking call with timeout `ms` (-1 = none), as monotonic nanoseconds.
    func deadline(_ ms: Int32) -> UInt64? {
        ms < 0 ? nil : monotonicNanoseconds() + UInt64(ms) * 1_000_000
    }

    /// Sleeps until the socket descriptor reports `events`, the deadline passes, or the server dies.
    /// - Throws: EAGAIN at the deadline, ENETDOWN when the server is gone.
    func waitFor(_ events: Int16, until deadline: UInt64?) throws(Errno) {
        var timeout: Int32 = -1
        if let deadline {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw Errno(EAGAIN) }
            timeout = Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
        }
        var fds = [pollfd(fd: fd, events: events, revents: 0),
                   pollfd(fd: connection.liveControlFD, events: POLLRDHUP_, revents: 0)]
        let n = poll(&fds, 2, timeout)
        if n < 0 {
            if errno == EINTR { throw Errno(EINTR) }
            throw Errno.current
        }
        if fds[1].revents != 0 {
            connection.markDead()
            throw Errno(ENETDOWN)
        }
        if n == 0 { throw Errno(EAGAIN) }
    }

    /// Acknowledges stack->app wake-ups before sleeping or reporting EAGAIN. `ready` is re-checked
    /// afterwards; if it holds, the acknowledgement is undone so pollers still see the socket readable.
    /// - Returns: the re-check's result.
    func acknowledgeAndRecheck(_ ready: () throws(Errno) -> Bool) throws(Errno) -> Bool {
        eventLock.withLock {
            // Nothing to take in when no signal is outstanding and we left no count of our own in
            // the eventfd (undo, writability block): skip the read syscall.
            if toApp.isPending || counterMayHoldCount {
                toApp.acknowledge(drain: !gate.isBlocked)
                counterMayHoldCount = gate.isBlocked
            }
        }
        if try ready() {
            eventLock.withLock { counterMayHoldCount = true }
            toApp.undoAcknowledge()
            return true
        }
        return false
    }

    /// Whether the eventfd may hold a count that no outstanding signal accounts for (guarded by
    /// eventLock): after an undo, or while/after the writability block (its release writes one).
    private var counterMayHoldCount = true

    /// Makes the descriptor unwritable until `hasRoom` holds. Returns true when room appeared on the
    /// re-check (the block is then already released).
    func blockUntilRoom(_ hasRoom: () throws(Errno) -> Bool) throws(Errno) -> Bool {
        eventLock.withLock {
            gate.block()
            counterMayHoldCount = true
        }
        if try hasRoom() {
            gate.release()
            return true
        }
        return false
    }

    /// Fails when the server is known to be gone (an atomic load: this runs on every call).
    /// Death is noticed by `waitFor`, by the connection's watchdog, and by `checkServerBeforeEAGAIN`.
    func checkServer() throws(Errno) {
        if connection.isDead { throw Errno(ENETDOWN) }
    }

    /// Before a non-blocking call reports EAGAIN: makes sure the server is still there (a poll of
    /// the control socket), so a non-blocking caller learns of its death too.
    func checkServerBeforeEAGAIN() throws(Errno) {
        if connection.isDead || !connection.checkAlive() { throw Errno(ENETDOWN) }
    }

    /// `error` as the caller must see it: ENETDOWN when the server turns out to be gone (an error
    /// from the socket's own state says nothing once the server is). EAGAIN was checked already
    /// (`checkServerBeforeEAGAIN`, `waitFor`); the poll of the control socket is on error paths only.
    func reported(_ error: Errno) -> Errno {
        switch error.rawValue {
        case ENETDOWN, EAGAIN, EINTR: return error
        default: return connection.checkAlive() ? error : Errno(ENETDOWN)
        }
    }

    /// The server died: readable (a read reports ENETDOWN) and writable (a write does too).
    func wakeForServerDeath() { signalLocally() }

    /// Makes the descriptor readable and writable from this process (server death, our own
    /// SHUT_RD): blocked callers and pollers wake and look again.
    func signalLocally() {
        eventLock.withLock {
            counterMayHoldCount = true
            if !gate.release() { _ = cshims_eventfd_write(fd, 1) }
        }
    }

    // MARK: requests

    func request(_ r: Request) throws(Errno) -> Reply {
        let (reply, fds) = try connection.request(r)
        for fd in fds { Glibc.close(fd) } // no request on an existing socket returns descriptors
        if case .error(let err) = reply { throw Errno(err) }
        return reply
    }

    // MARK: operations every kind answers; subclasses override what they support

    func send(_ buffers: [UnsafeRawBufferPointer], to address: SocketAddress?, flags: Int32) throws(Errno) -> Int {
        throw Errno(EOPNOTSUPP)
    }

    /// - Returns: bytes stored, the datagram's full length, the sender, and whether it was truncated.
    func receive(_ buffers: [UnsafeMutableRawBufferPointer], flags: Int32) throws(Errno) -> (count: Int, full: Int, from: SocketAddress?, truncated: Bool) {
        throw Errno(EOPNOTSUPP)
    }

    /// SO_ERROR when the client keeps the socket's error itself (nil: ask the server).
    func takeSocketError() -> Int32? { nil }

    /// Bytes written and not yet taken by the stack (SIOCOUTQ).
    func bytesUnsent() throws(Errno) -> Int { 0 }

    /// Bytes ready to read (FIONREAD).
    func bytesReadable() throws(Errno) -> Int { 0 }

    /// The socket's readiness as the kernel would report it to poll (POLLIN, POLLOUT, POLLHUP,
    /// POLLERR, POLLRDHUP), computed from the channel's shared state alone (any thread may ask).
    func readiness() -> Int16 {
        connection.isDead ? Int16(POLLIN | POLLOUT | POLLHUP | POLLERR) : 0
    }

    /// Whether a full send ring can be waited for through the writability block (sockets with a
    /// send ring in use).
    var waitsForRoomWithGate: Bool { false }

    /// Called by sko_poll before it sleeps on this socket's descriptor, with the readiness it found.
    /// Drops a stale readable count (so the sleep is not cut short by it) and, when the caller waits
    /// for room to write, sets the writability block so that its release (POLLOUT on the eventfd)
    /// says there is room.
    /// - Returns: the eventfd events to sleep on; nil when the descriptor cannot signal new data
    ///   (the block holds it saturated): the caller then polls briefly instead.
    func prepareToSleep(readiness: Int16, wants: Int16) -> Int16? {
        var roomNow = false
        eventLock.withLock {
            let readable = readiness & Int16(POLLIN) != 0
            if wants & Int16(POLLOUT) != 0 && readiness & Int16(POLLOUT) == 0 && waitsForRoomWithGate && !gate.isBlocked {
                gate.block()
                counterMayHoldCount = true
                // Room may have appeared before the stack could see the block: then undo it, and
                // do not sleep (nothing would signal that room: the caller looks again at once).
                if self.readiness() & Int16(POLLOUT) != 0 {
                    gate.release()
                    roomNow = true
                }
            }
            if !readable && !gate.isBlocked && (toApp.isPending || counterMayHoldCount) {
                toApp.acknowledge()
                counterMayHoldCount = false
            }
        }
        return gate.isBlocked || roomNow ? nil : Int16(POLLIN)
    }

    /// Called after a successful connect request (datagram sockets remember their peer locally).
    func didConnect(_ address: SocketAddress) {}

    func connect(to address: SocketAddress) throws(Errno) {
        _ = try request(.connect(handle: info.handle, address: address))
        didConnect(address)
    }

    func shutdown(_ how: Int32) throws(Errno) {
        _ = try request(.shutdown(handle: info.handle, how: how))
    }

    /// Releases the socket in the server. A server that is gone has released it already.
    func close() throws(Errno) {
        do {
            _ = try request(.close(handle: info.handle))
        } catch where error.rawValue == ENETDOWN {
        }
    }
}
