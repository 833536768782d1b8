import CLwIP
import CShims
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// The server side of one client socket: its channel in the client's segment and its two eventfds.
///
/// `appEvent` is the stack->app eventfd (the application's socket descriptor on the other side);
/// `stackEvent` is app->stack, watched by the server's event loop. Ownership: the socket owns both
/// eventfds (the client has its own duplicates) and closes them in `release()`.
///
/// All state is touched under the core lock (`Stack.withLock` or inside an lwIP callback).
class ServerSocket {
    unowned let session: Session
    let handle: UInt32
    let domain: Int32
    let info: ChannelInfo
    let view: ChannelView
    let appEvent: EventFD
    let stackEvent: EventFD
    let toApp: Notifier
    let toStack: Notifier
    let gate: WritabilityGate
    /// Socket options every kind keeps: SO_REUSEADDR etc. are applied to the pcb; these are ours.
    var pendingError: Int32 = 0

    init(session: Session, handle: UInt32, domain: Int32, info: ChannelInfo, view: ChannelView, appEvent: EventFD, stackEvent: EventFD) throws(ServerError) {
        self.session = session
        self.handle = handle
        self.domain = domain
        self.info = info
        self.view = view
        self.appEvent = appEvent
        self.stackEvent = stackEvent
        toApp = Notifier(state: view.toApp, fd: appEvent.fd)
        toStack = Notifier(state: view.toStack, fd: stackEvent.fd)
        gate = WritabilityGate(channel: view.header, appFD: appEvent.fd)
    }

    var family: SocketAddress.Family { domain == AF_INET6 ? .inet6 : .inet }

    /// Serves one control request about this socket.
    func handle(_ request: Request) -> Reply { .error(EOPNOTSUPP) }

    /// The app signalled on `stackEvent` (data to send, space freed...).
    func serviceStackEvent() throws(SharedError) {}

    /// Releases the lwIP side (the pcb). Called once, from `Session` when the socket is closed or
    /// the client is gone.
    func releaseStack() {}

    /// Sends what the app handed over before it closed the socket or went away (a datagram that
    /// `sendto` accepted leaves even if the app closes or exits at once, as with the kernel's sockets).
    func flushBeforeRelease() {}

    /// Marks the channel closed and wakes the app.
    func release() {
        view.setEvents(CSHIMS_EV_CLOSED | CSHIMS_EV_HUP)
        releaseStack()
        toApp.notify()
        gate.release()
        appEvent.close()
        stackEvent.close()
    }

    /// The lwIP address a bind to `address` uses, or the errno bind must fail with: the socket's
    /// family, and either the wildcard or one of the stack's own addresses (EADDRNOTAVAIL otherwise).
    func bindAddress(_ address: SocketAddress) -> Result<ip_addr_t, Errno> {
        guard address.family == family, address.isValid else { return .failure(Errno(EAFNOSUPPORT)) }
        if address.isWildcard { return .success(anyAddress(family)) }
        var ip = ipAddress(address)
        guard cstack_is_local_address(&ip) != 0 else { return .failure(Errno(EADDRNOTAVAIL)) }
        return .success(ip)
    }

    // MARK: options every kind answers

    func commonOption(level: Int32, name: Int32) -> [UInt8]? {
        guard level == SOL_SOCKET else { return nil }
        switch name {
        case SO_DOMAIN: return int32Bytes(domain)
        case SO_ERROR:
            let err = pendingError
            pendingError = 0
            return int32Bytes(err)
        default: return nil
        }
    }
}

func int32Bytes(_ v: Int32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }

func int32Value(_ bytes: [UInt8]) -> Int32? {
    guard bytes.count >= 4 else { return nil }
    return bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
}
