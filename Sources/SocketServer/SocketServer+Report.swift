import CLwIP
import CShims
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

// The administrative view of the running server (socket-stat): on the control socket, before or
// instead of HELLO, a client of the server's own uid (or root) asks for one report (`admin`); the
// reply carries a memfd holding the report as JSON (any size, one message). Everything is read on
// the stack thread under the core lock, so a report is one consistent moment.

/// One socket as socket-stat shows it.
struct SocketReport {
    var proto: String
    var state: String
    var local: SocketAddress?
    var peer: SocketAddress?
    var receiveQueue = 0
    var sendQueue = 0
    /// What the queues count: bytes (TCP connections), connections (listeners), datagrams (UDP).
    var unit = "bytes"
    var transport = "stream rings"
    var drops: UInt64 = 0
    var sendErrors: UInt64 = 0

    /// Linux's names for TCP states, as `ss` prints them, by lwIP's enum tcp_state.
    static func tcpStateName(_ state: Int32) -> String {
        let names = ["UNCONN", "LISTEN", "SYN-SENT", "SYN-RECV", "ESTAB", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT",
                     "CLOSING", "LAST-ACK", "TIME-WAIT"]
        return state >= 0 && Int(state) < names.count ? names[Int(state)] : "UNKNOWN"
    }
}

/// A small JSON writer: objects and arrays of strings, numbers and booleans.
struct JSONWriter {
    private(set) var text = ""
    private var needsComma: [Bool] = [false]

    private mutating func separate() {
        if needsComma[needsComma.count - 1] { text += "," }
        needsComma[needsComma.count - 1] = true
    }

    private mutating func key(_ k: String?) {
        separate()
        if let k { text += Self.quoted(k) + ":" }
    }

    mutating func open(_ k: String? = nil, array: Bool = false) {
        key(k)
        text += array ? "[" : "{"
        needsComma.append(false)
    }

    mutating func close(array: Bool = false) {
        needsComma.removeLast()
        text += array ? "]" : "}"
    }

    mutating func field(_ k: String?, _ value: String?) {
        key(k)
        text += value.map(Self.quoted) ?? "null"
    }

    mutating func field<T: BinaryInteger>(_ k: String?, _ value: T) {
        key(k)
        text += "\(value)"
    }

    mutating func field(_ k: String?, _ value: Bool) {
        key(k)
        text += value ? "true" : "false"
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

extension SocketServer {
    /// The report `kind` as JSON, in a memfd (the reply's descriptor; the caller closes it once sent).
    func adminReport(_ kind: AdminReport, for session: Session) -> (Reply, [Int32]) {
        // The server's own uid or root: the report shows every client's sockets and command lines.
        guard session.credentials.uid == getuid() || session.credentials.uid == 0 else { return (.error(EACCES), []) }
        if kind == .metrics {
            let text = metricsText()
            let fd = text.withUnsafeBufferPointer { cshims_memfd_text("socket-server-metrics", $0.baseAddress, $0.count) }
            guard fd >= 0 else { return (.error(errno), []) }
            return (.report(length: UInt64(text.count)), [fd])
        }
        var json = JSONWriter()
        json.open()
        json.field("version", 1)
        json.field("report", kind.name)
        json.field("server_pid", getpid())
        json.field("time", time(nil))
        switch kind {
        case .sockets: writeSockets(&json)
        case .clients: writeClients(&json)
        case .counters: writeCounters(&json)
        case .interfaces: writeInterfaces(&json)
        case .metrics: break
        }
        json.close()
        let bytes = Array(json.text.utf8)
        let fd = bytes.withUnsafeBufferPointer { cshims_memfd_text("socket-server-report", $0.baseAddress, $0.count) }
        guard fd >= 0 else { return (.error(errno), []) }
        return (.report(length: UInt64(bytes.count)), [fd])
    }

    /// Every session's own sockets (an attached one appears once, under its owner, with its holders).
    private func writeSockets(_ json: inout JSONWriter) {
        json.open("sockets", array: true)
        for session in sessions.values.sorted(by: { $0.id < $1.id }) {
            for socket in session.ownedSockets {
                let r: SocketReport
                if let tcp = socket as? TCPSocket { r = tcp.report } else if let udp = socket as? UDPSocket { r = udp.report } else { continue }
                json.open()
                json.field("handle", socket.handle)
                json.field("protocol", r.proto)
                json.field("family", socket.domain == AF_INET6 ? "inet6" : "inet")
                json.field("state", r.state)
                json.field("recv_q", r.receiveQueue)
                json.field("send_q", r.sendQueue)
                json.field("queue_unit", r.unit)
                json.field("local", r.local?.description)
                json.field("peer", r.peer?.description)
                json.field("pid", session.credentials.pid)
                json.field("command", session.command)
                json.field("transport", r.transport)
                json.field("closing", session.isClosing(socket))
                if r.proto == "udp" {
                    json.field("receive_drops", r.drops)
                    json.field("send_errors", r.sendErrors)
                }
                // Processes that share it (after fork/exec): attached sessions' pids and forked
                // children that have not attached yet.
                json.open("shared_with", array: true)
                for id in socket.sharedWith { if let other = sessions[id] { json.field(nil, other.credentials.pid) } }
                for pid in socket.pendingChildren { json.field(nil, pid) }
                json.close(array: true)
                json.close()
            }
        }
        json.close(array: true)
    }

    private func writeClients(_ json: inout JSONWriter) {
        json.open("clients", array: true)
        for session in sessions.values.sorted(by: { $0.id < $1.id }) where !(session.askedForReport && session.segment == nil) {
            json.open()
            json.field("pid", session.credentials.pid)
            json.field("uid", session.credentials.uid)
            json.field("command", session.command)
            json.field("command_line", session.commandLine)
            json.field("state", session.isLingering ? "lingering" : session.segment == nil ? "before HELLO" : "connected")
            json.field("sockets", session.socketCount)
            json.field("segment_bytes", session.segment?.size ?? 0)
            json.field("segment_used", session.segmentUsed)
            json.field("datagram_transport", session.transport.description)
            json.field("buffer_memory", session.bufferMemory)
            json.field("connected_since", session.connectedAt)
            json.close()
        }
        json.close(array: true)
    }

    private func writeCounters(_ json: inout JSONWriter) {
        let c = cstack_protocol_counters()!.pointee
        json.open("protocols")
        for (name, i, o) in [("ip", c.ip_in, c.ip_out), ("ip6", c.ip6_in, c.ip6_out), ("icmp", c.icmp_in, c.icmp_out),
                             ("icmp6", c.icmp6_in, c.icmp6_out)] {
            json.open(name)
            json.field("in", i); json.field("out", o)
            json.close()
        }
        json.open("udp")
        json.field("in", c.udp_in); json.field("out", c.udp_out)
        // Datagrams that reached a socket whose receive ring (or buffer budget) was full, and sends
        // that failed after the datagram left the application: live sockets and closed ones.
        var drops = retiredUDP.drops, errors = retiredUDP.sendErrors
        for session in sessions.values {
            for case let udp as UDPSocket in session.ownedSockets {
                drops += udp.receiveDrops
                errors += udp.sendErrors
            }
        }
        json.field("receive_ring_full_drops", drops)
        json.field("send_errors", errors)
        json.close()
        json.open("tcp")
        json.field("in", c.tcp_in); json.field("out", c.tcp_out)
        json.field("syn_in", c.tcp_syn_in); json.field("syn_out", c.tcp_syn_out)
        json.field("fin_in", c.tcp_fin_in); json.field("fin_out", c.tcp_fin_out)
        json.field("rst_in", c.tcp_rst_in); json.field("rst_out", c.tcp_rst_out)
        json.field("accept_queue_refusals", tcpRefusals)
        json.close()
        for (name, i, o) in [("arp", c.arp_in, c.arp_out), ("other", c.other_in, c.other_out)] {
            json.open(name)
            json.field("in", i); json.field("out", o)
            json.close()
        }
        json.close()
        json.open("interfaces", array: true)
        forEachInterface { info, name, kind in
            let i = cstack_interface_counters(info.num)!.pointee
            json.open()
            json.field("name", name)
            json.field("kind", kind)
            json.field("rx_packets", i.rx_packets); json.field("rx_bytes", i.rx_bytes); json.field("rx_drops", i.rx_drops)
            json.field("tx_packets", i.tx_packets); json.field("tx_bytes", i.tx_bytes); json.field("tx_drops", i.tx_drops)
            json.close()
        }
        json.close(array: true)
    }

    private func writeInterfaces(_ json: inout JSONWriter) {
        json.open("interfaces", array: true)
        forEachInterface { info, name, kind in
            var info = info
            json.open()
            json.field("name", name)
            json.field("kind", kind)
            json.field("lwip_name", String(decoding: withUnsafeBytes(of: info.name) { Array($0) }, as: UTF8.self) + "\(info.num)")
            json.field("mtu", info.mtu)
            let mac = withUnsafeBytes(of: info.hwaddr) { Array($0.prefix(Int(info.hwaddr_len))) }
            json.field("mac", mac.isEmpty ? nil : mac.map { String(format2: $0) }.joined(separator: ":"))
            json.field("up", info.up != 0)
            json.field("default", info.is_default != 0)
            json.open("addresses", array: true)
            let ip4 = withUnsafeBytes(of: info.ip4) { Array($0) }
            if ip4 != [0, 0, 0, 0] {
                let mask = withUnsafeBytes(of: info.mask4) { Array($0) }
                let prefix = mask.reduce(0) { $0 + $1.nonzeroBitCount }
                json.field(nil, SocketAddress(family: .inet, port: 0, bytes: ip4).host + "/\(prefix)")
            }
            withUnsafeBytes(of: &info.ip6) { raw in
                for k in 0..<Int(info.ip6_count) {
                    json.field(nil, SocketAddress(family: .inet6, port: 0, bytes: Array(raw[(k * 16)..<(k * 16 + 16)])).host)
                }
            }
            json.close(array: true)
            let gw = withUnsafeBytes(of: info.gw4) { Array($0) }
            json.field("gateway", gw == [0, 0, 0, 0] ? nil : SocketAddress(family: .inet, port: 0, bytes: gw).host)
            json.close()
        }
        json.close(array: true)
    }

    /// lwIP's interfaces with the name and kind the server knows them by (TAP devices by their
    /// kernel name; loopback interfaces as lo0, lo1...).
    func forEachInterface(_ body: (cstack_netif_info, String, String) -> Void) {
        var index: Int32 = 0
        var loopbacks = 0
        var info = cstack_netif_info()
        while cstack_netif_info(index, &info) != 0 {
            index += 1
            if let tap = taps.first(where: { $0.netif.pointee.num == info.num }) {
                body(info, tap.deviceName, "tap")
            } else {
                body(info, "lo\(loopbacks)", "loopback")
                loopbacks += 1
            }
        }
    }
}

private extension String {
    /// Two lower-case hex digits.
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }
}

// MARK: captures

extension SocketServer {
    /// `capture`: a live capture streamed on a SOCK_SEQPACKET socket (the reply's descriptor), or,
    /// with `recorded`, the flight recorder's packets in a memfd.
    func capture(interface: String, filter: String, count: UInt32, recorded: Bool, for session: Session) -> (Reply, [Int32]) {
        guard session.credentials.uid == getuid() || session.credentials.uid == 0 else { return (.error(EACCES), []) }
        var netifNumber: Int32 = -1
        if !interface.isEmpty {
            forEachInterface { info, name, _ in if name == interface { netifNumber = Int32(info.num) } }
            guard netifNumber >= 0 else { return (.error(ENODEV), []) }
        }
        var message = [CChar](repeating: 0, count: 512)
        if recorded {
            guard configuration.flightRecorderBytes > 0 else { return (.error(EOPNOTSUPP), []) }
            let fd = cshims_memfd_text("socket-server-recording", nil, 0)
            guard fd >= 0 else { return (.error(errno), []) }
            var packets: UInt64 = 0
            guard cstack_recorder_dump(fd, netifNumber, filter, &packets, &message, message.count) == 0 else {
                let err = errno
                close(fd)
                logger.info("socket-stat: recording not written: \(Self.text(message))")
                return (.error(err == EINVAL ? EINVAL : EIO), [])
            }
            let length = lseek(fd, 0, SEEK_END)
            lseek(fd, 0, SEEK_SET)
            logger.info("socket-stat: \(packets) recorded packets written (filter \"\(filter)\")")
            return (.report(length: UInt64(length)), [fd])
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return (.error(errno), []) }
        // Room for a burst while the reader catches up (root may exceed wmem_max).
        var size: Int32 = 4 << 20
        if setsockopt(pair[0], SOL_SOCKET, SO_SNDBUFFORCE, &size, 4) != 0 { setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &size, 4) }
        let id = cstack_capture_start(pair[0], netifNumber, filter, UInt64(count), &message, message.count)
        guard id >= 0 else {
            let err = errno
            close(pair[0])
            close(pair[1])
            logger.info("socket-stat: capture refused: \(Self.text(message))")
            return (.error(err), [])
        }
        session.captures.append(id)
        exemptFromHelloDeadline(session)
        logger.info("socket-stat: live capture started (interface \(interface.isEmpty ? "any" : interface), filter \"\(filter)\", \(count == 0 ? "no limit" : "\(count) packets"))")
        return (.stream, [pair[1]])
    }

    /// A NUL-terminated C buffer as text.
    static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
