import ArgumentParser
import Logging
import SocketServer
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

@main
struct SocketServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-server",
        abstract: "Run the lwIP userspace TCP/IP stack and serve sockets to applications over shared memory.",
        discussion: """
        Applications linked with SocketClient connect to the server's SOCK_SEQPACKET socket and get \
        socket-like calls whose data moves through a shared-memory segment per client. The stack's \
        loopback network (127.0.0.1/8 and ::1 by default) lets applications talk to each other through \
        the stack with no privileges. SIGINT, SIGTERM or SIGHUP stop the server cleanly: every client's \
        sockets are closed and the socket file is removed.

        A TAP interface (--tap NAME) puts the stack on a real Ethernet link to the kernel: the options \
        --address, --gateway, --mac and --mtu that FOLLOW a --tap configure that interface, e.g. \
        `--tap tap0 --address 10.0.0.2/24 --address fd00::2/64 --gateway 10.0.0.1`; --address before any \
        --tap configures the loopback network. The TAP device is created if missing (needs CAP_NET_ADMIN) \
        or attached to if it exists (e.g. made for your user with `ip tuntap add dev tap0 mode tap user $USER`). \
        The last TAP given becomes the default route.

        Admission and limits: a client's uid is checked when it connects (SO_PEERCRED); a refused \
        user gets EACCES and is disconnected at once. A connection that has not completed HELLO within \
        2 s is closed; such connections hold no --max-clients slot and have their own cap \
        (--max-pending-clients). A client beyond --max-clients, or arriving when descriptors run short, \
        gets EUSERS. At start the descriptor limit (RLIMIT_NOFILE) is raised to its hard limit; each \
        socket costs the server two descriptors, and sockets beyond --max-total-sockets (all clients \
        together) get ENFILE, beyond --max-sockets (one client) EMFILE, beyond the segment ENOBUFS. \
        The log's first lines give the limits in force.

        Exit status: 0 after a clean stop, 1 when the server cannot start (the reason is printed).
        """
    )

    /// Rewrites `--tap NAME --address A --gateway G ...` into indexed options ArgumentParser can parse:
    /// options that follow a `--tap` belong to it.
    static func regroup(_ arguments: [String]) -> [String] {
        var out: [String] = []
        var tap = -1
        var i = 0
        let perTap = ["--address": "--tap-address", "--gateway": "--tap-gateway", "--mac": "--tap-mac", "--mtu": "--tap-mtu"]
        while i < arguments.count {
            var arg = arguments[i]
            var value: String?
            if let eq = arg.firstIndex(of: "="), arg.hasPrefix("--") {
                value = String(arg[arg.index(after: eq)...])
                arg = String(arg[..<eq])
            }
            if arg == "--tap" { tap += 1 }
            if tap >= 0, let renamed = perTap[arg] {
                let v = value ?? (i + 1 < arguments.count ? arguments[i + 1] : "")
                if value == nil { i += 1 }
                out += [renamed, "\(tap)=\(v)"]
            } else {
                out.append(arguments[i])
            }
            i += 1
        }
        return out
    }

    static func main() {
        do {
            var command = try parseAsRoot(regroup(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch {
            // A bad command line means the server cannot start: status 1 as documented, not
            // ArgumentParser's 64 (EX_USAGE). Help and version requests still exit 0.
            guard exitCode(for: error) == .validationFailure else { exit(withError: error) }
            let message = Array((fullMessage(for: error) + "\n").utf8)
            _ = message.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            exit(withError: ExitCode(1))
        }
    }

    @Option(help: ArgumentHelp("Attach the stack to this TAP device (repeatable; see the discussion for its options).", valueName: "name"))
    var tap: [String] = []

    @Option(name: .customLong("gateway"), help: ArgumentHelp("After --tap: IPv4 default gateway of that interface.", valueName: "ip"))
    var gatewayPlaceholder: String?

    @Option(name: .customLong("mac"), help: ArgumentHelp("After --tap: its MAC address (default: 02:... derived from the name).", valueName: "mac"))
    var macPlaceholder: String?

    @Option(name: .customLong("mtu"), help: ArgumentHelp("After --tap: its MTU (default 1500).", valueName: "bytes"))
    var mtuPlaceholder: Int?

    @Option(name: .customLong("tap-address"), help: .hidden) var tapAddress: [String] = []
    @Option(name: .customLong("tap-gateway"), help: .hidden) var tapGateway: [String] = []
    @Option(name: .customLong("tap-mac"), help: .hidden) var tapMAC: [String] = []
    @Option(name: .customLong("tap-mtu"), help: .hidden) var tapMTU: [String] = []

    @Option(help: ArgumentHelp("Write every packet the stack sends and receives, on every interface, to this pcapng file (tcpdump -r / tshark -r read it).", valueName: "file"))
    var capture: String?

    @Option(help: ArgumentHelp("Answer GET /metrics (Prometheus text: the counters and per-client gauges of socket-stat) on this address of the kernel's network, e.g. 127.0.0.1:9464 or [::1]:9464.", discussion: "A minimal HTTP/1.1 responder on the server's event loop: at most 16 connections at once (a new one pushes out the oldest), one request each. Anyone who can reach the address can read the metrics (pids, command names): bind it to loopback unless that is wanted.", valueName: "address:port"))
    var metricsListen: String?

    @Option(name: .long, help: ArgumentHelp("Path of the server's socket.", discussion: "Default: $SOCKET_SERVER_PATH, else $XDG_RUNTIME_DIR/socket-server.sock, else /tmp/socket-server-UID/socket in a directory the server creates with mode 0700 (it refuses to start if that directory exists but is not its own or is writable by others). A stale file left by a crashed server is replaced; a live server is never taken over.", valueName: "path"))
    var socketPath: String?

    @Option(name: .long, help: ArgumentHelp("An address of the stack's loopback network, IPv4 or IPv6 (repeatable).", discussion: "Default: 127.0.0.1/8 and ::1/128. The first option replaces the defaults.", valueName: "cidr"))
    var address: [String] = []

    @Option(name: .long, help: ArgumentHelp("Datagram payload transport: auto, process-vm or shared-memory.", discussion: "auto uses process-vm (one copy, straight between the app and lwIP's buffers) where the kernel lets the client read and write this process's memory (same user), else shared-memory.", valueName: "mode"))
    var datagramTransport: String = "auto"

    @Option(name: .long, help: ArgumentHelp("Bytes in each client's shared segment (suffixes K, M, G).", valueName: "size"))
    var segmentSize: String = "256M"

    @Option(name: .long, help: ArgumentHelp("Most clients served at once (those that completed HELLO); more get EUSERS.", valueName: "n"))
    var maxClients: Int = 256

    @Option(name: .long, help: ArgumentHelp("Most connections waiting for their HELLO (2 s each).", discussion: "They hold no --max-clients slot. When all are taken, the oldest is dropped once it has waited 250 ms; until then new connections wait in the listen backlog.", valueName: "n"))
    var maxPendingClients: Int = 32

    @Option(name: .long, help: ArgumentHelp("Most sockets across all clients; more get ENFILE.", discussion: "Default: what the descriptor limit allows after room for every client (2 descriptors per socket), logged at start.", valueName: "n"))
    var maxTotalSockets: Int?

    @Option(name: .long, help: ArgumentHelp("Most sockets per client; more get EMFILE.", valueName: "n"))
    var maxSockets: Int = 4096

    @Option(name: .long, help: ArgumentHelp("Payload buffers per UDP ring, each direction (33 or more).", valueName: "n"))
    var datagramRingItems: Int = 128

    @Option(name: .long, help: ArgumentHelp("Bytes per UDP payload buffer (multiple of 64, 512 to 65536).", valueName: "bytes"))
    var datagramSlotSize: Int = 2048

    @Option(name: .long, help: ArgumentHelp("Server memory a client's UDP payload buffers may hold (suffixes K, M, G).", discussion: "With the process-vm transport, a client's datagrams wait in lwIP buffers in the server: received ones until the client takes them, send buffers until it fills them. Beyond this budget received datagrams are dropped (and counted) and sends that need more buffers fail with ENOBUFS.", valueName: "size"))
    var clientBufferMemory: String = "32M"

    @Option(name: .long, help: ArgumentHelp("Keep the most recent SIZE bytes of packets in memory (suffixes K, M, G).", discussion: "A flight recorder: every packet the stack sends or receives is kept, the oldest overwritten, so that `socket-stat capture --recorded -w FILE` can write out what happened before a problem was noticed. Off by default.", valueName: "size"))
    var flightRecorder: String?

    @Option(name: .long, help: ArgumentHelp("Bytes per TCP ring, each direction (suffixes K, M).", valueName: "size"))
    var streamRingSize: String = "128K"

    @Option(name: .long, help: ArgumentHelp("MTU of the loopback interfaces.", valueName: "bytes"))
    var loopbackMTU: Int = 65535

    @Option(name: .long, help: ArgumentHelp("Keep polling this many microseconds after each batch of work before sleeping.", discussion: "Trades CPU for latency: a message that arrives within the window does not wait for the stack thread to wake up. 0 (the default) sleeps at once.", valueName: "us"))
    var busyPoll: Int = 0

    @Option(name: .long, help: ArgumentHelp("Pin the stack thread to this CPU.", valueName: "n"))
    var cpu: Int?

    @Option(name: .long, help: ArgumentHelp("Place client segments on this NUMA node.", discussion: "Default: the node of the stack thread's CPU (libnuma); ignored where NUMA is not available.", valueName: "n"))
    var numaNode: Int?

    @Option(name: .long, help: ArgumentHelp("Also serve clients of this user id (repeatable); \"any\" serves every user.", discussion: "By default only clients of the server's own user are served (the socket file is mode 0600); others are refused with EACCES. Each listed user gets a POSIX ACL entry on the socket file (and search permission on the default directory): the filesystem must support ACLs. \"any\" makes the socket file 0666 instead. A client's datagram transport is shared memory unless it may ptrace the server (same user or root).", valueName: "uid"))
    var allowUID: [String] = []

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical.", valueName: "level"))
    var logLevel: String = "info"

    /// The TAP configurations from the regrouped options.
    func tapConfigurations() throws -> [TAPConfiguration] {
        var taps = tap.map { TAPConfiguration(name: $0) }
        func split(_ entry: String) throws -> (Int, String) {
            let parts = entry.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let i = Int(parts[0]), taps.indices.contains(i) else { throw ValidationError("bad TAP option \(entry)") }
            return (i, String(parts[1]))
        }
        for e in tapAddress {
            let (i, v) = try split(e)
            guard let a = InterfaceAddress(cidr: v) else { throw ValidationError("--address \(v) is not an IPv4 or IPv6 CIDR") }
            taps[i].addresses.append(a)
        }
        for e in tapGateway {
            let (i, v) = try split(e)
            guard let g = SocketAddress(host: v, port: 0), g.family == .inet else { throw ValidationError("--gateway \(v) is not an IPv4 address") }
            taps[i].gateway = g
        }
        for e in tapMAC {
            let (i, v) = try split(e)
            let bytes = v.split(separator: ":").compactMap { UInt8($0, radix: 16) }
            guard bytes.count == 6 else { throw ValidationError("--mac \(v) is not a MAC address") }
            taps[i].mac = bytes
        }
        for e in tapMTU {
            let (i, v) = try split(e)
            guard let m = Int(v) else { throw ValidationError("--mtu \(v) is not a number") }
            taps[i].mtu = m
        }
        return taps
    }

    func validate() throws {
        if gatewayPlaceholder != nil || macPlaceholder != nil || mtuPlaceholder != nil {
            throw ValidationError("--gateway, --mac and --mtu configure a TAP interface: put them after its --tap NAME")
        }
        for t in try tapConfigurations() {
            do { try t.validate() } catch { throw ValidationError(error.description) }
        }
        guard DatagramTransport(name: datagramTransport) != nil else {
            throw ValidationError("--datagram-transport must be auto, process-vm or shared-memory")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        for a in address where InterfaceAddress(cidr: a) == nil { throw ValidationError("--address \(a) is not an IPv4 or IPv6 CIDR") }
        if let metricsListen, Self.listenAddress(metricsListen) == nil {
            throw ValidationError("--metrics-listen takes ADDRESS:PORT (IPv6 in brackets: [::1]:9464)")
        }
        for u in allowUID where u != "any" && UInt32(u) == nil { throw ValidationError("--allow-uid \(u) is not a user id") }
        guard parseSize(segmentSize) != nil, parseSize(streamRingSize) != nil, parseSize(clientBufferMemory) != nil,
              flightRecorder.map({ parseSize($0) != nil }) ?? true else { throw ValidationError("sizes take a number with an optional K, M or G suffix") }
        if let flightRecorder, let size = parseSize(flightRecorder), size < 65_536 || size > 1 << 36 {
            throw ValidationError("--flight-recorder takes 64K to 64G")
        }
        guard (68...65535).contains(loopbackMTU) else { throw ValidationError("--loopback-mtu must be between 68 and 65535") }
    }

    /// "127.0.0.1:9464" or "[::1]:9464".
    static func listenAddress(_ text: String) -> SocketAddress? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return SocketAddress(host: host, port: port)
    }

    func run() throws {
        SocketServer.prepareProcessSignals()
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "socket-server")
        var config = ServerConfiguration()
        if let socketPath { config.socketPath = socketPath }
        if !address.isEmpty { config.addresses = address.map { InterfaceAddress(cidr: $0)! } }
        config.datagramTransport = DatagramTransport(name: datagramTransport)!
        config.segmentSize = parseSize(segmentSize)!
        config.maxClients = maxClients
        config.maxSocketsPerClient = maxSockets
        config.maxPendingClients = maxPendingClients
        config.maxTotalSockets = maxTotalSockets
        config.datagramRingItems = datagramRingItems
        config.datagramSlotSize = datagramSlotSize
        config.streamRingSize = parseSize(streamRingSize)!
        config.clientBufferMemory = parseSize(clientBufferMemory)!
        config.loopbackMTU = UInt16(loopbackMTU)
        config.taps = try tapConfigurations()
        config.capturePath = capture
        config.flightRecorderBytes = flightRecorder.flatMap(parseSize) ?? 0
        config.metricsListen = metricsListen.flatMap(Self.listenAddress)
        config.busyPollMicroseconds = busyPoll
        config.cpu = cpu
        config.numaNode = numaNode
        config.allowAnyUID = allowUID.contains("any")
        config.allowedUIDs = Set(allowUID.compactMap { UInt32($0) })
        let server: SocketServer
        do {
            server = try SocketServer(configuration: config, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        server.run()
    }
}

/// "256M" -> 268435456.
func parseSize(_ text: String) -> Int? {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = text.uppercased().last, let unit = units[last] {
        return Int(text.dropLast()).map { $0 * unit }
    }
    return Int(text)
}
