import CLwIP
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// How to attach the stack to one TAP device.
public struct TAPConfiguration: Sendable, Equatable {
    public var name: String
    /// At most one IPv4 address; up to five IPv6 addresses (plus the link-local one lwIP derives from the MAC).
    public var addresses: [InterfaceAddress] = []
    /// IPv4 default gateway (on this interface's network).
    public var gateway: SocketAddress?
    /// Default: a locally administered address derived from the device name.
    public var mac: [UInt8]?
    public var mtu: Int = 1500

    public init(name: String) { self.name = name }

    /// The MAC in use: the configured one, or 02:xx:xx:xx:xx:xx from a hash of the name.
    public var effectiveMAC: [UInt8] {
        if let mac { return mac }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return [0x02] + (0..<5).map { UInt8(truncatingIfNeeded: h >> (8 * $0)) }
    }

    public func validate() throws(ServerError) {
        guard !name.isEmpty, name.utf8.count < 16 else { throw ServerError("--tap name must have 1 to 15 characters") }
        guard addresses.filter({ $0.address.family == .inet }).count <= 1 else { throw ServerError("--tap \(name): at most one IPv4 --address (lwIP keeps one per interface)") }
        guard addresses.filter({ $0.address.family == .inet6 }).count <= 5 else { throw ServerError("--tap \(name): at most five IPv6 addresses") }
        if let gateway, gateway.family != .inet { throw ServerError("--tap \(name): --gateway must be IPv4") }
        guard (576...9000).contains(mtu) else { throw ServerError("--tap \(name): --mtu must be between 576 and 9000") }
        guard effectiveMAC.count == 6, effectiveMAC[0] & 1 == 0 else { throw ServerError("--tap \(name): --mac must be a unicast address") }
    }
}

/// lwIP on a TAP device: Ethernet frames in and out of the kernel through /dev/net/tun, with ARP
/// and IPv6 neighbour discovery done by lwIP. The device's fd is non-blocking and watched by the
/// server's event loop; frames are handed to lwIP under the core lock in batches.
///
/// Ownership: the interface owns the TAP fd for the life of the process (lwIP keeps the netif).
final class TAPInterface {
    let configuration: TAPConfiguration
    let deviceName: String
    let fd: Int32
    let netif: UnsafeMutablePointer<netif>

    init(_ configuration: TAPConfiguration, captureID: Int32) throws(ServerError) {
        self.configuration = configuration
        var actual = [CChar](repeating: 0, count: 32)
        let fd = cstack_tap_open(configuration.name, &actual, actual.count)
        guard fd >= 0 else {
            let err = Errno.current
            throw ServerError("cannot open TAP device \(configuration.name): \(err)" +
                (err.rawValue == EPERM ? " (needs CAP_NET_ADMIN, or a device made for this user with `ip tuntap add dev \(configuration.name) mode tap user \(getuid())`)" : ""))
        }
        self.fd = fd
        deviceName = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let v4 = configuration.addresses.first { $0.address.family == .inet }
        let mac = configuration.effectiveMAC
        let added: UnsafeMutablePointer<netif>? = Stack.withLock {
            let n = mac.withUnsafeBufferPointer { m -> UnsafeMutablePointer<netif>? in
                withOptionalBytes(v4?.address.bytes) { ip in
                    withOptionalBytes(v4?.netmaskBytes) { mask in
                        withOptionalBytes(configuration.gateway?.bytes) { gw in
                            cstack_tap_add(fd, m.baseAddress, UInt16(configuration.mtu), ip, mask, gw, captureID)
                        }
                    }
                }
            }
            guard let n else { return nil }
            for a in configuration.addresses where a.address.family == .inet6 {
                _ = a.address.bytes.withUnsafeBufferPointer { cstack_netif_add_ip6(n, $0.baseAddress) }
            }
            cstack_set_default_netif(n)
            return n
        }
        guard let added else {
            close(fd)
            throw ServerError("lwIP refused the TAP interface \(configuration.name)")
        }
        netif = added
    }

    /// Hands the frames waiting on the device to lwIP (call under the core lock).
    func receive() {
        _ = cstack_tap_input(netif, 256)
    }
}

private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafePointer<UInt8>?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBufferPointer { body($0.baseAddress) }
}

/// A pcapng capture of every packet the stack sends and receives: Ethernet frames on TAP
/// interfaces, and packets on the loopback path behind a synthetic Ethernet header, so the file
/// has one link type and tcpdump reads it (libpcap refuses mixed link types).
enum PacketCapture {
    static func open(_ path: String) throws(ServerError) {
        guard cstack_capture_open(path) == 0 else { throw ServerError("cannot write capture file \(path): \(Errno.current)") }
        cstack_loopback_set_capture(cstack_capture_interface(1)) // LINKTYPE_ETHERNET
    }

    /// A new interface in the file for Ethernet frames (LINKTYPE_ETHERNET).
    static func ethernetInterface() -> Int32 { cstack_capture_interface(1) }

    static func close() { cstack_capture_close() }
}
