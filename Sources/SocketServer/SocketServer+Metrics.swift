import CStack
import Prometheus
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

// The counters and per-client gauges for monitoring systems, in Prometheus' text exposition format
// (swift-prometheus renders it): from `socket-stat metrics` (the `metrics` admin report) and, with
// --metrics-listen, from a minimal HTTP responder on the kernel's network (GET /metrics).

extension SocketServer {
    /// The metrics as Prometheus text, built afresh from the current counts (core lock held).
    func metricsText() -> [UInt8] {
        let registry = PrometheusCollectorRegistry()
        // "socket_server_" + name; a name's unit is its "_total" or "_bytes" suffix.
        func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
            var base = name.dropFirst("socket_server_".count)
            var unit = ""
            if let suffix = ["_total", "_bytes"].first(where: { base.hasSuffix($0) }) {
                base = base.dropLast(suffix.count)
                unit = String(suffix.dropFirst())
            }
            return MetricNameDescriptor(namespace: "socket_server", metricName: String(base), unitName: unit, helpText: help)
        }
        func count(_ name: String, _ labels: [(String, String)], _ value: UInt64, _ help: String) {
            registry.makeCounter(descriptor: descriptor(name, help), labels: labels).increment(by: Int64(clamping: value))
        }
        func gauge(_ name: String, _ labels: [(String, String)], _ value: Double, _ help: String) {
            registry.makeGauge(descriptor: descriptor(name, help), labels: labels).set(to: value)
        }
        let c = cstack_protocol_counters()!.pointee
        let packets = "Packets the stack sent (out) and received (in), by protocol."
        for (proto, i, o) in [("ip", c.ip_in, c.ip_out), ("ip6", c.ip6_in, c.ip6_out), ("icmp", c.icmp_in, c.icmp_out),
                              ("icmp6", c.icmp6_in, c.icmp6_out), ("udp", c.udp_in, c.udp_out), ("tcp", c.tcp_in, c.tcp_out),
                              ("arp", c.arp_in, c.arp_out), ("other", c.other_in, c.other_out)] {
            count("socket_server_packets_total", [("protocol", proto), ("direction", "in")], i, packets)
            count("socket_server_packets_total", [("protocol", proto), ("direction", "out")], o, packets)
        }
        let flags = "TCP segments carrying SYN (without ACK), FIN or RST."
        for (flag, i, o) in [("syn", c.tcp_syn_in, c.tcp_syn_out), ("fin", c.tcp_fin_in, c.tcp_fin_out), ("rst", c.tcp_rst_in, c.tcp_rst_out)] {
            count("socket_server_tcp_segments_total", [("flag", flag), ("direction", "in")], i, flags)
            count("socket_server_tcp_segments_total", [("flag", flag), ("direction", "out")], o, flags)
        }
        var drops = retiredUDP.drops, errors = retiredUDP.sendErrors
        var states: [String: Int] = [:]
        for session in sessions.values {
            for socket in session.ownedSockets {
                if let udp = socket as? UDPSocket {
                    drops += udp.receiveDrops
                    errors += udp.sendErrors
                    states["udp " + udp.report.state, default: 0] += 1
                } else if let tcp = socket as? TCPSocket {
                    states["tcp " + tcp.report.state, default: 0] += 1
                }
            }
        }
        count("socket_server_udp_receive_ring_full_drops_total", [], drops, "UDP datagrams dropped because the socket's receive ring (or buffer budget) was full.")
        count("socket_server_udp_send_errors_total", [], errors, "UDP sends that failed after the datagram left the application.")
        count("socket_server_tcp_accept_queue_refusals_total", [], tcpRefusals, "TCP connections refused because a listener's queue was full.")
        for (key, n) in states {
            let parts = key.split(separator: " ")
            gauge("socket_server_sockets", [("protocol", String(parts[0])), ("state", String(parts[1]))], Double(n), "Sockets by protocol and state.")
        }
        forEachInterface { info, name, kind in
            let i = cstack_interface_counters(info.num)!.pointee
            for (metric, help, rx, tx) in [("packets", "Packets", i.rx_packets, i.tx_packets), ("bytes", "Bytes", i.rx_bytes, i.tx_bytes),
                                           ("drops", "Packets dropped", i.rx_drops, i.tx_drops)] {
                let text = "\(help) received (in) and sent (out) on the stack's interfaces."
                count("socket_server_interface_\(metric)_total", [("interface", name), ("kind", kind), ("direction", "in")], rx, text)
                count("socket_server_interface_\(metric)_total", [("interface", name), ("kind", kind), ("direction", "out")], tx, text)
            }
        }
        let clients = sessions.values.filter { $0.segment != nil || $0.isLingering }
        gauge("socket_server_clients", [], Double(clients.count), "Client processes with a session (lingering ones included).")
        for session in clients {
            let labels = [("pid", "\(session.credentials.pid)"), ("command", session.command)]
            gauge("socket_server_client_sockets", labels, Double(session.socketCount), "Sockets a client holds.")
            gauge("socket_server_client_segment_used_bytes", labels, Double(session.segmentUsed), "Bytes of a client's shared segment given to channels.")
            gauge("socket_server_client_buffer_memory_bytes", labels, Double(session.bufferMemory), "Server memory held for a client's datagrams.")
        }
        if configuration.flightRecorderBytes > 0 {
            var recorded: UInt64 = 0, overwritten: UInt64 = 0, held: UInt64 = 0, size = 0
            cstack_recorder_stats(&recorded, &overwritten, &held, &size)
            count("socket_server_flight_recorder_packets_total", [], recorded, "Packets the flight recorder has kept.")
            count("socket_server_flight_recorder_overwritten_total", [], overwritten, "Packets the flight recorder overwrote to make room.")
            gauge("socket_server_flight_recorder_held_packets", [], Double(held), "Packets the flight recorder holds now.")
        }
        return registry.emitToBuffer()
    }
}

/// `--metrics-listen ADDRESS:PORT`: answers `GET /metrics` over HTTP/1.x on a kernel TCP socket.
/// Every connection is read and written without blocking on the server's event loop; at most
/// `maximumConnections` at once (a new one pushes out the oldest: a client that never finishes
/// its request cannot hold the responder).
final class MetricsResponder {
    static let maximumConnections = 16
    let listenFD: Int32
    private struct Connection { let fd: Int32; var request: [UInt8] = []; var reply: [UInt8] = []; var sent = 0; let serial: UInt64 }
    private var connections: [Int: Connection] = [:]
    private var serial: UInt64 = 0

    /// Binds and listens on `address` (IPv4 or IPv6 with a port).
    init(address: SocketAddress) throws(ServerError) {
        let fd = socket(address.family == .inet6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError("--metrics-listen: socket: \(Errno.current)") }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, 4)
        let bound = address.withSockAddr { bind(fd, $0.assumingMemoryBound(to: sockaddr.self), socklen_t($1)) }
        guard bound == 0, listen(fd, 16) == 0 else {
            let err = Errno.current
            Glibc.close(fd)
            throw ServerError("--metrics-listen \(address): \(err)")
        }
        listenFD = fd
    }

    /// Accepts what is waiting; returns the new connections' descriptors and slots, and the
    /// descriptors pushed out (for the event loop).
    func accept() -> (added: [(fd: Int32, slot: Int)], removed: [Int32]) {
        var added: [(Int32, Int)] = [], removed: [Int32] = []
        while true {
            let fd = cstack_accept(listenFD)
            guard fd >= 0 else { break }
            if connections.count >= Self.maximumConnections, let oldest = connections.min(by: { $0.value.serial < $1.value.serial }) {
                removed.append(oldest.value.fd)
                Glibc.close(oldest.value.fd)
                connections.removeValue(forKey: oldest.key)
            }
            let slot = (0..<Self.maximumConnections).first { connections[$0] == nil }!
            serial += 1
            connections[slot] = Connection(fd: fd, serial: serial)
            added.append((fd, slot))
        }
        return (added, removed)
    }

    /// Serves connection `slot` (readable or writable). Returns its descriptor when it is done (the
    /// caller takes it out of the event loop and closes it), and whether it waits to write more.
    /// - Parameter body: the metrics text, asked only once a whole request has arrived.
    func service(_ slot: Int, body: () -> [UInt8]) -> (done: Int32?, wantsWrite: Bool) {
        guard var c = connections[slot] else { return (nil, false) }
        if c.reply.isEmpty {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(c.fd, &buffer, buffer.count)
                if n > 0 { c.request += buffer[..<n]; if c.request.count > 16384 { break } ; continue }
                if n == 0 || (errno != EAGAIN && errno != EINTR) { return (finish(slot), false) } // gone
                break
            }
            guard let end = c.request.firstRange(of: [13, 10, 13, 10]) else {
                if c.request.count > 16384 { c.reply = Self.response(431, "Request Header Fields Too Large", []) } else {
                    connections[slot] = c
                    return (nil, false)
                }
                return (nil, false)
            }
            let line = String(decoding: c.request[..<end.lowerBound].prefix { $0 != 13 }, as: UTF8.self).split(separator: " ")
            if line.count >= 2, line[0] == "GET" || line[0] == "HEAD", line[1] == "/metrics" || line[1].hasPrefix("/metrics?") {
                let text = body()
                c.reply = Self.response(200, "OK", line[0] == "HEAD" ? [] : text, length: text.count)
            } else if line.count >= 2, line[0] != "GET" && line[0] != "HEAD" {
                c.reply = Self.response(405, "Method Not Allowed", Array("only GET /metrics\n".utf8))
            } else {
                c.reply = Self.response(404, "Not Found", Array("only GET /metrics\n".utf8))
            }
        }
        while c.sent < c.reply.count {
            let n = c.reply[c.sent...].withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) }
            if n > 0 { c.sent += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                connections[slot] = c
                return (nil, true)
            }
            break
        }
        return (finish(slot), false)
    }

    func descriptor(_ slot: Int) -> Int32? { connections[slot]?.fd }

    private func finish(_ slot: Int) -> Int32? {
        guard let c = connections.removeValue(forKey: slot) else { return nil }
        return c.fd // (the caller takes it out of the event loop, then closes it)
    }

    static func response(_ status: Int, _ reason: String, _ body: [UInt8], length: Int? = nil) -> [UInt8] {
        let head = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n" +
            "Content-Length: \(length ?? body.count)\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + body
    }

    /// Closes everything (the server stops).
    func close() {
        for c in connections.values { Glibc.close(c.fd) }
        connections.removeAll()
        Glibc.close(listenFD)
    }
}
