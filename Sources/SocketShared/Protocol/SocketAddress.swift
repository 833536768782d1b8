import CShims
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 socket address, as carried in control messages and datagram items.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    public enum Family: UInt16, Sendable {
        case unspecified = 0 // AF_UNSPEC: "no address" (e.g. connect to disconnect)
        case inet = 2        // AF_INET
        case inet6 = 10      // AF_INET6
    }

    public var family: Family
    /// Host byte order.
    public var port: UInt16
    /// 4 bytes (IPv4) or 16 bytes (IPv6), network order; empty for `.unspecified`.
    public var bytes: [UInt8]
    public var flowInfo: UInt32
    public var scopeID: UInt32

    public init(family: Family, port: UInt16, bytes: [UInt8], flowInfo: UInt32 = 0, scopeID: UInt32 = 0) {
        self.family = family
        self.port = port
        self.bytes = bytes
        self.flowInfo = flowInfo
        self.scopeID = scopeID
    }

    public static let unspecified = SocketAddress(family: .unspecified, port: 0, bytes: [])

    /// Parses a numeric IPv4 or IPv6 address ("127.0.0.1", "::1", "fe80::1%2").
    /// - Returns: nil when `host` is not a numeric address.
    public init?(host: String, port: UInt16) {
        var hostPart = host
        var scope: UInt32 = 0
        if let percent = host.firstIndex(of: "%") {
            hostPart = String(host[..<percent])
            let zone = String(host[host.index(after: percent)...])
            if let n = UInt32(zone) { scope = n } else { scope = if_nametoindex(zone); if scope == 0 { return nil } }
        }
        if hostPart.hasPrefix("[") && hostPart.hasSuffix("]") { hostPart = String(hostPart.dropFirst().dropLast()) }
        var v4 = in_addr()
        if inet_pton(AF_INET, hostPart, &v4) == 1 {
            self.init(family: .inet, port: port, bytes: withUnsafeBytes(of: v4) { Array($0) })
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, hostPart, &v6) == 1 {
            self.init(family: .inet6, port: port, bytes: withUnsafeBytes(of: v6) { Array($0) }, scopeID: scope)
            return
        }
        return nil
    }

    public static func ipv4Any(port: UInt16 = 0) -> SocketAddress { SocketAddress(family: .inet, port: port, bytes: [0, 0, 0, 0]) }
    public static func ipv6Any(port: UInt16 = 0) -> SocketAddress { SocketAddress(family: .inet6, port: port, bytes: [UInt8](repeating: 0, count: 16)) }

    /// True for a well-formed address: the byte count matches the family.
    public var isValid: Bool {
        switch family {
        case .unspecified: return bytes.isEmpty
        case .inet: return bytes.count == 4
        case .inet6: return bytes.count == 16
        }
    }

    public var isWildcard: Bool { bytes.allSatisfy { $0 == 0 } }

    /// An IPv4 address in IPv6 form (::ffff:a.b.c.d), as dual-stack IPv6 sockets see IPv4 peers.
    public var isV4Mapped: Bool {
        // (Asked for every datagram a server socket sends: plain indexing, no slices.)
        guard family == .inet6, bytes.count == 16, bytes[10] == 0xff, bytes[11] == 0xff else { return false }
        for i in 0..<10 where bytes[i] != 0 { return false }
        return true
    }

    /// The IPv4 address inside a v4-mapped one (same port).
    public var unmapped: SocketAddress { SocketAddress(family: .inet, port: port, bytes: Array(bytes[12...])) }

    /// An IPv4 address as v4-mapped IPv6 (::ffff:a.b.c.d, same port).
    public var v4Mapped: SocketAddress {
        SocketAddress(family: .inet6, port: port, bytes: [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + bytes)
    }

    /// The numeric host, without port ("127.0.0.1", "::1").
    public var host: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch family {
        case .unspecified: return ""
        case .inet, .inet6:
            let af = family == .inet ? AF_INET : AF_INET6
            let ok = bytes.withUnsafeBytes { inet_ntop(af, $0.baseAddress, &text, socklen_t(text.count)) } != nil
            return ok ? String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
    }

    public var description: String {
        switch family {
        case .unspecified: return "unspecified"
        case .inet: return "\(host):\(port)"
        case .inet6: return "[\(host)\(scopeID != 0 ? "%\(scopeID)" : "")]:\(port)"
        }
    }

    // MARK: shared-memory form

    public init?(_ raw: cshims_address) {
        guard let family = Family(rawValue: raw.family) else { return nil }
        let all = withUnsafeBytes(of: raw.addr) { Array($0) }
        let count = family == .inet ? 4 : family == .inet6 ? 16 : 0
        self.init(family: family, port: raw.port, bytes: Array(all[..<count]), flowInfo: raw.flowinfo, scopeID: raw.scope_id)
    }

    public var raw: cshims_address {
        var raw = cshims_address()
        raw.family = family.rawValue
        raw.port = port
        raw.flowinfo = flowInfo
        raw.scope_id = scopeID
        withUnsafeMutableBytes(of: &raw.addr) { dst in
            for (i, b) in bytes.prefix(16).enumerated() { dst[i] = b }
        }
        return raw
    }

    // MARK: BSD sockaddr form

    /// Reads a `sockaddr_in`, `sockaddr_in6` or `AF_UNSPEC` sockaddr of `length` bytes.
    /// - Returns: nil for another family or a too-short length.
    public init?(sockaddr: UnsafeRawPointer, length: Int) {
        guard length >= MemoryLayout<sa_family_t>.size else { return nil }
        let family = Int32(sockaddr.loadUnaligned(as: sa_family_t.self))
        switch family {
        case AF_UNSPEC:
            self = .unspecified
        case AF_INET:
            guard length >= MemoryLayout<sockaddr_in>.size else { return nil }
            let sin = sockaddr.loadUnaligned(as: sockaddr_in.self)
            self.init(family: .inet, port: UInt16(bigEndian: sin.sin_port), bytes: withUnsafeBytes(of: sin.sin_addr) { Array($0) })
        case AF_INET6:
            guard length >= MemoryLayout<sockaddr_in6>.size else { return nil }
            let sin6 = sockaddr.loadUnaligned(as: sockaddr_in6.self)
            self.init(family: .inet6, port: UInt16(bigEndian: sin6.sin6_port), bytes: withUnsafeBytes(of: sin6.sin6_addr) { Array($0) },
                      flowInfo: UInt32(bigEndian: sin6.sin6_flowinfo), scopeID: sin6.sin6_scope_id)
        default:
            return nil
        }
    }

    /// Calls `body` with this address as a BSD sockaddr and its length.
    public func withSockAddr<R>(_ body: (UnsafeRawPointer, Int) throws -> R) rethrows -> R {
        var storage = sockaddr_storage()
        let length: Int
        switch family {
        case .unspecified:
            storage.ss_family = sa_family_t(AF_UNSPEC)
            length = MemoryLayout<sa_family_t>.size
        case .inet:
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: bytes) }
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: sin, as: sockaddr_in.self) }
            length = MemoryLayout<sockaddr_in>.size
        case .inet6:
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_flowinfo = flowInfo.bigEndian
            sin6.sin6_scope_id = scopeID
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: bytes) }
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: sin6, as: sockaddr_in6.self) }
            length = MemoryLayout<sockaddr_in6>.size
        }
        return try withUnsafeBytes(of: &storage) { try body($0.baseAddress!, length) }
    }
}
