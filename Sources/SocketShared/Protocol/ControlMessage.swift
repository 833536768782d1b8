/// The control protocol between a client and the socket server.
///
/// Every message is one `SOCK_SEQPACKET` packet: a 16-byte header followed by a typed body.
///
///     offset size field
///          0    4 magic      0x544B4353 ("SCKT" little-endian)
///          4    2 version    ControlMessage.version
///          6    2 type       MessageType
///          8    4 length     body length in bytes (header excluded)
///         12    4 request id chosen by the client, echoed in the reply
///
/// All integers are little-endian. Socket addresses are inline: family u16, port u16 (host order),
/// flowinfo u32, scope u32, then 0, 4 or 16 address bytes by family. Every request gets exactly one
/// reply with the same request id; a failed request gets `.error(errno)`. Replies that create a
/// socket carry two descriptors (the app's eventfd, then the stack's), HELLO's reply one (the
/// segment's memfd), all by `SCM_RIGHTS`. Messages are bounded by `maximumSize`.
public struct ControlMessage: Equatable, Sendable {
    public static let magic: UInt32 = 0x544B_4353
    /// 2: handles are unique across the server (a socket keeps its handle in every session that
    /// holds it); a forked child attaches its parent's sockets (`forked`, `attachInherited`); a
    /// program adopts the sockets its old image kept across exec (`execing`, `adopt`); socket-stat's
    /// reports (`admin`, `report`).
    public static let version: UInt16 = 2
    public static let headerSize = 16
    /// No valid message is longer; receivers read with a buffer one byte larger to detect oversize.
    public static let maximumSize = 512
    /// Upper bound of an option value carried by getsockopt/setsockopt.
    public static let maximumOptionLength = 256
    /// Upper bound of a text (a capture's filter) in bytes.
    public static let maximumStringLength = 400
    /// Upper bound of the handles one `execing` message carries.
    public static let maximumExecHandles = 100

    public var requestID: UInt32
    public var payload: Payload

    public enum Payload: Equatable, Sendable {
        case request(Request)
        case reply(Reply)
    }

    public init(requestID: UInt32, _ request: Request) {
        self.requestID = requestID
        self.payload = .request(request)
    }

    public init(requestID: UInt32, _ reply: Reply) {
        self.requestID = requestID
        self.payload = .reply(reply)
    }

    /// Descriptors that travel with this message.
    public var descriptorCount: Int {
        switch payload {
        case .request: return 0
        case .reply(let reply): return reply.descriptorCount
        }
    }
}

/// Datagram payload transport (see DESIGN.md).
public enum DatagramTransport: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Let the server choose: process-vm where the kernel permits it, else shared memory.
    case auto = 0
    /// Items point at lwIP pbufs in the server; the client copies with process_vm_readv/writev.
    case processVM = 1
    /// Items point at payload slots in the client's segment; both sides memcpy.
    case sharedMemory = 2

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .processVM: return "process-vm"
        case .sharedMemory: return "shared-memory"
        }
    }

    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = match
    }
}

/// The reports of the administrative query (socket-stat).
public enum AdminReport: UInt8, Sendable, CaseIterable {
    case sockets = 1, clients, counters, interfaces
    /// The counters and per-client gauges in Prometheus' text exposition format (not JSON).
    case metrics

    public var name: String {
        switch self {
        case .sockets: return "sockets"
        case .clients: return "clients"
        case .counters: return "counters"
        case .interfaces: return "interfaces"
        case .metrics: return "metrics"
        }
    }
}

/// What kind of channel a socket has in the segment.
public enum ChannelKind: UInt8, Sendable {
    case stream = 1    // TCP connection: two byte rings
    case datagram = 2  // UDP: two bipartite rings
    case listener = 3  // TCP listener: header only (readiness)
}

/// A socket created by the server: where its channel lives and how it is shaped.
public struct ChannelInfo: Equatable, Sendable {
    public var handle: UInt32
    public var kind: ChannelKind
    public var transport: DatagramTransport
    public var offset: UInt64
    /// Stream: ring bytes each way. Datagram: items each way.
    public var receiveSize: UInt32
    public var sendSize: UInt32
    /// Datagram: bytes per payload buffer.
    public var slotSize: UInt32

    public init(handle: UInt32, kind: ChannelKind, transport: DatagramTransport = .auto, offset: UInt64,
                receiveSize: UInt32, sendSize: UInt32, slotSize: UInt32) {
        self.handle = handle
        self.kind = kind
        self.transport = transport
        self.offset = offset
        self.receiveSize = receiveSize
        self.sendSize = sendSize
        self.slotSize = slotSize
    }
}

/// What the server tells a client at HELLO.
public struct HelloInfo: Equatable, Sendable {
    public var version: UInt16
    public var serverPID: Int32
    public var transport: DatagramTransport
    public var segmentSize: UInt64
    public var maxSockets: UInt32
    /// Where the segment is mapped in the server: a client using process-vm reads the segment's
    /// magic there to prove the kernel lets it, before relying on it.
    public var probeAddress: UInt64

    public init(version: UInt16, serverPID: Int32, transport: DatagramTransport, segmentSize: UInt64, maxSockets: UInt32,
                probeAddress: UInt64 = 0) {
        self.version = version
        self.serverPID = serverPID
        self.transport = transport
        self.segmentSize = segmentSize
        self.maxSockets = maxSockets
        self.probeAddress = probeAddress
    }
}

public enum Request: Equatable, Sendable {
    case hello(version: UInt16, transport: DatagramTransport)
    case socket(domain: Int32, type: Int32, protocol: Int32)
    case bind(handle: UInt32, address: SocketAddress)
    case listen(handle: UInt32, backlog: Int32)
    case accept(handle: UInt32, flags: Int32)
    /// `.unspecified` disconnects a datagram socket.
    case connect(handle: UInt32, address: SocketAddress)
    case shutdown(handle: UInt32, how: Int32)
    case close(handle: UInt32)
    case getsockname(handle: UInt32)
    case getpeername(handle: UInt32)
    case getsockopt(handle: UInt32, level: Int32, name: Int32, maxLength: UInt32)
    case setsockopt(handle: UInt32, level: Int32, name: Int32, value: [UInt8])
    case ioctl(handle: UInt32, request: UInt32, argument: UInt64)
    /// The client forked `child` (its pid): every socket it holds now is held by the child too,
    /// until the child closes it, attaches it (`attachInherited`) or exits.
    case forked(child: Int32)
    /// A forked child's first request on its own session: take over, under their handles, the
    /// sockets its parent held when it forked. The reply's value is how many.
    case attachInherited
    /// The client is about to exec: these sockets (descriptors without FD_CLOEXEC) are to be held
    /// for the program it becomes (same pid), which adopts them (`adopt`); the rest close when the
    /// session ends, in an orderly way (FIN after queued data) as the kernel's close-on-exec does.
    /// At most `maximumExecHandles` per message (a client with more sends several).
    case execing(keep: [UInt32])
    /// After exec: take socket `handle`, held for this process since its old image's `execing`.
    case adopt(handle: UInt32)
    /// socket-stat: one report on the whole server (no HELLO needed; the server's own uid or root
    /// only, others get EACCES). Answered by `report`.
    case admin(report: AdminReport)
    /// socket-stat capture: packets on `interface` ("" all) matching `filter` (tcpdump's language,
    /// "" all), `count` of them (0 no limit); live (answered by `stream`) or, with `recorded`, what
    /// the flight recorder holds (answered by `report`). Same rights as `admin`; a filter libpcap
    /// cannot compile gets EINVAL, an unknown interface ENODEV, no recorder EOPNOTSUPP.
    case capture(interface: String, filter: String, count: UInt32, recorded: Bool)

    /// The socket a request is about, if any.
    public var handle: UInt32? {
        switch self {
        case .hello, .socket, .forked, .attachInherited, .execing, .admin, .capture: return nil
        case .bind(let h, _), .listen(let h, _), .accept(let h, _), .connect(let h, _), .shutdown(let h, _),
             .close(let h), .getsockname(let h), .getpeername(let h), .getsockopt(let h, _, _, _),
             .setsockopt(let h, _, _, _), .ioctl(let h, _, _), .adopt(let h):
            return h
        }
    }
}

public enum Reply: Equatable, Sendable {
    /// The request failed with this errno.
    case error(Int32)
    /// The request succeeded; `value` is request-specific (0 when unused, e.g. ioctl's result).
    case ok(value: Int64)
    case hello(HelloInfo)
    case socket(ChannelInfo)
    case accepted(ChannelInfo, peer: SocketAddress)
    case address(SocketAddress)
    case option([UInt8])
    /// `adopt`: the socket's channel (in the segment whose memfd the old image left open for the
    /// new one), its family and type, and whether it listens; its stack eventfd goes with it.
    case adopted(ChannelInfo, domain: Int32, type: Int32, listening: Bool)
    /// `admin`: the report, `length` bytes of UTF-8 JSON in the memfd that comes with it.
    case report(length: UInt64)
    /// `capture`: the live capture's pcapng stream, one block per message on the SOCK_SEQPACKET
    /// socket that comes with it; it ends (EOF) after `count` packets or when the server stops.
    case stream

    public var descriptorCount: Int {
        switch self {
        case .hello: return 1
        case .socket, .accepted: return 2
        case .adopted, .report, .stream: return 1
        default: return 0
        }
    }
}

/// Why a control message was rejected.
public enum ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case tooShort(Int)
    case tooLarge(Int)
    case badMagic(UInt32)
    case unsupportedVersion(UInt16)
    case unknownType(UInt16)
    case lengthMismatch(declared: UInt32, actual: Int)
    case truncatedBody
    case trailingBytes(Int)
    case invalidValue(String)

    public var description: String {
        switch self {
        case .tooShort(let n): return "message of \(n) bytes is shorter than the header"
        case .tooLarge(let n): return "message of \(n) bytes exceeds \(ControlMessage.maximumSize)"
        case .badMagic(let m): return "bad magic 0x\(String(m, radix: 16))"
        case .unsupportedVersion(let v): return "unsupported protocol version \(v)"
        case .unknownType(let t): return "unknown message type 0x\(String(t, radix: 16))"
        case .lengthMismatch(let d, let a): return "header declares \(d) body bytes, message has \(a)"
        case .truncatedBody: return "body ends early"
        case .trailingBytes(let n): return "\(n) unexpected bytes after the body"
        case .invalidValue(let what): return "invalid \(what)"
        }
    }
}

/// Wire type codes. Replies have the high bit set.
enum MessageType: UInt16 {
    case hello = 0x0001, socket, bind, listen, accept, connect, shutdown, close, getsockname, getpeername,
         getsockopt, setsockopt, ioctl, forked, attachInherited, execing, adopt, admin, capture
    case replyError = 0x8001, replyOK, replyHello, replySocket, replyAccepted, replyAddress, replyOption, replyAdopted,
         replyReport, replyStream
}

extension ControlMessage {
    /// The message as one packet.
    public func encoded() -> [UInt8] {
        var body = WireWriter()
        let type: MessageType
        switch payload {
        case .request(let request):
            switch request {
            case .hello(let version, let transport):
                type = .hello
                body.u16(version)
                body.u8(transport.rawValue)
            case .socket(let domain, let kind, let proto):
                type = .socket
                body.i32(domain); body.i32(kind); body.i32(proto)
            case .bind(let h, let a):
                type = .bind
                body.u32(h); body.address(a)
            case .listen(let h, let backlog):
                type = .listen
                body.u32(h); body.i32(backlog)
            case .accept(let h, let flags):
                type = .accept
                body.u32(h); body.i32(flags)
            case .connect(let h, let a):
                type = .connect
                body.u32(h); body.address(a)
            case .shutdown(let h, let how):
                type = .shutdown
                body.u32(h); body.i32(how)
            case .close(let h):
                type = .close
                body.u32(h)
            case .getsockname(let h):
                type = .getsockname
                body.u32(h)
            case .getpeername(let h):
                type = .getpeername
                body.u32(h)
            case .getsockopt(let h, let level, let name, let maxLength):
                type = .getsockopt
                body.u32(h); body.i32(level); body.i32(name); body.u32(maxLength)
            case .setsockopt(let h, let level, let name, let value):
                type = .setsockopt
                body.u32(h); body.i32(level); body.i32(name); body.u16(UInt16(clamping: value.count)); body.raw(value)
            case .ioctl(let h, let request, let argument):
                type = .ioctl
                body.u32(h); body.u32(request); body.u64(argument)
            case .forked(let child):
                type = .forked
                body.i32(child)
            case .attachInherited:
                type = .attachInherited
            case .execing(let keep):
                type = .execing
                body.u16(UInt16(clamping: keep.count))
                for h in keep.prefix(Self.maximumExecHandles) { body.u32(h) }
            case .adopt(let h):
                type = .adopt
                body.u32(h)
            case .admin(let report):
                type = .admin
                body.u8(report.rawValue)
            case .capture(let interface, let filter, let count, let recorded):
                type = .capture
                body.u32(count); body.u8(recorded ? 1 : 0)
                body.string(interface); body.string(filter)
            }
        case .reply(let reply):
            switch reply {
            case .error(let err):
                type = .replyError
                body.i32(err)
            case .ok(let value):
                type = .replyOK
                body.i64(value)
            case .hello(let info):
                type = .replyHello
                body.u16(info.version); body.i32(info.serverPID); body.u8(info.transport.rawValue)
                body.u64(info.segmentSize); body.u32(info.maxSockets); body.u64(info.probeAddress)
            case .socket(let info):
                type = .replySocket
                Self.encode(info, into: &body)
            case .accepted(let info, let peer):
                type = .replyAccepted
                Self.encode(info, into: &body)
                body.address(peer)
            case .address(let a):
                type = .replyAddress
                body.address(a)
            case .option(let value):
                type = .replyOption
                body.u16(UInt16(clamping: value.count)); body.raw(value)
            case .adopted(let info, let domain, let kind, let listening):
                type = .replyAdopted
                Self.encode(info, into: &body)
                body.i32(domain); body.i32(kind); body.u8(listening ? 1 : 0)
            case .report(let length):
                type = .replyReport
                body.u64(length)
            case .stream:
                type = .replyStream
            }
        }
        var out = WireWriter(capacity: Self.headerSize + body.bytes.count)
        out.u32(Self.magic)
        out.u16(Self.version)
        out.u16(type.rawValue)
        out.u32(UInt32(body.bytes.count))
        out.u32(requestID)
        out.raw(body.bytes)
        return out.bytes
    }

    private static func encode(_ info: ChannelInfo, into body: inout WireWriter) {
        body.u32(info.handle); body.u8(info.kind.rawValue); body.u8(info.transport.rawValue)
        body.u64(info.offset); body.u32(info.receiveSize); body.u32(info.sendSize); body.u32(info.slotSize)
    }

    private static func decodeChannel(_ r: inout WireReader) throws(ProtocolError) -> ChannelInfo {
        let handle = try r.u32()
        let rawKind = try r.u8()
        guard let kind = ChannelKind(rawValue: rawKind) else { throw .invalidValue("channel kind \(rawKind)") }
        let transport = try decodeTransport(&r)
        return ChannelInfo(handle: handle, kind: kind, transport: transport, offset: try r.u64(),
                           receiveSize: try r.u32(), sendSize: try r.u32(), slotSize: try r.u32())
    }

    private static func decodeTransport(_ r: inout WireReader) throws(ProtocolError) -> DatagramTransport {
        let raw = try r.u8()
        guard let t = DatagramTransport(rawValue: raw) else { throw .invalidValue("datagram transport \(raw)") }
        return t
    }

    private static func decodeValue(_ r: inout WireReader) throws(ProtocolError) -> [UInt8] {
        let count = Int(try r.u16())
        guard count <= maximumOptionLength else { throw .invalidValue("option length \(count)") }
        return Array(try r.take(count))
    }

    /// Decodes one packet.
    /// - Throws: `ProtocolError` for anything malformed; never traps, whatever the input.
    public static func decode(_ packet: [UInt8]) throws(ProtocolError) -> ControlMessage {
        guard packet.count >= headerSize else { throw .tooShort(packet.count) }
        guard packet.count <= maximumSize else { throw .tooLarge(packet.count) }
        var header = WireReader(packet[0..<headerSize])
        let magic = try header.u32()
        guard magic == Self.magic else { throw .badMagic(magic) }
        let version = try header.u16()
        guard version == Self.version else { throw .unsupportedVersion(version) }
        let rawType = try header.u16()
        guard let type = MessageType(rawValue: rawType) else { throw .unknownType(rawType) }
        let length = try header.u32()
        let requestID = try header.u32()
        guard Int(length) == packet.count - headerSize else {
            throw .lengthMismatch(declared: length, actual: packet.count - headerSize)
        }
        var r = WireReader(packet[headerSize...])
        let payload: Payload
        switch type {
        case .hello:
            payload = .request(.hello(version: try r.u16(), transport: try decodeTransport(&r)))
        case .socket:
            payload = .request(.socket(domain: try r.i32(), type: try r.i32(), protocol: try r.i32()))
        case .bind:
            payload = .request(.bind(handle: try r.u32(), address: try r.address()))
        case .listen:
            payload = .request(.listen(handle: try r.u32(), backlog: try r.i32()))
        case .accept:
            payload = .request(.accept(handle: try r.u32(), flags: try r.i32()))
        case .connect:
            payload = .request(.connect(handle: try r.u32(), address: try r.address()))
        case .shutdown:
            payload = .request(.shutdown(handle: try r.u32(), how: try r.i32()))
        case .close:
            payload = .request(.close(handle: try r.u32()))
        case .getsockname:
            payload = .request(.getsockname(handle: try r.u32()))
        case .getpeername:
            payload = .request(.getpeername(handle: try r.u32()))
        case .getsockopt:
            let h = try r.u32(), level = try r.i32(), name = try r.i32(), maxLength = try r.u32()
            guard maxLength <= maximumOptionLength else { throw .invalidValue("option length \(maxLength)") }
            payload = .request(.getsockopt(handle: h, level: level, name: name, maxLength: maxLength))
        case .setsockopt:
            let h = try r.u32(), level = try r.i32(), name = try r.i32()
            payload = .request(.setsockopt(handle: h, level: level, name: name, value: try decodeValue(&r)))
        case .ioctl:
            payload = .request(.ioctl(handle: try r.u32(), request: try r.u32(), argument: try r.u64()))
        case .forked:
            payload = .request(.forked(child: try r.i32()))
        case .attachInherited:
            payload = .request(.attachInherited)
        case .execing:
            let count = Int(try r.u16())
            guard count <= maximumExecHandles else { throw .invalidValue("handle count \(count)") }
            var keep: [UInt32] = []
            for _ in 0..<count { keep.append(try r.u32()) }
            payload = .request(.execing(keep: keep))
        case .adopt:
            payload = .request(.adopt(handle: try r.u32()))
        case .capture:
            let count = try r.u32(), recorded = try r.u8()
            guard recorded <= 1 else { throw .invalidValue("recorded flag \(recorded)") }
            payload = .request(.capture(interface: try r.string(), filter: try r.string(), count: count, recorded: recorded == 1))
        case .admin:
            let raw = try r.u8()
            guard let report = AdminReport(rawValue: raw) else { throw .invalidValue("report \(raw)") }
            payload = .request(.admin(report: report))
        case .replyError:
            payload = .reply(.error(try r.i32()))
        case .replyOK:
            payload = .reply(.ok(value: try r.i64()))
        case .replyHello:
            payload = .reply(.hello(HelloInfo(version: try r.u16(), serverPID: try r.i32(), transport: try decodeTransport(&r),
                                              segmentSize: try r.u64(), maxSockets: try r.u32(), probeAddress: try r.u64())))
        case .replySocket:
            payload = .reply(.socket(try decodeChannel(&r)))
        case .replyAccepted:
            let info = try decodeChannel(&r)
            payload = .reply(.accepted(info, peer: try r.address()))
        case .replyAddress:
            payload = .reply(.address(try r.address()))
        case .replyOption:
            payload = .reply(.option(try decodeValue(&r)))
        case .replyAdopted:
            let info = try decodeChannel(&r)
            let domain = try r.i32(), kind = try r.i32(), listening = try r.u8()
            guard listening <= 1 else { throw .invalidValue("listening flag \(listening)") }
            payload = .reply(.adopted(info, domain: domain, type: kind, listening: listening == 1))
        case .replyReport:
            payload = .reply(.report(length: try r.u64()))
        case .replyStream:
            payload = .reply(.stream)
        }
        try r.finish()
        return ControlMessage(requestID: requestID, payload: payload)
    }

    private init(requestID: UInt32, payload: Payload) {
        self.requestID = requestID
        self.payload = payload
    }
}
