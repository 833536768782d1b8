import ArgumentParser
import CPcap
import Foundation
import SocketClient
import SocketShared

/// `ss` for the socket-offload stack: asks a running socket-server for a report on its control
/// socket and prints it as a table, or as the server's JSON.
@main
struct SocketStat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-stat",
        abstract: "Show the sockets, clients, counters and interfaces of a running socket-server.",
        discussion: """
            Asks the server on its control socket (only the server's own user and root may: others \
            get EACCES) and prints one report. Exit status: 0, or 1 when the server cannot be asked \
            (no server at the path, refused) with one line saying why.
            """,
        subcommands: [Sockets.self, Clients.self, Counters.self, Interfaces.self, Capture.self, Metrics.self],
        defaultSubcommand: Sockets.self
    )
}

/// The options every report takes.
struct Common: ParsableArguments {
    @Option(help: ArgumentHelp("The server's socket path (default: $SOCKET_SERVER_PATH, else $XDG_RUNTIME_DIR/socket-server.sock, else /tmp/socket-server-UID/socket).", valueName: "path"))
    var socketPath: String?

    @Flag(help: "Print the server's report as JSON (one object) instead of a table.")
    var json = false

    @Option(name: [.customShort("i"), .long], help: ArgumentHelp("Print the report again every SECONDS, like watch, until interrupted (or --count reports).", valueName: "seconds"))
    var watch: Double?

    @Option(help: ArgumentHelp("With --watch: stop after this many reports.", valueName: "n"))
    var count: Int?

    func validate() throws {
        if let watch, !(watch > 0) { throw ValidationError("--watch takes a positive number of seconds") }
        if let count, count < 1 { throw ValidationError("--count takes a positive number") }
    }

    /// Runs `render` on the report `kind`, once or every --watch seconds.
    func run(_ kind: AdminReport, _ render: ([String: Any]) -> String) throws {
        var shown = 0
        while true {
            let text: String
            do {
                text = try AdminQuery.fetch(kind, path: socketPath)
            } catch {
                FileHandle.standardError.write(Data("socket-stat: \(error)\n".utf8))
                throw ExitCode(1)
            }
            // Like watch: each report on a clean screen (on a terminal).
            if watch != nil && !json && isatty(1) != 0 { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            if json || kind == .metrics {
                print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
            } else {
                guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                    FileHandle.standardError.write(Data("socket-stat: the server's report is not JSON\n".utf8))
                    throw ExitCode(1)
                }
                print(render(object), terminator: "")
            }
            shown += 1
            guard let watch, count.map({ shown < $0 }) ?? true else { return }
            fflush(nil) // (every output stream: the report is out before the pause)
            usleep(useconds_t(watch * 1_000_000))
        }
    }
}

/// One admin request on a fresh connection to the control socket.
enum AdminQuery {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// A connection to the server's control socket, the server checked (our uid or root).
    static func connectToServer(_ path: String?) throws -> (fd: Int32, path: String) {
        let path = path ?? ServerConnection.defaultPath
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw Failure(description: "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let err = errno
            close(fd)
            throw Failure(description: "no socket server at \(path): \(String(cString: strerror(err)))")
        }
        // Only a server of our own uid or root is believed (anyone could have made the socket file).
        guard let server = try? PeerCredentials(socket: fd), server.uid == getuid() || server.uid == 0 else {
            close(fd)
            throw Failure(description: "the process listening at \(path) runs as another user: not asked")
        }
        return (fd, path)
    }

    /// Sends `request` and waits (10 s at most) for the reply; the caller closes its descriptors.
    static func exchange(_ fd: Int32, _ path: String, _ request: Request) throws -> (Reply, ReceivedPacket) {
        do {
            try DescriptorPassing.send(fd, ControlMessage(requestID: 1, request).encoded())
        } catch {
            throw Failure(description: "the server at \(path) did not take the request: \(error)")
        }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 10_000) == 1 else { throw Failure(description: "the server at \(path) did not answer within 10 s") }
        guard let packet = try? DescriptorPassing.receive(fd, maxBytes: ControlMessage.maximumSize + 1) else {
            throw Failure(description: "the server at \(path) hung up without answering")
        }
        guard case .reply(let reply)? = (try? ControlMessage.decode(packet.bytes))?.payload, reply.descriptorCount == packet.descriptors.count else {
            packet.closeDescriptors()
            throw Failure(description: "the server at \(path) did not answer in its protocol (another version?)")
        }
        if case .error(let err) = reply {
            packet.closeDescriptors()
            switch err {
            case EACCES: throw Failure(description: "the server at \(path) answers only its own user and root (EACCES)")
            default: throw Failure(description: "the server at \(path) refused: \(String(cString: strerror(err)))")
            }
        }
        return (reply, packet)
    }

    /// The `length` bytes of a memfd.
    static func contents(_ fd: Int32, length: UInt64) throws -> [UInt8] {
        var data = [UInt8](repeating: 0, count: Int(length))
        var got = 0
        while got < data.count {
            let n = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(got)) }
            if n <= 0 { break }
            got += n
        }
        guard got == data.count else { throw Failure(description: "the server's answer was cut short (\(got) of \(length) bytes)") }
        return data
    }

    static func fetch(_ kind: AdminReport, path: String?) throws -> String {
        let (fd, path) = try connectToServer(path)
        defer { close(fd) }
        let (reply, packet) = try exchange(fd, path, .admin(report: kind))
        defer { packet.closeDescriptors() }
        guard case .report(let length) = reply else { throw Failure(description: "the server at \(path) answered something else") }
        return String(decoding: try contents(packet.descriptors[0], length: length), as: UTF8.self)
    }
}

// MARK: reports

struct Sockets: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One line per socket: protocol, state, queues, addresses (the default report).",
        discussion: """
            Like ss: without -a or -l, sockets that are neither listening nor unconnected UDP. \
            Recv-Q and Send-Q are bytes for TCP connections (the socket's ring plus what lwIP \
            holds), connections waiting and the backlog for a listener, datagrams for UDP.
            """
    )
    @OptionGroup var common: Common
    @Flag(name: .shortAndLong, help: "TCP sockets.") var tcp = false
    @Flag(name: .shortAndLong, help: "UDP sockets.") var udp = false
    @Flag(name: .shortAndLong, help: "Only listening sockets (TCP LISTEN, unconnected UDP).") var listening = false
    @Flag(name: .shortAndLong, help: "All sockets.") var all = false
    @Flag(name: .shortAndLong, help: "The owning process (command, pid) and who else holds the socket.") var processes = false

    func run() throws {
        try common.run(.sockets) { report in
            let rows = (report["sockets"] as? [[String: Any]] ?? []).filter { s in
                let proto = s["protocol"] as? String ?? ""
                if tcp != udp && proto != (tcp ? "tcp" : "udp") { return false }
                let state = s["state"] as? String ?? ""
                let passive = state == "LISTEN" || state == "UNCONN"
                if listening { return passive }
                return all || !passive
            }
            var table = [["Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Transport"] + (processes ? ["Process"] : [])]
            for s in rows {
                var line = [s["protocol"] as? String ?? "?", s["state"] as? String ?? "?", "\(s["recv_q"] ?? 0)", "\(s["send_q"] ?? 0)",
                            s["local"] as? String ?? "*", s["peer"] as? String ?? "*", s["transport"] as? String ?? ""]
                if processes {
                    var owner = "users:((\"\(s["command"] as? String ?? "")\",pid=\(s["pid"] ?? 0)))"
                    if let shared = s["shared_with"] as? [Any], !shared.isEmpty { owner += " shared with pid " + shared.map { "\($0)" }.joined(separator: ",") }
                    line.append(owner)
                }
                table.append(line)
            }
            return format(table)
        }
    }
}

struct Clients: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One line per client process: pid, uid, sockets, segment use, since when.")
    @OptionGroup var common: Common

    func run() throws {
        try common.run(.clients) { report in
            var table = [["PID", "UID", "State", "Sockets", "Segment used/size", "Datagrams", "Since", "Command line"]]
            for c in report["clients"] as? [[String: Any]] ?? [] {
                let since = (c["connected_since"] as? Int).map { Date(timeIntervalSince1970: TimeInterval($0)) }
                table.append(["\(c["pid"] ?? 0)", "\(c["uid"] ?? 0)", c["state"] as? String ?? "", "\(c["sockets"] ?? 0)",
                              "\(c["segment_used"] ?? 0)/\(c["segment_bytes"] ?? 0)", c["datagram_transport"] as? String ?? "",
                              since.map { ISO8601DateFormatter().string(from: $0) } ?? "", c["command_line"] as? String ?? ""])
            }
            return format(table)
        }
    }
}

struct Counters: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Packets by protocol and by interface, drops by cause.",
        discussion: """
            Counted by the server where packets enter and leave the stack (its own addresses, TAP \
            devices): Debian's lwIP keeps no statistics of its own. UDP receive_ring_full_drops \
            counts datagrams that reached a socket whose receive ring (or buffer budget) was full.
            """
    )
    @OptionGroup var common: Common

    func run() throws {
        try common.run(.counters) { report in
            var out = ""
            if let protocols = report["protocols"] as? [String: [String: Any]] {
                for name in ["ip", "ip6", "icmp", "icmp6", "udp", "tcp", "arp", "other"] {
                    guard let fields = protocols[name] else { continue }
                    let text = fields.keys.sorted { a, b in
                        let order = ["in", "out"]
                        return (order.firstIndex(of: a) ?? 9, a) < (order.firstIndex(of: b) ?? 9, b)
                    }.map { "\($0) \(fields[$0] ?? 0)" }
                    out += name.padding(toLength: 6, withPad: " ", startingAt: 0) + text.joined(separator: "  ") + "\n"
                }
            }
            var table = [["Interface", "Kind", "RX packets", "RX bytes", "RX drops", "TX packets", "TX bytes", "TX drops"]]
            for i in report["interfaces"] as? [[String: Any]] ?? [] {
                table.append([i["name"] as? String ?? "", i["kind"] as? String ?? ""] +
                             ["rx_packets", "rx_bytes", "rx_drops", "tx_packets", "tx_bytes", "tx_drops"].map { "\(i[$0] ?? 0)" })
            }
            return out + "\n" + format(table)
        }
    }
}

struct Interfaces: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The stack's interfaces: name, kind, MTU, MAC, addresses.")
    @OptionGroup var common: Common

    func run() throws {
        try common.run(.interfaces) { report in
            var table = [["Name", "Kind", "MTU", "MAC", "Addresses", "Gateway"]]
            for i in report["interfaces"] as? [[String: Any]] ?? [] {
                table.append([i["name"] as? String ?? "", i["kind"] as? String ?? "", "\(i["mtu"] ?? 0)", i["mac"] as? String ?? "-",
                              (i["addresses"] as? [String] ?? []).joined(separator: " "), i["gateway"] as? String ?? "-"])
            }
            return format(table)
        }
    }
}

/// Columns padded to their widest cell; the last one left as it is.
func format(_ rows: [[String]]) -> String {
    guard let columns = rows.map(\.count).max(), columns > 0 else { return "" }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The counters and per-client gauges in Prometheus' text exposition format.",
        discussion: "The same text socket-server serves on GET /metrics with --metrics-listen ADDRESS:PORT (--json does not apply)."
    )
    @OptionGroup var common: Common

    func run() throws {
        try common.run(.metrics) { _ in "" }
    }
}

// MARK: capture

struct Capture: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Capture packets in the running server, as pcapng: live, or what its flight recorder holds.",
        discussion: """
            The filter is tcpdump's language (libpcap compiles it; a bad one gets libpcap's message), \
            given with --filter or as the last words, as tcpdump takes it. Packets between the \
            stack's own addresses carry a synthetic Ethernet header (zero MACs). A live capture runs \
            until COUNT packets (-c), until interrupted, or until the server stops; several can run \
            at once (16 at most). A reader slower than the traffic loses packets (the server does \
            not wait). --recorded writes what `socket-server --flight-recorder SIZE` holds and \
            exits. Examples: socket-stat capture -w - tcp port 7008 | tcpdump -n -r - ; \
            socket-stat capture --recorded --filter udp -w before.pcapng
            """
    )
    @Option(help: ArgumentHelp("The server's socket path (default as for the other reports).", valueName: "path"))
    var socketPath: String?
    @Option(help: ArgumentHelp("Only this interface (a name from socket-stat interfaces: lo0, a TAP device).", valueName: "name"))
    var interface: String?
    @Option(help: ArgumentHelp("A tcpdump filter expression.", valueName: "expression"))
    var filter: String?
    @Option(name: [.customShort("c"), .long], help: ArgumentHelp("Stop after this many packets.", valueName: "count"))
    var count: Int?
    @Option(name: [.customShort("w"), .long], help: ArgumentHelp("Where the pcapng goes: a file, or - for standard output (the default; not a terminal).", valueName: "file"))
    var write: String = "-"
    @Flag(help: "Write what the flight recorder holds instead of capturing live.")
    var recorded = false
    @Argument(help: ArgumentHelp("The filter as tcpdump takes it (instead of --filter).", valueName: "expression"))
    var words: [String] = []

    func validate() throws {
        if filter != nil && !words.isEmpty { throw ValidationError("give the filter with --filter or as words, not both") }
        if let count, count < 1 || count > Int(UInt32.max) { throw ValidationError("-c takes a positive number") }
        if recorded && count != nil { throw ValidationError("-c applies to live captures") }
    }

    func run() throws {
        let expression = filter ?? words.joined(separator: " ")
        if let problem = Self.check(expression) {
            FileHandle.standardError.write(Data("socket-stat: bad filter \"\(expression)\": \(problem)\n".utf8))
            throw ExitCode(1)
        }
        guard expression.utf8.count <= ControlMessage.maximumStringLength else {
            FileHandle.standardError.write(Data("socket-stat: the filter is longer than \(ControlMessage.maximumStringLength) bytes\n".utf8))
            throw ExitCode(1)
        }
        if write == "-" && isatty(1) != 0 {
            FileHandle.standardError.write(Data("socket-stat: not writing pcapng to a terminal: use -w FILE, or a pipe (socket-stat capture -w - ... | tcpdump -r -)\n".utf8))
            throw ExitCode(1)
        }
        let out = write == "-" ? 1 : open(write, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard out >= 0 else {
            FileHandle.standardError.write(Data("socket-stat: cannot write \(write): \(String(cString: strerror(errno)))\n".utf8))
            throw ExitCode(1)
        }
        do {
            let (fd, path) = try AdminQuery.connectToServer(socketPath)
            defer { close(fd) } // (live: the capture ends with this connection)
            let request = Request.capture(interface: interface ?? "", filter: expression, count: UInt32(count ?? 0), recorded: recorded)
            let (reply, packet) = try Self.exchange(fd, path, request)
            defer { packet.closeDescriptors() }
            switch reply {
            case .report(let length):
                let bytes = try AdminQuery.contents(packet.descriptors[0], length: length)
                try Self.writeAll(out, bytes[...])
            case .stream:
                let packets = try Self.copyStream(packet.descriptors[0], to: out)
                FileHandle.standardError.write(Data("socket-stat: \(packets) packets captured\n".utf8))
            default:
                throw AdminQuery.Failure(description: "the server at \(path) answered something else")
            }
        } catch {
            FileHandle.standardError.write(Data("socket-stat: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// The request, with the errors only a capture has put in words.
    static func exchange(_ fd: Int32, _ path: String, _ request: Request) throws -> (Reply, ReceivedPacket) {
        guard case .capture(let interface, _, _, _) = request else { return try AdminQuery.exchange(fd, path, request) }
        do {
            return try AdminQuery.exchange(fd, path, request)
        } catch let failure as AdminQuery.Failure {
            let text = failure.description
            if text.hasSuffix(String(cString: strerror(ENODEV))) {
                throw AdminQuery.Failure(description: "the server has no interface \(interface) (see socket-stat interfaces)")
            }
            if text.hasSuffix(String(cString: strerror(EOPNOTSUPP))) {
                throw AdminQuery.Failure(description: "the server keeps no flight recorder (start it with --flight-recorder SIZE)")
            }
            throw failure
        }
    }

    /// libpcap's complaint about `expression` for Ethernet frames, nil when it compiles.
    static func check(_ expression: String) -> String? {
        guard let dead = pcap_open_dead(DLT_EN10MB, 262_144) else { return "libpcap cannot open a dead handle" }
        defer { pcap_close(dead) }
        var program = bpf_program()
        guard pcap_compile(dead, &program, expression, 1, PCAP_NETMASK_UNKNOWN) == 0 else { return String(cString: pcap_geterr(dead)) }
        pcap_freecode(&program)
        return nil
    }

    /// Copies the capture's messages (the pcapng header, then a block per packet) until the end.
    /// - Returns: the packets copied.
    static func copyStream(_ fd: Int32, to out: Int32) throws -> Int {
        var buffer = [UInt8](repeating: 0, count: 1 << 18)
        var messages = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            try writeAll(out, buffer[..<n])
            messages += 1
        }
        return max(messages - 1, 0)
    }

    static func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw AdminQuery.Failure(description: "cannot write the capture: \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}
