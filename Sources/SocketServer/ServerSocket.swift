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

    // Who holds the socket (see `Session+Inheritance.swift`). It lives in its own session's segment
    // and closes when nobody holds it any more: not its session's app, no other session that
    // attached it after a fork, no forked child that has not attached yet.
    /// The own session's app holds it (it is in that session's table).
    var heldByOwner = true
    /// Other sessions (forked children) that attached it, by session id.
    var sharedWith: [UInt64] = []
    /// Forked children (pids) holding it without a session of their own yet.
    var pendingChildren: [Int32] = []
    var isHeld: Bool { heldByOwner || !sharedWith.isEmpty || !pendingChildren.isEmpty }
    /// A connection a listener queued that no app has accepted yet (held by no app).
    var awaitingAccept = false

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

    /// IP-level options, kept here and applied to every pcb the socket gets.
    var ipOptions = IPOptions()

    /// An IPv6 socket that carries IPv4 too, through v4-mapped addresses (IPV6_V6ONLY 0: Linux's
    /// default). Its unbound pcb is lwIP's IPADDR_TYPE_ANY.
    var dualStack: Bool { domain == AF_INET6 && !ipOptions.v6Only }

    /// The lwIP type of a new pcb for this socket.
    var pcbType: UInt8 {
        UInt8(domain == AF_INET ? IPADDR_TYPE_V4.rawValue : dualStack ? IPADDR_TYPE_ANY.rawValue : IPADDR_TYPE_V6.rawValue)
    }

    /// The wildcard address a bind to `[::]` or `0.0.0.0` uses (both families for a dual-stack socket).
    var wildcardAddress: ip_addr_t {
        var ip = ip_addr_t()
        cstack_ip_set_any(&ip, domain == AF_INET ? 4 : dualStack ? 0 : 6)
        return ip
    }

    /// The lwIP address for an address of this socket's family: a v4-mapped IPv6 address is IPv4
    /// to lwIP. nil: a v4-mapped address on an IPv6-only socket (Linux: ENETUNREACH).
    func stackAddress(_ a: SocketAddress) -> ip_addr_t? {
        guard a.isV4Mapped else { return ipAddress(a) }
        return dualStack ? ipAddress(a.unmapped) : nil
    }

    /// The address the app sees for an lwIP address: on an IPv6 socket, IPv4 addresses v4-mapped.
    func appAddress(_ ip: UnsafePointer<ip_addr_t>, port: UInt16) -> SocketAddress {
        let a = socketAddress(ip, port: port, fallbackFamily: family)
        return a.family == .inet && domain == AF_INET6 ? a.v4Mapped : a
    }

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
        if address.isWildcard { return .success(wildcardAddress) }
        // A v4-mapped address binds the IPv4 address (::ffff:0.0.0.0: any IPv4 address); an
        // IPv6-only socket refuses it (Linux: EINVAL).
        guard var ip = stackAddress(address) else { return .failure(Errno(EINVAL)) }
        if address.isV4Mapped && address.unmapped.isWildcard { return .success(anyAddress(.inet)) }
        guard cstack_is_local_address(&ip) != 0 else { return .failure(Errno(EADDRNOTAVAIL)) }
        return .success(ip)
    }

    // MARK: recorded options

    /// SOL_SOCKET options a kind keeps only to report them back (they change nothing in the
    /// stack; the README lists them), with Linux's defaults. `kept` says which ones, per kind.
    private var recorded: [Int32: [UInt8]] = [:]
    private static let recordedDefaults: [Int32: [UInt8]] = [
        SO_RCVLOWAT: int32Bytes(1), SO_KEEPALIVE: int32Bytes(0), SO_REUSEPORT: int32Bytes(0),
        SO_LINGER: withUnsafeBytes(of: linger(l_onoff: 0, l_linger: 0)) { Array($0) },
    ]

    func recordedOption(name: Int32, kept: Set<Int32>) -> [UInt8]? {
        guard kept.contains(name) else { return nil }
        return recorded[name] ?? Self.recordedDefaults[name]
    }

    /// Records `value`, with Linux's checks (an int, or a whole `struct linger`); nil when `name`
    /// is not kept here.
    func setRecordedOption(name: Int32, value: [UInt8], kept: Set<Int32>) -> Reply? {
        guard kept.contains(name), let template = Self.recordedDefaults[name] else { return nil }
        guard value.count >= template.count else { return .error(EINVAL) }
        var v = Array(value.prefix(template.count))
        if name == SO_RCVLOWAT, let n = int32Value(v) { v = int32Bytes(n < 0 ? Int32.max : max(n, 1)) }
        if name == SO_KEEPALIVE || name == SO_REUSEPORT, let n = int32Value(v) { v = int32Bytes(n != 0 ? 1 : 0) }
        recorded[name] = v
        return .ok(value: 0)
    }

    // MARK: IP-level options (IPPROTO_IP, IPPROTO_IPV6), every kind

    /// getsockopt at a level the socket does not know: Linux's IPv4 layer says EOPNOTSUPP, its
    /// IPv6 layer ENOPROTOOPT.
    var unknownLevelError: Int32 { domain == AF_INET6 ? ENOPROTOOPT : EOPNOTSUPP }

    /// getsockopt at IPPROTO_IP / IPPROTO_IPV6; nil for another level or an option not kept here.
    func ipOption(level: Int32, name: Int32) -> [UInt8]? {
        switch (level, name) {
        case (Int32(IPPROTO_IP), IP_TTL): return int32Bytes(Int32(ipOptions.ttl))
        case (Int32(IPPROTO_IP), IP_TOS): return int32Bytes(Int32(ipOptions.tos))
        case (Int32(IPPROTO_IPV6), IPV6_UNICAST_HOPS) where domain == AF_INET6: return int32Bytes(Int32(ipOptions.hopLimit))
        case (Int32(IPPROTO_IPV6), IPV6_TCLASS) where domain == AF_INET6: return int32Bytes(Int32(ipOptions.trafficClass))
        case (Int32(IPPROTO_IPV6), IPV6_V6ONLY) where domain == AF_INET6: return int32Bytes(ipOptions.v6Only ? 1 : 0)
        default: return nil
        }
    }

    /// setsockopt at IPPROTO_IP / IPPROTO_IPV6, with Linux's ranges (-1: the default); nil for
    /// an option not kept here. `bound`: the socket has a local port (IPV6_V6ONLY is fixed then).
    /// Applies what changed to `pcb` (any kind: the fields are in lwIP's common IP_PCB part).
    func setIPOption(level: Int32, name: Int32, value: [UInt8], pcb: UnsafeMutableRawPointer?, bound: Bool) -> Reply? {
        guard level == Int32(IPPROTO_IP) || (level == Int32(IPPROTO_IPV6) && domain == AF_INET6) else { return nil }
        // IPPROTO_IP takes a 1-byte value as well as an int (Linux's do_ip_setsockopt).
        let v: Int32
        if let int = int32Value(value) { v = int } else if level == Int32(IPPROTO_IP), let b = value.first { v = Int32(b) } else { return .error(EINVAL) }
        switch (level, name) {
        case (Int32(IPPROTO_IP), IP_TTL):
            guard v == -1 || (1...255).contains(v) else { return .error(EINVAL) }
            ipOptions.ttl = v == -1 ? IPOptions.defaultTTL : UInt8(v)
        case (Int32(IPPROTO_IP), IP_TOS):
            ipOptions.tos = UInt8(truncatingIfNeeded: v)
        case (Int32(IPPROTO_IPV6), IPV6_UNICAST_HOPS):
            guard (-1...255).contains(v) else { return .error(EINVAL) }
            ipOptions.hopLimit = v == -1 ? IPOptions.defaultTTL : UInt8(v)
        case (Int32(IPPROTO_IPV6), IPV6_TCLASS):
            guard (-1...255).contains(v) else { return .error(EINVAL) }
            ipOptions.trafficClass = v == -1 ? 0 : UInt8(v)
        case (Int32(IPPROTO_IPV6), IPV6_V6ONLY):
            guard !bound else { return .error(EINVAL) }
            ipOptions.v6Only = v != 0
            if let pcb { cstack_ip_pcb_set_dual_stack(pcb, ipOptions.v6Only ? 0 : 1) }
            return .ok(value: 0)
        default:
            return nil
        }
        if let pcb { ipOptions.apply(to: pcb, domain: domain) }
        return .ok(value: 0)
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

func int32Value(_ bytes: [UInt8]) -> Int32? {
    guard bytes.count >= 4 else { return nil }
    return bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
}

/// A socket's IP-level options. lwIP has one TTL and one TOS per pcb: an IPv4 socket uses IP_TTL
/// and IP_TOS, an IPv6 one IPV6_UNICAST_HOPS and IPV6_TCLASS (IP_TTL/IP_TOS are kept and reported
/// for it, as Linux keeps them for v4-mapped traffic).
struct IPOptions {
    /// Linux's default TTL and hop limit (net.ipv4.ip_default_ttl); lwIP's own is 255.
    static let defaultTTL: UInt8 = 64
    var ttl = defaultTTL
    var tos: UInt8 = 0
    var hopLimit = defaultTTL
    var trafficClass: UInt8 = 0
    var v6Only = false

    func apply(to pcb: UnsafeMutableRawPointer, domain: Int32) {
        cstack_ip_pcb_set_ttl(pcb, domain == AF_INET6 ? hopLimit : ttl)
        cstack_ip_pcb_set_tos(pcb, domain == AF_INET6 ? trafficClass : tos)
    }
}
