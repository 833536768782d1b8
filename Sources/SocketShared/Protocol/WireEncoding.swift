/// A socket option's int value as the bytes getsockopt/setsockopt carry (host order).
public func int32Bytes(_ v: Int32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }

/// Little-endian writer for control messages.
struct WireWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    /// UTF-8 text: a u16 byte count, then the bytes (clamped to what fits a control message).
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(ControlMessage.maximumStringLength))
        u16(UInt16(utf8.count))
        raw(utf8)
    }

    mutating func address(_ a: SocketAddress) {
        u16(a.family.rawValue)
        u16(a.port)
        u32(a.flowInfo)
        u32(a.scopeID)
        raw(a.bytes)
    }
}

/// Bounds-checked little-endian reader; every read either succeeds or throws, never traps.
struct WireReader {
    let bytes: ArraySlice<UInt8>
    var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    var remaining: Int { bytes.endIndex - position }

    mutating func take(_ n: Int) throws(ProtocolError) -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else { throw .truncatedBody }
        defer { position += n }
        return bytes[position..<(position + n)]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(ProtocolError) -> T {
        let slice = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, b) in slice.enumerated() { v |= T(truncatingIfNeeded: b) << (8 * i) }
        return v
    }

    mutating func u8() throws(ProtocolError) -> UInt8 { try integer(UInt8.self) }
    mutating func u16() throws(ProtocolError) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(ProtocolError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(ProtocolError) -> UInt64 { try integer(UInt64.self) }
    mutating func i32() throws(ProtocolError) -> Int32 { try integer(Int32.self) }
    mutating func i64() throws(ProtocolError) -> Int64 { try integer(Int64.self) }

    mutating func string() throws(ProtocolError) -> String {
        let count = Int(try u16())
        guard count <= ControlMessage.maximumStringLength else { throw .invalidValue("text length \(count)") }
        let bytes = try take(count)
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .invalidValue("text that is not UTF-8") }
        return text
    }

    mutating func address() throws(ProtocolError) -> SocketAddress {
        let rawFamily = try u16()
        guard let family = SocketAddress.Family(rawValue: rawFamily) else { throw .invalidValue("address family \(rawFamily)") }
        let port = try u16()
        let flow = try u32()
        let scope = try u32()
        let count = family == .inet ? 4 : family == .inet6 ? 16 : 0
        return SocketAddress(family: family, port: port, bytes: Array(try take(count)), flowInfo: flow, scopeID: scope)
    }

    func finish() throws(ProtocolError) {
        guard remaining == 0 else { throw .trailingBytes(remaining) }
    }
}
