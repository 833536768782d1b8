import CLwIP
import CStack
import SocketShared

/// The lwIP stack: started once per process with `tcpip_init`, which runs lwIP's tcpip thread
/// (timers and queued input). Every raw-API call from our threads is made under the core lock,
/// `Stack.withLock`; lwIP callbacks then run on whichever thread holds the lock.
///
/// Loopback traffic: every packet to one of the stack's own addresses is queued by our replacement
/// of `netif_loop_output` (CStack/stack.c) and delivered on the server's stack thread at the end of
/// every batch, under the lock — never from inside a callback, never by waking lwIP's thread.
enum Stack {
    nonisolated(unsafe) private static var started = false
    nonisolated(unsafe) private static var depth = 0

    /// Starts lwIP. Idempotent; not thread-safe (call from the thread that builds the server).
    static func start() {
        guard !started else { return }
        started = true
        cstack_start()
    }

    /// Runs `body` under the core lock. Re-entrant calls from lwIP callbacks must not use this.
    @inline(__always)
    static func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        cstack_lock()
        depth += 1
        if depth == 1 { cstack_batch_begin() }
        defer {
            if depth == 1 {
                cstack_loopback_poll_all()
                cstack_batch_end()
            }
            depth -= 1
            cstack_unlock()
        }
        return try body()
    }

    /// Adds a loopback interface for `addresses` (one IPv4 address per interface; IPv6 addresses
    /// go on the first interface, up to lwIP's six per interface).
    /// - Throws: `ServerError` when lwIP refuses an interface or runs out of IPv6 slots.
    static func addLoopback(_ addresses: [InterfaceAddress], mtu: UInt16) throws(ServerError) {
        try withLock { () throws(ServerError) in
            let v4 = addresses.filter { $0.address.family == .inet }
            let v6 = addresses.filter { $0.address.family == .inet6 }
            var first: UnsafeMutablePointer<netif>?
            for a in v4 {
                let mask = a.netmaskBytes
                let n = a.address.bytes.withUnsafeBufferPointer { ip in
                    mask.withUnsafeBufferPointer { m in cstack_loopback_add(ip.baseAddress, m.baseAddress, mtu) }
                }
                guard let n else { throw ServerError("cannot add loopback interface for \(a)") }
                if first == nil { first = n }
            }
            if first == nil, !v6.isEmpty {
                first = cstack_loopback_add(nil, nil, mtu)
                if first == nil { throw ServerError("cannot add loopback interface for IPv6") }
            }
            for a in v6 {
                let index = a.address.bytes.withUnsafeBufferPointer { cstack_netif_add_ip6(first, $0.baseAddress) }
                if index < 0 { throw ServerError("too many IPv6 addresses on the loopback interface (lwIP allows 6): \(a)") }
            }
        }
    }
}

/// An interface address with its prefix length, e.g. 127.0.0.1/8 or ::1/128.
public struct InterfaceAddress: Sendable, Equatable, CustomStringConvertible {
    public var address: SocketAddress
    public var prefixLength: Int

    /// Parses "ADDRESS/PREFIX" (the prefix defaults to 32 or 128).
    public init?(cidr: String) {
        let parts = cidr.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let a = SocketAddress(host: String(first), port: 0) else { return nil }
        let maxPrefix = a.family == .inet ? 32 : 128
        let prefix = parts.count == 2 ? Int(parts[1]) : maxPrefix
        guard let prefix, prefix >= 0, prefix <= maxPrefix else { return nil }
        address = a
        prefixLength = prefix
    }

    public var netmaskBytes: [UInt8] {
        let total = address.family == .inet ? 4 : 16
        return (0..<total).map { i in
            let bits = max(0, min(8, prefixLength - i * 8))
            return bits == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    public var description: String { "\(address.host)/\(prefixLength)" }
}

/// An error that stops the server from starting or a request from being served, with its reason.
public struct ServerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
